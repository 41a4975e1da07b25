"""Real ``ps-server`` and worker processes for the fault tests, with bounded waits only.

``Proc.wait_for(pattern)`` reads the process's stdout (a reader thread feeds a queue) and
fails the test when the line does not come in time, so a hang is a failure, never a
stuck suite. stderr goes to a file (``Proc.log()``) to keep pipes from filling up.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: this environment without PS_* variables: a command line sees only the flags a test gives it
CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith("PS_")}


class Proc:
    def __init__(self, args: list[str], log_path: Path, env: dict | None = None) -> None:
        self.args = args
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=self._log, text=True,
            env={**{k: v for k, v in os.environ.items() if not k.startswith("PS_")}, "PYTHONUNBUFFERED": "1",
                 **(env or {})},
        )
        self.lines: list[str] = []
        self._queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, pattern: str, timeout_s: float = 20.0) -> re.Match:
        """The first new stdout line matching ``pattern``; AssertionError after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        regex = re.compile(pattern)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no line matching {pattern!r} within {timeout_s} s from {self.args}; "
                                     f"stdout tail {self.lines[-5:]}; log tail:\n{self.log()[-3000:]}")
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"{self.args} exited ({self.proc.wait(5)}) before printing {pattern!r}; "
                                     f"stdout tail {self.lines[-5:]}; log tail:\n{self.log()[-3000:]}")
            self.lines.append(line)
            match = regex.search(line)
            if match:
                return match

    def wait_for_log(self, pattern: str, timeout_s: float = 20.0) -> re.Match:
        """The first match of ``pattern`` in the stderr log; AssertionError after ``timeout_s``
        or when the process exits without writing it (the log is read every 50 ms)."""
        deadline = time.monotonic() + timeout_s
        regex = re.compile(pattern)
        while True:
            exited = self.proc.poll() is not None
            match = regex.search(self.log())
            if match:
                return match
            if exited or time.monotonic() > deadline:
                raise AssertionError(f"no {pattern!r} in the log of {self.args} within {timeout_s} s "
                                     f"(exit status {self.proc.poll()}); log tail:\n{self.log()[-3000:]}")
            time.sleep(0.05)

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait(self, timeout_s: float = 20.0) -> int:
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.args} still running after {timeout_s} s; log tail:\n"
                                 f"{self.log()[-3000:]}") from None

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """Kill (if still running) and reap; for cleanup."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
        self.proc.wait(10)
        self.proc.stdout.close()
        self._log.close()


class Cluster:
    """Processes started by one test; everything is killed and reaped at the end."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.procs: list[Proc] = []

    def server(self, *flags: str, port: int = 0, name: str = "server") -> tuple[Proc, str]:
        """Start ``ps-server --port PORT FLAGS``; returns (process, address) once it listens."""
        proc = Proc(["-m", "launcher.server_cli", "--port", str(port), "--log-level", "INFO", *flags],
                    self.tmp_path / f"{name}-{len(self.procs)}.log")
        self.procs.append(proc)
        address = proc.wait_for(r"ps-server listening on (\S+)", 30.0).group(1)
        return proc, address

    def worker(self, *flags: str, name: str = "worker") -> Proc:
        """Start ``tests/integration/fault_worker.py FLAGS``."""
        proc = Proc(["-m", "tests.integration.fault_worker", *flags], self.tmp_path / f"{name}-{len(self.procs)}.log")
        self.procs.append(proc)
        return proc

    def ps_worker(self, *flags: str, name: str = "ps-worker") -> Proc:
        """Start the real ``ps-worker`` command line (``launcher.worker_cli``) with ``flags``."""
        proc = Proc(["-m", "launcher.worker_cli", *flags], self.tmp_path / f"{name}-{len(self.procs)}.log")
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.procs:
            proc.stop()

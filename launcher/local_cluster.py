"""``LocalCluster``: ps-server and ps-worker processes on this machine's loopback.

Servers start with ``--port 0``; each prints ``ps-server listening on HOST:PORT``, which
is how the cluster learns its address (a bounded wait), and then the gRPC health service
must answer SERVING (a bounded wait) before any worker starts. Every process's stderr goes
to a log file in the run folder (``server-0.log``, ``worker-1.log``; a worker's stdout to
``worker-1.out``), so a failure can be reported with the last lines it wrote. Children get
the environment without ``PS_*`` variables: their flags alone configure them.

:meth:`LocalCluster.stop` ends everything that was started: workers first, then servers,
each with SIGTERM, a bounded wait, then SIGKILL. The constructor does no I/O. Not
thread-safe: drive it from one thread.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ps.protocol.channel import SERVICE_NAME

log = logging.getLogger(__name__)

__all__ = ["Child", "ClusterConfig", "ClusterError", "LocalCluster"]

_LISTENING = "ps-server listening on "


class ClusterError(RuntimeError):
    """Starting the cluster failed; the message says which process and why."""


@dataclass(frozen=True)
class ClusterConfig:
    """Shape of a local cluster. Times are seconds.

    ``worker_args`` are extra ps-worker flags (what to train) given to every worker;
    the cluster adds ``--servers``, ``--rank``, ``--num-workers`` and ``--metrics-file``.
    """

    run_dir: Path
    num_servers: int = 2
    num_workers: int = 2
    mode: str = "sync"
    staleness: int = 0
    sync_timeout_s: float = 60.0
    worker_args: tuple[str, ...] = ()
    start_timeout_s: float = 30.0
    stop_timeout_s: float = 10.0
    python: str = field(default=sys.executable)

    def validate(self) -> None:
        """Raises ValueError naming the first bad field."""
        if self.num_servers < 1 or self.num_workers < 1:
            raise ValueError("need at least one server and one worker")
        if self.mode not in ("sync", "async", "ssp"):
            raise ValueError(f"unknown mode {self.mode!r}; choose from sync, async, ssp")
        if self.staleness < 0:
            raise ValueError(f"staleness must be >= 0, got {self.staleness}")
        if min(self.start_timeout_s, self.stop_timeout_s, self.sync_timeout_s) <= 0:
            raise ValueError("timeouts must be > 0 seconds")


@dataclass
class Child:
    """One started process: ``name`` like "server 0" or "worker 1", its log files."""

    name: str
    popen: subprocess.Popen
    log_path: Path
    out_path: Path | None = None
    failed: bool = False  # exited non-zero (or early, for a server) before stop() began

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def tail(self, lines: int = 5) -> list[str]:
        """The last ``lines`` non-empty lines of its log (stderr)."""
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return list(deque((line.rstrip() for line in f if line.strip()), maxlen=lines))
        except OSError:
            return []

    def describe_failure(self) -> str:
        """``worker 1 (pid 123) exited with status 1`` plus the last lines of its log."""
        code = self.returncode
        how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited with status {code}"
        text = f"{self.name} (pid {self.popen.pid}) {how}"
        tail = self.tail()
        if tail:
            text += f"; last lines of {self.log_path}:\n" + "\n".join(f"    {line}" for line in tail)
        return text


class LocalCluster:
    """Servers and workers as child processes of this one. Use ``with`` or call :meth:`stop`."""

    def __init__(self, config: ClusterConfig) -> None:
        config.validate()
        self.config = config
        self.servers: list[Child] = []
        self.workers: list[Child] = []
        self.addresses: list[str] = []
        self._stopping = False
        self._env = {k: v for k, v in os.environ.items() if not k.startswith("PS_")}

    # -- start ----------------------------------------------------------------------------

    def metrics_path(self, rank: int) -> Path:
        """Where worker ``rank`` appends its step records."""
        return self.config.run_dir / f"worker-{rank}.metrics.jsonl"

    def start(self) -> LocalCluster:
        """Start the servers, wait until they serve, start the workers. Blocks (bounded).

        Raises ClusterError naming the process at fault (everything started is stopped
        first), OSError when a process or log file cannot be created.
        """
        try:
            self.start_servers()
            self.start_workers()
        except BaseException:
            self.stop()
            raise
        return self

    def start_servers(self) -> list[str]:
        """Start every server, learn its address, wait for SERVING. Returns the addresses."""
        cfg = self.config
        cfg.run_dir.mkdir(parents=True, exist_ok=True)
        lines: list[queue.Queue[str | None]] = []
        for i in range(cfg.num_servers):
            argv = [cfg.python, "-m", "launcher.server_cli", "--port", "0", "--mode", cfg.mode,
                    "--staleness", str(cfg.staleness), "--num-workers", str(cfg.num_workers),
                    "--shard-index", str(i), "--num-shards", str(cfg.num_servers),
                    "--sync-timeout", str(cfg.sync_timeout_s)]
            child = self._spawn(f"server {i}", argv, f"server-{i}.log", stdout=subprocess.PIPE)
            self.servers.append(child)
            q: queue.Queue[str | None] = queue.Queue()
            threading.Thread(target=_read_lines, args=(child.popen.stdout, q), daemon=True,
                             name=f"server-{i}-stdout").start()
            lines.append(q)
        deadline = time.monotonic() + cfg.start_timeout_s
        for child, q in zip(self.servers, lines):
            self.addresses.append(self._await_address(child, q, deadline))
        for child, address in zip(self.servers, self.addresses):
            self._await_serving(child, address, deadline)
        log.info("servers serving on %s", ", ".join(self.addresses))
        return self.addresses

    def start_workers(self) -> None:
        """Start every worker (ranks 0..N-1) against the servers. Does not wait for them."""
        cfg = self.config
        if not self.addresses:
            raise RuntimeError("start the servers first")
        for rank in range(cfg.num_workers):
            path = self.metrics_path(rank)
            path.unlink(missing_ok=True)
            argv = [cfg.python, "-m", "launcher.worker_cli", "--servers", ",".join(self.addresses),
                    "--rank", str(rank), "--num-workers", str(cfg.num_workers), "--metrics-file", str(path),
                    *cfg.worker_args]
            self.workers.append(self._spawn(f"worker {rank}", argv, f"worker-{rank}.log",
                                            stdout_file=f"worker-{rank}.out"))

    def _spawn(self, name: str, argv: list[str], log_name: str, *, stdout=None,
               stdout_file: str | None = None) -> Child:
        log_path = self.config.run_dir / log_name
        out_path = self.config.run_dir / stdout_file if stdout_file else None
        with open(log_path, "wb") as err, (open(out_path, "wb") if out_path else nullcontext(stdout)) as out:
            popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=self._env,
                                     text=True)
        log.debug("started %s (pid %d): %s", name, popen.pid, " ".join(argv))
        return Child(name, popen, log_path, out_path)

    def _await_address(self, child: Child, q: queue.Queue[str | None], deadline: float) -> str:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ClusterError(f"{child.name} did not report its port within {self.config.start_timeout_s:g} s")
            try:
                line = q.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:  # stdout closed: the server exited
                child.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
                child.failed = True
                raise ClusterError(child.describe_failure())
            if line.startswith(_LISTENING):
                return line[len(_LISTENING):].strip()

    def _await_serving(self, child: Child, address: str, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        try:
            with grpc.insecure_channel(address) as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=max(0.1, remaining),
                    wait_for_ready=True)
        except grpc.RpcError as exc:
            raise ClusterError(f"{child.name} at {address} did not become healthy: {exc.code().name}") from None
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            raise ClusterError(f"{child.name} at {address} reports {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}")

    # -- watch ----------------------------------------------------------------------------

    def check(self) -> list[Child]:
        """Mark and return the processes that failed since the last check (does not block).

        A worker fails when it exits non-zero; a server fails when it exits at all.
        """
        new = []
        for child in self.servers + self.workers:
            code = child.returncode
            if child.failed or code is None or self._stopping:
                continue
            if code != 0 or child in self.servers:
                child.failed = True
                new.append(child)
        return new

    def workers_done(self) -> bool:
        """True when every worker has exited."""
        return all(w.returncode is not None for w in self.workers)

    def failures(self) -> list[Child]:
        """Every process marked failed so far."""
        return [c for c in self.servers + self.workers if c.failed]

    # -- stop -----------------------------------------------------------------------------

    def stop(self) -> dict[str, int | None]:
        """Stop workers, then servers: SIGTERM, wait up to ``stop_timeout_s``, then SIGKILL.

        Blocks (bounded by about twice ``stop_timeout_s`` per group). Idempotent. Returns
        each process's exit status by name.
        """
        self._stopping = True
        for group in (self.workers, self.servers):
            _terminate([c.popen for c in group], self.config.stop_timeout_s)
        for child in self.servers:
            if child.popen.stdout is not None:
                child.popen.stdout.close()
        return {c.name: c.returncode for c in self.servers + self.workers}

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _terminate(procs: Sequence[subprocess.Popen], timeout_s: float) -> None:
    running = [p for p in procs if p.poll() is None]
    for p in running:
        _signal(p, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for p in running:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("pid %d did not stop within %g s after SIGTERM; killing it", p.pid, timeout_s)
            _signal(p, signal.SIGKILL)
            try:
                p.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                log.error("pid %d survived SIGKILL for %g s", p.pid, timeout_s)


def _signal(p: subprocess.Popen, sig: int) -> None:
    try:
        p.send_signal(sig)
    except ProcessLookupError:
        pass


def _read_lines(stream: IO[str], q: queue.Queue[str | None]) -> None:
    """Forward a child's stdout lines to ``q``; None when it closes."""
    try:
        for line in stream:
            q.put(line)
    except (OSError, ValueError):
        pass
    finally:
        q.put(None)

"""Start and stop real ``ps-server`` processes for a benchmark, bounded in time."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@contextlib.contextmanager
def ps_servers(n: int, *args: str, per_server=None, timeout_s: float = 30.0,
               procs_out: list | None = None) -> Iterator[list[str]]:
    """``n`` servers (``python -m launcher.server_cli --port 0 ...``); yields their addresses.

    ``per_server(i)`` gives extra arguments for server ``i``. ``procs_out``, when given,
    receives the servers' ``Popen`` objects (their pids, e.g. for ``/proc/<pid>/status``).
    """
    procs: list[subprocess.Popen] = []
    addresses: list[str] = []
    try:
        for i in range(n):
            own = list(per_server(i)) if per_server else []
            p = subprocess.Popen(
                [sys.executable, "-m", "launcher.server_cli", "--port", "0", "--log-level", "WARNING", *args, *own],
                stdout=subprocess.PIPE, text=True, cwd=REPO,
            )
            procs.append(p)
            if procs_out is not None:
                procs_out.append(p)
        for p in procs:
            line = readline(p, timeout_s)
            if not line.startswith("ps-server listening on "):
                raise RuntimeError(f"ps-server did not start: {line!r}")
            addresses.append(line.rsplit(" ", 1)[1].strip())
        yield addresses
    finally:
        stop(procs)


def stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM every process, wait (10 s each), then SIGKILL the ones still running. Blocks."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


def readline(p: subprocess.Popen, timeout_s: float) -> str:
    """The process's next stdout line. Raises RuntimeError if none comes within ``timeout_s``."""
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(p.stdout, selectors.EVENT_READ)
    if not sel.select(timeout_s):
        raise RuntimeError(f"{p.args[0]} printed nothing within {timeout_s:g} s")
    return p.stdout.readline()

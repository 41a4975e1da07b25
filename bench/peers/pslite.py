"""Peer: bare ps-lite (C++, ZeroMQ over TCP), one scheduler, one server, one worker.

The step program is ``bench/peers/pslite_step.cc``: push a float32 gradient, ``w -= lr * g``
on the server, pull the weights; one key per 1 MiB block. Two rows: ``ps-lite (TCP)`` is
one ``ZPushPull`` per step, ``ps-lite (TCP) push+pull`` is ``ZPush``, wait, ``ZPull``, wait.
After each measurement the worker checks the pulled weights against the same float
arithmetic done locally; a size that fails the check is skipped with a message.

ps-lite is not part of this repository and is never downloaded by it: build it by hand,
outside the repository (``bench/README.md`` says how), and point ``PSLITE_HOME`` at its
source tree (``include/`` and ``build/libps.a``). This module compiles the step program
with ``g++`` against it into a cache folder outside the repository
(``$PSLITE_STEP_CACHE``, default ``~/.cache/grpc-ps-bench``), once per source and library
version. Without ``PSLITE_HOME`` the rows are skipped with a message.

ps-lite binds the address of a network interface, so :mod:`bench.run` starts this module
inside a loopback-only network namespace (``unshare --net``), and this module refuses to
start ps-lite anywhere else. Every role gets ``DMLC_*`` variables pointing at 127.0.0.1,
dies with this process (``PR_SET_PDEATHSIG``), and is killed at ``--deadline``.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

from bench.harness import SIZES, Result, arg_parser, emit, emit_skip, log, loopback_only

SYSTEM = "ps-lite (TCP)"
VARIANTS = {"pushpull": ("ps-lite (TCP)", "ZPushPull; one key per 1 MiB block; server SGD"),
            "split": ("ps-lite (TCP) push+pull", "ZPush, Wait, ZPull, Wait; one key per 1 MiB block; server SGD")}
SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pslite_step.cc")
#: where a ps-lite build keeps its static library, relative to PSLITE_HOME (Makefile, then CMake)
LIBRARIES = ("build/libps.a", "build/libpslite.a", "lib/libps.a", "libpslite.a")


def find_library(home: str) -> str:
    """The static ps-lite library under ``home``. Raises FileNotFoundError with what was tried."""
    for rel in LIBRARIES:
        path = os.path.join(home, rel)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"no ps-lite library under PSLITE_HOME={home} (looked for {', '.join(LIBRARIES)})")


def build(home: str, timeout_s: float = 120.0) -> str:
    """Compile the step program against ps-lite at ``home``; returns the binary's path. Blocks.

    Cached by the hash of the source, the library (path, size, mtime) and the link flags.
    Raises FileNotFoundError (no library) or RuntimeError (the compiler failed).
    """
    lib = find_library(home)
    libs = shlex.split(os.environ.get("PSLITE_LIBS", "-lzmq -lprotobuf"))
    st = os.stat(lib)
    with open(SOURCE, "rb") as f:
        key = hashlib.sha256(f.read() + repr((os.path.realpath(lib), st.st_size, st.st_mtime_ns, libs)).encode())
    cache = os.environ.get("PSLITE_STEP_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "grpc-ps-bench")
    os.makedirs(cache, exist_ok=True)
    binary = os.path.join(cache, f"pslite_step-{key.hexdigest()[:16]}")
    if os.path.isfile(binary):
        return binary
    tmp = f"{binary}.{os.getpid()}.tmp"
    cmd = ["g++", "-O3", "-std=c++14", "-pthread", "-I", os.path.join(home, "include"), SOURCE, lib, *libs,
           "-o", tmp]
    log("ps-lite: " + " ".join(shlex.quote(c) for c in cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        raise RuntimeError(f"g++ failed (exit {proc.returncode}): {tail}")
    os.replace(tmp, binary)
    return binary


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when this process dies (Linux ``prctl(PR_SET_PDEATHSIG)``)."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _result(line: str) -> tuple[Result | None, str | None]:
    """A worker ``STEP`` line as a Result, or (None, why) when its weights check failed."""
    _, variant, nbytes, steps, seconds, median, check = line.split()
    nbytes, steps, seconds, median = int(nbytes), int(steps), float(seconds), float(median)
    system, note = VARIANTS[variant]
    size_name = next(k for k, v in SIZES.items() if v == nbytes)
    if check != "ok":
        return None, f"{size_name}: the pulled weights do not match the pushes ({check})"
    rate = steps / seconds
    return Result(system, size_name, nbytes, steps, seconds, rate, 2 * nbytes * rate / 1e9, median * 1e3,
                  note + "; weights checked"), None


def run(binary: str, sizes: list[str], seconds: float, deadline_s: float) -> None:
    """Start the three roles, forward the worker's results as they come, stop everything. Blocks."""
    argv = [binary, str(seconds), *(str(SIZES[s]) for s in sizes)]
    env = dict(os.environ, DMLC_PS_ROOT_URI="127.0.0.1", DMLC_PS_ROOT_PORT=str(_free_port()),
               DMLC_NUM_SERVER="1", DMLC_NUM_WORKER="1", DMLC_NODE_HOST="127.0.0.1", DMLC_INTERFACE="lo")
    logs = tempfile.TemporaryFile(mode="w+")
    procs: dict[str, subprocess.Popen] = {}
    seen: set[str] = set()
    try:
        for role in ("scheduler", "server"):
            procs[role] = subprocess.Popen(argv, env=dict(env, DMLC_ROLE=role), stdout=subprocess.DEVNULL,
                                           stderr=logs, preexec_fn=_die_with_parent)
        worker = procs["worker"] = subprocess.Popen(argv, env=dict(env, DMLC_ROLE="worker"), stdout=subprocess.PIPE,
                                                    stderr=logs, text=True, preexec_fn=_die_with_parent)

        def forward() -> None:
            for line in worker.stdout:
                if line.startswith("STEP "):
                    r, why = _result(line)
                    if r is not None:
                        emit(r)
                    else:
                        emit_skip(VARIANTS[line.split()[1]][0], why)
                    seen.add(line.split()[2])

        reader = threading.Thread(target=forward, daemon=True)
        reader.start()
        end = time.monotonic() + deadline_s
        for role in ("worker", "server", "scheduler"):  # the worker's Finalize releases the others
            try:
                procs[role].wait(max(1.0, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                emit_skip(SYSTEM, f"ps-lite {role} still running after {deadline_s:g} s: killed "
                                  "(results printed before it are kept)")
                break
        reader.join(5)
        failed = {r: p.returncode for r, p in procs.items() if p.returncode not in (None, 0)}
        if failed and len(seen) < len(sizes):
            logs.seek(0)
            tail = " | ".join(logs.read().strip().splitlines()[-3:])
            emit_skip(SYSTEM, f"ps-lite exited with {failed}: {tail}")
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
        for p in procs.values():
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                log(f"ps-lite: pid {p.pid} did not die within 5 s of SIGKILL")
        logs.close()


def main() -> None:
    p = arg_parser(__doc__.splitlines()[0])
    p.add_argument("--deadline", type=float, default=140.0, help="seconds the three ps-lite processes may run")
    args = p.parse_args()
    home = os.environ.get("PSLITE_HOME")
    if not home:
        emit_skip(SYSTEM, "PSLITE_HOME is not set: build ps-lite by hand outside the repository "
                          "(bench/README.md, 'ps-lite') and export PSLITE_HOME=/path/to/ps-lite")
        return
    if not loopback_only():
        emit_skip(SYSTEM, "refusing to start ps-lite outside a loopback-only network namespace "
                          "(bench.run starts it under `unshare --net`)")
        return
    try:
        binary = build(home)
    except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
        emit_skip(SYSTEM, f"cannot build the step program: {exc}")
        return
    run(binary, args.sizes.split(","), args.seconds, args.deadline)


if __name__ == "__main__":
    sys.exit(main())

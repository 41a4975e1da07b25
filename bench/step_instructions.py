"""Instructions one small step costs the shard process and the worker process (callgrind).

    python -m bench.step_instructions [--path shm|stream] [--side server,worker] [--runs 3]

Wall time at 4 KiB moves by 10-15% between batches of runs on a shared 2-core machine;
instruction counts hardly move. For each side this runs the same exchange twice, ``--steps``
N1 and N2 ``push_pull`` steps of one 4 KiB float32 table on one shard, with that side's
process under valgrind's callgrind and the other side plain, and prints (I(N2) - I(N1)) /
(N2 - N1): the instructions one step costs that process, with start-up and shut-down left out.
The server's background threads (leases, the checkpoint timer) wake on wall time, which
valgrind stretches about fifty-fold, so its count moves by up to ~15k per step from run to
run: the median of ``--runs`` is printed with the runs.

Needs valgrind (``apt-get install valgrind``). Blocks about a minute per run and side;
every process it starts is stopped before it returns.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

import numpy as np

from bench.servers import REPO, ps_servers, readline, stop

#: server flags and Client options of each path
PATHS = {"shm": ((), {}), "stream": (("--no-local-plane",), {"local": False, "stream": True})}
ELEMENTS = 1024  # 4 KiB of float32
#: seconds a server under valgrind gets to stop cleanly (it is killed after that, and counts nothing)
STOP_S = 120.0


def _callgrind(argv: list[str]) -> list[str]:
    return ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *argv]


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONHASHSEED="0", PYTHONPATH=REPO)  # the same dict layouts in every run


def _collected(stderr: str) -> int:
    found = re.search(r"Collected : (\d+)", stderr)
    if found is None:
        raise RuntimeError(f"callgrind reported no count: {stderr[-2000:]}")
    return int(found.group(1))


def steps(address: str, path: str, n: int) -> None:
    """``n`` push_pull steps of one 4 KiB table against the server at ``address``. Blocks."""
    from worker import Client  # here: the worker side is what is measured, imports included alike

    with Client([address], timeout_s=300, **PATHS[path][1]) as ps:
        ps.create("w", shape=(ELEMENTS,), lr=0.001)
        grad, out = np.full(ELEMENTS, 1e-3, np.float32), {"w": np.empty(ELEMENTS, np.float32)}
        for _ in range(n):
            ps.push_pull({"w": grad}, out=out)


def server_count(path: str, n: int) -> int:
    """Instructions of a server process under callgrind that served ``n`` steps, start to stop."""
    argv = _callgrind([sys.executable, "-m", "launcher.server_cli", "--port", "0", "--log-level", "WARNING",
                       *PATHS[path][0]])
    with tempfile.TemporaryFile("w+") as err:  # a file: a full pipe would stall the server
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, text=True, env=_env(), cwd=REPO)
        try:
            line = readline(proc, 300.0)
            if not line.startswith("ps-server listening on "):
                raise RuntimeError(f"ps-server did not start: {line!r}")
            steps(line.rsplit(" ", 1)[1].strip(), path, n)
            proc.terminate()  # a clean stop, slow under valgrind: callgrind reports at exit
            proc.wait(STOP_S)
        finally:
            stop([proc])
        err.seek(0)
        return _collected(err.read())


def worker_count(path: str, n: int) -> int:
    """Instructions of a worker process under callgrind that made ``n`` steps, start to exit."""
    with ps_servers(1, *PATHS[path][0]) as addresses:
        argv = _callgrind([sys.executable, "-m", "bench.step_instructions", "--client", addresses[0],
                           "--path", path, "--steps", str(n)])
        done = subprocess.run(argv, capture_output=True, text=True, env=_env(), cwd=REPO, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"the worker failed: {done.stderr[-2000:]}")
    return _collected(done.stderr)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--path", choices=sorted(PATHS), default="shm")
    p.add_argument("--side", default="server,worker", help="server, worker or both")
    p.add_argument("--steps", default="300,1300", help="N1,N2: the two runs' step counts")
    p.add_argument("--runs", type=int, default=3, help="differences measured per side (the median is printed)")
    p.add_argument("--client", help=argparse.SUPPRESS)  # internal: be the measured worker of this address
    args = p.parse_args()
    if args.client:
        steps(args.client, args.path, int(args.steps))
        return
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (apt-get install valgrind)")
    n1, n2 = (int(x) for x in args.steps.split(","))
    count = {"server": server_count, "worker": worker_count}
    for side in args.side.split(","):
        per_step = [(count[side](args.path, n2) - count[side](args.path, n1)) // (n2 - n1) for _ in range(args.runs)]
        print(f"{args.path} {side}: {statistics.median(per_step) / 1000:.1f}k instructions per 4 KiB step "
              f"(runs: {', '.join(f'{x / 1000:.1f}k' for x in per_step)})", flush=True)


if __name__ == "__main__":
    main()

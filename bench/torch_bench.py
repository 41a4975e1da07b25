"""Training throughput of a ~10 M-parameter torch MLP: the adapter against one process and DDP.

Ways to train the same model (1280 -> 2560 -> 2560 -> 10, ReLU, 9.86 M float32
parameters, 39 MB) on the same synthetic batches of ``--batch`` rows per process, plain SGD:

- ``single``: one torch process, ``torch.optim.SGD`` (torch's default threads: every core);
  ``single-1t``: the same with 1 torch thread;
- ``ddp``: ``DistributedDataParallel`` with the gloo backend, 2 processes on loopback
  (``MASTER_ADDR=127.0.0.1``), 1 torch thread each;
- ``adapter``: 2 worker processes, 1 torch thread each, through
  ``worker.torch.ParameterServerOptimizer`` to 2 ``ps-server`` processes in sync mode (one
  table per parameter; the client picks its data plane: shared memory on one machine).

samples/s counts every process's rows over the timed steps (after ``--warmup`` steps), so a
2-process run at the same step time as ``single`` shows twice its rate. The adapter's
workers also report how a step splits into torch's forward and backward and ``opt.step()``
(push the gradients, the servers apply SGD, pull the weights). Every process reports its
CPU time over the timed steps (the servers' is read from ``/proc``), so the table also has
CPU ms per sample over all processes: the cost, which a busy shared machine disturbs far
less than the wall-clock rate. Each configuration runs ``--rounds`` times, in alternating
order; the best round is reported, all rounds are kept.

    python -m bench.torch_bench                 # ~2 min on the 2-core VM
    python -m bench.torch_bench --steps 10 --rounds 1

Writes ``bench/results/torch-<UTC time>.json``. Needs torch (``pip install torch==2.13.0``).
Loopback only; every child process has a timeout. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from bench.servers import ps_servers

REPO = Path(__file__).resolve().parent.parent
SIZES = (1280, 2560, 2560, 10)
CHILD_TIMEOUT_S = 300


def make_model():
    import torch
    from torch import nn

    torch.manual_seed(0)
    layers = []
    for i in range(len(SIZES) - 1):
        layers.append(nn.Linear(SIZES[i], SIZES[i + 1]))
        if i < len(SIZES) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def batches(rank: int, batch: int, n: int):
    """``n`` fixed synthetic batches of rank ``rank`` (made before timing)."""
    import torch

    g = torch.Generator().manual_seed(rank + 1)
    return [(torch.randn(batch, SIZES[0], generator=g), torch.randint(0, SIZES[-1], (batch,), generator=g))
            for _ in range(n)]


# -- the children ---------------------------------------------------------------------------


def child_single(args) -> dict:
    import torch
    from torch import nn

    if args.threads:
        torch.set_num_threads(args.threads)
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    data = batches(0, args.batch, args.warmup + args.steps)
    loss_fn = nn.CrossEntropyLoss()
    for i, (x, y) in enumerate(data):
        if i == args.warmup:
            start, cpu = time.perf_counter(), time.process_time()
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    return {"samples": args.steps * args.batch, "seconds": time.perf_counter() - start,
            "cpu_s": time.process_time() - cpu, "threads": torch.get_num_threads()}


def child_ddp(args) -> dict:
    import torch
    import torch.distributed as dist
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(args.port))
    dist.init_process_group("gloo", rank=args.rank, world_size=2)
    try:
        model = DistributedDataParallel(make_model())
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        data = batches(args.rank, args.batch, args.warmup + args.steps)
        loss_fn = nn.CrossEntropyLoss()
        for i, (x, y) in enumerate(data):
            if i == args.warmup:
                dist.barrier()
                _mark()
                start, cpu = time.perf_counter(), time.process_time()
            opt.zero_grad()
            loss_fn(model(x), y).backward()   # gradients all-reduced (averaged) during backward
            opt.step()
        return {"samples": args.steps * args.batch, "seconds": time.perf_counter() - start,
                "cpu_s": time.process_time() - cpu}
    finally:
        dist.destroy_process_group()


def child_adapter(args) -> dict:
    import torch
    from torch import nn

    from worker import Client
    from worker.torch import ParameterServerOptimizer

    torch.set_num_threads(1)
    model = make_model()
    data = batches(args.rank, args.batch, args.warmup + args.steps)
    loss_fn = nn.CrossEntropyLoss()
    with Client(args.servers.split(","), worker_id=args.rank, wait_timeout_s=120) as ps:
        opt = ParameterServerOptimizer(model, ps, optimizer="sgd", lr=0.01)
        compute = step = 0.0
        for i, (x, y) in enumerate(data):
            if i == args.warmup:
                _mark()
                start, cpu = time.perf_counter(), time.process_time()
                compute = step = 0.0
            t0 = time.perf_counter()
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            t1 = time.perf_counter()
            opt.step()
            compute += t1 - t0
            step += time.perf_counter() - t1
        seconds = time.perf_counter() - start
        from worker.client.dense_step import data_planes

        planes = sorted(set(data_planes(ps)))
    return {"samples": args.steps * args.batch, "seconds": seconds, "cpu_s": time.process_time() - cpu,
            "compute_s": compute, "opt_step_s": step, "planes": planes}


def _mark() -> None:
    """Tell the parent the timed steps begin (it samples the servers' CPU time then)."""
    print("timing", flush=True)


CHILDREN = {"single": child_single, "ddp": child_ddp, "adapter": child_adapter}


# -- the parent -----------------------------------------------------------------------------


def _spawn(role: str, args, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "bench.torch_bench", "--role", role, "--batch", str(args.batch),
           "--steps", str(args.steps), "--warmup", str(args.warmup), *extra]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True)


def _collect(procs: list[subprocess.Popen], on_timing=None) -> list[dict]:
    """Each child's result (its last stdout line, JSON). ``on_timing()`` runs when the first
    child says its timed steps begin. Bounded by CHILD_TIMEOUT_S; kills what is left."""
    out = []
    deadline = time.monotonic() + CHILD_TIMEOUT_S
    timer = threading.Timer(CHILD_TIMEOUT_S, lambda: [p.kill() for p in procs if p.poll() is None])
    timer.start()
    try:
        if on_timing is not None and procs[0].stdout is not None:
            for line in procs[0].stdout:
                if line.strip() == "timing":
                    on_timing()
                    break
        for p in procs:
            stdout, _ = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            if p.returncode != 0:
                raise RuntimeError(f"a benchmark process failed with status {p.returncode}")
            out.append(json.loads(stdout.strip().splitlines()[-1]))
    finally:
        timer.cancel()
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
    return out


def _cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds of processes ``pids`` so far (Linux /proc)."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])       # utime, stime (clock ticks)
    return total / os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_config(name: str, args) -> dict:
    servers_cpu = None
    if name.startswith("single"):
        threads = "1" if name == "single-1t" else "0"
        results = _collect([_spawn("single", args, "--threads", threads)])
    elif name == "ddp":
        port = str(_free_port())
        results = _collect([_spawn("ddp", args, "--rank", str(r), "--port", port) for r in range(2)])
    else:
        with ps_servers(2, "--mode", "sync", "--num-workers", "2", "--sync-timeout", "120",
                        per_server=lambda i: ["--shard-index", str(i), "--num-shards", "2"]) as addresses:
            pids = _server_pids()
            marks = []
            results = _collect([_spawn("adapter", args, "--rank", str(r), "--servers", ",".join(addresses))
                                for r in range(2)], on_timing=lambda: marks.append(_cpu_s(pids)))
            servers_cpu = _cpu_s(pids) - marks[0]
    seconds = max(r["seconds"] for r in results)
    rate = sum(r["samples"] / r["seconds"] for r in results)
    cpu = sum(r["cpu_s"] for r in results) + (servers_cpu or 0.0)
    samples = sum(r["samples"] for r in results)
    return {"config": name, "samples_per_s": rate, "cpu_ms_per_sample": 1000 * cpu / samples,
            "servers_cpu_s": servers_cpu, "seconds": seconds, "processes": results}


def _server_pids() -> list[int]:
    """The ps-server children of this process (started by bench.servers.ps_servers)."""
    me = os.getpid()
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmd = f.read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == me and b"launcher.server_cli" in cmd:
                pids.append(int(entry))
    return pids


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.torch_bench", description=__doc__.split("\n")[0])
    p.add_argument("--role", choices=list(CHILDREN), default=None, help=argparse.SUPPRESS)
    p.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--servers", default="", help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=64, help="rows per batch per process")
    p.add_argument("--steps", type=int, default=20, help="timed steps per process")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--rounds", type=int, default=3, help="measurements of each configuration")
    p.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.role:
        print(json.dumps(CHILDREN[args.role](args)), flush=True)
        return 0
    import torch

    params = sum(t.numel() for t in make_model().parameters())
    order = ["single", "single-1t", "ddp", "adapter"]
    rounds: dict[str, list[dict]] = {name: [] for name in order}
    for r in range(args.rounds):
        for name in order if r % 2 == 0 else order[::-1]:
            res = run_config(name, args)
            rounds[name].append(res)
            print(f"round {r + 1}: {name:8s} {res['samples_per_s']:8.1f} samples/s", file=sys.stderr, flush=True)
    best = {name: max(rs, key=lambda x: x["samples_per_s"]) for name, rs in rounds.items()}
    report = {
        "time": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch.__version__},
        "model": {"sizes": SIZES, "parameters": params, "bytes": params * 4},
        "settings": {"batch": args.batch, "steps": args.steps, "warmup": args.warmup, "rounds": args.rounds},
        "best": best, "rounds": rounds,
    }
    out = REPO / "bench" / "results" / f"torch-{report['time'].replace(':', '').replace('-', '')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    single, ddp = best["single"]["samples_per_s"], best["ddp"]["samples_per_s"]
    print(f"model: {params / 1e6:.2f} M parameters; batch {args.batch} per process; {args.steps} timed steps; "
          f"best of {args.rounds} rounds")
    print("| configuration | samples/s | / single | / ddp | CPU ms per sample (all processes) |")
    print("|---|---:|---:|---:|---:|")
    for name in order:
        b = best[name]
        print(f"| {name} | {b['samples_per_s']:.1f} | {b['samples_per_s'] / single:.2f} | "
              f"{b['samples_per_s'] / ddp:.2f} | {b['cpu_ms_per_sample']:.2f} |")
    procs = best["adapter"]["processes"]
    compute = sum(x["compute_s"] for x in procs) / len(procs)
    step = sum(x["opt_step_s"] for x in procs) / len(procs)
    print(f"adapter step ({', '.join(procs[0]['planes'])}): forward+backward {1000 * compute / args.steps:.0f} ms, "
          f"opt.step() {1000 * step / args.steps:.0f} ms per step; servers' CPU "
          f"{1000 * best['adapter']['servers_cpu_s'] / args.steps:.0f} ms per step (both shards)")
    print(f"written to {out.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

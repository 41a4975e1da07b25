"""End-to-end training throughput: an MLP of about 10 M parameters on synthetic data.

Compares samples/s of (a) the same NumPy training in one process (forward, backward and
SGD, no servers), once with BLAS's default threads (every core) and once with one with (b) the cluster: 2 ``ps-server``
processes and 2 worker processes (each ``OPENBLAS_NUM_THREADS=1``, one core's worth),
each worker looping ``push_pull(grads, out=params)`` through :class:`worker.Client`, in
async and in sync mode. The model is ``make_model("mlp", 784, 10, hidden=(2048, 2048,
2048))`` (10.0 M float32 parameters, 40 MB), batch 64, SGD lr 0.01.

    python -m bench.train [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

from bench.servers import REPO, ps_servers

HIDDEN = (2048, 2048, 2048)
FEATURES, CLASSES, BATCH, LR = 784, 10, 64, 0.01


def _model():
    from worker.models import make_model

    return make_model("mlp", FEATURES, CLASSES, hidden=HIDDEN)


def _batch(rng):
    return rng.standard_normal((BATCH, FEATURES), dtype=np.float32), rng.integers(0, CLASSES, BATCH)


def local(seconds: float) -> dict:
    """Single-process NumPy training: samples/s."""
    model = _model()
    rng = np.random.default_rng(0)
    params = {k: (rng.standard_normal(s.shape, dtype=np.float32) * 0.01) for k, s in model.parameters().items()}
    x, y = _batch(rng)
    for _ in range(2):
        model.loss_and_grads(params, x, y)
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        _, grads = model.loss_and_grads(params, x, y)
        for k, g in grads.items():
            params[k] -= LR * g
        steps += 1
    dt = time.perf_counter() - t0
    n = sum(p.size for p in params.values())
    return {"config": "NumPy, one process", "params": n, "steps": steps, "seconds": dt,
            "samples_per_s": steps * BATCH / dt}


def worker(addresses: list[str], rank: int, seconds: float) -> None:
    """One worker process: prints a JSON line with its steps and time."""
    from worker import Client

    model = _model()
    rng = np.random.default_rng(rank + 1)
    x, y = _batch(rng)
    with Client(addresses, worker_id=rank, wait_timeout_s=120) as ps:
        for name, spec in model.parameters().items():
            ps.create(name, shape=spec.shape, init=spec.init, seed=1, optimizer="sgd", lr=LR)
        names = list(model.parameters())
        params = ps.pull(names)
        for _ in range(2):
            _, grads = model.loss_and_grads(params, x, y)
            params = ps.push_pull(grads, names, out=params)
        steps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            _, grads = model.loss_and_grads(params, x, y)
            params = ps.push_pull(grads, names, out=params)
            steps += 1
        dt = time.perf_counter() - t0
    print("TRAIN " + json.dumps({"rank": rank, "steps": steps, "seconds": dt}), flush=True)


def cluster(mode: str, seconds: float, servers: int = 2, workers: int = 2) -> dict:
    args = ["--mode", mode] + (["--num-workers", str(workers)] if mode == "sync" else [])
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with ps_servers(servers, *args) as addresses:
        procs = [subprocess.Popen([sys.executable, "-m", "bench.train", "--worker", str(r), "--seconds", str(seconds),
                                   "--servers", ",".join(addresses)], stdout=subprocess.PIPE, text=True, env=env,
                                  cwd=REPO) for r in range(workers)]
        outs = []
        for p in procs:
            try:
                out, _ = p.communicate(timeout=seconds + 120)
            except subprocess.TimeoutExpired:
                p.kill()
                out, _ = p.communicate()
            outs += [json.loads(line[6:]) for line in out.splitlines() if line.startswith("TRAIN ")]
    if len(outs) != workers:
        return {"config": f"{mode}, {servers} servers x {workers} workers (processes)", "error": "a worker failed"}
    rate = sum(o["steps"] * BATCH / o["seconds"] for o in outs)
    return {"config": f"{mode}, {servers} servers x {workers} worker processes", "steps": sum(o["steps"] for o in outs),
            "seconds": max(o["seconds"] for o in outs), "samples_per_s": rate}


def local_process(seconds: float, threads: int | None) -> dict:
    """:func:`local` in a fresh process, with BLAS limited to ``threads`` (None: its default)."""
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    label = "default BLAS threads"
    if threads is not None:
        env.update(OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        label = f"OPENBLAS_NUM_THREADS={threads}"
    out = subprocess.run([sys.executable, "-m", "bench.train", "--local", "--seconds", str(seconds)], env=env,
                         cwd=REPO, capture_output=True, text=True, timeout=seconds + 120).stdout
    row = next(json.loads(line[6:]) for line in out.splitlines() if line.startswith("TRAIN "))
    row["config"] = f"NumPy, one process ({label})"
    return row


def run_all(quick: bool = False) -> list[dict]:
    seconds = 4.0 if quick else 12.0
    rows = [local_process(seconds, None), local_process(seconds, 1)]
    for mode in ("async", "sync"):
        rows.append(cluster(mode, seconds))
    base = max(rows[0]["samples_per_s"], rows[1]["samples_per_s"])  # the faster one-process setting
    for r in rows:
        if "samples_per_s" in r:
            r["ratio_vs_local"] = r["samples_per_s"] / base
    print(table(rows), file=sys.stderr, flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| configuration | samples/s | ratio vs the faster one-process run |", "|---|---:|---:|"]
    for r in rows:
        if "samples_per_s" in r:
            lines.append(f"| {r['config']} | {r['samples_per_s']:,.0f} | {r['ratio_vs_local']:.2f} |")
        else:
            lines.append(f"| {r['config']} | failed: {r.get('error')} | - |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--local", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--servers", default="", help=argparse.SUPPRESS)
    p.add_argument("--seconds", type=float, default=10.0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.local:
        print("TRAIN " + json.dumps(local(args.seconds)), flush=True)
        return
    if args.worker is not None:
        worker(args.servers.split(","), args.worker, args.seconds)
        return
    print(table(run_all(args.quick)))


if __name__ == "__main__":
    main()

"""Run the parameter server and its peers under one harness, in one run, and print the table.

    python -m bench.run            # full: every system, 4 KiB..128 MiB, 1 and 2 shards (< 10 min)
    python -m bench.run --quick    # shorter timings (< 2 min)

Each system runs in its own processes (servers as real ``ps-server`` processes), one after
the other, each bounded by a timeout. Results go to ``--out`` as JSON and as a markdown
table, with the machine, the library versions and the settings. Bare ps-lite (C++) is
measured when ``PSLITE_HOME`` points at a ps-lite built by hand outside the repository
(:mod:`bench.peers.pslite`); without it its rows are skipped with a message.

The project has one row per path: ``ps shm`` (same host, shared memory), ``ps stream-tcp``
(the TCP data plane that workers on other hosts use) and ``ps grpc-tcp`` (gRPC alone).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import time

from bench.harness import SIZES

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: issue 4's GB/s for the peers this run also measures, for the ceiling-scaled comparison
QUOTED_PEERS = {"torch rpc PS": {"1MiB": (1.3, 2.2), "16MiB": (2.5, 3.1), "128MiB": (1.0, 1.1)},
                "Ray actor PS": {"1MiB": (0.35, 0.38), "16MiB": (1.7, 2.2), "128MiB": (4.7, 5.5)}}


def systems(quick: bool) -> list[tuple[str, list[str], str]]:
    """(key, module args, kind) in run order; kinds in ``NAMESPACED`` run in a loopback-only namespace."""
    out = [
        ("ps shm buffers", ["bench.peers.project", "--path", "shm", "--api", "buffers", "--shards", "1,2"], "ps"),
        ("ps shm", ["bench.peers.project", "--path", "shm", "--shards", "1,2"], "ps"),
        ("ps grpc-tcp", ["bench.peers.project", "--path", "tcp", "--shards", "1,2"], "ps"),
        ("ps stream-tcp", ["bench.peers.project", "--path", "stream", "--shards", "1,2"], "ps"),
        ("ps grpc-uds x1", ["bench.peers.project", "--path", "uds", "--shards", "1"], "ps"),
        ("ps shm push+pull x1", ["bench.peers.project", "--path", "shm", "--api", "split", "--shards", "1"], "ps"),
        ("grpc echo tcp", ["bench.peers.grpc_echo"], "baseline"),
        ("python socket floor", ["bench.peers.socket_floor"], "baseline"),
        ("grpc protobuf-bytes PS", ["bench.peers.naive_pb"], "baseline"),
        ("torch rpc PS", ["bench.peers.torch_rpc"], "peer"),
        ("Ray actor PS", ["bench.peers.ray_ps"], "ray"),
        ("ps-lite (TCP)", ["bench.peers.pslite"], "pslite"),
        ("MXNet KVStore PS (ps-lite)", ["bench.peers.mxnet_ps"], "mxnet"),
    ]
    if quick:
        out = [s for s in out if s[0] not in ("ps grpc-uds x1", "ps shm push+pull x1")]
    return out


#: kinds that bind the host's address: started only under `unshare --net` with loopback up
NAMESPACED = ("ray", "mxnet", "pslite")
#: kinds whose module names its own rows (several per module)
SELF_NAMED = ("ps", "pslite")


def machine() -> dict:
    info = {"nproc": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        info["cpu"] = platform.processor()
    try:
        with open("/proc/meminfo") as f:
            info["memory_gib"] = round(int(f.readline().split()[1]) / (1 << 20), 1)
    except OSError:
        pass
    for mod in ("numpy", "grpc", "google.protobuf", "torch", "ray"):
        try:
            m = __import__(mod, fromlist=["__version__"])
            info[mod] = getattr(m, "__version__", "?")
        except Exception:
            info[mod] = "not installed"
    info["loadavg_start"] = os.getloadavg()
    return info


def run_system(key: str, argv: list[str], kind: str, args) -> tuple[list[dict], list[str]]:
    # mxnet 1.9.1 needs numpy<1.24: its own interpreter (bench/peers/mxnet_ps.py)
    python = os.environ.get("MXNET_PYTHON", sys.executable) if kind == "mxnet" else sys.executable
    cmd = [python, "-m", *argv, "--sizes", args.sizes, "--seconds", str(args.seconds)]
    if kind == "pslite":  # its processes stop before this run's timeout kills the module
        cmd += ["--deadline", str(max(10.0, args.timeout - 10))]
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if kind in NAMESPACED:  # peers that bind the host's address: a loopback-only namespace
        if shutil.which("unshare") is None:
            return [], [f"{key}: skipped: `unshare` not found (it runs only in a loopback-only namespace)"]
        env["RAY_USAGE_STATS_ENABLED"] = "0"
        inner = " ".join(_quote(c) for c in cmd)
        cmd = ["unshare", "--net", "sh", "-c", f"ip link set lo up && exec {inner}"]
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        results, skips = _parse(out)
        return results, skips + [f"{key}: timed out after {args.timeout} s (partial results kept)"]
    results, skips = _parse(proc.stdout)
    if proc.returncode != 0 and not results and not skips:
        tail = (proc.stderr or "").strip().splitlines()[-5:]
        skips.append(f"{key}: failed (exit {proc.returncode}): {' | '.join(tail)}")
    for r in results:
        r["key"] = r["system"] if kind in SELF_NAMED else key  # shard counts, ps-lite's two variants
    print(f"  {key}: {len(results)} results in {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
    return results, skips


def _quote(s: str) -> str:
    import shlex

    return shlex.quote(s)


def _parse(stdout: str) -> tuple[list[dict], list[str]]:
    results, skips = [], []
    for line in stdout.splitlines():
        if line.startswith("RESULT "):
            results.append(json.loads(line[7:]))
        elif line.startswith("SKIP "):
            s = json.loads(line[5:])
            skips.append(f"{s['system']}: skipped: {s['why']}")
    return results, skips


def _fmt(size: str, r: dict | None) -> str:
    if r is None:
        return "-"
    if size == "4KiB":
        return f"{r['steps_per_s']:,.0f}"
    return f"{r['gb_per_s']:.2f}"


def tables(results: list[dict], sizes: list[str], ceiling: float | None = None) -> str:
    """The markdown tables; ``ceiling`` is this run's memory ceiling (GB/s, :mod:`bench.ceiling`)."""
    by = {(r["key"], r["size"]): r for r in results}
    keys = list(dict.fromkeys(r["key"] for r in results))
    head = "| system | " + " | ".join(("4 KiB steps/s" if s == "4KiB" else f"{s[:-3]} MiB GB/s") for s in sizes) + " |"
    lines = [head, "|---|" + "---:|" * len(sizes)]
    for k in keys:
        lines.append(f"| {k} | " + " | ".join(_fmt(s, by.get((k, s))) for s in sizes) + " |")
    if ceiling:
        lines.append("| NumPy copy of 128 MiB into a warm buffer, one process (memory ceiling, this run) | "
                     + " | ".join(f"{ceiling:.2f}" if s == "128MiB" else "" for s in sizes) + " |")
    lines += ["", "Project paths: `ps shm` = same host (shared memory); `ps stream-tcp` = the TCP data plane "
              "(`Client(local=False)`, workers on other hosts); `ps grpc-tcp` = gRPC alone. "
              "`ps-lite (TCP)` is bare ps-lite with `ZPushPull`; `push+pull` rows are two calls per step."]
    # ratios: the project's best path at each size against each peer
    ps_keys = [k for k in keys if k.startswith("ps ")]
    peers = [k for k in keys if not k.startswith("ps ")]
    metric = lambda s, r: r["steps_per_s"] if s == "4KiB" else r["gb_per_s"]  # noqa: E731
    lines += ["", "Ratio project / peer (steps/s at 4 KiB, GB/s otherwise; > 1 means the project is faster):", ""]
    lines.append("| project | vs | " + " | ".join(s for s in sizes) + " |")
    lines.append("|---|---|" + "---:|" * len(sizes))
    for pk in [k for k in ps_keys if k in ("ps shm buffers x1", "ps shm buffers x2", "ps shm x1", "ps shm x2",
                                           "ps grpc-tcp x1", "ps stream-tcp x1", "ps stream-tcp x2")]:
        for peer in peers:
            cells = []
            for s in sizes:
                a, b = by.get((pk, s)), by.get((peer, s))
                cells.append(f"{metric(s, a) / metric(s, b):.2f}" if a and b else "-")
            lines.append(f"| {pk} | {peer} | " + " | ".join(cells) + " |")
    for two, one in (("ps shm buffers x2", "ps shm buffers x1"), ("ps shm x2", "ps shm x1"),
                     ("ps grpc-tcp x2", "ps grpc-tcp x1"), ("ps stream-tcp x2", "ps stream-tcp x1"),
                     ("ps stream-tcp x1", "ps grpc-tcp x1"), ("ps stream-tcp x2", "ps grpc-tcp x2")):
        cells = [f"{metric(s, by[(two, s)]) / metric(s, by[(one, s)]):.2f}"
                 if (two, s) in by and (one, s) in by else "-" for s in sizes]
        if any(c != "-" for c in cells):
            lines.append(f"| {two} | {one} | " + " | ".join(cells) + " |")
    if ceiling:
        lines += scaled(by, ps_keys, sizes, ceiling)
    return "\n".join(lines)


def scaled(by: dict, ps_keys: list[str], sizes: list[str], ceiling: float) -> list[str]:
    """Lines comparing this run with issue 4's quoted peers, each as a fraction of its own run's ceiling.

    The quoted numbers were measured when a 128 MiB copy ran at ``ISSUE_CEILING_GB_S``;
    this run's ceiling is ``ceiling``. Latency (4 KiB) has no such yardstick: left out.
    """
    from bench.ceiling import ISSUE_CEILING_GB_S

    big = [s for s in sizes if s != "4KiB"]
    best = {s: max((by[(k, s)]["gb_per_s"] for k in ps_keys if (k, s) in by), default=None) for s in big}
    quoted = QUOTED_PEERS
    lines = ["", f"Against issue 4's quoted peers, each as a fraction of its run's memory ceiling "
             f"(this run {ceiling:.2f} GB/s, the issue's {ISSUE_CEILING_GB_S:g} GB/s). "
             "Project's best path / peer's quoted high (low); > 1 means the project is faster:", "",
             "| peer (quoted) | " + " | ".join(big) + " |", "|---|" + "---:|" * len(big)]
    for peer, q in quoted.items():
        cells = []
        for s in big:
            if best[s] is None:
                cells.append("-")
                continue
            ours = best[s] / ceiling
            lo, hi = (x / ISSUE_CEILING_GB_S for x in q[s])
            cells.append(f"{ours / hi:.2f} ({ours / lo:.2f})")
        lines.append(f"| {peer} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="shorter timings, fewer variants (< 2 min)")
    p.add_argument("--seconds", type=float, default=None, help="minimum measured time per size and system")
    p.add_argument("--sizes", default=",".join(SIZES))
    p.add_argument("--only", default="", help="comma-separated system keys to run (default: all)")
    p.add_argument("--timeout", type=float, default=None, help="seconds one system may take in all")
    p.add_argument("--train", choices=["auto", "yes", "no"], default="auto",
                   help="also run the end-to-end MLP training benchmark (auto: yes unless --only)")
    p.add_argument("--out", default=os.path.join(REPO, "bench", "results"), help="folder for JSON and markdown")
    args = p.parse_args()
    if args.seconds is None:
        args.seconds = 0.6 if args.quick else 2.0
    if args.timeout is None:
        args.timeout = 90.0 if args.quick else 150.0
    sizes = args.sizes.split(",")
    started = datetime.datetime.now(datetime.timezone.utc)
    info = machine()
    from bench.ceiling import measure

    info["memory_ceiling_start"] = measure()
    print(f"machine: {info}", file=sys.stderr, flush=True)
    results: list[dict] = []
    notes: list[str] = []
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    for key, argv, kind in systems(args.quick):
        if only and key not in only:
            continue
        r, s = run_system(key, argv, kind, args)
        results += r
        notes += s
    training = None
    if args.train == "yes" or (args.train == "auto" and not only):
        from bench import train

        training = train.run_all(quick=args.quick)
    info["loadavg_end"] = os.getloadavg()
    info["memory_ceiling_end"] = measure()
    ceiling = min(info["memory_ceiling_start"]["copy_warm_gb_s"], info["memory_ceiling_end"]["copy_warm_gb_s"])
    settings = {"quick": args.quick, "seconds_per_size": args.seconds, "sizes": sizes,
                "started_utc": started.isoformat(timespec="seconds"),
                "wall_s": round((datetime.datetime.now(datetime.timezone.utc) - started).total_seconds(), 1),
                "command": " ".join(["python -m bench.run", *sys.argv[1:]])}
    table = tables(results, sizes, ceiling)
    md = [f"# Benchmark run {settings['started_utc']}", "",
          f"Command: `{settings['command']}`; wall {settings['wall_s']} s.", "",
          "Machine: " + ", ".join(f"{k} {v}" for k, v in info.items()), "", table, ""]
    if training:
        from bench import train

        md += ["End-to-end training (samples/s):", "", train.table(training), ""]
    if notes:
        md += ["Notes:", ""] + [f"- {n}" for n in notes] + [""]
    text = "\n".join(md)
    print(text)
    os.makedirs(args.out, exist_ok=True)
    stamp = started.strftime("%Y%m%dT%H%M%SZ") + ("-quick" if args.quick else "")
    with open(os.path.join(args.out, f"run-{stamp}.json"), "w") as f:
        json.dump({"machine": info, "settings": settings, "results": results, "training": training,
                   "notes": notes}, f, indent=1)
    with open(os.path.join(args.out, f"run-{stamp}.md"), "w") as f:
        f.write(text)
    print(f"wrote {args.out}/run-{stamp}.json and .md", file=sys.stderr)


if __name__ == "__main__":
    main()

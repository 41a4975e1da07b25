"""``ps-launch``: a whole parameter-server cluster on this machine, as the project's main job.

With no arguments it starts 2 servers and 2 workers in sync mode on loopback and trains an
MLP (64 hidden units, Adam at lr 0.01, batches of 32, 20 epochs) on the embedded digits
dataset. It shows one live progress display fed by the workers' metrics files, evaluates
the final model on the held-out split through a read-only (observer) client, stops
everything it started, and writes a run folder (default ``runs/<timestamp>``):

- ``metrics.jsonl``: one JSON line per step per worker, merged in time order;
- ``loss.png``: training loss against time and against steps, one line per worker
  (skipped with a message when matplotlib is not installed);
- ``server-I.log``, ``worker-I.log`` (stderr) and ``worker-I.out`` (stdout);
- ``model.json`` with ``--save PATH``: where the trained model was written (every table to
  one ``.npz``/``.safetensors`` file, as ``ps-admin export`` writes it), its tables and size.

Exit status: 0 when every process succeeded; 1 when any failed (each named, with the last
lines of its stderr) or the run exceeded ``--timeout``; 130/143 after SIGINT/SIGTERM,
which stop everything cleanly; 2 for bad flags.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from launcher.cli_logging import configure_logging
from launcher.envargs import EnvArgumentParser
from launcher.local_cluster import ClusterConfig, ClusterError, LocalCluster
from launcher.progress import MetricsTail, Progress
from ps.errors import PSError
from launcher.worker_cli import StopSignals, add_training_flags, train_config_from_args, training_argv
from worker.training.loop import TrainConfig

log = logging.getLogger("ps-launch")

#: how often the launcher looks at its children and their metrics files, in seconds
POLL_S = 0.2


def build_parser(environ=None) -> EnvArgumentParser:
    p = EnvArgumentParser(
        prog="ps-launch", environ=environ,
        description="Run a local parameter-server cluster (servers and workers as processes on loopback), "
                    "train, show progress, evaluate the final model and write a run folder. With no "
                    "arguments: 2 servers, 2 sync workers, an MLP on the embedded digits.",
    )
    p.add_argument("--num-servers", "--servers", type=int, default=2,
                   help="number of ps-server shards (a count, read from PS_NUM_SERVERS; ps-worker's --servers and "
                        "PS_SERVERS are a list of addresses)")
    p.add_argument("--workers", type=int, default=2, help="number of ps-worker processes")
    p.add_argument("--mode", choices=["sync", "async", "ssp"], default="sync",
                   help="consistency: sync (BSP), async (apply on arrival), ssp (bounded staleness)")
    p.add_argument("--staleness", type=int, default=2, help="ssp: clocks a worker may run ahead of the slowest")
    p.add_argument("--sync-timeout", type=float, default=60.0,
                   help="seconds a server lets a push or pull wait on other workers")
    add_training_flags(p)
    p.add_argument("--save", default=None,
                   help="after training, write every table to this .npz (or .safetensors) file, as ps-admin export "
                        "does; refuses an existing file")
    p.add_argument("--run-dir", default=None, help="run folder for metrics, plot and logs (default runs/<timestamp>)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds the whole run may take before it is stopped")
    p.add_argument("--start-timeout", type=float, default=30.0,
                   help="seconds for the servers to report their ports and become healthy")
    p.add_argument("--stop-timeout", type=float, default=10.0,
                   help="seconds a process gets after SIGTERM before SIGKILL")
    p.add_argument("--log-level", default="WARNING", help="this launcher's log level: DEBUG, INFO, WARNING, ERROR")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    try:
        for flag, value in (("--num-servers (--servers)", args.num_servers), ("--workers", args.workers)):
            if value < 1:
                raise ValueError(f"{flag} must be >= 1, got {value}")
        train_cfg = train_config_from_args(args, num_workers=args.workers)
        cluster_cfg = ClusterConfig(
            run_dir=Path(args.run_dir) if args.run_dir else _new_run_dir(Path("runs")),
            num_servers=args.num_servers, num_workers=args.workers, mode=args.mode, staleness=args.staleness,
            sync_timeout_s=args.sync_timeout, worker_args=tuple(training_argv(args)),
            start_timeout_s=args.start_timeout, stop_timeout_s=args.stop_timeout)
        cluster_cfg.validate()
        if args.timeout <= 0:
            raise ValueError(f"--timeout must be > 0 seconds, got {args.timeout}")
        save = _save_path(args.save)
    except ValueError as exc:
        parser.error(str(exc))
    return run(cluster_cfg, train_cfg, timeout_s=args.timeout, save=save)


def _save_path(value: str | None) -> Path | None:
    """``--save``, checked before anything starts. Raises ValueError (suffix, existing file)."""
    if not value:
        return None
    from worker.export.model_file import file_format

    file_format(value)
    if Path(value).exists():
        raise ValueError(f"--save {value}: the file exists; remove it or choose another name")
    return Path(value)


def run(cluster_cfg: ClusterConfig, train_cfg: TrainConfig, *, timeout_s: float, out: IO[str] = sys.stdout,
        save: Path | None = None) -> int:
    """Start the cluster, watch it train, evaluate, save the model to ``save`` (if given),
    stop it, write the run folder.

    Blocks for the whole run (bounded by ``timeout_s`` plus the start and stop timeouts).
    Returns the exit status. SIGTERM/SIGINT (handled while it runs; call from the main
    thread) stop everything cleanly: the exit status is then 128 + the signal number.
    """
    started = time.monotonic()
    progress = Progress(out, cluster_cfg.num_workers, train_cfg.epochs)
    progress.print(f"ps-launch: {cluster_cfg.num_servers} server(s), {cluster_cfg.num_workers} worker(s), "
                   f"{cluster_cfg.mode} mode; {_describe(train_cfg)}; run folder {cluster_cfg.run_dir}")
    cluster = LocalCluster(cluster_cfg)
    tail = MetricsTail([cluster.metrics_path(r) for r in range(cluster_cfg.num_workers)])
    records: list[dict[str, Any]] = []
    final: tuple[str, float, int] | None = None
    saved = None
    problems: list[str] = []
    with StopSignals(second="ignore") as stop:  # a second Ctrl-C must not cut the shutdown short
        try:
            cluster.start_servers()
            if not stop.requested:
                progress.print(f"servers: {', '.join(cluster.addresses)}; training...")
                cluster.start_workers()
                problems += _watch(cluster, tail, progress, records, started + timeout_s, timeout_s, stop)
            if not (problems or cluster.failures() or stop.requested):
                final = _final_evaluation(cluster.addresses, train_cfg)
                if save is not None:
                    try:
                        saved = _save_model(cluster, save)
                    except (PSError, OSError, ValueError) as exc:
                        problems.append(f"--save {save}: {type(exc).__name__}: {exc}")
        except ClusterError as exc:
            problems.append(str(exc))
        except Exception as exc:  # final evaluation (data, model, cluster errors): report, still clean up
            problems.append(f"final evaluation failed: {type(exc).__name__}: {exc}")
        finally:
            if stop.requested:
                progress.print(f"ps-launch: interrupted by signal {stop.signum}; stopping everything")
            statuses = cluster.stop()
        code = stop.exit_code
    new = tail.read_new()
    records += new
    progress.update(new)
    progress.finish()
    for child in cluster.servers:  # a server must stop cleanly on SIGTERM
        if statuses.get(child.name) not in (0, None):
            child.failed = True
    problems += [c.describe_failure() for c in cluster.failures()]
    artefacts = _write_run_folder(cluster, records, progress) if cluster_cfg.run_dir.exists() else []
    elapsed = time.monotonic() - started
    if code:  # on a terminal, Ctrl-C reached the children too: their exits are not failures
        progress.print(f"ps-launch: stopped after {elapsed:.1f} s; logs in {cluster_cfg.run_dir}")
        return code
    if problems:
        for p in problems:
            print(f"ps-launch: FAILED: {p}", file=sys.stderr, flush=True)
        print(f"ps-launch: failed after {elapsed:.1f} s; logs in {cluster_cfg.run_dir}", file=sys.stderr, flush=True)
        return 1
    for w in cluster.workers:
        line = _last_line(w.out_path)
        if line:
            progress.print(f"  {line}")
    metric, value, rows = final
    score = f"{value:.4f}" if metric == "accuracy" else f"{value:.6g}"
    progress.print(f"ps-launch: final model: test {metric} {score} on {rows} held-out rows of {train_cfg.data}")
    if saved is not None:
        progress.print(f"ps-launch: saved the model to {saved.path} ({len(saved.tables)} tables, {saved.bytes} bytes)")
        artefacts.append("model.json")
    progress.print(f"ps-launch: done in {elapsed:.1f} s; run folder {cluster_cfg.run_dir} ({', '.join(artefacts)})")
    return 0


def _watch(cluster: LocalCluster, tail: MetricsTail, progress: Progress, records: list[dict[str, Any]],
           deadline: float, timeout_s: float, stop: StopSignals) -> list[str]:
    """Show progress until every worker exited, one process failed, a signal came, or the
    deadline passed. Returns problems other than failed processes (``cluster.failures()``).
    """
    while not stop.requested:
        new = tail.read_new()
        records += new
        progress.update(new)
        for rank, w in enumerate(cluster.workers):
            if w.returncode is not None and rank not in progress.status:
                progress.mark(rank, "done" if w.returncode == 0 else f"failed, status {w.returncode}")
        if cluster.check() or cluster.workers_done():
            return []
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return [f"timed out: the run took longer than --timeout {timeout_s:g} s, so it was stopped"]
        progress.render()
        running = next(w for w in cluster.workers if w.returncode is None)
        try:  # wakes early when this worker exits
            running.popen.wait(timeout=min(POLL_S, remaining))
        except subprocess.TimeoutExpired:
            pass
    return []


def _save_model(cluster: LocalCluster, path: Path):
    """``--save``: export every table to ``path`` and record it in the run folder's ``model.json``."""
    from worker.export import export_model

    result = export_model(cluster.addresses, path, timeout_s=60.0)
    cluster.config.run_dir.mkdir(parents=True, exist_ok=True)
    record = {**result.to_json(), "path": str(Path(result.path).resolve())}
    (cluster.config.run_dir / "model.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return result


def _final_evaluation(addresses: list[str], cfg: TrainConfig) -> tuple[str, float, int]:
    """Pull the final model with an observer client and score it on the held-out split."""
    from worker.client.client import Client
    from worker.data.dataset import open_source
    from worker.training.loop import build_model, evaluate, is_torch_model

    _, test = open_source(cfg.data, rank=0, num_workers=cfg.num_workers, seed=cfg.seed)
    model = build_model(cfg, test)
    if is_torch_model(cfg.model):  # every table, read as ps-admin export reads it, into the module
        from worker.export import fetch_tables
        from worker.torch.training import evaluate_torch, load_values

        load_values(model, fetch_tables(addresses, timeout_s=10.0)[0])
        return (*evaluate_torch(model, test), len(test))
    with Client(addresses, observer=True, connect_timeout_s=10.0) as client:
        params = client.pull(list(model.parameters()))
        if getattr(model, "sparse", False):  # embedding tables: rows come through pull_rows; AUC
            from worker.training.sparse_loop import evaluate_ctr
            return "auc", evaluate_ctr(model, params, client.pull_rows, test)[0], len(test)
    metric, value = evaluate(model, params, test)
    return metric, value, len(test)


def _write_run_folder(cluster: LocalCluster, records: list[dict[str, Any]], progress: Progress) -> list[str]:
    run_dir = cluster.config.run_dir
    written = []
    records = sorted(records, key=lambda r: (r.get("time", 0.0), r.get("worker", 0)))
    with open(run_dir / "metrics.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    written.append("metrics.jsonl")
    for rank in range(cluster.config.num_workers):  # merged above; keep one copy
        cluster.metrics_path(rank).unlink(missing_ok=True)
    if records:
        message = _plot_loss(records, run_dir / "loss.png")
        if message:
            progress.print(f"ps-launch: {message}")
        else:
            written.append("loss.png")
    written.append("logs")
    return written


def _plot_loss(records: list[dict[str, Any]], path: Path) -> str | None:
    """Draw loss against time and against steps, one line per worker; a message if skipped."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return "matplotlib is not installed: skipped loss.png (pip install 'grpc-ps[plot]')"
    t0 = min(r["time"] for r in records)
    fig = Figure(figsize=(11, 4), layout="constrained")
    FigureCanvasAgg(fig)
    by_time, by_step = fig.subplots(1, 2, sharey=True)
    for w in sorted({r["worker"] for r in records}):
        mine = [r for r in records if r["worker"] == w]
        by_time.plot([r["time"] - t0 for r in mine], [r["loss"] for r in mine], lw=0.8, label=f"worker {w}")
        by_step.plot([r["step"] for r in mine], [r["loss"] for r in mine], lw=0.8, label=f"worker {w}")
    by_time.set(xlabel="time (s)", ylabel="training loss (batch)", yscale="log", title="loss against time")
    by_step.set(xlabel="step", title="loss against steps")
    by_step.legend()
    fig.savefig(path, dpi=100)
    return None


def _describe(cfg: TrainConfig) -> str:
    model = f"mlp({','.join(map(str, cfg.hidden))})" if cfg.model == "mlp" else cfg.model
    return (f"{model} on {cfg.data}, {cfg.epochs} epochs, batch {cfg.batch_size}, "
            f"{cfg.optimizer} lr {cfg.lr:g}")


def _last_line(path: Path | None) -> str:
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, AttributeError):
        return ""
    return lines[-1] if lines else ""


def _new_run_dir(root: Path) -> Path:
    """``root/<YYYYmmdd-HHMMSS>``, with a suffix when that exists already (not created here)."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path, n = root / stamp, 1
    while path.exists():
        path, n = root / f"{stamp}-{n}", n + 1
    return path


if __name__ == "__main__":
    sys.exit(main())

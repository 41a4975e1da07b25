"""``ps-worker``: train one worker against running ``ps-server`` shards.

Reads this worker's shard of the data, connects to every server (registering as worker
``--rank``), trains for ``--epochs`` epochs, prints the final evaluation as one line on
stdout, leaves the quorum and exits 0. Bad flags (an unknown model, options that do not
go together) are usage errors: the usage and a ``ps-worker: error:`` line, exit status
2. Bad input (a missing or malformed data file, labels or features that do not fit the
model, an unusable ``--device``) is one line on stderr starting ``ps-worker: error:``
and exit status 1, before anything connects. SIGTERM and SIGINT: it says what it was doing, leaves the quorum and exits 143
or 130 within a few seconds, even when blocked in a wait (:mod:`launcher.worker_interrupt`);
a second signal exits at once.

``--rank auto``, ``--metrics-port`` and ``--warn-after`` are described in
:mod:`launcher.worker_ops`.

The training flags (:func:`add_training_flags`) are shared with ``ps-launch``, which
forwards them to its workers with :func:`training_argv`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from typing import IO

from launcher import client_safety, worker_ops
from launcher.cli_logging import configure_logging
from launcher.envargs import EnvArgumentParser
from launcher.server_addresses import server_addresses
from launcher.worker_interrupt import WorkerInterrupt
from ps.errors import PSError
from worker.client.client import Client
from worker.data.dataset import DEFAULT_SOURCE, DataError, open_source
from worker.training.loop import StepRecord, TrainConfig, TrainingStopped, build_model, is_torch_model, train
from worker.models import MODELS
from worker.models.sparse_models import SPARSE_MODELS
from worker.xp import DEVICES, DeviceUnavailableError, get_xp

log = logging.getLogger("ps-worker")

#: the defaults of ps-worker and ps-launch: > 0.95 test accuracy on digits, sync or async
DEFAULTS = TrainConfig(data=DEFAULT_SOURCE)
#: --data-plane -> Client options
DATA_PLANES = {"auto": {"local": True, "stream": True}, "tcp": {"local": False, "stream": True},
               "grpc": {"local": False, "stream": False}}


class StopSignals:
    """SIGTERM and SIGINT, turned into a flag that long-running code checks.

    The handler never raises: an exception raised inside a blocking gRPC call can leave
    gRPC's internal locks held and hang the process. It sets :attr:`arrived` for a thread
    that acts at once (:class:`launcher.worker_interrupt.WorkerInterrupt`). On a second
    signal, ``second="exit"`` says so on stderr and exits at once (``os._exit``: a worker
    stuck on a dead cluster); ``"ignore"`` keeps going (a launcher that must finish
    stopping its children). Use as a context manager from the main thread; the previous
    handlers come back on exit.
    """

    def __init__(self, second: str = "exit", prog: str = "ps-worker") -> None:
        if second not in ("exit", "ignore"):
            raise ValueError(f"second must be exit or ignore, got {second!r}")
        self.second = second
        self.prog = prog
        self.signum = 0
        self.arrived = threading.Event()  # set by the first signal
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        """True once a signal arrived."""
        return self.signum != 0

    @property
    def exit_code(self) -> int:
        """128 + the signal number (130 for SIGINT, 143 for SIGTERM); 0 if none arrived."""
        return 128 + self.signum if self.signum else 0

    def _handle(self, signum: int, _frame) -> None:
        if self.signum and self.second == "exit":
            os.write(2, f"{self.prog}: second signal ({signal.Signals(signum).name}): exiting at once\n".encode())
            os._exit(128 + signum)
        self.signum = self.signum or signum
        self.arrived.set()

    def __enter__(self) -> StopSignals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def add_training_flags(p: argparse.ArgumentParser) -> None:
    """The flags that say what to train and how (shared by ps-worker and ps-launch)."""
    d = DEFAULTS
    p.add_argument("--model", default=d.model,
                   help=f"model to train: {', '.join(sorted(MODELS))}; or on click logs (--data synthetic-ctr:..., "
                        f"ctr-libsvm:..., ctr-csv:...): {', '.join(sorted(SPARSE_MODELS))}; or a PyTorch model: "
                        f"torch:package.module:factory (a function returning (module, loss_fn); needs torch)")
    p.add_argument("--hidden", default=None,
                   help="mlp only: comma-separated hidden layer widths, e.g. 128,64 (None: %s)"
                   % ",".join(map(str, d.hidden)))
    p.add_argument("--data", default=d.data,
                   help="data source: 'digits' (embedded), 'synthetic:classification?n=...', or a .csv, .npz, "
                        ".npy or libsvm file, glob or URL; every worker must give the same")
    p.add_argument("--epochs", type=int, default=d.epochs, help="passes over this worker's shard of the data")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="rows per gradient")
    p.add_argument("--optimizer", default=d.optimizer,
                   help="server-side optimizer: sgd, momentum, adagrad, adam or ftrl (FTRL-Proximal)")
    p.add_argument("--lr", type=float, default=d.lr, help="learning rate (per step)")
    p.add_argument("--momentum", type=float, default=None, help="momentum optimizer: momentum factor (None: 0.9)")
    p.add_argument("--weight-decay", type=float, default=None, help="L2 weight decay added to every gradient (None: 0)")
    p.add_argument("--l1", type=float, default=None, help="ftrl optimizer: L1 strength, gives exact zeros (None: 0)")
    p.add_argument("--l2", type=float, default=None, help="ftrl optimizer: L2 strength (None: 0)")
    p.add_argument("--seed", type=int, default=d.seed,
                   help="fixes the initial weights, the held-out split and the batch order; same on every worker")
    p.add_argument("--device", default=d.device, help=f"where gradients are computed: {' or '.join(DEVICES)}")
    p.add_argument("--num-features", type=int, default=None,
                   help="size the model for this many features and check the data has them (None: from the data)")
    p.add_argument("--num-classes", type=int, default=None,
                   help="classification: size the model for this many classes and check the labels fit "
                        "(None: from the data)")


def training_argv(args: argparse.Namespace) -> list[str]:
    """The command-line flags that reproduce the training flags of parsed ``args``."""
    out = []
    for flag in ("--model", "--hidden", "--data", "--epochs", "--batch-size", "--optimizer", "--lr", "--momentum",
                 "--weight-decay", "--l1", "--l2", "--seed", "--device", "--num-features", "--num-classes"):
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None:
            out += [flag, str(value)]
    return out


def train_config_from_args(args: argparse.Namespace, *, rank: int = 0, num_workers: int = 1,
                           staleness_every: int = 0) -> TrainConfig:
    """Build and validate the config. Raises ValueError naming the flag at fault."""
    if args.model not in MODELS and args.model not in SPARSE_MODELS and not is_torch_model(args.model):
        known = ", ".join(sorted({**MODELS, **SPARSE_MODELS}))
        raise ValueError(f"--model: unknown model {args.model!r}; choose from {known}")
    if args.device not in DEVICES:
        raise ValueError(f"--device: unknown device {args.device!r}; choose from {', '.join(DEVICES)}")
    if args.hidden is not None and args.model != "mlp":
        raise ValueError(f"--hidden only applies to --model mlp, not {args.model!r}")
    hidden = DEFAULTS.hidden
    if args.hidden is not None:
        try:
            hidden = tuple(int(h) for h in str(args.hidden).split(",") if h.strip())
        except ValueError:
            raise ValueError(f"--hidden must be comma-separated integers, got {args.hidden!r}") from None
    options = {}
    if args.momentum is not None:
        options["momentum"] = args.momentum
    if args.weight_decay is not None:
        options["weight_decay"] = args.weight_decay
    for name in ("l1", "l2"):
        if getattr(args, name) is not None:
            if args.optimizer != "ftrl":
                raise ValueError(f"--{name} only applies to --optimizer ftrl, not {args.optimizer!r}")
            options[name] = getattr(args, name)
    cfg = TrainConfig(model=args.model, hidden=hidden, data=args.data, epochs=args.epochs, batch_size=args.batch_size,
                      optimizer=args.optimizer, lr=args.lr, optimizer_options=tuple(sorted(options.items())),
                      seed=args.seed, device=args.device, rank=rank, num_workers=num_workers,
                      staleness_every=staleness_every, num_features=args.num_features,
                      num_classes=args.num_classes)
    try:
        cfg.validate()
    except PSError as exc:  # an optimizer setting: name the flags
        raise ValueError(f"--optimizer/--lr/--momentum/--weight-decay/--l1/--l2: {exc}") from None
    return cfg


def build_parser(environ=None) -> EnvArgumentParser:
    p = EnvArgumentParser(
        prog="ps-worker", environ=environ,
        description="Train one worker against running ps-server shards; print the final test evaluation.",
    )
    p.add_argument("--servers", required=True, type=server_addresses,
                   help="comma-separated HOST:PORT of every server, in the same order on every worker")
    add_training_flags(p)
    p.add_argument("--rank", type=worker_ops.rank_arg, default=0,
                   help="this worker's index in [0, num-workers); its data shard and worker id; 'auto': the id "
                        "the cluster assigns (for identical replicas)")
    p.add_argument("--num-workers", type=int, default=1, help="number of workers sharing the data")
    p.add_argument("--metrics-file", default=None,
                   help="append one JSON line per step (time, worker, epoch, step, loss, samples_per_s, "
                        "staleness, total_steps) to this file")
    p.add_argument("--log-every", type=int, default=50, help="log progress to stderr every N steps (0: never)")
    p.add_argument("--staleness-every", type=int, default=10,
                   help="ask the servers for the slowest worker's clock every N steps (0: never)")
    p.add_argument("--connect-timeout", type=float, default=30.0, help="seconds to wait for every server to answer")
    p.add_argument("--data-plane", choices=list(DATA_PLANES), default="auto",
                   help="how tensors travel: auto (shared memory with servers on this machine, else the TCP data "
                        "plane beside gRPC, else gRPC), tcp (no shared memory) or grpc (gRPC alone)")
    client_safety.add_arguments(p)  # --token-file, --tls-ca, --tls-cert, --tls-key, --tls-server-name
    p.add_argument("--wait-timeout", type=float, default=300.0,
                   help="seconds one pull or push may wait on other workers (sync and ssp)")
    worker_ops.add_arguments(p)  # --metrics-port, --metrics-host, --warn-after
    p.add_argument("--log-level", default="WARNING", help="DEBUG, INFO, WARNING or ERROR")
    return p


def _fail(message: str, code: int = 1) -> int:
    print(f"ps-worker: error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)
    return code


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    try:  # flags that cannot work together are usage errors: exit 2, like argparse's own
        cfg = train_config_from_args(args, rank=0 if args.rank == worker_ops.AUTO else args.rank,
                                     num_workers=args.num_workers, staleness_every=args.staleness_every)
        worker_ops.check(args)
        if args.log_every < 0:
            raise ValueError(f"--log-every must be >= 0, got {args.log_every}")
    except ValueError as exc:
        parser.error(str(exc))
    with StopSignals(second="exit") as stop:
        interrupt = WorkerInterrupt(stop).start()  # the first signal: say so, leave, exit (bounded)
        try:
            return _main(args, cfg, stop, interrupt)
        finally:
            interrupt.close()


def _main(args: argparse.Namespace, cfg: TrainConfig, stop: StopSignals, interrupt: WorkerInterrupt) -> int:
    try:
        if not is_torch_model(cfg.model):  # torch models check their device when built
            get_xp(cfg.device)  # fail before reading data or connecting
        train_ds, test_ds = open_source(cfg.data, rank=cfg.rank, num_workers=cfg.num_workers, seed=cfg.seed)
        model = build_model(cfg, train_ds)
        build_model(cfg, test_ds)  # the held-out split must fit the same model
    except (DataError, DeviceUnavailableError, ValueError, TypeError) as exc:
        return _fail(exc)
    if stop.requested:
        return stop.exit_code
    return _run(args, cfg, model, train_ds, test_ds, stop, interrupt)


def _run(args, cfg: TrainConfig, model, train_ds, test_ds, stop: StopSignals, interrupt: WorkerInterrupt) -> int:
    metrics: IO[str] | None = None
    try:
        if args.metrics_file:
            try:
                metrics = open(args.metrics_file, "a", encoding="utf-8")  # noqa: SIM115 - closed below
            except OSError as exc:
                return _fail(f"--metrics-file {args.metrics_file}: {exc.strerror or exc}")
        auto = args.rank == worker_ops.AUTO  # the cluster assigns the id; it becomes the rank
        safety = client_safety.client_kwargs(args)
        client = Client(args.servers, worker_id=None if auto else cfg.rank, connect_timeout_s=args.connect_timeout,
                        wait_timeout_s=args.wait_timeout, num_workers=cfg.num_workers, **DATA_PLANES[args.data_plane],
                        **safety)
        ops = worker_ops.WorkerOps(args, token=safety["token"])  # metrics endpoint (behind the token) and warnings
        interrupt.client = client
        try:
            client.connect()
            if auto:
                cfg, model, train_ds, test_ds = worker_ops.adopt_rank(client, cfg)
            observed = ops.start(client, cfg, len(train_ds))
            interrupt.warner = ops.warner
            log.info("worker %d training %s on %d rows of %s", cfg.rank, model, len(train_ds), train_ds.name)
            result = train(observed, model, train_ds, test_ds, cfg,
                           on_step=ops.step_sink(_step_sink(metrics, args.log_every)),
                           should_stop=lambda: stop.requested)
        finally:
            client.close()  # idempotent: train closed it already unless it never started
            ops.stop()
    except TrainingStopped:
        print(f"ps-worker: worker {cfg.rank} stopped by signal; left the cluster", file=sys.stderr, flush=True)
        return stop.exit_code
    except PSError as exc:
        if stop.requested:  # the call the signal interrupted failed once the worker left (WorkerInterrupt)
            log.debug("interrupted call: %s", exc)
            print(f"ps-worker: worker {cfg.rank} stopped by signal; left the cluster", file=sys.stderr, flush=True)
            return stop.exit_code
        return _fail(f"worker {cfg.rank}: {type(exc).__name__}: {exc}")
    except (DeviceUnavailableError, ValueError) as exc:
        return _fail(exc)
    finally:
        if metrics is not None:
            metrics.close()
    print(f"worker {cfg.rank}: {result.summary()}", flush=True)
    return 0


def _step_sink(metrics: IO[str] | None, log_every: int):
    def on_step(record: StepRecord) -> None:
        if metrics is not None:
            metrics.write(json.dumps(record.to_json()) + "\n")
            metrics.flush()
        if log_every and record.step % log_every == 0:
            print(f"worker {record.worker}: epoch {record.epoch} step {record.step}/{record.total_steps} "
                  f"loss {record.loss:.4f} {record.samples_per_s:.0f} samples/s", file=sys.stderr, flush=True)

    return on_step


if __name__ == "__main__":
    sys.exit(main())

"""The operational flags of ``ps-worker``: metrics, slow-wait warnings, ``--rank auto``.

- ``--metrics-port``/``--metrics-host``: Prometheus metrics of this worker
  (:class:`~worker.observe.worker_metrics.WorkerMetrics`), off by default; behind the
  worker's token (``--token-file``/``PS_TOKEN``) when it has one.
- ``--warn-after SECONDS``: a pull or push that has waited this long logs a warning naming
  the workers it waits for (:class:`~worker.observe.slow_wait.SlowWaitWarner`); 0 never.
- ``--rank auto``: take the worker id the cluster assigns (shard 0 hands out 0, 1, 2, ...
  in registration order) as the rank, i.e. as this worker's shard of the data. For
  replicas that cannot be told apart (``docker compose`` ``deploy.replicas``). The id
  must be below ``--num-workers``: a replacement worker gets a new id and is refused with
  a message asking for an explicit ``--rank``.

:class:`WorkerOps` owns the metrics endpoint and the warner of one run; only the launcher
reads argv and the environment.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Callable

from launcher import metrics_flags
from worker.data.dataset import open_source
from worker.training.loop import StepRecord, TrainConfig, build_model
from worker.observe.observed_client import ObservedClient
from worker.observe.slow_wait import SlowWaitWarner, describe_wait
from worker.observe.worker_metrics import WorkerMetrics

log = logging.getLogger("ps-worker")

AUTO = "auto"


def rank_arg(value: str) -> int | str:
    """``--rank``: an integer >= 0, or ``auto``. Raises argparse.ArgumentTypeError."""
    if str(value).strip().lower() == AUTO:
        return AUTO
    try:
        rank = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"rank must be an integer >= 0 or 'auto', got {value!r}") from None
    if rank < 0:
        raise argparse.ArgumentTypeError(f"rank must be >= 0, got {rank}")
    return rank


def add_arguments(p) -> None:
    """Add ``--metrics-port``, ``--metrics-host`` and ``--warn-after``."""
    metrics_flags.add_arguments(p, host_default="127.0.0.1",
                                host_help="address of the metrics port; 0.0.0.0 to let other machines scrape it")
    p.add_argument("--warn-after", type=float, default=10.0, metavar="SECONDS",
                   help="log whom a pull or push waits for once it has waited this long (0: never)")


def check(args) -> None:
    """Raises ValueError naming a bad operational flag."""
    metrics_flags.check(args)
    if not args.warn_after >= 0:
        raise ValueError(f"--warn-after must be >= 0 seconds, got {args.warn_after}")


def adopt_rank(client, cfg: TrainConfig):
    """``--rank auto``: ``(cfg, model, train_ds, test_ds)`` for the id the cluster gave ``client``.

    Raises ValueError when the id is not below ``cfg.num_workers``.
    """
    rank = client.worker_id
    if not 0 <= rank < cfg.num_workers:
        raise ValueError(f"--rank auto: the cluster assigned worker id {rank}, not below --num-workers "
                         f"{cfg.num_workers} (a replacement worker?); give this worker an explicit --rank")
    cfg = dataclasses.replace(cfg, rank=rank)
    train_ds, test_ds = open_source(cfg.data, rank=rank, num_workers=cfg.num_workers, seed=cfg.seed)
    model = build_model(cfg, train_ds)
    log.info("--rank auto: this worker is rank %d of %d", rank, cfg.num_workers)
    return cfg, model, train_ds, test_ds


def batch_rows(step: int, rows: int, batch_size: int) -> int:
    """Rows in step ``step`` (1-based) of epochs over ``rows`` rows in batches of ``batch_size``."""
    per_epoch = max(1, -(-rows // batch_size))
    k = (step - 1) % per_epoch
    return batch_size if k < per_epoch - 1 else rows - batch_size * (per_epoch - 1)


class WorkerOps:
    """The metrics endpoint and slow-wait warner of one ps-worker run. No I/O until :meth:`start`.

    With ``token`` (the cluster token the worker sends), scrapes need it as a bearer token too.
    """

    def __init__(self, args, token: str | None = None) -> None:
        self.metrics = (WorkerMetrics(args.metrics_host, args.metrics_port, token=token)
                        if args.metrics_port else None)
        self.warn_after = args.warn_after
        self.warner: SlowWaitWarner | None = None
        self._rows = 0
        self._batch_size = 1

    def start(self, client, cfg: TrainConfig, train_rows: int) -> ObservedClient:
        """Serve metrics and watch waits for the connected ``client``; the client to train with.

        Raises UnavailableError when the metrics port cannot be bound.
        """
        self._rows, self._batch_size = train_rows, cfg.batch_size
        if self.metrics is not None:
            self.metrics.watch_client(client)
            self.metrics.start()
            log.info("metrics on %s", self.metrics.endpoint.url)
        if self.warn_after > 0:
            self.warner = SlowWaitWarner(lambda: describe_wait(client.status(), client.clock), self.warn_after,
                                         logger=log).start()
        return ObservedClient(client, self.metrics, self.warner)

    def step_sink(self, inner: Callable[[StepRecord], None]) -> Callable[[StepRecord], None]:
        """``inner`` (the CLI's own on_step), also counting the step in the metrics."""
        if self.metrics is None:
            return inner

        def on_step(record: StepRecord) -> None:
            self.metrics.on_step(record, batch_rows(record.step, self._rows, self._batch_size))
            inner(record)

        return on_step

    def stop(self) -> None:
        """Join the warner's thread and the metrics endpoint's. Idempotent."""
        if self.warner is not None:
            self.warner.stop()
        if self.metrics is not None:
            self.metrics.stop()

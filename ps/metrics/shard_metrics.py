"""``ShardMetrics``: a shard's Prometheus series and the HTTP endpoint that serves them.

Made by :class:`~ps.serving.server.ShardServer` when ``metrics_port`` is set (off by default).
The constructor does no I/O; :meth:`ShardMetrics.start` hooks into the shard (two
observations: a push's staleness and a wait's duration) and binds the endpoint;
:meth:`ShardMetrics.stop` joins it. Most series are read from the shard when scraped,
so they cover pushes by gRPC and by the same-host data plane alike:

- ``ps_updates_total{outcome}``: pushed messages by outcome (``applied``, ``accumulated``
  into a sync step, ``duplicate`` retries, ``stale`` late sync gradients, ``refused`` bad
  input, ``skipped`` non-finite values), dense and sparse;
- ``ps_sync_steps_total``, ``ps_pulls_total{kind}``, ``ps_shard_events_total{event}``
  (every counter of the Status call, raw);
- gauges ``ps_shard_version``, ``ps_shard_epoch``, ``ps_workers{state}``,
  ``ps_sync_waiting_workers``, ``ps_worker_clock{stat="min|max"}``, and per table
  ``ps_table_version``, ``ps_table_blocks``, ``ps_table_bytes``, ``ps_table_rows``;
- histograms ``ps_staleness_steps`` (how many clocks a pusher was ahead of the slowest
  live worker) and ``ps_sync_wait_seconds`` (time a push, pull or checkpoint waited on
  other workers);
- the call series of :class:`~ps.metrics.interceptor.MetricsInterceptor`, fed for the data
  calls of every plane by :meth:`ShardMetrics.observe_request`, and the standard
  ``process_*`` series.

Thread-safe. Hooks are called with the shard's lock held and only touch histogram locks.
"""

from __future__ import annotations

import logging
from importlib import metadata

from ps.config import ServerConfig
from ps.protocol.channel import DATA_METHODS
from ps.metrics.registry import STEP_BUCKETS, WAIT_BUCKETS, Registry, register_process_metrics
from ps.metrics.http import MetricsEndpoint
from ps.metrics.interceptor import MetricsInterceptor

log = logging.getLogger(__name__)

#: shard counter -> ``outcome`` label of ps_updates_total
OUTCOMES = {"applied": "applied", "accumulated": "accumulated", "duplicate": "duplicate", "stale": "stale",
            "refused": "refused", "nonfinite_skipped": "skipped"}


def package_version() -> str:
    try:
        return metadata.version("grpc-ps")
    except metadata.PackageNotFoundError:
        return "unknown"


class ShardMetrics:
    """The metrics of one shard (``shard``: a :class:`~ps.shard.shard.Shard`)."""

    def __init__(self, shard, config: ServerConfig, checkpointer=None) -> None:
        self.shard = shard
        self.config = config
        self.checkpointer = checkpointer
        self.registry = r = Registry()
        register_process_metrics(r)
        self.interceptor = MetricsInterceptor(r, uncounted=DATA_METHODS)
        self.staleness = r.histogram("ps_staleness_steps", "clocks a pushing worker was ahead of the slowest "
                                     "live worker when its push was accepted", (), STEP_BUCKETS)
        self.sync_wait = r.histogram("ps_sync_wait_seconds", "seconds a push, pull or checkpoint waited on other "
                                     "workers (sync and ssp)", (), WAIT_BUCKETS)
        version = package_version()
        r.gauge_callback("ps_build_info", "the grpc-ps version and this shard's mode (always 1)",
                         ("version", "mode"), lambda: [((version, config.mode.value), 1.0)])
        r.counter_callback("ps_updates_total", "pushed messages by outcome", ("outcome",), self._outcomes)
        r.counter_callback("ps_sync_steps_total", "sync steps applied", (), lambda: [((), self._counter("steps"))])
        r.counter_callback("ps_pulls_total", "pull messages answered", ("kind",),
                           lambda: [(("dense",), self._counter("pulls")), (("rows",), self._counter("row_pulls"))])
        r.counter_callback("ps_shard_events_total", "every counter of the Status call", ("event",),
                           lambda: [((k,), v) for k, v in self._counters().items()])
        r.gauge_callback("ps_shard_version", "updates applied (async, ssp) or steps applied (sync)", (),
                         lambda: [((), self._snapshot()["version"])])
        r.gauge_callback("ps_shard_epoch", "times this shard's state was restored from a checkpoint", (),
                         lambda: [((), float(getattr(shard, "epoch", 0)))])
        r.gauge_callback("ps_workers", "registered workers, live or left", ("state",), self._workers)
        r.gauge_callback("ps_sync_waiting_workers", "live workers the open sync step still waits for", (),
                         lambda: [((), float(len(self._snapshot()["waiting_for"])))])
        r.gauge_callback("ps_worker_clock", "the lowest and highest clock of the live workers", ("stat",),
                         self._clocks)
        r.gauge_callback("ps_table_version", "updates applied to the table's most updated block on this shard",
                         ("table",), self._table_versions)
        r.gauge_callback("ps_table_blocks", "blocks of the table on this shard", ("table",),
                         lambda: [((spec.name,), n) for spec, n, _ in self._snapshot()["tables"]])
        r.gauge_callback("ps_table_bytes", "bytes of parameters of the table on this shard", ("table",),
                         self._table_bytes)
        r.gauge_callback("ps_table_rows", "rows of the sparse table on this shard", ("table",),
                         lambda: [((spec.name,), rows) for spec, rows, _, _ in self._sparse()])
        if checkpointer is not None:
            r.gauge_callback("ps_checkpoint_last_version", "version of the last checkpoint this shard wrote "
                             "(-1: none yet)", (), self._checkpoint_version)
        host = config.metrics_host or config.host
        self.endpoint = MetricsEndpoint(r, host, config.metrics_port)

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> ShardMetrics:
        """Hook into the shard and serve ``/metrics``. Raises UnavailableError when the port
        cannot be bound."""
        self.endpoint.start()
        self.shard.metrics = self
        log.info("metrics on %s", self.endpoint.url)
        return self

    def stop(self) -> None:
        """Stop serving and join the endpoint's threads. Idempotent."""
        self.endpoint.stop()

    # -- hooks (called by the shard, its lock held) -------------------------------------

    def observe_push(self, gate, step: int) -> None:
        """A push for ``step`` was accepted; record how far ahead of the slowest worker it is."""
        clocks = [w.clock for w in gate.workers.values() if w.live]
        if clocks:
            self.staleness.observe(max(0, step - min(clocks)))

    def observe_request(self, service: str, method: str, code: str, seconds: float) -> None:
        """A data call (any plane) finished with status ``code`` (e.g. ``"OK"``) after ``seconds``
        in the handler: ``ps_requests_total`` and ``ps_request_duration_seconds``. Thread-safe."""
        self.interceptor.requests.inc(service=service, method=method, code=code)
        self.interceptor.duration.observe(seconds, service=service, method=method)

    def observe_wait(self, seconds: float) -> None:
        """A push, pull or checkpoint waited ``seconds`` on other workers, then went on."""
        self.sync_wait.observe(seconds)

    # -- values read when scraped --------------------------------------------------------

    def _snapshot(self) -> dict:
        return self.shard.snapshot()

    def _counters(self) -> dict[str, float]:
        counters = dict(self._snapshot()["counters"])
        rows = getattr(self.shard, "rows", None)
        if rows is not None:
            for k, v in rows.counters().items():
                counters[k] = counters.get(k, 0) + v
        return counters

    def _counter(self, name: str) -> float:
        return float(self._snapshot()["counters"].get(name, 0))

    def _outcomes(self):
        counters = self._snapshot()["counters"]
        return [((label,), float(counters.get(key, 0))) for key, label in OUTCOMES.items()]

    def _workers(self):
        workers = self._snapshot()["workers"]
        live = sum(1 for w in workers if w[2])
        return [(("live",), live), (("left",), len(workers) - live)]

    def _clocks(self):
        clocks = [w[1] for w in self._snapshot()["workers"] if w[2]]
        return [(("min",), min(clocks)), (("max",), max(clocks))] if clocks else []

    def _table_versions(self):
        out = []
        for table in list(self.shard.tables.values()):
            versions = [b.version for b in list(table.blocks.values())]
            out.append(((table.spec.name,), max(versions, default=0)))
        return out

    def _sparse(self):
        rows = getattr(self.shard, "rows", None)
        return rows.status() if rows is not None else []

    def _table_bytes(self):
        dense = [((spec.name,), nbytes) for spec, _, nbytes in self._snapshot()["tables"]]
        return dense + [((spec.name,), nbytes) for spec, _, nbytes, _ in self._sparse()]

    def _checkpoint_version(self):
        last = self.checkpointer.last
        return [((), float(last.version) if last is not None else -1.0)]

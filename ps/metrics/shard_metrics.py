"""``ShardMetrics``: the Prometheus series of one shard and the endpoint that serves them.

Built on prometheus-client, with a :class:`~prometheus_client.CollectorRegistry` of its own
(never the process-wide default: several shards may share a process). A
:class:`~ps.serving.server.ShardServer` makes one when ``metrics_port`` is set (off by
default). The constructor does no I/O; :meth:`ShardMetrics.start` hooks into the shard,
adds the ``process_*`` series and binds the endpoint (with the server's token, when it has
one: :class:`~ps.protocol.metrics_endpoint.MetricsEndpoint`); :meth:`ShardMetrics.stop`
closes it, whatever clients hold connections. The series:

- read from the shard when scraped, so they cover every data plane:
  :class:`~ps.metrics.shard_collector.ShardCollector` (``ps_updates_total{outcome}``,
  ``ps_shard_version``, ``ps_workers{state}``, ``ps_table_bytes{table}``, ...);
- requests: :class:`~ps.metrics.request_metrics.RequestMetrics` (``ps_requests_total
  {service,method,code}``, ``ps_request_duration_seconds{service,method}``, bytes), fed by
  :meth:`ShardMetrics.observe_request` and the gRPC :attr:`ShardMetrics.interceptor`;
- histograms ``ps_staleness_steps`` (how many clocks a pusher was ahead of the slowest
  live worker) and ``ps_sync_wait_seconds`` (time a push, pull or checkpoint waited on
  other workers), observed by the shard through the two hooks below;
- ``ps_build_info{version,mode}`` and the standard ``process_*`` series.

Thread-safe. The shard calls the hooks with its lock held; they only touch the histograms'.
"""

from __future__ import annotations

import logging
from importlib import metadata

from prometheus_client import CollectorRegistry, Histogram, Info, ProcessCollector

from ps.config import ServerConfig
from ps.metrics.interceptor import MetricsInterceptor
from ps.metrics.request_metrics import RequestMetrics
from ps.metrics.shard_collector import ShardCollector
from ps.protocol.metrics_endpoint import MetricsEndpoint

log = logging.getLogger(__name__)

#: seconds: waits on other workers (1 ms .. 2 min)
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0)
#: steps (clocks): staleness
STEP_BUCKETS = (0, 1, 2, 4, 8, 16, 32, 64, 128)


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
        self.registry = r = CollectorRegistry()
        self.requests = RequestMetrics(r)
        self.interceptor = MetricsInterceptor(self.requests)
        self.collector = ShardCollector(shard, r, checkpointer)
        self.staleness = Histogram("ps_staleness_steps", "clocks a pushing worker was ahead of the slowest live "
                                   "worker when its push was accepted", registry=r, buckets=STEP_BUCKETS)
        self.sync_wait = Histogram("ps_sync_wait_seconds", "seconds a push, pull or checkpoint waited on other "
                                   "workers (sync and ssp)", registry=r, buckets=WAIT_BUCKETS)
        self._build = Info("ps_build", "the grpc-ps version and this shard's mode", registry=r)
        self._build.info({"version": package_version(), "mode": config.mode.value})
        self.endpoint = MetricsEndpoint(r, config.metrics_host or config.host, config.metrics_port,
                                        token=config.auth_token)
        self._process: ProcessCollector | None = None

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> ShardMetrics:
        """Hook into the shard and serve ``/metrics``. Does not block. Raises UnavailableError
        when the port cannot be bound."""
        if self._process is None:
            self._process = ProcessCollector(registry=self.registry)  # reads /proc/stat: not in __init__
        self.endpoint.start()
        self.shard.metrics = self
        log.info("metrics on %s%s", self.endpoint.url, " (bearer token required)" if self.config.auth_token else "")
        return self

    def stop(self) -> None:
        """Stop serving and cut open scrapes; blocks a few seconds at most. Idempotent."""
        self.endpoint.stop()

    # -- observations -------------------------------------------------------------------

    def observe_request(self, service: str, method: str, code: str, seconds: float) -> None:
        """One finished request on any data plane: ``code`` a status code name (``"OK"``),
        ``seconds`` its handling time. Into ``ps_requests_total`` and
        ``ps_request_duration_seconds``. Does not block; thread-safe."""
        self.requests.observe(service, method, code, seconds)

    def observe_push(self, gate, step: int) -> None:
        """A push for ``step`` was accepted; record how far ahead of the slowest worker it is."""
        clocks = [w.clock for w in gate.workers.values() if w.live]
        if clocks:
            self.staleness.observe(max(0, step - min(clocks)))

    def observe_wait(self, seconds: float) -> None:
        """A push, pull or checkpoint waited ``seconds`` on other workers, then went on."""
        self.sync_wait.observe(seconds)

"""``WorkerMetrics``: one worker's Prometheus series (prometheus-client) and the endpoint that serves them.

Series (all ``ps_worker_*``, plus the standard ``process_*``), in a
:class:`~prometheus_client.CollectorRegistry` of its own (several workers may share a process):

- ``ps_worker_steps_total``, ``ps_worker_samples_total``: training steps and rows done;
- ``ps_worker_loss``, ``ps_worker_epoch``: the last step's training loss and epoch (1-based);
- ``ps_worker_call_duration_seconds{call}``: time of ``pull``, ``push``, ``push_pull``,
  ``pull_rows`` and ``push_rows`` as the worker saw it (waits on other workers included);
- read from the watched client when scraped: ``ps_worker_push_outcomes_total{outcome}``
  (the shards' replies to this worker's push messages: ``accumulated``, ``applied``,
  ``duplicate``, ``stale``; summed over workers it equals the servers' ``ps_updates_total``
  for those outcomes), ``ps_worker_clock``, and ``ps_worker_info{worker_id,mode}`` (always 1).

The endpoint (:class:`~ps.protocol.metrics_endpoint.MetricsEndpoint`) requires ``token``
as a bearer token when one is given (the worker's own cluster token). The constructor does
no I/O; :meth:`start` binds; :meth:`stop` closes it, bounded whatever scrapers do. Thread-safe.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ps.protocol.metrics_endpoint import MetricsEndpoint

OUTCOMES = ("accumulated", "applied", "duplicate", "stale")
#: seconds: a worker's calls, waits on other workers included (0.5 ms .. 60 s)
CALL_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class _ClientCollector(Collector):
    """The series read from the watched client at each scrape (none before one is watched)."""

    def __init__(self) -> None:
        self.client: Any = None

    def collect(self) -> Iterator[Metric]:
        client = self.client
        if client is None:
            return
        stats = dict(getattr(client, "stats", None) or {})
        outcomes = CounterMetricFamily("ps_worker_push_outcomes_total",
                                       "the shards' replies to this worker's push messages", labels=("outcome",))
        for outcome in OUTCOMES:
            outcomes.add_metric([outcome], float(stats.get(outcome, 0)))
        yield outcomes
        yield GaugeMetricFamily("ps_worker_clock", "this worker's clock (steps pushed, as the cluster counts them)",
                                value=float(client.clock))
        info = GaugeMetricFamily("ps_worker_info", "this worker's id and the cluster's mode (always 1)",
                                 labels=("worker_id", "mode"))
        info.add_metric([str(client.worker_id), client.mode or "unknown"], 1.0)
        yield info


class WorkerMetrics:
    """Metrics of one worker, served on ``host:port`` (port 0: the OS chooses)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, token: str | None = None) -> None:
        self.registry = r = CollectorRegistry()
        self.steps = Counter("ps_worker_steps_total", "training steps this worker finished", registry=r)
        self.samples = Counter("ps_worker_samples_total", "training rows this worker computed gradients on",
                               registry=r)
        self.loss = Gauge("ps_worker_loss", "training loss of the last step", registry=r)
        self.epoch = Gauge("ps_worker_epoch", "epoch of the last step (1-based)", registry=r)
        self.calls = Histogram("ps_worker_call_duration_seconds", "time of the worker's calls to the cluster, "
                               "waits on other workers included", ("call",), registry=r, buckets=CALL_BUCKETS)
        self._client = _ClientCollector()
        r.register(self._client)
        self.endpoint = MetricsEndpoint(r, host, port, token=token or "")
        self._process: ProcessCollector | None = None

    def watch_client(self, client: Any) -> None:
        """Read the push outcomes, clock, id and mode from this connected ``Client`` when scraped."""
        self._client.client = client

    def on_step(self, record: Any, rows: int) -> None:
        """Count one finished step (a :class:`~worker.training.loop.StepRecord`) of ``rows`` rows."""
        self.steps.inc()
        self.samples.inc(rows)
        self.loss.set(record.loss)
        self.epoch.set(record.epoch)

    def observe_call(self, call: str, seconds: float) -> None:
        """One call to the cluster (``pull``, ``push``, ...) took ``seconds``. Does not block."""
        self.calls.labels(call).observe(seconds)

    def start(self) -> WorkerMetrics:
        """Serve ``/metrics``. Does not block. Raises UnavailableError when the port cannot be bound."""
        if self._process is None:
            self._process = ProcessCollector(registry=self.registry)  # reads /proc/stat: not in __init__
        self.endpoint.start()
        return self

    def stop(self) -> None:
        """Stop serving and cut open scrapes; blocks a few seconds at most. Idempotent."""
        self.endpoint.stop()

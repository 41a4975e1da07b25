"""``WorkerMetrics``: one worker's Prometheus series and the HTTP endpoint that serves them.

Series (all ``ps_worker_*``, plus the standard ``process_*``):

- ``ps_worker_steps_total``, ``ps_worker_samples_total``: training steps and rows done;
- ``ps_worker_loss``, ``ps_worker_epoch``: the last step's training loss and epoch (1-based);
- ``ps_worker_call_duration_seconds{call}``: time of ``pull``, ``push``, ``push_pull``,
  ``pull_rows`` and ``push_rows`` as the worker saw it (waits on other workers included);
- ``ps_worker_push_outcomes_total{outcome}``: the shards' replies to this worker's push
  messages (``accumulated``, ``applied``, ``duplicate``, ``stale``), read from the client;
  summed over workers it equals the servers' ``ps_updates_total`` for those outcomes;
- ``ps_worker_clock``: the worker's clock; ``ps_worker_info{worker_id,mode}``: always 1.

The constructor does no I/O; :meth:`start` binds the endpoint (its thread is owned and
joined by :meth:`stop`). Thread-safe.
"""

from __future__ import annotations

from typing import Any

from ps.metrics.registry import DURATION_BUCKETS, Registry, register_process_metrics
from ps.metrics.http import MetricsEndpoint

OUTCOMES = ("accumulated", "applied", "duplicate", "stale")


class WorkerMetrics:
    """Metrics of one worker, served on ``host:port`` (port 0: the OS chooses)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.registry = r = Registry()
        register_process_metrics(r)
        self.steps = r.counter("ps_worker_steps_total", "training steps this worker finished")
        self.samples = r.counter("ps_worker_samples_total", "training rows this worker computed gradients on")
        self.loss = r.gauge("ps_worker_loss", "training loss of the last step")
        self.epoch = r.gauge("ps_worker_epoch", "epoch of the last step (1-based)")
        self.calls = r.histogram("ps_worker_call_duration_seconds", "time of the worker's calls to the cluster, "
                                 "waits on other workers included", ("call",), DURATION_BUCKETS + (30.0, 60.0))
        self._client: Any = None
        r.counter_callback("ps_worker_push_outcomes_total", "the shards' replies to this worker's push messages",
                           ("outcome",), self._outcomes)
        r.gauge_callback("ps_worker_clock", "this worker's clock (steps pushed, as the cluster counts them)", (),
                         lambda: [((), float(self._client.clock))] if self._client is not None else [])
        r.gauge_callback("ps_worker_info", "this worker's id and the cluster's mode (always 1)",
                         ("worker_id", "mode"), self._info)
        self.endpoint = MetricsEndpoint(r, host, port)

    def watch_client(self, client: Any) -> None:
        """Read the push outcomes, clock, id and mode from this connected ``Client``."""
        self._client = client

    def on_step(self, record: Any, rows: int) -> None:
        """Count one finished step (a :class:`~worker.training.loop.StepRecord`) of ``rows`` rows."""
        self.steps.inc()
        self.samples.inc(rows)
        self.loss.set(record.loss)
        self.epoch.set(record.epoch)

    def start(self) -> WorkerMetrics:
        """Serve ``/metrics``. Raises UnavailableError when the port cannot be bound."""
        self.endpoint.start()
        return self

    def stop(self) -> None:
        """Stop serving; joins the endpoint's threads. Idempotent."""
        self.endpoint.stop()

    def _outcomes(self):
        stats = dict(getattr(self._client, "stats", None) or {})
        return [((k,), float(stats.get(k, 0))) for k in OUTCOMES]

    def _info(self):
        c = self._client
        return [((str(c.worker_id), c.mode or "unknown"), 1.0)] if c is not None else []

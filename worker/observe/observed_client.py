"""``ObservedClient``: a :class:`~worker.client.client.Client` whose data calls are timed and watched.

Wraps a connected client for the training loop: ``pull``, ``push``, ``push_pull``,
``pull_rows`` and ``push_rows`` are timed into
:class:`~worker.observe.worker_metrics.WorkerMetrics` (when given) and marked for a
:class:`~worker.observe.slow_wait.SlowWaitWarner` (when given), which logs whom the call waits for
once it has waited long. Everything else (``create``, ``status``, ``clock``, ``close``,
...) is the wrapped client's own. Like the Client, not thread-safe: one per thread.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from worker.observe.slow_wait import SlowWaitWarner
from worker.observe.worker_metrics import WorkerMetrics


class ObservedClient:
    """``client`` with its data calls observed; calls and errors are the client's own."""

    def __init__(self, client: Any, metrics: WorkerMetrics | None = None,
                 warner: SlowWaitWarner | None = None) -> None:
        self._client = client
        self._metrics = metrics
        self._warner = warner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def __repr__(self) -> str:
        return f"ObservedClient({self._client!r})"

    @contextlib.contextmanager
    def _observed(self, call: str, what: str):
        start = time.perf_counter()
        watch = self._warner.watching(what) if self._warner is not None else contextlib.nullcontext()
        try:
            with watch:
                yield
        finally:
            if self._metrics is not None:
                self._metrics.observe_call(call, time.perf_counter() - start)

    def pull(self, names, out=None):
        with self._observed("pull", f"pull for step {self._client.clock}"):
            return self._client.pull(names, out)

    def push(self, grads, rows=None):
        with self._observed("push_rows" if rows else "push", f"push of step {self._client.clock}"):
            return self._client.push(grads, rows)

    def push_pull(self, grads, names=None, out=None):
        with self._observed("push_pull", f"push and pull of step {self._client.clock}"):
            return self._client.push_pull(grads, names, out)

    def pull_rows(self, name, ids):
        with self._observed("pull_rows", f"pull of rows for step {self._client.clock}"):
            return self._client.pull_rows(name, ids)

    def push_rows(self, name, ids, grads):
        with self._observed("push_rows", f"push of rows of step {self._client.clock}"):
            return self._client.push_rows(name, ids, grads)

"""``Heartbeat``: keeps a worker's leases alive while it computes.

A shard lets a worker that has been silent for longer than its lease leave the quorum
(``ps-server --lease``). Every call counts as contact, but a worker may compute (or wait
on a slow step) for longer than that; this thread calls ``beat()`` every ``interval_s``
seconds meanwhile. It belongs to one :class:`~worker.client.client.Client`, which starts it
after connecting and stops (joins) it when closing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class Heartbeat:
    """Calls ``beat()`` every ``interval_s`` seconds on a daemon thread it owns.

    The constructor only stores; :meth:`start` and :meth:`stop` are idempotent. ``beat``
    errors are logged at debug level and never end the thread.
    """

    def __init__(self, beat: Callable[[], None], interval_s: float) -> None:
        if interval_s <= 0:
            raise ValueError(f"heartbeat interval must be > 0 seconds, got {interval_s}")
        self._beat = beat
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Heartbeat:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="ps-heartbeat", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self._beat()
            except Exception as exc:  # noqa: BLE001 - the next beat tries again
                log.debug("heartbeat failed: %s", exc)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop and join the thread (bounded by ``timeout_s``). Blocks."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)

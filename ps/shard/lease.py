"""Worker liveness by lease: a worker silent for longer than the lease leaves the quorum.

Any call from a worker (register, push, pull, heartbeat) renews its lease. The decision
is the pure function :func:`expired`; :class:`LeaseKeeper` is the background thread that
asks the shard to apply it every quarter lease (``Membership.expire_leases``), which calls
``ConsistencyGate.leave`` for each silent worker and logs a line naming it. The gate
itself never reads a clock. An expired worker may register again under the same id and
resume (the client does this by itself).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping

log = logging.getLogger(__name__)


def expired(last_contact: Mapping[int, float], live: Iterable[int], now: float, lease_s: float) -> list[int]:
    """The live workers whose last contact is more than ``lease_s`` seconds before ``now``.

    Pure. ``lease_s`` <= 0 means leases never expire. Workers with no recorded contact
    are left alone (they have not called yet).
    """
    if lease_s <= 0:
        return []
    return sorted(w for w in live if w in last_contact and now - last_contact[w] > lease_s)


class LeaseKeeper:
    """Calls ``expire()`` every ``lease_s / 4`` seconds on a daemon thread it owns.

    ``start()`` and ``stop()`` (joins the thread, bounded) are idempotent; the constructor
    does nothing but store. ``expire`` errors are logged, never raised.
    """

    def __init__(self, expire: Callable[[], object], lease_s: float) -> None:
        self._expire = expire
        self._period_s = max(0.05, lease_s / 4)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> LeaseKeeper:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="ps-lease", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self._period_s):
            try:
                self._expire()
            except Exception:  # noqa: BLE001 - a bad tick must not end liveness checking
                log.exception("lease check failed")

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)

"""When is a run over? ``ps-admin stop --when-done`` asks before it stops the servers.

:class:`DoneWatch` decides from the shards' statuses (``Client.status()`` dicts) alone: it
is a pure state machine (statuses and the time in, a reason or None out; no I/O, not
thread-safe). :func:`wait_until_done` polls a status function until it says the run is
over. ``docker compose up`` runs this as its ``stop`` service, so that the servers stop
(with their final checkpoints) and ``up`` returns however the workers ended: all
finished, some failed, or some never joined.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ps.errors import PSError


@dataclass
class DoneWatch:
    """The run is over when no shard has a live worker and

    - every shard has known at least ``num_workers`` workers (all of the run joined, then
      left: finished, failed, or lost their lease); with ``num_workers`` 0, at least one; or
    - no shard has had a live worker for ``idle_s`` seconds (workers that never joined,
      e.g. they failed before registering).

    Times are seconds on one monotonic clock, given by the caller.
    """

    num_workers: int
    idle_s: float
    _quiet_since: float | None = None

    def observe(self, statuses: list[dict[str, Any]], now: float) -> str | None:
        """Why the run is over (one line), or None while it is not."""
        if any(w["live"] for s in statuses for w in s["workers"]):
            self._quiet_since = None
            return None
        if self._quiet_since is None:
            self._quiet_since = now
        known = min((len(s["workers"]) for s in statuses), default=0)
        if known and known >= self.num_workers:
            return f"every worker left ({known} joined)"
        if now - self._quiet_since >= self.idle_s:
            return (f"no live worker for {self.idle_s:g} s ({known} of {self.num_workers} expected joined; "
                    "the others never registered)")
        return None


def wait_until_done(status: Callable[[], list[dict[str, Any]]], watch: DoneWatch, error_timeout_s: float,
                    poll_s: float = 0.5, clock: Callable[[], float] = time.monotonic,
                    sleep: Callable[[float], None] = time.sleep) -> str:
    """Call ``status`` every ``poll_s`` seconds until ``watch`` says the run is over; return why.

    Blocks. The wait ends at most ``watch.idle_s`` seconds after the last live worker left
    or lost its lease; a status call that fails (a shard restarting) is retried. Raises the
    last PSError once calls have failed for ``error_timeout_s`` seconds in a row.
    """
    failing_since: float | None = None
    while True:
        now = clock()
        try:
            statuses = status()
        except PSError:
            failing_since = now if failing_since is None else failing_since
            if now - failing_since >= error_timeout_s:
                raise
        else:
            failing_since = None
            reason = watch.observe(statuses, now)
            if reason is not None:
                return reason
        sleep(poll_s)

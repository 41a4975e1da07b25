"""``SlowWaitWarner``: say whom a worker is waiting for when a call waits long.

In sync and ssp modes a pull (or push) waits on the other workers. When one has waited
``after_s`` seconds, the warner's thread asks the cluster for its status and logs one
warning naming the workers the step waits for (and when each was last heard from); it
repeats every ``repeat_s`` while the call goes on::

    WARNING pull for step 12 has waited 10.0 s: slowest: worker 3 at clock 12; shard 1
    (10.0.0.7:50051): sync step 12 waits for worker 3 (last heard 9.8 s ago)

A worker that was expected (the servers' ``--num-workers``) but never registered is
named too: ``waits for worker 2 (never registered)``.

The constructor does no I/O; :meth:`SlowWaitWarner.start` starts the one thread it owns,
:meth:`SlowWaitWarner.stop` joins it. :meth:`SlowWaitWarner.watching` marks a call; it
costs a lock and a notify. Thread-safe.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

log = logging.getLogger(__name__)


def stragglers(shards: Sequence[dict[str, Any]]) -> list[tuple[int, int]]:
    """``[(worker, clock)]``: the workers a sync step waits for that are furthest behind.

    A shard's step also waits for workers that are themselves blocked on another shard;
    the ones to look at have the lowest clock (on any shard) among those waited for.
    """
    waited = {w for s in shards if s["mode"] == "sync" for w in s["waiting_for"]}
    clocks: dict[int, int] = {}
    for s in shards:
        for w in s["workers"]:
            if w["id"] in waited:
                clocks[w["id"]] = min(clocks.get(w["id"], w["clock"]), w["clock"])
    if not clocks:
        return []
    low = min(clocks.values())
    return sorted((w, c) for w, c in clocks.items() if c == low)


def never_registered(shard: dict[str, Any]) -> list[int]:
    """The ids a shard waits for that it has never seen: expected workers that never
    registered (``--num-workers`` more than have come), from one ``Client.status()`` dict."""
    known = {w["id"] for w in shard["workers"]}
    return [w for w in shard["waiting_for"] if w not in known]


def describe_wait(shards: Sequence[dict[str, Any]], my_clock: int | None = None) -> str:
    """Whom the cluster waits for, from ``Client.status()`` dicts (one per shard)."""
    slow = stragglers(shards)
    parts = [f"slowest: {', '.join(f'worker {w} at clock {c}' for w, c in slow)}"] if slow else []
    for i, s in enumerate(shards):
        ages = {w["id"]: w["last_contact_age_s"] for w in s["workers"]}
        if s["mode"] == "sync" and s["waiting_for"]:
            who = ", ".join(f"worker {w} (last heard {ages[w]:.1f} s ago)" if w in ages else
                            f"worker {w} (never registered)" for w in s["waiting_for"])
            parts.append(f"shard {i} ({s['address']}): sync step {s['version']} waits for {who}")
        elif s["mode"] == "ssp" and never_registered(s):
            who = ", ".join(f"worker {w} (never registered)" for w in never_registered(s))
            parts.append(f"shard {i} ({s['address']}): ssp pulls wait for {who}")
        elif s["mode"] == "ssp":
            live = [w for w in s["workers"] if w["live"]]
            if live:
                low = min(w["clock"] for w in live)
                slow = [w for w in live if w["clock"] == low]
                if my_clock is None or low < my_clock:
                    who = ", ".join(f"worker {w['id']} (last heard {w['last_contact_age_s']:.1f} s ago)"
                                    for w in slow)
                    parts.append(f"shard {i} ({s['address']}): slowest at clock {low}: {who}")
    return "; ".join(parts) or "no shard reports a worker it waits for"


class SlowWaitWarner:
    """Warns once a watched call has run ``after_s`` seconds, then every ``repeat_s``.

    ``describe()`` says whom the call waits for (it may block, bounded by its own
    deadlines; it runs on the warner's thread, never on the caller's).
    """

    def __init__(self, describe: Callable[[], str], after_s: float = 10.0, repeat_s: float | None = None,
                 logger: logging.Logger = log) -> None:
        if not after_s > 0:
            raise ValueError(f"after_s must be > 0, got {after_s}")
        self.describe = describe
        self.after_s = after_s
        self.repeat_s = repeat_s if repeat_s is not None else max(after_s, 30.0)
        self.log = logger
        self.warnings = 0  # how many warnings were logged (counted once logged)
        self._cond = threading.Condition()
        self._call: tuple[int, str, float] | None = None  # (token, what, started)
        self._token = 0
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self) -> SlowWaitWarner:
        """Start the watching thread. Does not block."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="ps-slow-wait", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout_s: float = 35.0) -> None:
        """Stop and join the thread (it may be finishing one status call). Idempotent."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def current(self) -> tuple[str, float] | None:
        """``(what, seconds)``: the watched call running now and how long it has run; None
        when none runs. Any thread; does not block."""
        with self._cond:
            call = self._call
        return None if call is None else (call[1], time.monotonic() - call[2])

    @contextlib.contextmanager
    def watching(self, what: str) -> Iterator[None]:
        """Mark the call ``what`` (e.g. ``"pull for step 12"``) as running in this block."""
        with self._cond:
            self._token += 1
            token = self._token
            self._call = (token, what, time.monotonic())
            self._cond.notify_all()
        try:
            yield
        finally:
            with self._cond:
                if self._call is not None and self._call[0] == token:
                    self._call = None

    def _run(self) -> None:
        warned: dict[int, float] = {}  # token -> when the next warning is due
        while True:
            with self._cond:
                while not self._stopping and self._call is None:
                    self._cond.wait()
                if self._stopping:
                    return
                token, what, started = self._call
                due = warned.get(token, started + self.after_s)
                left = due - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
            try:
                detail = self.describe()
            except Exception as exc:  # noqa: BLE001 - the warning still goes out
                detail = f"the cluster's status is unavailable ({exc})"
            with self._cond:
                still = self._call is not None and self._call[0] == token
            if still:
                # log first, count second: whoever sees the count can already read the warning
                self.log.warning("%s has waited %.1f s: %s", what, time.monotonic() - started, detail)
                with self._cond:
                    self.warnings += 1
            warned = {token: time.monotonic() + self.repeat_s}

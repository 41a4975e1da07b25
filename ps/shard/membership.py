"""Membership, topology and leases of a :class:`~ps.shard.shard.Shard`: who is in its quorum.

:class:`ShardMembership` is a mixin of :class:`~ps.shard.shard.Shard`; its methods use the
shard's state (``gate``, ``last_contact``, ``fenced``, the lock ``_cond``) and share its
thread-safety: every method takes the shard's lock, none waits on other workers.
"""

from __future__ import annotations

import logging

from ps.errors import (
    AbortedError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    Reason,
    ResourceExhaustedError,
)
from ps.shard.lease import expired

log = logging.getLogger("ps.shard")  # the shard's logger: operators filter on it


class ShardMembership:
    """Join, leave, heartbeats, lease expiry, rollback fences and the shard's topology."""

    def adopt_topology(self, shard_index: int, num_shards: int) -> None:
        """Take the client's view of where this shard sits, or check it agrees.

        Raises FailedPreconditionError when it disagrees with what this shard already is.
        """
        if num_shards < 1 or not 0 <= shard_index < num_shards:
            raise InvalidArgumentError(f"topology: shard {shard_index} of {num_shards} is impossible")
        with self._cond:
            if self.topology is None:
                self.topology = (shard_index, num_shards)
            elif self.topology != (shard_index, num_shards):
                have = self.topology
                raise FailedPreconditionError(
                    f"this server is shard {have[0]} of {have[1]}, but the client addressed it as shard "
                    f"{shard_index} of {num_shards}: every worker must list the servers in the same order"
                )

    def register(self, worker: int, session: int = 0) -> tuple[int, int, int]:
        """Join (``worker`` >= 0) or get a new id (``worker`` < 0). Returns (id, clock, next_seq).

        ``session`` identifies the registering Client (0: none). A second session that
        registers under an id held by another takes the id over: the newest registration
        wins (a restarted worker must be able to rejoin under its rank), and the older
        session's pushes are refused from then on (:meth:`claim`), so two clients sharing
        one id are told apart loudly instead of merged silently.
        Raises ResourceExhaustedError when ``config.max_workers`` ids are already known.
        """
        with self._cond:
            if worker < 0:
                while self._next_worker in self.gate.workers:
                    self._next_worker += 1
                worker = self._next_worker
            if worker > 1 << 40:
                raise InvalidArgumentError(f"worker id {worker} is out of range")
            if worker not in self.gate.workers and len(self.gate.workers) >= self.config.max_workers:
                raise ResourceExhaustedError(f"this shard already knows {len(self.gate.workers)} workers "
                                             f"(max-workers {self.config.max_workers})")
            clock = self.gate.register(worker)
            self.last_contact[worker] = self._clock()
            if session:
                held = self.sessions.get(worker)
                if held is not None and held != session:
                    self.counters["takeovers"] += 1
                    log.warning("worker id %d was registered again by another client (session %x replaces %x): "
                                "the older client is fenced. Two workers sharing one --rank?", worker, session, held)
                self.sessions[worker] = session
            log.info("worker %d registered at clock %d", worker, clock)
            self._cond.notify_all()
            return worker, clock, self.dedup.next_seq(worker)

    def claim(self, worker: int, session: int) -> None:
        """Call with the lock held before a push. Raises FailedPreconditionError when another
        client's session now holds ``worker``'s id. A session pushing under an id nobody
        holds (e.g. after this shard restarted) claims it. Session 0 is not checked."""
        if not session or worker < 0:
            return
        held = self.sessions.setdefault(worker, session)
        if held != session:
            self.counters["fenced_pushes"] += 1
            raise FailedPreconditionError(
                f"worker id {worker} now belongs to another client that registered under it after this one: "
                "this client is fenced and its push was not applied. Give every worker its own rank "
                "(ps-worker --rank N, distinct) or use --rank auto", reason=Reason.FENCED)

    def unfence(self, worker: int) -> bool:
        """A worker resyncs after a rollback: lift its fence. True if it was fenced."""
        with self._cond:
            if worker not in self.fenced:
                return False
            self.fenced.discard(worker)
            return True

    def check_current(self, worker: int) -> None:
        """Call with the lock held before a push or pull. Raises AbortedError while this
        shard awaits the cluster's rollback decision, or when ``worker`` has not resynced
        since a rollback (``Register`` with ``resync``). Observers (< 0) pass."""
        if worker < 0:
            return
        if self.awaiting_rollback:
            tag = self.restored_from[0] if self.restored_from else "?"
            raise AbortedError(f"shard restored from checkpoint {tag} (epoch {self.epoch}) waits for the cluster's "
                               "rollback decision: resync and retry the step", reason=Reason.ROLLED_BACK)
        if worker in self.fenced:
            tag, version = self.restored_from or ("?", self.gate.version)
            raise AbortedError(f"the cluster rolled back to checkpoint {tag} at version {version} (epoch "
                               f"{self.epoch}): resync and retry the step from a fresh pull", reason=Reason.ROLLED_BACK)

    def leave(self, worker: int, session: int = 0) -> None:
        """Leave the quorum; a sync step that only waited for this worker is applied.

        A Leave from a ``session`` that no longer holds the id (fenced) changes nothing.
        """
        with self._cond:
            if worker not in self.gate.workers:
                raise NotFoundError(f"worker {worker} is not registered with this shard", reason=Reason.NOT_REGISTERED)
            if session and self.sessions.get(worker, session) != session:
                log.info("ignored a Leave for worker %d from the fenced session %x", worker, session)
                return
            self.sessions.pop(worker, None)
            ready = self.gate.leave(worker)
            log.info("worker %d left", worker)
            self._cond.notify_all()
        if ready:
            self._apply_step(ready)

    def heartbeat(self, worker: int) -> int:
        """Renew ``worker``'s lease; returns the epoch. Raises FailedPreconditionError when
        the worker is not registered or left (register again to rejoin)."""
        with self._cond:
            self.gate.check_live(worker)
            self.last_contact[worker] = self._clock()
            return self.epoch

    def expire_leases(self) -> list[int]:
        """Make every live worker silent for longer than ``config.lease_s`` leave the quorum.

        Logs one line per worker, naming it. Returns their ids. Called by the
        :class:`~ps.shard.lease.LeaseKeeper`; may apply a sync step that only waited for them.
        """
        with self._cond:
            now = self._clock()
            gone = expired(self.last_contact, self.gate.live_workers(), now, self.config.lease_s)
            ready = None
            for worker in gone:
                log.warning("worker %d missed its lease: silent for %.1f s (lease %.1f s); it leaves the quorum "
                            "and may register again to rejoin", worker, now - self.last_contact[worker],
                            self.config.lease_s)
                ready = self.gate.leave(worker) or ready
                self.counters["lease_expired"] += 1
            if gone:
                self._cond.notify_all()
        if ready:
            self._apply_step(ready)
        return gone

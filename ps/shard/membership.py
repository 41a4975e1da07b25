"""``Membership``: who is in a shard's quorum, and who may push or pull right now.

It owns the worker table beside the gate's clocks: the session (Client) holding each id,
each worker's last contact (its lease), the fences (workers that must resync after a
rollback, or everyone while the shard awaits the cluster's decision) and the shard's
topology. As the :class:`~ps.shard.sequencer.Sequencer`'s guard it admits every push and pull.
Thread-safe: every method takes the sequencer's lock (``admit_*`` expect it held); none
waits on other workers.
"""

from __future__ import annotations

import logging

from ps.errors import (AbortedError, FailedPreconditionError, InvalidArgumentError, NotFoundError, Reason,
                       ResourceExhaustedError)
from ps.shard.lease import expired
from ps.shard.sequencer import Sequencer

log = logging.getLogger("ps.shard")  # the shard's logger: operators filter on it


class Membership:
    """Join, leave, heartbeats, lease expiry, session and rollback fences, topology."""

    def __init__(self, steps: Sequencer, topology: tuple[int, int] | None = None) -> None:
        self._steps = steps
        self.topology = topology
        self.sessions: dict[int, int] = {}     # worker -> the session (Client) that holds its id
        self.last_contact: dict[int, float] = {}
        self.fenced: set[int] = set()          # workers that must resync (Register resync=True)
        self.awaiting_rollback = False         # refuse every push and pull until the cluster decides
        self.held_state = "?"                  # the restored state, as refusals name it
        self.unheard: set[int] = set()         # restored, silent since: their ids are free for --rank auto
        #: worker -> (the session a takeover fenced, the first sequence number the new session may use):
        #: the fenced session's own pushes numbered below it may still be answered (admit_push)
        self.replaced: dict[int, tuple[int, int]] = {}
        self._next_worker = 0

    def adopt_topology(self, shard_index: int, num_shards: int) -> None:
        """Take the client's view of where this shard sits, or check it agrees.

        Raises FailedPreconditionError when it disagrees with what this shard already is.
        """
        if num_shards < 1 or not 0 <= shard_index < num_shards:
            raise InvalidArgumentError(f"topology: shard {shard_index} of {num_shards} is impossible")
        with self._steps.lock:
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

        ``session`` identifies the registering Client (0: none) and orders Clients: a newer
        Client's session is greater (an incarnation, see ``RegisterRequest.session``). A
        greater session registering under an id held by a smaller one takes the id over
        (a restarted worker must be able to rejoin under its rank), and the older session's
        pushes are refused from then on (:meth:`admit_push`), so two clients sharing one id
        are told apart loudly instead of merged silently. A smaller session than the holder's
        is refused (FENCED): a stale client never takes the id back.
        A new id is the lowest below ``config.num_workers`` that no worker used since this
        shard started: never known, or restored from a checkpoint and not heard from since
        (``unheard``: the ids of a previous run are free for the next run's workers), else
        the lowest id this shard does not know. A rank whose worker left during this run is
        not handed out again: a second worker would train on the same rank's data. Ids at or
        above ``num_workers`` whose worker departed are reclaimed once the table is full.
        Raises ResourceExhaustedError when ``config.max_workers`` ids are already known
        after the departed ones were reclaimed (:meth:`_reclaim`); ranks below
        ``config.num_workers`` are never refused for that (there are only so many).
        FailedPreconditionError (FENCED) for a session older than the id's holder.
        """
        steps = self._steps
        with steps.lock:
            if session and worker >= 0:
                self._refuse_older(worker, session, "registration")
            if worker not in steps.gate.workers and len(steps.gate.workers) >= steps.config.max_workers:
                self._reclaim()
            if worker < 0:
                known = steps.gate.workers
                worker = next((w for w in range(steps.config.num_workers) if w not in known or w in self.unheard), -1)
            if worker < 0:
                while self._next_worker in steps.gate.workers:
                    self._next_worker += 1
                worker = self._next_worker
            if worker > 1 << 40:
                raise InvalidArgumentError(f"worker id {worker} is out of range")
            if (worker not in steps.gate.workers and worker >= steps.config.num_workers
                    and len(steps.gate.workers) >= steps.config.max_workers):
                raise ResourceExhaustedError(f"this shard already knows {len(steps.gate.workers)} workers "
                                             f"(max-workers {steps.config.max_workers})")
            clock = steps.gate.register(worker)
            self.last_contact[worker] = steps.clock()
            self.unheard.discard(worker)
            if session:
                held = self.sessions.get(worker)
                if held is not None and held != session:
                    self.replaced[worker] = (held, steps.dedup.next_seq(worker))
                    steps.counters["takeovers"] += 1
                    log.warning("worker id %d was registered again by another client (session %x replaces %x): "
                                "the older client is fenced. Two workers sharing one --rank?", worker, session, held)
                self.sessions[worker] = session
            log.info("worker %d registered at clock %d", worker, clock)
            steps.wake()
            return worker, clock, steps.dedup.next_seq(worker)

    def _reclaim(self) -> None:
        """Lock held. Free the places of departed workers (left, or lease expired) with ids
        >= ``config.num_workers``: they count no more against ``config.max_workers`` and
        their ids become free for new registrations (the lowest free id first). Ranks below
        ``num_workers`` stay known, so :meth:`register` never hands a used rank out again.
        Their dedup windows are kept: a reclaimed id still refuses its old sequence numbers."""
        steps = self._steps
        departed = [w for w in steps.gate.departed() if w >= steps.config.num_workers]
        for worker in steps.gate.forget(departed):
            self.sessions.pop(worker, None)
            self.replaced.pop(worker, None)
            self.last_contact.pop(worker, None)
            self.fenced.discard(worker)
            self.unheard.discard(worker)
            self._next_worker = min(self._next_worker, worker)
            steps.counters["ids_reclaimed"] += 1

    def admit_push(self, worker: int, session: int, seq: int = 0) -> bool:
        """Call with the lock held before a push: :meth:`check_current`, registered and live,
        and the session check: only the session holding the id pushes. A session this shard
        does not hold the id for, and which is not older than the holder (none after this
        shard restarted, even restored), must register first (NOT_REGISTERED): the client's
        rejoin asks the other shards whether a newer session holds the id before it
        registers, so a stale client never claims an id on a restarted shard. Session 0 is
        not checked. Returns True for a *replay*: the push ``seq`` of the session the last
        takeover fenced, numbered before it; the caller then answers it from the dedup
        table only (a duplicate of a push this shard applied before the takeover is
        acknowledged again, anything else refused with :meth:`fenced_refusal`), so that a
        fenced client whose reply was lost is told what this shard did. Raises AbortedError,
        FailedPreconditionError (NOT_REGISTERED, or FENCED: a newer client's session holds
        the id)."""
        self.check_current(worker)
        self._steps.gate.check_live(worker)
        if session and worker >= 0:
            if self.replaced.get(worker, (0, 0))[0] == session and seq < self.replaced[worker][1]:
                return True
            self._refuse_older(worker, session, "push")
            if self.sessions.get(worker) != session:
                raise FailedPreconditionError(
                    f"worker {worker} (session {session:x}) has not registered with this shard since it started: "
                    "register again", reason=Reason.NOT_REGISTERED)
        self.last_contact[worker] = self._steps.clock()  # after the checks: unknown ids leave no trace
        self.unheard.discard(worker)
        return False

    def fenced_refusal(self, worker: int) -> FailedPreconditionError:
        """Lock held: the error (FENCED) that refuses a replay (:meth:`admit_push`) this shard
        never applied; counted in ``fenced_pushes``."""
        self._steps.counters["fenced_pushes"] += 1
        return self._fenced(worker, "push")

    def _refuse_older(self, worker: int, session: int, what: str) -> None:
        """Call with the lock held. Raises FailedPreconditionError (FENCED) when a newer session
        than ``session`` holds ``worker``'s id; counts refused pushes in ``fenced_pushes``."""
        held = self.sessions.get(worker)
        if held is None or session >= held:
            return
        if what == "push":
            self._steps.counters["fenced_pushes"] += 1
        raise self._fenced(worker, what)

    @staticmethod
    def _fenced(worker: int, what: str) -> FailedPreconditionError:
        return FailedPreconditionError(
            f"worker id {worker} now belongs to another client that registered under it after this one: "
            f"this client is fenced and its {what} was refused; none of its pushes is applied any more. "
            "Give every worker its own rank "
            "(ps-worker --rank N, distinct) or use --rank auto", reason=Reason.FENCED)

    def admit_pull(self, worker: int) -> None:
        """Call with the lock held before a pull: :meth:`check_current`; renews a known worker's lease."""
        self.check_current(worker)
        if worker in self._steps.gate.workers:  # unknown ids leave no trace
            self.last_contact[worker] = self._steps.clock()

    def check_current(self, worker: int) -> None:
        """Call with the lock held. Raises AbortedError (ROLLED_BACK) while this shard awaits
        the cluster's rollback decision, or when ``worker`` has not resynced since a rollback
        (``Register`` with ``resync``). Observers (< 0) pass."""
        if worker < 0:
            return
        if self.awaiting_rollback:
            raise AbortedError(f"shard restored from {self.held_state} waits for the cluster's rollback decision: "
                               "resync and retry the step", reason=Reason.ROLLED_BACK)
        if worker in self.fenced:
            raise AbortedError(f"the cluster rolled back to {self.held_state}: resync and retry the step from a "
                               "fresh pull", reason=Reason.ROLLED_BACK)

    def unfence(self, worker: int) -> bool:
        """A worker resyncs after a rollback: lift its fence. True if it was fenced."""
        with self._steps.lock:
            if worker not in self.fenced:
                return False
            self.fenced.discard(worker)
            return True

    def leave(self, worker: int, session: int = 0) -> None:
        """Leave the quorum; a sync step that only waited for this worker is applied.

        A Leave from a ``session`` that no longer holds the id (fenced) changes nothing.
        Raises NotFoundError (NOT_REGISTERED).
        """
        steps = self._steps
        with steps.lock:
            if worker not in steps.gate.workers:
                raise NotFoundError(f"worker {worker} is not registered with this shard", reason=Reason.NOT_REGISTERED)
            if session and self.sessions.get(worker, session) != session:
                log.info("ignored a Leave for worker %d from the fenced session %x", worker, session)
                return
            self.sessions.pop(worker, None)
            ready = steps.gate.leave(worker)
            log.info("worker %d left", worker)
            steps.wake()
        if ready:
            steps.apply_step(ready)

    def heartbeat(self, worker: int, session: int = 0) -> int:
        """Renew ``worker``'s lease; returns the epoch. Raises FailedPreconditionError
        (NOT_REGISTERED) when the worker is not registered or left (register again to rejoin),
        or (FENCED) when a newer session than ``session`` holds the id (0: unchecked)."""
        steps = self._steps
        with steps.lock:
            if session:
                self._refuse_older(worker, session, "heartbeat")
            steps.gate.check_live(worker)
            self.last_contact[worker] = steps.clock()
            self.unheard.discard(worker)
            return steps.epoch

    def expire_leases(self) -> list[int]:
        """Make every live worker silent for longer than ``config.lease_s`` leave the quorum.

        Logs one line per worker, naming it. Returns their ids. Called by the
        :class:`~ps.shard.lease.LeaseKeeper`; may apply a sync step that only waited for them.
        """
        steps = self._steps
        with steps.lock:
            now = steps.clock()
            gone = expired(self.last_contact, steps.gate.live_workers(), now, steps.config.lease_s)
            ready = None
            for worker in gone:
                log.warning("worker %d missed its lease: silent for %.1f s (lease %.1f s); it leaves the quorum "
                            "and may register again to rejoin", worker, now - self.last_contact[worker],
                            steps.config.lease_s)
                ready = steps.gate.leave(worker) or ready
                steps.counters["lease_expired"] += 1
            if gone:
                steps.wake()
        if ready:
            steps.apply_step(ready)
        return gone

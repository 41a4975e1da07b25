"""``StepEngine``: every data verb of a Client as one step over the data planes."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ps._proto import ps_pb2
from ps.errors import AbortedError, FailedPreconditionError, InvalidArgumentError, PSError, Reason, TransientError
from ps.protocol.wire import dtype_refusal
from ps.tables.sparse_spec import SparseTableSpec
from ps.tables.sparse_table import sum_duplicates, unique_inverse
from worker.client.transport import REJOIN_REASONS
from worker.planes.part import Part
from worker.planes.plane import DataPlane
from worker.planes.step import Step

if TYPE_CHECKING:
    from worker.client.step_plan import StepPlanner
    from worker.client.table_directory import TableDirectory
    from worker.planes.local_plane import LocalPlane

log = logging.getLogger(__name__)

#: tries of one verb that a sync rollback (or a shard awaiting one) answered with ABORTED
STEP_TRIES = 4
#: the first pause (s) before redirected parts are sent again when no newer placement map was
#: found (a move under way): it doubles each round up to MOVE_BACKOFF_MAX_S, within the verb's deadline
MOVE_BACKOFF_S = 0.01
MOVE_BACKOFF_MAX_S = 0.25
_OUTCOME_NAMES = {number: name.lower() for name, number in ps_pb2.Outcome.items()}
_INT64_MAX = np.iinfo(np.int64).max


class StepEngine:
    """Pull, push (dense, rows, or both as one step), push-pull and row pulls of one worker.

    A step is planned into parts (:class:`~worker.client.step_plan.StepPlanner`); every
    part that pushes gets the next sequence number of its shard, so that a part sent
    again is applied once; each part goes over its shard's data plane, rows parts over
    the fallback where that plane carries none. A part that fails transiently on a fast
    plane is sent again over the ``fallback`` plane (gRPC) with the same number, and that
    shard stays on the fallback; one that finds the shard forgot this worker is sent
    again over the fallback too, which registers again first. In sync mode a step that a
    rollback aborted is settled with ``reconcile()`` (which returns the restored clock,
    or None, and the shards' next sequence numbers) and tried again: the same numbers
    when nothing was rolled back; after a rollback a pull pulls again, a push is dropped
    (its gradient came from weights the cluster no longer has) and a push-pull pulls
    afresh. A push moves :attr:`clock` one step (or to the cluster's after a stale one)
    and counts outcomes in :attr:`stats`.

    The constructor does no I/O; :meth:`start` takes the worker's identity and planes
    once registered. Every verb blocks, bounded by ``timeout_s`` in all (its retries,
    fallbacks and rollback tries share one deadline; a shard's wait on other workers that
    ran out ends the verb at once, naming them). Not thread-safe (a Client is one worker).
    """

    def __init__(self, directory: TableDirectory, planner: StepPlanner, fallback: DataPlane, *, timeout_s: float,
                 shared: LocalPlane | None = None,
                 reconcile: Callable[[], tuple[int | None, list[int]]] | None = None, observer: bool = False) -> None:
        self._directory = directory
        self._planner = planner
        self._fallback = fallback
        self._shared = shared
        self._timeout_s = timeout_s
        self._reconcile = reconcile
        self._observer = observer
        self._planes: list[DataPlane] = []
        self._pipelined: tuple[bool, ...] = ()
        self._next_seq: list[int] = []
        self._deadline: float | None = None  # time.monotonic() by which the verb running now ends
        self._refused: list[tuple[Part, PSError]] = []  # this round's parts refused as MOVED or PULL_MOVED
        self.worker_id = -1
        self.session = 0
        self.mode = ""
        #: this worker's step: what its next push counts for
        self.clock = 0
        #: push outcomes so far (applied, accumulated, duplicate, stale) and rollbacks survived
        self.stats: dict[str, int] = {"applied": 0, "accumulated": 0, "duplicate": 0, "stale": 0}

    def start(self, worker_id: int, session: int, mode: str, clock: int, next_seqs: Sequence[int],
              planes: Sequence[DataPlane | None] = ()) -> None:
        """Run steps as ``worker_id`` of ``session`` in ``mode``, from ``clock`` and each shard's
        next sequence number; ``planes[shard]`` carries that shard's parts (None or missing:
        the fallback). No I/O."""
        self.worker_id, self.session, self.mode, self.clock = worker_id, session, mode, clock
        self._next_seq = list(next_seqs)
        self._planes = [p or self._fallback for p in (*planes, *[None] * (len(next_seqs) - len(planes)))]
        self._pipelined = tuple(p.pipelined for p in self._planes)

    def reshard(self, next_seqs: Sequence[int], planes: Sequence[DataPlane | None] = ()) -> None:
        """The shards changed (a resize; ``next_seqs`` per new shard index, carried over by
        address): ``planes[shard]`` carries that shard's parts from now on (None or missing:
        the fallback), opened for the new places. No I/O."""
        self._next_seq = list(next_seqs)
        self._planes = [p or self._fallback for p in (*planes, *[None] * (len(next_seqs) - len(planes)))]
        self._pipelined = tuple(p.pipelined for p in self._planes)

    def next_seqs(self) -> list[int]:
        """Each shard's next sequence number, in server order (a copy)."""
        return list(self._next_seq)

    def planes(self) -> list[str]:
        """How each shard's tensors travel now (a plane's name), in server order."""
        return [p.name for p in self._planes]

    def close(self) -> None:
        """Close every plane. Does not block or raise."""
        for plane in {id(p): p for p in (*self._planes, self._shared, self._fallback) if p is not None}.values():
            plane.close()

    # -- verbs ----------------------------------------------------------------------------

    def pull(self, names: Iterable[str] | str, out: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """See ``Client.pull``."""
        return self._retrying(lambda: self._dense(None, names, out))

    def push(self, grads: Mapping[str, Any], rows: Mapping[str, tuple[Any, Any]] | None = None) -> None:
        """See ``Client.push``."""
        if rows:
            self._retrying(lambda: self._push_rows(grads, rows), pushes=True)
        else:
            self._retrying(lambda: self._dense(grads, None), pushes=True)

    def push_pull(self, grads: Mapping[str, Any], names: Iterable[str] | str | None = None,
                  out: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """See ``Client.push_pull``."""
        names = list(grads) if names is None else names
        return self._retrying(lambda: self._dense(grads, names, out), pushes=True,
                              pull_again=lambda: self._dense(None, names, out))

    def pull_rows(self, name: str, ids: Any) -> np.ndarray:
        """See ``Client.pull_rows``."""
        return self._retrying(lambda: self._pull_rows(name, ids))

    def buffers(self, names: Iterable[str] | str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """See ``Client.buffers``. Raises OSError when the shared memory cannot be had."""
        names = [names] if isinstance(names, str) else list(dict.fromkeys(names))
        return self._shared.buffers([self._directory.spec(n) for n in names])

    # -- steps ----------------------------------------------------------------------------

    def _retrying(self, attempt: Callable[[], Any], pushes: bool = False,
                  pull_again: Callable[[], Any] | None = None) -> Any:
        """Run one verb's ``attempt`` under one deadline, ``timeout_s`` from now: the
        attempts after a rollback, the fallback plane's and the transport's retries all
        share what is left of it."""
        if self._deadline is not None:  # a verb inside a verb (a pull again after a rollback): its deadline
            return self._attempts(attempt, pushes, pull_again)
        self._deadline = time.monotonic() + self._timeout_s
        try:
            return self._attempts(attempt, pushes, pull_again)
        finally:
            self._deadline = None

    def _attempts(self, attempt: Callable[[], Any], pushes: bool,
                  pull_again: Callable[[], Any] | None) -> Any:
        for tries in range(STEP_TRIES):
            seqs, clock = list(self._next_seq), self.clock
            try:
                return attempt()
            except AbortedError as exc:
                if (exc.reason is not Reason.ROLLED_BACK or self.mode != "sync" or self._observer
                        or self._reconcile is None or tries == STEP_TRIES - 1):
                    raise
                log.warning("worker %d: step %d aborted (%s); resyncing with the cluster", self.worker_id, clock, exc)
                restored, next_seqs = self._reconcile()
                if restored is None:  # the same step again with the same numbers: exactly once
                    self._next_seq, self.clock = seqs, clock
                    continue
                self.stats["rolled_back"] = self.stats.get("rolled_back", 0) + 1
                self.clock = restored
                self._next_seq = [max(a, b) for a, b in zip(self._next_seq, next_seqs)]
                log.warning("worker %d resumes at step %d after a rollback", self.worker_id, restored)
                if pushes:
                    log.warning("worker %d: the cluster rolled back to step %d; the gradient for step %d is dropped",
                                self.worker_id, restored, clock)
                    return self._retrying(pull_again) if pull_again is not None else None
        raise AssertionError("unreachable")

    def _step(self, pull_step: int | None = None, **data: Any) -> Step:
        return Step(self._directory.specs, self.worker_id, self.session, self.clock,
                    self.clock if pull_step is None else pull_step, self._deadline, **data,
                    independent=self.mode == "async", placement_version=self._directory.placement.version)

    def _dense(self, grads: Mapping[str, Any] | None, names: Iterable[str] | str | None,
               out: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray] | None:
        """Push ``grads`` (if given), then pull ``names`` (if given), in one round trip per part."""
        if grads is not None and self._observer:
            raise FailedPreconditionError("an observer client cannot push")
        flat = self._flatten(grads) if grads is not None else None
        pull = dest = None
        if names is not None:
            pull = (names,) if isinstance(names, str) else tuple(dict.fromkeys(names))
            dest = self._outputs(pull, out)
        parts = self._planner.dense(tuple(flat) if flat is not None else None, pull, self._pipelined, self.mode)
        if parts is None:  # a fused part cannot fit one message: two round trips instead
            self._dense(grads, None)
            return self._dense(None, names, out)
        outcomes = self._execute(parts, self._step(self.clock + (flat is not None), grads=flat, dest=dest))
        if flat is not None:
            self._advance(outcomes)
        if pull is None:
            return None
        given = out or {}
        return {n: given[n] if given.get(n) is not None else dest[n].reshape(self._directory.specs[n].shape)
                for n in pull}

    def _push_rows(self, grads: Mapping[str, Any] | None, rows: Mapping[str, tuple[Any, Any]]) -> None:
        """Dense gradients and rows ``{table: (ids, grads)}`` as one step (one clock tick)."""
        if self._observer:
            raise FailedPreconditionError("an observer client cannot push")
        flat = self._flatten(grads or {})
        checked = [self._checked_rows(name, ids, g) for name, (ids, g) in rows.items()]  # all before sending
        dense = self._planner.dense(tuple(flat), None, self._pipelined, self.mode)
        parts = self._planner.with_rows(dense, [(spec, *sum_duplicates(ids, g)) for spec, ids, g in checked])
        self._advance(self._execute(parts, self._step(grads=flat)))

    def _pull_rows(self, name: str, ids: Any) -> np.ndarray:
        spec = self._directory.sparse_spec(name)
        ids = self._ids(ids)
        if len(ids) == 0:
            return np.zeros((0, spec.dim), dtype=spec.dtype)
        uniq, inverse = unique_inverse(ids)
        out = np.empty((len(uniq), spec.dim), dtype=spec.dtype)
        self._execute(self._planner.rows_pull(spec, uniq), self._step(rows=out))
        return np.take(out, inverse, axis=0)

    def _execute(self, parts: list[Part], step: Step) -> list[tuple[int, int]]:
        """Number and send every part, then collect the replies; parts that failed on a fast
        plane go again over the fallback. Parts a shard refused unapplied because they were
        planned with another placement map (reason MOVED) are planned again with the newest
        map (asked of the shards that refused them) and sent, as new messages, to their
        owners now: nothing of them was applied, so they are applied once. A push-pull
        whose push went through but whose pull was refused (PULL_MOVED) only pulls again.
        Returns the pushes' ``(outcome, version)``. Blocks until every part is answered (and
        the redirected ones, until the verb's deadline); then raises the first PSError."""
        outcomes: list[tuple[int, int]] = []
        rounds = 0
        while True:  # bounded by the verb's deadline: each round waits or finds a newer map
            moved: list[tuple[Part, PSError]] = []
            self._execute_once(parts, step, outcomes, moved)
            if not moved:
                return outcomes
            if time.monotonic() >= step.deadline:
                raise moved[0][1]
            rounds += 1
            have = self._directory.placement.version
            version = self._directory.refresh_placement({p.shard for p, _ in moved})
            log.info("worker %d: %d part(s) redirected (%s); placement map v%d -> v%d", self.worker_id,
                     len(moved), moved[0][1], have, version)
            if version == have:  # a move under way (a map being installed, blocks in flight): wait a little
                pause = min(MOVE_BACKOFF_S * 2 ** min(rounds, 16), MOVE_BACKOFF_MAX_S)
                time.sleep(min(pause, max(0.0, step.deadline - time.monotonic())))
            for p, exc in moved:
                if exc.reason is Reason.PULL_MOVED:
                    outcomes.append((ps_pb2.DUPLICATE, 0))  # its push went through before
            step.placement_version = version
            parts = self._planner.replan([p if exc.reason is Reason.MOVED else Part(p.shard, p.part, p.num_parts,
                                                                                    None, p.pull, p.pull_blocks)
                                          for p, exc in moved], self._pipelined, self.mode)

    def _execute_once(self, parts: list[Part], step: Step, outcomes: list[tuple[int, int]],
                      moved: list[tuple[Part, PSError]]) -> None:
        """One round of :meth:`_execute`: ``outcomes`` and ``moved`` (parts refused with reason
        MOVED or PULL_MOVED, and the refusal) gain this round's. Raises the first other PSError."""
        calls = []
        for p in parts:
            seq = 0
            if p.pushes:
                seq = self._next_seq[p.shard]
                self._next_seq[p.shard] += 1
            calls.append((p, seq))
        errors: list[PSError] = []
        acked: set[int] = set()  # shards that acknowledged a part of this push
        again = self._round(calls, step, outcomes, errors, fallback=False, acked=acked)
        if again:
            self._round(again, step, outcomes, errors, fallback=True, acked=acked)
        moved += self._refused
        self._refused = []
        real = [e for e in errors if e.reason not in (Reason.MOVED, Reason.PULL_MOVED)]
        if real:
            raise _with_applied_shards(real, acked)

    def _round(self, calls: list[tuple[Part, int]], step: Step, outcomes: list, errors: list,
               fallback: bool, acked: set[int]) -> list[tuple[Part, int]]:
        """Send every call (each shard's data plane, or the fallback), then finish every call
        sent, in order (a plane works on the others meanwhile). Returns the calls to send
        again over the fallback."""
        again: list[tuple[Part, int]] = []
        sent = []
        for p, seq in calls:
            plane = self._fallback if fallback else self._planes[p.shard]
            if p.table and not plane.rows:
                plane = self._fallback
            try:
                sent.append((p, seq, plane, plane.send(p, seq, step)))
            except PSError as exc:
                self._failed(plane, p, seq, exc, again, errors)
        for p, seq, plane, ticket in sent:
            try:
                outcome = plane.finish(ticket, p, step)
            except PSError as exc:
                self._failed(plane, p, seq, exc, again, errors)
            else:
                if outcome is not None:
                    outcomes.append(outcome)
                    acked.add(p.shard)
        return again

    def _failed(self, plane: DataPlane, p: Part, seq: int, exc: PSError, again: list, errors: list) -> None:
        if exc.reason in (Reason.MOVED, Reason.PULL_MOVED):  # planned with an old map: planned again
            self._refused.append((p, exc))
            errors.append(exc)
        elif plane is self._fallback or exc.reason is Reason.WAIT_EXPIRED:  # a wait that ran out: not again
            errors.append(exc)
        elif isinstance(exc, TransientError):
            log.info("shard %d: the %s data plane failed (%s); using %s", p.shard, plane.name, exc,
                     self._fallback.name)
            if self._planes[p.shard] is plane:
                self._planes[p.shard] = self._fallback
                self._pipelined = tuple(x.pipelined for x in self._planes)
                plane.drop(p.shard)
            again.append((p, seq))
        elif exc.reason in REJOIN_REASONS:  # the fallback registers again first
            again.append((p, seq))
        else:
            errors.append(exc)

    def _advance(self, outcomes: list[tuple[int, int]]) -> None:
        """Count one step's push outcomes and move the clock one step (or to the cluster's,
        after a stale push)."""
        stale_version = None
        for outcome, version in outcomes:
            name = _OUTCOME_NAMES.get(outcome) or ps_pb2.Outcome.Name(outcome).lower()
            self.stats[name] = self.stats.get(name, 0) + 1
            if outcome == ps_pb2.STALE:
                stale_version = max(stale_version or 0, version)
        if stale_version is not None:
            log.warning("worker %d's gradient for step %d was stale; resuming at step %d",
                        self.worker_id, self.clock, stale_version)
            self.clock = max(self.clock + 1, stale_version)
        else:
            self.clock += 1

    # -- the arrays at both ends ------------------------------------------------------------

    def _flatten(self, grads: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Checked, contiguous little-endian 1-D views of the gradients (copies only if needed).
        Raises InvalidArgumentError for a shape or dtype that is not the table's."""
        flat: dict[str, np.ndarray] = {}
        for name, grad in grads.items():
            spec = self._directory.spec(name)
            arr = np.asarray(grad)
            if arr.shape != spec.shape:
                raise InvalidArgumentError(f"{name}: gradient shape {arr.shape}, table shape {spec.shape}")
            if arr.dtype != np.dtype(spec.dtype):
                raise dtype_refusal(name, arr.dtype, spec.dtype)
            flat[name] = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).reshape(-1)
        return flat

    def _outputs(self, names: Sequence[str], out: Mapping[str, np.ndarray] | None) -> dict[str, np.ndarray]:
        """Flat writable destinations: the caller's ``out`` arrays (checked; those from
        ``buffers()`` are read-only to the user, not to us) or fresh ones."""
        dest = {}
        for name in names:
            spec = self._directory.spec(name)
            given = None if out is None else out.get(name)
            alias = None if given is None or self._shared is None else self._shared.writable(name, given)
            if given is None:
                dest[name] = np.empty(spec.size, dtype=spec.dtype)
            elif alias is not None:
                dest[name] = alias
            elif (not isinstance(given, np.ndarray) or given.shape != spec.shape
                  or given.dtype != np.dtype(spec.dtype) or not given.flags.c_contiguous
                  or not given.flags.writeable):
                raise InvalidArgumentError(f"out[{name!r}] must be a writable C-contiguous {spec.dtype} array "
                                           f"of shape {spec.shape}")
            else:
                dest[name] = given.reshape(-1)
        return dest

    @staticmethod
    def _ids(ids: Any) -> np.ndarray:
        """``ids`` as a contiguous 1-D int64 array. Raises InvalidArgumentError for another
        shape, a non-integer dtype, or unsigned values past the int64 range."""
        arr = np.asarray(ids)
        if arr.ndim != 1:
            raise InvalidArgumentError(f"ids must be a 1-D array, got shape {arr.shape}")
        if arr.size == 0:
            return np.zeros(0, dtype=np.int64)
        if arr.dtype.kind not in "iu":
            raise InvalidArgumentError(f"ids must be integers (int64), got dtype {arr.dtype}")
        if arr.dtype.kind == "u" and arr.dtype.itemsize == 8 and int(arr.max()) > _INT64_MAX:
            raise InvalidArgumentError("ids must fit in int64; got an unsigned id past 2**63 - 1")
        return np.ascontiguousarray(arr, dtype=np.int64)

    def _checked_rows(self, name: str, ids: Any, grads: Any) -> tuple[SparseTableSpec, np.ndarray, np.ndarray]:
        spec = self._directory.sparse_spec(name)
        ids = self._ids(ids)
        g = np.asarray(grads)
        if g.shape != (len(ids), spec.dim):
            raise InvalidArgumentError(f"{name}: {len(ids)} ids need gradients of shape ({len(ids)}, {spec.dim}) "
                                       f"(row width {spec.dim}), got {g.shape}")
        if g.dtype != np.dtype(spec.dtype):
            raise dtype_refusal(name, g.dtype, spec.dtype)
        return spec, ids, np.ascontiguousarray(g, dtype=g.dtype.newbyteorder("<"))


def _with_applied_shards(errors: list[PSError], acked: set[int]) -> PSError:
    """The error a push with these part ``errors`` raises: the first. When every part that
    failed was refused as FENCED, it tells its caller where the push was applied all the
    same: ``applied_shards``, the shards that acknowledged a part of it because it reached
    them before the newer client's takeover did (empty: applied on no shard; a part a shard
    refused was not applied there). Sets the attribute (and names the shards in the message)
    on that error itself. With any other failure among them the outcome is not known
    everywhere (a part may have run out of time): no ``applied_shards`` then."""
    error = errors[0]
    if all(e.reason is Reason.FENCED for e in errors):
        error.applied_shards = tuple(sorted(acked))  # type: ignore[attr-defined]
        if acked:
            error.args = (f"{error}; this push straddled the takeover: shard(s) {sorted(acked)} applied (parts of) "
                          "it before the takeover reached them, the others refused it",)
    return error

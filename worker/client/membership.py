"""``Membership``: a worker's place in the cluster, kept through restarts, lost leases and rollbacks."""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import grpc

from ps._proto import ps_pb2
from ps.errors import FailedPreconditionError, PSError, Reason, TransientError
from ps.tables.placement_map import PlacementMap
from ps.tables.spec import TableSpec
from worker.client.shard_status import MODES
from worker.client.transport import REJOIN_REASONS, rpc_errors

if TYPE_CHECKING:
    from worker.client.cluster import Cluster
    from worker.client.table_directory import TableDirectory

log = logging.getLogger("worker.client")  # the client's logger: these lines are the client's

#: seconds a rejoin waits for the other shards to confirm no newer Client holds the id
FENCE_CHECK_S = 5.0


def new_session() -> int:
    """A Client's session: its incarnation, microseconds since the epoch shifted left by 12,
    with 12 random bits below (two Clients started within one microsecond still differ).
    Sessions only grow: a Client started later (on hosts whose clocks agree to better than
    its start-up time) has the greater one, and keeps a worker id from an older Client on
    every shard, restarted or not. Fits in 63 bits until the year 2262. Reads the clock."""
    return (time.time_ns() // 1000) << 12 | secrets.randbits(12)


class Membership:
    """Registration with every shard, heartbeats, rejoining, settling sync rollbacks, leaving.

    - **Joining** (:meth:`join`): wait for every server, register with shard 0 (which may
      assign the id), then with the others at once under that id; an observer only reads
      their status and never joins a quorum. Every register carries :attr:`session`: a
      second Client registering under the same worker id fences this one.
    - **Rejoining** (:meth:`rejoin`): a shard that restarted, or let this worker's lease run
      out, is registered with again under the same id, once every other shard confirmed
      (a heartbeat carrying the session) that no newer Client holds the id there: a stale
      Client is fenced instead, before anything of its step is applied on the restarted
      shard. The tables the shard lost are created
      again (at their initial values, with a warning); the transport then resends the
      same request with the same sequence number. A changed ``server_id`` or ``epoch`` is
      logged (docs/failure-semantics.md).
    - **Heartbeats**: a daemon thread renews the lease on every shard every ``heartbeat_s``
      (default: a third of the shortest lease) while the worker computes or waits; a
      failed beat is logged at debug level and the next one tries again.
    - **Rollbacks** (:meth:`reconcile`): when a sync shard restored from a checkpoint awaits
      the cluster's decision, every shard restores the newest cluster checkpoint all of
      them hold (or, with none, nothing is rolled back); then this worker resyncs.

    The constructor does no I/O. Thread-safe: the heartbeat thread rejoins too.
    """

    def __init__(self, cluster: Cluster, directory: TableDirectory, *, requested_id: int | None = None,
                 observer: bool = False, heartbeat_s: float | None = None, num_workers: int = 0) -> None:
        self._cluster = cluster
        self._directory = directory
        self._requested_id = requested_id
        self._observer = observer
        self._heartbeat_s = heartbeat_s
        self._num_workers = num_workers  # the cluster size this worker expects (0: unchecked)
        #: identifies this Client to the shards (kept across its re-registrations); a newer
        #: Client's is greater (:func:`new_session`)
        self.session = new_session()
        self.worker_id = -1
        self.mode = ""
        #: how many times a shard was joined again
        self.rejoins = 0
        self._lock = threading.Lock()
        self._incarnations: list[tuple[str, int]] = []   # per shard: (server_id, epoch)
        self._heartbeat: threading.Thread | None = None
        self._heartbeat_s_now = 0.0                      # the interval in use
        self._stopping = threading.Event()

    def _request(self, shard: int, worker_id: int, resync: bool = False) -> ps_pb2.RegisterRequest:
        """The one Register request: ``worker_id`` (< 0: assign one) at ``shard``'s place."""
        req = ps_pb2.RegisterRequest(worker_id=worker_id, session=self.session, resync=resync,
                                     num_workers=self._num_workers)
        req.topology.shard_index, req.topology.num_shards = shard, len(self._cluster)
        return req

    def join(self, connect_timeout_s: float) -> tuple[int, list[int]]:
        """Register with every shard; returns the cluster's clock and each shard's next sequence
        number for this worker. Starts heartbeats. Blocks (bounded). Raises UnavailableError
        when a server does not answer within ``connect_timeout_s``, FailedPreconditionError
        when the shards disagree on the mode."""
        self._cluster.wait_ready(connect_timeout_s)
        n = len(self._cluster)
        if self._observer:
            statuses = self._cluster.fan_out("status", [ps_pb2.StatusRequest()] * n)
            replies = [ps_pb2.RegisterReply(worker_id=-1, mode=s.mode, tables=[t.spec for t in s.tables],
                                            server_id=s.server_id, epoch=s.epoch,
                                            placement=s.placement if s.HasField("placement") else None)
                       for s in statuses]
        else:
            wanted = -1 if self._requested_id is None else self._requested_id
            first = self._cluster.call(0, "register", self._request(0, wanted))
            replies = [first] + self._cluster.fan_out(
                "register", {i: self._request(i, first.worker_id) for i in range(1, n)})
        modes = {r.mode for r in replies}
        if len(modes) != 1:
            raise FailedPreconditionError(f"servers disagree on the mode: {sorted(MODES[m] for m in modes)}")
        self.worker_id, self.mode = replies[0].worker_id, MODES[replies[0].mode]
        for r in replies:  # the newest map any shard holds (they differ only while a move is installed)
            if r.HasField("placement"):
                self._directory.adopt_placement(PlacementMap.from_proto(r.placement))
        for r in replies:
            for spec in r.tables:
                self._directory.learn(TableSpec.from_proto(spec))
        self._incarnations = [(r.server_id, r.epoch) for r in replies]
        clock = max(r.clock for r in replies)
        log.info("worker %d joined %d shard(s) in %s mode at clock %d", self.worker_id, n, self.mode, clock)
        if not self._observer:
            self._cluster.on_lost_registration(self.rejoin)
            leases = [r.lease_s for r in replies if r.lease_s > 0]
            interval = self._heartbeat_s if self._heartbeat_s is not None else (min(leases) / 3 if leases else 0)
            if interval > 0:
                self._heartbeat_s_now = max(0.05, interval)
                self._heartbeat = threading.Thread(target=self._beating, name="ps-heartbeat", daemon=True)
                self._heartbeat.start()
        return clock, [r.next_seq for r in replies]

    def leave(self) -> None:
        """Stop heartbeats and rejoining, and leave every shard's quorum so sync steps stop
        waiting for this worker. Best effort: a shard that cannot be reached is skipped (the
        lease covers the rest). Blocks briefly (at most 5 s per call)."""
        self._stopping.set()
        if self._heartbeat is not None:
            self._heartbeat.join(10.0)
            self._heartbeat = None
        if self.worker_id < 0 or self._observer:
            return
        self._cluster.on_lost_registration(None)
        try:
            leave = ps_pb2.LeaveRequest(worker_id=self.worker_id, session=self.session)
            self._cluster.fan_out("leave", [leave] * len(self._cluster))
        except Exception as exc:  # noqa: BLE001 - leaving is a courtesy; the lease covers the rest
            log.warning("worker %d could not leave cleanly: %s", self.worker_id, exc)

    def leave_now(self, timeout_s: float = 3.0) -> list[str]:
        """Leave every shard from ANOTHER thread while the owner may be blocked in a call
        (a sync pull waiting on other workers; ``ps-worker``'s first Ctrl-C).

        Stops heartbeats without waiting for one in flight and stops rejoining, then sends
        one concurrent Leave per shard, no retries: the shards drop this worker from their
        quorum and the blocked call fails ("left the cluster"), so the owning thread
        unwinds. Thread-safe (gRPC channels are). Blocks at most about ``timeout_s``.
        Returns ``"ADDRESS: why"`` for each shard that did not confirm; ``[]`` at once for
        an observer or a worker that never registered.
        """
        if self._observer or self.worker_id < 0 or not self._cluster.channels:
            return []
        self._stopping.set()
        self._cluster.on_lost_registration(None)  # "left the cluster" must not register again
        request = ps_pb2.LeaveRequest(worker_id=self.worker_id, session=self.session)
        pending = [(ch.address, ch.leave.future(request, timeout=timeout_s)) for ch in self._cluster.channels]
        failed = []
        for address, future in pending:
            try:
                future.result()  # bounded by the call's deadline
            except grpc.RpcError as exc:
                failed.append(f"{address}: {exc.code().name}")
        return failed

    def _note_incarnation(self, shard: int, server_id: str | None, epoch: int) -> None:
        old_id, old_epoch = self._incarnations[shard]
        address = self._cluster.addresses[shard]
        if server_id is not None and server_id != old_id:
            if epoch > 0:
                log.warning("shard %d (%s) restarted from a checkpoint (epoch %d): its blocks rolled back to that "
                            "checkpoint; training goes on", shard, address, epoch)
            else:
                log.warning("shard %d (%s) restarted without a checkpoint", shard, address)
        elif epoch != old_epoch:
            log.warning("shard %d (%s) was restored from a checkpoint (epoch %d -> %d)", shard, address, old_epoch,
                        epoch)
        self._incarnations[shard] = (server_id if server_id is not None else old_id, epoch)

    def reshard(self, old: Sequence[str]) -> dict[str, int]:
        """The cluster's shards changed from ``old`` to ``self._cluster.addresses`` (a resize,
        already retargeted): register with the new ones under this worker's id. Returns their
        next sequence numbers by address. Blocks, bounded by the cluster's timeouts; raises
        PSError."""
        with self._lock:
            known = dict(zip(old, self._incarnations))
            fresh = [i for i, a in enumerate(self._cluster.addresses) if a not in known]
            replies = {}
            if fresh and not self._observer:
                replies = dict(zip(fresh, self._cluster.fan_out(
                    "register", {i: self._request(i, self.worker_id) for i in fresh})))
            elif fresh:
                replies = dict(zip(fresh, self._cluster.fan_out("status", {i: ps_pb2.StatusRequest() for i in fresh})))
            self._incarnations = [known.get(a) or (replies[i].server_id, replies[i].epoch)
                                  for i, a in enumerate(self._cluster.addresses)]
            if not self._observer:
                self._cluster.on_lost_registration(self.rejoin)
            log.warning("worker %d: the shards are now %s", self.worker_id, ", ".join(self._cluster.addresses))
            return {self._cluster.addresses[i]: getattr(r, "next_seq", 1) or 1 for i, r in replies.items()}

    def rejoin(self, shard: int) -> None:
        """Register again with ``shard`` under the same id; create the tables it lost.

        First every other shard is asked (a heartbeat with this session) whether a newer
        Client holds the id: if one does, this Client is fenced (raises
        FailedPreconditionError, reason FENCED) and ``shard`` never sees it register, so
        the newest session keeps the id across any shard's restart. A shard that does not
        know this worker either (restarted too) or cannot be reached does not object.
        Blocks, bounded by the cluster's timeouts. Raises PSError when ``shard`` cannot be
        reached."""
        with self._lock:
            self._check_not_fenced(exclude=shard)
            reply = self._cluster.call(shard, "register", self._request(shard, self.worker_id))
            self.rejoins += 1
            log.warning("worker %d registered again with shard %d (%s) at clock %d", self.worker_id, shard,
                        self._cluster.addresses[shard], reply.clock)
            self._note_incarnation(shard, reply.server_id, reply.epoch)
            self._directory.recreate(shard, {t.name for t in reply.tables})

    def _check_not_fenced(self, exclude: int) -> None:
        """Heartbeat with this session to every shard but ``exclude`` at once. Raises the first
        FailedPreconditionError with reason FENCED; ignores every other outcome (a shard
        that does not answer within :data:`FENCE_CHECK_S` does not object). Blocks at most
        that long."""
        req = ps_pb2.HeartbeatRequest(worker_id=self.worker_id, session=self.session)
        timeout_s = min(self._cluster.timeout_s, FENCE_CHECK_S)
        pending = [(ch, ch.heartbeat.future(req, timeout=timeout_s))
                   for i, ch in enumerate(self._cluster.channels) if i != exclude]
        for ch, future in pending:
            try:
                with rpc_errors(ch.address):
                    future.result()
            except PSError as exc:
                if exc.reason is Reason.FENCED:
                    log.error("worker %d: %s", self.worker_id, exc)
                    raise
                log.debug("fence check with %s: %s", ch.address, exc)

    def _beating(self) -> None:
        while not self._stopping.wait(self._heartbeat_s_now):
            try:
                self.beat()
            except Exception as exc:  # noqa: BLE001 - the next beat tries again
                log.debug("heartbeat failed: %s", exc)

    def beat(self) -> None:
        """One heartbeat to every shard (concurrently); rejoins shards that forgot this worker.
        Blocks, each call bounded by the interval (at least 1 s)."""
        timeout_s = max(1.0, self._heartbeat_s_now or self._cluster.timeout_s)
        req = ps_pb2.HeartbeatRequest(worker_id=self.worker_id, session=self.session)
        channels = self._cluster.channels
        futures = [ch.heartbeat.future(req, timeout=timeout_s) for ch in channels]
        for i, (ch, future) in enumerate(zip(channels, futures)):
            try:
                with rpc_errors(ch.address):
                    reply = future.result()
                if reply.epoch != self._incarnations[i][1]:
                    with self._lock:
                        self._note_incarnation(i, None, reply.epoch)
            except TransientError:
                pass  # the shard is down or restarting; calls retry on their own
            except PSError as exc:
                if exc.reason in REJOIN_REASONS and ch.rejoin is not None:
                    self.rejoin(i)
                else:
                    log.debug("heartbeat to %s failed: %s", ch.address, exc)

    def reconcile(self) -> tuple[int | None, list[int]]:
        """Settle a sync rollback and resync this worker: returns the restored step (None: the
        cluster did not roll back) and each shard's next sequence number.

        If a shard awaits a rollback decision (restored at start): shards all at one version
        need none; otherwise every shard restores the newest cluster checkpoint all of them
        hold (:meth:`newest_shared`), or, with none, nothing is rolled back and the restored
        shard adopts the workers' step (a warning says so). The Restore call names the
        restart, so workers deciding at once do it once. Then this worker registers again
        with every shard (resync), which lifts its fence. Blocks, bounded by the cluster's
        timeouts. Raises PSError.
        """
        cluster = self._cluster
        with self._lock:
            replies = cluster.fan_out("status", [ps_pb2.StatusRequest(with_checkpoints=True)] * len(cluster))
            awaiting = [i for i, r in enumerate(replies) if r.awaiting_rollback]
            if awaiting:
                rollback_id = ",".join(sorted(f"{replies[i].server_id}:{replies[i].epoch}" for i in awaiting))
                versions = sorted({r.version for r in replies})
                shared = self.newest_shared(replies) if len(versions) > 1 else None
                if len(versions) == 1:
                    log.warning("shard(s) %s restored from a checkpoint at version %d, the step every shard is at: "
                                "nothing to roll back", awaiting, versions[0])
                elif shared is None:
                    log.warning("shard(s) %s restored from a checkpoint, the shards are at versions %s and no "
                                "cluster checkpoint is shared by all of them: no rollback, the restored shard(s) "
                                "adopt the workers' step (fast-forward)", awaiting, versions)
                else:
                    log.warning("shard(s) %s restored from a checkpoint, the shards are at versions %s: the cluster "
                                "rolls back to checkpoint %s (version %d)", awaiting, versions, *shared)
                tag, version = shared if shared is not None else ("", 0)
                restore = ps_pb2.RestoreRequest(rollback_id=rollback_id, tag=tag, version=version)
                cluster.fan_out("restore", {i: restore for i in (range(len(cluster)) if shared else awaiting)},
                                wait=True)
            clocks, next_seqs = [], []
            for i in range(len(cluster)):
                reply = cluster.call(i, "register", self._request(i, self.worker_id, resync=True))
                self._note_incarnation(i, reply.server_id, reply.epoch)
                next_seqs.append(reply.next_seq)
                if reply.fenced:
                    clocks.append(reply.clock)
            return (max(clocks) if clocks else None), next_seqs

    @staticmethod
    def newest_shared(replies: list[ps_pb2.StatusReply]) -> tuple[str, int] | None:
        """``(tag, version)`` of the newest cluster checkpoint that every shard holds at one
        version, from Status replies ``with_checkpoints``; None when there is none. Pure."""
        shared: dict[str, tuple[int, float]] | None = None
        for r in replies:
            mine = {c.tag: (c.version, c.created) for c in r.checkpoints if c.cluster}
            if shared is None:
                shared = mine
            else:
                shared = {t: (v, max(c, mine[t][1])) for t, (v, c) in shared.items()
                          if t in mine and mine[t][0] == v}
        if not shared:
            return None
        tag = max(shared, key=lambda t: (shared[t][0], shared[t][1]))
        return tag, shared[tag][0]


"""How a :class:`~worker.client.client.Client` rides out failures: rejoin, heartbeats, checkpoints.

- **Rejoin.** When a shard answers "not registered" (it restarted) or "left the
  cluster" (this worker's lease ran out), :func:`rejoin` registers again under the same
  worker id; the transport then resends the same request with the same sequence number
  (``transport.call``/``fan_out``), so nothing is applied twice. The client keeps its own
  sequence counters (they are never below the shard's ``next_seq``: the shard only knows
  numbers this worker used). Tables the shard lost (restarted without ``--restore``, or
  from a checkpoint older than the table) are created again from their specs, at their
  initial values, with a warning. A changed ``server_id`` or ``epoch`` is logged: the
  shard restarted, or was restored from a checkpoint and rolled back to it (see
  docs/failure-semantics.md).
- **Heartbeats.** A :class:`~worker.client.heartbeat.Heartbeat` thread renews this worker's
  lease on every shard every ``lease / 3`` seconds (or ``heartbeat_s``).
- **Checkpoints.** :func:`checkpoint` asks every shard to write one, under one tag; in
  sync mode all at the same version.
- **Sync rollbacks.** A sync shard restored at start refuses pushes and pulls with
  ABORTED until the cluster decides; so does every shard after a rollback, to a worker
  that has not resynced. :func:`run_step` catches that ABORTED, :func:`reconcile` decides
  (shards at different versions: every shard restores the newest cluster checkpoint
  they all hold, with the Restore call, idempotent per restart; none shared, or all at
  one version: nothing is rolled back) and resyncs this worker's clock, and the step is
  retried: a pull pulls again; a push made before a rollback is dropped (its gradient
  came from weights the cluster no longer has) and a push-pull pulls afresh.

Functions here take the client; they are the Client's internals, not a public API.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ps.protocol import tags as ckpt
from ps.protocol import tls
from ps._proto import ps_pb2
from ps.errors import AbortedError, PSError, TransientError
from worker.client.heartbeat import Heartbeat
from worker.client.transport import ShardChannel, call, fan_out, lost_registration, rpc_errors

if TYPE_CHECKING:
    from worker.client.client import Client

log = logging.getLogger(__name__)

#: tries of a cluster checkpoint when a shard had already passed the chosen sync version
CHECKPOINT_TRIES = 4
#: tries of one verb that a sync rollback (or a shard awaiting one) answered with ABORTED
STEP_TRIES = 4


def make_channels(client: Client) -> list[ShardChannel]:
    """One channel per server, with the client's TLS credentials and token."""
    credentials = None
    if client.tls_ca or client.tls_cert:
        credentials = tls.channel_credentials(client.tls_ca, client.tls_cert, client.tls_key)
    return [ShardChannel(a, client.max_message_bytes, credentials=credentials, token=client.token,
                         server_name=client.tls_server_name) for a in client.addresses]


def after_connect(client: Client, replies: list[ps_pb2.RegisterReply]) -> None:
    """Remember each shard's incarnation, hook up rejoining, start heartbeats."""
    client._rejoin_lock = threading.Lock()
    client._incarnations = [(r.server_id, r.epoch) for r in replies]
    if client.observer:
        return
    for i, ch in enumerate(client._channels):
        ch.rejoin = lambda i=i: rejoin(client, i)
    leases = [r.lease_s for r in replies if r.lease_s > 0]
    interval = client.heartbeat_s if client.heartbeat_s is not None else (min(leases) / 3 if leases else 0)
    if interval > 0:
        client._heartbeat = Heartbeat(lambda: beat(client), max(0.05, interval)).start()


def before_close(client: Client) -> None:
    """Stop (join) the heartbeat thread; unhook rejoining. Blocks briefly."""
    hb = getattr(client, "_heartbeat", None)
    if hb is not None:
        hb.stop()
        client._heartbeat = None
    for ch in client._channels:
        ch.rejoin = None


def _note_incarnation(client: Client, shard: int, server_id: str | None, epoch: int) -> None:
    old_id, old_epoch = client._incarnations[shard]
    address = client._channels[shard].address
    if server_id is not None and server_id != old_id:
        if epoch > 0:
            log.warning("shard %d (%s) restarted from a checkpoint (epoch %d): its blocks rolled back to that "
                        "checkpoint; training goes on", shard, address, epoch)
        else:
            log.warning("shard %d (%s) restarted without a checkpoint", shard, address)
    elif epoch != old_epoch:
        log.warning("shard %d (%s) was restored from a checkpoint (epoch %d -> %d)", shard, address, old_epoch, epoch)
    client._incarnations[shard] = (server_id if server_id is not None else old_id, epoch)


def rejoin(client: Client, shard: int) -> None:
    """Register again with one shard under the same id; recreate tables it lost.

    Thread-safe (the heartbeat thread may call it too). Blocks, bounded by the client's
    timeouts. Raises PSError when the shard cannot be reached.
    """
    ch = client._channels[shard]
    with client._rejoin_lock:
        req = ps_pb2.RegisterRequest(worker_id=client.worker_id)
        req.topology.shard_index, req.topology.num_shards = shard, len(client._channels)
        reply = call(ch, ch.register, req, client.timeout_s, client.retry)
        client.stats["rejoined"] = client.stats.get("rejoined", 0) + 1
        log.warning("worker %d registered again with shard %d (%s) at clock %d", client.worker_id, shard,
                    ch.address, reply.clock)
        _note_incarnation(client, shard, reply.server_id, reply.epoch)
        have = {t.name for t in reply.tables}  # dense tables only; sparse ones are checked by creating
        maybe_lost = [s for s in list(client._specs.values()) if s.name not in have]
        maybe_lost += list(getattr(client, "_sparse_specs", {}).values())
        for spec in maybe_lost:
            create = ps_pb2.CreateTableRequest(spec=spec.to_proto())
            create.topology.shard_index, create.topology.num_shards = shard, len(client._channels)
            if call(ch, ch.create_table, create, client.timeout_s, client.retry).created:
                log.warning("shard %d (%s) had lost table %r (it restarted without it): created it again at "
                            "its initial values", shard, ch.address, spec.name)


def beat(client: Client) -> None:
    """One heartbeat to every shard (concurrently); rejoins shards that forgot this worker."""
    interval = client._heartbeat.interval_s if getattr(client, "_heartbeat", None) else client.timeout_s
    req = ps_pb2.HeartbeatRequest(worker_id=client.worker_id)
    futures = [(i, ch, ch.heartbeat.future(req, timeout=max(1.0, interval)))
               for i, ch in enumerate(client._channels)]
    for i, ch, future in futures:
        try:
            with rpc_errors(ch.address):
                reply = future.result()
            if reply.epoch != client._incarnations[i][1]:
                with client._rejoin_lock:
                    _note_incarnation(client, i, None, reply.epoch)
        except TransientError:
            pass  # the shard is down or restarting; calls retry on their own
        except PSError as exc:
            if lost_registration(exc) and ch.rejoin is not None:
                rejoin(client, i)
            else:
                log.debug("heartbeat to %s failed: %s", ch.address, exc)


def checkpoint(client: Client, tag: str | None = None) -> dict[str, Any]:
    """Checkpoint every shard under one tag; see ``Client.checkpoint``."""
    client._require_open()
    tag = ckpt.check_tag(tag) if tag else ckpt.new_tag("ckpt")
    for attempt in range(CHECKPOINT_TRIES):
        at = 0
        if client.mode == "sync":
            at = max(s["version"] for s in client.status())
        calls = [(ch, ch.checkpoint, ps_pb2.CheckpointRequest(at_version=at, tag=tag)) for ch in client._channels]
        try:
            replies = fan_out(calls, client.wait_timeout_s, client.retry)
        except AbortedError as exc:  # a shard moved past `at` meanwhile: choose again
            if attempt == CHECKPOINT_TRIES - 1:
                raise
            log.info("checkpoint %s at version %d missed (%s); trying again", tag, at, exc)
            continue
        return {"tag": tag, "version": at if at else None, "paths": [r.path for r in replies],
                "versions": [r.version for r in replies]}
    raise AssertionError("unreachable")


# -- sync rollbacks -------------------------------------------------------------------------


def run_step(client: Client, attempt: Callable[[], Any], pushes: bool = False,
             pull_again: Callable[[], Any] | None = None) -> Any:
    """``attempt()`` (one verb of the client); in sync mode, an ABORTED from a shard that
    awaits or made a rollback is handled: :func:`reconcile`, then the step again.

    Without a rollback the same step is resent with the same sequence numbers (shards
    that took it answer DUPLICATE). After a rollback a push (``pushes``) is dropped, and
    ``pull_again`` (a push-pull's pull) runs at the restored clock. Blocks; raises
    AbortedError after :data:`STEP_TRIES` tries, and whatever ``attempt`` raises.
    """
    for tries in range(STEP_TRIES):
        seqs, clock = list(getattr(client, "_next_seq", [])), client.clock
        try:
            return attempt()
        except AbortedError as exc:
            if client.mode != "sync" or client.observer or tries == STEP_TRIES - 1:
                raise
            log.warning("worker %d: step %d aborted (%s); resyncing with the cluster", client.worker_id, clock, exc)
            if reconcile(client):
                client.stats["rolled_back"] = client.stats.get("rolled_back", 0) + 1
                if pushes:
                    log.warning("worker %d: the cluster rolled back to step %d; the gradient for step %d is dropped",
                                client.worker_id, client.clock, clock)
                    return run_step(client, pull_again) if pull_again is not None else None
            elif seqs:
                client._next_seq = seqs  # the same step again with the same numbers: exactly once
                client.clock = clock
    raise AssertionError("unreachable")


def newest_shared(replies: list[ps_pb2.StatusReply]) -> tuple[str, int] | None:
    """``(tag, version)`` of the newest cluster checkpoint that every shard holds at one
    version, from Status replies ``with_checkpoints``; None when there is none."""
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


def reconcile(client: Client) -> bool:
    """Settle a sync rollback and resync this worker; True when the cluster rolled back
    (``client.clock`` is then the restored step).

    If a shard awaits a rollback decision (restored at start): shards all at one version
    need none; otherwise every shard restores the newest cluster checkpoint all of them
    hold (:func:`newest_shared`), or, with none, nothing is rolled back and the restored
    shard fast-forwards as before (a warning says so). The Restore call carries an id
    naming the restart, so workers deciding at once do it once. Then this worker
    registers again with every shard (``resync``), which lifts its fence. Blocks,
    bounded by the client's timeouts. Raises PSError.
    """
    with client._rejoin_lock:
        chans = client._channels
        replies = fan_out([(ch, ch.status, ps_pb2.StatusRequest(with_checkpoints=True)) for ch in chans],
                          client.timeout_s, client.retry)
        awaiting = [i for i, r in enumerate(replies) if r.awaiting_rollback]
        if awaiting:
            rollback_id = ",".join(sorted(f"{replies[i].server_id}:{replies[i].epoch}" for i in awaiting))
            versions = sorted({r.version for r in replies})
            shared = newest_shared(replies) if len(versions) > 1 else None
            if len(versions) == 1:
                log.warning("shard(s) %s restored from a checkpoint at version %d, the step every shard is at: "
                            "nothing to roll back", awaiting, versions[0])
            elif shared is None:
                log.warning("shard(s) %s restored from a checkpoint, the shards are at versions %s and no cluster "
                            "checkpoint is shared by all of them: no rollback, the restored shard(s) adopt the "
                            "workers' step (fast-forward)", awaiting, versions)
            else:
                log.warning("shard(s) %s restored from a checkpoint, the shards are at versions %s: the cluster "
                            "rolls back to checkpoint %s (version %d)", awaiting, versions, *shared)
            targets = range(len(chans)) if shared is not None else awaiting
            tag, version = shared if shared is not None else ("", 0)
            fan_out([(chans[i], chans[i].restore, ps_pb2.RestoreRequest(rollback_id=rollback_id, tag=tag,
                                                                        version=version)) for i in targets],
                    client.wait_timeout_s, client.retry)
        clocks = []
        for i, ch in enumerate(chans):
            req = ps_pb2.RegisterRequest(worker_id=client.worker_id, resync=True)
            req.topology.shard_index, req.topology.num_shards = i, len(chans)
            reply = call(ch, ch.register, req, client.timeout_s, client.retry)
            _note_incarnation(client, i, reply.server_id, reply.epoch)
            if i < len(client._next_seq):
                client._next_seq[i] = max(client._next_seq[i], reply.next_seq)
            if reply.fenced:
                clocks.append(reply.clock)
        if not clocks:
            return False
        client.clock = max(clocks)
        log.warning("worker %d resumes at step %d after a rollback", client.worker_id, client.clock)
        return True

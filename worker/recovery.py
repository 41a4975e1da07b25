"""How a :class:`~worker.client.Client` rides out failures: rejoin, heartbeats, checkpoints.

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
- **Heartbeats.** A :class:`~worker.heartbeat.Heartbeat` thread renews this worker's
  lease on every shard every ``lease / 3`` seconds (or ``heartbeat_s``).
- **Checkpoints.** :func:`checkpoint` asks every shard to write one, under one tag; in
  sync mode all at the same version.

Functions here take the client; they are the Client's internals, not a public API.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from ps import checkpoint as ckpt
from ps import tls
from ps._proto import ps_pb2
from ps.errors import AbortedError, PSError, TransientError
from worker.heartbeat import Heartbeat
from worker.transport import ShardChannel, call, fan_out, lost_registration, rpc_errors

if TYPE_CHECKING:
    from worker.client import Client

log = logging.getLogger(__name__)

#: tries of a cluster checkpoint when a shard had already passed the chosen sync version
CHECKPOINT_TRIES = 4


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

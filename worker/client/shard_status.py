"""The status of one shard as the plain dict :meth:`worker.Client.status` returns.

Pure functions of a decoded ``StatusReply``: no I/O, thread-safe.
"""

from __future__ import annotations

from typing import Any

from ps._proto import ps_pb2

MODES = {ps_pb2.ASYNC: "async", ps_pb2.SYNC: "sync", ps_pb2.SSP: "ssp"}  # wire mode -> its name


def shard_status(address: str, r: ps_pb2.StatusReply) -> dict[str, Any]:
    """``r`` as a dict: mode, version, workers (ages in seconds), tables (sizes in bytes), counters."""
    return {
        "address": address,
        "mode": MODES.get(r.mode, "unknown"),
        "version": r.version,
        "server_id": r.server_id,
        "epoch": r.epoch,          # > 0: restored from a checkpoint that many times
        "workers": [
            {"id": w.worker_id, "clock": w.clock, "live": w.live, "last_contact_age_s": w.last_contact_age_s}
            for w in r.workers
        ],
        "tables": [
            {"name": t.spec.name, "shape": tuple(t.spec.shape), "blocks": t.blocks, "bytes": t.bytes}
            for t in r.tables
        ],
        "placement": ({"version": r.placement.version, "num_shards": r.placement.num_shards,
                       "moved": len(r.placement.moved)} if r.HasField("placement") else None),
        "waiting_for": list(r.waiting_for),
        "counters": dict(r.counters),
        "sparse_tables": [
            {"name": t.spec.name, "dim": t.spec.dim, "rows": t.rows, "bytes": t.bytes, "evicted": t.evicted}
            for t in r.sparse_tables
        ],
    }

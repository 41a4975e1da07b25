"""The row verbs of :class:`worker.Client` for sparse tables.

``Client.create_sparse``, ``Client.pull_rows``, ``Client.push_rows`` and the combined
``Client.push(grads, rows=...)`` are implemented here, as functions over a connected
client. Only the touched rows travel: the ids are deduplicated (a push sums the
gradients of repeated ids first), split by shard with :func:`ps.tables.placement.row_shards`,
and sent as one call per shard (more when a shard's share exceeds ``part_bytes``), all
shards concurrently; pulled rows are put back in the caller's order, repeats included.

One push is one step of this worker (one clock tick). In sync mode a push reaches every
shard, with an empty part where a shard has nothing, because each step must hear from
every worker; dense blocks and row messages of one step are *parts* of the same push to
a shard, so ``push(grads, rows=...)`` is one step however the tables are spread.

Like the client, not thread-safe: one client per thread.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from ps._proto import ps_pb2
from ps.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from ps.tables.optim import OptimizerSpec
from ps.tables.placement import row_shards
from ps.protocol.rows_wire import encode_rows, split_rows
from ps.tables.sparse_optim import gather_rows, scatter_rows
from ps.tables.sparse_spec import SparseTableSpec
from ps.tables.sparse_table import sum_duplicates, unique_inverse
from ps.tables.spec import InitSpec
from ps.protocol.wire import dtype_refusal, encode_framed, wire_dtype
from worker.client.dense_step import advance_clock, flatten_grads
from worker.client.transport import call, fan_out

if TYPE_CHECKING:
    from worker.client.client import Client


_INT64_MAX = np.iinfo(np.int64).max


def as_ids(ids: Any) -> np.ndarray:
    """``ids`` as a contiguous 1-D int64 array.

    Raises InvalidArgumentError for a non-integer dtype (floats, bools, strings), another
    shape, or unsigned values past the int64 range.
    """
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


def create_sparse(client: Client, name: str, dim: int, *, dtype: str = "float32", init: str = "zeros",
                  init_scale: float = 0.0, seed: int = 0, optimizer: str = "sgd", lr: float = 0.01,
                  max_rows: int = 0, eviction: str = "lru", admit_after: int = 0, num_rows: int = 0,
                  **optimizer_options: Any) -> None:
    """See :meth:`worker.Client.create_sparse`."""
    client._require_open()
    spec = SparseTableSpec(
        name=name, dim=int(dim), dtype=np.dtype(dtype).name,
        optimizer=OptimizerSpec.from_options(optimizer, lr, **optimizer_options),
        init=InitSpec(kind=init, scale=float(init_scale), seed=int(seed)),
        max_rows=int(max_rows), eviction=eviction, admit_after=int(admit_after), num_rows=int(num_rows),
    )
    spec.validate()
    proto = spec.to_proto()
    channels = client._channels

    def request(i: int) -> ps_pb2.CreateTableRequest:
        req = ps_pb2.CreateTableRequest(spec=proto)
        req.topology.shard_index, req.topology.num_shards = i, len(channels)
        return req

    # shard 0 first: of two racing, conflicting creates, exactly one wins everywhere
    call(channels[0], channels[0].create_table, request(0), client.timeout_s, client.retry)
    fan_out([(channels[i], channels[i].create_table, request(i)) for i in range(1, len(channels))],
            client.timeout_s, client.retry)
    client._sparse_specs[name] = spec


def sparse_spec(client: Client, name: str) -> SparseTableSpec:
    """The spec of sparse table ``name``, asking shard 0 when this client has not seen it.

    Raises NotFoundError for an unknown table, FailedPreconditionError for a dense one.
    """
    spec = client._sparse_specs.get(name)
    if spec is not None:
        return spec
    if name in client._specs:
        raise FailedPreconditionError(f"table {name!r} is dense: use pull/push, not the row verbs")
    ch = client._channels[0]
    reply = call(ch, ch.status, ps_pb2.StatusRequest(), client.timeout_s, client.retry)
    for t in reply.sparse_tables:
        client._sparse_specs.setdefault(t.spec.name, SparseTableSpec.from_proto(t.spec))
    if name in client._sparse_specs:
        return client._sparse_specs[name]
    if any(t.spec.name == name for t in reply.tables):
        raise FailedPreconditionError(f"table {name!r} is dense: use pull/push, not the row verbs")
    raise NotFoundError(f"unknown table {name!r}")


def _by_shard(name: str, ids: np.ndarray, num_shards: int) -> list[np.ndarray]:
    """Positions into ``ids`` per shard (each ascending)."""
    if num_shards == 1:
        return [np.arange(len(ids))]
    shard_of = row_shards(name, ids, num_shards)
    small = np.uint8 if num_shards <= 256 else np.uint32  # a stable radix sort on small ints
    order = np.argsort(shard_of.astype(small), kind="stable")
    bounds = np.searchsorted(shard_of[order], np.arange(num_shards + 1))
    return [order[bounds[s]:bounds[s + 1]] for s in range(num_shards)]


def pull_rows(client: Client, name: str, ids: Any) -> np.ndarray:
    """See :meth:`worker.Client.pull_rows`."""
    client._require_open()
    spec = sparse_spec(client, name)
    ids = as_ids(ids)
    dtype = np.dtype(spec.dtype)
    if len(ids) == 0:
        return np.zeros((0, spec.dim), dtype=dtype)
    uniq, inverse = unique_inverse(ids)
    per_call = max(1, client.part_bytes // max(spec.row_bytes, 8))
    calls, targets = [], []
    for shard, positions in enumerate(_by_shard(name, uniq, len(client._channels))):
        ch = client._channels[shard]
        for start in range(0, len(positions), per_call):
            target = positions[start:start + per_call]
            header = ps_pb2.RowsHeader(worker_id=client.worker_id, step=client.clock, table=name,
                                       num_ids=len(target), dim=spec.dim, dtype=wire_dtype(dtype))
            calls.append((ch, ch.pull_rows, encode_rows(header, uniq[target], None)))
            targets.append(target)
    out = np.empty((len(uniq), spec.dim), dtype=dtype)
    for (header, payload), target in zip(fan_out(calls, client.wait_timeout_s, client.retry), targets):
        if header.num_ids != len(target) or header.dim != spec.dim:
            raise InvalidArgumentError(f"{name}: server sent {header.num_ids} rows of width {header.dim}, "
                                       f"asked {len(target)} of width {spec.dim}")
        _, values = split_rows(header, payload, with_ids=False, with_values=True)
        scatter_rows(out, target, values)
    return np.take(out, inverse, axis=0)


def _check_rows(client: Client, name: str, ids: Any, grads: Any) -> tuple[SparseTableSpec, np.ndarray, np.ndarray]:
    spec = sparse_spec(client, name)
    ids = as_ids(ids)
    g = np.asarray(grads)
    if g.shape != (len(ids), spec.dim):
        raise InvalidArgumentError(
            f"{name}: {len(ids)} ids need gradients of shape ({len(ids)}, {spec.dim}) (row width {spec.dim}), "
            f"got {g.shape}"
        )
    if g.dtype != np.dtype(spec.dtype):
        raise dtype_refusal(name, g.dtype, spec.dtype)
    return spec, ids, np.ascontiguousarray(g, dtype=g.dtype.newbyteorder("<"))


def push_step(client: Client, grads: Mapping[str, Any] | None,
              rows: Mapping[str, tuple[Any, Any]]) -> None:
    """See :meth:`worker.Client.push` (with ``rows``) and :meth:`worker.Client.push_rows`."""
    client._require_open()
    if client.observer:
        raise FailedPreconditionError("an observer client cannot push")
    flat = flatten_grads(client, grads or {})
    n = len(client._channels)
    row_msgs: list[list[tuple[SparseTableSpec, np.ndarray, np.ndarray]]] = [[] for _ in range(n)]
    checked = [_check_rows(client, name, ids, g) for name, (ids, g) in rows.items()]  # all before sending
    for spec, ids, g in checked:
        uniq, summed = sum_duplicates(ids, g)
        per_call = max(1, client.part_bytes // (spec.row_bytes + 8))
        for shard, positions in enumerate(_by_shard(spec.name, uniq, n)):
            for start in range(0, len(positions), per_call):
                sel = positions[start:start + per_call]
                row_msgs[shard].append((spec, uniq[sel], gather_rows(summed, sel)))
    calls = []
    for shard, ch in enumerate(client._channels):
        pieces = [(name, b) for name in flat for b in client._placement[name][shard]]
        groups = _group(client, pieces) if pieces else []
        if not groups and not row_msgs[shard]:
            if client.mode == "async":
                continue
            groups = [[]]  # sync and ssp: every shard hears from every worker each step
        num_parts = len(groups) + len(row_msgs[shard])
        for part, group in enumerate(groups):
            calls.append((ch, ch.push, _encode_push(client, group, flat, _next_seq(client, shard), part, num_parts)))
        for part, (spec, ids, values) in enumerate(row_msgs[shard], start=len(groups)):
            header = ps_pb2.RowsHeader(worker_id=client.worker_id, seq=_next_seq(client, shard), step=client.clock,
                                       part=part, num_parts=num_parts, table=spec.name, num_ids=len(ids),
                                       dim=spec.dim, dtype=wire_dtype(spec.dtype), session=client.session)
            calls.append((ch, ch.push_rows, encode_rows(header, ids, values)))
    replies = fan_out(calls, client.wait_timeout_s, client.retry)
    advance_clock(client, [(r.outcome, r.version) for r in replies])


def _group(client: Client, pieces: list[tuple[str, int]]) -> list[list[tuple[str, int]]]:
    """Split one shard's dense blocks into messages of at most ``client.part_bytes`` (at least one)."""
    groups: list[list[tuple[str, int]]] = [[]]
    size = 0
    for name, b in pieces:
        spec = client._specs[name]
        nbytes = spec.block_elems * np.dtype(spec.dtype).itemsize
        if groups[-1] and size + nbytes > client.part_bytes:
            groups.append([])
            size = 0
        groups[-1].append((name, b))
        size += nbytes
    return groups


def _encode_push(client: Client, group, flat, seq: int, part: int, num_parts: int) -> bytes:
    """One framed Push message carrying ``group``'s blocks of the flat gradients ``flat``. No I/O."""
    header = ps_pb2.PushHeader(worker_id=client.worker_id, seq=seq, step=client.clock, part=part,
                               num_parts=num_parts, session=client.session)
    buffers = []
    for name, b in group:
        spec = client._specs[name]
        start, stop = spec.block_range(b)
        header.blocks.add(table=name, block=b, dtype=wire_dtype(spec.dtype), count=stop - start)
        buffers.append(flat[name][start:stop])
    return encode_framed(header.SerializeToString(), buffers)


def _next_seq(client: Client, shard: int) -> int:
    seq = client._next_seq[shard]
    client._next_seq[shard] += 1
    return seq


def sparse_status(reply: ps_pb2.StatusReply) -> list[dict[str, Any]]:
    """The ``sparse_tables`` entries of one shard's status, as plain dicts."""
    return [
        {"name": t.spec.name, "dim": t.spec.dim, "rows": t.rows, "bytes": t.bytes, "evicted": t.evicted}
        for t in reply.sparse_tables
    ]

"""The dense tables a :class:`~worker.client.client.Client` knows, and where their blocks live.

``client._specs`` maps a table to its spec, ``client._placement`` to the blocks each shard
owns (stable hashing, :mod:`ps.tables.placement`). Not thread-safe, like the client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ps._proto import ps_pb2
from ps.errors import FailedPreconditionError, NotFoundError
from ps.tables.placement import block_shard
from ps.tables.spec import TableSpec
from worker.client.transport import call

if TYPE_CHECKING:
    from worker.client.client import Client


def learn(client: Client, spec: TableSpec) -> None:
    """Remember ``spec`` and which shard owns each of its blocks (a known table is kept). No I/O."""
    if spec.name in client._specs:
        return
    n = len(client._channels)
    owned: list[list[int]] = [[] for _ in range(n)]
    for b in range(spec.num_blocks):
        owned[block_shard(spec.name, b, n)].append(b)
    client._specs[spec.name] = spec
    client._placement[spec.name] = owned


def fetch_spec(client: Client, name: str) -> None:
    """Learn every dense table shard 0 reports. Blocks (bounded by ``timeout_s``).

    Raises FailedPreconditionError when ``name`` is a sparse table, NotFoundError when
    it is no table at all.
    """
    ch = client._channels[0]
    reply = call(ch, ch.status, ps_pb2.StatusRequest(), client.timeout_s, client.retry)
    for t in reply.tables:
        learn(client, TableSpec.from_proto(t.spec))
    if name not in client._specs and any(t.spec.name == name for t in reply.sparse_tables):
        raise FailedPreconditionError(f"table {name!r} is sparse: use pull_rows/push_rows")
    if name not in client._specs:
        raise NotFoundError(f"unknown table {name!r}")

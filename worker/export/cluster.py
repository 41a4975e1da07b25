"""Read every table of a running cluster into arrays, and export them to a model file.

:func:`fetch_tables` connects as an **observer** (a read-only client that never joins the
quorum, so training is not held up and sync steps do not wait for it) and reads:

- dense tables with ``Client.pull`` (all blocks of every shard, assembled);
- sparse tables that declare ``num_rows`` with ``Client.pull_rows`` of every id in
  ``[0, num_rows)``, in chunks of :data:`ROW_CHUNK` ids: the rows exactly as training reads
  them, stored or initial;
- sparse tables of unbounded ids with the ``ListRows`` call, page by page from every shard
  (ascending ids; a page holds at most half a message), merged by id.

The result is keyed as :mod:`worker.export.model_file` documents. Reading while workers
still push gives each table as it was when read (tables are read one after another, and a
sparse table's pages at different moments); export at the end of training, or after
stopping the workers, for one consistent model.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ps._proto import ps_pb2
from ps.config import DEFAULT_MAX_MESSAGE_BYTES
from ps.errors import InvalidArgumentError, NotFoundError
from ps.protocol import tls
from ps.protocol.rows_wire import split_rows
from ps.tables.sparse_spec import SparseTableSpec
from ps.tables.spec import TableSpec
from worker.client.client import Client
from worker.client.transport import RetryPolicy, ShardChannel, call
from worker.export.model_file import file_format, ids_key, rows_key, write_model

__all__ = ["ExportResult", "ROW_CHUNK", "export_model", "fetch_tables"]

#: ids per pull_rows call when reading a sparse table of num_rows rows
ROW_CHUNK = 1 << 16


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_model` wrote: ``path``, ``format`` (npz | safetensors), the
    ``tables`` it holds, its ``keys`` and its size in ``bytes``."""

    path: str
    format: str
    tables: tuple[str, ...]
    keys: tuple[str, ...]
    bytes: int

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "format": self.format, "tables": list(self.tables), "keys": list(self.keys),
                "bytes": self.bytes}


def export_model(servers: list[str] | str, path: str | os.PathLike, *, tables: Iterable[str] | None = None,
                 force: bool = False, timeout_s: float = 60.0, **connection: Any) -> ExportResult:
    """Write every table of the cluster at ``servers`` (or only ``tables``) to ``path``.

    ``connection`` takes the Client's ``token`` and ``tls_*`` options. Checks the suffix
    and that ``path`` does not exist (unless ``force``) before reading anything. Blocks:
    connecting, reading and writing, each call bounded by ``timeout_s``. Raises ValueError
    (suffix, missing safetensors package), FileExistsError, NotFoundError (an unknown name
    in ``tables``), the client's PSError subclasses, OSError.
    """
    fmt = file_format(path)
    if os.path.exists(path) and not force:
        raise FileExistsError(f"{path} exists; pass --force (force=True) to replace it")
    arrays, names = fetch_tables(servers, tables, timeout_s=timeout_s, **connection)
    size = write_model(path, arrays, force=force)
    return ExportResult(str(path), fmt, tuple(names), tuple(arrays), size)


def fetch_tables(servers: list[str] | str, tables: Iterable[str] | None = None, *, timeout_s: float = 60.0,
                 **connection: Any) -> tuple[dict[str, np.ndarray], list[str]]:
    """``(arrays keyed as in the model file, table names read)`` from the cluster at ``servers``.

    ``tables`` None reads every table shard 0 knows (every table exists on every shard).
    Blocks, each call bounded by ``timeout_s``. Raises NotFoundError for an unknown name in
    ``tables``, the client's PSError subclasses (e.g. UnavailableError).
    """
    addresses = [a.strip() for a in servers.split(",")] if isinstance(servers, str) else list(servers)
    creds = tls.channel_credentials(connection.get("tls_ca"), connection.get("tls_cert"),
                                    connection.get("tls_key")) if connection.get("tls_ca") else None
    channels = [ShardChannel(a, DEFAULT_MAX_MESSAGE_BYTES, credentials=creds, token=connection.get("token"),
                             server_name=connection.get("tls_server_name")) for a in addresses]
    try:
        with Client(addresses, observer=True, local=False, stream=False, timeout_s=timeout_s,
                    wait_timeout_s=timeout_s, connect_timeout_s=timeout_s, **connection) as client:
            dense, sparse = _specs(channels[0], timeout_s)
            names = list(dense) + list(sparse) if tables is None else list(dict.fromkeys(tables))
            unknown = [n for n in names if n not in dense and n not in sparse]
            if unknown:
                known = ", ".join(sorted([*dense, *sparse])) or "none"
                raise NotFoundError(f"no table named {', '.join(unknown)}; the cluster has: {known}")
            out: dict[str, np.ndarray] = {}
            wanted = [n for n in names if n in dense]
            if wanted:
                out.update({n: np.asarray(v) for n, v in client.pull(wanted).items()})
            for n in names:
                if n not in sparse:
                    continue
                spec = sparse[n]
                if spec.num_rows:
                    out[n] = _all_rows(client, spec)
                else:
                    out[ids_key(n)], out[rows_key(n)] = _stored_rows(channels, spec, timeout_s)
            return out, names
    finally:
        for ch in channels:
            ch.close()


def _specs(channel: ShardChannel, timeout_s: float) -> tuple[dict[str, TableSpec], dict[str, SparseTableSpec]]:
    reply = call(channel, channel.status, ps_pb2.StatusRequest(), timeout_s, RetryPolicy(attempts=3))
    dense = {t.spec.name: TableSpec.from_proto(t.spec) for t in reply.tables}
    sparse = {t.spec.name: SparseTableSpec.from_proto(t.spec) for t in reply.sparse_tables}
    return dense, sparse


def _all_rows(client: Client, spec: SparseTableSpec) -> np.ndarray:
    """Rows ``0 .. num_rows-1`` as one ``(num_rows, dim)`` array."""
    out = np.empty((spec.num_rows, spec.dim), dtype=spec.dtype)
    for start in range(0, spec.num_rows, ROW_CHUNK):
        stop = min(start + ROW_CHUNK, spec.num_rows)
        out[start:stop] = client.pull_rows(spec.name, np.arange(start, stop, dtype=np.int64))
    return out


def _stored_rows(channels: list[ShardChannel], spec: SparseTableSpec,
                 timeout_s: float) -> tuple[np.ndarray, np.ndarray]:
    """Every stored row of every shard: ``(ids ascending, rows)``."""
    ids_parts, rows_parts = [], []
    for ch in channels:
        request = ps_pb2.ListRowsRequest(table=spec.name, from_start=True)
        while True:
            header, payload = call(ch, ch.list_rows, request, timeout_s, RetryPolicy(attempts=3))
            if header.num_ids and header.dim != spec.dim:
                raise InvalidArgumentError(f"{spec.name}: {ch.address} sent rows of width {header.dim}, "
                                           f"the table's is {spec.dim}")
            if header.num_ids == 0:
                break
            ids, rows = split_rows(header, payload, with_ids=True, with_values=True)
            ids_parts.append(ids.copy())
            rows_parts.append(rows.copy())
            request = ps_pb2.ListRowsRequest(table=spec.name, after_id=int(ids[-1]))
    if not ids_parts:
        return np.zeros(0, dtype=np.int64), np.zeros((0, spec.dim), dtype=spec.dtype)
    ids, rows = np.concatenate(ids_parts), np.concatenate(rows_parts)
    order = np.argsort(ids, kind="stable")
    return ids[order], rows[order]

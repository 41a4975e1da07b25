"""``Step``: one step of a worker as every data plane sees it."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import numpy as np

from ps._proto import ps_pb2
from ps.errors import InvalidArgumentError
from ps.protocol.wire import wire_dtype
from ps.tables.sparse_optim import scatter_rows
from ps.tables.spec import TableSpec
from worker.planes.part import Part


class Step:
    """Who sends the step and at which clocks, its gradients, and where pulled values land.

    ``grads`` are flat little-endian gradients by table (a push), ``dest`` flat writable
    arrays by table that pulled blocks are written into, ``rows`` the ``(ids, dim)`` array
    that pulled rows land in. ``clock`` is the step a push counts for, ``pull_step`` the
    version a pull waits for; ``deadline`` (``time.monotonic()``) is when the whole verb
    must have ended, retries included: :attr:`timeout_s` is what is left of it when a call
    is made. Built by the step engine for one call of a verb; no I/O; not thread-safe.
    """

    __slots__ = ("specs", "worker_id", "session", "clock", "pull_step", "deadline", "grads", "dest", "rows",
                 "memo", "placement_version")

    def __init__(self, specs: Mapping[str, TableSpec], worker_id: int, session: int, clock: int, pull_step: int,
                 deadline: float, grads: Mapping[str, np.ndarray] | None = None,
                 dest: Mapping[str, np.ndarray] | None = None, rows: np.ndarray | None = None,
                 placement_version: int = 0) -> None:
        self.specs = specs
        self.worker_id = worker_id
        self.session = session
        self.clock = clock
        self.pull_step = pull_step
        self.deadline = deadline
        self.grads = grads or {}
        self.dest = dest or {}
        self.rows = rows
        #: a plane's answers that hold for the whole step (None until one keeps some)
        self.memo: dict | None = None
        #: the placement map version the step's parts were planned with (0: not checked)
        self.placement_version = placement_version

    @property
    def timeout_s(self) -> float:
        """Seconds left until :attr:`deadline` (never below 0): the bound of a call made now."""
        return max(0.0, self.deadline - time.monotonic())

    def headers(self, part: Part, seq: int, known: Callable[[ps_pb2.PullHeader], None] | None = None,
                ) -> tuple[ps_pb2.PushHeader | None, ps_pb2.PullHeader | None]:
        """A dense part's ``(PushHeader, PullHeader)`` (None where it has no push or pull);
        ``known(pull header)`` may name the block versions the worker holds before a fused
        push's ``then_pull`` copies it."""
        pull = None
        if part.pull is not None:
            pull = ps_pb2.PullHeader(worker_id=self.worker_id, step=self.pull_step, tables=part.pull,
                                     part=part.part, num_parts=part.num_parts,
                                     placement_version=self.placement_version)
            if known is not None:
                known(pull)
        push = None
        if part.push is not None:
            push = ps_pb2.PushHeader(worker_id=self.worker_id, seq=seq, step=self.clock, part=part.part,
                                     num_parts=part.num_parts, session=self.session,
                                     placement_version=self.placement_version)
            add = push.blocks.add
            for name, b in part.push:
                spec = self.specs[name]
                start, stop = spec.block_range(b)
                add(table=name, block=b, dtype=wire_dtype(spec.dtype), count=stop - start)
            if pull is not None:
                push.then_pull.CopyFrom(pull)
        return push, pull

    def payload(self, part: Part) -> list[np.ndarray]:
        """The gradient blocks a dense part pushes, in header order: views, no copies."""
        out = []
        for name, b in part.push or ():
            start, stop = self.specs[name].block_range(b)
            out.append(self.grads[name][start:stop])
        return out

    def rows_header(self, part: Part, seq: int) -> ps_pb2.RowsHeader:
        """A rows part's header: a push (with ``seq``) or a pull of its ids."""
        push = part.values is not None
        values = part.values if push else self.rows
        return ps_pb2.RowsHeader(worker_id=self.worker_id, seq=seq, step=self.clock if push else self.pull_step,
                                 part=part.part, num_parts=part.num_parts, table=part.table, num_ids=len(part.ids),
                                 dim=values.shape[1], dtype=wire_dtype(values.dtype), session=self.session if push else 0,
                                 placement_version=self.placement_version)

    def block(self, part: Part, table: str, block: int, count: int, dtype: int) -> tuple[int, int]:
        """Where a pulled block goes in ``dest[table]``: ``(start, stop)``. Every plane checks a
        reply's blocks here. Raises InvalidArgumentError for a table or block the part did not
        ask for, or a wrong element count or dtype."""
        spec = self.specs.get(table)
        if spec is None or table not in (part.pull or ()) or not 0 <= block < spec.num_blocks:
            raise InvalidArgumentError(f"server sent {table}[{block}], which this part did not ask for")
        start, stop = spec.block_range(block)
        if count != stop - start or dtype != wire_dtype(spec.dtype):
            raise InvalidArgumentError(f"server sent {count} elements of dtype {dtype} for {table}[{block}]")
        return start, stop

    def pulled_rows(self, part: Part, values: np.ndarray) -> None:
        """Put a rows part's pulled ``values`` at its ``target`` rows of ``rows``. Raises
        InvalidArgumentError when the shard sent another number or width of rows."""
        if values.shape != (len(part.ids), self.rows.shape[1]):
            raise InvalidArgumentError(f"{part.table}: server sent rows of shape {values.shape}, asked "
                                       f"{len(part.ids)} of width {self.rows.shape[1]}")
        scatter_rows(self.rows, part.target, values)

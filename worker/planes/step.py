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

#: header templates a plane keeps (one per part of its recent plans) before it starts afresh
_MAX_TEMPLATES = 1024


class Step:
    """Who sends the step and at which clocks, its gradients, and where pulled values land.

    ``grads`` are flat little-endian gradients by table (a push), ``dest`` flat writable
    arrays by table that pulled blocks are written into, ``rows`` the ``(ids, dim)`` array
    that pulled rows land in. ``clock`` is the step a push counts for, ``pull_step`` the
    version a pull waits for; ``deadline`` (``time.monotonic()``) is when the whole verb
    must have ended, retries included: :attr:`timeout_s` is what is left of it when a call
    is made. ``independent``: each part's reply can come before the later parts were sent
    (async mode: no pull waits for a push of the same step), so a plane may bound the
    parts it keeps in flight; in sync and ssp mode a part's pull may wait for the step's
    other parts. Built by the step engine for one call of a verb; no I/O; not thread-safe.
    """

    __slots__ = ("specs", "worker_id", "session", "clock", "pull_step", "deadline", "grads", "dest", "rows",
                 "memo", "independent", "placement_version")

    def __init__(self, specs: Mapping[str, TableSpec], worker_id: int, session: int, clock: int, pull_step: int,
                 deadline: float, grads: Mapping[str, np.ndarray] | None = None,
                 dest: Mapping[str, np.ndarray] | None = None, rows: np.ndarray | None = None,
                 independent: bool = False, placement_version: int = 0) -> None:
        self.specs = specs
        self.worker_id = worker_id
        self.session = session
        self.clock = clock
        self.pull_step = pull_step
        self.deadline = deadline
        self.grads = grads or {}
        self.dest = dest or {}
        self.rows = rows
        self.independent = independent
        #: a plane's answers that hold for the whole step (None until one keeps some)
        self.memo: dict | None = None
        #: the placement map version the step's parts were planned with (0: not checked)
        self.placement_version = placement_version

    @property
    def timeout_s(self) -> float:
        """Seconds left until :attr:`deadline` (never below 0): the bound of a call made now."""
        return max(0.0, self.deadline - time.monotonic())

    def headers(self, part: Part, seq: int, known: Callable[[ps_pb2.PullHeader], None] | None = None,
                templates: dict | None = None) -> tuple[ps_pb2.PushHeader | None, ps_pb2.PullHeader | None]:
        """A dense part's ``(PushHeader, PullHeader)`` (None where it has no push or pull; a
        fused part's PullHeader is its PushHeader's ``then_pull``); ``known(pull header)`` may
        name the block versions the worker holds. With ``templates`` (a dict a plane keeps
        from step to step) a part's headers are built once, with its blocks, and later steps
        only set the fields that change: the returned messages are then the templates,
        valid until the plane's next call (serialize them at once)."""
        if templates is None:
            push, pull = self._blank(part)
        else:
            pair = templates.get(part)
            if pair is None:
                if len(templates) >= _MAX_TEMPLATES:  # plans changed (new tables, placement): start afresh
                    templates.clear()
                pair = templates[part] = self._blank(part)
            push, pull = pair
        if pull is not None:
            pull.worker_id, pull.step = self.worker_id, self.pull_step
            pull.placement_version = self.placement_version
            if templates is not None and (pull.known or pull.known_for):
                del pull.known[:]
                pull.known_for = ""
            if known is not None:
                known(pull)
        if push is not None:
            push.worker_id, push.seq, push.step, push.session = self.worker_id, seq, self.clock, self.session
            push.placement_version = self.placement_version
        return push, pull

    def _blank(self, part: Part) -> tuple[ps_pb2.PushHeader | None, ps_pb2.PullHeader | None]:
        """A dense part's headers with the fields that are the same every step."""
        push = pull = None
        if part.push is not None:
            push = ps_pb2.PushHeader(part=part.part, num_parts=part.num_parts)
            add = push.blocks.add
            for name, b in part.push:
                spec = self.specs[name]
                start, stop = spec.block_range(b)
                add(table=name, block=b, dtype=wire_dtype(spec.dtype), count=stop - start)
        if part.pull is not None:
            pull = push.then_pull if push is not None else ps_pb2.PullHeader()
            pull.tables.extend(part.pull)
            pull.part, pull.num_parts = part.part, part.num_parts
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

"""A dense table's blocks on one shard: values, optimizer state, a lock each.

:class:`DenseTable` holds only the blocks its shard owns. Every block has its own lock,
so pushes to different blocks apply in parallel (NumPy releases the GIL) and pushes to
one block are serialized: no update is ever lost or torn. Reads copy a block under its
lock, so a pull never sees half an update.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

import numpy as np

from ps.errors import InvalidArgumentError
from ps.tables.optim import Optimizer, make_optimizer
from ps.tables.spec import TableSpec
from ps.protocol.wire import dtype_refusal, wire_dtype


class Block:
    """One block's parameters, optimizer state, sync accumulator, update count, and access count
    (pushes and pulls that touched it on this shard, for ``ps-admin rebalance``; it moves with
    the block). Counts change under ``lock``."""

    __slots__ = ("index", "values", "state", "lock", "version", "_acc", "pending", "contributions", "accesses")

    def __init__(self, index: int, values: np.ndarray, state: dict[str, np.ndarray]) -> None:
        self.index = index
        self.values = values
        self.state = state
        self.lock = threading.Lock()
        self.version = 0
        self._acc: np.ndarray | None = None
        self.pending = False  # the accumulator holds a sum for the current sync step
        self.contributions = 0  # gradients in that sum
        self.accesses = 0

    def accumulator(self) -> np.ndarray:
        """The reusable sync accumulator; call with ``lock`` held."""
        if self._acc is None:
            self._acc = np.empty_like(self.values)
        return self._acc


class _Scratch(threading.local):
    """Each thread's temporary buffer for optimizer updates, grown to the largest block it
    applied: one per thread, not one per block (a block's worth per block doubled the
    shard's memory for large tables)."""

    def __init__(self) -> None:
        self.buffer = np.empty(0, np.uint8)
        self.last: np.ndarray | None = None  # the view handed out last: blocks of a table share a shape

    def like(self, values: np.ndarray) -> np.ndarray:
        """An uninitialised array of ``values``' shape and dtype, valid until this thread's next call."""
        last = self.last
        if last is not None and last.shape == values.shape and last.dtype == values.dtype:
            return last  # the same bytes at the start of the buffer as a new view would be
        nbytes = values.nbytes
        if nbytes > self.buffer.nbytes:
            self.buffer = np.empty(nbytes, np.uint8)
        self.last = self.buffer[:nbytes].view(values.dtype).reshape(values.shape)
        return self.last


class DenseTable:
    """The blocks of one dense table that one shard owns. Thread-safe."""

    def __init__(self, spec: TableSpec, blocks: dict[int, Block], optimizer: Optimizer) -> None:
        self.spec = spec
        self.blocks = blocks  # replaced whole (never changed in place) when a block moves in or out
        self.optimizer = optimizer
        self.dtype = dtype = np.dtype(spec.dtype)
        self.wire_dtype = wire_dtype(dtype)
        self.itemsize = dtype.itemsize
        self.elements = sum(b.values.size for b in blocks.values())  # held here
        self._parts: dict[tuple[int, int], list[Block]] = {}
        self._scratch = _Scratch()

    def move_in(self, block: Block) -> bool:
        """Hold ``block`` (moved here from another shard, ``ps.shard.moves``); False if this
        table already holds its index (a repeated import: unchanged). Readers iterating the
        old ``blocks`` are undisturbed (copy on write). Call with the shard's lock held."""
        if block.index in self.blocks:
            return False
        self.blocks = {**self.blocks, block.index: block}
        self.elements += block.values.size
        self._parts = {}
        return True

    def move_out(self, index: int) -> Block | None:
        """Stop holding block ``index`` (it moved away); returns it, or None when not held.
        Copy on write, as :meth:`move_in`. Call with the shard's lock held."""
        block = self.blocks.get(index)
        if block is not None:
            self.blocks = {i: b for i, b in self.blocks.items() if i != index}
            self.elements -= block.values.size
            self._parts = {}
        return block

    def part_blocks(self, part: int, num_parts: int) -> list[Block]:
        """The owned blocks with ``index % num_parts == part``, by index (remembered: a loop asks again)."""
        key = (part, num_parts)
        picked = self._parts.get(key)
        if picked is None:
            if len(self._parts) > 64:
                self._parts.clear()
            picked = self._parts[key] = [self.blocks[i] for i in sorted(self.blocks) if i % num_parts == part]
        return picked

    @classmethod
    def create(cls, spec: TableSpec, owned: Iterable[int]) -> DenseTable:
        """Allocate and initialise the owned blocks of a validated spec."""
        optimizer = make_optimizer(spec.optimizer)
        blocks = {}
        for b in owned:
            values = spec.initial_block(b)
            blocks[b] = Block(b, values, optimizer.init_state(values))
        return cls(spec, blocks, optimizer)

    @property
    def nbytes(self) -> int:
        """Parameter bytes held (optimizer state not included)."""
        return sum(b.values.nbytes for b in self.blocks.values())

    def check_grad(self, index: int, grad: np.ndarray) -> None:
        """Check ``grad`` fits block ``index`` of the table (held here or not: a push may wait
        for a block that is moving here). Raises InvalidArgumentError for a block index out of
        range or a wrong dtype or length."""
        spec = self.spec
        if not 0 <= index < spec.num_blocks:
            raise InvalidArgumentError(f"{spec.name}: block {index} out of range [0, {spec.num_blocks})")
        if grad.dtype != self.dtype:
            raise dtype_refusal(spec.name, grad.dtype, spec.dtype)
        start, stop = spec.block_range(index)
        if grad.shape != (stop - start,):
            raise InvalidArgumentError(f"{spec.name}: block {index} holds {stop - start} elements, gradient has "
                                       f"{grad.size}")

    def apply(self, block: Block, grad: np.ndarray) -> None:
        """Apply one pushed gradient to one block with the table's optimizer (counts an access).
        Blocks on the block lock."""
        with block.lock:
            self.optimizer.apply(block.values, grad, block.state, self._scratch.like(block.values))
            block.version += 1
            block.accesses += 1

    def accumulate(self, block: Block, grad: np.ndarray) -> None:
        """Add a pushed gradient to the block's pending sum for the current sync step (counts an access)."""
        with block.lock:
            block.accesses += 1
            acc = block.accumulator()
            if block.pending:
                acc += grad
                block.contributions += 1
            else:
                np.copyto(acc, grad)
                block.pending = True
                block.contributions = 1

    def apply_accumulated(self, block: Block, scale: float | None = None) -> bool:
        """Apply ``scale * pending sum`` and clear it; False if nothing was pending.

        ``scale`` None: the mean of the gradients summed (1 / their number).
        """
        with block.lock:
            if not block.pending:
                return False
            acc = block.accumulator()
            acc *= (1.0 / block.contributions) if scale is None else scale
            self.optimizer.apply(block.values, acc, block.state, self._scratch.like(block.values))
            block.version += 1
            block.pending = False
            return True

    def read(self, block: Block) -> tuple[bytes, int]:
        """A consistent copy of the block's values and its version."""
        with block.lock:
            return block.values.tobytes(), block.version

    def read_if_newer(self, block: Block, known: int | None = None,
                      out: np.ndarray | None = None) -> tuple[bytes | np.ndarray | None, int]:
        """``(data, version)``: a consistent copy of the block, unless the reader has it.

        When ``known`` equals the block's version nothing is copied and data is None.
        Otherwise the values are copied (once, under the block lock) into ``out`` (a
        writable array of the block's size and dtype; data is then ``out``) or into new
        bytes. Counts an access (a pull). Blocks on the block lock.
        """
        with block.lock:
            block.accesses += 1
            if known is not None and known == block.version:
                return None, known
            if out is None:
                return block.values.tobytes(), block.version
            np.copyto(out, block.values)
            return out, block.version

"""``LocalRegion``: a worker's shared memory for the same-host data plane (see :mod:`ps.serving.local_plane`).

One region (a ``memfd``) per worker holds, for every table it uses, two flat arrays of
the table's size: the *push area* (gradients the shards read) and the *pull area*
(weights the shards write). Every block sits at its own place in its table, so shards
write and read blocks in place, in parallel, and a table in the region is an ordinary
NumPy array: ``Client.buffers`` hands these arrays to the user, and then a step copies
nothing on the worker side. The arrays of the pull area the user sees are read-only.
Because the pull area keeps what the shards last wrote, :attr:`LocalRegion.versions`
says which block versions the worker holds there.
"""

from __future__ import annotations

import json
import mmap
import os

import numpy as np

from ps.tables.spec import TableSpec

_PAGE = mmap.PAGESIZE


def _round_up(n: int) -> int:
    return -(-n // _PAGE) * _PAGE


class LocalRegion:
    """A push array and a pull array per table in one shared mapping. Not thread-safe.

    :meth:`allocate` makes one; the constructor only lays arrays over a given mapping.
    """

    def __init__(self, specs: list[TableSpec], generation: int, fd: int, mapping: mmap.mmap,
                 layout: dict[str, tuple[int, int, int]]) -> None:
        self.generation = generation
        self.specs = {s.name: s for s in specs}
        self.fd = fd
        self.map = mapping
        self.size = len(mapping)
        self.layout = layout                       # table -> (push offset, pull offset, bytes)
        self.push: dict[str, np.ndarray] = {}      # writable flat arrays
        self.pull: dict[str, np.ndarray] = {}      # writable flat arrays (the worker's own view)
        self.user_pull: dict[str, np.ndarray] = {}  # read-only, shaped: what buffers() hands out
        for name, (push_off, pull_off, _) in layout.items():
            spec = self.specs[name]
            dtype = np.dtype(spec.dtype)
            self.push[name] = np.frombuffer(mapping, dtype=dtype, count=spec.size, offset=push_off)
            self.pull[name] = np.frombuffer(mapping, dtype=dtype, count=spec.size, offset=pull_off)
            ro = self.pull[name].reshape(spec.shape).view()
            ro.flags.writeable = False
            self.user_pull[name] = ro
        #: what the pull area holds: (table, block) -> (version, shard state token)
        self.versions: dict[tuple[str, int], tuple[int, str]] = {}

    @classmethod
    def allocate(cls, specs: list[TableSpec], generation: int) -> LocalRegion:
        """A new region for ``specs``. Raises OSError when the memory cannot be had."""
        layout: dict[str, tuple[int, int, int]] = {}
        offset = 0
        for s in specs:
            nbytes = s.size * np.dtype(s.dtype).itemsize
            layout[s.name] = (offset, offset + _round_up(nbytes), nbytes)
            offset += 2 * _round_up(nbytes)
        fd = os.memfd_create("grpc-ps-worker", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, max(offset, _PAGE))
            mapping = mmap.mmap(fd, max(offset, _PAGE), mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(fd)
            raise
        return cls(specs, generation, fd, mapping, layout)

    def holds(self, names) -> bool:
        return all(n in self.layout for n in names)

    def layout_json(self) -> bytes:
        return json.dumps({"tables": {n: list(v) for n, v in self.layout.items()}}).encode()

    def is_push(self, name: str, array: np.ndarray) -> bool:
        """Whether ``array`` is this region's push array of ``name`` (a zero-copy push)."""
        mine = self.push.get(name)
        return mine is not None and _same_memory(mine, array)

    def is_pull(self, name: str, array: np.ndarray) -> bool:
        """Whether ``array`` is this region's pull array of ``name`` (a zero-copy pull)."""
        mine = self.pull.get(name)
        return mine is not None and _same_memory(mine, array)

    def close(self) -> None:
        """Forget the region. Arrays the user still holds keep the memory alive."""
        self.versions.clear()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _same_memory(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether ``b`` is the region's array ``a`` (or a contiguous view of all of it). The cheap
    tests first: an array of the user's own memory has another root buffer, and reading an
    array's address costs microseconds (this runs for every table of every step)."""
    if b is a:
        return True
    if a.size != b.size or a.dtype != b.dtype or not b.flags.c_contiguous or _root(a) is not _root(b):
        return False
    return a.__array_interface__["data"][0] == b.__array_interface__["data"][0]


def _root(array: np.ndarray) -> object:
    """The object at the end of ``array``'s chain of bases (itself when it owns its memory)."""
    root = array
    while isinstance(root, np.ndarray) and root.base is not None:
        root = root.base
    return root

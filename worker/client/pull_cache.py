"""``PullCache``: the blocks a worker last pulled, so that pulls skip blocks that did not change."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from ps._proto import ps_pb2
from ps.errors import InvalidArgumentError
from ps.tables.spec import TableSpec


class PullCache:
    """The last pulled value and version of every block, and the shard state they belong to.

    With ``Client(cache_pulls=True)`` a pull over gRPC or the TCP plane names the versions
    held (``known``, valid for the shard's state token ``known_for``: after a restart or a
    restore the versions mean nothing); the shard leaves those blocks out of its reply if
    they did not change, and they are filled from here. It costs one more copy of the
    pulled tables. (The same-host plane keeps its versions in shared memory instead.)
    No I/O; not thread-safe (one Client).
    """

    def __init__(self, specs: Mapping[str, TableSpec]) -> None:
        self._specs = specs
        self._values: dict[str, np.ndarray] = {}           # table -> its last pulled values
        self._versions: dict[tuple[str, int], int] = {}    # (table, block) -> version held
        self._tokens: dict[int, str] = {}                  # shard -> state token of those versions

    def name_known(self, shard: int, header: ps_pb2.PullHeader, blocks: Iterable[tuple[str, int]]) -> None:
        """Name in ``header`` the versions held of ``blocks`` of ``shard``."""
        token = header.known_for = self._tokens.get(shard, "")
        if token:
            add = header.known.add
            for name, b in blocks:
                v = self._versions.get((name, b))
                if v is not None:
                    add(table=name, block=b, version=v)

    def remember(self, table: str, block: int, version: int, values: np.ndarray) -> None:
        """Keep a pulled block (copied) and its version."""
        spec = self._specs[table]
        cache = self._values.get(table)
        if cache is None:
            cache = self._values[table] = np.empty(spec.size, dtype=spec.dtype)
        start, stop = spec.block_range(block)
        cache[start:stop] = values
        self._versions[(table, block)] = version

    def fill(self, shard: int, token: str, blocks: Iterable[tuple[str, int]], got: set[tuple[str, int]],
             dest: Mapping[str, np.ndarray]) -> None:
        """After a reply of ``shard`` (state ``token``) that held ``got`` of ``blocks``: copy the
        others, unchanged, into ``dest``. Raises InvalidArgumentError for one not held."""
        for name, b in blocks:
            if (name, b) in got:
                continue
            cache = self._values.get(name)
            if cache is None or (name, b) not in self._versions:
                raise InvalidArgumentError(f"server left out {name}[{b}], which this worker does not hold")
            start, stop = self._specs[name].block_range(b)
            dest[name][start:stop] = cache[start:stop]
        self._tokens[shard] = token

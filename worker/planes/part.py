"""``Part``: one call of a step to one shard, the unit every data plane carries."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class Part:
    """Part ``part`` of ``num_parts`` of one step's calls to ``shard``. Immutable: plans reuse it.

    A dense part pushes the gradient blocks ``push`` (None: no push) and pulls the tables
    ``pull`` (None: no pull), of which the shard picks ``pull_blocks`` (block index modulo
    ``num_parts``, the way the shard selects them). A rows part carries one sparse
    table's ``ids`` (int64, unique) with their gradient rows ``values`` (a push) or without
    (a pull, whose rows land at positions ``target`` of the step's output).
    """

    shard: int
    part: int
    num_parts: int
    push: tuple[tuple[str, int], ...] | None = None
    pull: tuple[str, ...] | None = None
    pull_blocks: tuple[tuple[str, int], ...] = ()
    table: str = ""                       # a rows part's sparse table ("": a dense part)
    ids: np.ndarray | None = None
    values: np.ndarray | None = None
    target: np.ndarray | None = None

    @functools.cached_property
    def unpushed_pulls(self) -> tuple[tuple[str, int], ...]:
        """The ``pull_blocks`` this part does not also push: the only ones whose held versions
        are worth naming as ``known`` (a block the same call pushes changes before it is read,
        unless the push is dropped, and then sending it again is merely not skipped)."""
        pushed = set(self.push or ())
        return tuple(b for b in self.pull_blocks if b not in pushed)

    @property
    def pushes(self) -> bool:
        """Whether this part carries gradients (and so a sequence number)."""
        return self.push is not None or self.values is not None

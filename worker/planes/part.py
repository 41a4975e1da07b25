"""``Part``: one call of a step to one shard, the unit every data plane carries."""

from __future__ import annotations

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

    @property
    def pushes(self) -> bool:
        """Whether this part carries gradients (and so a sequence number)."""
        return self.push is not None or self.values is not None

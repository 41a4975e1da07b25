"""DenseTable's per-thread optimizer scratch is reused across blocks of different shapes and
dtypes without mixing them up: every update equals NumPy's own arithmetic."""

import numpy as np

from ps.tables.dense_table import DenseTable
from ps.tables.optim import OptimizerSpec
from ps.tables.spec import TableSpec


def test_updates_of_blocks_of_other_sizes_and_dtypes_in_turn_are_exact():
    tables = [DenseTable.create(TableSpec(name, (1000,), dtype=dtype, block_elems=512,
                                          optimizer=OptimizerSpec("adam", lr=0.01)), [0, 1])
              for name, dtype in (("a", "float32"), ("b", "float64"))]
    expected = {(t.spec.name, i): b.values.copy() for t in tables for i, b in t.blocks.items()}
    reference = {(t.spec.name, i): DenseTable.create(t.spec, [i]) for t in tables for i in t.blocks}
    rng = np.random.default_rng(0)
    for _ in range(3):
        for t in tables:
            for i in (1, 0):  # the short last block (488), then a full one (512)
                block = t.blocks[i]
                grad = rng.standard_normal(block.values.size).astype(block.values.dtype)
                t.apply(block, grad)
                ref = reference[(t.spec.name, i)]
                ref.optimizer.apply(ref.blocks[i].values, grad, ref.blocks[i].state,
                                    np.empty_like(ref.blocks[i].values))  # a fresh scratch every time
                expected[(t.spec.name, i)] = ref.blocks[i].values
    for t in tables:
        for i, block in t.blocks.items():
            np.testing.assert_array_equal(block.values, expected[(t.spec.name, i)])

"""export_state / restore: a table saved on 2 shards restores onto 3 and onto 1, row for row."""

import numpy as np
import pytest

from ps.errors import InvalidArgumentError
from ps.tables.optim import OptimizerSpec
from ps.tables.placement import row_shards
from ps.tables.sparse_spec import SparseTableSpec
from ps.tables.sparse_table import SparseTable
from ps.tables.spec import InitSpec

SPEC = SparseTableSpec("emb", 5, optimizer=OptimizerSpec("adam", lr=0.01), init=InitSpec("normal", 0.1, 4),
                       max_rows=10_000, eviction="lfu", admit_after=2)


def trained_shards(num_shards: int) -> list[SparseTable]:
    """Push the same stream of rows into a table split over ``num_shards`` shards."""
    tables = [SparseTable(SPEC, i, num_shards) for i in range(num_shards)]
    rng = np.random.default_rng(0)
    for _ in range(30):
        ids = rng.integers(-500, 500, 200).astype(np.int64)
        grads = rng.standard_normal((200, 5)).astype(np.float32)
        owner = row_shards(SPEC.name, ids, num_shards)
        for i, t in enumerate(tables):
            t.apply(ids[owner == i], grads[owner == i])
    return tables


def by_id(tables: list[SparseTable]) -> dict[str, np.ndarray]:
    """Every shard's exported rows merged and sorted by id."""
    states = [t.export_state() for t in tables]
    ids = np.concatenate([s["ids"] for s in states])
    order = np.argsort(ids)
    out = {"ids": ids[order]}
    for key in ("values", "state.m", "state.v", "state.t", "hits", "last_used"):
        out[key] = np.concatenate([s[key] for s in states])[order]
    return out


@pytest.mark.parametrize("target", [3, 1, 2])
def test_save_on_two_shards_restore_on_m(target):
    saved = trained_shards(2)
    exported = [t.export_state() for t in saved]
    restored = [SparseTable.restore(SPEC, exported, i, target) for i in range(target)]
    for i, t in enumerate(restored):
        own = t.export_state()["ids"]
        assert (row_shards(SPEC.name, own, target) == i).all(), "a shard kept rows it does not own"
    before, after = by_id(saved), by_id(restored)
    assert len(before["ids"]) > 300
    for key, value in before.items():
        np.testing.assert_array_equal(after[key], value, err_msg=key)
    probe = np.arange(-600, 600, dtype=np.int64)
    owner_before = row_shards(SPEC.name, probe, 2)
    owner_after = row_shards(SPEC.name, probe, target)
    got_before = np.empty((len(probe), 5), np.float32)
    got_after = np.empty((len(probe), 5), np.float32)
    for i, t in enumerate(saved):
        got_before[owner_before == i] = t.read(probe[owner_before == i])
    for i, t in enumerate(restored):
        got_after[owner_after == i] = t.read(probe[owner_after == i])
    np.testing.assert_array_equal(got_after, got_before)  # stored and never-stored rows alike
    assert sum(t.counters["created"] for t in restored) == sum(t.counters["created"] for t in saved)
    assert sum(t.counters["not_admitted"] for t in restored) == sum(t.counters["not_admitted"] for t in saved)


def test_restored_tables_train_on_identically():
    saved = trained_shards(2)
    one = SparseTable.restore(SPEC, [t.export_state() for t in saved], 0, 1)
    ids = np.arange(-20, 20, dtype=np.int64)
    grads = np.ones((40, 5), np.float32)
    owner = row_shards(SPEC.name, ids, 2)
    for i, t in enumerate(saved):
        t.apply(ids[owner == i], grads[owner == i])
    one.apply(ids, grads)
    expected = np.empty((40, 5), np.float32)
    for i, t in enumerate(saved):
        expected[owner == i] = t.read(ids[owner == i])
    np.testing.assert_array_equal(one.read(ids), expected)  # Adam steps, admission counts carried over


def test_export_is_plain_arrays_and_restore_refuses_mismatches():
    state = trained_shards(1)[0].export_state()
    assert all(isinstance(v, np.ndarray) for v in state.values())
    assert state["ids"].dtype == np.int64 and np.all(np.diff(state["ids"]) > 0)
    other_dim = SparseTableSpec("emb", 6, optimizer=SPEC.optimizer)
    with pytest.raises(InvalidArgumentError, match="values"):
        SparseTable.restore(other_dim, state, 0, 1)
    other_opt = SparseTableSpec("emb", 5, optimizer=OptimizerSpec("adagrad"))
    with pytest.raises(InvalidArgumentError, match="state.accumulator"):
        SparseTable.restore(other_opt, state, 0, 1)
    with pytest.raises(InvalidArgumentError, match="more than one"):
        SparseTable.restore(SPEC, [state, state], 0, 1)
    empty = SparseTable.restore(SPEC, [], 0, 1)
    assert empty.rows == 0

"""RowIndex agrees with a dict through inserts, removals, slot reuse and rebuilds."""

import numpy as np
import pytest

from ps.tables.row_index import RowIndex


def check_against(index: RowIndex, ref: dict[int, int], probe: np.ndarray) -> None:
    got = index.lookup(probe)
    want = np.array([ref.get(int(i), -1) for i in probe], dtype=np.int64)
    np.testing.assert_array_equal(got, want)
    assert index.live == len(ref)
    assert sorted(index.live_slots().tolist()) == sorted(ref.values())


def test_random_inserts_and_removes_match_a_dict():
    rng = np.random.default_rng(0)
    index, ref = RowIndex(), {}
    universe = np.concatenate([rng.integers(-(2**63), 2**63 - 1, 3000, dtype=np.int64),
                               np.array([0, -1, 1, np.iinfo(np.int64).min, np.iinfo(np.int64).max])])
    for _ in range(40):
        batch = np.unique(rng.choice(universe, 200))
        new = np.array([i for i in batch if int(i) not in ref], dtype=np.int64)
        slots = index.insert(new)
        assert len(set(slots.tolist()) | set(ref.values())) == len(ref) + len(new), "a slot was handed out twice"
        ref.update(zip(new.tolist(), slots.tolist()))
        if ref and rng.random() < 0.6:
            victims = rng.choice(list(ref), size=min(len(ref), 50), replace=False)
            index.remove(np.array([ref.pop(int(v)) for v in victims]))
        check_against(index, ref, rng.choice(universe, 500))


def test_freed_slots_are_reused_so_high_stays_bounded():
    index = RowIndex()
    ids = np.arange(1000, dtype=np.int64)
    slots = index.insert(ids)
    for round_ in range(20):
        index.remove(slots[:500])
        fresh = np.arange(10_000 * (round_ + 1), 10_000 * (round_ + 1) + 500, dtype=np.int64)
        slots = np.concatenate([slots[500:], index.insert(fresh)])
    assert index.high == 1000 and index.live == 1000
    assert (index.lookup(np.arange(500)) == -1).all()


def test_lookup_with_repeats_and_empty_inputs():
    index = RowIndex()
    assert index.lookup(np.zeros(0, dtype=np.int64)).shape == (0,)
    assert (index.lookup(np.array([1, 2])) == -1).all()
    slots = index.insert(np.array([7, 9], dtype=np.int64))
    np.testing.assert_array_equal(index.lookup(np.array([9, 7, 9, 8])), [slots[1], slots[0], slots[1], -1])


def test_grows_past_many_rebuilds():
    index = RowIndex()
    ids = np.random.default_rng(1).permutation(200_000).astype(np.int64) * 7919
    for chunk in np.array_split(ids, 17):
        index.insert(chunk)
    assert index.live == len(ids)
    assert len(index.buckets) * 0.7 >= index.live
    np.testing.assert_array_equal(index.slot_ids[index.lookup(ids)], ids)


def test_removing_an_absent_slot_is_an_error():
    index = RowIndex()
    index.insert(np.array([1, 2, 3], dtype=np.int64))
    with pytest.raises(KeyError):
        index.remove(np.array([5]))

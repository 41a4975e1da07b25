"""SparseTable: lazy rows, deterministic init, duplicate sums, optimizers, eviction, admission."""

import numpy as np
import pytest

from ps._proto import ps_pb2
from ps.errors import FailedPreconditionError, InvalidArgumentError
from ps.tables.optim import OptimizerSpec, make_optimizer
from ps.tables.placement import row_shards
from ps.tables.sparse_spec import SparseTableSpec
from ps.tables.sparse_table import SparseTable, sum_duplicates
from ps.tables.spec import InitSpec


def spec(name="emb", dim=4, optimizer="sgd", lr=0.5, init="zeros", scale=0.0, seed=0, **kw):
    opt_kw = {k: kw.pop(k) for k in list(kw) if k in ("momentum", "nesterov", "weight_decay", "initial_accumulator")}
    return SparseTableSpec(name, dim, optimizer=OptimizerSpec(optimizer, lr=lr, **opt_kw),
                           init=InitSpec(init, scale, seed), **kw)


def ones(n, dim=4, value=1.0):
    return np.full((n, dim), value, dtype=np.float32)


def test_initial_rows_depend_only_on_seed_table_and_id():
    s = spec(init="normal", scale=0.5, seed=11, dim=8)
    ids = np.array([3, -9, 2**62, 3], dtype=np.int64)
    rows = s.initial_rows(ids)
    np.testing.assert_array_equal(rows[0], rows[3])
    np.testing.assert_array_equal(s.initial_rows(ids[::-1]), rows[::-1])    # no batch or order effect
    np.testing.assert_array_equal(s.initial_rows(ids[1:2])[0], rows[1])
    assert not np.array_equal(spec(init="normal", scale=0.5, seed=12, dim=8).initial_rows(ids), rows)
    assert not np.array_equal(spec(name="other", init="normal", scale=0.5, seed=11, dim=8).initial_rows(ids), rows)
    big = s.initial_rows(np.arange(20_000))
    assert abs(big.std() - 0.5) < 0.01 and abs(big.mean()) < 0.01
    u = spec(init="uniform", scale=0.2).initial_rows(np.arange(20_000))
    assert u.min() >= -0.2 and u.max() <= 0.2 and abs(u.std() - 0.2 / np.sqrt(3)) < 0.005
    assert not spec().initial_rows(ids).any()


def test_reads_do_not_store_rows_and_pushes_create_them():
    table = SparseTable(spec(init="normal", scale=1.0, seed=3))
    ids = np.array([10, 20, 10], dtype=np.int64)
    before = table.read(ids)
    assert table.rows == 0
    np.testing.assert_array_equal(before, table.spec.initial_rows(ids))
    table.apply(np.array([10], dtype=np.int64), ones(1))
    assert table.rows == 1
    after = table.read(ids)
    np.testing.assert_allclose(after[0], before[0] - 0.5)
    np.testing.assert_array_equal(after[1], before[1])  # untouched row unchanged


def test_duplicate_ids_in_one_push_are_summed_then_applied_once():
    a = SparseTable(spec(optimizer="adagrad", lr=0.1))
    b = SparseTable(spec(optimizer="adagrad", lr=0.1))
    ids = np.array([5, 1, 5, 5, 1], dtype=np.int64)
    grads = np.arange(20, dtype=np.float32).reshape(5, 4)
    a.apply(ids, grads)
    b.apply(np.array([1, 5], dtype=np.int64), np.stack([grads[1] + grads[4], grads[0] + grads[2] + grads[3]]))
    np.testing.assert_array_equal(a.read(np.array([1, 5])), b.read(np.array([1, 5])))
    u, s = sum_duplicates(ids, grads)
    np.testing.assert_array_equal(u, [1, 5])
    np.testing.assert_array_equal(s[1], grads[0] + grads[2] + grads[3])


@pytest.mark.parametrize("name, options", [
    ("sgd", {}), ("sgd", {"weight_decay": 0.1}), ("momentum", {"momentum": 0.9}),
    ("momentum", {"momentum": 0.8, "nesterov": True}), ("adagrad", {"initial_accumulator": 0.1}),
    ("adam", {}), ("adam", {"weight_decay": 0.01}), ("ftrl", {"l1": 0.05, "l2": 0.1}), ("ftrl", {"beta": 0.0}),
])
def test_row_rules_equal_the_dense_optimizer_on_touched_rows(name, options):
    """A row pushed k times follows the dense rule exactly; rows not pushed stay put."""
    ospec = OptimizerSpec(name, lr=0.05, **options)
    table = SparseTable(SparseTableSpec("emb", 3, optimizer=ospec, init=InitSpec("normal", 1.0, 5)))
    dense = make_optimizer(ospec)
    rng = np.random.default_rng(0)
    ids = np.arange(6, dtype=np.int64)
    ref = {i: table.spec.initial_rows(np.array([i]))[0].copy() for i in range(6)}
    state = {i: dense.init_state(ref[i]) for i in range(6)}
    for step in range(7):
        touched = ids[rng.random(6) < 0.6]
        grads = rng.standard_normal((len(touched), 3)).astype(np.float32)
        table.apply(touched, grads)
        for i, g in zip(touched.tolist(), grads):
            dense.apply(ref[i], g, state[i], np.empty(3, np.float32))
    got = table.read(ids)
    for i in range(6):
        np.testing.assert_allclose(got[i], ref[i], rtol=1e-6, atol=1e-7)


def test_sync_accumulate_applies_the_scaled_sum_once():
    table = SparseTable(spec(lr=1.0))
    table.accumulate(np.array([1, 2], dtype=np.int64), ones(2, value=1.0))
    table.accumulate(np.array([2, 3, 2], dtype=np.int64), ones(3, value=2.0))
    assert table.rows == 0  # nothing applied before the step completes
    assert table.apply_accumulated(0.5)
    np.testing.assert_allclose(table.read(np.array([1, 2, 3, 4]))[:, 0], [-0.5, -2.5, -1.0, 0.0])
    assert not table.apply_accumulated(0.5)


def test_lru_evicts_the_least_recently_used_rows():
    table = SparseTable(spec(max_rows=64, lr=1.0))
    for i in range(64):
        table.apply(np.array([i], dtype=np.int64), ones(1))
    table.read(np.arange(10))              # 0..9 become recent
    table.apply(np.array([100], dtype=np.int64), ones(1))   # 65 rows: evict down to 64 - 64 // 32 = 62
    assert table.rows == 62 and table.counters["evicted"] == 3
    stored = set(table.index.slot_ids[table.index.live_slots()].tolist())
    assert stored == set(range(10)) | set(range(13, 64)) | {100}
    np.testing.assert_array_equal(table.read(np.array([10, 11, 12]))[:, 0], 0.0)   # back to the initial row
    assert table.read(np.array([100]))[0, 0] == -1.0


def test_lfu_evicts_the_least_frequently_used_rows():
    table = SparseTable(spec(max_rows=32, eviction="lfu"))
    table.apply(np.arange(32, dtype=np.int64), ones(32))
    for _ in range(3):
        table.read(np.arange(5, 32))       # 0..4 are used least
    table.apply(np.array([1000], dtype=np.int64), ones(1))  # 33 rows: down to 31
    stored = set(table.index.slot_ids[table.index.live_slots()].tolist())
    assert table.rows == 31 and stored >= set(range(5, 32)) | {1000}
    assert len(stored & set(range(5))) == 3   # two of the least used rows went


def test_rows_of_the_current_push_are_kept_and_memory_is_bounded():
    table = SparseTable(spec(max_rows=100, dim=2))
    for start in range(0, 5000, 50):
        ids = np.arange(start, start + 50, dtype=np.int64)
        table.apply(ids, ones(50, dim=2))
        assert table.rows <= 100
        assert (table.index.lookup(ids) >= 0).all()
    assert len(table.values) <= 100 + 1024


def test_admission_stores_a_row_from_its_admit_after_th_push():
    table = SparseTable(spec(admit_after=3, lr=1.0, init="normal", scale=1.0, seed=2))
    row = np.array([7], dtype=np.int64)
    init = table.spec.initial_rows(row)
    for _ in range(2):
        table.apply(row, ones(1))
        assert table.rows == 0
        np.testing.assert_array_equal(table.read(row), init)
    assert table.counters["not_admitted"] == 2
    table.apply(row, ones(1))              # the third push stores and applies it
    assert table.rows == 1
    np.testing.assert_allclose(table.read(row), init - 1.0)
    # sync: sightings count on arrival, the step applies what is admitted by then
    table.accumulate(np.array([8, 8, 9], dtype=np.int64), ones(3))
    table.accumulate(np.array([8], dtype=np.int64), ones(1))
    table.apply_accumulated(1.0)
    assert table.rows == 1 and table.counters["not_admitted"] == 4


def test_status_sizes_count_every_array():
    table = SparseTable(spec(optimizer="adam", dim=16))
    table.apply(np.arange(1000, dtype=np.int64), ones(1000, dim=16))
    assert table.rows == 1000
    assert table.raw_row_bytes == 8 + 64 + 64 + 64 + 4
    assert table.raw_row_bytes * 1000 <= table.nbytes <= 2 * table.raw_row_bytes * 1024 + table.index.nbytes


def test_push_checks():
    table = SparseTable(spec(dim=4), shard_index=0, num_shards=2)
    ids = np.arange(10, dtype=np.int64)
    mine = ids[row_shards("emb", ids, 2) == 0]
    theirs = ids[row_shards("emb", ids, 2) == 1]
    table.check_push(mine, ones(len(mine)))
    with pytest.raises(InvalidArgumentError, match="row width"):
        table.check_push(mine, ones(len(mine), dim=5))
    with pytest.raises(InvalidArgumentError, match="dtype"):
        table.check_push(mine, ones(len(mine)).astype(np.float64))
    with pytest.raises(InvalidArgumentError, match="NaN"):
        table.check_push(mine[:1], np.full((1, 4), np.nan, np.float32))
    with pytest.raises(FailedPreconditionError, match="not on this shard"):
        table.check_push(theirs, ones(len(theirs)))
    table.check_push(theirs, ones(len(theirs)), placed=False)  # a shard checks placement after dedup


def test_row_buckets_move_with_their_rows_state_and_metadata():
    """take_buckets/put_buckets: a bucket's rows leave one table with their optimizer state,
    eviction data and access count and arrive whole in another; the rest stay."""
    from ps.tables.placement import row_buckets
    s = spec(dim=4, optimizer="adagrad", lr=0.5, max_rows=10_000, eviction="lfu", admit_after=2)
    src = SparseTable(s, shard_index=0, num_shards=1)
    ids = np.arange(500, dtype=np.int64)
    grads = np.arange(500 * 4, dtype=np.float32).reshape(500, 4) % 7
    for _ in range(3):
        src.apply(ids, grads)
    buckets = row_buckets("emb", ids)
    moving = sorted(set(int(b) for b in buckets[:40]))
    src.count_accesses(buckets)
    before = src.read(ids)
    state_before = src.export_state()
    dst = SparseTable(s, shard_index=0, num_shards=1)
    dst.held[:] = False
    taken = src.take_buckets(moving)
    assert sorted(taken) == moving and not src.held[moving].any()
    extras = src.table_extras()
    for k, arrays in taken.items():
        assert dst.put_buckets(k, {**arrays, **extras})
        assert not dst.put_buckets(k, arrays)  # a repeat is a no-op
    here = np.isin(buckets, moving)
    assert src.rows + dst.rows == 500 and dst.rows == int(here.sum())
    np.testing.assert_array_equal(dst.read(ids[here]), before[here])
    np.testing.assert_array_equal(src.read(ids[~here]), before[~here])
    got = dst.export_state()
    want = np.isin(state_before["ids"], ids[here])
    np.testing.assert_array_equal(got["state.accumulator"], state_before["state.accumulator"][want])
    np.testing.assert_array_equal(got["hits"], state_before["hits"][want] + 1)  # + the read above
    assert dst.tick >= src.tick - 1 and (dst.sketch.counts >= src.sketch.counts).all()
    assert int(dst.bucket_accesses[moving].sum()) == int(here.sum())
    with pytest.raises(InvalidArgumentError, match="other buckets"):
        other = next(k for k in range(4096) if k not in moving)
        dst.put_buckets(other, taken[moving[0]])


def test_spec_round_trips_through_the_proto_and_validates():
    s = spec(optimizer="adam", lr=0.01, init="uniform", scale=0.1, seed=9, max_rows=1000, eviction="lfu",
             admit_after=2, dim=12)
    assert SparseTableSpec.from_proto(s.to_proto()) == s
    assert s.to_proto().kind == ps_pb2.SPARSE
    for bad in (dict(dim=0), dict(init="glorot"), dict(eviction="fifo"), dict(max_rows=-1), dict(admit_after=-2),
                dict(name="bad name")):
        with pytest.raises(InvalidArgumentError):
            spec(**bad).validate()


def test_num_rows_bounds_the_ids_and_round_trips_through_the_proto():
    s = spec(num_rows=10)
    assert SparseTableSpec.from_proto(s.to_proto()) == s
    with pytest.raises(InvalidArgumentError, match="num_rows"):
        spec(num_rows=-1).validate()
    t = SparseTable(s)
    t.apply(np.array([0, 9], dtype=np.int64), ones(2))
    for bad in ([10], [-1], [3, 12]):
        with pytest.raises(InvalidArgumentError, match=r"outside \[0, 10\)"):
            t.check_push(np.array(bad, dtype=np.int64), ones(len(bad)))
        with pytest.raises(InvalidArgumentError, match="outside"):
            t.check_ids(np.array(bad, dtype=np.int64))
    SparseTable(spec()).check_ids(np.array([-5, 2**62], dtype=np.int64))  # unbounded: any int64


def test_list_rows_pages_the_stored_rows_in_id_order():
    t = SparseTable(spec(init="normal", scale=1.0))
    ids = np.array([40, -7, 2**40, 3, 15], dtype=np.int64)
    t.apply(ids, ones(5))
    t.read(np.array([99], dtype=np.int64))          # read, never pushed: not stored, not listed
    expect = np.sort(ids)
    got, after = [], None
    for _ in range(len(ids) + 1):                   # one page of 2 rows per turn: bounded
        page_ids, page_rows = t.list_rows(after, 2)
        if not len(page_ids):
            break
        assert len(page_ids) <= 2 and np.all(np.diff(page_ids) > 0)
        np.testing.assert_array_equal(page_rows, t.read(page_ids))
        got.append(page_ids)
        after = int(page_ids[-1])
    np.testing.assert_array_equal(np.concatenate(got), expect)
    all_ids, all_rows = t.list_rows(None, 100)
    np.testing.assert_array_equal(all_ids, expect)
    assert all_rows.shape == (5, 4)


def test_constant_init_fills_every_element_with_its_value():
    from ps.tables.spec import TableSpec

    s = TableSpec("g", (5, 3), block_elems=4, init=InitSpec("constant", -0.5))
    s.validate()
    assert all(np.all(s.initial_block(b) == -0.5) for b in range(s.num_blocks))
    with pytest.raises(InvalidArgumentError, match="scale"):
        TableSpec("g", (2,), init=InitSpec("normal", -1.0)).validate()

"""The per-shard memory budget (issue 12 #3), without sockets: sizes, the optimizer's state
slots, dense creates refused before allocating, sparse growth that evicts or refuses."""

import time

import numpy as np
import pytest

from launcher import server_cli
from ps.config import ServerConfig
from ps.errors import ResourceExhaustedError
from ps.shard.consistency import Mode
from ps.shard.memory_budget import MemoryBudget, default_budget, dense_footprint, parse_size
from ps.shard.shard import Shard
from ps.tables.optim import OPTIMIZERS, STATE_SLOTS, OptimizerSpec, make_optimizer
from ps.tables.sparse_spec import SparseTableSpec
from ps.tables.spec import TableSpec

MIB = 1 << 20


def shard(budget: int, mode: Mode = Mode.ASYNC) -> Shard:
    s = Shard(ServerConfig(mode=mode, shard_index=0, num_shards=1, max_memory_bytes=budget, sync_timeout_s=2.0))
    s.register(0)
    return s


def test_sizes_parse_with_binary_suffixes_and_bad_ones_are_refused():
    assert parse_size("8G") == 8 << 30 and parse_size("512M") == 512 << 20 and parse_size("64k") == 64 << 10
    assert parse_size("1.5GiB") == 3 << 29 and parse_size("1073741824") == 1 << 30 and parse_size("2TB") == 2 << 40
    for bad in ("", "8X", "-1G", "0", "G", "1e9"):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_the_flag_and_its_variable_set_the_budget_and_the_default_comes_from_the_machine():
    args = server_cli.build_parser(environ={"PS_MAX_MEMORY": "512M"}).parse_args([])
    assert server_cli.config_from_args(args).max_memory_bytes == 512 << 20
    args = server_cli.build_parser(environ={}).parse_args(["--max-memory", "2G"])
    assert server_cli.config_from_args(args).max_memory_bytes == 2 << 30
    assert server_cli.config_from_args(server_cli.build_parser(environ={}).parse_args([])).max_memory_bytes is None
    assert 0 < default_budget() == MemoryBudget(None, lambda: 0).limit


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_state_slots_are_the_arrays_each_optimizer_keeps(name):
    values = np.zeros(16, np.float32)
    state = make_optimizer(OptimizerSpec(name)).init_state(values)
    assert STATE_SLOTS[name] == sum(a.shape == values.shape for a in state.values())


def test_a_huge_create_is_refused_at_once_and_changes_nothing():
    s = shard(64 * MIB)
    s.create_table(TableSpec("small", (1000,)))
    start = time.monotonic()
    with pytest.raises(ResourceExhaustedError, match="max-memory"):
        s.create_table(TableSpec("huge", (10 ** 12,)))
    assert time.monotonic() - start < 1.0
    assert list(s.tables) == ["small"] and s.counters["memory_refused"] == 1


def test_a_create_counts_its_optimizer_state_against_the_budget():
    elements = 1 << 20  # 4 MiB of float32: values + scratch = 8 MiB; adam adds 8 MiB more
    assert dense_footprint(4, "sgd", elements, False) == 8 * MIB
    assert dense_footprint(4, "adam", elements, False) == 16 * MIB
    assert dense_footprint(4, "adam", elements, True) == 20 * MIB  # sync: the step's accumulator too
    s = shard(12 * MIB)
    with pytest.raises(ResourceExhaustedError):
        s.create_table(TableSpec("w", (elements,), optimizer=OptimizerSpec("adam")))
    assert s.create_table(TableSpec("w", (elements,), optimizer=OptimizerSpec("sgd")))
    assert s.budget.used() == 8 * MIB
    with pytest.raises(ResourceExhaustedError):  # only 4 MiB left
        s.create_table(TableSpec("v", (elements,), optimizer=OptimizerSpec("sgd")))
    assert not s.create_table(TableSpec("w", (elements,), optimizer=OptimizerSpec("sgd")))  # idempotent


def test_sparse_growth_past_the_budget_refuses_an_unbounded_table_and_changes_nothing():
    s = shard(2 * MIB)
    s.rows.create(SparseTableSpec("emb", 64, optimizer=OptimizerSpec("sgd", lr=1.0)))
    table = s.rows.tables["emb"]
    seq, refused = 0, None
    for batch in range(64):  # bounded: 64 x 1024 rows of 256 B is 16 MiB, far past 2 MiB
        seq += 1
        ids = np.arange(batch * 1024, (batch + 1) * 1024, dtype=np.int64)
        try:
            s.rows.push(0, seq, 0, 0, 1, "emb", ids, np.ones((1024, 64), np.float32), 2.0)
        except ResourceExhaustedError as exc:
            refused = (batch, exc)
            break
    assert refused is not None, "the table grew past the budget"
    assert "max-memory" in str(refused[1])
    assert table.rows == refused[0] * 1024 and table.nbytes <= 2 * MIB
    stored = table.read(np.arange(0, 1024, dtype=np.int64))
    np.testing.assert_array_equal(stored, -1.0)  # the rows stored before keep their values
    # the shard keeps serving: known rows still update, and the refused push may be retried
    s.rows.push(0, seq + 1, 0, 0, 1, "emb", np.arange(4, dtype=np.int64), np.ones((4, 64), np.float32), 2.0)
    np.testing.assert_array_equal(table.read(np.arange(4, dtype=np.int64)), -2.0)


@pytest.mark.parametrize("eviction", ["lru", "lfu"])
def test_sparse_growth_past_the_budget_evicts_where_the_table_has_max_rows(eviction):
    s = shard(2 * MIB)
    s.rows.create(SparseTableSpec("emb", 64, optimizer=OptimizerSpec("sgd", lr=1.0), max_rows=1 << 20,
                                  eviction=eviction))
    table = s.rows.tables["emb"]
    for batch in range(32):
        ids = np.arange(batch * 1024, (batch + 1) * 1024, dtype=np.int64)
        s.rows.push(0, batch + 1, 0, 0, 1, "emb", ids, np.ones((1024, 64), np.float32), 2.0)
        assert table.nbytes <= 2 * MIB
    assert table.counters["evicted"] > 0
    last = np.arange(31 * 1024, 32 * 1024, dtype=np.int64)
    np.testing.assert_array_equal(table.read(last), -1.0)  # the newest push's rows are stored


def test_a_sync_step_stores_the_new_rows_that_fit_and_counts_the_others():
    s = shard(2 * MIB, Mode.SYNC)
    s.rows.create(SparseTableSpec("emb", 64, optimizer=OptimizerSpec("sgd", lr=1.0)))
    table = s.rows.tables["emb"]
    ids = np.arange(16 * 1024, dtype=np.int64)  # 4 MiB of rows: twice the budget
    assert s.rows.push(0, 1, 0, 0, 1, "emb", ids, np.ones((len(ids), 64), np.float32), 2.0).outcome == "accumulated"
    assert 0 < table.rows < len(ids) and table.nbytes <= 2 * MIB
    assert table.counters["refused"] == len(ids) - table.rows


def test_a_push_too_big_even_after_evicting_everything_else_is_refused_and_evicts_nothing():
    s = shard(2 * MIB)
    s.rows.create(SparseTableSpec("emb", 64, optimizer=OptimizerSpec("sgd", lr=1.0), max_rows=1 << 20))
    table = s.rows.tables["emb"]
    s.rows.push(0, 1, 0, 0, 1, "emb", np.arange(1024, dtype=np.int64), np.ones((1024, 64), np.float32), 2.0)
    big = np.arange(10_000, 10_000 + 16 * 1024, dtype=np.int64)  # 4 MiB of rows at once
    with pytest.raises(ResourceExhaustedError):
        s.rows.push(0, 2, 0, 0, 1, "emb", big, np.ones((len(big), 64), np.float32), 2.0)
    assert table.rows == 1024 and table.counters["evicted"] == 0

"""Row pushes share the shard's gate and dedup: parts of a step, exactly once, sync means."""

import numpy as np
import pytest

from ps.config import ServerConfig
from ps.shard.consistency import Mode
from ps.errors import AlreadyExistsError, FailedPreconditionError, NotFoundError
from ps.tables.optim import OptimizerSpec
from ps.shard.shard import Shard
from ps.tables.sparse_spec import SparseTableSpec
from ps.tables.spec import TableSpec

EMB = SparseTableSpec("emb", 2, optimizer=OptimizerSpec("sgd", lr=1.0))
BIAS = TableSpec("b", (2,), optimizer=OptimizerSpec("sgd", lr=1.0))


def make_shard(mode: Mode, workers=(0, 1)) -> Shard:
    shard = Shard(ServerConfig(mode=mode, num_workers=len(workers), shard_index=0, num_shards=1,
                               sync_timeout_s=2.0))
    for w in workers:
        shard.register(w)
    shard.create_table(BIAS)
    assert shard.rows.create(EMB) and not shard.rows.create(EMB)
    return shard


def ids(*xs):
    return np.array(xs, dtype=np.int64)


def rows(n, value):
    return np.full((n, 2), value, dtype=np.float32)


def test_sync_step_counts_dense_and_row_messages_as_parts_and_applies_the_mean():
    shard = make_shard(Mode.SYNC)
    # worker 0: a dense part and a row part of step 0; worker 1: rows only
    r = shard.push(0, 1, 0, 0, 2, [("b", 0)], [np.ones(2, np.float32)], 5.0)
    assert r.outcome == "accumulated"
    r = shard.rows.push(0, 2, 0, 1, 2, "emb", ids(1, 2, 1), rows(3, 1.0), 5.0)
    assert r.outcome == "accumulated" and shard.gate.version == 0
    assert shard.rows.push(1, 1, 0, 0, 1, "emb", ids(2, 3), rows(2, 4.0), 5.0).outcome == "accumulated"
    assert shard.gate.version == 1, "the step completes once both workers sent all their parts"
    _, got = shard.rows.pull(0, 1, "emb", ids(1, 2, 3, 4), 1.0)
    np.testing.assert_allclose(got[:, 0], [-1.0, -2.5, -2.0, 0.0])   # (sum over workers) / 2
    # a retried row push is acknowledged, not applied again; an old step is stale
    assert shard.rows.push(0, 2, 0, 1, 2, "emb", ids(1), rows(1, 9.0), 1.0).outcome == "duplicate"
    assert shard.rows.push(0, 3, 0, 0, 1, "emb", ids(1), rows(1, 9.0), 1.0).outcome == "stale"
    np.testing.assert_array_equal(shard.rows.pull(0, 1, "emb", ids(1, 2, 3, 4), 1.0)[1], got)


def test_async_row_pushes_apply_on_arrival_exactly_once():
    shard = make_shard(Mode.ASYNC)
    for seq in (1, 2, 2, 3):
        shard.rows.push(0, seq, 0, 0, 1, "emb", ids(5), rows(1, 1.0), 1.0)
    assert shard.rows.pull(-1, 0, "emb", ids(5), 1.0)[1][0, 0] == -3.0
    assert shard.counters["duplicate"] == 1 and shard.gate.version == 3


def test_refused_row_pushes_change_nothing():
    shard = make_shard(Mode.ASYNC)
    with pytest.raises(NotFoundError):
        shard.rows.push(0, 1, 0, 0, 1, "nope", ids(1), rows(1, 1.0), 1.0)
    with pytest.raises(FailedPreconditionError, match="dense"):
        shard.rows.push(0, 1, 0, 0, 1, "b", ids(1), rows(1, 1.0), 1.0)
    with pytest.raises(FailedPreconditionError, match="not registered"):
        shard.rows.push(9, 1, 0, 0, 1, "emb", ids(1), rows(1, 1.0), 1.0)
    with pytest.raises(FailedPreconditionError, match="sparse"):
        shard.pull(0, 0, ["emb"], 0, 1, 1.0)
    assert shard.rows.tables["emb"].rows == 0 and shard.counters["refused"] == 2
    assert shard.rows.push(0, 1, 0, 0, 1, "emb", ids(1), rows(1, 1.0), 1.0).outcome == "applied"


def test_names_are_shared_between_dense_and_sparse_tables():
    shard = make_shard(Mode.ASYNC)
    with pytest.raises(AlreadyExistsError, match="dense"):
        shard.rows.create(SparseTableSpec("b", 2))
    with pytest.raises(AlreadyExistsError, match="sparse"):
        shard.create_table(TableSpec("emb", (2,)))
    with pytest.raises(AlreadyExistsError, match="different spec"):
        shard.rows.create(SparseTableSpec("emb", 3))


def test_nonfinite_skip_and_per_row_clipping_follow_the_shard_config():
    shard = Shard(ServerConfig(mode=Mode.ASYNC, shard_index=0, num_shards=1, nonfinite="skip", clip_norm=1.0))
    shard.register(0)
    shard.rows.create(EMB)
    bad = np.array([[np.nan, 1.0]], np.float32)
    assert shard.rows.push(0, 1, 0, 0, 1, "emb", ids(1), bad, 1.0).outcome == "stale"
    assert shard.rows.tables["emb"].rows == 0 and shard.counters["nonfinite_skipped"] == 1
    grads = np.array([[3.0, 4.0], [0.3, 0.4], [3.0, 4.0]], np.float32)   # id 2 twice: summed, then clipped
    shard.rows.push(0, 2, 1, 0, 1, "emb", ids(2, 3, 2), grads, 1.0)
    got = shard.rows.pull(0, 2, "emb", ids(2, 3), 1.0)[1]
    np.testing.assert_allclose(got, [[-0.6, -0.8], [-0.3, -0.4]], rtol=1e-6)

"""Non-finite gradients (refuse | skip | allow) and per-block norm clipping, on a shard."""

import numpy as np
import pytest

from ps.config import ServerConfig
from ps.shard.consistency import Mode
from ps.errors import InvalidArgumentError
from ps.tables.optim import OptimizerSpec
from ps.shard.shard import Shard
from ps.tables.spec import TableSpec

SPEC = TableSpec("w", (8,), block_elems=4, optimizer=OptimizerSpec(lr=1.0))  # plain SGD; two blocks


def shard(**config):
    s = Shard(ServerConfig(shard_index=0, num_shards=1, **config))
    s.create_table(SPEC)
    s.register(0)
    return s


def push(s, seq, grads, step=0, worker=0):
    return s.push(worker, seq, step, 0, 1, [("w", 0), ("w", 1)], [np.asarray(g, np.float32) for g in grads], 5.0)


def values(s):
    return np.concatenate([s.tables["w"].blocks[b].values for b in (0, 1)])


def test_refuse_is_the_default_and_changes_nothing():
    s = shard()
    with pytest.raises(InvalidArgumentError, match="NaN or Inf"):
        push(s, 1, [[1, 1, 1, 1], [np.nan, 0, 0, 0]])
    np.testing.assert_array_equal(values(s), np.zeros(8))


def test_skip_acknowledges_without_applying_and_counts():
    s = shard(nonfinite="skip")
    result = push(s, 1, [[1, 1, 1, 1], [np.inf, 0, 0, 0]])
    assert result.outcome == "stale" and s.counters["nonfinite_skipped"] == 1
    np.testing.assert_array_equal(values(s), np.zeros(8))          # not even the finite block
    assert push(s, 1, [[1, 1, 1, 1], [1, 1, 1, 1]]).outcome == "duplicate"   # seen: a retry stays dropped
    assert push(s, 2, [[1, 1, 1, 1], [1, 1, 1, 1]]).outcome == "applied"
    np.testing.assert_array_equal(values(s), -np.ones(8))


def test_skip_in_sync_mode_leaves_the_step_to_the_other_gradients():
    s = shard(nonfinite="skip", mode=Mode.SYNC)
    s.register(1)
    assert push(s, 1, [[np.nan] * 4, [np.nan] * 4], worker=0).outcome == "stale"
    assert push(s, 1, [[2, 2, 2, 2], [4, 4, 4, 4]], worker=1).outcome == "accumulated"
    assert s.gate.version == 1                                      # the step completed
    np.testing.assert_array_equal(values(s), [-2] * 4 + [-4] * 4)   # the mean of what was summed


def test_allow_applies_non_finite_values():
    s = shard(nonfinite="allow")
    push(s, 1, [[np.nan, 0, 0, 0], [0, 0, 0, 0]])
    assert np.isnan(values(s)[0])


def test_clip_norm_scales_each_block_to_the_bound():
    s = shard(clip_norm=1.0)
    push(s, 1, [[3, 4, 0, 0], [0.3, 0.4, 0, 0]])                     # norms 5 and 0.5
    np.testing.assert_allclose(values(s), [-0.6, -0.8, 0, 0, -0.3, -0.4, 0, 0], rtol=1e-6)

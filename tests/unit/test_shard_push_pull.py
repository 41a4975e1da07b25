"""Shard.push_pull (the fused push-then-pull every plane's PushPull uses) answers exactly as
Shard.push followed by Shard.pull: values, versions, outcomes, refusals, counters, the
per-block access counts and the placement admissions. No sockets: the Shard directly."""

import threading

import numpy as np
import pytest

from ps.config import ServerConfig
from ps.errors import FailedPreconditionError, Reason
from ps.shard.consistency import Mode
from ps.shard.shard import Shard
from ps.tables.optim import OptimizerSpec
from ps.tables.spec import TableSpec

W = TableSpec("w", (8,), block_elems=4, optimizer=OptimizerSpec("sgd", lr=1.0))
BLOCKS = [("w", 0), ("w", 1)]


def make_shard(mode=Mode.ASYNC, workers=(0,)) -> Shard:
    shard = Shard(ServerConfig(mode=mode, shard_index=0, num_shards=1, num_workers=len(workers), sync_timeout_s=5.0))
    shard.create_table(W)
    for w in workers:
        shard.register(w, session=7)
    return shard


def grads(value: float) -> list[np.ndarray]:
    return [np.full(4, value, np.float32) for _ in BLOCKS]


def push_pull(shard, worker, seq, step, pull_step, value=1.0, placement_version=0, pull_placement_version=0):
    shard.pull_tables(worker, ["w"], 0, 1, pushes=True)  # as the handler does first
    return shard.push_pull(worker, seq, step, 0, 1, BLOCKS, grads(value), 5.0, 7, placement_version,
                           reader=worker, pull_step=pull_step, tables=["w"], pull_part=0, pull_num_parts=1,
                           pull_placement_version=pull_placement_version)


def values(pulled) -> np.ndarray:
    return np.concatenate([np.frombuffer(b.data, np.float32) for b in sorted(pulled, key=lambda b: b.block)])


@pytest.mark.parametrize("mode", [Mode.ASYNC, Mode.SSP])
def test_a_fused_step_applies_then_reads_and_counts_like_a_push_then_a_pull(mode):
    fused, apart = make_shard(mode), make_shard(mode)
    for seq in (1, 2):
        result, (version, pulled) = push_pull(fused, 0, seq, seq - 1, seq - 1)
        expected = apart.push(0, seq, seq - 1, 0, 1, BLOCKS, grads(1.0), 5.0, 7)
        expected_version, expected_pulled = apart.pull(0, seq - 1, ["w"], 0, 1, 5.0, pushed=True)
        assert (result, version) == (expected, expected_version)
        assert result.outcome == "applied" and version == seq
        np.testing.assert_array_equal(values(pulled), values(expected_pulled))
        np.testing.assert_array_equal(values(pulled), np.full(8, -float(seq), np.float32))
        assert [b.version for b in pulled] == [seq, seq]
    for shard in (fused, apart):
        assert shard.accesses == {("w", 0): 4, ("w", 1): 4}  # 2 pushes and 2 pulls each
        assert (shard.counters["applied"], shard.counters["pulls"]) == (2, 2)
        assert not shard.admitted


def test_a_duplicate_fused_step_is_not_applied_again_and_still_reads():
    shard = make_shard()
    push_pull(shard, 0, 1, 0, 0)
    result, (version, pulled) = push_pull(shard, 0, 1, 0, 0)  # the retry of a step whose reply was lost
    assert (result.outcome, version) == ("duplicate", 1)
    np.testing.assert_array_equal(values(pulled), np.full(8, -1.0, np.float32))
    assert shard.accesses == {("w", 0): 3, ("w", 1): 3}  # one push, two pulls
    assert (shard.counters["applied"], shard.counters["duplicate"], shard.counters["pulls"]) == (1, 1, 2)
    assert not shard.admitted


def test_a_fused_pull_planned_with_another_map_is_refused_after_its_push_went_through():
    shard = make_shard()
    with pytest.raises(FailedPreconditionError) as info:
        push_pull(shard, 0, 1, 0, 0, pull_placement_version=shard.placement.version + 1)
    assert info.value.reason is Reason.PULL_MOVED
    assert shard.counters["applied"] == 1 and shard.counters["pulls"] == 0
    assert shard.accesses == {("w", 0): 1, ("w", 1): 1}  # the push only
    assert not shard.admitted
    result, (version, pulled) = push_pull(shard, 0, 1, 0, 0)  # the client's retry: acknowledged, not applied
    assert (result.outcome, version) == ("duplicate", 1)
    np.testing.assert_array_equal(values(pulled), np.full(8, -1.0, np.float32))


def test_a_fused_push_planned_with_another_map_is_refused_unapplied_and_nothing_is_read():
    shard = make_shard()
    with pytest.raises(FailedPreconditionError) as info:
        push_pull(shard, 0, 1, 0, 0, placement_version=shard.placement.version + 1)
    assert info.value.reason is Reason.MOVED
    assert shard.counters["applied"] == 0 and shard.counters["pulls"] == 0
    assert not shard.accesses and not shard.admitted


def test_sync_fused_steps_read_the_mean_of_the_step_once_every_worker_pushed():
    shard = make_shard(Mode.SYNC, workers=(0, 1))
    out = {}

    def step(worker, value):
        out[worker] = push_pull(shard, worker, 1, 0, 1, value=value)

    threads = [threading.Thread(target=step, args=(w, v)) for w, v in ((0, 1.0), (1, 3.0))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert not any(t.is_alive() for t in threads)
    for worker in (0, 1):
        result, (version, pulled) = out[worker]
        assert (result.outcome, version) == ("accumulated", 1)
        np.testing.assert_array_equal(values(pulled), np.full(8, -2.0, np.float32))  # lr 1, mean of 1 and 3
    assert shard.counters["steps"] == 1 and shard.counters["pulls"] == 2
    assert shard.accesses == {("w", 0): 4, ("w", 1): 4}
    assert not shard.admitted

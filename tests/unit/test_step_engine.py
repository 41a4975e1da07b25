"""The step engine over in-process shards: planning, parts and sequence numbers, fallback, rollback retries.

Real ``Shard`` objects, called directly through :class:`InProcessPlane` (no sockets): the
whole group runs in well under a second.
"""

from __future__ import annotations

import numpy as np
import pytest

from ps import Mode, ServerConfig
from ps.errors import AbortedError, FailedPreconditionError, InvalidArgumentError, Reason, UnavailableError
from ps.shard.shard import Shard
from ps.tables.optim import OptimizerSpec
from ps.tables.sparse_spec import SparseTableSpec
from ps.tables.spec import TableSpec
from worker.client.step_engine import StepEngine
from worker.client.step_plan import PIPELINE_PART_BYTES, StepPlanner
from worker.client.table_directory import TableDirectory
from worker.planes.inprocess_plane import InProcessPlane
from worker.planes.plane import DataPlane

SGD = OptimizerSpec.from_options("sgd", 1.0)
W = TableSpec(name="w", shape=(40, 5), dtype="float32", block_elems=16, optimizer=SGD)   # 13 blocks
B = TableSpec(name="b", shape=(5,), dtype="float32", block_elems=16, optimizer=SGD)
EMB = SparseTableSpec(name="emb", dim=3, dtype="float32", optimizer=SGD)


class Recording(DataPlane):
    """A plane that records every part it is given and passes it on to ``inner``; ``fail``
    (shard, part, seq, phase) -> an error to raise instead, once."""

    def __init__(self, inner: DataPlane, name: str = "recording", rows: bool = True, fail=None) -> None:
        self.inner, self.name, self.rows, self._fail = inner, name, rows, fail
        self.sent: list[tuple] = []
        self.dropped: list[int] = []

    def _maybe_fail(self, part, seq, phase):
        error = self._fail(part, seq, phase) if self._fail else None
        if error is not None:
            self._fail = None
            raise error

    def send(self, part, seq, step):
        self.sent.append((part.shard, part.part, part.num_parts, seq, part.table or "dense", part.pushes))
        self._maybe_fail(part, seq, "send")
        return self.inner.send(part, seq, step)

    def finish(self, sent, part, step):
        result = self.inner.finish(sent, part, step)  # the shard did its work ...
        self._maybe_fail(part, sent, "finish")         # ... and the reply is lost
        return result

    def drop(self, shard):
        self.dropped.append(shard)


def shards(n: int, mode: Mode = Mode.ASYNC, workers: int = 1) -> list[Shard]:
    out = [Shard(ServerConfig(mode=mode, num_workers=workers if mode != Mode.ASYNC else 0, shard_index=i,
                              num_shards=n)) for i in range(n)]
    for s in out:
        for spec in (W, B):
            s.create_table(spec)
        s.rows.create(EMB)
    return out


def engine(cluster: list[Shard], *, mode: str = "async", worker: int = 0, part_bytes: int = 1 << 20, fast=None,
           reconcile=None) -> tuple[StepEngine, Recording]:
    """An engine of worker ``worker`` over ``cluster``; its fallback records what it carries."""
    directory = TableDirectory([None] * len(cluster))  # knows every table: never asks a shard
    for spec in (W, B, EMB):
        directory.learn(spec)
    fallback = Recording(InProcessPlane(cluster), name="in-process")
    e = StepEngine(directory, StepPlanner(directory, len(cluster), part_bytes, part_bytes), fallback, timeout_s=5.0,
                   reconcile=reconcile)
    seqs = [s.register(worker, session=11)[2] for s in cluster]
    e.start(worker, 11, mode, 0, seqs, fast or [])
    return e, fallback


def grads(value: float = 1.0) -> dict[str, np.ndarray]:
    return {"w": np.full(W.shape, value, np.float32), "b": np.full(B.shape, value, np.float32)}


# -- planning, parts and sequence numbers ------------------------------------------------


def test_fused_parts_pull_exactly_the_blocks_they_push_in_message_sized_parts():
    directory = TableDirectory([None] * 2)
    directory.learn(W)
    parts = StepPlanner(directory, 2, part_bytes=3 * 64, local_part_bytes=1 << 20).dense(("w",), ("w",),
                                                                                           (False, False), "async")
    assert [(p.part, p.shard) for p in parts] == sorted((p.part, p.shard) for p in parts)  # interleaved
    for p in parts:
        assert p.push == p.pull_blocks and p.pull == ("w",)
        assert all(b % p.num_parts == p.part for _, b in p.push)
        assert all(b in directory.blocks("w", p.shard) for _, b in p.push)
        assert sum(W.block_range(b)[1] - W.block_range(b)[0] for _, b in p.push) * 4 <= 3 * 64
    assert sorted(b for p in parts for _, b in p.push) == list(range(W.num_blocks))


def test_pipelined_shards_get_parts_of_their_own_size_and_sync_gets_every_part():
    directory = TableDirectory([None] * 2)
    directory.learn(B)
    planner = StepPlanner(directory, 2, part_bytes=1 << 20, local_part_bytes=8)
    parts = planner.dense(("b",), None, (True, False), "sync")
    assert {p.shard for p in parts} == {0, 1}            # a shard without b's block gets an empty part
    assert all(p.num_parts == 1 for p in parts if p.shard == 1)
    assert planner.dense(("b",), None, (True, False), "sync") is parts  # planned once


def test_async_parts_over_the_network_are_pipeline_sized_and_sync_parts_message_sized():
    big = TableSpec(name="big", shape=(16 << 18,), dtype="float32", optimizer=SGD)  # 16 MiB: 16 blocks of 1 MiB
    directory = TableDirectory([None])
    directory.learn(big)
    planner = StepPlanner(directory, 1, part_bytes=16 << 20, local_part_bytes=4 << 20)
    per_part = lambda parts: {sum(big.block_range(b)[1] - big.block_range(b)[0] for _, b in p.push) * 4  # noqa: E731
                              for p in parts}
    overlapped = planner.dense(("big",), ("big",), (False,), "async")
    assert len(overlapped) == (16 << 20) // PIPELINE_PART_BYTES and per_part(overlapped) == {PIPELINE_PART_BYTES}
    for mode in ("sync", "ssp"):  # every part in flight at once: as few as fit a message
        assert len(planner.dense(("big",), ("big",), (False,), mode)) == 1
    small = StepPlanner(directory, 1, part_bytes=1 << 20, local_part_bytes=4 << 20)
    assert per_part(small.dense(("big",), ("big",), (False,), "async")) == {1 << 20}  # part_bytes still bounds
    assert len(planner.dense(("big",), ("big",), (True,), "async")) == 4  # same host: local_part_bytes


def test_async_parts_of_blocks_bigger_than_a_pipeline_part_hold_one_block_each():
    wide = TableSpec(name="wide", shape=(16 << 18,), dtype="float32", optimizer=SGD, block_elems=1 << 20)
    directory = TableDirectory([None])
    directory.learn(wide)  # 16 MiB in 4 blocks of 4 MiB, each bigger than PIPELINE_PART_BYTES
    planner = StepPlanner(directory, 1, part_bytes=16 << 20, local_part_bytes=4 << 20)
    parts = planner.dense(("wide",), ("wide",), (False,), "async")
    assert [p.push for p in parts] == [(("wide", b),) for b in range(4)]  # still overlapped, block by block
    assert len(planner.dense(("wide",), ("wide",), (False,), "sync")) == 1
    assert StepPlanner(directory, 1, part_bytes=2 << 20, local_part_bytes=4 << 20).dense(
        ("wide",), ("wide",), (False,), "async") is None  # a block beyond part_bytes: no fused plan, as before


def test_each_pushing_part_takes_the_next_sequence_number_of_its_shard():
    cluster = shards(2)
    e, rec = engine(cluster, part_bytes=128)
    first_seqs = [s.dedup.next_seq(0) for s in cluster]
    e.push(grads())
    e.pull(["w", "b"])
    e.push_pull(grads())
    pushed = [x for x in rec.sent if x[5]]
    for shard in (0, 1):
        seqs = [x[3] for x in pushed if x[0] == shard]
        assert seqs == list(range(first_seqs[shard], first_seqs[shard] + len(seqs)))
    assert all(x[3] == 0 for x in rec.sent if not x[5])       # pulls carry none
    assert e.clock == 2 and e.stats["applied"] == len(pushed)


def test_values_come_back_whole_from_many_parts_of_many_shards():
    cluster = shards(3)
    e, _ = engine(cluster, part_bytes=64)
    got = e.push_pull(grads(2.0), ["w", "b"])
    np.testing.assert_array_equal(got["w"], np.full(W.shape, -2.0))
    out = {"w": np.empty(W.shape, np.float32)}
    assert e.pull("w", out=out)["w"] is out["w"]
    np.testing.assert_array_equal(out["w"], -2.0)
    with pytest.raises(InvalidArgumentError):
        e.push({"w": np.ones((40, 4), np.float32)})   # checked before anything is sent
    assert e.clock == 1


def test_dense_and_rows_go_as_one_step_with_one_part_count_per_shard():
    cluster = shards(2, Mode.SYNC)
    e, rec = engine(cluster, mode="sync", part_bytes=128)
    ids = np.array([5, 1, 5, 900, 33], np.int64)
    e.push({"b": np.ones(5, np.float32)}, rows={"emb": (ids, np.ones((5, 3), np.float32))})
    assert e.clock == 1 and e.stats["accumulated"] == len(rec.sent)
    for shard in (0, 1):
        mine = [x for x in rec.sent if x[0] == shard]
        assert sorted(x[1] for x in mine) == list(range(len(mine)))
        assert {x[2] for x in mine} == {len(mine)}
        assert {x[4] for x in mine} >= {"emb"}
    rows = e.pull_rows("emb", [1, 5, 900, 5])                 # waits for the step: it was applied
    np.testing.assert_array_equal(rows, [[-1] * 3, [-2] * 3, [-1] * 3, [-2] * 3])
    np.testing.assert_array_equal(e.pull("b")["b"], -1.0)


def test_rows_take_the_fallback_where_the_shards_plane_carries_none():
    cluster = shards(2)
    fast = Recording(InProcessPlane(cluster), name="fast", rows=False)
    e, rec = engine(cluster, fast=[fast, fast])
    e.push({"w": np.ones(W.shape, np.float32)}, rows={"emb": ([3, 4], np.ones((2, 3), np.float32))})
    assert {x[4] for x in fast.sent} == {"dense"} and {x[4] for x in rec.sent} == {"emb"}
    assert e.planes() == ["fast", "fast"]


# -- fallback -------------------------------------------------------------------------------


@pytest.mark.parametrize("phase", ["send", "finish"])
def test_a_failed_fast_plane_sends_the_part_again_over_the_fallback_with_the_same_number(phase):
    cluster = shards(2)
    fail = lambda part, seq, at: UnavailableError("gone") if at == phase and part.shard == 1 else None  # noqa: E731
    fast = Recording(InProcessPlane(cluster), name="fast", fail=fail)
    e, rec = engine(cluster, fast=[fast, fast])
    e.push(grads())
    (again,) = rec.sent
    assert again[0] == 1 and again[3] == next(x[3] for x in fast.sent if x[0] == 1)
    assert fast.dropped == [1] and e.planes() == ["fast", "in-process"]
    np.testing.assert_array_equal(e.pull("w")["w"], -1.0)     # applied once
    assert e.stats["duplicate"] == (phase == "finish")


def test_a_shard_that_forgot_the_worker_is_tried_again_over_the_fallback_which_rejoins():
    cluster = shards(1)
    lost = FailedPreconditionError("worker 0 is gone", reason=Reason.NOT_REGISTERED)
    fast = Recording(InProcessPlane(cluster), name="fast", fail=lambda part, seq, at: lost if at == "send" else None)
    e, rec = engine(cluster, fast=[fast])
    e.push(grads())
    assert len(rec.sent) == 1 and e.planes() == ["fast"]      # not a transport failure: the plane stays


def test_other_errors_of_a_fast_plane_reach_the_caller():
    cluster = shards(1)
    refused = InvalidArgumentError("no")
    fast = Recording(InProcessPlane(cluster), name="fast", fail=lambda part, seq, at: refused)
    e, rec = engine(cluster, fast=[fast])
    with pytest.raises(InvalidArgumentError):
        e.push(grads())
    assert rec.sent == []


# -- rollbacks ------------------------------------------------------------------------------


def aborting(cluster, times: int = 1, reason: Reason = Reason.ROLLED_BACK):
    left = [times]

    def fail(part, seq, at):
        if at == "send" and left[0]:
            left[0] -= 1
            return AbortedError("the cluster rolled back", reason=reason)
        return None

    return Recording(InProcessPlane(cluster), name="fast", fail=fail)


def test_without_a_rollback_the_aborted_step_is_sent_again_with_the_same_numbers():
    cluster = shards(1, Mode.SYNC)
    fast = aborting(cluster)
    calls = []
    e, _ = engine(cluster, mode="sync", fast=[fast], reconcile=lambda: calls.append(1) or (None, [1]))
    e.push(grads())
    assert calls == [1] and e.clock == 1
    assert fast.sent[0][3] == fast.sent[1][3]                  # the same sequence number
    np.testing.assert_array_equal(e.pull("w")["w"], -1.0)


def test_after_a_rollback_a_push_is_dropped_and_a_push_pull_pulls_at_the_restored_step():
    cluster = shards(1, Mode.SYNC)
    fast = aborting(cluster)
    e, _ = engine(cluster, mode="sync", fast=[fast], reconcile=lambda: (0, [40]))
    got = e.push_pull(grads())
    assert e.stats["rolled_back"] == 1 and e.clock == 0
    np.testing.assert_array_equal(got["w"], 0.0)              # nothing was applied
    e.push(grads())
    assert fast.sent[-1][3] == 40                              # numbers never go below the shard's


def test_an_abort_for_another_reason_is_not_a_rollback():
    cluster = shards(1, Mode.SYNC)
    e, _ = engine(cluster, mode="sync", fast=[aborting(cluster, reason=Reason.NONE)],
                  reconcile=lambda: pytest.fail("reconciled"))
    with pytest.raises(AbortedError):
        e.push(grads())


def test_the_real_shard_aborts_a_fenced_worker_and_the_retry_pulls_afresh():
    cluster = shards(1, Mode.SYNC)
    shard = cluster[0]

    def reconcile():  # what Membership.reconcile does over gRPC: resync, which lifts the fence
        shard.unfence(0)
        _, clock, next_seq = shard.register(0, session=11)
        return clock, [next_seq]

    e, _ = engine(cluster, mode="sync", reconcile=reconcile)
    e.push(grads())
    shard.fenced.add(0)                                        # as after a rollback
    assert e.stats.get("rolled_back", 0) == 0
    np.testing.assert_array_equal(e.pull("w")["w"], -1.0)
    assert e.stats["rolled_back"] == 1

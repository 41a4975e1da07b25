"""A shard's per-push bookkeeping: the per-block access counts (ps-admin rebalance, kept on
each block under its lock) count applied or accumulated pushes and pulls only, and no
placement admission stays open after any outcome (run_push's done hook releases it). No
sockets: the Shard directly."""

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


def make_shard(mode=Mode.ASYNC) -> Shard:
    shard = Shard(ServerConfig(mode=mode, shard_index=0, num_shards=1, num_workers=1, sync_timeout_s=5.0))
    shard.create_table(W)
    shard.register(0, session=7)
    return shard


def accesses(shard) -> dict:
    """(table, block) -> the access count ``ps-admin rebalance`` reads (Shard.loads)."""
    held, _ = shard.loads()
    return {(table, block): count for table, rows, block, _, count in held if not rows}


def push(shard, seq, step=0, placement_version=0):
    return shard.push(0, seq, step, 0, 1, BLOCKS, [np.ones(4, np.float32)] * 2, 5.0, 7, placement_version)


@pytest.mark.parametrize("mode", [Mode.ASYNC, Mode.SYNC])
def test_applied_pushes_and_pulls_are_counted_per_block_and_release_their_admission(mode):
    shard = make_shard(mode)
    assert push(shard, 1, placement_version=shard.placement.version).outcome in ("applied", "accumulated")
    assert not shard.admitted
    version, pulled = shard.pull(0, 1 if mode is Mode.SYNC else 0, ["w"], 0, 1, 5.0)
    assert version == 1 and [b.version for b in pulled] == [1, 1]
    assert accesses(shard) == {("w", 0): 2, ("w", 1): 2}


def test_a_duplicate_or_refused_push_counts_no_access_and_leaves_no_admission():
    shard = make_shard()
    push(shard, 1)
    assert push(shard, 1).outcome == "duplicate"
    with pytest.raises(FailedPreconditionError) as info:
        push(shard, 2, placement_version=shard.placement.version + 1)
    assert info.value.reason is Reason.MOVED
    assert accesses(shard) == {("w", 0): 1, ("w", 1): 1}
    assert not shard.admitted
    assert (shard.counters["applied"], shard.counters["duplicate"]) == (1, 1)


def test_a_sync_push_stays_admitted_until_the_step_it_completes_is_applied():
    shard = make_shard(Mode.SYNC)
    seen_during_apply = []
    pending = shard._pending
    apply_step = pending.apply_step

    def observed(scale):  # a move waits for admitted pushes: the step's mean must be in the blocks first
        seen_during_apply.append(dict(shard.admitted))
        apply_step(scale)

    pending.apply_step = observed
    version = shard.placement.version
    assert push(shard, 1, placement_version=version).outcome == "accumulated"
    assert seen_during_apply == [{version: 1}]
    assert not shard.admitted and shard.counters["steps"] == 1

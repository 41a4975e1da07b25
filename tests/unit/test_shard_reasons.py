"""The shard names why a call failed where the client must act on it (ps.errors.Reason),
and a refused request changes nothing. No sockets: the Shard and its parts directly."""

import numpy as np
import pytest

from ps.config import ServerConfig
from ps.errors import AbortedError, FailedPreconditionError, NotFoundError, Reason
from ps.shard.consistency import Mode
from ps.shard.membership import Membership
from ps.shard.recovery import Recovery
from ps.shard.sequencer import Sequencer
from ps.shard.shard import Shard
from ps.shard.sparse_rows import SparseRows
from ps.tables.optim import OptimizerSpec
from ps.tables.sparse_spec import SparseTableSpec
from ps.tables.spec import TableSpec

W = TableSpec("w", (4,), optimizer=OptimizerSpec("sgd", lr=1.0))
EMB = SparseTableSpec("emb", 2, optimizer=OptimizerSpec("sgd", lr=1.0))


def make_shard(mode=Mode.ASYNC) -> Shard:
    shard = Shard(ServerConfig(mode=mode, shard_index=0, num_shards=1, sync_timeout_s=2.0))
    shard.create_table(W)
    shard.rows.create(EMB)
    return shard


def push(shard, worker, seq, session=0, table="w"):
    return shard.push(worker, seq, 0, 0, 1, [(table, 0)], [np.ones(4, np.float32)], 1.0, session)


def reason(call) -> Reason:
    with pytest.raises((AbortedError, FailedPreconditionError, NotFoundError)) as info:
        call()
    return info.value.reason


def test_each_kind_of_refusal_carries_its_reason():
    shard = make_shard()
    assert reason(lambda: push(shard, 3, 1)) is Reason.NOT_REGISTERED
    assert reason(lambda: shard.membership.heartbeat(3)) is Reason.NOT_REGISTERED
    assert reason(lambda: shard.membership.leave(3)) is Reason.NOT_REGISTERED
    shard.register(0, session=11)
    assert reason(lambda: push(shard, 0, 1, table="nope")) is Reason.UNKNOWN_TABLE
    assert reason(lambda: shard.pull(0, 0, ["nope"], 0, 1, 1.0)) is Reason.UNKNOWN_TABLE
    assert reason(lambda: shard.rows.pull(0, 0, "nope", np.zeros(1, np.int64), 1.0)) is Reason.UNKNOWN_TABLE
    shard.register(0, session=12)                      # another client takes the id over
    assert reason(lambda: push(shard, 0, 1, session=11)) is Reason.FENCED
    assert push(shard, 0, 1, session=12).outcome == "applied"
    shard.membership.leave(0, session=12)
    assert reason(lambda: push(shard, 0, 2, session=12)) is Reason.NOT_REGISTERED   # left: register again
    assert shard.counters["applied"] == 1


def test_a_rollback_fences_with_its_reason_until_the_worker_resyncs():
    shard = make_shard(Mode.SYNC)
    shard.register(0)
    shard.recovery.restored("k", 0, await_decision=True)
    assert reason(lambda: push(shard, 0, 1)) is Reason.ROLLED_BACK
    assert reason(lambda: shard.pull(0, 0, ["w"], 0, 1, 1.0)) is Reason.ROLLED_BACK
    assert shard.recovery.rollback("decided", 1.0) is False and not shard.membership.awaiting_rollback
    shard.membership.fenced = {0}   # as a rollback leaves it (Recovery.rollback)
    assert reason(lambda: push(shard, 0, 1)) is Reason.ROLLED_BACK
    assert shard.membership.unfence(0)
    assert push(shard, 0, 1).outcome == "accumulated" and shard.gate.version == 1   # the one worker: step applied


def test_a_pull_is_refused_before_it_waits_or_abstains():
    shard = Shard(ServerConfig(mode=Mode.SYNC, num_workers=2, shard_index=0, num_shards=1, sync_timeout_s=2.0))
    shard.create_table(W)
    for w in (0, 1):
        shard.register(w)
    assert reason(lambda: shard.pull(0, 1, ["w", "nope"], 0, 1, 1.0)) is Reason.UNKNOWN_TABLE
    assert shard.gate.workers[0].clock == 0 and shard.gate.version == 0   # did not abstain from step 0


def test_the_parts_are_objects_with_their_own_state():
    shard = make_shard()
    assert isinstance(shard.steps, Sequencer) and isinstance(shard.membership, Membership)
    assert isinstance(shard.recovery, Recovery) and isinstance(shard.rows, SparseRows)
    assert not any(isinstance(shard, kind) for kind in (Membership, Recovery, SparseRows))
    shard.register(5)
    assert 5 in shard.membership.last_contact and 5 in shard.gate.workers
    assert shard.gate is shard.steps.gate and shard.counters is shard.steps.counters


def test_sessions_are_ordered_a_stale_one_never_takes_the_id_back():
    """A smaller (older) session is refused at Register, push and heartbeat; a session the
    shard does not hold the id for (restored without sessions) must register first."""
    shard = make_shard()
    shard.register(0, session=20)
    assert reason(lambda: shard.register(0, session=19)) is Reason.FENCED     # older: refused, not a takeover
    assert reason(lambda: shard.membership.heartbeat(0, session=19)) is Reason.FENCED
    assert shard.membership.heartbeat(0, session=20) == shard.steps.epoch
    assert shard.membership.heartbeat(0, session=21) == shard.steps.epoch      # not held, not newer there: no objection
    shard.membership.sessions.clear()                                           # as after a restore from a checkpoint
    assert reason(lambda: push(shard, 0, 1, session=19)) is Reason.NOT_REGISTERED   # register first: never a claim
    assert 0 not in shard.membership.sessions
    shard.register(0, session=21)
    assert push(shard, 0, 1, session=21).outcome == "applied"
    assert reason(lambda: push(shard, 0, 2, session=20)) is Reason.FENCED
    assert shard.counters["takeovers"] == 0 and shard.counters["fenced_pushes"] == 1

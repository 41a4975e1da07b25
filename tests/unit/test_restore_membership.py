"""Who is in the quorum after a restore, and which ids automatic registrations get.

A second ``docker compose up`` with the checkpoint volume kept restores the first run's
final checkpoints, in which every worker had left. Those workers must not come back live
(a sync step would wait for them) and their ids must be free again for the new run's
``--rank auto`` workers, which are refused at ids >= ``--num-workers``. Socket-free:
shards are ``ps.shard.shard.Shard`` objects driven directly, checkpoints real files.
"""

import pytest

from ps.checkpoint import state as checkpoint
from ps.config import ServerConfig
from ps.shard.consistency import ConsistencyGate, Mode
from ps.shard.shard import Shard
from tests.unit.test_checkpoint import SPEC, push, save


def shard_of(num_workers: int, mode: Mode = Mode.SYNC) -> Shard:
    shard = Shard(ServerConfig(shard_index=0, num_shards=1, mode=mode, num_workers=num_workers))
    shard.create_table(SPEC)
    return shard


def restore(tmp_path, num_workers: int, mode: Mode = Mode.SYNC) -> Shard:
    """A new shard with ``tmp_path``'s newest checkpoint installed, as ``ps-server --restore``."""
    state = checkpoint.load(str(tmp_path), 0, 1)
    assert state is not None
    shard = Shard(ServerConfig(shard_index=0, num_shards=1, mode=mode, num_workers=num_workers))
    checkpoint.install(shard, state)
    return shard


def finished_run(tmp_path, mode: Mode = Mode.SYNC, steps: int = 3) -> int:
    """Two automatic workers train ``steps`` sync steps and leave; the final checkpoint is
    written. Returns the version it holds."""
    shard = shard_of(2, mode)
    ids = [shard.register(-1, session=s)[0] for s in (11, 13)]
    assert ids == [0, 1]
    for step in range(steps):
        for w in ids:
            push(shard, w, step + 1, 1.0, step=step)
    for w in ids:
        shard.leave(w, session=11 if w == 0 else 13)
    assert shard.gate.live_workers() == [] and shard.gate.departed() == [0, 1]
    save(shard, tmp_path, "final")
    return shard.gate.version


def test_a_finished_runs_checkpoint_restores_with_nobody_live_and_ids_from_zero(tmp_path):
    version = finished_run(tmp_path)
    again = restore(tmp_path, num_workers=2)
    assert again.gate.version == version and again.gate.live_workers() == []
    # the next run's automatic workers get ids 0 and 1 again (before the fix: 2 and 3),
    # and their sequence numbers go on from the restored dedup table (exactly-once)
    first, second = again.register(-1, session=21), again.register(-1, session=23)
    assert (first[0], second[0]) == (0, 1)
    assert first[1] == second[1] == version and first[2] == 1 + 3


def test_after_a_finished_run_the_first_sync_step_waits_for_the_whole_new_quorum(tmp_path):
    version = finished_run(tmp_path)
    again = restore(tmp_path, num_workers=2)
    worker, clock, seq = again.register(-1, session=21)
    assert push(again, worker, seq, 1.0, step=clock) == "accumulated"
    assert again.gate.version == version                  # the other expected worker has not joined
    other, clock, seq = again.register(-1, session=23)
    assert push(again, other, seq, 1.0, step=clock) == "accumulated"
    assert again.gate.version == version + 1


def test_workers_that_left_mid_run_come_back_departed_and_free_their_ids(tmp_path):
    shard = shard_of(2)
    for w in (0, 1):
        shard.register(w, session=31 + w)
        push(shard, w, 1, 1.0, step=0)
    shard.leave(1, session=32)                            # worker 1 finished early; worker 0 trains on
    save(shard, tmp_path, "periodic")
    again = restore(tmp_path, num_workers=2)
    assert again.gate.live_workers() == [0] and again.gate.departed() == [1]
    worker, clock, seq = again.register(0, session=31)    # the running worker finds the restarted shard
    assert push(again, worker, seq, 1.0, step=clock) == "accumulated"
    assert again.gate.version == 2                        # no step waits for the worker that left
    assert again.register(-1, session=35)[0] == 1         # a replacement takes the free id


def test_within_one_run_an_automatic_id_is_never_handed_out_twice():
    # async workers that finish before the others registered: the next one must not take the
    # finished worker's id, or two workers would train on the same rank's data
    shard = shard_of(3, Mode.ASYNC)
    assert shard.register(-1, session=1)[0] == 0
    shard.leave(0, session=1)
    assert [shard.register(-1, session=s)[0] for s in (3, 5)] == [1, 2]
    assert shard.register(-1, session=7)[0] == 3          # past --num-workers: ps-worker refuses the rank
    unbounded = shard_of(0, Mode.ASYNC)                    # no --num-workers: the same
    assert [unbounded.register(-1)[0] for _ in range(2)] == [0, 1]
    unbounded.leave(0)
    assert unbounded.register(-1)[0] == 2


def test_a_checkpoint_without_the_departed_list_restores_every_worker_live(tmp_path):
    shard = shard_of(2)
    for w in (0, 1):
        shard.register(w)
    state = checkpoint.capture(shard, "older-format")
    state.left = []                                        # what checkpoints from before held
    checkpoint.write(str(tmp_path), state)
    again = restore(tmp_path, num_workers=2)
    assert again.gate.live_workers() == [0, 1] and again.gate.departed() == []


@pytest.mark.parametrize("left, live, departed", [
    ({0: [0, 1], 1: [1]}, [0], [1]),                       # departed only where every shard says so
    ({0: [0, 1], 1: [0, 1]}, [], [0, 1]),
    ({0: [], 1: []}, [0, 1], []),
])
def test_restoring_onto_another_shard_count_merges_who_had_left(tmp_path, left, live, departed):
    for index in (0, 1):
        state = checkpoint.ShardState(tag="cluster", shard_index=index, num_shards=2, version=4, epoch=0,
                                      mode="async", clocks={0: 4, 1: 4}, dedup={}, cluster=True,
                                      left=left[index])
        checkpoint.write(str(tmp_path), state)
    state = checkpoint.load(str(tmp_path), 0, 1)
    assert state.left == departed
    shard = Shard(ServerConfig(shard_index=0, num_shards=1, mode=Mode.ASYNC, num_workers=2))
    checkpoint.install(shard, state)
    if departed == [0, 1]:                                 # a finished run: the gate starts over
        assert shard.gate.workers == {}
    else:
        assert shard.gate.live_workers() == live and shard.gate.departed() == departed


def test_the_gate_loads_departed_workers_and_forgets_a_finished_run():
    gate = ConsistencyGate(Mode.SYNC, num_workers=2)
    gate.load(5, {0: 5, 1: 4}, left=[1])
    assert gate.live_workers() == [0] and gate.departed() == [1] and gate.version == 5
    gate.load(5, {0: 5, 1: 5}, left=[0, 1])
    # the next run starts over: it waits for its --num-workers workers, none registered yet
    assert gate.workers == {} and gate.waiting_for() == (0, 1) and gate.never_registered() == (0, 1)
    gate.load(5, {0: 5, 1: 5})
    assert gate.live_workers() == [0, 1]


def test_restored_ids_are_free_for_automatic_workers_until_heard_from(tmp_path):
    shard = shard_of(3)
    for w in (0, 1, 2):
        shard.register(w, session=41 + w)
    shard.leave(2, session=43)
    save(shard, tmp_path, "interrupted")                  # stopped while workers 0 and 1 were live
    again = restore(tmp_path, num_workers=3)
    assert again.gate.live_workers() == [0, 1] and again.unheard == {0, 1, 2}
    again.heartbeat(1)                                     # worker 1 is still running: its id stays its own
    assert [again.register(-1, session=s)[0] for s in (51, 53)] == [0, 2]
    assert again.unheard == set()
    assert again.register(-1, session=55)[0] == 3          # every id below --num-workers is held now

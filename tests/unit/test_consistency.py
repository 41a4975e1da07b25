"""The consistency gate as a pure state machine: no sockets, threads or clocks."""

import pytest

from ps.shard.consistency import Accumulate, ConsistencyGate, Mode, Proceed, Stale, StepReady, Wait
from ps.errors import FailedPreconditionError, InvalidArgumentError


def sync_gate(workers=3, expected=0, k=0):
    """A sync gate with ``workers`` registered; ``expected`` cluster size, ``k`` backup quorum."""
    gate = ConsistencyGate(Mode.SYNC, num_workers=expected, replicas_to_aggregate=k)
    for w in range(workers):
        gate.register(w)
    return gate


def contribute(gate, worker, step=0):
    assert gate.on_push(worker, step, 0, 1) == Accumulate(step)
    return gate.on_part_done(worker, step)


def test_async_applies_on_arrival_and_never_waits():
    gate = ConsistencyGate(Mode.ASYNC)
    gate.register(0)
    assert gate.on_push(0, 0, 0, 1) == Proceed()
    gate.on_applied(0, 0)
    assert gate.version == 1
    assert gate.on_pull(0, 100) == Proceed()


def test_sync_step_completes_once_every_live_worker_contributed():
    gate = sync_gate(3)
    assert contribute(gate, 0) is None
    assert contribute(gate, 2) is None
    assert gate.waiting_for() == (1,)
    pull = gate.on_pull(0, 1)
    assert isinstance(pull, Wait) and pull.waiting_for == (1,)
    assert contribute(gate, 1) == StepReady(step=0, contributors=3)
    gate.on_step_applied(StepReady(0, 3))
    assert gate.version == 1 and gate.on_pull(0, 1) == Proceed()


def test_sync_multi_part_push_counts_once_all_parts_arrived():
    gate = sync_gate(1)
    assert gate.on_push(0, 0, 1, 2) == Accumulate(0)
    assert gate.on_part_done(0, 0) is None
    assert gate.on_push(0, 0, 0, 2) == Accumulate(0)
    assert gate.on_part_done(0, 0) == StepReady(0, 1)


def test_sync_stale_push_is_dropped_and_future_push_waits():
    gate = sync_gate(1)
    ready = contribute(gate, 0)
    gate.on_step_applied(ready)
    assert gate.on_push(0, 0, 0, 1) == Stale(step=0, version=1)
    assert isinstance(gate.on_push(0, 2, 0, 1), Wait)


def test_sync_second_contribution_and_bad_parts_are_refused():
    gate = sync_gate(2)
    contribute(gate, 0)
    with pytest.raises(FailedPreconditionError, match="already contributed"):
        gate.on_push(0, 0, 0, 1)
    with pytest.raises(InvalidArgumentError):
        gate.on_push(1, 0, 3, 2)


def test_leaving_worker_releases_the_step():
    gate = sync_gate(3)
    contribute(gate, 0)
    contribute(gate, 1)
    assert gate.leave(2) == StepReady(step=0, contributors=2)
    with pytest.raises(FailedPreconditionError, match="left"):
        gate.on_push(2, 1, 0, 1)
    gate.on_step_applied(StepReady(0, 2))
    assert gate.register(2) == 1               # rejoins at the cluster's step
    assert gate.on_push(2, 1, 0, 1) == Accumulate(1)


def test_sync_waits_for_the_expected_cluster_to_form():
    gate = sync_gate(1, expected=2)
    assert contribute(gate, 0) is None  # worker 1 has not registered yet
    wait = gate.on_pull(0, 1)
    assert isinstance(wait, Wait) and wait.unregistered == 1 and "worker 1 (never registered)" in wait.describe()
    gate.register(1)
    assert contribute(gate, 1) == StepReady(0, 2)


def test_a_worker_that_never_registered_is_named_by_id():
    # --num-workers 3, ranks 0 and 2 came: every worker has contributed, yet the step
    # waits, and it says for whom (before, waiting_for was empty: "no step waiting")
    gate = ConsistencyGate(Mode.SYNC, num_workers=3)
    gate.register(0)
    gate.register(2)
    assert contribute(gate, 0) is None and contribute(gate, 2) is None
    assert gate.never_registered() == (1,)
    assert gate.waiting_for() == (1,)
    wait = gate.on_pull(0, 1)
    assert wait.waiting_for == (1,) and wait.never_registered == (1,)
    assert wait.describe().endswith("waiting for worker 1 (never registered)")
    gate.register(1)
    assert gate.never_registered() == () and gate.waiting_for() == (1,)    # now it owes step 0
    # a worker waited for and one missing, in order; in ssp the missing ones too
    gate = ConsistencyGate(Mode.SYNC, num_workers=4)
    gate.register(1)
    gate.register(3)
    assert gate.waiting_for() == (0, 1, 2, 3)
    assert contribute(gate, 1) is None
    assert gate.waiting_for() == (0, 2, 3)
    assert gate.on_pull(1, 1).describe().endswith("worker 3, worker 0 (never registered), worker 2 (never registered)")
    ssp = ConsistencyGate(Mode.SSP, staleness=0, num_workers=2)
    ssp.register(0)
    assert ssp.waiting_for() == (1,) and ssp.on_pull(0, 1).never_registered == (1,)
    assert ConsistencyGate(Mode.ASYNC, num_workers=2).waiting_for() == ()


def test_in_flight_part_holds_the_step_even_if_its_worker_leaves():
    gate = sync_gate(2)
    contribute(gate, 0)
    assert gate.on_push(1, 0, 0, 1) == Accumulate(0)
    assert gate.leave(1) is None        # its part is still being summed
    assert gate.on_part_done(1, 0) == StepReady(0, 2)


def test_ssp_bound():
    gate = ConsistencyGate(Mode.SSP, staleness=1, num_workers=2)
    gate.register(0)
    gate.register(1)
    for step in range(2):
        assert gate.on_push(0, step, 0, 1) == Proceed()
        gate.on_applied(0, step)
    assert gate.on_pull(0, 1) == Proceed()      # clock 1 - 1 = 0 <= slowest (0)
    wait = gate.on_pull(0, 2)                   # needs the slowest at >= 1
    assert isinstance(wait, Wait) and wait.waiting_for == (1,)
    gate.on_applied(1, 0)
    assert gate.on_pull(0, 2) == Proceed()


def test_ssp_zero_is_a_barrier():
    gate = ConsistencyGate(Mode.SSP, staleness=0)
    gate.register(0)
    gate.register(1)
    gate.on_applied(0, 0)
    assert isinstance(gate.on_pull(0, 1), Wait)
    gate.on_applied(1, 0)
    assert gate.on_pull(0, 1) == Proceed()


def test_unregistered_worker_is_refused():
    gate = ConsistencyGate(Mode.ASYNC)
    with pytest.raises(FailedPreconditionError, match="not registered"):
        gate.on_push(7, 0, 0, 1)


def test_observers_never_wait():
    gate = sync_gate(2)
    assert gate.on_pull(-1, 10) == Proceed()


def test_a_move_hold_holds_pushes_from_the_first_open_step_and_outlives_a_checkpoint_release():
    gate = sync_gate(2)
    assert gate.first_open_step() == 0
    assert contribute(gate, 0) is None
    assert gate.first_open_step() == 1  # step 0 started: the boundary is the next step
    gate.hold_for_move(1)
    assert gate.move_held(0) is None  # the step before the boundary goes on
    held = gate.move_held(1)
    assert isinstance(held, Wait) and "placement move settles at step 1" in held.describe()
    gate.hold(from_step=5)
    gate.release()  # a checkpoint's release leaves the move's hold
    assert isinstance(gate.move_held(2), Wait)
    assert contribute(gate, 1) == StepReady(step=0, contributors=2)
    gate.on_step_applied(StepReady(0, 2))
    assert gate.first_open_step() == 1 and not gate.step_started()
    gate.release_move()
    assert gate.move_held(1) is None

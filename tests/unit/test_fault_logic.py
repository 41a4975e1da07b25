"""The pure fault-tolerance logic: backup workers, abstaining readers, resync after a
restore, checkpoint holds, leases, dedup export and gradient clipping. No sockets."""

import numpy as np

from ps.tables.clipping import clip_by_norm
from ps.shard.consistency import Accumulate, ConsistencyGate, Mode, Proceed, Stale, StepReady, Wait
from ps.shard.dedup import DedupTable
from ps.shard.lease import expired
from tests.unit.test_consistency import contribute, sync_gate




def test_backup_workers_apply_once_k_contributed_and_late_ones_are_stale():
    gate = sync_gate(4, k=3)
    assert contribute(gate, 0) is None and contribute(gate, 1) is None
    ready = contribute(gate, 2)
    assert ready == StepReady(step=0, contributors=3)
    gate.on_step_applied(ready)
    assert gate.on_push(3, 0, 0, 1) == Stale(step=0, version=1)


def test_backup_workers_need_every_live_worker_when_fewer_than_k_are_live():
    gate = sync_gate(3, k=3)
    gate.leave(2)
    contribute(gate, 0)
    assert contribute(gate, 1) == StepReady(step=0, contributors=2)


def test_a_reader_ahead_of_the_step_abstains_from_it():
    gate = sync_gate(2)
    contribute(gate, 0)
    gate.on_step_applied(contribute(gate, 1))               # step 0 applied: version 1
    contribute(gate, 0, step=1)
    # worker 1 reads step 2 without having sent step 1 (its gradient died with a shard)
    assert gate.on_pull(1, 2) == StepReady(step=1, contributors=1)


def test_reader_that_contributed_waits_normally():
    gate = sync_gate(2)
    contribute(gate, 0)
    assert isinstance(gate.on_pull(0, 1), Wait)


def test_loaded_gate_adopts_the_step_of_workers_ahead_of_it():
    gate = ConsistencyGate(Mode.SYNC)
    gate.load(5, {0: 5, 1: 5})
    assert gate.on_push(0, 8, 0, 1) == Accumulate(8)        # fast-forwarded to the workers' step
    assert gate.version == 8 and gate.workers[1].clock == 8
    assert gate.on_part_done(0, 8) is None
    assert gate.on_push(1, 7, 0, 1) == Stale(step=7, version=8)
    ready = contribute(gate, 1, step=8)
    gate.on_step_applied(ready)
    assert isinstance(gate.on_push(0, 11, 0, 1), Wait)      # caught up: no more jumps


def test_loaded_gate_adopts_a_readers_step_too():
    gate = ConsistencyGate(Mode.SYNC)
    gate.load(3, {0: 3})
    assert gate.on_pull(0, 6) == Proceed() and gate.version == 6


def test_holds_make_pushes_wait_until_released():
    gate = sync_gate(1)
    gate.hold()
    assert isinstance(gate.on_push(0, 0, 0, 1), Wait)
    gate.release()
    gate.hold(from_step=1)
    assert gate.on_push(0, 0, 0, 1) == Accumulate(0)
    gate.on_step_applied(gate.on_part_done(0, 0))
    assert isinstance(gate.on_push(0, 1, 0, 1), Wait)
    gate.release()
    assert gate.on_push(0, 1, 0, 1) == Accumulate(1)


def test_export_caps_sync_clocks_at_the_version():
    gate = sync_gate(2)
    contribute(gate, 0)                                      # clock 1, step 0 still open
    assert gate.export() == (0, {0: 0, 1: 0})


def test_ssp_reader_clock_is_at_least_what_it_reads_at():
    gate = ConsistencyGate(Mode.SSP, staleness=1)
    gate.load(0, {0: 0, 1: 0})                               # restored clocks behind the workers
    assert isinstance(gate.on_pull(0, 5), Wait)              # worker 1 still looks like clock 0
    assert gate.on_pull(1, 5) == Proceed()                   # now both say clock 5
    assert gate.on_pull(0, 5) == Proceed()


def test_skipped_push_advances_the_clock_not_the_version():
    gate = ConsistencyGate(Mode.ASYNC)
    gate.register(0)
    gate.on_applied(0, 4, applied=False)
    assert gate.version == 0 and gate.workers[0].clock == 5


def test_lease_expiry_is_a_pure_decision():
    contact = {0: 10.0, 1: 14.5, 2: 8.0}
    assert expired(contact, [0, 1, 2], now=15.0, lease_s=5.0) == [2]
    assert expired(contact, [0, 1], now=15.1, lease_s=5.0) == [0]
    assert expired(contact, [0, 1, 2], now=100.0, lease_s=0) == []
    assert expired(contact, [3], now=100.0, lease_s=1.0) == []


def test_dedup_export_can_forget_an_open_steps_pushes():
    table = DedupTable()
    for seq in (1, 2, 3, 5):
        table.finish(0, seq)
    assert table.export() == {0: (3, [5])}
    assert table.export(without=[(0, 3), (0, 5)]) == {0: (2, [])}
    restored = DedupTable.restore(table.export(without=[(0, 2)]))
    assert restored.check(0, 2).value == "new" and restored.check(0, 3).value == "duplicate"
    assert not table.busy()
    table.begin(0, 9)
    assert table.busy()


def test_clip_by_norm_scales_only_large_blocks_and_never_writes_its_input():
    big = np.full(4, 3.0, np.float32)                        # norm 6
    big.setflags(write=False)
    small = np.array([0.1, 0.2], np.float32)
    out = clip_by_norm([big, small], 2.0)
    np.testing.assert_allclose(np.linalg.norm(out[0]), 2.0, rtol=1e-6)
    assert out[0].dtype == np.float32 and out[1] is small
    np.testing.assert_array_equal(big, 3.0)

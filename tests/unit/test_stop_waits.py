"""A stopping shard ends the waits inside it (``Sequencer.stop_waits``): a sync pull and a
checkpoint waiting on other workers fail at once with UNAVAILABLE "server stopping", later
ones never wait, nothing they asked for changes the state, and the final checkpoint (which
waits only for pushes being applied) is still taken. No sockets: the Shard directly."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from ps.checkpoint.state import capture
from ps.config import ServerConfig
from ps.errors import UnavailableError
from ps.shard.consistency import Mode
from ps.shard.shard import Shard
from ps.tables.optim import OptimizerSpec
from ps.tables.spec import TableSpec

W = TableSpec("w", (4,), optimizer=OptimizerSpec("sgd", lr=1.0))
#: far beyond the test's own bounds: a wait that is not ended by the stop shows as a hung thread
LONG_S = 60.0


def waits(shard: Shard) -> int:
    with shard.steps.lock:
        return shard.counters["waits"]


def test_stop_ends_every_wait_on_other_workers_and_keeps_the_final_checkpoint():
    shard = Shard(ServerConfig(mode=Mode.SYNC, num_workers=2, shard_index=0, num_shards=1, sync_timeout_s=LONG_S))
    shard.create_table(W)
    shard.register(0)
    shard.register(1)
    assert shard.push(0, 1, 0, 0, 1, [("w", 0)], [np.ones(4, np.float32)], LONG_S).outcome == "accumulated"
    ended: dict[str, object] = {}

    def run(name, call) -> None:
        try:
            ended[name] = call()
        except Exception as exc:  # noqa: BLE001 - the test looks at what each call raised
            ended[name] = exc

    calls = {"pull": lambda: shard.pull(0, 1, ["w"], 0, 1, LONG_S),                # waits for worker 1's push
             "checkpoint": lambda: capture(shard, "at-1", at_version=1, timeout_s=LONG_S)}
    threads = [threading.Thread(target=run, args=item, daemon=True) for item in calls.items()]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while waits(shard) < 2:  # both calls wait inside the shard
        assert time.monotonic() < deadline, f"the calls did not wait: {ended}"
        time.sleep(0.01)
    start = time.monotonic()
    shard.steps.stop_waits()
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads)
    assert time.monotonic() - start < 5
    for name in calls:
        assert isinstance(ended[name], UnavailableError), (name, ended[name])
        assert "server stopping" in str(ended[name]) and "worker 1" in str(ended[name])
    with pytest.raises(UnavailableError, match="server stopping"):  # a later wait ends at once too
        shard.pull(0, 1, ["w"], 0, 1, LONG_S)
    assert shard.gate.version == 0 and shard.counters["wait_timeouts"] == 0
    state = capture(shard, "final", timeout_s=LONG_S)  # waits only for pushes being applied: not ended
    assert state.version == 0
    # what needs no wait still works while the grace period lasts: worker 1's push completes step 0
    assert shard.push(1, 1, 0, 0, 1, [("w", 0)], [np.ones(4, np.float32)], LONG_S).outcome == "accumulated"
    assert shard.gate.version == 1

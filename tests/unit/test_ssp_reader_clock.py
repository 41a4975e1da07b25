"""Ssp: a pull raises its reader's clock on the shard, and the pulls waiting for that reader
then go on. A worker's clock on a shard it sent nothing for a while is old (its steps touched
other shards only, as before a resize gives a new shard blocks); its first pull there must
wake the pulls waiting for it, or both wait until the deadline. No sockets: the Shard directly."""

import threading
import time

from ps.config import ServerConfig
from ps.shard.consistency import Mode
from ps.shard.shard import Shard
from ps.tables.optim import OptimizerSpec
from ps.tables.spec import TableSpec

W = TableSpec("w", (8,), block_elems=4, optimizer=OptimizerSpec("sgd", lr=1.0))


def test_a_pull_that_raises_its_readers_clock_wakes_the_pulls_waiting_for_that_reader():
    shard = Shard(ServerConfig(mode=Mode.SSP, staleness=0, shard_index=0, num_shards=1, num_workers=2,
                               sync_timeout_s=60.0))
    shard.create_table(W)
    shard.register(1, session=11)
    shard.register(2, session=12)
    outcome: list = []

    def waiting_reader() -> None:  # worker 2 reads at clock 3: waits for worker 1 (clock 0 here)
        try:
            outcome.append(shard.pull(2, 3, ["w"], 0, 1, 60.0)[0])
        except Exception as exc:  # noqa: BLE001 - asserted below
            outcome.append(exc)

    reader = threading.Thread(target=waiting_reader, daemon=True)
    reader.start()
    end = time.monotonic() + 5.0
    while shard.counters["waits"] < 1:  # worker 2's pull is waiting
        assert time.monotonic() < end and reader.is_alive(), outcome
        time.sleep(0.01)
    version, pulled = shard.pull(1, 3, ["w"], 0, 1, 10.0)  # worker 1 reads at 3 too: both at clock 3 now
    assert version == 0 and len(pulled) == 2
    reader.join(20.0)  # without the wake-up, worker 2 sleeps until its 60 s deadline (then finds the clocks)
    assert not reader.is_alive() and outcome == [0], outcome

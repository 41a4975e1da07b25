"""The gRPC plane keeps at most MAX_IN_FLIGHT calls of an async step awaited at once (a
shard then holds a few parts' messages, not a whole step's), and every call of a sync
step (a part's pull may wait for the step's other parts)."""

from __future__ import annotations

import numpy as np

from tests.conftest import running_shards
from worker import Client
from worker.client.transport import PendingCall
from worker.planes.in_flight import MAX_IN_FLIGHT


def test_async_steps_keep_a_few_calls_in_flight_and_sync_steps_all_of_them(monkeypatch):
    shape, parts = (64, 32), 4 * MAX_IN_FLIGHT
    started, peak = set(), [0]
    real_start, real_result = PendingCall.start, PendingCall.result

    def start(self):
        started.add(id(self))
        peak[0] = max(peak[0], len(started))
        return real_start(self)

    def result(self):
        try:
            return real_result(self)
        finally:
            started.discard(id(self))

    monkeypatch.setattr(PendingCall, "start", start)
    monkeypatch.setattr(PendingCall, "result", result)
    for mode in ("async", "sync"):
        with running_shards(1, mode=mode, num_workers=1, local_plane=False, stream_plane=False) as servers, \
                Client([servers[0].address], local=False, stream=False, timeout_s=10, wait_timeout_s=10,
                       part_bytes=shape[0] * shape[1] * 4 // parts) as ps:
            ps.create("w", shape=shape, lr=1.0, block_elems=shape[1])
            out = {"w": np.empty(shape, np.float32)}
            peak[0] = 0
            for k in range(3):
                ps.push_pull({"w": np.full(shape, 1.0, np.float32)}, out=out)
                np.testing.assert_array_equal(out["w"], np.full(shape, -(k + 1.0), np.float32))
            assert ps.data_planes() == ["grpc"]
            if mode == "async":
                assert 1 < peak[0] <= MAX_IN_FLIGHT
            else:
                assert peak[0] >= parts - 1  # the last call runs blocking, unstarted

"""Server failures with real ps-server processes: SIGKILL and restart with --restore under
running workers, SIGTERM's final checkpoint, and a kill in the middle of a checkpoint."""

import os
import signal

import numpy as np
import pytest

from ps.checkpoint import state as checkpoint
from ps.errors import PSError
from ps.tables.placement import block_shard
from worker import Client
from worker.client.transport import RetryPolicy

pytestmark = pytest.mark.slow

ROWS, WIDTH, BLOCK = 2, 64, 8


def steps_after(proc, at_least: int, timeout_s: float) -> int:
    while True:
        n = int(proc.wait_for(r"^step (\d+)", timeout_s).group(1))
        if n >= at_least:
            return n


def dense_values(state) -> np.ndarray:
    (table,) = state.tables["dense"]
    return np.concatenate([table.blocks[b].values for b in sorted(table.blocks)])


def test_shard_killed_and_restored_workers_carry_on(cluster, tmp_path):
    ckpt_dir = str(tmp_path / "ckpt")
    common = ("--mode", "async", "--num-shards", "2", "--checkpoint-dir", ckpt_dir, "--lease", "10")
    servers = [cluster.server("--shard-index", str(i), *common, name=f"shard{i}") for i in range(2)]
    addresses = ",".join(a for _, a in servers)
    owner = np.array([block_shard("w", i // BLOCK, 2) for i in range(ROWS * WIDTH)]).reshape(ROWS, WIDTH)
    assert all({0, 1} <= set(owner[r]) for r in range(ROWS)), "each row must span both shards"
    target = 80
    flags = ("--oracle", "rows", "--target", str(target), "--rows", str(ROWS), "--width", str(WIDTH),
             "--block", str(BLOCK), "--sleep", "0.02")
    workers = [cluster.worker("--servers", addresses, "--id", str(r), *flags) for r in range(ROWS)]
    for w in workers:
        steps_after(w, 15, 30)
        w.signal(signal.SIGSTOP)
    with Client(addresses, observer=True) as ps:               # a cluster checkpoint, workers paused
        taken = ps.checkpoint("before-crash")
        at_checkpoint = ps.pull("w")["w"]
    assert len(taken["paths"]) == 2
    for w in workers:
        w.signal(signal.SIGCONT)
        steps_after(w, int(w.lines[-1].split()[1]) + 10, 30)
        w.signal(signal.SIGSTOP)
    victim, address = servers[1]
    victim.signal(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL
    port = int(address.rsplit(":", 1)[1])
    cluster.server("--shard-index", "1", *common, "--restore", port=port, name="shard1-again")
    with Client(addresses, observer=True) as ps:
        restored = ps.pull("w")["w"]
        assert ps.status()[1]["epoch"] == 1
    on1 = owner == 1
    np.testing.assert_array_equal(restored[on1], at_checkpoint[on1])  # shard 1 is the checkpoint again
    for w in workers:                                                  # the workers carry on by themselves
        w.signal(signal.SIGCONT)
    for w in workers:
        w.wait_for(r"^done", 60)
        assert w.wait() == 0
    with Client(addresses, observer=True) as ps:
        final = ps.pull("w")["w"]
        applied_since_restart = ps.status()[1]["counters"]["applied"]
    on0 = owner == 0
    np.testing.assert_array_equal(final[on0], np.full(on0.sum(), -target, np.float32))  # untouched shard: exact
    # the restored shard lost what it applied after the checkpoint (rolled back), and then
    # applied every push it acknowledged since the restart exactly once
    drops = []
    for r in range(ROWS):
        drop = at_checkpoint[r][on1[r]] - final[r][on1[r]]
        assert np.all(drop == drop[0]) and drop[0] == int(drop[0])
        drops.append(int(drop[0]))
    assert sum(drops) == applied_since_restart
    assert all(0 < d <= target - int(-at_checkpoint[r][on1[r]][0]) for r, d in enumerate(drops))


def test_sigterm_exits_zero_with_a_final_checkpoint_holding_every_acknowledged_push(cluster, tmp_path):
    ckpt_dir = str(tmp_path / "ckpt")
    server, address = cluster.server("--checkpoint-dir", ckpt_dir, "--shard-index", "0", "--num-shards", "1")
    with Client([address]) as ps:
        ps.create("w", shape=(50,), lr=1.0, block_elems=16)
        for k in range(7):
            ps.push({"w": np.full(50, k + 1, np.float32)})      # acknowledged
    server.signal(signal.SIGTERM)
    assert server.wait(20) == 0
    assert "final checkpoint" not in server.log() or "failed" not in server.log()
    state = checkpoint.load(ckpt_dir, 0, 1)
    assert state.tag.startswith("final-") and state.version == 7
    np.testing.assert_array_equal(dense_values(state), np.full(50, -28, np.float32))


def test_kill_in_the_middle_of_a_checkpoint_keeps_the_previous_one(cluster, tmp_path):
    ckpt_dir = tmp_path / "ckpt"
    flags = ("--checkpoint-dir", str(ckpt_dir), "--shard-index", "0", "--num-shards", "1")
    server, address = cluster.server(*flags, "--faults", "kill_in_checkpoint=2")
    with Client([address], retry=RetryPolicy(attempts=2), local=False) as ps:
        ps.create("w", shape=(40,), lr=1.0, block_elems=16)
        for _ in range(3):
            ps.push({"w": np.ones(40, np.float32)})
        ps.checkpoint("first")
        for _ in range(2):
            ps.push({"w": np.ones(40, np.float32)})
        with pytest.raises(PSError):
            ps.checkpoint("second")                             # the server dies while writing it
    assert server.wait() == -signal.SIGKILL
    leftovers = os.listdir(ckpt_dir / "second")
    assert leftovers and all(n.startswith(".tmp-") for n in leftovers)   # torn, never renamed in
    state = checkpoint.load(str(ckpt_dir), 0, 1)
    assert state.tag == "first"
    np.testing.assert_array_equal(dense_values(state), np.full(40, -3, np.float32))
    port = int(address.rsplit(":", 1)[1])
    cluster.server(*flags, "--restore", port=port, name="again")
    with Client([address], observer=True) as ps:
        np.testing.assert_array_equal(ps.pull("w")["w"], np.full(40, -3, np.float32))

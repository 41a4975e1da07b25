"""Placement as a versioned map (issue 16, stage 1): balance by bytes, the map in status and
checkpoints, and redirects that a client follows invisibly, applying every push once.

Real shards on loopback (ports from the OS); ``ps-admin`` as a real process.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import itertools
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from launcher.placement_moves import move_blocks, newest_placement
from ps import ServerConfig, ShardServer
from ps._proto import ps_pb2
from ps.checkpoint import state as checkpoint
from ps.errors import DeadlineExceededError, InvalidArgumentError
from ps.tables.placement import row_buckets
from ps.tables.placement_map import PlacementMap
from ps.tables.spec import TableSpec
from tests.conftest import run_threads
from tests.integration.procs import CLEAN_ENV, ROOT
from tests.integration.test_sync_exactness import gradient as linear_gradient
from worker import Client
from worker.client.transport import RetryPolicy, ShardChannel, call, fan_out
from worker.models.mlp import MLP
from worker.training.model_tables import create_tables, table_specs
from worker.training.train_config import TrainConfig


#: the tables these tests move are small: cut into 512-element blocks, they have many blocks to move
BLOCK = 512


def addresses(servers) -> str:
    return ",".join(s.address for s in servers)


def shard_bytes_from_checkpoint(directory, tag: str, num_shards: int) -> list[int]:
    """Bytes each shard's checkpoint holds in arrays (values and optimizer state) for ``tag``."""
    out = []
    for i in range(num_shards):
        state = checkpoint.load(str(directory), i, num_shards, tag)
        total = 0
        for table in state.tables.get("dense", []):
            for block in table.blocks.values():
                total += block.values.nbytes + sum(a.nbytes for a in block.state.values())
        out.append(total)
    return out


def test_the_default_model_balances_bytes_with_optimizer_state_over_two_shards(shards, tmp_path):
    """ps-launch's default model (MLP 64 hidden, Adam, digits: 64 features, 10 classes)."""
    config = TrainConfig()
    specs = table_specs(MLP(64, 10, config.hidden), config)
    with shards(2, checkpoint_dir=str(tmp_path)) as servers:
        with Client(addresses(servers)) as client:
            create_tables(client, specs)
            client.checkpoint("balance")
            status = client.status()
    held = shard_bytes_from_checkpoint(tmp_path, "balance", 2)
    assert sum(held) > 4810 * 4 * 3  # every parameter with Adam's two moments
    assert max(held) <= 1.2 * (sum(held) / 2), held
    params = [sum(t["bytes"] for t in s["tables"]) for s in status]
    assert max(params) <= 1.2 * (sum(params) / 2), params


def test_a_16_mib_table_splits_evenly_over_two_shards(shards):
    with shards(2) as servers:
        with Client(addresses(servers)) as client:
            client.create("big", (1 << 22,), dtype="float32")
            status = client.status()
    blocks = [t["blocks"] for s in status for t in s["tables"] if t["name"] == "big"]
    nbytes = [t["bytes"] for s in status for t in s["tables"] if t["name"] == "big"]
    assert blocks == [8, 8] and nbytes == [8 << 20, 8 << 20]


def test_status_and_ps_admin_status_show_the_placement_map_version(shards):
    with shards(2) as servers:
        with Client(addresses(servers)) as client:
            client.create("w", (4096,), block_elems=BLOCK)
            assert [s["placement"]["version"] for s in client.status()] == [1, 1]
        channels = [ShardChannel(s.address, 1 << 26) for s in servers]
        try:
            move_blocks(channels, {("w", 0): 1 - PlacementMap.initial(2).block_owner("w", 0)}, 10.0)
        finally:
            for ch in channels:
                ch.close()
        out = subprocess.run([sys.executable, "-m", "launcher.admin_cli", "status", "--servers", addresses(servers),
                              "--timeout", "20"], capture_output=True, text=True, timeout=60, cwd=ROOT,
                             env=CLEAN_ENV, stdin=subprocess.DEVNULL)
        assert out.returncode == 0, out.stderr
        assert out.stdout.count("placement v2 (1 unit moved)") == 2, out.stdout
        js = subprocess.run([sys.executable, "-m", "launcher.admin_cli", "status", "--json", "--servers",
                             addresses(servers), "--timeout", "20"], capture_output=True, text=True, timeout=60,
                            cwd=ROOT, env=CLEAN_ENV, stdin=subprocess.DEVNULL)
        assert [s["placement"] for s in json.loads(js.stdout)] == [{"version": 2, "num_shards": 2, "moved": 1}] * 2


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def _channels(servers) -> list[ShardChannel]:
    return [ShardChannel(s.address, 1 << 26) for s in servers]


def test_a_client_with_a_stale_map_is_redirected_and_its_pushes_apply_exactly_once(shards):
    """SGD at lr 1 with integer gradients: the table must end at -(sum of every push), exactly."""
    spec_blocks = TableSpec("w", (4096,), block_elems=BLOCK).num_blocks
    with shards(2) as servers:
        channels = _channels(servers)
        with Client(addresses(servers)) as a, Client(addresses(servers)) as b:
            a.create("w", (4096,), optimizer="sgd", lr=1.0, block_elems=BLOCK)
            a.push({"w": np.ones(4096, np.float32)})
            b.push({"w": np.ones(4096, np.float32)})
            home = PlacementMap.initial(2)
            moved = {("w", blk): 1 - home.block_owner("w", blk) for blk in range(0, spec_blocks, 2)}
            new = move_blocks(channels, moved, 10.0)  # both clients still plan with v1
            assert new.version == 2
            for i in range(5):
                a.push({"w": np.full(4096, 2.0, np.float32)})
                got = b.push_pull({"w": np.full(4096, 3.0, np.float32)}, ["w"])["w"]
                assert got.shape == (4096,)
            final = a.pull(["w"])["w"]
            assert np.array_equal(final, np.full(4096, -(2 + 5 * 2 + 5 * 3), np.float32))
            assert newest_placement(channels, 10.0, RetryPolicy()).version == 2
            moved_counts = [s["counters"].get("moved", 0) for s in a.status()]
            assert sum(moved_counts) >= 2  # both clients were redirected at least once
            # a block moved back: a third version, and still exact
            move_blocks(channels, {("w", 0): home.block_owner("w", 0)}, 10.0)
            b.push({"w": np.ones(4096, np.float32)})
            assert np.array_equal(a.pull(["w"])["w"], np.full(4096, -(2 + 25 + 1), np.float32))
        for ch in channels:
            ch.close()


def test_a_push_applied_before_a_move_and_retried_after_it_is_a_duplicate(shards):
    """A retry of a push the old owner applied (its reply lost) must not be applied again on the new owner."""
    with shards(2) as servers:
        channels = _channels(servers)
        with Client(addresses(servers)) as client:
            client.create("w", (1024,), optimizer="sgd", lr=1.0, block_elems=BLOCK)
            engine = client._engine
            owner = PlacementMap.initial(2).block_owner("w", 0)
            seq = engine._next_seq[owner]
            client.push({"w": np.ones(1024, np.float32)})  # applied on both shards
            move_blocks(channels, {("w", 0): 1 - owner}, 10.0)
            engine._next_seq[owner] = seq  # as if the reply was lost: the same message again
            engine._directory.placement = PlacementMap.initial(2)  # planned with the old map
            engine._directory._owned = {"w": PlacementMap.initial(2).owners("w", 2)}
            client.push({"w": np.ones(1024, np.float32)})  # block 0: the old owner's seq again; block 1: a new one
            assert client.stats["duplicate"] == 1
            final = client.pull(["w"])["w"]
            assert np.array_equal(final[:512], -np.ones(512, np.float32))   # applied once, not on the new owner
            assert np.array_equal(final[512:], np.full(512, -2.0, np.float32))
        for ch in channels:
            ch.close()


def test_the_map_survives_a_checkpoint_and_a_restore_onto_the_same_and_another_count(tmp_path):
    d = str(tmp_path)
    servers = [ShardServer(ServerConfig(port=0, shard_index=i, num_shards=2, checkpoint_dir=d)).start()
               for i in range(2)]
    try:
        with Client(addresses(servers)) as client:
            client.create("w", (4096,), optimizer="adam", lr=0.1, block_elems=BLOCK)
            client.push({"w": np.arange(4096, dtype=np.float32)})
            owner = PlacementMap.initial(2).block_owner("w", 3)
            channels = _channels(servers)
            move_blocks(channels, {("w", 3): 1 - owner}, 10.0)
            for ch in channels:
                ch.close()
            client.push({"w": np.ones(4096, dtype=np.float32)})
            expect = client.pull(["w"])["w"]
            client.checkpoint("moved")
    finally:
        for s in servers:
            s.stop(grace_s=0.5)
    manifests = glob.glob(os.path.join(d, "moved", "*.manifest.json"))
    assert manifests and all(json.loads(_read(m))["placement_moved"] for m in manifests)
    for count in (2, 3, 1):
        restored = [ShardServer(ServerConfig(port=0, shard_index=i, num_shards=count, checkpoint_dir=d,
                                             restore=True)).start() for i in range(count)]
        try:
            with Client(addresses(restored)) as client:
                assert np.array_equal(client.pull(["w"])["w"], expect)
                maps = [s["placement"] for s in client.status()]
                if count == 2:  # the saved map, with its move
                    assert maps == [{"version": 2, "num_shards": 2, "moved": 1}] * 2
                else:  # the default rule on the new count, one version past the saved map
                    assert maps == [{"version": 3, "num_shards": count, "moved": 0}] * count
                client.push({"w": np.ones(4096, dtype=np.float32)})  # trains on
        finally:
            for s in restored:
                s.stop(grace_s=0.5)


def test_a_move_of_a_block_a_shard_does_not_hold_is_refused_and_changes_nothing(shards):
    with shards(2) as servers:
        channels = _channels(servers)
        with Client(addresses(servers)) as client:
            client.create("w", (4096,), block_elems=BLOCK)
            home = PlacementMap.initial(2)
            blk = home.blocks_of("w", 8, 0)[0]
            from ps._proto import ps_pb2
            from worker.client.transport import call
            from ps.errors import FailedPreconditionError, InvalidArgumentError
            request = ps_pb2.MoveRequest(placement=home.with_moves({("w", False, blk): 1}).to_proto())
            request.give.add(table="w", index=blk)
            with pytest.raises(InvalidArgumentError):  # shard 1 does not hold it, and the map puts it there
                call(channels[1], channels[1].move, request, 5.0)
            same_version = ps_pb2.MoveRequest(placement=PlacementMap(1, 2, {("w", False, blk): 1}).to_proto())
            same_version.give.add(table="w", index=blk)
            with pytest.raises(FailedPreconditionError):  # not newer than the shard's map
                call(channels[0], channels[0].move, same_version, 5.0)
            with pytest.raises(InvalidArgumentError):  # a map that is no map
                call(channels[0], channels[0].move, ps_pb2.MoveRequest(), 5.0)
            assert [s["placement"]["version"] for s in client.status()] == [1, 1]
            client.push({"w": np.ones(4096, np.float32)})
        for ch in channels:
            ch.close()


PLANES = {"shared-memory": dict(local=True, stream=False), "tcp": dict(local=False, stream=True),
          "grpc": dict(local=False, stream=False)}


@pytest.mark.parametrize("plane", sorted(PLANES))
def test_pushes_racing_moves_are_each_applied_exactly_once(shards, plane):
    """3 workers push integer gradients (SGD, lr 1) while blocks move back and forth between
    the shards: the table ends at exactly minus the sum of every acknowledged push."""
    workers, steps, size = 3, 25, 4096
    with shards(2) as servers:
        channels = _channels(servers)
        with Client(addresses(servers), **PLANES[plane]) as creator:
            creator.create("w", (size,), optimizer="sgd", lr=1.0, block_elems=BLOCK)
        num_blocks = TableSpec("w", (size,), block_elems=BLOCK).num_blocks
        acknowledged = np.zeros(size, np.float64)
        planes_used: list[list[str]] = []
        stop_moving = threading.Event()

        def work(w: int) -> None:
            with Client(addresses(servers), **PLANES[plane]) as client:
                planes_used.append(client.data_planes())
                total = np.zeros(size, np.float64)
                for k in range(steps):
                    grad = np.full(size, float((w + 1) * (k % 3 + 1)), np.float32)
                    if k % 2:
                        client.push_pull({"w": grad}, ["w"])
                    else:
                        client.push({"w": grad})
                    total += grad
                with lock:
                    acknowledged[:] += total

        def mover() -> None:
            rounds = 0
            while not stop_moving.is_set() and rounds < 40:
                blk = rounds % num_blocks
                current = newest_placement(channels, 10.0, RetryPolicy())
                move_blocks(channels, {("w", blk): 1 - current.block_owner("w", blk)}, 10.0)
                rounds += 1
            moves.append(rounds)

        lock = threading.Lock()
        moves: list[int] = []
        mover_thread = threading.Thread(target=mover, daemon=True)
        mover_thread.start()
        try:
            run_threads([lambda w=w: work(w) for w in range(workers)], timeout_s=120.0)
        finally:
            stop_moving.set()
            mover_thread.join(timeout=60.0)
        assert not mover_thread.is_alive() and moves and moves[0] >= 2, moves
        with Client(addresses(servers), **PLANES[plane]) as reader:
            final = reader.pull(["w"])["w"]
            moved = sum(s["counters"].get("moved", 0) for s in reader.status())
        assert np.array_equal(final.astype(np.float64), -acknowledged), (final[:4], -acknowledged[:4])
        assert moved > 0  # the race happened: some calls were redirected
        expected_plane = {"shared-memory": "shared memory", "tcp": "tcp", "grpc": "grpc"}[plane]
        assert all(p == [expected_plane] * 2 for p in planes_used), planes_used
        for ch in channels:
            ch.close()


def ps_admin(*args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launcher.admin_cli", *args, "--timeout", "20"], capture_output=True,
                          text=True, timeout=timeout_s, cwd=ROOT, env=CLEAN_ENV, stdin=subprocess.DEVNULL)


def killed_resize_then_rerun(old: str, new: str, kill_after: str,
                             between: Callable[[], None] | None = None) -> subprocess.CompletedProcess:
    """``ps-admin resize --servers old --to new`` SIGKILLed at ``kill_after``, then ``between()``
    (checks of the half-done state), then the same resize run again: returns that rerun,
    asserted to have succeeded. Bounded by ps_admin's timeout per run."""
    killed = ps_admin("resize", "--servers", old, "--to", new, "--kill-after", kill_after)
    assert killed.returncode == -9, killed.stderr
    if between is not None:
        between()
    rerun = ps_admin("resize", "--servers", old, "--to", new)
    assert rerun.returncode == 0, rerun.stderr
    return rerun


def steps_within(most_s: float) -> Iterator[int]:
    """0, 1, 2, ... for a worker that steps until the admin beside it is done: an
    AssertionError once ``most_s`` seconds passed (the admin hung). Bounded by time, not by a
    step count, which fast steps could use up before the admin finished."""
    end = time.monotonic() + most_s
    for k in itertools.count():
        assert time.monotonic() < end, f"the admin did not finish within {most_s} s"
        yield k


class Pushers:
    """``workers`` clients pushing integer gradients (SGD at lr 1) to table "w" of ``size``
    elements until :attr:`done` is set, then 5 more steps each (so every worker pushes after
    the admin finished, however fast its steps are); a worker still pushing ``most_s``
    seconds after it began fails (the admin hung). Every ``push_pull_every``-th step is a
    push-pull (0: never). :attr:`acknowledged` sums every push that returned; :attr:`going`
    is set per worker once it pushed 3 times; :attr:`addresses` lists each client's servers
    at the end."""

    def __init__(self, servers: str, workers: int, size: int, push_pull_every: int = 0,
                 most_s: float = 100.0) -> None:
        self.servers, self.workers, self.size = servers, workers, size
        self.push_pull_every, self.most_s = push_pull_every, most_s
        self.acknowledged = np.zeros(size, np.float64)
        self.going = [threading.Event() for _ in range(workers)]
        self.done = threading.Event()
        self.addresses: list[list[str]] = []
        self._lock = threading.Lock()

    def work(self, w: int) -> None:
        with Client(self.servers, wait_timeout_s=20.0) as client:  # a move never finished: fails
            total = np.zeros(self.size, np.float64)
            extra = 0
            for k in steps_within(self.most_s):
                grad = np.full(self.size, float(w + 1 + k % 5), np.float32)
                if self.push_pull_every and k % self.push_pull_every == self.push_pull_every - 1:
                    client.push_pull({"w": grad}, ["w"])
                else:
                    client.push({"w": grad})
                total += grad
                if k == 2:
                    self.going[w].set()
                extra += self.done.is_set()
                if extra >= 5:
                    break
            with self._lock:
                self.acknowledged[:] += total
                self.addresses.append(list(client.addresses))

    def run(self, admin) -> None:
        """Run the workers and ``admin()`` (which starts once every worker is pushing and sets
        :attr:`done` when it finished) in threads; bounded."""
        def admin_then_done() -> None:
            assert all(g.wait(60.0) for g in self.going)  # every worker is pushing
            try:
                admin()
            finally:
                self.done.set()

        run_threads([lambda w=w: self.work(w) for w in range(self.workers)] + [admin_then_done], timeout_s=120.0)


@pytest.mark.parametrize("kill_after", ["settle", "take"])
def test_a_move_whose_admin_is_sigkilled_is_finished_by_a_rerun_and_every_push_applies_once(shards, kill_after):
    size = 4096
    with shards(2) as servers:
        with Client(addresses(servers)) as creator:
            creator.create("w", (size,), optimizer="sgd", lr=1.0, block_elems=BLOCK)
        home = PlacementMap.initial(2)
        blocks = home.blocks_of("w", TableSpec("w", (size,), block_elems=BLOCK).num_blocks, 0)[:2]
        pushers = Pushers(addresses(servers), 3, size)

        def admin() -> None:
            killed = ps_admin("move", "--servers", addresses(servers), "--table", "w", "--blocks",
                              ",".join(map(str, blocks)), "--to", "1", "--kill-after", kill_after)
            assert killed.returncode == -9, killed.stderr
            channels = _channels(servers)
            assert newest_placement(channels, 10.0, RetryPolicy()).version == 2  # half done
            for ch in channels:
                ch.close()
            rerun = ps_admin("move", "--servers", addresses(servers))
            assert rerun.returncode == 0, rerun.stderr
            assert json.loads(rerun.stdout)["version"] == 2

        pushers.run(admin)
        with Client(addresses(servers)) as reader:
            final = reader.pull(["w"])["w"]
            status = reader.status()
        assert np.array_equal(final.astype(np.float64), -pushers.acknowledged)
        assert [s["placement"] for s in status] == [{"version": 2, "num_shards": 2, "moved": 2}] * 2
        held = {s["address"]: next(t["blocks"] for t in s["tables"] if t["name"] == "w") for s in status}
        total_blocks = TableSpec("w", (size,), block_elems=BLOCK).num_blocks
        assert held == {servers[0].address: total_blocks // 2 - 2, servers[1].address: total_blocks // 2 + 2}


@pytest.mark.parametrize("mode", ["async", "ssp"])
def test_resize_2_to_3_to_2_while_3_workers_push_applies_every_push_once(shards, mode):
    """Async or ssp (staleness 2; a push-pull waits for the slowest worker), SGD at lr 1, integer
    gradients: the final table is minus the sum of every acknowledged push; the new server's
    address reaches the workers through the map."""
    size = 12 * BLOCK  # 12 blocks: even over 2 and 3 shards
    with shards(3, mode=mode, staleness=2 if mode == "ssp" else 0) as servers:
        a, b, c = (s.address for s in servers)
        with Client(f"{a},{b}") as creator:
            creator.create("w", (size,), optimizer="sgd", lr=1.0, block_elems=BLOCK)
        pushers = Pushers(f"{a},{b}", 3, size, push_pull_every=3)

        def admin() -> None:
            grow = ps_admin("resize", "--servers", f"{a},{b}", "--to", f"{a},{b},{c}")
            assert grow.returncode == 0, grow.stderr
            grown = json.loads(grow.stdout)
            assert grown["num_shards"] == 3 and grown["addresses"] == [a, b, c]
            with Client(f"{a},{b},{c}", observer=True) as observer:
                spread = [next(t["blocks"] for t in st["tables"] if t["name"] == "w") for st in observer.status()]
            share = TableSpec("w", (size,), block_elems=BLOCK).num_blocks // 3
            assert spread == [share] * 3, spread  # the new shard took its share
            shrink = ps_admin("resize", "--servers", f"{a},{b},{c}", "--to", f"{b},{c}")
            assert shrink.returncode == 0, shrink.stderr
            assert json.loads(shrink.stdout)["addresses"] == [b, c]

        pushers.run(admin)
        assert pushers.addresses == [[b, c]] * 3  # no worker restarted: each followed the map
        with Client(f"{b},{c}") as reader:
            final = reader.pull(["w"])["w"]
            status = reader.status()
        assert np.array_equal(final.astype(np.float64), -pushers.acknowledged)
        blocks = [next(t["blocks"] for t in s["tables"] if t["name"] == "w") for s in status]
        half = TableSpec("w", (size,), block_elems=BLOCK).num_blocks // 2
        assert blocks == [half] * 2  # even over the two shards left
        assert {s["placement"]["num_shards"] for s in status} == {2}


def test_a_large_async_resize_moves_in_batches_each_its_own_map_version(shards, monkeypatch):
    """With batches of 4 blocks, growing 2 -> 3 installs the new shard list first (no block
    moves: every block stays with its server), then moves the new shard's share 4 blocks
    per map version, while 3 workers push; shrinking to the last two first moves the dropped
    server's blocks to them 4 per version, then installs the new list. The oracle holds."""
    import launcher.placement_moves as placement_moves

    size = 32 * 512  # 32 blocks of 512 floats: 2 KiB each, SGD keeps no state
    spec = TableSpec("w", (size,), block_elems=512)
    monkeypatch.setattr(placement_moves, "MOVE_BATCH_BYTES", 4 * 2048)
    with shards(3) as servers:
        a, b, c = (s.address for s in servers)
        with Client(f"{a},{b}") as creator:
            creator.create("w", (size,), optimizer="sgd", lr=1.0, block_elems=512)
        pushers = Pushers(f"{a},{b}", 3, size, push_pull_every=3)
        channels = {s.address: ch for s, ch in zip(servers, _channels(servers))}
        versions = []

        def admin() -> None:
            grown = placement_moves.resize(channels, [a, b], [a, b, c], 20.0)
            assert grown.addresses == (a, b, c)
            assert [len(spec_blocks) for spec_blocks in
                    (grown.blocks_of("w", spec.num_blocks, i) for i in range(3))] == [11, 11, 10]
            versions.append(grown.version)
            shrunk = placement_moves.resize(channels, [a, b, c], [b, c], 20.0)
            versions.append(shrunk.version)

        pushers.run(admin)
        # grow: v2 the new list, then 10 blocks to the new shard 4 per version: v3..v5; shrink: a's
        # 11 blocks to b and c 4 per version (v6..v8) under the old list, then v9 the new list
        assert versions == [5, 9]
        assert pushers.addresses == [[b, c]] * 3
        with Client(f"{b},{c}") as reader:
            final = reader.pull(["w"])["w"]
            status = reader.status()
        assert np.array_equal(final.astype(np.float64), -pushers.acknowledged)
        assert [next(t["blocks"] for t in s["tables"] if t["name"] == "w") for s in status] == [16, 16]
        for ch in channels.values():
            ch.close()


@pytest.mark.parametrize("mode", ["async", "ssp"])
@pytest.mark.parametrize("kill_after", ["settle-first", "settle", "take"])
def test_a_resize_whose_admin_is_sigkilled_is_finished_by_a_rerun(shards, kill_after, mode):
    """SIGKILLed inside the per-shard settle loop, after it, or after the takes; then rerun.
    Ssp: staleness 2, every third step a push-pull (it waits for the slowest worker)."""
    size = 12 * BLOCK  # 12 blocks: even over 2 and 3 shards
    with shards(3, mode=mode, staleness=2 if mode == "ssp" else 0) as servers:
        a, b, c = (s.address for s in servers)
        with Client(f"{a},{b}") as creator:
            creator.create("w", (size,), optimizer="sgd", lr=1.0, block_elems=BLOCK)
        pushers = Pushers(f"{a},{b}", 3, size, push_pull_every=3 if mode == "ssp" else 0)

        def maps_split() -> None:
            if kill_after == "settle-first":  # killed inside the settle loop: the maps are split
                with Client(f"{a},{b},{c}", observer=True) as observer:
                    assert [s["placement"]["version"] for s in observer.status()] == [1, 1, 2]

        def admin() -> None:
            rerun = killed_resize_then_rerun(f"{a},{b}", f"{a},{b},{c}", kill_after, maps_split)
            again = ps_admin("resize", "--servers", f"{a},{b}", "--to", f"{a},{b},{c}")  # a third run: no change
            assert again.returncode == 0 and json.loads(again.stdout) == json.loads(rerun.stdout), again.stderr

        pushers.run(admin)
        with Client(f"{a},{b},{c}") as reader:
            final = reader.pull(["w"])["w"]
            status = reader.status()
        assert np.array_equal(final.astype(np.float64), -pushers.acknowledged)
        assert len({json.dumps(s["placement"]) for s in status}) == 1  # one map everywhere
        blocks = [next(t["blocks"] for t in s["tables"] if t["name"] == "w") for s in status]
        assert blocks == [TableSpec("w", (size,), block_elems=BLOCK).num_blocks // 3] * 3


@pytest.mark.parametrize("plane", ["shared-memory", "tcp"])
def test_after_a_resize_a_worker_keeps_its_fast_plane_on_every_shard_of_the_new_set(shards, plane):
    """Grown 2 -> 3 and shrunk to the last two (whose places shift): every shard's parts,
    the new one's too, travel over the plane the worker used before, and the weights it
    pulls are exact (a shard's place changed, so nothing it pulled before is trusted)."""
    size = 8192
    name = {"shared-memory": "shared memory", "tcp": "tcp"}[plane]
    with shards(3) as servers:
        a, b, c = (s.address for s in servers)
        with Client(f"{a},{b}", **PLANES[plane]) as client:
            client.create("w", (size,), optimizer="sgd", lr=1.0, block_elems=BLOCK)
            client.push({"w": np.ones(size, np.float32)})
            assert client.data_planes() == [name, name]
            used = client._stream_plane if plane == "tcp" else client._local_plane
            sent: list[int] = []
            send = used.send
            used.send = lambda part, seq, step: (sent.append(part.shard), send(part, seq, step))[1]
            expected = -1.0
            for old, new in ([a, b], [a, b, c]), ([a, b, c], [b, c]):
                admin = ps_admin("resize", "--servers", ",".join(old), "--to", ",".join(new))
                assert admin.returncode == 0, admin.stderr
                client.push({"w": np.ones(size, np.float32)})  # redirected: the client follows the resize
                assert client.addresses == new
                assert client.data_planes() == [name] * len(new)
                sent.clear()
                for _ in range(3):
                    out = client.push_pull({"w": np.ones(size, np.float32)}, ["w"])["w"]
                expected -= 4.0
                assert set(sent) == set(range(len(new)))  # every shard's parts, the new one's too
                assert np.array_equal(out, np.full(size, expected, np.float32))


def test_a_resize_whose_new_server_dies_mid_move_is_undone_by_a_resize_without_it(shards):
    """2 -> 3, the admin SIGKILLed after the gives of the first batch to the new server, which
    then dies before taking anything: a resize back to the two live servers leaves the dead
    one out and takes the given blocks back from the copies their sources kept. Every value
    and version is as before; the two shards serve alone, evenly."""
    size = 8192
    with shards(3) as servers:
        a, b, c = (s.address for s in servers)
        with Client(f"{a},{b}") as client:
            client.create("w", (size,), optimizer="sgd", lr=1.0, block_elems=BLOCK)
            client.push({"w": np.arange(size, dtype=np.float32)})
            expect = client.pull(["w"])["w"]
        killed = ps_admin("resize", "--servers", f"{a},{b}", "--to", f"{a},{b},{c}", "--kill-after", "batch-settle")
        assert killed.returncode == -9, killed.stderr
        with Client(f"{a},{b},{c}", observer=True) as observer:
            held = [next(t["blocks"] for t in st["tables"] if t["name"] == "w") for st in observer.status()]
        num_blocks = TableSpec("w", (size,), block_elems=BLOCK).num_blocks
        assert held[2] == 0 and sum(held) < num_blocks  # given to the new server, not taken: in flight
        servers[2].stop(grace_s=0)
        undo = ps_admin("resize", "--servers", f"{a},{b},{c}", "--to", f"{a},{b}")
        assert undo.returncode == 0, undo.stderr
        assert json.loads(undo.stdout)["addresses"] == [a, b]
        with Client(f"{a},{b}") as client:
            assert np.array_equal(client.pull(["w"])["w"], expect)
            client.push({"w": np.ones(size, np.float32)})
            assert np.array_equal(client.pull(["w"])["w"], expect - 1)
            status = client.status()
        assert [next(t["blocks"] for t in s["tables"] if t["name"] == "w") for s in status] == [num_blocks // 2] * 2
        assert len({json.dumps(s["placement"]) for s in status}) == 1


def test_a_resize_dropping_a_dead_server_that_held_units_alone_is_refused_and_changes_nothing(shards):
    """A server that died holding blocks nobody else kept: the resize names them as lost and
    what to do (restore a checkpoint), and the live servers keep their map and values."""
    size = 8192
    with shards(3) as servers:
        a, b, c = (s.address for s in servers)
        with Client(f"{a},{b},{c}") as client:
            client.create("w", (size,), optimizer="sgd", lr=1.0, block_elems=BLOCK)
            client.push({"w": np.ones(size, np.float32)})
            before = [s["placement"]["version"] for s in client.status()]
        servers[2].stop(grace_s=0)
        refused = ps_admin("resize", "--servers", f"{a},{b},{c}", "--to", f"{a},{b}")
        assert refused.returncode != 0
        assert f"{c} do(es) not answer and held" in refused.stderr and "lost with it; nothing changed" in \
            refused.stderr and "checkpoint" in refused.stderr, refused.stderr
        channels = _channels(servers[:2])
        assert [newest_placement([ch], 10.0, RetryPolicy()).num_shards for ch in channels] == [3, 3]
        assert [newest_placement([ch], 10.0, RetryPolicy()).version for ch in channels] == before[:2]
        for ch in channels:
            ch.close()


def test_a_checkpoint_taken_after_a_resize_restores_onto_the_new_shard_set(shards, tmp_path):
    d = str(tmp_path)
    with shards(3, checkpoint_dir=d) as servers:
        a, b, c = (s.address for s in servers)
        with Client(f"{a},{b}") as client:
            client.create("w", (8192,), optimizer="adam", lr=0.1, block_elems=BLOCK)
            client.push({"w": np.arange(8192, dtype=np.float32)})
        grow = ps_admin("resize", "--servers", f"{a},{b}", "--to", f"{a},{b},{c}")
        assert grow.returncode == 0, grow.stderr
        version = json.loads(grow.stdout)["version"]
        with Client(f"{a},{b},{c}") as client:
            client.push({"w": np.ones(8192, dtype=np.float32)})
            expect = client.pull(["w"])["w"]
            client.checkpoint("resized")
    restored = [ShardServer(ServerConfig(port=0, shard_index=i, num_shards=3, checkpoint_dir=d, restore=True)).start()
                for i in range(3)]
    try:
        with Client(addresses(restored)) as client:
            assert np.array_equal(client.pull(["w"])["w"], expect)
            status = client.status()
            assert {s["placement"]["version"] for s in status} == {version}  # the resized map itself
            client.push({"w": np.ones(8192, dtype=np.float32)})  # trains on, on the new set
    finally:
        for s in restored:
            s.stop(grace_s=0.5)


@contextlib.contextmanager
def ssp_pair(servers: str, wait_timeout_s: float) -> Iterator[tuple[Client, Client]]:
    """Workers 0 ("fast") and 1 ("slow") of an ssp cluster, each pushed ones to table "v" (8
    blocks of 512, SGD at lr 1) once."""
    with (Client(servers, worker_id=0, timeout_s=30, wait_timeout_s=wait_timeout_s, local=False) as fast,
          Client(servers, worker_id=1, timeout_s=30, wait_timeout_s=wait_timeout_s, local=False) as slow):
        for client in (fast, slow):
            client.create("v", (4096,), optimizer="sgd", lr=1.0, block_elems=512)
        for client in (fast, slow):
            client.push({"v": np.ones(4096, np.float32)})
        yield fast, slow


def test_after_an_ssp_resize_the_new_shard_keeps_the_staleness_bound(shards):
    """The new shard knows the workers from the start (at their least clock on the old shards):
    a pull there waits for a worker that has not come to it yet, as on the old shards."""
    with shards(3, mode="ssp", staleness=1) as servers:
        a, b, c = (s.address for s in servers)
        with ssp_pair(f"{a},{b}", wait_timeout_s=1.0) as (fast, slow):
            for _ in range(3):
                fast.push({"v": np.ones(4096, np.float32)})  # fast at clock 4, slow at 1
            grow = ps_admin("resize", "--servers", f"{a},{b}", "--to", f"{a},{b},{c}")
            assert grow.returncode == 0, grow.stderr
            with Client(f"{a},{b},{c}", observer=True) as observer:
                known = [(w["id"], w["clock"], w["live"]) for w in observer.status()[2]["workers"]]
            assert known == [(0, 1, True), (1, 1, True)], known
            grown = PlacementMap.from_json(json.loads(grow.stdout))
            away = [k for k in range(8) if grown.block_owner("v", k) != 2]
            moved = ps_admin("move", "--servers", f"{a},{b},{c}", "--table", "v", "--blocks",
                             ",".join(map(str, away)), "--to", "2")  # every block of "v" on the new shard
            assert moved.returncode == 0, moved.stderr
            with pytest.raises(DeadlineExceededError, match=r"waits for every worker to reach clock 3"):
                fast.pull(["v"])  # worker 1 is at clock 1 (< 4 - 1), here as on the old shards
            for _ in range(2):
                slow.push({"v": np.ones(4096, np.float32)})  # now at clock 3: within the bound
            np.testing.assert_array_equal(fast.pull(["v"])["v"], np.full(4096, -7.0, np.float32))


def test_an_ssp_pull_waiting_on_a_shard_that_a_resize_drops_is_redirected(shards):
    """A pull waiting for the slowest worker on a shard that a resize drops would wait in vain
    (the worker's pushes go to the shards left): the drop ends the wait, and the pull is
    planned again on the new map."""
    with shards(3, mode="ssp", staleness=0) as servers:
        a, b, c = (s.address for s in servers)
        with ssp_pair(f"{a},{b},{c}", wait_timeout_s=15.0) as (fast, slow):
            fast.push({"v": np.ones(4096, np.float32)})  # fast at clock 2, slow at 1
            with Client(a, observer=True) as observer:
                waits = observer.status()[0]["counters"].get("waits", 0)
                pulled: list[np.ndarray] = []
                puller = threading.Thread(target=lambda: pulled.append(fast.pull(["v"])["v"]), daemon=True)
                puller.start()  # waits for worker 1 on every shard
                for _ in range(200):  # bounded: until the pull waits on the shard to be dropped
                    if observer.status()[0]["counters"].get("waits", 0) > waits:
                        break
                    time.sleep(0.05)
                else:
                    pytest.fail("the pull never waited on the first shard")
            shrink = ps_admin("resize", "--servers", f"{a},{b},{c}", "--to", f"{b},{c}")
            assert shrink.returncode == 0, shrink.stderr
            slow.push({"v": np.ones(4096, np.float32)})  # to the shards left: slow at clock 2 there
            puller.join(20.0)
            assert not puller.is_alive() and len(pulled) == 1
            np.testing.assert_array_equal(pulled[0], np.full(4096, -4.0, np.float32))
            assert fast.addresses == [b, c]


def test_a_sync_hold_is_bounded_names_the_move_and_ends_with_unhold_and_bad_holds_change_nothing(shards):
    with shards(2, mode="sync", num_workers=1) as servers:
        channels = _channels(servers)
        with Client(addresses(servers), worker_id=0, wait_timeout_s=1.0, local=False) as client:
            client.create("w", (4096,), block_elems=BLOCK)
            client.push({"w": np.ones(4096, np.float32)})
            wire = newest_placement(channels, 10.0, RetryPolicy()).to_proto()
            with pytest.raises(InvalidArgumentError, match="does nothing else"):
                call(channels[0], channels[0].move, ps_pb2.MoveRequest(placement=wire, hold=True, release=True), 10.0)
            client.push({"w": np.ones(4096, np.float32)})  # nothing was held
            held = fan_out([(ch, ch.move, ps_pb2.MoveRequest(placement=wire, hold=True, hold_from=2))
                            for ch in channels], 10.0)
            assert [(r.hold_from, list(r.workers)) for r in held] == [(2, [0]), (2, [0])]
            with pytest.raises(DeadlineExceededError, match="placement move settles at step 2"):
                client.push({"w": np.ones(4096, np.float32)})  # bounded, and says why
            fan_out([(ch, ch.move, ps_pb2.MoveRequest(placement=wire, unhold=True)) for ch in channels], 10.0)
            client.push({"w": np.ones(4096, np.float32)})
            assert np.array_equal(client.pull(["w"])["w"], np.full(4096, -0.03, np.float32))
        for ch in channels:
            ch.close()


def test_a_sync_push_held_while_its_block_was_in_transit_is_decided_with_the_block_it_finds(shards):
    """A push planned with the new map reaches the block's new owner while the block is still
    in transit (given, not yet taken) and is held at the move's step boundary; once the block
    is taken and the hold released, the push is decided with the blocks the shard holds then:
    applied, not refused for a block that was missing when it arrived (that split a sync
    step: the step's other parts applied, this one re-planned under another part count)."""
    with shards(2, mode="sync", num_workers=1) as servers:
        channels = _channels(servers)
        with Client(addresses(servers), worker_id=0, wait_timeout_s=20.0, local=False) as client:
            client.create("w", (4096,), lr=1.0, block_elems=512)
            client.push({"w": np.ones(4096, np.float32)})  # step 0
            home = newest_placement(channels, 10.0, RetryPolicy())
            blk = home.blocks_of("w", 8, 0)[0]
            new = home.with_moves({("w", False, blk): 1})
            wire = new.to_proto()
            held = fan_out([(ch, ch.move, ps_pb2.MoveRequest(placement=wire, hold=True, hold_from=1))
                            for ch in channels], 10.0)
            assert [r.hold_from for r in held] == [1, 1]
            given = fan_out([(ch, ch.move, ps_pb2.MoveRequest(placement=wire, settle=True)) for ch in channels],
                            10.0)  # shard 0 gives the block; nobody takes it yet
            assert [len(r.units) for r in given] == [1, 0]
            assert client._engine._directory.adopt_placement(new)  # the new map, as after a redirect
            pushed = []
            pusher = threading.Thread(target=lambda: pushed.append(client.push({"w": np.ones(4096, np.float32)})))
            pusher.start()  # step 1: held on both shards, its part for shard 1 naming the block in transit
            take = ps_pb2.MoveRequest(placement=wire, payload=given[0].payload)
            take.take.extend(given[0].units)
            call(channels[1], channels[1].move, take, 10.0)
            fan_out([(ch, ch.move, ps_pb2.MoveRequest(placement=wire, release=True, unhold=True)) for ch in channels],
                    10.0)
            pusher.join(30.0)
            assert not pusher.is_alive() and pushed == [None]
            assert np.array_equal(client.pull(["w"])["w"], np.full(4096, -2.0, np.float32))  # each push once
            assert client.stats["stale"] == 0
        for ch in channels:
            ch.close()


SYNC_LR = 0.05
#: the sparse table's ids (hashed into row buckets all over the shards) and row width
SYNC_IDS, SYNC_DIM = 3000, 4


def row_ids(rank: int, step: int) -> np.ndarray:
    """Worker ``rank``'s row ids at ``step``: 24, 4 of them shared with the other workers, repeats possible."""
    mine = np.random.default_rng([rank, step, 1]).integers(0, SYNC_IDS, 20)
    return np.concatenate([mine, np.random.default_rng([step, 2]).integers(0, SYNC_IDS, 4)]).astype(np.int64)


def row_gradient(rank: int, step: int, rows: np.ndarray) -> np.ndarray:
    """The squared-error gradient of ``rows`` (those of :func:`row_ids`) towards worker ``rank``'s targets."""
    target = np.random.default_rng([rank, step, 3]).standard_normal(rows.shape).astype(np.float32)
    return (rows - target).astype(np.float32)


class SyncTrainers:
    """``workers`` sync workers training a Linear layer (tables "w" and "b", small blocks so they
    span every shard) until :meth:`stop` names the last step: every worker stops at that same
    step (set above any step a worker began). Bounded by ``most_s`` seconds (:func:`steps_within`).
    ``rows``: each step also pulls rows of a sparse table "emb" and pushes their gradients with
    the dense ones, as one step (:func:`row_gradient`)."""

    def __init__(self, servers: str, workers: int, fused: bool = False, most_s: float = 100.0,
                 rows: bool = False) -> None:
        self.servers, self.workers, self.fused, self.most_s = servers, workers, fused, most_s
        self.rows = rows
        self.going = [threading.Event() for _ in range(workers)]
        self.progress = [0] * workers
        self.stop_at: int | None = None
        self.initial: dict[str, np.ndarray] = {}
        self.finals: list[dict[str, np.ndarray]] = []
        self.addresses: list[list[str]] = []
        self._lock = threading.Lock()

    def stop(self, extra: int = 10) -> None:
        with self._lock:
            self.stop_at = max(self.progress) + extra

    def work(self, rank: int) -> None:
        with Client(self.servers, worker_id=rank, timeout_s=10, wait_timeout_s=30) as ps:
            ps.create("w", shape=(100, 10), init="normal", init_scale=0.1, seed=7, lr=SYNC_LR, block_elems=96)
            ps.create("b", shape=(10,), lr=SYNC_LR, block_elems=4)
            if self.rows:
                ps.create_sparse("emb", dim=SYNC_DIM, lr=SYNC_LR)
            initial = p = ps.pull(["w", "b"])
            for step in steps_within(self.most_s):
                with self._lock:
                    if self.stop_at is not None and step >= self.stop_at:
                        break
                    self.progress[rank] = step
                if self.fused:  # one push-pull per step: the step's push and the next step's weights
                    p = ps.push_pull(linear_gradient(rank, step, p["w"], p["b"]), ["w", "b"])
                elif self.rows:
                    p = ps.pull(["w", "b"])
                    ids = row_ids(rank, step)
                    ps.push(linear_gradient(rank, step, p["w"], p["b"]),
                            rows={"emb": (ids, row_gradient(rank, step, ps.pull_rows("emb", ids)))})
                else:
                    p = ps.pull(["w", "b"])
                    ps.push(linear_gradient(rank, step, p["w"], p["b"]))
                if step == 2:
                    self.going[rank].set()
            final = ps.pull(["w", "b"])
            if self.rows:
                final["emb"] = ps.pull_rows("emb", np.arange(SYNC_IDS))
            with self._lock:
                self.initial = initial
                self.finals.append(final)
                self.addresses.append(list(ps.addresses))

    def run(self, admin) -> None:
        def admin_then_stop() -> None:
            assert all(g.wait(60.0) for g in self.going)  # every worker is training
            try:
                admin()
            finally:
                self.stop()

        run_threads([lambda r=r: self.work(r) for r in range(self.workers)] + [admin_then_stop], timeout_s=120.0)

    def check_against_numpy(self) -> None:
        """Every worker ends equal to one NumPy process: SGD on the mean of the workers' gradients
        (a row's mean counts a worker that did not push it as a zero gradient)."""
        w = self.initial["w"].astype(np.float64)
        b = self.initial["b"].astype(np.float64)
        emb = np.zeros((SYNC_IDS, SYNC_DIM), np.float64)  # rows start at zeros
        for step in range(self.stop_at):
            grads = [linear_gradient(r, step, w.astype(np.float32), b.astype(np.float32)) for r in range(self.workers)]
            w = w - SYNC_LR * np.mean([g["w"] for g in grads], axis=0)
            b = b - SYNC_LR * np.mean([g["b"] for g in grads], axis=0)
            if self.rows:
                total = np.zeros_like(emb)
                for r in range(self.workers):
                    ids = row_ids(r, step)
                    np.add.at(total, ids, row_gradient(r, step, emb[ids].astype(np.float32)))
                emb = emb - SYNC_LR * total / self.workers
        assert len(self.finals) == self.workers
        for final in self.finals:
            np.testing.assert_allclose(final["w"], w, rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(final["b"], b, rtol=1e-6, atol=1e-6)
            if self.rows:
                np.testing.assert_allclose(final["emb"], emb, rtol=1e-6, atol=1e-6)
        assert np.abs(self.finals[0]["w"] - self.initial["w"]).max() > 1e-3  # it trained
        if self.rows:
            assert np.abs(self.finals[0]["emb"]).max() > 1e-2


def rows_held(status: list[dict]) -> list[int]:
    """Rows of the sparse table "emb" each shard stores (its ``status()``)."""
    return [next(t["rows"] for t in st["sparse_tables"] if t["name"] == "emb") for st in status]


@pytest.mark.parametrize("fused,rows", [(False, False), (True, False), (False, True)],
                         ids=["pull-then-push", "push-pull", "dense-and-rows"])
def test_sync_resize_2_to_3_to_2_while_3_workers_train_equals_one_numpy_process(shards, fused, rows):
    """Sync (BSP): the resizes settle between two steps; the workers never restart and end equal
    to one NumPy process doing SGD on the mean gradient, to 1e-6. ``rows``: each step also pulls
    and pushes rows of a sparse table, whose row buckets move too (and one more ``move --buckets``)."""
    with shards(3, mode="sync", num_workers=3) as servers:
        a, b, c = (s.address for s in servers)
        trainers = SyncTrainers(f"{a},{b}", 3, fused, rows=rows)

        def admin() -> None:
            grow = ps_admin("resize", "--servers", f"{a},{b}", "--to", f"{a},{b},{c}")
            assert grow.returncode == 0, grow.stderr
            assert json.loads(grow.stdout)["addresses"] == [a, b, c]
            with Client(f"{a},{b},{c}", observer=True) as observer:
                status = observer.status()
            held = [next(t["blocks"] for t in st["tables"] if t["name"] == "w") for st in status]
            assert held == [4, 4, 3] or sorted(held) == [3, 4, 4], held  # the new shard took its share
            assert held[2] > 0
            if rows:
                assert min(rows_held(status)) > 0, rows_held(status)  # the new shard took rows too
            shrink = ps_admin("resize", "--servers", f"{a},{b},{c}", "--to", f"{b},{c}")
            assert shrink.returncode == 0, shrink.stderr
            again = ps_admin("resize", "--servers", f"{a},{b},{c}", "--to", f"{b},{c}")  # a rerun: no change
            assert again.returncode == 0 and json.loads(again.stdout) == json.loads(shrink.stdout), again.stderr
            shrunk = PlacementMap.from_json(json.loads(shrink.stdout))
            first = next(k for k in range(11) if shrunk.block_owner("w", k) == 0)
            moved = ps_admin("move", "--servers", f"{b},{c}", "--table", "w", "--blocks", str(first), "--to", "1")
            assert moved.returncode == 0, moved.stderr
            assert json.loads(moved.stdout)["version"] == 4  # a move in sync mode too
            if rows:  # the buckets of a worker's rows, from shard 0 to shard 1, in sync mode
                owners = shrunk.bucket_owners("emb")
                buckets = sorted({int(k) for k in row_buckets("emb", row_ids(0, 0)) if owners[k] == 0})
                moved = ps_admin("move", "--servers", f"{b},{c}", "--table", "emb", "--buckets",
                                 ",".join(map(str, buckets)), "--to", "1")
                assert moved.returncode == 0, moved.stderr
                assert json.loads(moved.stdout)["version"] == 5

        trainers.run(admin)
        assert trainers.addresses == [[b, c]] * 3  # no worker restarted: each followed the map
        trainers.check_against_numpy()
        with Client(f"{b},{c}", observer=True) as observer:
            status = observer.status()
        assert all(s["counters"].get("stale", 0) == 0 for s in status)  # no step lost a gradient
        assert len({json.dumps(s["placement"]) for s in status}) == 1  # one map everywhere
        assert sum(next(t["blocks"] for t in s["tables"] if t["name"] == "w") for s in status) == 11
        if rows:  # every row pushed is stored once, on one of the two servers left
            pushed = {int(i) for r in range(3) for t in range(trainers.stop_at) for i in row_ids(r, t)}
            assert sum(rows_held(status)) == len(pushed)


@pytest.mark.parametrize("kill_after", ["settle-first", "take"])
def test_a_sync_resize_whose_admin_is_sigkilled_is_finished_by_a_rerun_and_stays_exact(shards, kill_after):
    """The admin killed while the pushes (dense and rows) are held at the step boundary (inside
    the settle loop, or after the takes): the workers wait (bounded), the rerun settles and
    releases them."""
    with shards(3, mode="sync", num_workers=3) as servers:
        a, b, c = (s.address for s in servers)
        trainers = SyncTrainers(f"{a},{b}", 3, rows=True)
        reruns: list[subprocess.CompletedProcess] = []

        trainers.run(lambda: reruns.append(killed_resize_then_rerun(f"{a},{b}", f"{a},{b},{c}", kill_after)))
        assert trainers.addresses == [[a, b, c]] * 3
        trainers.check_against_numpy()
        with Client(f"{a},{b},{c}", observer=True) as observer:
            status = observer.status()
        assert len({json.dumps(s["placement"]) for s in status}) == 1  # one map everywhere
        assert [next(t["blocks"] for t in s["tables"] if t["name"] == "w") for s in status] == [4, 4, 3]
        owners = PlacementMap.from_json(json.loads(reruns[0].stdout)).bucket_owners("emb")
        assert sorted(np.bincount(owners, minlength=3)) == [1365, 1365, 1366]  # the row buckets even too


def test_a_move_larger_than_one_message_goes_in_pages(shards, monkeypatch):
    import launcher.placement_moves as placement_moves

    monkeypatch.setattr(placement_moves, "MOVE_PAGE_BYTES", 4096)  # a few blocks per Move message
    calls: list[int] = []
    real_call = placement_moves.call

    def counting(ch, method, request, *args):
        calls.append(request.skip)
        return real_call(ch, method, request, *args)

    monkeypatch.setattr(placement_moves, "call", counting)
    with shards(2) as servers:
        channels = _channels(servers)
        with Client(addresses(servers)) as client:
            for name in ("w", "ref"):  # "ref" never moves: the same updates must give the same values
                client.create(name, (12 * 512,), optimizer="adam", lr=0.5, block_elems=512)
            grad = np.arange(12 * 512, dtype=np.float32) % 7 - 3
            client.push({"w": grad, "ref": grad})
            before = client.pull(["w"])["w"]
            owned = PlacementMap.initial(2).owners("w", 12)
            placement = move_blocks(channels, {("w", b): 1 for b in owned[0]}, 10.0)
            assert placement.owners("w", 12) == [[], list(range(12))]
            assert any(skip > 0 for skip in calls)  # later pages were asked for
            assert np.array_equal(client.pull(["w"])["w"], before)
            for _ in range(3):  # Adam's moments and step counts moved with the values
                client.push({"w": grad, "ref": grad})
            got = client.pull(["w", "ref"])
            assert np.array_equal(got["w"], got["ref"])
            status = client.status()
        assert [next(t["blocks"] for t in s["tables"] if t["name"] == "w") for s in status] == [0, 12]
        for ch in channels:
            ch.close()


def test_rebalance_by_bytes_evens_a_skewed_placement(shards):
    with shards(2) as servers:
        channels = _channels(servers)
        with Client(addresses(servers)) as client:
            sizes = {"t0": 4096, "t1": 2048, "t2": 2048, "t3": 1024, "t4": 1024}
            for name, n in sizes.items():  # one block each
                client.create(name, (n,), optimizer="adam", lr=0.5, block_elems=4096)
                client.push({name: np.ones(n, np.float32)})
            home = PlacementMap.initial(2)
            move_blocks(channels, {(name, 0): 0 for name in sizes if home.block_owner(name, 0) != 0}, 10.0)
            before = client.pull(list(sizes))
            out = ps_admin("rebalance", "--servers", addresses(servers))
            assert out.returncode == 0, out.stderr
            result = json.loads(out.stdout)
            assert result["before"] == 2.0 and result["after"] <= 1.1 and result["moved"] >= 1, result
            after = client.pull(list(sizes))
            assert all(np.array_equal(before[n], after[n]) for n in sizes)
            client.push({name: np.ones(n, np.float32) for name, n in sizes.items()})  # trains on
            again = json.loads(ps_admin("rebalance", "--servers", addresses(servers)).stdout)
            assert again["moved"] == 0 and again["before"] <= 1.1  # nothing left to do
        for ch in channels:
            ch.close()


def test_rebalance_by_accesses_spreads_the_hot_blocks(shards):
    with shards(2) as servers:
        channels = _channels(servers)
        home = PlacementMap.initial(2)
        names = [f"t{i}" for i in range(12)]
        hot = [n for n in names if home.block_owner(n, 0) == 0][:2]
        assert len(hot) == 2
        with Client(addresses(servers)) as client:
            for name in names:
                client.create(name, (1024,), optimizer="sgd", lr=0.1, block_elems=1024)
            for _ in range(30):
                client.push({name: np.ones(1024, np.float32) for name in hot})
            out = ps_admin("rebalance", "--servers", addresses(servers), "--by", "accesses")
            assert out.returncode == 0, out.stderr
            result = json.loads(out.stdout)
            assert result["before"] > 1.8 and result["after"] <= 1.1, result
            owners = newest_placement(channels, 10.0, RetryPolicy())
            assert {owners.block_owner(n, 0) for n in hot} == {0, 1}  # one hot block on each shard
        for ch in channels:
            ch.close()


def test_rebalance_auto_rebalances_while_the_load_shifts(shards):
    """--auto: a round per interval; a table that turns hot between rounds is spread by a later round."""
    with shards(2) as servers:
        home = PlacementMap.initial(2)
        names = [f"t{i}" for i in range(12)]
        on_zero = [n for n in names if home.block_owner(n, 0) == 0]
        with Client(addresses(servers)) as client:
            for name in names:
                client.create(name, (1024,), optimizer="sgd", lr=0.1, block_elems=1024)
            for _ in range(30):
                client.push({name: np.ones(1024, np.float32) for name in on_zero[:2]})
            with subprocess.Popen([sys.executable, "-m", "launcher.admin_cli", "rebalance", "--servers",
                                   addresses(servers), "--by", "accesses", "--auto", "0.5", "--rounds", "3",
                                   "--timeout", "20"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  cwd=ROOT, env=CLEAN_ENV, stdin=subprocess.DEVNULL) as proc:
                try:
                    first = json.loads(proc.stdout.readline())
                    assert first["moved"] >= 1 and first["after"] <= 1.1, first
                    for _ in range(60):  # the load shifts: two other tables on shard 0 turn hot
                        client.push({name: np.ones(1024, np.float32) for name in on_zero[2:4]})
                    out, err = proc.communicate(timeout=60)
                    assert proc.returncode == 0, err
                    rounds = [first] + [json.loads(line) for line in out.splitlines()]
                finally:
                    if proc.poll() is None:
                        proc.kill()
        assert len(rounds) == 3 and all(r["after"] <= 1.1 for r in rounds), rounds
        assert any(r["moved"] >= 1 and r["before"] > 1.1 for r in rounds[1:]), rounds  # a later round acted


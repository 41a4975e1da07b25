"""Checkpoints are whole even in the middle of a move (issue 16, docs/placement.md "Checkpoints").

A move's source stops holding a unit when it gives it and keeps a copy until the release
(``Shard.kept``); a checkpoint taken in between saves that copy, marked kept, and a restore
puts every unit back (a held copy before a kept one, the newest of two held ones). The admin
is stopped after its gives with ``ps-admin move --kill-after settle`` (SIGKILL).

The oracle is the shards' own state read just before the checkpoint: every dense block's
values, optimizer state and version, every sparse row's values and optimizer state, wherever
the block or row is held or kept. After a restore each must be held once, on the shard the
map puts it on, bit for bit.

Real shards on loopback (ports from the OS); ``ps-admin`` as a real process.
"""

from __future__ import annotations

import numpy as np
import pytest

from ps import ServerConfig, ShardServer
from ps._proto import ps_pb2
from ps.tables.placement import row_buckets
from ps.tables.placement_map import PlacementMap
from ps.tables.spec import TableSpec
from tests.integration.test_placement import _channels, addresses, ps_admin
from worker import Client
from worker.client.transport import call

SIZE = 4096
NUM_BLOCKS = TableSpec("w", (SIZE,)).num_blocks
DIM = 4
IDS = np.arange(0, 3000, 3, dtype=np.int64)
HOME = PlacementMap.initial(2)


def _start(directory: str, **config) -> list[ShardServer]:
    return [ShardServer(ServerConfig(port=0, shard_index=i, num_shards=2, checkpoint_dir=directory,
                                     **config)).start() for i in range(2)]


def _stop(servers: list[ShardServer]) -> None:
    for s in servers:
        s.stop(grace_s=0.5)


def _train(client: Client, rounds: int, sparse: bool = False) -> None:
    """Adam on "w" (and Adagrad on the sparse "e"): optimizer state that a lost or stale block shows."""
    for k in range(rounds):
        client.push({"w": np.sin(np.arange(SIZE, dtype=np.float32) + k)})
        if sparse:
            client.push_rows("e", IDS, np.cos(IDS[:, None] + np.arange(DIM) + k).astype(np.float32))


def _create(client: Client, sparse: bool = False) -> None:
    client.create("w", (SIZE,), optimizer="adam", lr=0.1)
    if sparse:
        client.create_sparse("e", DIM, optimizer="adagrad", lr=0.5)


def _blocks(servers: list[ShardServer], kept: bool) -> dict[int, tuple]:
    """Table "w"'s blocks held on ``servers`` (``kept``: and the copies kept by a move, where no
    shard holds the block): ``{index: (version, values, optimizer state)}``. Asserts no block is
    held twice."""
    out: dict[int, tuple] = {}
    copies: dict[int, tuple] = {}
    for s in servers:
        shard = s.shard
        with shard.steps.lock:
            for index, block in shard.tables["w"].blocks.items():
                assert index not in out, f"block {index} held twice"
                out[index] = (block.version, block.values.copy(), {k: v.copy() for k, v in block.state.items()})
            for (table, rows, index), block in shard.kept.items():
                if table == "w" and not rows:
                    copies[index] = (block.version, block.values.copy(),
                                     {k: v.copy() for k, v in block.state.items()})
    if kept:
        out.update({index: copy for index, copy in copies.items() if index not in out})
    return out


def _rows(servers: list[ShardServer], kept: bool) -> dict[int, tuple]:
    """Sparse table "e"'s rows stored on ``servers`` (``kept``: and in kept buckets no shard
    holds): ``{id: (values, optimizer state)}``. Asserts no row is stored twice."""
    out: dict[int, tuple] = {}
    held: set[int] = set()
    copies: list[dict] = []
    for s in servers:
        shard = s.shard
        with shard.steps.lock:
            table = shard.rows.tables["e"]
            state = table.export_state()
            held |= set(np.flatnonzero(table.held).tolist())
            copies += [arrays for (name, rows, _), arrays in shard.kept.items() if name == "e" and rows]
        for i, row in enumerate(state["ids"].tolist()):
            assert row not in out, f"row {row} stored twice"
            out[row] = (state["values"][i], {k[6:]: v[i] for k, v in state.items() if k.startswith("state.")})
    if kept:
        for arrays in copies:
            for i, row in enumerate(arrays["ids"].tolist()):
                if int(row_buckets("e", np.array([row]))[0]) not in held:
                    out[row] = (arrays["values"][i], {k[6:]: v[i] for k, v in arrays.items() if k.startswith("state.")})
    return out


def _assert_same(got: dict, expect: dict, what: str) -> None:
    assert sorted(got) == sorted(expect), f"{what}: missing {sorted(set(expect) - set(got))[:8]}, " \
                                          f"extra {sorted(set(got) - set(expect))[:8]}"
    for key, want in expect.items():
        have = got[key]
        if len(want) == 3:  # a block: version, values, state
            assert have[0] == want[0], f"{what} {key}: version {have[0]}, expected {want[0]}"
            have, want = have[1:], want[1:]
        assert np.array_equal(have[0], want[0]), f"{what} {key}: values differ"
        assert sorted(have[1]) == sorted(want[1]) and all(np.array_equal(have[1][k], want[1][k]) for k in want[1]), \
            f"{what} {key}: optimizer state differs"


def _moved_buckets() -> list[int]:
    """Three row buckets of shard 0 that hold rows of IDS."""
    mine = IDS[HOME.row_shards("e", IDS) == 0]
    return sorted({int(k) for k in row_buckets("e", mine)})[:3]


def _stop_after_gives(servers: list[ShardServer], table: str, flag: str, units: list[int]) -> None:
    """``ps-admin move`` of ``units`` of ``table`` from shard 0 to 1, SIGKILLed right after its gives."""
    killed = ps_admin("move", "--servers", addresses(servers), "--table", table, flag, ",".join(map(str, units)),
                      "--to", "1", "--kill-after", "settle")
    assert killed.returncode == -9, killed.stderr


def _holds(server: ShardServer, table: str, units: list[int]) -> list[bool]:
    """Whether ``server`` holds each of ``units`` (blocks of "w", or row buckets of "e")."""
    shard = server.shard
    if table == "e":
        return [bool(shard.rows.tables["e"].held[k]) for k in units]
    return [b in shard.tables["w"].blocks for b in units]


def _values(client: Client, expect: dict, sparse: bool) -> tuple[np.ndarray, np.ndarray]:
    """What ``client`` pulls of "w" (``sparse``: of "e"'s rows IDS), and what ``expect`` says it is."""
    if sparse:
        return client.pull_rows("e", IDS), np.stack([expect[i][0] for i in IDS.tolist()])
    return client.pull(["w"])["w"], np.concatenate([expect[b][1] for b in range(NUM_BLOCKS)])


#: what moves: (table, ps-admin flag, the units of shard 0 that move, the oracle's reader, sparse)
CASES = {"blocks": ("w", "--blocks", lambda: HOME.blocks_of("w", NUM_BLOCKS, 0)[:2], _blocks, False),
         "row buckets": ("e", "--buckets", _moved_buckets, _rows, True)}


@pytest.mark.parametrize("what", sorted(CASES))
def test_a_cluster_checkpoint_after_a_give_restores_every_unit_exactly(tmp_path, what):
    """The admin is stopped after its gives: shard 0 keeps the units, shard 1 does not hold
    them yet. A cluster checkpoint then restores every block (row), exactly, and shard 0 keeps
    its copies so a rerun of the move finishes it."""
    table, flag, units, read, sparse = CASES[what]
    d, moved = str(tmp_path), units()
    servers = _start(d)
    try:
        with Client(addresses(servers)) as client:
            _create(client, sparse)
            _train(client, 3, sparse)
            _stop_after_gives(servers, table, flag, moved)
            assert sorted(k for t, _, k in servers[0].shard.kept if t == table) == moved
            assert not any(_holds(servers[1], table, moved))  # not taken yet
            expect = read(servers, kept=True)
            assert len(expect) == (len(IDS) if sparse else NUM_BLOCKS)
            client.checkpoint("mid-move")
    finally:
        _stop(servers)
    restored = _start(d, restore=True, restore_tag="mid-move")
    try:
        _assert_same(read(restored, kept=False), expect, what)
        assert all(_holds(restored[1], table, moved))
        assert sorted(k for t, _, k in restored[0].shard.kept if t == table) == moved  # kept again: a rerun finishes
        with Client(addresses(restored)) as client:
            got, want = _values(client, expect, sparse)
            assert np.array_equal(got, want)
            rerun = ps_admin("move", "--servers", addresses(restored))
            assert rerun.returncode == 0, rerun.stderr
            assert not restored[0].shard.kept
            _assert_same(read(restored, kept=False), expect, f"{what} after the rerun")
            _train(client, 1, sparse)  # trains on
    finally:
        _stop(restored)


def _give(servers: list[ShardServer], moves: dict) -> None:
    """The first half of a move, by its Move calls: every shard installs the next map (with
    ``moves``) and gives what it puts elsewhere; nobody takes (an admin that died there)."""
    wire = HOME.with_moves(moves).to_proto()
    channels = _channels(servers)
    try:
        for ch in channels:
            call(ch, ch.move, ps_pb2.MoveRequest(placement=wire, settle=True), 20.0)
    finally:
        for ch in channels:
            ch.close()


def test_a_source_restarted_alone_mid_move_keeps_its_copies_and_a_rerun_finishes_the_move(tmp_path):
    """Shard 0 gave two blocks and three row buckets (nobody took them yet), then stops (its
    final checkpoint, its own) and restarts alone from it: the copies it kept come back, and
    ``ps-admin move`` run again hands them to shard 1. Nothing is lost."""
    d = str(tmp_path)
    moves = {**{("w", False, b): 1 for b in HOME.blocks_of("w", NUM_BLOCKS, 0)[:2]},
             **{("e", True, k): 1 for k in _moved_buckets()}}
    configs = [ServerConfig(port=0, shard_index=i, num_shards=2, checkpoint_dir=d) for i in range(2)]
    servers = [ShardServer(c).start() for c in configs]
    try:
        with Client(addresses(servers)) as client:
            _create(client, sparse=True)
            _train(client, 3, sparse=True)
        _give(servers, moves)
        assert sorted(servers[0].shard.kept) == sorted(moves)
        expect_blocks, expect_rows = _blocks(servers, kept=True), _rows(servers, kept=True)
        assert sorted(expect_blocks) == list(range(NUM_BLOCKS)) and sorted(expect_rows) == IDS.tolist()

        servers[0].stop(grace_s=0.5)  # its final checkpoint, taken mid-move
        servers[0] = ShardServer(ServerConfig(**{**configs[0].__dict__, "port": servers[0].port,
                                                 "restore": True})).start()
        assert sorted(servers[0].shard.kept) == sorted(moves)
        rerun = ps_admin("move", "--servers", addresses(servers))
        assert rerun.returncode == 0, rerun.stderr
        assert not servers[0].shard.kept
        _assert_same(_blocks(servers, kept=False), expect_blocks, "block")
        _assert_same(_rows(servers, kept=False), expect_rows, "row")
        with Client(addresses(servers), wait_timeout_s=10.0) as client:  # a block never arriving: fails
            for sparse, expect in ((False, expect_blocks), (True, expect_rows)):
                got, want = _values(client, expect, sparse)
                assert np.array_equal(got, want)
            _train(client, 1, sparse=True)
    finally:
        _stop(servers)


def test_a_checkpoint_whose_files_hold_a_block_and_a_bucket_twice_restores_the_newer(tmp_path):
    """Shard 0 writes its file of checkpoint "across" before a move, shard 1 after it (and
    after more pushes): both files hold the moved block and row bucket. The restore takes
    shard 1's (the newer block version, the newer map) instead of failing."""
    d = str(tmp_path)
    block, bucket = HOME.blocks_of("w", NUM_BLOCKS, 0)[0], _moved_buckets()[0]
    servers = _start(d)
    channels = _channels(servers)
    try:
        with Client(addresses(servers)) as client:
            _create(client, sparse=True)
            _train(client, 2, sparse=True)
            call(channels[0], channels[0].checkpoint, ps_pb2.CheckpointRequest(tag="across"), 20.0)
            early_blocks, early_rows = _blocks(servers[:1], kept=False), _rows(servers[:1], kept=False)
            out = ps_admin("move", "--servers", addresses(servers), "--table", "w", "--blocks", str(block),
                           "--to", "1")
            assert out.returncode == 0, out.stderr
            out = ps_admin("move", "--servers", addresses(servers), "--table", "e", "--buckets", str(bucket),
                           "--to", "1")
            assert out.returncode == 0, out.stderr
            _train(client, 2, sparse=True)
            call(channels[1], channels[1].checkpoint, ps_pb2.CheckpointRequest(tag="across"), 20.0)
            late_blocks, late_rows = _blocks(servers[1:], kept=False), _rows(servers[1:], kept=False)
    finally:
        for ch in channels:
            ch.close()
        _stop(servers)
    assert block in early_blocks and block in late_blocks and late_blocks[block][0] > early_blocks[block][0]
    in_bucket = [int(i) for i in IDS[row_buckets("e", IDS) == bucket]]
    assert in_bucket and all(i in early_rows and i in late_rows for i in in_bucket)
    restored = _start(d, restore=True, restore_tag="across")
    try:
        expect_blocks = {**{b: v for b, v in early_blocks.items() if b != block}, **late_blocks}
        _assert_same(_blocks(restored, kept=False), expect_blocks, "block")
        assert block in restored[1].shard.tables["w"].blocks
        expect_rows = {**{i: v for i, v in early_rows.items() if i not in late_rows}, **late_rows}
        _assert_same(_rows(restored, kept=False), expect_rows, "row")
        assert restored[1].shard.rows.tables["e"].held[bucket]
    finally:
        _stop(restored)

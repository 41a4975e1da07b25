"""Checkpoints and the copies a move keeps (``Shard.kept``), socket-free: a checkpoint written
before kept copies and held buckets were saved (no ``held`` array, no kept piece, no
``placement_version`` in the manifest) restores as it did, and a shard in the middle of a
move flags its manifest so that a restore reads every file of the checkpoint."""

import json

import numpy as np
import pytest

from ps.checkpoint import state as checkpoint
from ps.config import ServerConfig
from ps.shard.moves import UnitMoves
from ps.shard.shard import Shard
from ps.tables.optim import OptimizerSpec
from ps.tables.placement import row_buckets
from ps.tables.sparse_spec import SparseTableSpec
from ps.tables.spec import TableSpec
from tests.unit.test_placement_checkpoint import write_as_older

DENSE = TableSpec("w", (64,), block_elems=8, optimizer=OptimizerSpec("adam", lr=0.1))
SPARSE = SparseTableSpec("e", 3, optimizer=OptimizerSpec("adagrad", lr=0.5))
IDS = np.arange(0, 600, 7, dtype=np.int64)


def trained() -> list[Shard]:
    shards = [Shard(ServerConfig(shard_index=i, num_shards=2)) for i in range(2)]
    for s in shards:
        s.create_table(DENSE)
        s.rows.create(SPARSE)
        for block in s.tables["w"].blocks.values():
            s.tables["w"].apply(block, np.full(8, block.index + 1.0, np.float32))
        table = s.rows.tables["e"]
        own = IDS[table.held[row_buckets("e", IDS)]]
        table.apply(own, np.repeat(own[:, None].astype(np.float32), 3, axis=1))
    return shards


def blocks_and_rows(tables: dict) -> tuple[dict, dict]:
    dense = {b: (blk.version, blk.values.copy(), {k: v.copy() for k, v in blk.state.items()})
             for t in tables["dense"] for b, blk in t.blocks.items()}
    rows = {}
    for t in tables["sparse"]:
        state = t.export_state()
        for i, row in enumerate(state["ids"].tolist()):
            rows[row] = (state["values"][i].copy(),
                         {k: v[i].copy() for k, v in state.items() if k.startswith("state.")})
    return dense, rows


def same(a: dict, b: dict) -> bool:
    def eq(x, y):
        if isinstance(x, dict):
            return sorted(x) == sorted(y) and all(eq(x[k], y[k]) for k in x)
        if isinstance(x, tuple):
            return len(x) == len(y) and all(eq(p, q) for p, q in zip(x, y))
        return bool(np.array_equal(x, y))
    return sorted(a) == sorted(b) and all(eq(a[k], b[k]) for k in a)


def test_a_checkpoint_without_kept_copies_or_held_buckets_restores_as_before(tmp_path):
    shards = trained()
    expect = [blocks_and_rows({"dense": list(s.tables.values()), "sparse": list(s.rows.tables.values())})
              for s in shards]
    for s in shards:
        saved = checkpoint.capture(s, "older")
        for part in saved.tables:
            part.arrays.pop("held", None)  # written before a file said which buckets it holds
        write_as_older(checkpoint.write(str(tmp_path), saved), "placement_version")
    for i in range(2):
        state = checkpoint.load(str(tmp_path), i, 2, "older")
        assert state is not None and len(state.sources) == 1  # its own file, as before
        assert not state.kept
        dense, rows = blocks_and_rows(state.tables)
        assert expect[i][0] and expect[i][1]
        assert same(dense, expect[i][0]) and same(rows, expect[i][1])


def test_a_shard_mid_move_flags_its_manifest_and_saves_its_kept_copies(tmp_path):
    shards = trained()
    placement = shards[0].current_placement()
    block = placement.blocks_of("w", DENSE.num_blocks, 0)[0]
    new = placement.with_moves({("w", False, block): 1})
    for s in shards:
        UnitMoves(s).give(new, None, 5.0)  # every shard installs the map; shard 0 gives, nobody takes
    assert list(shards[0].kept) == [("w", False, block)]
    paths = [checkpoint.write(str(tmp_path), checkpoint.capture(s, "mid")) for s in shards]
    manifests = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            manifests.append(json.load(f))
    assert [m["placement_moved"] for m in manifests] == [True, True]  # kept copies; a block awaited
    assert [m["placement_version"] for m in manifests] == [2, 2]
    state = checkpoint.load(str(tmp_path), 1, 2, "mid")
    assert len(state.sources) == 2 and block in state.tables["dense"][0].blocks  # from shard 0's kept copy
    own = checkpoint.load(str(tmp_path), 0, 2, "mid")
    assert list(own.kept) == [("w", False, block)] and block not in own.tables["dense"][0].blocks
    assert np.array_equal(own.kept[("w", False, block)].values, state.tables["dense"][0].blocks[block].values)


def test_a_kept_piece_that_does_not_fit_is_a_checkpoint_error():
    from ps.checkpoint.codecs import CODECS, CheckpointError, Piece, spec_to_json

    placement = Shard(ServerConfig(shard_index=0, num_shards=2)).current_placement()
    rows = {"ids": np.zeros(0, np.int64), "values": np.zeros((0, 3), np.float32),
            "state.sum": np.zeros((0, 3), np.float32), "accesses": np.zeros(1, np.int64)}
    bad_bucket = Piece({"spec": spec_to_json(SPARSE), "kept": True, "buckets": [1 << 20]}, rows, 0, placement, True)
    for call in (CODECS["sparse"].restore, CODECS["sparse"].restore_kept):
        with pytest.raises(CheckpointError, match="out of range"):
            call([bad_bucket], 1, placement)
    block = DENSE.num_blocks + 3
    bad_block = Piece({"spec": spec_to_json(DENSE), "kept": True, "blocks": [[block, 1]]},
                      {f"{block}.values": np.zeros(8, np.float32)}, 0, placement, True)
    with pytest.raises(CheckpointError, match="out of range"):
        CODECS["dense"].restore_kept([bad_block], 0, placement)

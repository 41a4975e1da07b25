"""Checkpoints written before the placement map (blocks placed by the earlier jump-hash rule, no
map in the header, no "placement_moved" in the manifest) restore onto the same shard count:
every shard's file of the checkpoint is read. Socket-free."""

import json
import os

import numpy as np

from ps.checkpoint import state as checkpoint
from ps.checkpoint.files import manifest_checksum
from ps.config import ServerConfig
from ps.shard.shard import Shard
from ps.tables.spec import TableSpec

SPEC = TableSpec("w", (64,), block_elems=8)


def write_as_older(manifest_path: str, *fields: str) -> None:
    """Rewrite a checkpoint's manifest as a writer before ``fields`` existed did: without them."""
    with open(manifest_path, encoding="utf-8") as f:
        manifest = json.load(f)
    body = {k: v for k, v in manifest.items() if k not in ("checksum", *fields)}
    with open(manifest_path, "w", encoding="utf-8") as f:
        json.dump(dict(body, checksum=manifest_checksum(body)), f)


def test_a_checkpoint_of_an_older_placement_restores_onto_the_same_count(tmp_path):
    shards = [Shard(ServerConfig(shard_index=i, num_shards=2)) for i in range(2)]
    for s in shards:
        s.create_table(SPEC)
    # lay the blocks out as another rule did: every block on the shard the map does not put it on
    held = [dict(s.tables["w"].blocks) for s in shards]
    for i, s in enumerate(shards):
        for b in list(held[i]):
            s.tables["w"].move_out(b)
        for block in held[1 - i].values():
            block.values[:] = block.index  # recognisable values
            s.tables["w"].move_in(block)
    for s in shards:
        saved = checkpoint.capture(s, "old")
        saved.placement = None  # an older writer kept no map
        write_as_older(checkpoint.write(str(tmp_path), saved), "placement_moved")
    for i in range(2):
        state = checkpoint.load(str(tmp_path), i, 2, "old")
        assert state is not None, "the older checkpoint was skipped"
        (table,) = state.tables["dense"]
        assert sorted(table.blocks) == state.placement.blocks_of("w", SPEC.num_blocks, i)
        assert all(np.all(table.blocks[b].values == b) for b in table.blocks)
    assert os.listdir(tmp_path) == ["old"]

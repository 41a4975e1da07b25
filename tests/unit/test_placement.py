"""Placement: the default rule is stable across processes and hash seeds and even; the
versioned map records moves, encodes without pickle, and refuses nonsense."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ps.errors import InvalidArgumentError
from ps.tables.placement import ROW_BUCKETS, block_shard, blocks_of_shard, row_buckets, row_shards
from ps.tables.placement_map import PlacementMap
from ps.tables.spec import DEAL_BLOCKS, DEFAULT_BLOCK_ELEMS, MIN_DEAL_BLOCK_ELEMS, TableSpec, balanced_block_elems

_PROBE = ("import numpy as np; from ps.tables.placement import block_shard, row_shards; "
          "print([block_shard('layer1/w', b, 4) for b in range(200)], "
          "row_shards('emb', np.arange(100), 3).tolist())")


def test_placement_identical_across_processes_and_hash_seeds():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    outs = set()
    for seed in ("0", "1", "12345", "random"):
        env = dict(os.environ, PYTHONHASHSEED=seed, PYTHONPATH=root)
        out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True,
                             timeout=60, check=True)
        outs.add(out.stdout)
    here = f"{[block_shard('layer1/w', b, 4) for b in range(200)]} {row_shards('emb', np.arange(100), 3).tolist()}\n"
    assert outs == {here}


@pytest.mark.parametrize("num_blocks,num_shards", [(16, 2), (12, 3), (13, 4), (1, 3), (1000, 7)])
def test_blocks_are_dealt_evenly_and_partition_the_table(num_blocks, num_shards):
    owned = [blocks_of_shard("t", num_blocks, s, num_shards) for s in range(num_shards)]
    assert sorted(b for part in owned for b in part) == list(range(num_blocks))
    assert max(map(len, owned)) - min(map(len, owned)) <= 1
    assert all(block_shard("t", b, num_shards) == s for s in range(num_shards) for b in owned[s])


def test_tables_start_on_different_shards():
    firsts = {block_shard(f"table{i}", 0, 4) for i in range(40)}
    assert firsts == {0, 1, 2, 3}


def test_rows_spread_evenly_over_buckets_and_shards():
    ids = np.arange(-50_000, 50_000, dtype=np.int64) * 7919
    counts = np.bincount(row_shards("emb", ids, 4), minlength=4)
    assert np.all(np.abs(counts - len(ids) / 4) <= 0.05 * len(ids) / 4)
    buckets = row_buckets("emb", ids)
    assert buckets.min() >= 0 and buckets.max() < ROW_BUCKETS
    assert np.array_equal(row_shards("emb", ids, 1), np.zeros(len(ids), dtype=np.int64))


def test_bad_shard_count_is_refused():
    with pytest.raises(ValueError):
        block_shard("t", 1, 0)
    with pytest.raises(ValueError):
        row_shards("t", np.arange(3), 0)


def test_the_automatic_block_size_splits_for_balance_but_not_below_a_step_worth_block():
    assert TableSpec("b", (10,)).num_blocks == 1                   # tiny: one block
    assert TableSpec("s", (1024,)).num_blocks == 1                 # 4 KiB: one block, one call per step
    assert TableSpec("w", (4096,)).block_elems == 2048             # two blocks: balances over 2 shards
    assert TableSpec("m", (1 << 18,)).num_blocks == 2              # 1 MiB: 2 x 512 KiB, not 12 small blocks
    assert TableSpec("mid", (1 << 20,)).block_elems == MIN_DEAL_BLOCK_ELEMS  # 4 MiB: 8 x 512 KiB
    assert TableSpec("many", (3 << 19,)).num_blocks == DEAL_BLOCKS
    assert TableSpec("big", (1 << 22,)).block_elems == DEFAULT_BLOCK_ELEMS  # 16 MiB of float32: 16 x 1 MiB
    assert TableSpec("x", (1000,), block_elems=7).block_elems == 7   # an explicit size is kept
    assert TableSpec("w", (4096,)) == TableSpec("w", (4096,), block_elems=balanced_block_elems(4096))


def test_the_map_records_only_moves_and_round_trips():
    base = PlacementMap.initial(3)
    assert base.version == 1 and base.moved == {}
    owner = base.block_owner("w", 5)
    other = (owner + 1) % 3
    moved = base.with_moves({("w", False, 5): other, ("w", False, 6): base.block_owner("w", 6),
                             ("emb", True, 7): 2})
    assert moved.version == 2
    assert moved.block_owner("w", 5) == other and moved.block_owner("w", 4) == base.block_owner("w", 4)
    assert ("w", False, 6) not in moved.moved          # where the rule puts it: not recorded
    assert sum(map(len, moved.owners("w", 10))) == 10 and 5 in moved.owners("w", 10)[other]
    assert [moved.count_of("w", 10, k) for k in range(3)] == [len(x) for x in moved.owners("w", 10)]
    ids = np.arange(20_000, dtype=np.int64)
    in_bucket_7 = ids[row_buckets("emb", ids) == 7]
    assert (moved.row_shards("emb", in_bucket_7) == 2).all()
    assert PlacementMap.from_proto(moved.to_proto()) == moved
    assert PlacementMap.from_json(json.loads(json.dumps(moved.to_json()))) == moved
    assert "v2 on 3 shards, 1 block and" in moved.describe()


@pytest.mark.parametrize("bad", [
    dict(version=0, num_shards=2), dict(version=1, num_shards=0),
    dict(version=1, num_shards=2, moved={("w", False, 0): 2}),
    dict(version=1, num_shards=2, moved={("e", True, ROW_BUCKETS): 1}),
    dict(version=1, num_shards=2, addresses=["a"]),
])
def test_a_bad_map_is_refused(bad):
    with pytest.raises(InvalidArgumentError):
        PlacementMap(**bad)


def test_a_malformed_json_map_is_refused():
    with pytest.raises(InvalidArgumentError):
        PlacementMap.from_json({"num_shards": 2})
    with pytest.raises(InvalidArgumentError):
        PlacementMap.from_json({"version": 1, "num_shards": 2, "moved": [["w", False, 0, 1], ["w", False, 0, 0]]})


def test_plan_resize_keeps_blocks_in_place_up_to_an_even_share_and_deals_the_rest():
    from ps._proto import ps_pb2
    from launcher.placement_moves import plan_resize

    spec = TableSpec("w", (12 * 512,), block_elems=512).to_proto()   # 12 blocks
    tiny = TableSpec("b", (10,)).to_proto()                           # 1 block
    start = PlacementMap.initial(2)
    grown = plan_resize(start, ["a", "b"], ["a", "b", "c"], [spec, tiny])
    assert grown.version == 2 and grown.addresses == ("a", "b", "c")
    owners = grown.owners("w", 12)
    assert list(map(len, owners)) == [4, 4, 4]
    stayed = sum(1 for blk in range(12) if grown.block_owner("w", blk) == start.block_owner("w", blk))
    assert stayed == 8   # only the new shard's share moved
    assert grown.block_owner("b", 0) == start.block_owner("b", 0)
    shrunk = plan_resize(grown, ["a", "b", "c"], ["b", "c"], [spec, tiny])
    assert list(map(len, shrunk.owners("w", 12))) == [6, 6]
    for blk in range(12):  # what b and c held stays with them
        before = ("a", "b", "c")[grown.block_owner("w", blk)]
        if before != "a":
            assert ("b", "c")[shrunk.block_owner("w", blk)] == before
    assert isinstance(ps_pb2.PlacementMap.FromString(shrunk.to_proto().SerializeToString()), ps_pb2.PlacementMap)

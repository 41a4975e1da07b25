"""A checkpoint taken with N shards restores onto M shards: identical parameters and
optimizer state, block by block (dense) and row by row (sparse). Socket-free."""

import numpy as np
import pytest

from ps.checkpoint import state as checkpoint
from ps.config import ServerConfig
from ps.tables.optim import OptimizerSpec
from ps.tables.placement import row_shards
from ps.shard.shard import Shard
from ps.tables.sparse_spec import SparseTableSpec
from ps.tables.spec import InitSpec, TableSpec

DENSE = [
    TableSpec("w", (30, 7), block_elems=16, optimizer=OptimizerSpec(name="adam", lr=0.05),
              init=InitSpec("normal", 1.0, 1)),
    TableSpec("b", (9,), block_elems=4, optimizer=OptimizerSpec(name="momentum", lr=0.1, momentum=0.9),
              init=InitSpec("uniform", 0.5, 2)),
    TableSpec("f", (20,), block_elems=8, optimizer=OptimizerSpec(name="ftrl", lr=0.1, l1=0.01, l2=0.1)),
]
SPARSE = SparseTableSpec("emb", dim=4, optimizer=OptimizerSpec(name="adagrad", lr=0.1))
IDS = np.array([3, 17, 99, 1000, 12345, 7, 8, 2**40], dtype=np.int64)


def cluster(n):
    shards = [Shard(ServerConfig(shard_index=i, num_shards=n)) for i in range(n)]
    for s in shards:
        for spec in DENSE:
            s.create_table(spec)
        s.rows.create(SPARSE)
    return shards


def train(shards, steps=3):
    rng = np.random.default_rng(5)
    for s in shards:
        s.register(0)
    for k in range(steps):
        for s in shards:
            refs, grads = [], []
            for spec in DENSE:
                full = rng.standard_normal(spec.size).astype(np.float32)
                for b in sorted(s.tables[spec.name].blocks):
                    start, stop = spec.block_range(b)
                    refs.append((spec.name, b))
                    grads.append(full[start:stop])
            s.push(0, 2 * k + 1, k, 0, 1, refs, grads, 5.0)
        row_grads = rng.standard_normal((len(IDS), SPARSE.dim)).astype(np.float32)
        owner = row_shards(SPARSE.name, IDS, len(shards))
        for i, s in enumerate(shards):
            mine = owner == i
            if mine.any():
                s.rows.push(0, 2 * k + 2, k, 0, 1, SPARSE.name, IDS[mine], row_grads[mine], 5.0)


def assemble(shards):
    """Every dense value and optimizer slot, and every sparse row and its state, by key."""
    out = {}
    for s in shards:
        for name, table in s.tables.items():
            for b, block in table.blocks.items():
                out[(name, b, "values", "")] = block.values.copy()
                for slot, arr in block.state.items():
                    out[(name, b, "state", slot)] = np.array(arr)
                out[(name, b, "version", "")] = np.array(block.version)
        state = s.rows.tables[SPARSE.name].export_state()
        for j, row in enumerate(state["ids"]):
            out[(SPARSE.name, int(row), "values", "")] = state["values"][j]
            for key in state:
                if key.startswith("state."):
                    out[(SPARSE.name, int(row), "state", key)] = state[key][j]
    return out


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    directory = tmp_path_factory.mktemp("ckpt")
    shards = cluster(2)
    train(shards)
    for s in shards:
        checkpoint.write(str(directory), checkpoint.capture(s, "cluster-1"))
    return str(directory), assemble(shards)


@pytest.mark.parametrize("m", [3, 1, 2])
def test_two_shards_restore_onto_m(saved, m):
    directory, expected = saved
    restored = []
    for i in range(m):
        state = checkpoint.load(directory, i, m)
        assert state is not None and state.tag == "cluster-1" and state.version == 6
        shard = Shard(ServerConfig(shard_index=i, num_shards=m))
        checkpoint.install(shard, state)
        assert (state.dedup is None) == (m != 2)   # sequence numbers are per shard
        restored.append(shard)
    got = assemble(restored)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        np.testing.assert_array_equal(got[key], value, err_msg=str(key))
    # every block lives on exactly the shard that owns it under the new topology
    counts = sum(len(t.blocks) for s in restored for t in s.tables.values())
    assert counts == sum(spec.num_blocks for spec in DENSE)


def test_resharding_needs_every_old_shards_file(saved, tmp_path):
    import shutil

    directory, _ = saved
    partial = tmp_path / "partial"
    shutil.copytree(directory, partial)
    for name in (partial / "cluster-1").iterdir():
        if name.name.startswith("shard-00001"):
            name.unlink()
    assert checkpoint.load(str(partial), 0, 3) is None     # incomplete for 3 shards: nothing restored
    assert checkpoint.load(str(partial), 0, 2) is not None  # shard 0 of 2 still has its own file

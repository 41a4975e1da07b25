"""Checkpoint files: atomic, checksummed, no pickle, retention, and what a capture holds.

Socket-free: shards are ``ps.shard.shard.Shard`` objects driven directly.
"""

import json
import logging
import os
import threading

import numpy as np
import pytest

from ps.checkpoint import files as checkpoint_files, state as checkpoint
from ps.checkpoint.checkpointer import Checkpointer
from ps.config import ServerConfig
from ps.shard.consistency import Mode
from ps.errors import AbortedError, FailedPreconditionError, InvalidArgumentError
from ps.tables.optim import OptimizerSpec
from ps.shard.shard import Shard
from ps.tables.spec import InitSpec, TableSpec

SPEC = TableSpec("w", (40,), block_elems=16, optimizer=OptimizerSpec(name="momentum", lr=1.0, momentum=0.5),
                 init=InitSpec("normal", 1.0, 7))


def make_shard(tmp_path=None, mode=Mode.ASYNC, **config):
    cfg = ServerConfig(shard_index=0, num_shards=1, mode=mode, checkpoint_dir=str(tmp_path) if tmp_path else None,
                       **config)
    shard = Shard(cfg)
    shard.create_table(SPEC)
    return shard


def push(shard, worker, seq, value, step=0):
    blocks = sorted(shard.tables["w"].blocks)
    grads = [np.full(SPEC.block_range(b)[1] - SPEC.block_range(b)[0], value, np.float32) for b in blocks]
    return shard.push(worker, seq, step, 0, 1, [("w", b) for b in blocks], grads, 5.0).outcome


def values(shard):
    return np.concatenate([shard.tables["w"].blocks[b].values for b in sorted(shard.tables["w"].blocks)])


def save(shard, tmp_path, tag):
    return checkpoint.write(str(tmp_path), checkpoint.capture(shard, tag))


def read_json(path):
    with open(path) as f:
        return json.load(f)


def restored(tmp_path, mode=Mode.ASYNC):
    state = checkpoint.load(str(tmp_path), 0, 1)
    shard = Shard(ServerConfig(shard_index=0, num_shards=1, mode=mode))
    if state is not None:
        checkpoint.install(shard, state)
    return state, shard


def test_write_is_atomic_and_leaves_no_temporary_files(tmp_path):
    shard = make_shard()
    shard.register(0)
    push(shard, 0, 1, 2.0)
    path = save(shard, tmp_path, "first")
    names = sorted(os.listdir(tmp_path / "first"))
    assert len(names) == 2 and os.path.basename(path) in names      # the data file and its manifest
    assert not [n for n in names if n.startswith(".tmp")]
    manifest = read_json(path)
    assert manifest["version"] == 1 and len(manifest["data"]["sha256"]) == 64
    state, again = restored(tmp_path)
    np.testing.assert_array_equal(values(again), values(shard))
    assert again.epoch == 1 and again.gate.version == 1


def test_data_file_is_plain_npz_without_pickle(tmp_path):
    shard = make_shard()
    save(shard, tmp_path, "t")
    data = [n for n in os.listdir(tmp_path / "t") if n.endswith(".npz")][0]
    with np.load(tmp_path / "t" / data, allow_pickle=False) as npz:
        header = json.loads(bytes(npz["header"]).decode())
        assert header["format"] == checkpoint.FORMAT
        assert all(npz[k].dtype != object for k in npz.files)


@pytest.mark.parametrize("damage", ["flip data byte", "truncate data", "flip manifest byte", "delete data"])
def test_damaged_newest_checkpoint_is_skipped_for_the_previous(tmp_path, damage, caplog):
    shard = make_shard()
    shard.register(0)
    push(shard, 0, 1, 1.0)
    save(shard, tmp_path, "old")
    good = values(shard).copy()
    push(shard, 0, 2, 1.0)
    manifest = save(shard, tmp_path, "new")
    data = tmp_path / "new" / read_json(manifest)["data"]["file"]
    if damage == "flip data byte":
        raw = bytearray(data.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        data.write_bytes(bytes(raw))
    elif damage == "truncate data":
        data.write_bytes(data.read_bytes()[:100])
    elif damage == "flip manifest byte":
        with open(manifest) as f:
            text = f.read().replace('"version": 2', '"version": 3')
        with open(manifest, "w") as f:
            f.write(text)
    else:
        data.unlink()
    with caplog.at_level(logging.WARNING, logger="ps.checkpoint"):
        state, again = restored(tmp_path)
    assert state is not None and state.tag == "old"
    np.testing.assert_array_equal(values(again), good)
    assert any("new" in r.getMessage() or "manifest" in r.getMessage() for r in caplog.records)


def test_tampered_file_with_an_object_array_is_refused_not_unpickled(tmp_path):
    shard = make_shard()
    manifest_path = save(shard, tmp_path, "t")
    manifest = read_json(manifest_path)
    data = tmp_path / "t" / manifest["data"]["file"]
    with np.load(data, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["a0"] = np.array([{"evil": 1}], dtype=object)  # rewritten, checksums made to match
    with open(data, "wb") as f:
        np.savez(f, **arrays)
    digest, size = checkpoint_files.sha256_of(str(data))
    manifest["data"].update(sha256=digest, bytes=size)
    body = {k: v for k, v in manifest.items() if k != "checksum"}
    manifest["checksum"] = checkpoint_files.manifest_checksum(body)
    with open(manifest_path, "w") as f:
        json.dump(manifest, f)
    assert checkpoint.load(str(tmp_path), 0, 1) is None


def test_nothing_to_restore_is_none(tmp_path):
    assert checkpoint.load(str(tmp_path / "missing"), 0, 1) is None
    assert checkpoint.load(str(tmp_path), 0, 1) is None


def test_keep_newest_k(tmp_path):
    shard = make_shard(tmp_path, keep_checkpoints=2)
    writer = Checkpointer(shard, shard.config)
    tags = [writer.checkpoint(f"c{i}").tag for i in range(4)]
    assert sorted(os.listdir(tmp_path)) == tags[2:]


def test_non_finite_model_is_never_checkpointed(tmp_path):
    shard = make_shard(tmp_path, nonfinite="allow")
    writer = Checkpointer(shard, shard.config)
    shard.register(0)
    writer.checkpoint("finite")
    push(shard, 0, 1, np.nan)
    with pytest.raises(FailedPreconditionError, match="NaN"):
        writer.checkpoint("poisoned")
    assert os.listdir(tmp_path) == ["finite"] or sorted(os.listdir(tmp_path)) == ["finite", "poisoned"]
    assert checkpoint.load(str(tmp_path), 0, 1).tag == "finite"


def test_bad_tags_are_refused(tmp_path):
    shard = make_shard(tmp_path)
    writer = Checkpointer(shard, shard.config)
    for tag in ("../escape", ".hidden", "a/b", "", "x" * 200):
        with pytest.raises(InvalidArgumentError):
            writer.checkpoint(tag) if tag else checkpoint.check_tag(tag)


def test_dedup_table_survives_a_restore(tmp_path):
    shard = make_shard()
    shard.register(3)
    assert push(shard, 3, 1, 1.0) == "applied"
    assert push(shard, 3, 2, 1.0) == "applied"
    save(shard, tmp_path, "t")
    _, again = restored(tmp_path)
    assert again.register(3)[2] == 3                      # next_seq resumes after the checkpoint
    assert push(again, 3, 2, 1.0) == "duplicate"          # a retry of an acknowledged push
    assert push(again, 3, 3, 1.0) == "applied"


def test_sync_capture_holds_applied_steps_only(tmp_path):
    shard = make_shard(mode=Mode.SYNC)
    shard.register(0)
    shard.register(1)
    push(shard, 0, 1, 1.0, step=0)
    push(shard, 1, 1, 1.0, step=0)                        # step 0 applied: version 1
    after_step = values(shard).copy()
    push(shard, 0, 2, 4.0, step=1)                        # step 1 open: worker 0 contributed
    save(shard, tmp_path, "mid-step")
    _, again = restored(tmp_path, Mode.SYNC)
    np.testing.assert_array_equal(values(again), after_step)
    assert again.gate.version == 1
    assert again.gate.workers[0].clock == 1               # capped at the version
    assert push(again, 0, 2, 4.0, step=1) == "accumulated"  # not remembered as seen: applies again


def test_sync_checkpoint_at_a_version_waits_for_it_and_refuses_a_passed_one(tmp_path):
    shard = make_shard(tmp_path, mode=Mode.SYNC)
    writer = Checkpointer(shard, shard.config)
    shard.register(0)
    result = {}
    waiter = threading.Thread(target=lambda: result.setdefault("w", writer.checkpoint("at1", at_version=1)))
    waiter.start()
    push(shard, 0, 1, 1.0, step=0)
    waiter.join(10)
    assert not waiter.is_alive() and result["w"].version == 1
    push(shard, 0, 2, 1.0, step=1)
    with pytest.raises(AbortedError, match="past"):
        writer.checkpoint("at1-again", at_version=1)


def test_restore_a_named_checkpoint_rather_than_the_newest(tmp_path):
    shard = make_shard()
    shard.register(0)
    push(shard, 0, 1, 1.0)
    save(shard, tmp_path, "cluster-a")
    push(shard, 0, 2, 1.0)
    save(shard, tmp_path, "auto-later")
    assert checkpoint.load(str(tmp_path), 0, 1).tag == "auto-later"
    assert checkpoint.load(str(tmp_path), 0, 1, tag="cluster-a").version == 1
    cfg = ServerConfig(shard_index=0, num_shards=1, checkpoint_dir=str(tmp_path), restore=True, restore_tag="missing")
    with pytest.raises(FailedPreconditionError, match="missing"):
        Checkpointer(Shard(cfg), cfg).restore()


def test_a_torn_temporary_file_is_cleaned_up_by_the_next_checkpoint(tmp_path):
    shard = make_shard(tmp_path)
    writer = Checkpointer(shard, shard.config)
    (tmp_path / "crashed").mkdir()
    (tmp_path / "crashed" / ".tmp-shard-00000-of-00001-v3-abcd.npz-x1").write_bytes(b"torn")
    (tmp_path / "crashed" / ".tmp-shard-00001-of-00002-v3-abcd.npz-x1").write_bytes(b"another shard's")
    writer.checkpoint("next")
    assert sorted(p.name for p in (tmp_path / "crashed").iterdir()) == [".tmp-shard-00001-of-00002-v3-abcd.npz-x1"]


def test_pruning_leaves_another_shards_new_tag_folder_alone(tmp_path):
    # two shards sharing one checkpoint directory (compose's volume): shard 0 has just made
    # the folder of its final checkpoint and is about to write into it when shard 1 prunes
    (tmp_path / "final-s0").mkdir()
    (tmp_path / "crashed").mkdir()
    (tmp_path / "crashed" / ".tmp-shard-00001-of-00002-v3-abcd.npz-x1").write_bytes(b"shard 1's torn file")
    checkpoint_files.prune(str(tmp_path), 1, 2, keep=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final-s0"]   # its own emptied folder went
    assert not list((tmp_path / "final-s0").iterdir())

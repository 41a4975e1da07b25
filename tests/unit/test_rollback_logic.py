"""Sync rollbacks without sockets: choosing the shared checkpoint, the shard's fence,
retention of cluster checkpoints, and the worker cap (docs/failure-semantics.md 3 and 5)."""

import numpy as np
import pytest

from ps.checkpoint import files as checkpoint_files, state as checkpoint
from ps._proto import ps_pb2
from ps.checkpoint.checkpointer import Checkpointer
from ps.shard.consistency import Mode
from ps.errors import AbortedError, ResourceExhaustedError
from tests.unit.test_checkpoint import make_shard, push, values
from worker.client.membership import Membership


def status(*checkpoints):
    reply = ps_pb2.StatusReply()
    for tag, version, cluster, created in checkpoints:
        reply.checkpoints.add(tag=tag, version=version, cluster=cluster, created=created)
    return reply


def test_newest_shared_counts_only_cluster_checkpoints_every_shard_holds_at_one_version():
    a = status(("k1", 4, True, 1.0), ("k2", 8, True, 2.0), ("auto-s0", 9, False, 3.0), ("k3", 12, True, 4.0))
    b = status(("k1", 4, True, 1.1), ("k2", 8, True, 2.1), ("auto-s1", 11, False, 3.1), ("k3", 13, True, 4.1))
    assert Membership.newest_shared([a, b]) == ("k2", 8)            # k3 differs in version; auto-* are per shard
    assert Membership.newest_shared([a, status(("auto-s0", 9, False, 3.0))]) is None
    assert Membership.newest_shared([a]) == ("k3", 12)


def test_rollback_installs_once_fences_workers_and_aborts_them_until_they_resync(tmp_path):
    shard = make_shard(tmp_path, mode=Mode.SYNC)
    for w in (0, 1):
        shard.register(w)
    ckpt = Checkpointer(shard, shard.config)
    assert push(shard, 0, 1, 1.0, step=0) == "accumulated" and push(shard, 1, 1, 1.0, step=0) == "accumulated"
    ckpt.checkpoint("k", at_version=1, cluster=True)
    at_k = values(shard).copy()
    assert push(shard, 0, 2, 1.0, step=1) == "accumulated" and push(shard, 1, 2, 1.0, step=1) == "accumulated"
    assert shard.gate.version == 2

    assert ckpt.rollback("restart:1", "k", 1, 5.0) is True
    assert ckpt.rollback("restart:1", "k", 1, 5.0) is False     # idempotent: the epoch bumps once
    assert (shard.gate.version, shard.epoch, shard.membership.fenced) == (1, 1, {0, 1})
    np.testing.assert_array_equal(values(shard), at_k)
    with pytest.raises(AbortedError, match="rolled back"):
        push(shard, 0, 3, 1.0, step=1)
    assert shard.membership.unfence(0) and not shard.membership.unfence(0)
    assert push(shard, 0, 3, 1.0, step=1) == "accumulated"     # step 1 again, from the restored state
    assert shard.membership.unfence(1)
    assert push(shard, 1, 2, 1.0, step=1) == "accumulated"      # seq 2 was lost with the rollback: new again
    assert shard.gate.version == 2
    np.testing.assert_array_equal(values(shard), at_k - 1.5)  # momentum 0.5: its restored state counts
    listed = checkpoint.listing(str(tmp_path), 0, 1)
    assert [(c["tag"], c["version"], c["cluster"]) for c in listed] == [("k", 1, True)]


def test_awaiting_shard_refuses_pushes_until_told_to_resume(tmp_path):
    shard = make_shard(tmp_path, mode=Mode.SYNC)
    shard.register(0)
    shard.recovery.restored("k", 0, await_decision=True)
    with pytest.raises(AbortedError, match="rollback decision"):
        push(shard, 0, 1, 1.0)
    assert shard.recovery.rollback("r", 5.0) is False and not shard.membership.awaiting_rollback and shard.epoch == 0
    assert push(shard, 0, 1, 1.0) == "accumulated" and shard.gate.version == 1


def test_prune_keeps_the_newest_cluster_checkpoint(tmp_path):
    shard = make_shard(tmp_path, mode=Mode.ASYNC, keep_checkpoints=1)
    shard.register(0)
    ckpt = Checkpointer(shard, shard.config)
    ckpt.checkpoint("cluster-one", cluster=True)
    for i in range(3):
        push(shard, 0, i + 1, 1.0)
        ckpt.checkpoint(f"own-{i}")
    tags = {c["tag"] for c in checkpoint.listing(str(tmp_path), 0, 1)}
    assert tags == {"cluster-one", "own-2"}


def test_registering_past_max_workers_is_refused():
    shard = make_shard(max_workers=2)
    assert [shard.register(-1)[0] for _ in range(2)] == [0, 1]
    with pytest.raises(ResourceExhaustedError):
        shard.register(-1)
    assert shard.register(1)[0] == 1


def test_prune_leaves_another_shards_fresh_empty_tag_directory(tmp_path):
    """Shards may share one checkpoint directory: one's prune must not remove the (still
    empty) tag directory another has just created to write into."""
    (tmp_path / "final-s1").mkdir()                                  # shard 1 of 2, about to write
    (tmp_path / "old-s0").mkdir()
    (tmp_path / "old-s0" / ".tmp-shard-00000-of-00002-v1-x.npz-abc").write_bytes(b"torn")  # shard 0's crash leftover
    checkpoint_files.prune(str(tmp_path), 0, 2, keep=1)
    assert (tmp_path / "final-s1").is_dir() and not (tmp_path / "old-s0").exists()

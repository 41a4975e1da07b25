"""The same-host data plane's frames (ps.protocol.wire) and the shard's copy-into-slot pulls."""

import numpy as np
import pytest

from ps.config import ServerConfig
from ps.shard.shard import Shard
from ps.tables.spec import TableSpec
from ps.tables.optim import OptimizerSpec
from ps.protocol.wire import (
    LOCAL_FLAG_KNOWN,
    LOCAL_PUSH_PULL,
    LOCAL_REPLY_SIZE,
    LOCAL_REQUEST_SIZE,
    pack_local_reply,
    pack_local_request,
    split_token,
    unpack_local_reply,
    unpack_local_request,
    with_token,
)


def test_request_and_reply_frames_round_trip():
    frame = pack_local_request(LOCAL_PUSH_PULL, b"header", 2.5, 1, 2, 3, 4, LOCAL_FLAG_KNOWN)
    assert frame[LOCAL_REQUEST_SIZE:] == b"header"
    assert unpack_local_request(frame[:LOCAL_REQUEST_SIZE]) == (LOCAL_PUSH_PULL, LOCAL_FLAG_KNOWN, 6, 2.5, 1, 2, 3, 4)
    reply = pack_local_reply(LOCAL_PUSH_PULL, b"xy", status=3, outcome=1, version=-7)
    assert unpack_local_reply(reply[:LOCAL_REPLY_SIZE]) == (LOCAL_PUSH_PULL, 3, 2, 1, -7)


def test_token_prefix_round_trips_and_refuses_truncation():
    assert split_token(with_token("abc:1", b"rest")) == ("abc:1", b"rest")
    assert split_token(with_token("", b"")) == ("", b"")
    with pytest.raises(ValueError):
        split_token(b"\x05\x00ab")
    with pytest.raises(ValueError):
        split_token(b"\x01")


def _shard():
    shard = Shard(ServerConfig(shard_index=0, num_shards=1))
    shard.register(0)
    shard.create_table(TableSpec("w", (10,), block_elems=4, optimizer=OptimizerSpec(lr=1.0)))
    return shard


def test_pull_into_slots_copies_once_and_skips_known_versions():
    shard = _shard()
    area = np.zeros(10, np.float32)

    def into(name, block):
        start = block.index * 4
        return area[start : start + block.values.size]

    shard.push(0, 1, 0, 0, 1, [("w", 0), ("w", 2)], [np.ones(4, np.float32), np.ones(2, np.float32)], 5)
    version, blocks = shard.pull(0, 1, ["w"], 0, 1, 5, into=into)
    assert [(b.block, b.version) for b in blocks] == [(0, 1), (1, 0), (2, 1)]
    np.testing.assert_array_equal(area, [-1, -1, -1, -1, 0, 0, 0, 0, -1, -1])
    area[:] = 9                                           # what a stale copy would show
    _, blocks = shard.pull(0, 1, ["w"], 0, 1, 5, known={("w", 0): 1, ("w", 1): 0}, into=into)
    np.testing.assert_array_equal(area, [9, 9, 9, 9, 9, 9, 9, 9, -1, -1])  # only block 2 copied


def test_pull_as_bytes_leaves_out_unchanged_known_blocks():
    shard = _shard()
    _, blocks = shard.pull(0, 0, ["w"], 0, 1, 5, known={("w", 1): 0, ("w", 2): 5})
    assert [b.block for b in blocks] == [0, 2]

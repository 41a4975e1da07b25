"""Bad input gets a clear error with the right status code; nothing changes."""

import hashlib

import grpc
import numpy as np
import pytest

from ps._proto import ps_pb2
from ps.errors import AlreadyExistsError, InvalidArgumentError, NotFoundError
from ps.protocol.wire import encode_framed
from worker import Client
from worker.client.transport import ShardChannel


def checksum(client):
    return hashlib.sha256(client.pull("w")["w"].tobytes()).hexdigest()


def raw_push(channel, *, table="w", block=0, dtype=ps_pb2.FLOAT32, count=8, data=None, seq=1, worker=0):
    header = ps_pb2.PushHeader(worker_id=worker, seq=seq, step=0, part=0, num_parts=1)
    header.blocks.add(table=table, block=block, dtype=dtype, count=count)
    payload = np.ones(count, dtype=np.float32).tobytes() if data is None else data
    return channel.push(encode_framed(header.SerializeToString(), [payload]), timeout=5)


CASES = {
    "wrong byte length": (dict(data=bytes(31)), grpc.StatusCode.INVALID_ARGUMENT, "bytes"),
    "wrong element count": (dict(count=7, data=bytes(28)), grpc.StatusCode.INVALID_ARGUMENT, "elements"),
    "wrong dtype": (dict(dtype=ps_pb2.FLOAT64, data=bytes(64)), grpc.StatusCode.INVALID_ARGUMENT, "dtype"),
    "unknown dtype": (dict(dtype=42), grpc.StatusCode.INVALID_ARGUMENT, "dtype"),
    "unknown table": (dict(table="nope"), grpc.StatusCode.NOT_FOUND, "unknown table"),
    "block out of range": (dict(block=99), grpc.StatusCode.INVALID_ARGUMENT, "out of range"),
    "negative block": (dict(block=-1), grpc.StatusCode.INVALID_ARGUMENT, "out of range"),
    "NaN gradient": (dict(data=np.full(8, np.nan, np.float32).tobytes()), grpc.StatusCode.INVALID_ARGUMENT, "NaN"),
    "Inf gradient": (dict(data=np.full(8, np.inf, np.float32).tobytes()), grpc.StatusCode.INVALID_ARGUMENT, "Inf"),
    "unregistered worker": (dict(worker=77), grpc.StatusCode.FAILED_PRECONDITION, "not registered"),
    "sequence zero": (dict(seq=0), grpc.StatusCode.INVALID_ARGUMENT, "sequence"),
}


@pytest.fixture
def server(shards):
    with shards(1, mode="async") as servers:
        with Client([servers[0].address], worker_id=0) as ps:
            ps.create("w", shape=(8,), init="normal", init_scale=1.0, seed=3, lr=1.0)
            yield servers[0], ps


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_push_is_refused_and_changes_nothing(server, case):
    srv, ps = server
    before = checksum(ps)
    kwargs, code, text = CASES[case]
    channel = ShardChannel(srv.address, 64 << 20)
    try:
        with pytest.raises(grpc.RpcError) as info:
            raw_push(channel, **kwargs)
        assert info.value.code() == code, info.value.details()
        assert text in info.value.details()
        assert checksum(ps) == before, "a refused push changed the table"
        # the server still serves: a good push applies exactly once afterwards
        values = ps.pull("w")["w"]
        assert raw_push(channel, seq=1000).outcome == ps_pb2.APPLIED
    finally:
        channel.close()
    np.testing.assert_array_equal(ps.pull("w")["w"], values - 1)


def test_client_side_checks_and_spec_conflicts(server):
    _, ps = server
    before = checksum(ps)
    with pytest.raises(InvalidArgumentError, match="shape"):
        ps.push({"w": np.ones(9, np.float32)})
    with pytest.raises(InvalidArgumentError, match="dtype"):
        ps.push({"w": np.ones(8, np.float64)})
    with pytest.raises(NotFoundError, match="unknown table"):
        ps.pull("missing")
    with pytest.raises(AlreadyExistsError, match="different spec"):
        ps.create("w", shape=(8,), init="normal", init_scale=1.0, seed=3, lr=0.5)
    ps.create("w", shape=(8,), init="normal", init_scale=1.0, seed=3, lr=1.0)  # identical: a no-op
    with pytest.raises(InvalidArgumentError):
        ps.create("bad name!", shape=(3,))
    with pytest.raises(InvalidArgumentError):
        ps.create("v", shape=(3,), optimizer="rmsprop")
    assert checksum(ps) == before

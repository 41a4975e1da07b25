"""Bad row requests get a clear error with the right status code; nothing changes."""

import hashlib

import grpc
import numpy as np
import pytest

from ps._proto import ps_pb2
from ps.errors import AlreadyExistsError, FailedPreconditionError, InvalidArgumentError, NotFoundError
from ps.protocol.rows_wire import encode_rows
from worker import Client
from worker.client.transport import ShardChannel

IDS = np.array([1, 5, 9, 1], dtype=np.int64)


def checksum(ps):
    return hashlib.sha256(ps.pull_rows("emb", np.arange(20)).tobytes() + ps.pull("w")["w"].tobytes()).hexdigest()


def raw_push_rows(channel, *, table="emb", ids=IDS, dim=4, num_ids=None, dtype=ps_pb2.FLOAT32, values=None,
                  seq=1, worker=0, data=None):
    header = ps_pb2.RowsHeader(worker_id=worker, seq=seq, step=0, part=0, num_parts=1, table=table,
                               num_ids=len(ids) if num_ids is None else num_ids, dim=dim, dtype=dtype)
    if values is None:
        values = np.ones((len(ids), dim), np.float32)
    if data is not None:
        return channel.push_rows(ps_pb2.RowsRequest(header=header, payload=data).SerializeToString(), timeout=5)
    return channel.push_rows(encode_rows(header, ids, values), timeout=5)


def raw_pull_rows(channel, *, table="emb", ids=IDS, num_ids=None):
    header = ps_pb2.RowsHeader(worker_id=0, step=0, table=table, num_ids=len(ids) if num_ids is None else num_ids)
    return channel.pull_rows(encode_rows(header, ids, None), timeout=5)


PUSH_CASES = {
    "wrong row width": (dict(dim=5, values=np.ones((4, 5), np.float32)), grpc.StatusCode.INVALID_ARGUMENT,
                        "row width"),
    "width in header only": (dict(dim=5, values=np.ones((4, 4), np.float32)), grpc.StatusCode.INVALID_ARGUMENT, "bytes"),
    "ids and grads of different lengths": (dict(values=np.ones((3, 4), np.float32)),
                                           grpc.StatusCode.INVALID_ARGUMENT, "bytes"),
    "num_ids disagrees with the payload": (dict(num_ids=5), grpc.StatusCode.INVALID_ARGUMENT, "bytes"),
    "negative num_ids": (dict(num_ids=-1), grpc.StatusCode.INVALID_ARGUMENT, "negative"),
    "wrong dtype": (dict(dtype=ps_pb2.FLOAT64, values=np.ones((4, 4), np.float64)),
                    grpc.StatusCode.INVALID_ARGUMENT, "dtype"),
    "unknown dtype": (dict(dtype=42), grpc.StatusCode.INVALID_ARGUMENT, "dtype"),
    "NaN gradient": (dict(values=np.full((4, 4), np.nan, np.float32)), grpc.StatusCode.INVALID_ARGUMENT, "NaN"),
    "unknown table": (dict(table="nope"), grpc.StatusCode.NOT_FOUND, "unknown table"),
    "push_rows to a dense table": (dict(table="w"), grpc.StatusCode.FAILED_PRECONDITION, "dense"),
    "unregistered worker": (dict(worker=77), grpc.StatusCode.FAILED_PRECONDITION, "not registered"),
    "sequence zero": (dict(seq=0), grpc.StatusCode.INVALID_ARGUMENT, "sequence"),
    "garbage payload": (dict(data=b"\x01\x02\x03"), grpc.StatusCode.INVALID_ARGUMENT, "bytes"),
}
PULL_CASES = {
    "pull_rows on a dense table": (dict(table="w"), grpc.StatusCode.FAILED_PRECONDITION, "dense"),
    "pull_rows on an unknown table": (dict(table="nope"), grpc.StatusCode.NOT_FOUND, "unknown table"),
    "pull with a short payload": (dict(num_ids=7), grpc.StatusCode.INVALID_ARGUMENT, "bytes"),
}


@pytest.fixture
def server(shards):
    with shards(1, mode="async") as servers:
        with Client([servers[0].address], worker_id=0) as ps:
            ps.create_sparse("emb", 4, init="normal", init_scale=1.0, seed=3, lr=1.0)
            ps.create("w", shape=(8,), lr=1.0)
            ps.push_rows("emb", np.arange(10), np.ones((10, 4), np.float32))
            yield servers[0], ps


@pytest.mark.parametrize("case", sorted(PUSH_CASES) + sorted(PULL_CASES))
def test_bad_row_request_is_refused_and_changes_nothing(server, case):
    srv, ps = server
    before = checksum(ps)
    kwargs, code, text = PUSH_CASES.get(case) or PULL_CASES[case]
    channel = ShardChannel(srv.address, 64 << 20)
    try:
        with pytest.raises(grpc.RpcError) as info:
            (raw_push_rows if case in PUSH_CASES else raw_pull_rows)(channel, **kwargs)
        assert info.value.code() == code, info.value.details()
        assert text in info.value.details(), info.value.details()
        assert checksum(ps) == before, "a refused request changed the tables"
        rows = ps.pull_rows("emb", [1, 5, 9])
        assert raw_push_rows(channel, seq=1000).outcome == ps_pb2.APPLIED  # still serving, exactly once
    finally:
        channel.close()
    np.testing.assert_array_equal(ps.pull_rows("emb", [1, 5, 9]), rows - np.array([[2], [1], [1]], np.float32))


def test_client_side_checks(server):
    _, ps = server
    before = checksum(ps)
    with pytest.raises(InvalidArgumentError, match="row width"):
        ps.push_rows("emb", [1, 2], np.ones((2, 3), np.float32))
    with pytest.raises(InvalidArgumentError, match="integers"):
        ps.push_rows("emb", np.array([1.0, 2.5]), np.ones((2, 4), np.float32))
    with pytest.raises(InvalidArgumentError, match="integers"):
        ps.pull_rows("emb", ["a", "b"])
    with pytest.raises(InvalidArgumentError, match="shape"):
        ps.push_rows("emb", [1, 2, 3], np.ones((2, 4), np.float32))
    with pytest.raises(InvalidArgumentError, match="dtype"):
        ps.push_rows("emb", [1, 2], np.ones((2, 4), np.float64))
    with pytest.raises(InvalidArgumentError, match="int64"):
        ps.pull_rows("emb", np.array([2**63], dtype=np.uint64))
    with pytest.raises(FailedPreconditionError, match="dense"):
        ps.pull_rows("w", [1])
    with pytest.raises(FailedPreconditionError, match="sparse"):
        ps.pull("emb")
    with pytest.raises(NotFoundError, match="unknown table"):
        ps.push_rows("nope", [1], np.ones((1, 4), np.float32))
    with pytest.raises(AlreadyExistsError, match="different spec"):
        ps.create_sparse("emb", 4, init="normal", init_scale=1.0, seed=3, lr=0.5)
    with pytest.raises(AlreadyExistsError, match="dense"):
        ps.create_sparse("w", 4)
    with pytest.raises(InvalidArgumentError, match="eviction"):
        ps.create_sparse("e2", 4, eviction="random")
    ps.create_sparse("emb", 4, init="normal", init_scale=1.0, seed=3, lr=1.0)  # identical: a no-op
    assert checksum(ps) == before
    assert ps.pull_rows("emb", []).shape == (0, 4)

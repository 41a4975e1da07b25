"""Every data plane keeps one contract, because every plane calls one ShardHandler.

Each test runs against each plane (``grpc``, ``shm``: the same-host shared-memory plane,
``tcp``: the TCP stream plane) with the same expectation. The planes are driven at the
wire level by the small raw clients below (real shards on loopback, ports from the OS),
so what is tested is the server, not the worker's handling of it.
"""

from __future__ import annotations

import json
import mmap
import os
import socket

import grpc
import numpy as np
import pytest

from ps import Mode, ServerConfig, ShardServer
from ps._proto import ps_pb2
from ps.errors import REASON_METADATA_KEY, Reason
from ps.protocol.channel import SERVICE_NAME
from ps.protocol.sockets import recv_exact
from ps.protocol.wire import (
    LOCAL_ATTACH,
    LOCAL_HELLO,
    LOCAL_PULL,
    LOCAL_PUSH,
    LOCAL_PUSH_PULL,
    LOCAL_REPLY_SIZE,
    decode_framed,
    encode_framed,
    local_reply_reason,
    pack_local_request,
    split_token,
    unpack_local_reply,
    with_token,
)
from ps.tables.optim import OptimizerSpec
from ps.tables.sparse_spec import SparseTableSpec
from ps.tables.spec import TableSpec
from tests.integration.ports import free_port
from tests.scraped_metrics import scrape, total
from worker import Client

PLANES = ["grpc", "shm", "tcp"]
W = TableSpec("w", (8,), optimizer=OptimizerSpec("sgd", lr=1.0))
EMB = SparseTableSpec("emb", 2, optimizer=OptimizerSpec("sgd", lr=1.0))
ONES = np.ones(8, np.float32).tobytes()
LOST = None  # the code of a reply that never came (fault injection on a socket plane)
_CODES = {c.value[0]: c for c in grpc.StatusCode}
_KINDS = {"Push": LOCAL_PUSH, "Pull": LOCAL_PULL, "PushPull": LOCAL_PUSH_PULL}


def server(**config) -> ShardServer:
    return ShardServer(ServerConfig(port=0, mode=Mode.ASYNC, sync_timeout_s=5.0, **config))


def control(srv: ShardServer, method: str, request, reply_type, token: str = ""):
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    with grpc.insecure_channel(srv.address) as ch:
        call = ch.unary_unary(f"/{SERVICE_NAME}/{method}", lambda m: m.SerializeToString(), reply_type.FromString)
        return call(request, timeout=5, metadata=metadata)


def setup(srv: ShardServer, token: str = "", worker: int = 7, session: int = 0) -> None:
    """Register ``worker`` and create the dense table ``w`` (8 zeros) and the sparse ``emb``."""
    topology = ps_pb2.Topology(shard_index=0, num_shards=1)
    control(srv, "Register", ps_pb2.RegisterRequest(worker_id=worker, topology=topology, session=session),
            ps_pb2.RegisterReply, token)
    for spec in (W, EMB):
        control(srv, "CreateTable", ps_pb2.CreateTableRequest(spec=spec.to_proto(), topology=topology),
                ps_pb2.CreateTableReply, token)


def push_header(worker=7, seq=1, *, table="w", block=0, count=8, dtype=ps_pb2.FLOAT32, pull=None, session=0):
    header = ps_pb2.PushHeader(worker_id=worker, seq=seq, step=0, part=0, num_parts=1, session=session)
    header.blocks.add(table=table, block=block, dtype=dtype, count=count)
    if pull is not None:
        header.then_pull.CopyFrom(pull_header(worker, pull))
    return header.SerializeToString()


def pull_header(worker=7, tables=("w",)):
    return ps_pb2.PullHeader(worker_id=worker, step=0, tables=list(tables), part=0, num_parts=1)


class Reply:
    """What a plane answered: a status code (None: the reply was lost), a reason, the push's
    outcome, and the pulled values of ``w`` (None without a pull)."""

    def __init__(self, code, reason=Reason.NONE, outcome=0, values=None) -> None:
        self.code, self.reason, self.outcome, self.values = code, Reason(reason), outcome, values


# -- raw clients of the three planes ---------------------------------------------------------

class GrpcWire:
    def __init__(self, srv: ShardServer, token: str = "") -> None:
        self.channel = grpc.insecure_channel(srv.address)
        self.metadata = (("authorization", f"Bearer {token}"),) if token else None

    def call(self, method: str, header: bytes, grads: bytes = b"") -> Reply:
        call = self.channel.unary_unary(f"/{SERVICE_NAME}/{method}")
        try:
            data = call(encode_framed(header, [grads] if grads else []), timeout=5, metadata=self.metadata)
        except grpc.RpcError as err:
            reason = dict(err.trailing_metadata() or ()).get(REASON_METADATA_KEY)
            return Reply(err.code(), Reason.parse(reason))
        if method == "Push":
            reply = ps_pb2.PushReply.FromString(data)
            return Reply(grpc.StatusCode.OK, outcome=reply.outcome)
        head, payload = decode_framed(data, ps_pb2.PullReplyHeader)
        return Reply(grpc.StatusCode.OK, outcome=head.push_outcome, values=np.frombuffer(payload, np.float32))

    def close(self) -> None:
        self.channel.close()


class _SocketWire:
    sock: socket.socket

    def reply(self) -> tuple[grpc.StatusCode | None, Reason, bytes, int]:
        try:
            head = recv_exact(self.sock, LOCAL_REPLY_SIZE)
        except (ConnectionError, OSError):
            return LOST, Reason.NONE, b"", 0
        _, status, length, outcome, _ = unpack_local_reply(head)
        body = recv_exact(self.sock, length) if length else b""
        return _CODES[status], Reason.parse(local_reply_reason(head)), body, outcome

    def close(self) -> None:
        self.sock.close()


class StreamWire(_SocketWire):
    def __init__(self, srv: ShardServer, token: str = "") -> None:
        self.sock = socket.create_connection(("127.0.0.1", srv.stream_port), timeout=5)
        self.sock.sendall(pack_local_request(LOCAL_HELLO, with_token(token, srv.shard.server_id.encode()), 5.0))
        self.hello = self.reply()

    def call(self, method: str, header: bytes, grads: bytes = b"") -> Reply:
        self.sock.sendall(pack_local_request(_KINDS[method], header, 5.0, 0, len(grads)) + grads)
        code, reason, body, outcome = self.reply()
        if code != grpc.StatusCode.OK or method == "Push":
            return Reply(code, reason, outcome)
        head = ps_pb2.PullReplyHeader.FromString(body)
        values = np.frombuffer(recv_exact(self.sock, 4 * sum(b.count for b in head.blocks)), np.float32)
        return Reply(code, reason, outcome, values)


class LocalWire(_SocketWire):
    """A worker's end of the shared-memory plane: a region with ``w``'s push and pull areas."""

    def __init__(self, srv: ShardServer) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(5)
        self.sock.connect("\0" + srv._local.address.removeprefix("unix-abstract:"))
        self.sock.sendall(pack_local_request(LOCAL_HELLO, srv.shard.server_id.encode(), 5.0))
        assert self.reply()[0] == grpc.StatusCode.OK
        fd = os.memfd_create("test-plane", os.MFD_CLOEXEC)
        os.ftruncate(fd, 2 * mmap.PAGESIZE)
        self.region = mmap.mmap(fd, 2 * mmap.PAGESIZE)
        layout = json.dumps({"tables": {"w": [0, mmap.PAGESIZE, 32]}}).encode()
        self.sock.sendmsg([pack_local_request(LOCAL_ATTACH, layout, 5.0, 0, 2 * mmap.PAGESIZE)],
                          [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fd.to_bytes(4, "little"))])
        os.close(fd)
        assert self.reply()[0] == grpc.StatusCode.OK

    def call(self, method: str, header: bytes, grads: bytes = b"") -> Reply:
        self.region[: len(grads)] = grads
        message = header if method == "Push" else with_token("", header)
        self.sock.sendall(pack_local_request(_KINDS[method], message, 5.0))
        code, reason, body, outcome = self.reply()
        if code != grpc.StatusCode.OK or method == "Push":
            return Reply(code, reason, outcome)
        split_token(body)
        values = np.frombuffer(self.region, np.float32, 8, mmap.PAGESIZE).copy()
        return Reply(code, reason, outcome, values)

    def close(self) -> None:
        super().close()
        self.region.close()


def wire(plane: str, srv: ShardServer, token: str = ""):
    return {"grpc": GrpcWire, "tcp": StreamWire}[plane](srv, token) if plane != "shm" else LocalWire(srv)


def weights(srv: ShardServer) -> np.ndarray:
    _, blocks = srv.shard.pull(-1, 0, ["w"], 0, 1, 1.0)
    return np.frombuffer(blocks[0].data, np.float32)


# -- the contract ---------------------------------------------------------------------------

@pytest.mark.parametrize("plane", PLANES)
def test_a_push_and_a_pull_are_counted_in_the_request_metrics(plane):
    with server(metrics_port=free_port()) as srv:
        setup(srv)
        url = srv.metrics.endpoint.url

        def counts():
            m = scrape(url)
            return {(method, series): total(m, series, service=SERVICE_NAME, method=method,
                                            **({"code": "OK"} if series == "ps_requests_total" else {}))
                    for method in ("Push", "Pull", "PushPull")
                    for series in ("ps_requests_total", "ps_request_duration_seconds_count")}

        before = counts()
        w = wire(plane, srv)
        try:
            assert w.call("Push", push_header(seq=1), ONES).code == grpc.StatusCode.OK
            assert w.call("Pull", pull_header().SerializeToString()).code == grpc.StatusCode.OK
            assert w.call("PushPull", push_header(seq=2, pull=["w"]), ONES).code == grpc.StatusCode.OK
        finally:
            w.close()
        after = counts()
        assert {k: after[k] - before[k] for k in after} == dict.fromkeys(after, 1.0)


@pytest.mark.parametrize("plane", PLANES)
def test_an_injected_lost_reply_is_retried_and_applied_once(plane):
    with server(faults="drop_push_reply_every=2") as srv:
        setup(srv)
        lost = grpc.StatusCode.UNAVAILABLE if plane == "grpc" else LOST
        w = wire(plane, srv)
        assert w.call("Push", push_header(seq=1), ONES).outcome == ps_pb2.APPLIED
        assert w.call("Push", push_header(seq=2), ONES).code == lost     # applied, then the reply is lost
        w.close()
        w = wire(plane, srv)                                              # the retry, as after a reconnect
        try:
            assert w.call("Push", push_header(seq=2), ONES).outcome == ps_pb2.DUPLICATE
        finally:
            w.close()
        np.testing.assert_array_equal(weights(srv), -2.0)
        assert srv.shard.counters["applied"] == 2 and srv.shard.counters["duplicate"] == 1


def test_a_default_client_on_the_same_host_loses_injected_replies_too():
    """The fault hook used to be gRPC's and TCP's only: a same-host Client exercised nothing."""
    with server(faults="drop_push_reply_every=2") as srv, Client([srv.address]) as ps:
        ps.create("w", shape=(8,), lr=1.0)
        ps.push({"w": np.ones(8, np.float32)})
        ps.push({"w": np.ones(8, np.float32)})       # its reply is lost; the retry is a duplicate
        np.testing.assert_array_equal(ps.pull("w")["w"], -2.0)
        assert ps.stats["duplicate"] == 1 and srv.shard.counters["applied"] == 2


@pytest.mark.parametrize("plane", PLANES)
def test_a_missing_or_wrong_token_is_refused(plane):
    token = "plane-s3cret"
    with server(auth_token=token) as srv:
        setup(srv, token)
        if plane == "shm":  # no token check there: the plane is not offered at all
            assert srv._local is None
            assert control(srv, "Status", ps_pb2.StatusRequest(), ps_pb2.StatusReply, token).local_plane == ""
            return
        for presented in ("", "plane-s3creT", token + "x"):
            if plane == "grpc":
                w = GrpcWire(srv, presented)
                code = w.call("Push", push_header(seq=1), ONES).code
            else:
                w = StreamWire(srv, presented)
                code = w.hello[0]
                assert w.sock.recv(1) == b""   # and the connection is closed
            w.close()
            assert code == grpc.StatusCode.UNAUTHENTICATED, presented
        w = wire(plane, srv, token)
        try:
            assert w.call("Push", push_header(seq=1), ONES).outcome == ps_pb2.APPLIED
        finally:
            w.close()
        np.testing.assert_array_equal(weights(srv), -1.0)


@pytest.mark.parametrize("plane", PLANES)
def test_a_duplicate_worker_seq_is_applied_once(plane):
    with server() as srv:
        setup(srv)
        w = wire(plane, srv)
        try:
            assert w.call("Push", push_header(seq=5), ONES).outcome == ps_pb2.APPLIED
            assert w.call("Push", push_header(seq=5), ONES).outcome == ps_pb2.DUPLICATE
            again = w.call("PushPull", push_header(seq=5, pull=["w"]), ONES)
            assert again.outcome == ps_pb2.DUPLICATE
            np.testing.assert_array_equal(again.values, -1.0)
        finally:
            w.close()
        np.testing.assert_array_equal(weights(srv), -1.0)


@pytest.mark.parametrize("plane", PLANES)
def test_a_fenced_session_is_refused_with_its_reason(plane):
    with server() as srv:
        setup(srv, worker=3, session=0xA)
        setup(srv, worker=3, session=0xB)      # another client registers under the same id
        w = wire(plane, srv)
        try:
            refused = w.call("Push", push_header(3, 1, session=0xA), ONES)
            assert (refused.code, refused.reason) == (grpc.StatusCode.FAILED_PRECONDITION, Reason.FENCED)
            np.testing.assert_array_equal(weights(srv), 0.0)
            assert w.call("Push", push_header(3, 1, session=0xB), ONES).outcome == ps_pb2.APPLIED
        finally:
            w.close()
        np.testing.assert_array_equal(weights(srv), -1.0)


INVALID, NOT_FOUND, PRECONDITION = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                                    grpc.StatusCode.FAILED_PRECONDITION)
BAD_INPUT = {  # name: (method, header, grads, expected code, expected reason)
    "wrong length": ("Push", push_header(count=7), ONES[:28], INVALID, Reason.NONE),
    "wrong dtype": ("Push", push_header(dtype=ps_pb2.FLOAT64), ONES * 2, INVALID, Reason.NONE),
    "block out of range": ("Push", push_header(block=3), ONES, INVALID, Reason.NONE),
    "unknown table": ("Push", push_header(table="nope"), ONES, NOT_FOUND, Reason.UNKNOWN_TABLE),
    "sparse table": ("Push", push_header(table="emb"), ONES, PRECONDITION, Reason.NONE),
    "nan": ("Push", push_header(), np.full(8, np.nan, np.float32).tobytes(), INVALID, Reason.NONE),
    "malformed header": ("Push", b"\xff\xff\xff", ONES, INVALID, Reason.NONE),
    "seq 0": ("Push", push_header(seq=0), ONES, INVALID, Reason.NONE),
    "unregistered worker": ("Push", push_header(worker=99), ONES, PRECONDITION, Reason.NOT_REGISTERED),
    "pull of an unknown table": ("Pull", pull_header(tables=["nope"]).SerializeToString(), b"", NOT_FOUND,
                                 Reason.UNKNOWN_TABLE),
    "pull of a sparse table": ("Pull", pull_header(tables=["emb"]).SerializeToString(), b"", PRECONDITION,
                               Reason.NONE),
    "push-pull of an unknown table": ("PushPull", push_header(pull=["w", "nope"]), ONES, NOT_FOUND,
                                      Reason.UNKNOWN_TABLE),
    "push-pull of a bad push": ("PushPull", push_header(count=7, pull=["w"]), ONES[:28], INVALID, Reason.NONE),
}


@pytest.mark.parametrize("plane", PLANES)
def test_each_bad_input_gets_the_same_status_and_changes_nothing(plane):
    with server() as srv:
        setup(srv)
        w = wire(plane, srv)
        try:
            got = {name: (r.code, r.reason) for name, (method, header, grads, _, _) in BAD_INPUT.items()
                   for r in [w.call(method, header, grads)]}
            assert got == {name: (code, reason) for name, (_, _, _, code, reason) in BAD_INPUT.items()}
            np.testing.assert_array_equal(weights(srv), 0.0)          # nothing was applied, not even a push
            assert srv.shard.counters["applied"] == 0 and srv.shard.steps.dedup.next_seq(7) == 1
            assert w.call("PushPull", push_header(seq=1, pull=["w"]), ONES).values.tolist() == [-1.0] * 8
        finally:
            w.close()


@pytest.mark.parametrize("plane", PLANES)
def test_a_push_pull_whose_pull_names_an_unknown_table_applies_nothing(plane):
    with server() as srv:
        setup(srv)
        w = wire(plane, srv)
        try:
            refused = w.call("PushPull", push_header(seq=1, pull=["nope"]), ONES)
            assert (refused.code, refused.reason) == (NOT_FOUND, Reason.UNKNOWN_TABLE)
            np.testing.assert_array_equal(weights(srv), 0.0)
            assert w.call("PushPull", push_header(seq=1, pull=["w"]), ONES).outcome == ps_pb2.APPLIED  # not a dup
        finally:
            w.close()
        np.testing.assert_array_equal(weights(srv), -1.0)

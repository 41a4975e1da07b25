"""The TCP data plane (``ps.serving.stream_plane``) keeps the semantics of gRPC.

Real shards on loopback with ports from the OS. The same-host shared-memory plane is
off on both sides (``local_plane=False``, ``Client(local=False)``), so workers take the
stream plane exactly as workers on other machines do; the tests check they really do.
"""

from __future__ import annotations

import socket

import numpy as np
import pytest

from launcher import server_cli
from ps import ServerConfig, ShardServer
from ps._proto import ps_pb2
from ps.errors import InvalidArgumentError
from ps.protocol.sockets import recv_exact
from ps.protocol.wire import STREAM_HELLO, STREAM_PULL, STREAM_PUSH, STREAM_PUSH_PULL
from ps.protocol.wire import LOCAL_REPLY_SIZE, pack_local_request, unpack_local_reply, with_token
from tests.conftest import count_block_copies, run_threads, running_shards
from tests.integration.test_fault_security import CA
from worker import Client
from worker.planes.in_flight import MAX_IN_FLIGHT
from worker.planes.stream_plane import StreamChannel

OK, INVALID, NOT_FOUND, EXHAUSTED, UNAUTHENTICATED = 0, 3, 5, 8, 16


def cluster(num: int = 2, **config):
    return running_shards(num, local_plane=False, **config)


def on_stream(ps: Client) -> list[bool]:
    return [plane == "tcp" for plane in ps.data_planes()]


# -- a raw client of the protocol ---------------------------------------------------------

def connect(server: ShardServer, token: str = "", hello: bool = True) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.stream_port), timeout=5)
    if hello:
        sock.sendall(pack_local_request(STREAM_HELLO, with_token(token, server.shard.server_id.encode()), 5.0))
        status, body, _, _ = reply(sock)
        assert status == OK and body == server.shard.server_id.encode()
    return sock


def reply(sock: socket.socket) -> tuple[int, bytes, int, int]:
    _, status, length, outcome, version = unpack_local_reply(recv_exact(sock, LOCAL_REPLY_SIZE))
    return status, recv_exact(sock, length) if length else b"", outcome, version


def closed(sock: socket.socket) -> bool:
    """Whether the server dropped the connection (bounded by the socket's timeout)."""
    try:
        return sock.recv(1 << 16) == b""
    except ConnectionResetError:
        return True


def push_frame(worker: int, seq: int, grads: bytes, *, table="w", block=0, count=8, dtype=ps_pb2.FLOAT32,
               pull=False, payload_bytes=None) -> bytes:
    header = ps_pb2.PushHeader(worker_id=worker, seq=seq, step=0, part=0, num_parts=1)
    header.blocks.add(table=table, block=block, dtype=dtype, count=count)
    if pull:
        header.then_pull.tables.append(table)
    kind = STREAM_PUSH_PULL if pull else STREAM_PUSH
    size = len(grads) if payload_bytes is None else payload_bytes
    return pack_local_request(kind, header.SerializeToString(), 5.0, 0, size) + grads


# -- semantics ------------------------------------------------------------------------------

@pytest.mark.parametrize("api", ["push_pull", "push+pull"])
def test_concurrent_clients_sum_exactly_over_two_shards(api, monkeypatch):
    workers, steps, shape = 3, 10, (300, 7)
    connects = []
    real_connect = StreamChannel.connect
    monkeypatch.setattr(StreamChannel, "connect", lambda self: connects.append(self) or real_connect(self))
    with cluster(2, mode="async") as servers:
        addresses = [s.address for s in servers]
        with Client(addresses, local=False) as ps:
            ps.create("t", shape=shape, lr=1.0, block_elems=128)

        def worker(rank):
            # small parts: several connections in flight per shard
            with Client(addresses, local=False, part_bytes=2048) as ps:
                assert on_stream(ps) == [True, True]
                out = {"t": np.empty(shape, np.float32)}
                for k in range(steps):
                    grad = np.full(shape, rank + 1 + k % 3, np.float32)
                    if api == "push_pull":
                        seen = ps.push_pull({"t": grad}, out=out)["t"]
                        assert seen is out["t"]
                    else:
                        ps.push({"t": grad})
                        seen = ps.pull("t")["t"]
                    assert seen.shape == shape and np.all(seen < 0)
                assert on_stream(ps) == [True, True]  # no call fell back to gRPC
                return ps.stats

        stats = run_threads([lambda r=r: worker(r) for r in range(workers)], 60)
        assert len(connects) > 2 + 2 * workers  # more than one connection per shard and client
        with Client(addresses, observer=True, local=False) as ps:
            final = ps.pull("t")["t"]
    expected = -sum(r + 1 + k % 3 for r in range(workers) for k in range(steps))
    np.testing.assert_array_equal(final, np.full(shape, expected, np.float32))
    assert all(s["duplicate"] == 0 and s["applied"] >= steps for s in stats)


def test_sync_mode_matches_single_process_sgd():
    lr, steps, n = 0.1, 4, 3
    rng = np.random.default_rng(0)
    grads = rng.standard_normal((n, steps, 64, 9)).astype(np.float32)
    with cluster(2, mode="sync", num_workers=n) as servers:
        addresses = [s.address for s in servers]

        def worker(rank):
            with Client(addresses, worker_id=rank, local=False, part_bytes=1024, timeout_s=10,
                        wait_timeout_s=30) as ps:
                ps.create("w", shape=(64, 9), lr=lr, block_elems=100)
                out = {"w": np.empty((64, 9), np.float32)}
                for k in range(steps):
                    ps.push_pull({"w": grads[rank, k]}, out=out)
                assert on_stream(ps) == [True, True]
                return out["w"].copy()

        finals = run_threads([lambda r=r: worker(r) for r in range(n)], 60)
    expected = np.zeros((64, 9), np.float64)
    for k in range(steps):
        expected -= lr * grads[:, k].astype(np.float64).mean(axis=0)
    for w in finals:
        np.testing.assert_allclose(w, expected, rtol=1e-5, atol=1e-5)


def test_async_steps_keep_a_few_parts_in_flight_and_sync_steps_all_of_them(monkeypatch):
    """Async: the step's many parts go over MAX_IN_FLIGHT connections (the shard holds the
    buffers of a few parts, not of the whole step). Sync: every part has its own connection,
    since a part's pull waits for the step's other parts (a window there would deadlock)."""
    shape, parts = (64, 32), 4 * MAX_IN_FLIGHT
    connects = []
    real_connect = StreamChannel.connect
    monkeypatch.setattr(StreamChannel, "connect", lambda self: connects.append(self) or real_connect(self))
    for mode in ("async", "sync"):
        connects.clear()
        with cluster(1, mode=mode, num_workers=1) as servers, \
                Client([servers[0].address], local=False, part_bytes=shape[0] * shape[1] * 4 // parts,
                       timeout_s=10, wait_timeout_s=10) as ps:
            ps.create("w", shape=shape, lr=1.0, block_elems=shape[1])
            out = {"w": np.empty(shape, np.float32)}
            for k in range(3):
                ps.push_pull({"w": np.full(shape, 1.0, np.float32)}, out=out)
                np.testing.assert_array_equal(out["w"], np.full(shape, -(k + 1.0), np.float32))
            assert on_stream(ps) == [True]
            if mode == "async":
                assert len(connects) == MAX_IN_FLIGHT  # hello's connection 0 included
            else:
                assert len(connects) >= parts


def test_a_push_whose_reply_is_lost_is_retried_over_grpc_and_applied_once():
    # the fault hook of ps.serving.faults: every 2nd push is applied, then its connection closes
    with cluster(1, mode="async", faults="drop_push_reply_every=2") as servers:
        with Client([servers[0].address], local=False) as ps:
            ps.create("w", shape=(8,), lr=1.0)
            ps.push({"w": np.ones(8, np.float32)})
            assert on_stream(ps) == [True]
            ps.push({"w": np.ones(8, np.float32)})       # applied; the reply is lost
            assert on_stream(ps) == [False]              # the retry (same seq) went over gRPC
            assert ps.stats["duplicate"] == 1
            np.testing.assert_array_equal(ps.pull("w")["w"], -2.0)
            assert ps.status()[0]["counters"]["applied"] == 2


def test_the_same_push_pull_delivered_twice_applies_once():
    with cluster(1, mode="async") as servers, Client([servers[0].address], worker_id=5, local=False) as ps:
        ps.create("w", shape=(8,), lr=1.0)
        frame = push_frame(5, 42, np.ones(8, np.float32).tobytes(), pull=True)
        header_replies = []
        for _ in range(2):  # two connections: a retry after a lost reply
            with connect(servers[0]) as sock:
                sock.sendall(frame)
                status, body, outcome, version = reply(sock)
                assert status == OK
                header = ps_pb2.PullReplyHeader.FromString(body)
                values = np.frombuffer(recv_exact(sock, 32), np.float32)
                header_replies.append((outcome, header.push_outcome, header.push_version, values))
        assert header_replies[0][:3] == (ps_pb2.APPLIED, ps_pb2.APPLIED, 1)
        assert header_replies[1][:3] == (ps_pb2.DUPLICATE, ps_pb2.DUPLICATE, 1)
        for *_, values in header_replies:
            np.testing.assert_array_equal(values, -1.0)
        np.testing.assert_array_equal(ps.pull("w")["w"], -1.0)


# -- bad input ------------------------------------------------------------------------------

ERRORS = {  # refused with a status; the connection stays usable
    "wrong length": (lambda: push_frame(7, 1, b"\0" * 28), INVALID),
    "wrong dtype": (lambda: push_frame(7, 1, b"\0" * 64, dtype=ps_pb2.FLOAT64), INVALID),
    "wrong block": (lambda: push_frame(7, 1, b"\0" * 32, block=3), None),
    "unknown table": (lambda: push_frame(7, 1, b"\0" * 32, table="nope"), NOT_FOUND),
    "nan": (lambda: push_frame(7, 1, np.full(8, np.nan, np.float32).tobytes()), INVALID),
    "bad header": (lambda: pack_local_request(STREAM_PUSH, b"\xff\xff\xff", 5.0, 0, 4) + b"\0" * 4, INVALID),
    "bad seq": (lambda: push_frame(7, 0, b"\0" * 32), INVALID),
}
DROPS = {  # not this protocol: the connection is dropped
    "garbage": (False, lambda: b"GET / HTTP/1.1\r\nHost: ps\r\n\r\n" + b"\0" * 40),
    "no hello": (False, lambda: push_frame(7, 1, np.ones(8, np.float32).tobytes())),
    "second hello": (True, lambda: pack_local_request(STREAM_HELLO, with_token("", b"x"), 5.0)),
    "unknown kind": (True, lambda: pack_local_request(9, b"", 5.0)),
    "oversized payload": (True, lambda: push_frame(7, 1, b"", payload_bytes=1 << 40)),
    "oversized message": (True, lambda: pack_local_request(STREAM_PULL, b"", 5.0)[:4] + (1 << 31).to_bytes(4, "little")
                          + pack_local_request(STREAM_PULL, b"", 5.0)[8:]),
    "payload on a pull": (True, lambda: pack_local_request(STREAM_PULL, b"", 5.0, 0, 16) + b"\0" * 16),
    "truncated payload": (True, lambda: push_frame(7, 1, np.ones(4, np.float32).tobytes(), payload_bytes=32)),
}


def test_an_idle_connection_waits_unbounded_and_a_stalled_request_is_dropped(monkeypatch):
    """Each read of a started request is bounded (IO_TIMEOUT_S); between requests a
    connection may stay idle as long as it likes."""
    from ps.serving import stream_plane
    monkeypatch.setattr(stream_plane, "IO_TIMEOUT_S", 0.2)
    with cluster(1, mode="async") as servers, Client([servers[0].address], worker_id=7, local=False) as ps:
        server = servers[0]
        ps.create("w", shape=(8,), lr=1.0)
        pull = ps_pb2.PullHeader(worker_id=7, step=0, tables=["w"], part=0, num_parts=1).SerializeToString()
        with connect(server) as idle:
            for seq in (1, 2):  # each stall lasts a bound: meanwhile ``idle`` waits two bounds
                with connect(server) as stalled:
                    stalled.sendall(push_frame(7, seq, bytes(32))[:-8])  # the last 8 payload bytes never come
                    assert closed(stalled)  # dropped (within the socket's 5 s timeout), nothing applied
            idle.sendall(pack_local_request(STREAM_PULL, pull, 5.0))
            status, _, _, _ = reply(idle)
            assert status == OK
            assert np.array_equal(np.frombuffer(recv_exact(idle, 32), np.float32), np.zeros(8))
        np.testing.assert_array_equal(ps.pull("w")["w"], 0.0)  # the stalled push changed nothing


def test_bad_input_over_the_raw_socket_changes_nothing_and_the_server_keeps_serving():
    with cluster(1, mode="async") as servers, Client([servers[0].address], worker_id=7, local=False) as ps:
        server = servers[0]
        ps.create("w", shape=(8,), lr=1.0)
        pull = ps_pb2.PullHeader(worker_id=7, step=0, tables=["w"], part=0, num_parts=1).SerializeToString()
        for name, (frame, code) in ERRORS.items():
            with connect(server) as sock:
                sock.sendall(frame())
                status, body, _, _ = reply(sock)
                assert status != OK and (code is None or status == code), (name, status, body)
                sock.sendall(pack_local_request(STREAM_PULL, pull, 5.0))   # still in step: a good request works
                status, body, _, _ = reply(sock)
                assert status == OK, name
                assert np.array_equal(np.frombuffer(recv_exact(sock, 32), np.float32), np.zeros(8)), name
        for name, (hello, frame) in DROPS.items():
            with connect(server, hello=hello) as sock:
                sock.sendall(frame())
                if name == "truncated payload":
                    sock.shutdown(socket.SHUT_WR)
                if name == "oversized payload":  # said why, then closed
                    assert reply(sock)[0] == EXHAUSTED
                assert closed(sock), name
        np.testing.assert_array_equal(ps.pull("w")["w"], 0.0)
        assert ps.status()[0]["counters"].get("applied", 0) == 0
        ps.push({"w": np.ones(8, np.float32)})                    # still serving, on the stream plane
        assert on_stream(ps) == [True]
        np.testing.assert_array_equal(ps.pull("w")["w"], -1.0)


def test_a_refused_push_over_the_stream_plane_keeps_the_plane():
    with cluster(1, mode="async") as servers, Client([servers[0].address], local=False) as ps:
        ps.create("w", shape=(8,), lr=1.0)
        with pytest.raises(InvalidArgumentError):
            ps.push_pull({"w": np.array([1, 2, np.nan, 4, 5, 6, 7, 8], np.float32)})
        assert on_stream(ps) == [True]
        np.testing.assert_array_equal(ps.pull("w")["w"], 0.0)


# -- safety ---------------------------------------------------------------------------------

def test_a_token_server_requires_the_token_on_the_stream_plane():
    token = "stream-s3cret"
    with cluster(1, mode="async", auth_token=token) as servers:
        server = servers[0]
        with Client([server.address], token=token, local=False) as ps:
            ps.create("w", shape=(8,), lr=1.0)
            assert on_stream(ps) == [True]
            ps.push({"w": np.ones(8, np.float32)})
            np.testing.assert_array_equal(ps.pull("w")["w"], -1.0)
            for wrong in ("", "stream-s3creT", token + "x"):
                with connect(server, hello=False) as sock:
                    sock.sendall(pack_local_request(STREAM_HELLO, with_token(wrong, server.shard.server_id.encode()),
                                                    5.0))
                    assert reply(sock)[0] == UNAUTHENTICATED
                    assert closed(sock)
            with connect(server, hello=False) as sock:        # no hello at all
                sock.sendall(push_frame(ps.worker_id, 99, np.ones(8, np.float32).tobytes()))
                assert closed(sock)
            np.testing.assert_array_equal(ps.pull("w")["w"], -1.0)


def test_a_tls_server_does_not_offer_the_stream_plane(tmp_path):
    ca = CA(tmp_path, "ca")
    cert, key = ca.issue("server", True)
    with ShardServer(ServerConfig(port=0, tls_cert=cert, tls_key=key)) as server:
        assert server.stream_port is None
        with Client([server.address], tls_ca=ca.pem, local=False) as ps:
            ps.create("w", shape=(4,), lr=1.0)
            assert on_stream(ps) == [False]
            ps.push({"w": np.ones(4, np.float32)})
            np.testing.assert_array_equal(ps.pull("w")["w"], -1.0)


def test_switched_off_on_either_side():
    with cluster(1, mode="async", stream_plane=False) as servers:
        assert servers[0].stream_port is None
        with Client([servers[0].address], local=False) as ps:
            assert on_stream(ps) == [False]
    with cluster(1, mode="async") as servers:
        with Client([servers[0].address], local=False, stream=False) as ps:
            assert on_stream(ps) == [False]
            ps.create("w", shape=(4,), lr=1.0)
            ps.push({"w": np.ones(4, np.float32)})
            np.testing.assert_array_equal(ps.pull("w")["w"], -1.0)


def test_server_cli_reads_the_stream_flags():
    args = server_cli.build_parser(environ={"PS_NO_STREAM_PLANE": "1", "PS_STREAM_PORT": "50061"}).parse_args([])
    cfg = server_cli.config_from_args(args)
    assert cfg.stream_plane is False and cfg.stream_port == 50061
    cfg = server_cli.config_from_args(server_cli.build_parser(environ={}).parse_args([]))
    assert cfg.stream_plane is True and cfg.stream_port == 0
    with pytest.raises(ValueError):
        ServerConfig(port=5000, stream_port=5000).validate()


# -- fallback -------------------------------------------------------------------------------

def test_falls_back_to_grpc_when_the_stream_plane_goes_away_mid_run():
    with cluster(2, mode="async") as servers:
        addresses = [s.address for s in servers]
        with Client(addresses, local=False, part_bytes=1024) as ps:
            ps.create("w", shape=(1000,), lr=1.0, block_elems=64)
            for _ in range(3):
                ps.push_pull({"w": np.ones(1000, np.float32)})
            assert on_stream(ps) == [True, True]
            servers[0]._stream.stop()                      # its port and every connection close
            got = ps.push_pull({"w": np.ones(1000, np.float32)})
            assert on_stream(ps) == [False, True]
            np.testing.assert_array_equal(got["w"], -4.0)
            ps.push({"w": np.ones(1000, np.float32)})
            np.testing.assert_array_equal(ps.pull("w")["w"], -5.0)
            counters = [s["counters"] for s in ps.status()]
            assert sum(c.get("duplicate", 0) for c in counters) == ps.stats["duplicate"] == 0
        with Client(addresses, local=False) as late:           # the port is closed: gRPC from the start
            assert on_stream(late) == [False, True]
            np.testing.assert_array_equal(late.pull("w")["w"], -5.0)


# -- known blocks ---------------------------------------------------------------------------

def test_pulls_skip_only_unchanged_blocks_into_given_arrays(monkeypatch):
    copies = count_block_copies(monkeypatch)
    with cluster(2, mode="async") as servers:
        addresses = [s.address for s in servers]
        with Client(addresses, cache_pulls=True, local=False) as ps, Client(addresses, local=False) as other:
            ps.create("w", shape=(1000,), lr=1.0, block_elems=100)   # 10 blocks
            ps.create("b", shape=(10,), lr=1.0)
            assert on_stream(ps) == [True, True]
            first = ps.pull(["w", "b"])
            assert copies[0] == 11
            again = ps.pull(["w", "b"], out={"w": np.full((1000,), 7, np.float32), "b": np.empty(10, np.float32)})
            assert copies[0] == 11                               # nothing changed: nothing copied or sent
            np.testing.assert_array_equal(again["w"], first["w"])
            other.push({"b": np.ones(10, np.float32)})
            got = ps.pull(["w", "b"])
            assert copies[0] == 12                               # only the changed block
            np.testing.assert_array_equal(got["w"], 0.0)
            np.testing.assert_array_equal(got["b"], -1.0)
            assert on_stream(ps) == [True, True]


def test_idle_unauthenticated_connections_do_not_push_a_worker_off_the_stream_plane(monkeypatch):
    # issue 12 #7, scaled down: a flood of idle pre-hello sockets, three times the plane's
    # connection cap; a worker connecting during it still gets the TCP plane, and the flood's
    # sockets are closed once their hello is overdue (HELLO_TIMEOUT_S), not after a minute
    from ps.serving import socket_server, stream_plane

    monkeypatch.setattr(stream_plane, "MAX_CONNECTIONS", 64)
    monkeypatch.setattr(stream_plane, "MAX_PENDING", 32, raising=False)
    hello_timeout_s = getattr(socket_server, "HELLO_TIMEOUT_S", 3.0)
    token = "flood-s3cret"
    with cluster(1, mode="async", auth_token=token) as servers:
        server = servers[0]
        flood = [connect(server, hello=False) for _ in range(192)]
        try:
            with Client([server.address], token=token, local=False, timeout_s=10) as ps:
                assert on_stream(ps) == [True]
                ps.create("w", shape=(8,), lr=1.0)
                ps.push({"w": np.ones(8, np.float32)})
                np.testing.assert_array_equal(ps.pull("w")["w"], -1.0)
                assert on_stream(ps) == [True]
            newest = flood[-1]
            newest.settimeout(hello_timeout_s + 3)  # bounded: a closed socket reads b"" at once
            assert closed(newest), "a connection that never said hello was kept open"
        finally:
            for sock in flood:
                sock.close()

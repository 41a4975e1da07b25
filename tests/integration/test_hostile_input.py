"""Hostile input and overload: every kind is refused with the right status code, the
parameters do not change, and the server keeps serving. Complements test_bad_input.py
(malformed pushes) with sizes that overflow, ids, specs, control calls, oversized
messages, raw bytes on the port, fuzzed protobuf bodies, and the concurrency limit."""

import hashlib
import random
import socket
import threading
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ps import Mode, ServerConfig, ShardServer
from ps._proto import ps_pb2
from ps.protocol.channel import SERVICE_NAME
from ps.protocol.wire import encode_framed
from worker import Client
from worker.client.transport import ShardChannel

WORKER = 7
CODE = grpc.StatusCode


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    cfg = ServerConfig(port=0, max_message_bytes=1 << 20, checkpoint_dir=str(tmp_path_factory.mktemp("ckpt")),
                       shard_index=0, num_shards=1, lease_s=0)
    with ShardServer(cfg) as server:
        with Client([server.address], local=False) as ps:
            ps.create("w", shape=(64,), init="normal", init_scale=1.0, seed=1, lr=1.0, block_elems=16)
        channel = ShardChannel(server.address, 64 << 20)  # sends more than the server accepts
        channel.register(ps_pb2.RegisterRequest(worker_id=WORKER), timeout=5)
        yield server, channel
        channel.close()


def checksum(server) -> str:
    """Of every parameter of table w (read in process, under the block locks)."""
    digest = hashlib.sha256()
    table = server.shard.table("w")
    for b in sorted(table.blocks):
        data, version = table.read(table.blocks[b])
        digest.update(data)
    return digest.hexdigest()


def push(ch, *, worker=WORKER, seq=None, step=0, part=0, num_parts=1, refs=((0, 16),), payload=None):
    header = ps_pb2.PushHeader(worker_id=worker, seq=seq or random.randrange(10**6, 10**9), step=step,
                               part=part, num_parts=num_parts)
    for block, count in refs:
        header.blocks.add(table="w", block=block, dtype=ps_pb2.FLOAT32, count=count)
    if payload is None:
        payload = np.ones(sum(max(c, 0) for _, c in refs if c < 1 << 20), np.float32).tobytes()
    return ch.push(encode_framed(header.SerializeToString(), [payload]), timeout=5)


def create(ch, *, topology=(0, 1), **fields):
    spec = ps_pb2.TableSpec(name="t", shape=[4], dtype=ps_pb2.FLOAT32, block_elems=4,
                            optimizer=ps_pb2.OptimizerSpec(name="sgd", lr=0.1), init=ps_pb2.InitSpec(kind="zeros"))
    for key, value in fields.items():
        if key == "shape":
            del spec.shape[:]
            spec.shape.extend(value)
        elif key == "lr":
            spec.optimizer.lr = value
        else:
            setattr(spec, key, value)
    req = ps_pb2.CreateTableRequest(spec=spec)
    req.topology.shard_index, req.topology.num_shards = topology
    return ch.create_table(req, timeout=5)


def pull(ch, **fields):
    return ch.pull(ps_pb2.PullRequest(header=ps_pb2.PullHeader(**{"worker_id": WORKER, "tables": ["w"], **fields})),
                   timeout=5)


def raw(ch, method: str, body: bytes):
    return ch._channel.unary_unary(f"/{SERVICE_NAME}/{method}")(body, timeout=5)


CASES = {
    "message over the size limit": (lambda ch: push(ch, payload=bytes(2 << 20)), CODE.RESOURCE_EXHAUSTED),
    "element count that overflows": (lambda ch: push(ch, refs=((0, 1 << 62),), payload=b""), CODE.INVALID_ARGUMENT),
    "negative element count": (lambda ch: push(ch, refs=((0, -5),), payload=b""), CODE.INVALID_ARGUMENT),
    "worker id out of range": (lambda ch: ch.register(ps_pb2.RegisterRequest(worker_id=1 << 62), timeout=5),
                               CODE.INVALID_ARGUMENT),
    "negative step": (lambda ch: push(ch, step=-1), CODE.INVALID_ARGUMENT),
    "part beyond num_parts": (lambda ch: push(ch, part=3, num_parts=2), CODE.INVALID_ARGUMENT),
    "one block twice in a push": (lambda ch: push(ch, refs=((0, 16), (0, 16))), CODE.INVALID_ARGUMENT),
    "block id far out of range": (lambda ch: push(ch, refs=((1 << 62, 16),)), CODE.INVALID_ARGUMENT),
    "table of 2**80 elements": (lambda ch: create(ch, shape=[1 << 40, 1 << 40]), CODE.INVALID_ARGUMENT),
    "negative dimension": (lambda ch: create(ch, shape=[4, -1]), CODE.INVALID_ARGUMENT),
    "zero block size": (lambda ch: create(ch, block_elems=0), CODE.INVALID_ARGUMENT),
    "NaN learning rate": (lambda ch: create(ch, lr=float("nan")), CODE.INVALID_ARGUMENT),
    "table name with a path": (lambda ch: create(ch, name="../../etc/passwd"), CODE.INVALID_ARGUMENT),
    "unknown dtype enum": (lambda ch: create(ch, dtype=42), CODE.INVALID_ARGUMENT),
    "impossible topology": (lambda ch: create(ch, topology=(5, 2)), CODE.INVALID_ARGUMENT),
    "pull of an unknown table": (lambda ch: pull(ch, tables=["nope"]), CODE.NOT_FOUND),
    "pull part out of range": (lambda ch: pull(ch, part=4, num_parts=2), CODE.INVALID_ARGUMENT),
    "checkpoint tag escaping its directory": (
        lambda ch: ch.checkpoint(ps_pb2.CheckpointRequest(tag="../outside"), timeout=5), CODE.INVALID_ARGUMENT),
    "checkpoint at a negative version": (
        lambda ch: ch.checkpoint(ps_pb2.CheckpointRequest(at_version=-3), timeout=5), CODE.INVALID_ARGUMENT),
    "heartbeat of a stranger": (lambda ch: ch.heartbeat(ps_pb2.HeartbeatRequest(worker_id=999), timeout=5),
                                CODE.FAILED_PRECONDITION),
    "leave of a stranger": (lambda ch: ch.leave(ps_pb2.LeaveRequest(worker_id=999), timeout=5), CODE.NOT_FOUND),
    "push body that is not protobuf": (lambda ch: raw(ch, "Push", b"\xff\xfe\x00garbage" * 10),
                                       CODE.INVALID_ARGUMENT),
    "empty push": (lambda ch: raw(ch, "Push", b""), CODE.INVALID_ARGUMENT),
    "create body that is not protobuf": (lambda ch: raw(ch, "CreateTable", b"\x0a\xff\xff\xff\xff\x0f"),
                                         CODE.INVALID_ARGUMENT),
    "unknown method": (lambda ch: raw(ch, "DropAllTables", b""), CODE.UNIMPLEMENTED),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_call_is_refused_and_changes_nothing(target, case):
    server, channel = target
    before = checksum(server)
    call, code = CASES[case]
    with pytest.raises(grpc.RpcError) as info:
        call(channel)
    assert info.value.code() == code, info.value.details()
    assert checksum(server) == before
    assert push(channel, seq=random.randrange(10**9, 2 * 10**9), payload=bytes(64)).outcome == ps_pb2.APPLIED


def test_raw_bytes_on_the_port_do_not_hurt_the_server(target):
    server, _ = target
    before = checksum(server)
    rng = random.Random(1)
    host, port = server.address.rsplit(":", 1)
    payloads = [bytes(rng.randrange(256) for _ in range(n)) for n in (1, 100, 5000)]
    payloads.append(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes(rng.randrange(256) for _ in range(2000)))
    payloads.append(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    for data in payloads * 3:
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(data)
            s.settimeout(0.5)
            try:
                s.recv(1024)
            except (TimeoutError, ConnectionError, OSError):
                pass
    assert checksum(server) == before


def test_fuzzed_protobuf_bodies_never_crash_a_handler(target):
    """Random byte flips, truncations and insertions of valid messages: never INTERNAL."""
    server, channel = target
    before = checksum(server)
    stranger = ps_pb2.PushHeader(worker_id=424242, seq=1, step=0, part=0, num_parts=1)
    stranger.blocks.add(table="nope", block=0, dtype=ps_pb2.FLOAT32, count=16)
    seeds = {
        "Push": encode_framed(stranger.SerializeToString(), [np.ones(16, np.float32)]),
        "Pull": ps_pb2.PullRequest(header=ps_pb2.PullHeader(worker_id=424242, step=1, tables=["w"])).SerializeToString(),
        "Register": ps_pb2.RegisterRequest(worker_id=424242).SerializeToString(),
        "CreateTable": ps_pb2.CreateTableRequest(spec=ps_pb2.TableSpec(name="fz", shape=[3], dtype=1, block_elems=3,
                                                                       optimizer=ps_pb2.OptimizerSpec(name="sgd", lr=1),
                                                                       init=ps_pb2.InitSpec(kind="zeros")))
        .SerializeToString(),
        "Heartbeat": ps_pb2.HeartbeatRequest(worker_id=424242).SerializeToString(),
        "Status": b"",
    }
    rng = random.Random(1234)
    codes = set()
    for method, seed in sorted(seeds.items()):
        for _ in range(40):
            data = bytearray(seed)
            for _ in range(rng.randrange(1, 4)):
                op = rng.randrange(3)
                pos = rng.randrange(len(data) + 1)
                if op == 0 and data:
                    data[min(pos, len(data) - 1)] ^= 1 << rng.randrange(8)
                elif op == 1:
                    del data[pos:pos + rng.randrange(1, 8)]
                else:
                    data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 6)))
            try:
                raw(channel, method, bytes(data))
                codes.add(CODE.OK)
            except grpc.RpcError as exc:
                codes.add(exc.code())
                assert exc.code() not in (CODE.INTERNAL, CODE.UNKNOWN), (method, bytes(data), exc.details())
    assert checksum(server) == before
    assert CODE.INVALID_ARGUMENT in codes


def test_too_many_concurrent_calls_fail_fast_and_the_server_recovers():
    """threads=2 allows 8 calls in flight; of 9 pulls held by a sync step, 8 are held and the
    one that arrives last fails at once with RESOURCE_EXHAUSTED instead of queueing.

    Nothing else is sent while they arrive: a probe call (say a Status poll) that reached the
    server before the 8th pull would take a slot itself and wait in the queue behind the held
    pulls until they ran out of time, so the eight would never be held at once."""
    with ShardServer(ServerConfig(port=0, mode=Mode.SYNC, threads=2, lease_s=0)) as server:
        with Client([server.address], worker_id=0, local=False) as a, Client([server.address], worker_id=1) as b:
            a.create("w", shape=(4,), lr=1.0)
            a.push({"w": np.ones(4, np.float32)})         # step 0 now waits for worker 1
            channel = ShardChannel(server.address, 64 << 20)
            request = ps_pb2.PullRequest(header=ps_pb2.PullHeader(worker_id=0, step=1, tables=["w"]))
            ended: dict[int, float] = {}
            calls = []
            for i in range(9):
                call = channel.pull.future(request, timeout=3)
                call.add_done_callback(lambda _, i=i: ended.setdefault(i, time.monotonic()))
                calls.append(call)
            codes = []
            for call in calls:
                with pytest.raises(grpc.RpcError) as info:
                    call.result(timeout=10)                 # they run out of time; none hangs
                codes.append(info.value.code())
            refused = [i for i, code in enumerate(codes) if code == CODE.RESOURCE_EXHAUSTED]
            assert len(refused) == 1, codes
            held = [i for i in range(9) if i not in refused]
            assert {codes[i] for i in held} == {CODE.DEADLINE_EXCEEDED}
            assert ended[refused[0]] < min(ended[i] for i in held)  # refused on arrival, not queued
            b.push({"w": np.ones(4, np.float32)})          # and the server serves again
            np.testing.assert_array_equal(a.pull("w")["w"], -np.ones(4, np.float32))
            channel.close()


def test_health_is_served_while_the_shard_is_busy(target):
    server, _ = target
    with grpc.insecure_channel(server.address) as ch:
        reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_threads_do_not_leak_after_hostile_calls(target):
    server, _ = target
    assert threading.active_count() < 200

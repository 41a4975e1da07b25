"""The standard gRPC services on every shard, through the standard client stubs:
grpc.health.v1 (SERVING only once ready, NOT_SERVING while stopping; open without the
token) and server reflection (lists ps.v1.ParameterServer); and ``ps-health``."""

from __future__ import annotations

import threading

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from launcher import health_cli
from ps import Mode, ServerConfig, ShardServer
from ps.protocol.channel import SERVICE_NAME
from worker import Client

Status = health_pb2.HealthCheckResponse


def check(address: str, service: str = "") -> int:
    with grpc.insecure_channel(address) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                         timeout=5).status


def test_health_is_serving_for_the_server_and_the_ps_service():
    with ShardServer(ServerConfig(port=0)) as server:
        assert check(server.address) == Status.SERVING
        assert check(server.address, SERVICE_NAME) == Status.SERVING
        with pytest.raises(grpc.RpcError) as err:
            check(server.address, "no.such.Service")
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_health_goes_not_serving_when_the_server_stops():
    server = ShardServer(ServerConfig(port=0)).start()
    channel = grpc.insecure_channel(server.address)
    try:
        stream = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""), timeout=20)
        assert next(stream).status == Status.SERVING
        stopper = threading.Thread(target=server.stop, kwargs={"grace_s": 0.5})
        stopper.start()
        assert next(stream).status == Status.NOT_SERVING  # before the port closes
        stopper.join(20)
        assert not stopper.is_alive()
    finally:
        channel.close()
        server.stop()


def test_a_restored_shard_serves_only_with_its_state(tmp_path):
    cfg = dict(port=0, shard_index=0, num_shards=1, checkpoint_dir=str(tmp_path), mode=Mode.ASYNC)
    with ShardServer(ServerConfig(**cfg)) as first:
        with Client(first.address, local=False) as ps:
            ps.create("w", shape=(8,), lr=1.0)
            ps.push({"w": np.ones(8, np.float32)})
    with ShardServer(ServerConfig(restore=True, **cfg)) as second:
        assert check(second.address, SERVICE_NAME) == Status.SERVING
        with Client(second.address, observer=True, local=False) as ps:
            np.testing.assert_array_equal(ps.pull(["w"])["w"], -np.ones(8, np.float32))


def test_reflection_lists_the_parameter_server_service():
    with ShardServer(ServerConfig(port=0)) as server, grpc.insecure_channel(server.address) as channel:
        db = ProtoReflectionDescriptorDatabase(channel)
        services = db.get_services()
        assert SERVICE_NAME in services and "grpc.health.v1.Health" in services
        proto = db.FindFileContainingSymbol(SERVICE_NAME)
        (service,) = [s for s in proto.service if s.name == "ParameterServer"]
        assert {"Register", "Push", "Pull", "Status"} <= {m.name for m in service.method}


def _list_services(channel, metadata=()) -> list[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                        metadata=metadata, timeout=5)
    return [s.name for reply in replies for s in reply.list_services_response.service]


def test_with_a_token_health_stays_open_and_reflection_needs_the_token():
    with ShardServer(ServerConfig(port=0, auth_token="s3cret")) as server, \
            grpc.insecure_channel(server.address) as channel:
        assert check(server.address) == Status.SERVING
        with pytest.raises(grpc.RpcError) as err:
            _list_services(channel)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert SERVICE_NAME in _list_services(channel, (("authorization", "Bearer s3cret"),))


def test_ps_health_exit_codes(capsys):
    with ShardServer(ServerConfig(port=0)) as server:
        assert health_cli.main([server.address]) == 0
        assert capsys.readouterr().out.strip() == "SERVING"
        assert health_cli.main([server.address, "--service", SERVICE_NAME, "--timeout", "3"]) == 0
        assert health_cli.main([server.address, "--service", "nope"]) == 1
        assert "NOT_FOUND" in capsys.readouterr().err
        address = server.address
    assert health_cli.main([address, "--timeout", "1"]) == 1  # nobody listens any more
    err = capsys.readouterr().err
    assert "UNAVAILABLE" in err or "DEADLINE_EXCEEDED" in err

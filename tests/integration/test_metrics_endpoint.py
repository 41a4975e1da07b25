"""Prometheus metrics of servers and workers, scraped over HTTP from real endpoints."""

from __future__ import annotations

import threading
import types
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest

from ps import Mode, ServerConfig, ShardServer
from ps._proto import ps_pb2
from ps.errors import UnavailableError
from ps.metrics.registry import Registry
from ps.metrics.http import MetricsEndpoint
from ps.protocol.channel import SERVICE_NAME
from tests.integration.ports import free_port
from tests.prometheus_text import scrape, total, value
from worker import Client
from worker.observe.worker_metrics import WorkerMetrics


def servers(n: int, **config):
    return [ShardServer(ServerConfig(port=0, metrics_port=free_port(), **config)).start() for _ in range(n)]


def test_sync_pushes_are_counted_once_per_shard_message():
    shards = servers(2, mode=Mode.SYNC, num_workers=2, sync_timeout_s=20.0)
    try:
        addresses = [s.address for s in shards]
        # gRPC itself (not the TCP data plane, which gRPC's request metrics do not see)
        clients = [Client(addresses, worker_id=i, local=False, stream=False).connect() for i in range(2)]
        clients[0].create("w", shape=(64, 8), lr=0.1, block_elems=128)   # 4 blocks over the shards
        steps = 5

        def train(c):
            for _ in range(steps):
                c.pull(["w"])
                c.push({"w": np.ones((64, 8), np.float32)})

        threads = [threading.Thread(target=train, args=(c,)) for c in clients]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads)
        pushed = sum(c.stats["accumulated"] for c in clients)
        scraped = [scrape(s.metrics.endpoint.url) for s in shards]
        assert sum(value(m, "ps_updates_total", outcome="accumulated") for m in scraped) == pushed == 2 * 2 * steps
        for m in scraped:
            assert value(m, "ps_sync_steps_total") == value(m, "ps_shard_version") == steps
            assert value(m, "ps_updates_total", outcome="stale") == 0
            assert value(m, "ps_requests_total", service=SERVICE_NAME, method="Push", code="OK") == 2 * steps
            assert value(m, "ps_request_duration_seconds_count", service=SERVICE_NAME, method="Pull") == 2 * steps
            assert value(m, "ps_request_bytes_total", service=SERVICE_NAME, method="Push") > 0
            assert value(m, "ps_workers", state="live") == 2
            assert value(m, "ps_staleness_steps_count") == 2 * steps
            assert value(m, "process_resident_memory_bytes") > 0
        blocks = sum(value(m, "ps_table_blocks", table="w") for m in scraped)
        assert blocks == 4 and sum(value(m, "ps_table_bytes", table="w") for m in scraped) == 64 * 8 * 4
        assert max(value(m, "ps_table_version", table="w") for m in scraped) == steps
        for c in clients:
            c.close()
    finally:
        for s in shards:
            s.stop(grace_s=0.5)
    for s in shards:  # the endpoint's threads are joined: the port is closed
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(s.metrics.endpoint.url, timeout=2)


def test_ssp_staleness_and_refused_calls_are_observed():
    (shard,) = servers(1, mode=Mode.SSP, staleness=3, auth_token="tok")
    try:
        fast = Client(shard.address, worker_id=0, local=False, token="tok").connect()
        slow = Client(shard.address, worker_id=1, local=False, token="tok").connect()
        fast.create("w", shape=(4,), lr=0.1)
        for _ in range(3):  # clocks 0, 1, 2 while the slow worker stays at 0
            fast.pull(["w"])
            fast.push({"w": np.ones(4, np.float32)})
        with grpc.insecure_channel(shard.address) as channel:  # no token: refused, and counted
            status = channel.unary_unary(f"/{SERVICE_NAME}/Status", ps_pb2.StatusRequest.SerializeToString,
                                         ps_pb2.StatusReply.FromString)
            with pytest.raises(grpc.RpcError):
                status(ps_pb2.StatusRequest(), timeout=5)
        m = scrape(shard.metrics.endpoint.url)
        assert value(m, "ps_staleness_steps_count") == 3 and value(m, "ps_staleness_steps_sum") == 0 + 1 + 2
        assert value(m, "ps_staleness_steps_bucket", le="1") == 2
        assert value(m, "ps_requests_total", service=SERVICE_NAME, method="Status", code="UNAUTHENTICATED") == 1
        assert value(m, "ps_updates_total", outcome="applied") == 3 == value(m, "ps_shard_version")
        assert value(m, "ps_worker_clock", stat="min") == 0 and value(m, "ps_worker_clock", stat="max") == 3
        fast.close()
        slow.close()
    finally:
        shard.stop(grace_s=0.5)


def test_worker_metrics_follow_the_client_and_the_steps():
    client = types.SimpleNamespace(stats={"accumulated": 7, "applied": 0}, clock=7, worker_id=3, mode="sync")
    metrics = WorkerMetrics(port=0)
    metrics.watch_client(client)
    metrics.start()
    try:
        for step in (1, 2):
            metrics.on_step(types.SimpleNamespace(loss=0.5 / step, epoch=1), rows=32)
        metrics.calls.observe(0.02, call="pull")
        m = scrape(metrics.endpoint.url)
    finally:
        metrics.stop()
    assert value(m, "ps_worker_steps_total") == 2 and value(m, "ps_worker_samples_total") == 64
    assert value(m, "ps_worker_loss") == 0.25 and value(m, "ps_worker_clock") == 7
    assert value(m, "ps_worker_push_outcomes_total", outcome="accumulated") == 7
    assert value(m, "ps_worker_info", worker_id="3", mode="sync") == 1
    assert total(m, "ps_worker_call_duration_seconds_count") == 1


def test_endpoint_paths_and_port_conflicts():
    with MetricsEndpoint(Registry(), port=0) as endpoint:
        base = endpoint.url.rsplit("/", 1)[0]
        with urllib.request.urlopen(base + "/", timeout=5) as reply:
            assert b"/metrics" in reply.read()
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(base + "/other", timeout=5)
        assert err.value.code == 404
        err.value.close()
        with pytest.raises(UnavailableError):
            MetricsEndpoint(Registry(), port=endpoint.port).start()
        taken = endpoint.port
        server = ShardServer(ServerConfig(port=0, metrics_port=taken))
        with pytest.raises(UnavailableError):
            server.start()
        server.stop()
    assert endpoint._thread is None


def test_metrics_are_off_by_default():
    with ShardServer(ServerConfig(port=0)) as server:
        assert server.metrics is None and server.shard.metrics is None
    with pytest.raises(ValueError, match="metrics-port"):
        ServerConfig(port=5000, metrics_port=5000).validate()

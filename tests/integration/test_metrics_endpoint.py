"""Prometheus metrics of servers and workers, scraped over HTTP from real endpoints and read
with prometheus-client's parser: the series, the token, paths, slow clients and stops."""

from __future__ import annotations

import socket
import threading
import time
import types
import urllib.error
import urllib.request
from concurrent import futures

import grpc
import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from ps import Mode, ServerConfig, ShardServer
from ps._proto import ps_pb2
from ps.errors import UnavailableError
from ps.metrics.interceptor import MetricsInterceptor
from ps.metrics.request_metrics import RequestMetrics
from ps.protocol.metrics_endpoint import MetricsEndpoint
from ps.protocol.channel import SERVICE_NAME
from tests.integration.ports import free_port
from tests.scraped_metrics import fetch, parse, scrape, total, value
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
        m = scrape(shard.metrics.endpoint.url, token="tok")
        assert value(m, "ps_staleness_steps_count") == 3 and value(m, "ps_staleness_steps_sum") == 0 + 1 + 2
        assert value(m, "ps_staleness_steps_bucket", le="1.0") == 2
        assert value(m, "ps_requests_total", service=SERVICE_NAME, method="Status", code="UNAUTHENTICATED") == 1
        assert value(m, "ps_updates_total", outcome="applied") == 3 == value(m, "ps_shard_version")
        assert value(m, "ps_worker_clock", stat="min") == 0 and value(m, "ps_worker_clock", stat="max") == 3
        fast.close()
        slow.close()
    finally:
        shard.stop(grace_s=0.5)


def refused(url: str, token: str | None) -> int:
    """The HTTP status of a scrape that must be refused."""
    with pytest.raises(urllib.error.HTTPError) as err:
        fetch(url, token)
    err.value.close()
    return err.value.code


def test_server_metrics_need_the_servers_token():
    with ShardServer(ServerConfig(port=0, metrics_port=free_port(), auth_token="s3cret")) as server:
        url = server.metrics.endpoint.url
        assert refused(url, None) == refused(url, "wrong") == refused(url, "s3cret-and-more") == 401
        with pytest.raises(urllib.error.HTTPError) as err:  # the scheme must be Bearer
            urllib.request.urlopen(urllib.request.Request(url, headers={"Authorization": "Basic s3cret"}), timeout=5)
        assert err.value.code == 401 and err.value.headers["WWW-Authenticate"].startswith("Bearer")
        err.value.close()
        m = scrape(url, token="s3cret")
        assert value(m, "ps_shard_version") == 0 and value(m, "process_resident_memory_bytes") > 0
        assert refused(url.rsplit("/", 1)[0] + "/", None) == 401  # every path


def test_worker_metrics_follow_the_client_and_need_its_token():
    client = types.SimpleNamespace(stats={"accumulated": 7, "applied": 0}, clock=7, worker_id=3, mode="sync")
    metrics = WorkerMetrics(port=0, token="w-token")
    metrics.watch_client(client)
    metrics.start()
    try:
        for step in (1, 2):
            metrics.on_step(types.SimpleNamespace(loss=0.5 / step, epoch=1), rows=32)
        metrics.observe_call("pull", 0.02)
        assert refused(metrics.endpoint.url, None) == refused(metrics.endpoint.url, "other") == 401
        m = scrape(metrics.endpoint.url, token="w-token")
    finally:
        metrics.stop()
    assert value(m, "ps_worker_steps_total") == 2 and value(m, "ps_worker_samples_total") == 64
    assert value(m, "ps_worker_loss") == 0.25 and value(m, "ps_worker_clock") == 7
    assert value(m, "ps_worker_push_outcomes_total", outcome="accumulated") == 7
    assert value(m, "ps_worker_info", worker_id="3", mode="sync") == 1
    assert total(m, "ps_worker_call_duration_seconds_count") == 1
    assert value(m, "process_cpu_seconds_total") > 0


def test_endpoint_paths_and_port_conflicts():
    with MetricsEndpoint(CollectorRegistry(), port=0) as endpoint:
        base = endpoint.url.rsplit("/", 1)[0]
        with urllib.request.urlopen(base + "/", timeout=5) as reply:
            assert b"/metrics" in reply.read()
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(base + "/other", timeout=5)
        assert err.value.code == 404
        err.value.close()
        with urllib.request.urlopen(urllib.request.Request(endpoint.url, headers={
                "Accept": "application/openmetrics-text; version=1.0.0"}), timeout=5) as reply:
            assert reply.headers["Content-Type"].startswith("application/openmetrics-text")
            assert reply.read().endswith(b"# EOF\n")
        with pytest.raises(UnavailableError):
            MetricsEndpoint(CollectorRegistry(), port=endpoint.port).start()
        taken = endpoint.port
        server = ShardServer(ServerConfig(port=0, metrics_port=taken))
        with pytest.raises(UnavailableError):
            server.start()
        server.stop()
    assert endpoint._thread is None


def hold(port: int) -> socket.socket:
    """A client that starts a request and never finishes it."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
    return sock


def seconds_until_cut(sock: socket.socket, limit_s: float) -> float:
    """Send one header line every 0.2 s (a slow client) until the server closes the connection."""
    start = time.monotonic()
    sock.settimeout(0.2)
    while time.monotonic() - start < limit_s:
        try:
            sock.sendall(b"X-Slow: 1\r\n")
            if sock.recv(4096) == b"":
                return time.monotonic() - start
        except TimeoutError:
            continue
        except OSError:  # reset
            return time.monotonic() - start
    raise AssertionError(f"a slow client still held its connection after {limit_s} s")


def test_a_slow_client_is_cut_at_its_deadline():
    with MetricsEndpoint(CollectorRegistry(), port=0, request_timeout_s=1.0) as endpoint:
        sock = hold(endpoint.port)
        try:
            assert seconds_until_cut(sock, 10.0) < 3.0
        finally:
            sock.close()
        fetch(endpoint.url)  # and serves the next scrape


def test_stop_cuts_open_connections_and_returns_at_once():
    endpoint = MetricsEndpoint(CollectorRegistry(), port=0, request_timeout_s=60.0).start()
    socks = [hold(endpoint.port) for _ in range(3)]
    try:
        start = time.monotonic()
        endpoint.stop()
        assert time.monotonic() - start < 2.0
        for sock in socks:
            assert seconds_until_cut(sock, 2.0) < 2.0
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", endpoint.port), timeout=2).close()
    finally:
        for sock in socks:
            sock.close()


def test_connections_beyond_the_cap_are_closed_on_arrival():
    with MetricsEndpoint(CollectorRegistry(), port=0, max_connections=2, request_timeout_s=30.0) as endpoint:
        held = [hold(endpoint.port) for _ in range(2)]
        try:
            extra = hold(endpoint.port)  # accepted after the two: one serving thread, in order
            try:
                assert seconds_until_cut(extra, 5.0) < 2.0
            finally:
                extra.close()
        finally:
            for sock in held:
                sock.close()
        deadline = time.monotonic() + 5
        while True:  # once the held ones closed, scrapes are served again
            try:
                fetch(endpoint.url)
                break
            except OSError:
                assert time.monotonic() < deadline, "the endpoint did not serve again after its clients left"
                time.sleep(0.05)


def test_each_grpc_call_is_counted_once_by_the_handler_or_the_interceptor():
    metrics = RequestMetrics(registry := CollectorRegistry())

    def handled(request, context):  # as the request handler does: it counts Push and Pull itself
        metrics.observe("test.Echo", "Handled", "OK", 0.001)
        return request

    def failing(request, context):
        context.abort(grpc.StatusCode.NOT_FOUND, "nothing here")

    handlers = {"Handled": grpc.unary_unary_rpc_method_handler(handled),
                "Plain": grpc.unary_unary_rpc_method_handler(lambda request, context: request),
                "Failing": grpc.unary_unary_rpc_method_handler(failing)}
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), interceptors=[MetricsInterceptor(metrics)])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Echo", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            for method in handlers:
                call = channel.unary_unary(f"/test.Echo/{method}")
                for _ in range(3):
                    try:
                        assert call(b"12345", timeout=5) == b"12345"
                    except grpc.RpcError as exc:
                        assert exc.code() == grpc.StatusCode.NOT_FOUND and method == "Failing"
    finally:
        server.stop(0).wait(5)
    m = parse(generate_latest(registry).decode())
    for method, code in (("Handled", "OK"), ("Plain", "OK"), ("Failing", "NOT_FOUND")):
        assert total(m, "ps_requests_total", method=method) == 3 == value(
            m, "ps_requests_total", service="test.Echo", method=method, code=code)
        assert value(m, "ps_request_duration_seconds_count", service="test.Echo", method=method) == 3
        assert value(m, "ps_request_bytes_total", service="test.Echo", method=method) == 15


def test_metrics_are_off_by_default():
    with ShardServer(ServerConfig(port=0)) as server:
        assert server.metrics is None and server.shard.metrics is None
    with pytest.raises(ValueError, match="metrics-port"):
        ServerConfig(port=5000, metrics_port=5000).validate()

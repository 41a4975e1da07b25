"""A stop that no client can hold (issue 12, item 4): a real ``ps-server`` with slow or idle
clients on every port it serves (gRPC, the TCP data plane, metrics) and a sync pull in flight
exits within its grace period plus a margin, on SIGTERM and on ``ps-admin stop``, with its
final checkpoint written."""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from ps import ServerConfig, ShardServer
from ps.errors import PSError, UnavailableError
from tests.integration.ports import free_port
from tests.integration.procs import ROOT, Cluster
from worker import Client
from worker.client.transport import RetryPolicy

pytestmark = pytest.mark.slow

TOKEN = "stop-test-token"
GRACE_S = 1.0
#: the stop's other work (final checkpoint, joins) and the interpreter's exit, on a busy machine
MARGIN_S = 6.0


class SlowClient:
    """Holds a connection to ``port`` from a thread: sends ``first``, then ``every`` each 0.2 s
    (nothing when empty). When the server closes it, it connects again, until :meth:`close`."""

    def __init__(self, port: int, first: bytes = b"", every: bytes = b"") -> None:
        self.port, self.first, self.every = port, first, every
        self.connections = 0
        self._closed = threading.Event()
        self._sock = self._connect()  # the first connection is up before the test goes on
        self._thread = threading.Thread(target=self._run, name="slow-client", daemon=True)
        self._thread.start()

    def _connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=2)
        if self.first:
            sock.sendall(self.first)
        self.connections += 1
        return sock

    def _run(self) -> None:
        sock: socket.socket | None = self._sock
        while not self._closed.is_set():
            try:
                if sock is None:
                    sock = self._connect()
                if self.every:
                    sock.sendall(self.every)
                ready, _, _ = select.select([sock], [], [], 0.2)
                if ready and not sock.recv(4096):
                    raise ConnectionError("closed by the server")
            except OSError:
                if sock is not None:
                    sock.close()
                sock = None
                self._closed.wait(0.2)  # the server may be gone: try again a little later
        if sock is not None:
            sock.close()

    def close(self) -> None:
        self._closed.set()
        self._thread.join(5)


def closed_by_server(sock: socket.socket, timeout_s: float) -> bool:
    """Whether the server closes ``sock`` (EOF or reset) within ``timeout_s``; reads what it sends."""
    deadline = time.monotonic() + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            if not sock.recv(4096):
                return True
        except TimeoutError:
            return False
        except OSError:
            return True
    return False


def test_stop_closes_the_connections_of_every_plane_in_process():
    before = set(threading.enumerate())
    server = ShardServer(ServerConfig(port=0, metrics_port=free_port(), grace_s=0.5, local_plane=False)).start()
    ports = {"grpc": server.port, "stream": server.stream_port, "metrics": server.metrics.endpoint.port}
    socks = {name: socket.create_connection(("127.0.0.1", port), timeout=2) for name, port in ports.items()}
    try:
        socks["grpc"].sendall(b"PRI * HTTP/2.0\r\n")
        socks["metrics"].sendall(b"GET /metrics HTTP/1.1\r\n")
        start = time.monotonic()
        server.stop()
        assert time.monotonic() - start < 0.5 + 2.0
        assert {name for name, sock in socks.items() if not closed_by_server(sock, 2.0)} == set()
        deadline = time.monotonic() + 5
        while serving := [t.name for t in set(threading.enumerate()) - before
                          if t.name in ("ps-stream-conn", "ps-metrics-conn")]:
            assert time.monotonic() < deadline, f"connection threads still running after the stop: {serving}"
            time.sleep(0.02)
    finally:
        for sock in socks.values():
            sock.close()


@pytest.mark.parametrize("how", ["sigterm", "ps-admin stop"])
def test_slow_clients_on_every_port_cannot_hold_a_stop(tmp_path, how):
    cluster = Cluster(tmp_path)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    metrics_port, stream_port = free_port(), free_port()
    clients: list[SlowClient] = []
    workers: list[Client] = []
    try:
        proc, address = cluster.server(
            "--mode", "sync", "--num-workers", "2", "--grace", str(GRACE_S), "--token-file", str(token_file),
            "--checkpoint-dir", str(tmp_path / "ckpt"), "--shard-index", "0", "--num-shards", "1",
            "--metrics-port", str(metrics_port), "--stream-port", str(stream_port))
        grpc_port = int(address.rsplit(":", 1)[1])
        # a sync pull in flight over gRPC: worker 0 pulls step 1, which waits for worker 1's push
        workers = [Client(address, worker_id=i, local=False, stream=False, token=TOKEN, wait_timeout_s=30,
                          retry=RetryPolicy(attempts=1)).connect() for i in range(2)]
        workers[0].create("w", shape=(4,), lr=0.1)
        workers[0].pull(["w"])
        workers[0].push({"w": np.ones(4, np.float32)})
        pulled: list = []

        def pull_in_flight() -> None:
            try:
                pulled.append(workers[0].pull(["w"]))
            except PSError as exc:  # the server stopped under it
                pulled.append(exc)

        puller = threading.Thread(target=pull_in_flight, daemon=True)
        puller.start()
        clients += [SlowClient(metrics_port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n", b"X-Slow: 1\r\n")
                    for _ in range(2)]
        clients += [SlowClient(stream_port) for _ in range(2)]                       # before their hello
        clients += [SlowClient(grpc_port, b"PRI * HTTP/2.0\r\n") for _ in range(2)]  # half a preface
        assert puller.is_alive(), f"the pull did not wait: {pulled}"

        start = time.monotonic()
        if how == "sigterm":
            proc.signal(signal.SIGTERM)
        else:
            admin = subprocess.run([sys.executable, "-m", "launcher.admin_cli", "stop", "--servers", address,
                                    "--token-file", str(token_file), "--timeout", "10"],
                                   cwd=ROOT, capture_output=True, text=True, timeout=60,
                                   env={**os.environ, "PYTHONPATH": str(ROOT)})
            assert admin.returncode == 0, admin.stderr
            start = time.monotonic()
        assert proc.wait(GRACE_S + MARGIN_S) == 0, proc.log()[-3000:]
        took = time.monotonic() - start
        assert took < GRACE_S + MARGIN_S
        assert list((tmp_path / "ckpt").rglob("*final*")), "no final checkpoint was written"
        puller.join(10)
        assert not puller.is_alive() and isinstance(pulled[0], PSError)
    finally:
        for c in clients:
            c.close()
        for w in workers:
            w.close()
        cluster.close()


#: a long grace: a stop that waits for the blocked pull instead of ending it would take all of it
LONG_GRACE_S = 8.0


def wait_until_waiting(client: Client, waits_before: int, timeout_s: float = 20.0) -> None:
    """Until the shard counts one more call that waits on other workers than ``waits_before``
    (the counter ``waits`` goes up under the shard's lock just before the call waits)."""
    deadline = time.monotonic() + timeout_s
    while client.status()[0]["counters"].get("waits", 0) <= waits_before:
        assert time.monotonic() < deadline, "the pull never started waiting in the shard"
        time.sleep(0.02)


@pytest.mark.parametrize("plane", ["grpc", "stream", "local"])
def test_sigterm_ends_a_sync_pull_waiting_in_the_shard(tmp_path, plane):
    """SIGTERM while a sync pull waits in the shard for another worker's push: the pull fails
    at once with UNAVAILABLE "server stopping" (the stop ends the wait; it does not let it run
    out its grace period), and the process exits 0 by itself, well within the grace period,
    with its final checkpoint (no watchdog exit). On every plane."""
    cluster = Cluster(tmp_path)
    workers: list[Client] = []
    try:
        proc, address = cluster.server(
            "--mode", "sync", "--num-workers", "2", "--grace", str(LONG_GRACE_S), "--sync-timeout", "120",
            "--checkpoint-dir", str(tmp_path / "ckpt"), "--shard-index", "0", "--num-shards", "1")
        workers = [Client(address, worker_id=i, local=plane == "local", stream=plane == "stream",
                          wait_timeout_s=120, retry=RetryPolicy(attempts=1)).connect() for i in range(2)]
        assert workers[0].data_planes() == [{"grpc": "grpc", "stream": "tcp", "local": "shared memory"}[plane]]
        workers[0].create("w", shape=(4,), lr=0.1)
        workers[0].pull(["w"])
        workers[0].push({"w": np.ones(4, np.float32)})  # step 0 now waits for worker 1's push
        waits_before = workers[1].status()[0]["counters"].get("waits", 0)
        pulled: list = []

        def pull_in_flight() -> None:
            try:
                pulled.append(workers[0].pull(["w"]))
            except PSError as exc:
                pulled.append(exc)
            pulled.append(time.monotonic())

        puller = threading.Thread(target=pull_in_flight, daemon=True)
        puller.start()
        wait_until_waiting(workers[1], waits_before)
        start = time.monotonic()
        proc.signal(signal.SIGTERM)
        puller.join(LONG_GRACE_S)
        assert not puller.is_alive(), "the pull still waits after the stop began"
        error, ended = pulled
        assert isinstance(error, UnavailableError), error
        if plane == "grpc":  # a fast plane's client sends a transient failure again over gRPC, by then closed
            assert "server stopping" in str(error) and "worker 1" in str(error), error  # and whom it waited for
        assert ended - start < LONG_GRACE_S / 2
        assert proc.wait(LONG_GRACE_S) == 0, proc.log()[-3000:]
        assert time.monotonic() - start < LONG_GRACE_S
        assert "exiting anyway" not in proc.log(), proc.log()[-3000:]
        assert list((tmp_path / "ckpt").rglob("*final*")), "no final checkpoint was written"
    finally:
        for w in workers:
            w.close()
        cluster.close()

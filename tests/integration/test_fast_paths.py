"""The fast paths keep the semantics: shared memory, unix sockets, fused steps, known blocks.

Every test runs real shards on loopback. ``path`` picks how a worker reaches them:
``shm`` (the same-host shared-memory data plane), ``stream`` (the TCP data plane beside
gRPC), ``tcp`` (gRPC alone over loopback TCP) or ``uds`` (gRPC over a unix socket,
``ServerConfig(uds=...)``).
"""

from __future__ import annotations

import contextlib
import os
import tempfile

import numpy as np
import pytest

from ps import Mode, ServerConfig, ShardServer
from ps._proto import ps_pb2
from ps.errors import InvalidArgumentError
from ps.protocol.wire import encode_framed
from tests.conftest import count_block_copies, run_threads
from worker import Client
from worker.client.transport import ShardChannel

PATHS = ["shm", "stream", "tcp", "uds"]


@contextlib.contextmanager
def cluster(num: int, path: str, **config):
    """Shards reachable over ``path``; yields (addresses, client options, servers)."""
    config.setdefault("sync_timeout_s", 20.0)
    if isinstance(config.get("mode"), str):
        config["mode"] = Mode(config["mode"])
    tmp = tempfile.mkdtemp(prefix="ps-test-")
    socks = [os.path.join(tmp, f"s{i}.sock") for i in range(num)]
    servers = [ShardServer(ServerConfig(port=0, uds=socks[i] if path == "uds" else None,
                                        local_plane=path == "shm", stream_plane=path == "stream", **config))
               for i in range(num)]
    try:
        for s in servers:
            s.start()
        addresses = [f"unix:{p}" for p in socks] if path == "uds" else [s.address for s in servers]
        yield addresses, {"local": path == "shm"}, servers
    finally:
        for s in servers:
            s.stop(grace_s=0.5)
        for p in socks:
            if os.path.exists(p):
                os.unlink(p)
        os.rmdir(tmp)


def _uses_shm(ps: Client) -> bool:
    return "shared memory" in ps.data_planes()


@pytest.mark.parametrize("api", ["push_pull", "push+pull", "buffers"])
@pytest.mark.parametrize("path", PATHS)
def test_concurrent_pushes_sum_exactly(path, api):
    workers, steps = 3, 12
    shape = (300, 7)
    with cluster(2, path, mode="async") as (addresses, opts, _):
        with Client(addresses, **opts) as ps:
            ps.create("t", shape=shape, lr=1.0, block_elems=128)
            assert _uses_shm(ps) == (path == "shm")
            assert ("tcp" in ps.data_planes()) == (path == "stream")

        def worker(rank):
            # small parts: several calls in flight per shard, on every path
            with Client(addresses, part_bytes=2048, local_part_bytes=2048, **opts) as ps:
                grads, weights = ps.buffers("t") if api == "buffers" else ({"t": None}, None)
                seen = None
                for k in range(steps):
                    value = rank + 1 + k % 3
                    if api == "buffers":
                        grads["t"][...] = value
                        seen = ps.push_pull(grads, out=weights)["t"]
                        assert seen is weights["t"]
                    elif api == "push_pull":
                        seen = ps.push_pull({"t": np.full(shape, value, dtype=np.float32)})["t"]
                    else:
                        ps.push({"t": np.full(shape, value, dtype=np.float32)})
                        seen = ps.pull("t")["t"]
                    assert seen.shape == shape
                return ps.stats["applied"]

        applied = run_threads([lambda r=r: worker(r) for r in range(workers)])
        with Client(addresses, observer=True, **opts) as ps:
            final = ps.pull("t")["t"]
    expected = -sum(r + 1 + k % 3 for r in range(workers) for k in range(steps))
    assert np.array_equal(final, np.full(shape, expected, dtype=np.float32))
    assert all(a >= steps for a in applied)


@pytest.mark.parametrize("path", PATHS)
def test_push_pull_reads_its_own_update(path):
    with cluster(2, path, mode="async") as (addresses, opts, _):
        with Client(addresses, local_part_bytes=1024, part_bytes=1024, **opts) as ps:
            ps.create("w", shape=(40, 33), lr=0.5, block_elems=50)
            ps.create("b", shape=(5,), lr=1.0)
            got = ps.push_pull({"w": np.ones((40, 33), np.float32), "b": np.full(5, 2, np.float32)})
            np.testing.assert_array_equal(got["w"], -0.5)
            np.testing.assert_array_equal(got["b"], -2.0)
            got = ps.push_pull({"w": np.ones((40, 33), np.float32)}, ["w", "b"])
            np.testing.assert_array_equal(got["w"], -1.0)
            np.testing.assert_array_equal(got["b"], -2.0)
            assert ps.clock == 2 and ps.stats["applied"] >= 2


@pytest.mark.parametrize("path", PATHS)
def test_sync_push_pull_matches_single_process_sgd(path):
    lr, steps, n = 0.1, 5, 3
    rng = np.random.default_rng(0)
    grads = rng.standard_normal((n, steps, 64, 9)).astype(np.float32)
    with cluster(2, path, mode="sync", num_workers=n) as (addresses, opts, _):
        def worker(rank):
            with Client(addresses, worker_id=rank, timeout_s=10, wait_timeout_s=30, **opts) as ps:
                ps.create("w", shape=(64, 9), lr=lr, block_elems=100)
                out = {"w": np.empty((64, 9), np.float32)}
                for k in range(steps):
                    ps.push_pull({"w": grads[rank, k]}, out=out)
                return out["w"].copy()

        finals = run_threads([lambda r=r: worker(r) for r in range(n)])
    expected = np.zeros((64, 9), np.float64)
    for k in range(steps):
        expected -= lr * grads[:, k].astype(np.float64).mean(axis=0)
    for w in finals:
        np.testing.assert_allclose(w, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("path", ["shm", "stream", "tcp"])
def test_pulls_skip_blocks_the_worker_already_holds(path, monkeypatch):
    with cluster(2, path, mode="async") as (addresses, opts, servers):
        copies = count_block_copies(monkeypatch)
        with Client(addresses, cache_pulls=True, **opts) as ps, Client(addresses, **opts) as other:
            ps.create("w", shape=(1000,), lr=1.0, block_elems=100)  # 10 blocks
            first = ps.pull("w")["w"]
            assert copies[0] == 10
            again = ps.pull("w")["w"]
            assert copies[0] == 10                      # nothing changed: nothing copied
            np.testing.assert_array_equal(first, again)
            grad = np.zeros(1000, np.float32)
            grad[250] = 4.0                             # touches block 2 only ...
            other.push({"w": grad})                     # ... but every block's version moves
            copies[0] = 0
            third = ps.pull("w")["w"]
            assert copies[0] == 10
            assert third[250] == -4.0 and np.count_nonzero(third) == 1
            copies[0] = 0
            assert np.array_equal(ps.pull("w")["w"], third) and copies[0] == 0


def test_known_versions_of_another_server_are_ignored(monkeypatch):
    with cluster(1, "tcp", mode="async") as (addresses, opts, servers):
        copies = count_block_copies(monkeypatch)
        with Client(addresses, **opts) as ps:
            ps.create("w", shape=(300,), lr=1.0, block_elems=100)
        channel = ShardChannel(addresses[0], 64 << 20)
        try:
            def pull(known_for=None, versions=()):
                header = ps_pb2.PullHeader(worker_id=-1, tables=["w"], num_parts=1, known_for=known_for or "")
                for ref in versions:
                    header.known.add(table=ref.table, block=ref.block, version=ref.version)
                copies[0] = 0
                return channel.pull(ps_pb2.PullRequest(header=header), timeout=5)[0]

            first = pull()
            assert copies[0] == 3
            assert not pull(first.state_token, first.blocks).blocks and copies[0] == 0   # all held
            assert len(pull("another-server:0", first.blocks).blocks) == 3 and copies[0] == 3  # as after a restart
        finally:
            channel.close()


def test_buffers_are_zero_copy_and_weights_read_only():
    with cluster(1, "shm", mode="async") as (addresses, opts, _):
        with Client(addresses, **opts) as ps:
            ps.create("w", shape=(64, 64), lr=1.0, block_elems=1000)
            grads, weights = ps.buffers(["w"])
            assert not weights["w"].flags.writeable and grads["w"].flags.writeable
            with pytest.raises(ValueError):
                weights["w"][0, 0] = 1.0
            grads["w"][...] = 2.0
            got = ps.push_pull(grads, out=weights)
            assert got["w"] is weights["w"]
            np.testing.assert_array_equal(weights["w"], -2.0)
            ps.push(grads)
            ps.pull(["w"], out=weights)
            np.testing.assert_array_equal(weights["w"], -4.0)
            mine = np.zeros((64, 64), np.float32)       # an ordinary array still works
            ps.pull("w", out={"w": mine})
            np.testing.assert_array_equal(mine, -4.0)
            with pytest.raises(InvalidArgumentError):
                ps.pull("w", out={"w": np.zeros((64, 63), np.float32)})


def test_buffers_work_without_the_data_plane():
    with cluster(1, "tcp", mode="async") as (addresses, opts, _):
        with Client(addresses, **opts) as ps:
            ps.create("w", shape=(10,), lr=1.0)
            grads, weights = ps.buffers("w")
            grads["w"][...] = 1.0
            ps.push_pull(grads, out=weights)
            np.testing.assert_array_equal(weights["w"], -1.0)


@pytest.mark.parametrize("bad", ["nan", "dtype", "shape"])
def test_bad_input_over_shared_memory_is_refused_and_changes_nothing(bad):
    with cluster(1, "shm", mode="async") as (addresses, opts, _):
        with Client(addresses, **opts) as ps:
            ps.create("w", shape=(8,), lr=1.0)
            grad = {"nan": np.array([1, 2, np.nan, 4, 5, 6, 7, 8], np.float32),
                    "dtype": np.ones(8, np.float64), "shape": np.ones(9, np.float32)}[bad]
            with pytest.raises(InvalidArgumentError):
                ps.push_pull({"w": grad})
            assert _uses_shm(ps)                         # a refusal is no reason to leave the path
            np.testing.assert_array_equal(ps.pull("w")["w"], 0.0)
            ps.push({"w": np.ones(8, np.float32)})
            np.testing.assert_array_equal(ps.pull("w")["w"], -1.0)


def test_a_broken_data_plane_falls_back_to_grpc_exactly_once():
    with cluster(2, "shm", mode="async") as (addresses, opts, servers):
        with Client(addresses, local_part_bytes=512, **opts) as ps:
            ps.create("w", shape=(1000,), lr=1.0, block_elems=64)
            ps.push_pull({"w": np.ones(1000, np.float32)})
            for server in servers:                       # the sockets die under the worker
                server._local.stop()
            got = ps.push_pull({"w": np.ones(1000, np.float32)})
            assert not _uses_shm(ps)
            np.testing.assert_array_equal(got["w"], -2.0)
            ps.push({"w": np.ones(1000, np.float32)})
            np.testing.assert_array_equal(ps.pull("w")["w"], -3.0)


def test_the_same_push_pull_delivered_twice_applies_once():
    with cluster(1, "tcp", mode="async") as (addresses, opts, _):
        with Client(addresses, worker_id=5, **opts) as ps:
            ps.create("w", shape=(4,), lr=1.0)
        channel = ShardChannel(addresses[0], 64 << 20)
        try:
            channel.register(ps_pb2.RegisterRequest(worker_id=5), timeout=5)
            header = ps_pb2.PushHeader(worker_id=5, seq=42, step=0, part=0, num_parts=1)
            header.blocks.add(table="w", block=0, dtype=ps_pb2.FLOAT32, count=4)
            header.then_pull.tables.append("w")
            message = encode_framed(header.SerializeToString(), [np.ones(4, dtype=np.float32)])
            h1, p1 = channel.push_pull(message, timeout=5)
            h2, p2 = channel.push_pull(message, timeout=5)   # a retry after a lost reply
        finally:
            channel.close()
        assert h1.push_outcome == ps_pb2.APPLIED and h1.push_version == 1
        assert h2.push_outcome == ps_pb2.DUPLICATE and h2.push_version == 1
        assert bytes(p1) == bytes(p2) == np.full(4, -1.0, np.float32).tobytes()


def test_server_cli_reads_uds_and_local_plane_flags():
    from launcher.server_cli import build_parser, config_from_args

    cfg = config_from_args(build_parser(environ={}).parse_args(["--uds", "/tmp/x.sock", "--no-local-plane"]))
    assert cfg.uds == "/tmp/x.sock" and cfg.local_plane is False
    cfg = config_from_args(build_parser(environ={"PS_UDS": "/tmp/y.sock"}).parse_args([]))
    assert cfg.uds == "/tmp/y.sock" and cfg.local_plane is True

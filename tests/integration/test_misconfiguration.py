"""Misconfiguration named at once (issue 12, items 10, 11 and 13), with real processes.

Servers and workers are the real command lines on loopback ports from the OS; every wait
is bounded (``Proc.wait_for``/``wait_for_log``/``wait``), so a hang is a failure.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys

import numpy as np
import pytest

from ps import ServerConfig, ShardServer
from ps.errors import AlreadyExistsError, FailedPreconditionError, InvalidArgumentError
from tests.integration.ports import free_port
from tests.integration.procs import CLEAN_ENV, ROOT
from worker import Client

pytestmark = pytest.mark.slow



def run(*argv: str, timeout_s: float = 60.0, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m ARGV`` to completion (bounded), without the caller's PS_* variables."""
    return subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, timeout=timeout_s,
                          cwd=ROOT, env={**CLEAN_ENV, **(env or {})}, stdin=subprocess.DEVNULL)


# -- 10: a worker that never arrives is named, by id, within seconds ------------------------


def test_a_missing_worker_is_named_by_the_waiting_worker_and_by_ps_admin_status(cluster):
    _, address = cluster.server("--mode", "sync", "--num-workers", "2")
    worker = cluster.ps_worker("--servers", address, "--rank", "0", "--num-workers", "2", "--epochs", "1",
                               "--warn-after", "2")
    # worker 1 never starts: worker 0's first sync step waits for it
    worker.wait_for_log(r"has waited \d+\.\d s: .*sync step 0 waits for worker 1 \(never registered\)", 30)
    status = run("launcher.admin_cli", "status", "--servers", address, "--timeout", "10")
    assert status.returncode == 0, status.stderr
    shard_row = next(ln for ln in status.stdout.splitlines() if address in ln)
    assert "sync; step 0 waits for worker 1 (never registered)" in shard_row, status.stdout
    worker.signal(signal.SIGTERM)


# -- 11: a worker expecting another cluster size is refused when it registers ----------------


def test_a_client_expecting_another_cluster_size_is_refused_at_registration():
    with ShardServer(ServerConfig(port=0, num_workers=2)) as server:
        with pytest.raises(FailedPreconditionError, match=r"--num-workers 3, but the servers with --num-workers 2"):
            Client(server.address, num_workers=3, local=False).connect()
        for agrees in (2, 0):  # the same count, or none stated
            with Client(server.address, num_workers=agrees, local=False) as ps:
                assert ps.worker_id >= 0
        with Client(server.address, observer=True, local=False) as observer:
            assert [w["id"] for w in observer.status()[0]["workers"]] == [0, 1]   # the refused one left no trace
    with ShardServer(ServerConfig(port=0)) as server, Client(server.address, num_workers=3, local=False) as ps:
        assert ps.worker_id == 0  # a server that expects no count accepts any


def test_ps_worker_with_another_num_workers_than_the_servers_exits_naming_both(cluster):
    _, address = cluster.server("--mode", "async", "--num-workers", "2")
    worker = cluster.ps_worker("--servers", address, "--rank", "0", "--num-workers", "3", "--epochs", "1")
    assert worker.wait(60) == 1
    error = worker.log()
    assert "ps-worker: error:" in error and "--num-workers 3" in error and "--num-workers 2" in error, error


# -- 13: small things a new user hits ---------------------------------------------------------


def last_line(text: str) -> str:
    return [ln for ln in text.splitlines() if ln.strip()][-1]


def test_a_port_in_use_says_so_and_how_to_pick_another():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run("launcher.server_cli", "--port", str(port))
        assert result.returncode == 1
        assert last_line(result.stderr) == (f"ps-server: cannot bind 127.0.0.1:{port}: port {port} is in use; "
                                            "pick another --port (0 = any free port)"), result.stderr
        result = run("launcher.server_cli", "--port", "0", "--stream-port", str(port))
        assert result.returncode == 1
        assert last_line(result.stderr).endswith(f"port {port} is in use; pick another --stream-port "
                                                 "(0 = any free port)"), result.stderr
    assert "GRPC_VERBOSITY" not in result.stderr


def test_a_create_with_other_settings_names_only_the_fields_that_differ_and_what_to_do():
    with ShardServer(ServerConfig(port=0)) as server:
        with Client(server.address, local=False) as first:
            first.create("w", shape=(64, 10), optimizer="adam", lr=0.01)
        with Client(server.address, local=False) as second:
            with pytest.raises(AlreadyExistsError) as refused:
                second.create("w", shape=(64, 10), optimizer="adam", lr=0.1)
    message = str(refused.value)
    assert message.startswith(f"{server.address}: table 'w' exists with a different spec: optimizer.lr is 0.01 "
                              "on the servers, 0.1 asked. "), message
    assert "same flags" in message and "restart the servers" in message
    assert "TableSpec(" not in message and len(message) < 300


def test_a_table_made_with_another_block_size_is_used_as_it_is_when_the_block_size_was_not_chosen():
    """Older versions cut every table into blocks of 262144 elements; a table restored from
    their checkpoints keeps them. A worker creating it with the automatic block size (the
    default) uses the table as it is; one asking for another block size, or another
    setting, is still refused."""
    with ShardServer(ServerConfig(port=0)) as a, ShardServer(ServerConfig(port=0)) as b:
        servers = f"{a.address},{b.address}"
        with Client(servers, local=False) as old:
            old.create("w", shape=(600_000,), optimizer="adam", lr=0.01, block_elems=262144)
            old.push({"w": np.ones(600_000, np.float32)})
            expect = old.pull(["w"])["w"]
        with Client(servers, local=False) as new:
            new.create("w", shape=(600_000,), optimizer="adam", lr=0.01)  # automatic: would be 50000
            assert new.spec("w").block_elems == 262144
            assert np.array_equal(new.pull(["w"])["w"], expect)
            new.push({"w": np.ones(600_000, np.float32)})
            assert not np.array_equal(new.pull(["w"])["w"], expect)
            with pytest.raises(AlreadyExistsError, match="block_elems is 262144 on the servers, 4096 asked"):
                new.create("w", shape=(600_000,), optimizer="adam", lr=0.01, block_elems=4096)
            with pytest.raises(AlreadyExistsError, match="optimizer.lr is 0.01 on the servers, 0.1 asked"):
                new.create("w", shape=(600_000,), optimizer="adam", lr=0.1)


@pytest.mark.parametrize("plane", ["grpc", "local"])
def test_float64_gradients_are_refused_with_how_to_convert_them(plane):
    import numpy as np

    with ShardServer(ServerConfig(port=0)) as server, Client(server.address, local=plane == "local") as ps:
        ps.create("w", shape=(4,))
        with pytest.raises(InvalidArgumentError, match=r"w: gradient dtype float64, table dtype float32: convert the "
                                                       r"gradient with \.astype\(np\.float32\), or create the table "
                                                       r"with dtype='float64'"):
            ps.push({"w": np.ones(4)})
        ps.create_sparse("e", dim=2)
        with pytest.raises(InvalidArgumentError, match=r"\.astype\(np\.float32\)"):
            ps.push_rows("e", np.array([1, 2]), np.ones((2, 2)))


def test_ps_worker_says_whom_it_waits_for_when_no_server_answers_and_ctrl_c_ends_it(cluster):
    address = f"127.0.0.1:{free_port()}"                      # nothing listens there
    worker = cluster.ps_worker("--servers", address, "--connect-timeout", "60")
    worker.wait_for_log(rf"waiting for {address} \.\.\. \(no server answers there yet; giving up after 60 s\)", 15)
    worker.signal(signal.SIGINT)
    assert worker.wait(15) == 130
    assert "SIGINT during start-up (connecting to the servers)" in worker.log()


@pytest.mark.parametrize("argv, env, expected", [
    (["launcher.worker_cli", "--servers", "127.0.0.1:9", "--model", "nosuch"], {}, "--model: unknown model 'nosuch'"),
    (["launcher.launch_cli", "--model", "nosuch"], {}, "--model: unknown model 'nosuch'"),
    (["launcher.server_cli", "--mode", "sync", "--replicas-to-aggregate", "3", "--num-workers", "2"], {}, "exceeds"),
    (["launcher.admin_cli", "status"], {"PS_SERVERS": "2"}, "'2' is not HOST:PORT"),
    (["launcher.health_cli", "127.0.0.1:9", "--timeout", "0"], {}, "--timeout must be > 0"),
    (["launcher.worker_cli"], {"PS_SERVERS": "2"}, "(from PS_SERVERS='2')"),
    (["launcher.server_cli"], {"PS_MODE": "fast"}, "(from PS_MODE='fast')"),
])
def test_usage_errors_exit_2_from_every_command_and_name_the_variable(argv, env, expected):
    result = run(*argv, env=env)
    assert result.returncode == 2, result.stderr
    assert expected in last_line(result.stderr) and ": error: " in last_line(result.stderr)


def test_ps_servers_for_the_workers_does_not_change_ps_launch():
    # exported for ps-worker/ps-admin, PS_SERVERS must not be read as ps-launch's count
    result = run("launcher.launch_cli", "--model", "nosuch", env={"PS_SERVERS": "127.0.0.1:1,127.0.0.1:2"})
    assert result.returncode == 2 and "--model: unknown model" in last_line(result.stderr), result.stderr
    assert "PS_SERVERS" not in result.stderr

"""``ps-server --restore`` never silently serves an empty model (issue 12, item 9).

Real ``ps-server`` processes on ports from the OS; every wait is bounded.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys

import numpy as np
import pytest

from launcher import server_cli
from launcher.server_safety import restore_topology
from ps import ServerConfig, ShardServer
from tests.integration.procs import CLEAN_ENV, ROOT
from worker import Client

pytestmark = pytest.mark.slow



def ps_server(*flags: str, env: dict | None = None, timeout_s: float = 60.0) -> subprocess.CompletedProcess:
    """Run ``ps-server --port 0 FLAGS`` expecting it to exit by itself (bounded)."""
    return subprocess.run([sys.executable, "-m", "launcher.server_cli", "--port", "0", *flags], capture_output=True,
                          text=True, timeout=timeout_s, cwd=ROOT, env={**CLEAN_ENV, **(env or {})}, stdin=subprocess.DEVNULL)


def last_line(text: str) -> str:
    return [ln for ln in text.splitlines() if ln.strip()][-1]


def shard_checkpoint(directory, shard_index: int, num_shards: int) -> None:
    """Write one (final) checkpoint of shard ``shard_index`` of ``num_shards`` into ``directory``."""
    ShardServer(ServerConfig(port=0, shard_index=shard_index, num_shards=num_shards,
                             checkpoint_dir=str(directory))).start().stop(grace_s=0.5)


def test_restore_without_a_valid_checkpoint_refuses_to_start_in_one_line(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = ps_server("--checkpoint-dir", str(empty), "--restore")
    assert result.returncode == 1 and "listening" not in result.stdout
    line = last_line(result.stderr)
    assert line.startswith(f"ps-server: --restore: no valid checkpoint for shard 0 of 1 in {empty} "
                           "(it holds no checkpoint); refusing to start"), result.stderr
    assert "--allow-empty-restore (PS_ALLOW_EMPTY_RESTORE=1)" in line
    torn = tmp_path / "torn"
    (torn / "ckpt-1").mkdir(parents=True)
    (torn / "ckpt-1" / "shard-00000-of-00001.manifest.json").write_text("{not json")
    result = ps_server("--checkpoint-dir", str(torn), "--restore")
    assert result.returncode == 1
    assert "none of its 1 checkpoint folder(s) is valid" in last_line(result.stderr), result.stderr
    result = ps_server("--checkpoint-dir", str(tmp_path / "typo"), "--restore")
    assert result.returncode == 1 and "(no such directory)" in last_line(result.stderr)


@pytest.mark.parametrize("how", ["flag", "env"])
def test_allow_empty_restore_starts_an_empty_shard(cluster, tmp_path, how):
    flags = ["--checkpoint-dir", str(tmp_path), "--restore"]
    if how == "flag":
        server, _ = cluster.server(*flags, "--allow-empty-restore")
    else:
        from tests.integration.procs import Proc

        server = Proc(["-m", "launcher.server_cli", "--port", "0", *flags], tmp_path / "server.log",
                      env={"PS_ALLOW_EMPTY_RESTORE": "1"})
        cluster.procs.append(server)
        server.wait_for(r"ps-server listening on ", 30)
    assert "starting with an empty shard" in server.log()
    server.signal(signal.SIGTERM)
    assert server.wait(20) == 0


def test_a_single_server_restores_with_only_checkpoint_dir_and_restore(cluster, tmp_path):
    flags = ("--checkpoint-dir", str(tmp_path / "ckpt"))
    first, address = cluster.server(*flags, name="first")       # no --shard-index/--num-shards
    with Client(address, local=False) as ps:
        ps.create("w", shape=(6,), lr=1.0)
        ps.push({"w": np.full(6, 2.0, np.float32)})
    first.signal(signal.SIGTERM)
    assert first.wait(20) == 0                                   # final checkpoint: shard 0 of 1
    port = address.rsplit(":", 1)[1]
    again, address = cluster.server(*flags, "--restore", port=int(port), name="again")
    with Client(address, observer=True, local=False) as ps:
        np.testing.assert_array_equal(ps.pull(["w"])["w"], np.full(6, -2.0, np.float32))
    assert "restored checkpoint final-" in again.log()


def test_restore_from_several_shards_checkpoints_says_which_flags_to_add(tmp_path):
    one = tmp_path / "one-shard-of-two"
    shard_checkpoint(one, 1, 2)
    result = ps_server("--checkpoint-dir", str(one), "--restore")
    assert result.returncode == 2
    assert last_line(result.stderr).endswith("add --shard-index 1 --num-shards 2 (the checkpoints there are "
                                             "shard 1 of 2's)"), result.stderr
    shared = tmp_path / "shared"
    shard_checkpoint(shared, 0, 2)
    shard_checkpoint(shared, 1, 2)
    args = argparse.Namespace(restore=True, shard_index=None, num_shards=None, checkpoint_dir=str(shared))
    with pytest.raises(ValueError, match=r"holds checkpoints of 2 shards, .*add --shard-index I --num-shards 2, "
                                         r"I being this server's place in the workers' --servers list"):
        restore_topology(args)
    # with the flags, the same directory restores; without --restore nothing is read
    assert restore_topology(argparse.Namespace(**{**vars(args), "shard_index": 1, "num_shards": 2})) == (1, 2)
    cfg = server_cli.config_from_args(server_cli.build_parser(environ={}).parse_args(
        ["--checkpoint-dir", str(shared), "--restore", "--shard-index", "1", "--num-shards", "2"]))
    assert (cfg.shard_index, cfg.num_shards, cfg.restore, cfg.allow_empty_restore) == (1, 2, True, False)

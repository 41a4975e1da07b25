"""``ps-admin checkpoint`` / ``shutdown`` and the ps-server safety flags, in process."""

import json

import numpy as np
import pytest

from launcher import admin_cli, server_cli
from ps import ServerConfig, ShardServer
from ps.checkpoint import state as checkpoint
from worker import Client


def test_admin_checkpoint_then_shutdown(tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    servers = [ShardServer(ServerConfig(port=0, shard_index=i, num_shards=2, checkpoint_dir=str(ckpt))).start()
               for i in range(2)]
    try:
        addresses = ",".join(s.address for s in servers)
        with Client(addresses, local=False) as ps:
            ps.create("w", shape=(30,), lr=1.0, block_elems=4)
            ps.push({"w": np.ones(30, np.float32)})
        assert admin_cli.main(["checkpoint", "--servers", addresses, "--tag", "nightly"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["tag"] == "nightly" and len(out["paths"]) == 2
        for i in range(2):
            assert checkpoint.load(str(ckpt), i, 2).tag == "nightly"
        assert admin_cli.main(["shutdown", "--servers", addresses]) == 0
        assert all(s.wait(15) for s in servers)
    finally:
        for s in servers:
            s.stop()
    assert all(s.final_checkpoint is not None for s in servers)


def test_admin_reports_failures_with_exit_code_1(capsys):
    with ShardServer(ServerConfig(port=0)) as server:        # no checkpoint directory
        assert admin_cli.main(["checkpoint", "--servers", server.address, "--timeout", "5"]) == 1
    assert "checkpoint directory" in capsys.readouterr().err


def test_server_flags_build_the_config(tmp_path, monkeypatch):
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    args = server_cli.build_parser(environ={}).parse_args([
        "--checkpoint-dir", str(tmp_path), "--checkpoint-every", "30", "--keep-checkpoints", "5", "--restore",
        "--shard-index", "1", "--num-shards", "3", "--lease", "12", "--mode", "sync", "--num-workers", "4",
        "--replicas-to-aggregate", "3", "--nonfinite", "skip", "--clip-norm", "5", "--token-file", str(token_file),
    ])
    cfg = server_cli.config_from_args(args)
    assert (cfg.checkpoint_every_s, cfg.keep_checkpoints, cfg.restore, cfg.lease_s) == (30, 5, True, 12)
    assert (cfg.replicas_to_aggregate, cfg.nonfinite, cfg.clip_norm) == (3, "skip", 5)
    assert cfg.auth_token == "from-file" and "from-file" not in repr(cfg)
    monkeypatch.setenv("PS_TOKEN", "from-env")
    cfg = server_cli.config_from_args(server_cli.build_parser(environ={}).parse_args([]))
    assert cfg.auth_token == "from-env"


@pytest.mark.parametrize("flags, problem", [
    (["--restore"], "checkpoint-dir"),
    (["--restore", "--checkpoint-dir", "d", "--num-shards", "2"], "shard-index"),
    (["--checkpoint-every", "10"], "checkpoint-dir"),
    (["--mode", "sync", "--num-workers", "2", "--replicas-to-aggregate", "3"], "exceeds"),
    (["--tls-cert", "c.pem"], "tls-key"),
    (["--lease", "-1"], "lease"),
    (["--faults", "explode=1"], "unknown fault"),
])
def test_bad_flag_combinations_are_refused(flags, problem):
    args = server_cli.build_parser(environ={}).parse_args(flags)
    with pytest.raises(ValueError, match=problem):
        server_cli.config_from_args(args)


def test_binding_wide_without_auth_or_tls_warns():
    from launcher.server_safety import exposure_warnings

    assert exposure_warnings(ServerConfig(host="127.0.0.1")) == []
    warnings = exposure_warnings(ServerConfig(host="0.0.0.0"))
    assert any("without authentication" in w for w in warnings) and any("without TLS" in w for w in warnings)
    assert not any("authentication" in w for w in exposure_warnings(ServerConfig(host="0.0.0.0", auth_token="t")))


def test_periodic_checkpoints_keep_the_newest_k(tmp_path):
    import time

    cfg = ServerConfig(port=0, shard_index=0, num_shards=1, checkpoint_dir=str(tmp_path), checkpoint_every_s=0.1,
                       keep_checkpoints=2)
    with ShardServer(cfg) as server:
        with Client([server.address], local=False) as ps:
            ps.create("w", shape=(6,), lr=1.0)
            ps.push({"w": np.ones(6, np.float32)})
            deadline = time.monotonic() + 10
            while len([t for t in tmp_path.iterdir() if t.name.startswith("auto-")]) < 2:
                assert time.monotonic() < deadline, "no periodic checkpoints"
                time.sleep(0.05)
    kept = sorted(t.name for t in tmp_path.iterdir())
    assert len(kept) == 2 and any(name.startswith("final-") for name in kept)  # the final one, and one more
    state = checkpoint.load(str(tmp_path), 0, 1)
    (table,) = state.tables["dense"]
    np.testing.assert_array_equal(table.blocks[0].values, -np.ones(6, np.float32))

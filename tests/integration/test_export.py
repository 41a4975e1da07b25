"""Exporting a cluster's tables to one file (worker.export, ps-admin export): exact round trips."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ps.errors import NotFoundError
from worker import Client
from worker.export import export_model, ids_key, rows_key

ROOT = Path(__file__).resolve().parents[2]
WIDE = 512          # row width of the unbounded table: a ListRows page holds ~250 of its rows


def load(path: Path) -> dict[str, np.ndarray]:
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file
        return load_file(str(path))
    with np.load(path) as f:
        return dict(f.items())


def fill(addresses: list[str]) -> dict[str, np.ndarray]:
    """Dense (several blocks, two dtypes), bounded and unbounded sparse tables, trained a little;
    returns what a reader sees through the client."""
    rng = np.random.default_rng(0)
    hashed = np.unique(rng.integers(-2**62, 2**62, 700))
    with Client(addresses, worker_id=0) as ps:
        ps.create("dense/w", (7, 9), init="normal", init_scale=0.5, block_elems=10, optimizer="adam", lr=0.1)
        ps.create("b64", (5,), dtype="float64", init="uniform", init_scale=1.0, optimizer="sgd", lr=0.5)
        ps.create_sparse("emb", 3, init="normal", init_scale=1.0, num_rows=50, optimizer="adagrad", lr=0.3)
        ps.create_sparse("hashed", WIDE, init="zeros", optimizer="sgd", lr=1.0)
        for step in range(3):
            ids = rng.integers(0, 40, 12)                               # rows 40..49 never pushed
            ps.push({"dense/w": rng.standard_normal((7, 9)).astype(np.float32),
                     "b64": rng.standard_normal(5)},
                    rows={"emb": (ids, rng.standard_normal((12, 3)).astype(np.float32)),
                          "hashed": (hashed, rng.standard_normal((len(hashed), WIDE)).astype(np.float32))})
        seen = ps.pull(["dense/w", "b64"])
        seen["emb"] = ps.pull_rows("emb", np.arange(50))
        seen[ids_key("hashed")] = hashed
        seen[rows_key("hashed")] = ps.pull_rows("hashed", hashed)
    return seen


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_export_round_trips_dense_and_sparse_tables_exactly(shards, tmp_path, suffix):
    if suffix == ".safetensors":
        pytest.importorskip("safetensors", reason="the .safetensors format needs the safetensors package")
    with shards(2, mode="async") as servers:
        addresses = [s.address for s in servers]
        seen = fill(addresses)
        path = tmp_path / f"model{suffix}"
        result = export_model(addresses, path)
        assert result.format == suffix[1:] and result.bytes == path.stat().st_size
        assert sorted(result.tables) == ["b64", "dense/w", "emb", "hashed"]
        got = load(path)
        assert sorted(got) == sorted(seen)
        for k, v in seen.items():
            assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
            np.testing.assert_array_equal(got[k], v, err_msg=k)
        assert len(got[ids_key("hashed")]) > 2 * 250                 # several ListRows pages per shard
        assert np.all(np.diff(got[ids_key("hashed")]) > 0)
        only = export_model(addresses, tmp_path / f"dense{suffix}", tables=["dense/w"])
        assert only.keys == ("dense/w",) and list(load(tmp_path / f"dense{suffix}")) == ["dense/w"]


def test_export_refuses_to_overwrite_without_force_and_leaves_no_temporary_files(shards, tmp_path):
    with shards(1, mode="async") as servers:
        addresses = [servers[0].address]
        with Client(addresses, worker_id=0) as ps:
            ps.create("w", (4,), init="constant", init_scale=2.5)
        path = tmp_path / "m.npz"
        path.write_bytes(b"precious")
        with pytest.raises(FileExistsError, match="--force"):
            export_model(addresses, path)
        assert path.read_bytes() == b"precious"
        export_model(addresses, path, force=True)
        np.testing.assert_array_equal(load(path)["w"], np.full(4, 2.5, np.float32))
        assert [p.name for p in tmp_path.iterdir()] == ["m.npz"]
        with pytest.raises(ValueError, match=r"\.npz or \.safetensors"):
            export_model(addresses, tmp_path / "m.pt")
        with pytest.raises(NotFoundError, match="cluster has: w"):
            export_model(addresses, tmp_path / "n.npz", tables=["nope"])
        assert not (tmp_path / "n.npz").exists()


@pytest.mark.slow
def test_ps_admin_export_as_a_process(shards, tmp_path):
    with shards(2, mode="sync", num_workers=1) as servers:
        addresses = ",".join(s.address for s in servers)
        seen = fill(addresses.split(","))
        out = tmp_path / "model.npz"
        cmd = [sys.executable, "-m", "launcher.admin_cli", "export", "--servers", addresses, "--out", str(out),
               "--timeout", "30"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert report["path"] == str(out) and sorted(report["tables"]) == ["b64", "dense/w", "emb", "hashed"]
        got = load(out)
        for k, v in seen.items():
            np.testing.assert_array_equal(got[k], v, err_msg=k)
        again = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert again.returncode == 1 and "exists; pass --force" in again.stderr
        forced = subprocess.run([*cmd, "--force", "--tables", "emb"], capture_output=True, text=True, timeout=120,
                                cwd=ROOT)
        assert forced.returncode == 0, forced.stderr
        assert list(load(out)) == ["emb"]

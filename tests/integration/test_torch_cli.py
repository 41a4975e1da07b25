"""``--model torch:package.module:factory`` and ``ps-launch --save`` as real processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.integration.procs import CLEAN_ENV

torch = pytest.importorskip("torch", reason="torch models need PyTorch (pip install 'grpc-ps[torch]')")

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
MODEL = "torch:examples.torch_digits:make_model"


def run(*argv: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, timeout=timeout, env=CLEAN_ENV,
                          stdin=subprocess.DEVNULL, cwd=ROOT)


def test_ps_launch_trains_a_torch_model_and_saves_it(tmp_path: Path):
    from worker.data.dataset import open_source

    sys.path.insert(0, str(ROOT))
    try:
        from examples.torch_digits import make_model
    finally:
        sys.path.remove(str(ROOT))
    run_dir, saved = tmp_path / "run", tmp_path / "digits.npz"
    result = run("launcher.launch_cli", "--model", MODEL, "--epochs", "4", "--run-dir", str(run_dir),
                 "--save", str(saved))
    assert result.returncode == 0, result.stdout + result.stderr
    reported = float(result.stdout.split("final model: test accuracy ")[1].split()[0])
    assert reported > 0.9
    assert f"saved the model to {saved}" in result.stdout
    record = json.loads((run_dir / "model.json").read_text())
    assert record["path"] == str(saved.resolve()) and record["format"] == "npz"
    assert sorted(record["tables"]) == ["0.bias", "0.weight", "2.bias", "2.weight"]
    assert record["bytes"] == saved.stat().st_size
    # the README's recipe: the file loads into the torch module as it is
    model, _ = make_model()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in np.load(saved).items()})
    _, test = open_source("digits", rank=0, num_workers=2, seed=0)
    with torch.no_grad():
        acc = float((model(torch.from_numpy(test.x).float()).argmax(1).numpy() == test.y).mean())
    assert f"{acc:.4f}" == f"{reported:.4f}"
    for rank in range(2):
        assert "test accuracy" in (run_dir / f"worker-{rank}.out").read_text()
    again = run("launcher.launch_cli", "--model", MODEL, "--epochs", "1", "--run-dir", str(tmp_path / "r2"),
                "--save", str(saved))
    assert again.returncode == 2 and "the file exists" in again.stderr


@pytest.mark.parametrize("model, expected", [
    ("torch:no_such_module:make", "cannot import no_such_module"),
    ("torch:examples.torch_digits:nope", "has no function 'nope'"),
    ("torch:examples.torch_digits", "expected torch:package.module:factory"),
])
def test_ps_worker_bad_torch_model_is_one_line(model: str, expected: str):
    result = run("launcher.worker_cli", "--servers", "127.0.0.1:1", "--model", model, timeout=60)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert lines[0].startswith("ps-worker: error: ") and expected in lines[0]

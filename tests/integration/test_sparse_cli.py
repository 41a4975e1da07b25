"""``ps-launch --model sparse_lr --data synthetic-ctr:...`` trains the sparse model end to end."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_ps_launch_trains_sparse_lr_on_a_synthetic_click_log(tmp_path):
    cmd = [sys.executable, "-m", "launcher.launch_cli", "--model", "sparse_lr", "--servers", "2", "--workers", "1",
           "--data", "synthetic-ctr:n=6000&fields=6&ids=10000000&seed=3", "--optimizer", "adagrad", "--lr", "0.2",
           "--batch-size", "400", "--epochs", "1", "--run-dir", str(tmp_path / "run"), "--timeout", "120"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:] + out.stdout[-3000:]
    final = re.search(r"final model: test auc ([0-9.]+) on 1200 held-out rows", out.stdout + out.stderr)
    assert final, out.stdout[-3000:]
    assert 0.55 < float(final.group(1)) <= 1.0

"""The examples the README points at run as written."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.parametrize("script, expect", [
    ("linear_sgd.py", "mean squared error"),
    ("custom_model.py", "test accuracy"),
    ("torch_digits.py", "test accuracy"),
])
def test_example_runs(script, expect):
    if script.startswith("torch"):
        pytest.importorskip("torch", reason="examples/torch_digits.py needs PyTorch (pip install 'grpc-ps[torch]')")
    out = subprocess.run([sys.executable, str(ROOT / "examples" / script)], capture_output=True, text=True,
                         timeout=240, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [ln for ln in out.stdout.splitlines() if expect in ln]
    assert len(lines) == 2, out.stdout
    if "accuracy" in expect:
        # torch_digits: the NumPy MLP's job (ps-launch's default) reaches ~0.96; so does the torch MLP
        bar = 0.95 if script.startswith("torch") else 0.9
        assert all(float(ln.split("accuracy ")[1].split()[0]) > bar for ln in lines)
    else:
        assert all(float(ln.rsplit(" ", 1)[1]) < 0.01 for ln in lines)


def test_readme_example_matches_the_script():
    """The Linear(100, 10) code shown in the README is the script's training function."""
    readme = (ROOT / "README.md").read_text()
    script = (ROOT / "examples" / "linear_sgd.py").read_text()
    shown = readme.split("def train_worker", 1)[1].split("```", 1)[0].strip().splitlines()[1:]
    assert len(shown) > 10
    for line in shown:
        assert line.strip() in script, f"README line not in examples/linear_sgd.py: {line!r}"

"""torch stays optional: every module but worker.torch imports without it, and worker.torch says what to install."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import importlib, importlib.abc, pkgutil, sys

class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError(f"No module named {name!r} (blocked by the test)")
        return None

sys.meta_path.insert(0, NoTorch())
imported = []
for pkg in ("ps", "worker", "launcher"):
    root = importlib.import_module(pkg)
    for info in pkgutil.walk_packages(root.__path__, pkg + "."):
        if info.name == "worker.torch" or info.name.startswith("worker.torch."):
            continue
        importlib.import_module(info.name)
        imported.append(info.name)
assert "torch" not in sys.modules
try:
    import worker.torch
except ImportError as exc:
    assert "pip install 'grpc-ps[torch]'" in str(exc), exc
else:
    raise AssertionError("worker.torch imported without torch")
print(len(imported))
"""


def test_every_module_but_worker_torch_imports_without_torch():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert int(done.stdout.split()[-1]) > 50

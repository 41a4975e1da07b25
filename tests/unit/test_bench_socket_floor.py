"""The Python socket floor baseline runs, checks its weights and stops its server by itself."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_floor_measures_every_size_asked_and_its_server_exits():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "bench.peers.socket_floor", "--sizes", "4KiB,1MiB", "--seconds", "0.2"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line[len("RESULT "):]) for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    assert [(r["system"], r["size"]) for r in rows] == [("python socket floor", "4KiB"), ("python socket floor", "1MiB")]
    assert all(r["steps"] >= 3 and r["median_step_ms"] > 0 for r in rows)

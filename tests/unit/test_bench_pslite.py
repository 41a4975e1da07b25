"""The bare ps-lite peer's harness without ps-lite: skips, parsing, and the run table."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import run
from bench.peers import pslite

ROOT = Path(__file__).resolve().parents[2]


def test_without_pslite_home_the_rows_are_skipped_with_a_message():
    env = {k: v for k, v in os.environ.items() if k != "PSLITE_HOME"}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, "-m", "bench.peers.pslite", "--sizes", "4KiB"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("SKIP ") and "PSLITE_HOME is not set" in out.stdout


def test_a_missing_library_names_what_was_looked_for(tmp_path):
    with pytest.raises(FileNotFoundError, match="build/libps.a"):
        pslite.find_library(str(tmp_path))


def test_step_lines_become_results_and_a_failed_weights_check_does_not():
    r, why = pslite._result("STEP pushpull 1048576 100 0.5 0.004 ok\n")
    assert why is None and r.system == "ps-lite (TCP)" and r.size == "1MiB"
    assert r.steps_per_s == pytest.approx(200.0) and r.gb_per_s == pytest.approx(2 * 1048576 * 200 / 1e9)
    assert r.median_step_ms == pytest.approx(4.0)
    r, why = pslite._result("STEP split 4096 10 0.5 0.001 MISMATCH\n")
    assert r is None and "4KiB" in why


def test_the_table_has_measured_pslite_rows_and_no_quoted_one():
    def res(key, size, rate, gbs):
        return {"key": key, "system": key, "size": size, "steps_per_s": rate, "gb_per_s": gbs}

    rows = [res("ps stream-tcp x1", "4KiB", 100.0, 0.1), res("ps-lite (TCP)", "4KiB", 400.0, 0.4)]
    text = run.tables(rows, ["4KiB"])
    assert "| ps-lite (TCP) | 400 |" in text
    assert "| ps stream-tcp x1 | ps-lite (TCP) | 0.25 |" in text
    assert "from the issue" not in text
    assert [k for k, _, kind in run.systems(quick=True) if kind == "pslite"] == ["ps-lite (TCP)"]

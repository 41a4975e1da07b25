"""bench.update_passes: every row does the same update (so their times compare), and it prints its table."""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from bench.update_passes import LR, Case, build_kernel, rows

ROOT = Path(__file__).resolve().parents[2]


def test_every_row_applies_the_same_sgd_step_and_fills_the_send_buffers():
    with tempfile.TemporaryDirectory() as folder:
        lib = build_kernel(folder)
        ran = 0
        for name, _ in rows(Case(64 << 10), lib):
            case = Case(64 << 10)  # fresh weights for each row
            step = dict(rows(case, lib))[name]
            if isinstance(step, str):
                continue  # not installed here (numexpr, numba) or no compiler
            before = [b.values.copy() for b in case.blocks]
            step()
            step()
            for block, old, grad, sent in zip(case.blocks, before, case.arriving, case.out):
                expected = old - np.float32(LR) * grad - np.float32(LR) * grad
                np.testing.assert_allclose(block.values, expected, rtol=1e-6, err_msg=name)
                np.testing.assert_array_equal(sent, block.values, err_msg=name)
            ran += 1
        assert ran >= 3  # the project's three rows at least


def test_every_check_refuses_a_nan_before_anything_is_applied():
    with tempfile.TemporaryDirectory() as folder:
        lib = build_kernel(folder)
        for name, _ in rows(Case(64 << 10), lib):
            case = Case(64 << 10)
            step = dict(rows(case, lib))[name]
            if isinstance(step, str) or name == "project, no check":
                continue
            case.arriving[-1][7] = np.nan  # the last block's: the first ones must stay untouched too
            before = [b.values.copy() for b in case.blocks]
            with pytest.raises(ValueError):
                step()
            for block, old in zip(case.blocks, before):
                np.testing.assert_array_equal(block.values, old, err_msg=name)


def test_it_prints_a_row_for_every_implementation():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "bench.update_passes", "--sizes", "4KiB", "--rounds", "1"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if line.startswith("| 4KiB |")]
    assert [line.split("|")[2].strip() for line in lines] == [
        "project", "project, no check", "check as a sum of squares", "compiled (C)", "numexpr", "numba"]
    assert "1.00x" in lines[0]

"""Checks that keep the repository honest: stubs match protos/, README and CI agree."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def readme_commands() -> list[str]:
    """The commands in the README's first code block."""
    text = (ROOT / "README.md").read_text()
    block = text.split("```", 2)[1]
    lines = [ln.split("#")[0].strip() for ln in block.splitlines()[1:]]
    return [ln for ln in lines if ln]


def test_generated_stubs_match_the_proto():
    out = subprocess.run([sys.executable, str(ROOT / "protos" / "generate.py"), "--check"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_ci_runs_the_readme_test_command_verbatim():
    main_job, tests = readme_commands()[:2]
    assert "ps-launch" in main_job
    assert "pytest" in tests
    ci_lines = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert tests in ci_lines

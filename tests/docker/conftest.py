"""Fixtures of the ``docker`` tests: an engine that answers, and one compose project per session.

Every test here skips, with one line saying why, where no Docker Engine answers a bounded
``docker version`` (the plain ``python -m pytest`` on a machine without one). CI runs them
inside ``../shared/tools/docker-sandbox`` (``.ci/run``). The project name is unique per
session (``-p grpcps-test-<pid>-<random>``), so runs never collide, and the project is
taken down (``down -v``) at the end whatever happened. The terminal summary lists every
compose command run, with its exit status and wall time.
"""

from __future__ import annotations

import os
import secrets

import pytest

from tests.docker.compose_cli import ComposeProject, engine_problem

_PROJECTS: list[ComposeProject] = []


@pytest.fixture(scope="session")
def engine() -> None:
    """Skip unless a Docker Engine and Compose v2 answer (checked once, bounded)."""
    problem = engine_problem()
    if problem:
        pytest.skip(f"no Docker Engine to drive: {problem}")


@pytest.fixture(scope="session")
def project(engine) -> ComposeProject:
    """This session's compose project, taken down with its volume at the end."""
    proj = ComposeProject(f"grpcps-test-{os.getpid()}-{secrets.token_hex(3)}")
    _PROJECTS.append(proj)
    yield proj
    proj.down()


def pytest_terminal_summary(terminalreporter) -> None:
    for proj in _PROJECTS:
        terminalreporter.section(f"docker compose -p {proj.name}")
        for prefix, run in proj.runs:
            command = " ".join(filter(None, (prefix, "docker compose", *run.args)))
            terminalreporter.write_line(f"exit {run.returncode:3d}  {run.wall_s:6.1f} s  {command}")

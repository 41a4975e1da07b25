"""``docker compose`` on this checkout's ``docker-compose.yml``, through a real engine, for tests.

:func:`engine_problem` says in one line why no engine answers (None when one does), with a
bounded ``docker version``. :class:`ComposeProject` runs compose commands under one project
name (``-p``), each bounded by a timeout, with the test's environment minus any ``PS_*``
variable plus the given ones, and reads back its containers and volumes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass

from tests.compose_file import ROOT

#: how long ``docker version`` may take to say whether an engine answers
PROBE_TIMEOUT_S = 15.0


def engine_problem() -> str | None:
    """Why the tests cannot drive an engine here (one line), or None when one answers. Blocks
    at most about 2 x ``PROBE_TIMEOUT_S``."""
    if shutil.which("docker") is None:
        return "no docker CLI on PATH"
    probes = (["docker", "version", "--format", "{{.Server.Version}}"], ["docker", "compose", "version", "--short"])
    for argv in probes:
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return f"`{' '.join(argv[:2])}` did not answer within {PROBE_TIMEOUT_S:g} s"
        if out.returncode != 0:
            lines = (out.stderr or out.stdout).strip().splitlines() or ["exit status %d" % out.returncode]
            return f"`{' '.join(argv[:2])}` failed: {lines[-1]}"
    return None


@dataclass(frozen=True)
class Run:
    """One finished compose command: its exit status, output (stdout and stderr) and wall time."""

    args: tuple[str, ...]
    returncode: int
    output: str
    wall_s: float


class ComposeProject:
    """One compose project (``docker compose -p NAME``) on the repository's compose file."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.runs: list[tuple[str, Run]] = []   # (variables shown as a shell prefix, run), for the report

    def compose(self, *args: str, timeout_s: float, **variables: str) -> Run:
        """Run ``docker compose -p NAME ARGS`` in the repository root with ``variables`` set.

        Blocks up to ``timeout_s`` seconds; raises subprocess.TimeoutExpired after that (the
        compose process is killed; containers it started are the caller's to remove).
        """
        env = {k: v for k, v in os.environ.items() if not k.startswith("PS_")}
        env.update(variables)
        start = time.monotonic()
        out = subprocess.run(["docker", "compose", "-p", self.name, *args], cwd=ROOT, env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout_s)
        run = Run(tuple(args), out.returncode, out.stdout, time.monotonic() - start)
        prefix = " ".join(f"{k}={v}" for k, v in variables.items())
        self.runs.append((prefix, run))
        return run

    def up(self, *args: str, timeout_s: float = 300.0, **variables: str) -> Run:
        """``docker compose up --no-color ARGS``: attached, so it returns once every container exited."""
        return self.compose("up", "--no-color", *args, timeout_s=timeout_s, **variables)

    def down(self, timeout_s: float = 120.0) -> Run:
        """``docker compose down -v --remove-orphans``: containers, network and volumes go."""
        return self.compose("down", "-v", "--remove-orphans", timeout_s=timeout_s)

    def containers(self, timeout_s: float = 60.0) -> list[dict]:
        """Every container of the project, running or not: dicts with at least ``Service``,
        ``Name``, ``State`` ("running", "exited", ...) and ``ExitCode``."""
        out = subprocess.run(["docker", "compose", "-p", self.name, "ps", "--all", "--format", "json"], cwd=ROOT,
                             capture_output=True, text=True, timeout=timeout_s, check=True)
        text = out.stdout.strip()
        if text.startswith("["):  # some compose versions print one array
            return json.loads(text)
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def running(self) -> list[str]:
        """Names of the project's containers that are not exited (running, restarting, ...)."""
        return [c["Name"] for c in self.containers() if c["State"] not in ("exited", "dead", "created")]

    def resources(self, timeout_s: float = 60.0) -> dict[str, list[str]]:
        """The engine's containers, volumes and networks labelled with this project's name."""
        label = f"label=com.docker.compose.project={self.name}"
        out = {}
        for kind, argv in (("containers", ["docker", "ps", "--all", "--quiet"]), ("volumes", ["docker", "volume", "ls"]),
                           ("networks", ["docker", "network", "ls"])):
            extra = [] if kind == "containers" else ["--quiet"]
            res = subprocess.run([*argv, *extra, "--filter", label], capture_output=True, text=True,
                                 timeout=timeout_s, check=True)
            out[kind] = res.stdout.split()
        return out

"""``Topology``: the services of ``docker-compose.yml`` as processes on loopback, without Docker.

Each service runs its own ``command`` (console script -> ``python -m MODULE``) with its
own environment (env files, then ``environment``, substituted from the given variables
exactly as compose does), with only what a machine without containers needs changed:

- servers bind 127.0.0.1 on ports from the OS (``PS_PORT=0``, ``PS_STREAM_PORT=0``; the
  address comes from the ``ps-server listening on`` line), metrics on a free port;
- ``SERVICE:PORT`` in any value becomes that server's loopback address;
- named volumes become folders under the test's tmp path;
- replicas become that many processes; each worker's metrics get a free port.

Children get the test's environment without any ``PS_*`` variable, plus the service's.
Every wait is bounded; :meth:`Topology.close` resumes (SIGCONT) and kills what is left.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.compose_file import ROOT, console_scripts, load, our_services, replicas, service_env
from tests.integration.ports import free_port


@dataclass
class Process:
    name: str
    argv: list[str]
    env: dict[str, str]
    out_path: Path
    err_path: Path
    popen: subprocess.Popen
    metrics_url: str | None = None
    address: str | None = None
    extra: dict = field(default_factory=dict)

    def out(self) -> str:
        return self.out_path.read_text(errors="replace")

    def err(self) -> str:
        return self.err_path.read_text(errors="replace")

    def wait_for_line(self, pattern: str, timeout_s: float, stream: str = "out") -> re.Match:
        """The first match of ``pattern`` in stdout (or stderr); AssertionError after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        regex = re.compile(pattern, re.M)
        while True:
            m = regex.search(self.out() if stream == "out" else self.err())
            if m:
                return m
            if self.popen.poll() is not None and not regex.search(self.out() if stream == "out" else self.err()):
                raise AssertionError(f"{self.name} exited ({self.popen.returncode}) before {pattern!r}:\n"
                                     f"{self.err()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: no {pattern!r} within {timeout_s} s:\n{self.err()[-3000:]}")
            time.sleep(0.05)

    def wait(self, timeout_s: float) -> int:
        try:
            return self.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} still running after {timeout_s} s:\n{self.err()[-3000:]}") from None


class Topology:
    def __init__(self, tmp_path: Path, variables: dict[str, str] | None = None) -> None:
        self.tmp_path = tmp_path
        self.compose = load(variables or {})
        self.services = our_services(self.compose)
        self.scripts = console_scripts()
        self.processes: list[Process] = []
        self.addresses: dict[str, str] = {}  # "SERVICE:PORT" as written in the file -> loopback address
        self.base_env = {k: v for k, v in os.environ.items() if not k.startswith("PS_")}
        self.base_env["PYTHONUNBUFFERED"] = "1"

    # -- translating a service to this machine --------------------------------------------

    def translate(self, value: str, own: str | None = None) -> str:
        for written, address in self.addresses.items():
            value = value.replace(written, address)
        if own is not None:
            value = re.sub(r"\blocalhost:\d+", own, value)
        return value

    def volumes(self, service: dict) -> dict[str, str]:
        out = {}
        for spec in service.get("volumes") or ():
            source, target = spec.split(":")[:2]
            path = self.tmp_path / "volumes" / source.strip("./").replace("/", "_")
            path.mkdir(parents=True, exist_ok=True)
            out[target] = str(path)
        return out

    def argv(self, command: list[str], own: str | None = None) -> list[str]:
        return [sys.executable, "-m", self.scripts[command[0]], *(self.translate(a, own) for a in command[1:])]

    def env(self, name: str, **overrides: str) -> dict[str, str]:
        service = self.services[name]
        env = {k: self.translate(v) for k, v in service_env(service).items()}
        for target, path in self.volumes(service).items():
            env = {k: v.replace(target, path) if v.startswith(target) else v for k, v in env.items()}
        return {**env, **overrides}

    def spawn(self, name: str, argv: list[str], env: dict[str, str]) -> Process:
        i = len(self.processes)
        out, err = self.tmp_path / f"{i}-{name}.out", self.tmp_path / f"{i}-{name}.err"
        with open(out, "wb") as o, open(err, "wb") as e:
            popen = subprocess.Popen(argv, cwd=ROOT, stdout=o, stderr=e, env={**self.base_env, **env})
        proc = Process(name, argv, env, out, err, popen)
        self.processes.append(proc)
        return proc

    # -- the services -------------------------------------------------------------------

    def server_names(self) -> list[str]:
        return [n for n, s in self.services.items() if s["command"][0] == "ps-server"]

    def start_servers(self, timeout_s: float = 30.0) -> list[Process]:
        procs = []
        for name in self.server_names():
            metrics = free_port()
            env = self.env(name, PS_HOST="127.0.0.1", PS_PORT="0", PS_STREAM_PORT="0", PS_METRICS_HOST="127.0.0.1",
                          PS_METRICS_PORT=str(metrics))
            proc = self.spawn(name, self.argv(self.services[name]["command"]), env)
            proc.metrics_url = f"http://127.0.0.1:{metrics}/metrics"
            procs.append(proc)
        for name, proc in zip(self.server_names(), procs):
            proc.address = proc.wait_for_line(r"ps-server listening on (\S+)", timeout_s).group(1)
            port = service_env(self.services[name])["PS_PORT"]
            self.addresses[f"{name}:{port}"] = proc.address
        return procs

    def wait_healthy(self, proc: Process, timeout_s: float = 30.0) -> None:
        """Poll the standard health service until SERVING (bounded)."""
        deadline = time.monotonic() + timeout_s
        with grpc.insecure_channel(proc.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"{proc.name} not SERVING within {timeout_s} s:\n{proc.err()[-3000:]}")
                time.sleep(0.1)

    def healthcheck(self, name: str, proc: Process, timeout_s: float = 30.0) -> subprocess.CompletedProcess:
        """Run the service's compose healthcheck command against ``proc``."""
        test = self.services[name]["healthcheck"]["test"]
        assert test[0] == "CMD"
        return subprocess.run(self.argv(test[1:], own=proc.address), cwd=ROOT, capture_output=True, text=True,
                              env={**self.base_env, **proc.env}, timeout=timeout_s)

    def start_workers(self, name: str = "worker") -> list[Process]:
        procs = []
        for _ in range(replicas(self.services[name])):
            metrics = free_port()
            env = self.env(name, PS_METRICS_HOST="127.0.0.1", PS_METRICS_PORT=str(metrics))
            proc = self.spawn(name, self.argv(self.services[name]["command"]), env)
            proc.metrics_url = f"http://127.0.0.1:{metrics}/metrics"
            procs.append(proc)
        return procs

    def run(self, name: str, command: list[str] | None = None, timeout_s: float = 60.0) -> subprocess.CompletedProcess:
        """Run a one-shot service (its own command, or ``command`` in its environment)."""
        argv = self.argv(command or self.services[name]["command"])
        return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s,
                              env={**self.base_env, **self.env(name)})

    def close(self) -> None:
        for proc in self.processes:
            if proc.popen.poll() is None:
                proc.popen.send_signal(signal.SIGCONT)
                proc.popen.kill()
        for proc in self.processes:
            try:
                proc.popen.wait(10)
            except subprocess.TimeoutExpired:
                pass

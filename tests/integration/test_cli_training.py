"""The training command lines as real processes: ps-launch, ps-server + ps-worker, bad input.

Every process runs with a timeout; every wait is bounded. Servers listen on ports the OS
picks (``--port 0``) and report them on stdout.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.integration.procs import CLEAN_ENV

pytestmark = pytest.mark.slow

PY = sys.executable
TIMEOUT_S = 60


def run(*argv: str, timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", *argv], capture_output=True, text=True, timeout=timeout, env=CLEAN_ENV,
                          stdin=subprocess.DEVNULL)


@pytest.fixture
def spawn():
    """Start processes that are killed (and reaped) at teardown whatever the test did."""
    started: list[subprocess.Popen] = []

    def start(argv: list[str], **kwargs) -> subprocess.Popen:
        kwargs = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, "env": CLEAN_ENV,
                  "stdin": subprocess.DEVNULL, **kwargs}
        proc = subprocess.Popen([PY, "-m", *argv], **kwargs)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        try:
            proc.communicate(timeout=10)
        except (ValueError, OSError):  # pipes already read or closed
            proc.wait(timeout=10)


def start_server(spawn, *flags: str) -> tuple[subprocess.Popen, str]:
    """Start ps-server on port 0; return it and the address it reports (bounded wait)."""
    proc = spawn(["launcher.server_cli", "--port", "0", *flags])
    line = read_line(proc, "ps-server listening on ", TIMEOUT_S)
    return proc, line.rsplit(" ", 1)[-1]


def read_line(proc: subprocess.Popen, prefix: str, timeout: float) -> str:
    """The first stdout line of ``proc`` that starts with ``prefix``; fails after ``timeout``."""
    lines: queue.Queue[str | None] = queue.Queue()

    def reader() -> None:
        for line in proc.stdout:
            lines.put(line)
            if line.startswith(prefix):
                break
        else:
            lines.put(None)

    threading.Thread(target=reader, daemon=True).start()
    while True:
        line = lines.get(timeout=timeout)
        assert line is not None, f"process exited before printing {prefix!r}"
        if line.startswith(prefix):
            return line.strip()


def assert_stopped(addresses: list[str], run_dir: Path) -> None:
    """Every process ps-launch started is gone: none still has its log in ``run_dir`` open.

    Read from ``/proc`` (each server and worker writes its stderr to its log there). A port
    that refuses connections does not show it: once a server exited, the OS may give its port
    number to another process at once (other test runs share the machine), and a connect to a
    loopback port that nobody listens on can connect to itself (TCP self-connect); either
    made such a check fail (loop run 19). Without ``/proc`` the ports are checked instead."""
    logs = {str(p.resolve()) for p in run_dir.glob("*.log")}
    assert any(Path(p).name.startswith("server-") for p in logs), sorted(logs)
    proc = Path("/proc")
    if not (proc / "self" / "fd").is_dir():
        for address in addresses:
            host, port = address.rsplit(":", 1)
            with pytest.raises(OSError):
                socket.create_connection((host, int(port)), timeout=2).close()
        return
    holders = []
    for fds in proc.glob("[0-9]*/fd"):
        try:
            if logs & {os.readlink(fd) for fd in fds.iterdir()}:
                holders.append(fds.parent.name)
        except OSError:  # the process ended meanwhile
            continue
    assert holders == [], f"pids {holders} still hold the logs of {run_dir}"


def server_addresses(output: str) -> list[str]:
    line = next(ln for ln in output.splitlines() if ln.startswith("servers: "))
    return line.removeprefix("servers: ").split(";")[0].split(", ")


def one_error_line(result: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert result.returncode != 0
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("ps-worker: error: ")
    return lines[0]


def test_ps_launch_trains_and_writes_the_run_folder(tmp_path: Path):
    run_dir = tmp_path / "run"
    result = run("launcher.launch_cli", "--epochs", "3", "--run-dir", str(run_dir))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "final model: test accuracy 0." in result.stdout
    assert result.stdout.rstrip().splitlines()[-1].startswith("ps-launch: done in ")
    assert str(run_dir) in result.stdout.splitlines()[-1]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2 * 3 * 23  # 2 workers, 3 epochs, 23 batches of 32 in 719 rows
    assert {r["worker"] for r in records} == {0, 1}
    assert set(records[0]) >= {"time", "worker", "epoch", "step", "loss", "samples_per_s", "staleness"}
    assert [r["time"] for r in records] == sorted(r["time"] for r in records)
    for name in ("server-0.log", "server-1.log", "worker-0.log", "worker-1.log"):
        assert (run_dir / name).exists()
    pytest.importorskip("matplotlib")
    assert (run_dir / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert_stopped(server_addresses(result.stdout), run_dir)


@pytest.mark.parametrize("plane, used", [("auto", "shared memory"), ("tcp", "tcp"), ("grpc", "grpc")])
def test_servers_and_workers_via_the_clis_exit_cleanly(spawn, plane, used):
    servers = [start_server(spawn, "--mode", "sync", "--num-workers", "2", "--shard-index", str(i),
                            "--num-shards", "2")
               for i in range(2)]
    addresses = ",".join(address for _, address in servers)
    workers = [spawn(["launcher.worker_cli", "--servers", addresses, "--rank", str(r), "--num-workers", "2",
                      "--epochs", "2", "--model", "softmax", "--data-plane", plane, "--log-level", "INFO"])
               for r in range(2)]
    outputs = [w.communicate(timeout=TIMEOUT_S) for w in workers]
    for w, (out, err) in zip(workers, outputs):
        assert w.returncode == 0, err
        assert "test accuracy 0." in out and "after 2 epochs (46 steps" in out
        assert all(f"{a} {used}" in err for a in addresses.split(",")), err  # "moves tensors over: ..."
    # sync: both workers end on the same weights, so on the same accuracy
    assert outputs[0][0].split("accuracy")[1].split()[0] == outputs[1][0].split("accuracy")[1].split()[0]
    for proc, _ in servers:
        proc.send_signal(signal.SIGTERM)
    assert [proc.wait(timeout=20) for proc, _ in servers] == [0, 0]


@pytest.mark.parametrize("flags, expected", [
    (["--data", "{tmp}/missing.csv"], "missing.csv: no such file"),
    (["--num-features", "32"], "feature count 64 in digits does not match the model's 32"),
    (["--data", "{tmp}/bad.csv"], "bad.csv line 3"),
    (["--data", "{tmp}/labels.csv", "--num-classes", "3"], "label 7 in"),
])
def test_ps_worker_bad_input_is_one_line(tmp_path: Path, flags: list[str], expected: str):
    (tmp_path / "bad.csv").write_text("1,2,3,0\n4,5,6,1\n7,8,1\n")
    (tmp_path / "labels.csv").write_text("".join(f"{i},{i % 3},{i % 8}\n" for i in range(40)))
    flags = [f.format(tmp=tmp_path) for f in flags]
    # port 9 (discard) is never contacted: the input is refused before connecting
    result = run("launcher.worker_cli", "--servers", "127.0.0.1:9", *flags)
    assert expected in one_error_line(result)
    assert result.returncode == 1
    assert result.stdout == ""


@pytest.mark.parametrize("flags, expected", [
    (["--model", "resnet"], "--model: unknown model 'resnet'"),
    (["--l1", "0.1"], "--l1 only applies to --optimizer ftrl, not 'adam'"),
    (["--optimizer", "ftrl", "--l2", "-1"], "ftrl l1, l2 and beta must be >= 0"),
])
def test_ps_worker_bad_flags_are_usage_errors(flags: list[str], expected: str):
    result = run("launcher.worker_cli", "--servers", "127.0.0.1:9", *flags)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert lines[0].startswith("usage: ps-worker") and lines[-1].startswith("ps-worker: error: ")
    assert expected in lines[-1] and result.stdout == ""


def test_ps_worker_device_cuda_without_a_gpu_is_refused():
    from worker.xp import DeviceUnavailableError, get_xp

    try:
        get_xp("cuda")
    except DeviceUnavailableError:
        pass
    else:
        pytest.skip("CuPy and a CUDA device are present")
    result = run("launcher.worker_cli", "--servers", "127.0.0.1:9", "--device", "cuda")
    line = one_error_line(result)
    assert "--device cuda needs CuPy and a CUDA GPU" in line


def test_ps_launch_names_the_failed_worker_and_stops_everything(tmp_path: Path):
    run_dir = tmp_path / "run"
    result = run("launcher.launch_cli", "--workers", "2", "--data", str(tmp_path / "nope.csv"),
                 "--run-dir", str(run_dir))
    assert result.returncode == 1
    assert re.search(r"FAILED: worker [01] \(pid \d+\) exited with status 1", result.stderr), result.stderr
    assert "ps-worker: error: " in result.stderr and "nope.csv: no such file" in result.stderr
    for line in result.stderr.splitlines():  # the failed workers are gone
        if "FAILED: worker" in line:
            pid = int(line.split("(pid ")[1].split(")")[0])
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
    assert_stopped(server_addresses(result.stdout), run_dir)
    for i in range(2):
        assert "stopped" in (run_dir / f"server-{i}.log").read_text()


def test_ps_launch_stops_everything_on_sigint(tmp_path: Path, spawn):
    proc = spawn(["launcher.launch_cli", "--epochs", "200", "--run-dir", str(tmp_path / "run")])
    line = read_line(proc, "servers: ", TIMEOUT_S)
    read_line(proc, "[", TIMEOUT_S)  # the first progress line: the workers are training
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode == 130, err
    assert "interrupted" in out
    assert_stopped(server_addresses(line), tmp_path / "run")
    for rank in range(2):
        log = (tmp_path / "run" / f"worker-{rank}.log").read_text()
        assert "stopped by signal; left the cluster" in log
    assert (tmp_path / "run" / "metrics.jsonl").stat().st_size > 0

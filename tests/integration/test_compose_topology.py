"""``docker compose up`` without Docker: docker-compose.yml's own commands and environment,
run as processes on loopback (tests/integration/compose_topology.py), train the default
model to completion in sync mode with the workers exiting 0.

Along the way: the healthcheck command and the standard health stub say SERVING,
reflection lists the PS service, one worker is paused (SIGSTOP) mid-run and both
``ps-admin status`` and the other worker's slow-wait warning name it, and the servers'
metrics agree with what the workers report they pushed. Then the compose ``stop`` service
stops the servers, which exit 0 after writing their final checkpoints. A second run on the
same volume, with ``stop`` waiting beside the workers as in compose, trains on from the
first's final checkpoints.
"""

from __future__ import annotations

import re
import signal
import time
import urllib.error

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from ps.protocol.channel import SERVICE_NAME
from tests.integration.compose_topology import Topology
from tests.scraped_metrics import scrape, value
from worker import Client

pytestmark = pytest.mark.slow
pytest.importorskip("yaml")

#: compose variables for the run: the defaults, but warn about waits after 1 s, not 10
VARIABLES = {"PS_WARN_AFTER": "1"}


def wait_until(predicate, timeout_s: float, what: str, poll_s: float = 0.02):
    deadline = time.monotonic() + timeout_s
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(poll_s)


def try_scrape(url: str, token: str) -> dict | None:
    try:
        return scrape(url, token, timeout_s=2)
    except OSError:
        return None


def reflected_services(address: str, token: str) -> list[str]:
    with grpc.insecure_channel(address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                            metadata=(("authorization", f"Bearer {token}"),), timeout=5)
        return [s.name for reply in replies for s in reply.list_services_response.service]


def test_the_compose_topology_trains_to_completion_on_loopback(tmp_path):
    topo = Topology(tmp_path, VARIABLES)
    try:
        servers = topo.start_servers()
        for name, proc in zip(topo.server_names(), servers):
            topo.wait_healthy(proc)
            check = topo.healthcheck(name, proc)
            assert check.returncode == 0 and check.stdout.strip() == "SERVING", check.stderr
        token = servers[0].env["PS_TOKEN"]
        assert SERVICE_NAME in reflected_services(servers[0].address, token)
        addresses = [p.address for p in servers]

        workers = topo.start_workers()
        assert len(workers) == 2 and all(w.env["PS_RANK"] == "auto" for w in workers)
        paused, other = workers

        # pause one worker mid-run: the sync steps then wait for it
        def steps_and_id(proc):
            m = try_scrape(proc.metrics_url, token)  # workers' metrics need their token too
            if m is None or value(m, "ps_worker_steps_total") < 5:
                return None
            return [int(dict(labels)["worker_id"]) for name, labels in m if name == "ps_worker_info"]

        (paused_id,) = wait_until(lambda: steps_and_id(paused), 60, "the first worker's steps and id")
        paused.popen.send_signal(signal.SIGSTOP)
        observer = Client(addresses, observer=True, local=False, token=token).connect()
        try:
            def stalled():  # every clock stands still and some shard's step waits for the paused worker
                before = observer.status()
                time.sleep(0.3)
                after = observer.status()
                clocks = [[(w["id"], w["clock"]) for w in s["workers"]] for s in before + after]
                return (clocks[:len(before)] == clocks[len(before):]
                        and any(paused_id in s["waiting_for"] for s in after))

            wait_until(stalled, 30, "a sync step stalled on the paused worker", poll_s=0.05)
        finally:
            observer.close()
        status = topo.run("stop", ["ps-admin", "status"])
        assert status.returncode == 0, status.stderr
        assert re.search(rf"sync; step \d+ waits for workers? [\d, ]*\b{paused_id}\b", status.stdout), status.stdout
        assert re.search(rf"^\d+\s+worker\s+{paused_id}\s+\d+\s+[\d.]+ s ago\s+live; step \d+ waits for it "
                         r"\(slowest\)$", status.stdout, re.M), status.stdout
        other.wait_for_line(rf"has waited [\d.]+ s: slowest: worker {paused_id} at clock \d+; shard", 20,
                            stream="err")
        mid = [scrape(p.metrics_url, token) for p in servers]
        with pytest.raises(urllib.error.HTTPError) as refused:  # the same token guards the metrics
            scrape(servers[0].metrics_url)
        assert refused.value.code == 401
        refused.value.close()
        assert max(value(m, "ps_sync_waiting_workers") for m in mid) >= 1
        paused.popen.send_signal(signal.SIGCONT)

        # both finish, exit 0, and took distinct ranks from the cluster
        for w in workers:
            assert w.wait(90) == 0, w.err()[-3000:]
        summary = re.compile(r"^worker (\d+): test accuracy ([\d.]+) after \d+ epochs \((\d+) steps", re.M)
        results = [summary.search(w.out()) for w in workers]
        assert all(results), [w.out() for w in workers]
        steps = {int(m.group(1)): int(m.group(3)) for m in results}
        assert set(steps) == {0, 1} and paused_id in steps  # ranks 0 and 1, one each
        assert min(float(m.group(2)) for m in results) > 0.9

        # the servers counted exactly what the workers pushed: one message per shard per step
        final = [scrape(p.metrics_url, token) for p in servers]
        for m in final:
            assert value(m, "ps_updates_total", outcome="accumulated") == sum(steps.values())
            assert value(m, "ps_updates_total", outcome="stale") == 0
            assert value(m, "ps_updates_total", outcome="duplicate") == 0
            assert value(m, "ps_sync_steps_total") == value(m, "ps_shard_version") == max(steps.values())
            assert value(m, "ps_sync_wait_seconds_count") > 0
            assert value(m, "ps_workers", state="left") == 2
        waited = max(value(m, "ps_sync_wait_seconds_sum") for m in final)
        assert waited >= 1.0  # the other worker's pull stood still while its peer was paused

        # the compose `stop` service ends the servers; they exit 0 with a final checkpoint
        stop = topo.run("stop")
        assert stop.returncode == 0, stop.stderr
        for p in servers:
            assert p.wait(30) == 0, p.err()[-3000:]
        checkpoints = servers[0].env["PS_CHECKPOINT_DIR"]
        assert checkpoints.startswith(str(tmp_path))
        assert list((tmp_path / "volumes").rglob("*final*")), "no final checkpoint was written"
    finally:
        topo.close()


FINAL = re.compile(r"checkpoint \S+/final-\S+ written at version (\d+)")
RESTORED = re.compile(r"restored checkpoint final-\S+ \(version (\d+),")


def test_a_second_up_with_the_volume_kept_trains_on_from_the_first(tmp_path):
    """Two runs of the topology on one checkpoint volume, ``stop`` (``ps-admin stop
    --when-done``) running beside the workers as in compose: the second run's servers
    restore the first's final checkpoints, its workers get ranks 0 and 1 again (before
    the fix: 2 and 3, refused), train another run of epochs, and everything exits 0."""
    final, restored, ranks = [], [], []
    for _ in range(2):
        topo = Topology(tmp_path, {"PS_EPOCHS": "2"})
        try:
            servers = topo.start_servers()
            for proc in servers:
                topo.wait_healthy(proc)
            stop = topo.spawn("stop", topo.argv(topo.services["stop"]["command"]), topo.env("stop"))
            workers = topo.start_workers()
            for w in workers:
                assert w.wait(120) == 0, w.err()[-3000:]
            assert stop.wait(60) == 0, stop.err()[-3000:]
            assert "the run is over: every worker left (2 joined)" in stop.err()
            for p in servers:
                assert p.wait(30) == 0, p.err()[-3000:]
            final.append({int(FINAL.search(p.err()).group(1)) for p in servers})
            restored.append({int(m.group(1)) for p in servers for m in RESTORED.finditer(p.err())})
            ranks.append(sorted(int(re.search(r"^worker (\d+): test accuracy", w.out(), re.M).group(1))
                                for w in workers))
        finally:
            topo.close()
    (v1,), (v2,) = final
    assert restored == [set(), {v1}] and ranks == [[0, 1], [0, 1]]
    assert v2 == 2 * v1 > 0  # sync: the second run took as many steps again, from the first's step

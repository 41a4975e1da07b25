"""``docker compose up`` for real: this checkout's compose file, image and engine.

In order (one compose project per session, its ``checkpoints`` volume kept between runs):
``up`` twice in a row, the second continuing from the first's final checkpoints for
another run of epochs; the async run of 4 workers on the kept volume; workers that fail
and a replica that is refused, after which no container is left running; and ``down -v``,
after which nothing of the project is left and the next ``up`` starts afresh. Every
compose command is bounded by a timeout; the project is taken down at the end.
"""

from __future__ import annotations

import re

import pytest

from tests.docker.compose_cli import ComposeProject, Run

pytestmark = pytest.mark.docker

ACCURACY = re.compile(r"\| worker (\d+): test accuracy ([\d.]+) after (\d+) epochs \((\d+) steps", re.M)
FINAL = re.compile(r"^(ps-server-\d)\S*\s+\|.* checkpoint /checkpoints/final-\S+ written at version (\d+)", re.M)
RESTORED = re.compile(r"^(ps-server-\d)\S*\s+\|.* restored checkpoint final-\S+ \(version (\d+),", re.M)
FRESH = "no valid checkpoint in /checkpoints: starting with an empty shard"
SERVERS = ("ps-server-0", "ps-server-1")


def tail(run: Run) -> str:
    return run.output[-6000:]


def accuracies(run: Run) -> dict[int, float]:
    """{worker id: test accuracy} from the workers' summary lines."""
    found = ACCURACY.findall(run.output)
    ids = [int(w) for w, *_ in found]
    assert len(ids) == len(set(ids)), f"two workers trained under one id: {found}\n{tail(run)}"
    return {int(w): float(acc) for w, acc, *_ in found}


def versions(pattern: re.Pattern, run: Run) -> dict[str, int]:
    """{server service: version} of the final checkpoints written (or restored) in ``run``."""
    return {service: int(v) for service, v in pattern.findall(run.output)}


def exit_codes(project: ComposeProject) -> dict[str, list[int]]:
    """{service: exit codes of its containers}, after checking that none is still running."""
    containers = project.containers()
    running = [c["Name"] for c in containers if c["State"] != "exited"]
    assert not running, f"left running after `up` returned: {running}"
    codes: dict[str, list[int]] = {}
    for c in containers:
        codes.setdefault(c["Service"], []).append(int(c["ExitCode"]))
    return codes


def assert_clean_run(project: ComposeProject, run: Run, workers: int) -> dict[str, int]:
    """``run`` exited 0, every container exited 0, nothing runs; returns the final versions."""
    assert run.returncode == 0, tail(run)
    codes = exit_codes(project)
    assert codes.get("worker") == [0] * workers, (codes, tail(run))
    assert {s: codes.get(s) for s in (*SERVERS, "stop")} == {s: [0] for s in (*SERVERS, "stop")}, codes
    final = versions(FINAL, run)
    assert set(final) == set(SERVERS), tail(run)
    return final


def test_up_twice_in_a_row_the_second_trains_on_from_the_first(project):
    project.down()  # a fresh volume, whatever an earlier session left
    first = project.up()
    v1 = assert_clean_run(project, first, workers=2)
    assert FRESH in first.output
    acc = accuracies(first)
    assert set(acc) == {0, 1} and min(acc.values()) > 0.9, tail(first)
    assert len(set(v1.values())) == 1 and v1["ps-server-0"] > 0       # sync: both shards at one step

    second = project.up()                                              # the volume is kept
    v2 = assert_clean_run(project, second, workers=2)
    assert versions(RESTORED, second) == v1, tail(second)              # each shard restored its final checkpoint
    acc = accuracies(second)
    assert set(acc) == {0, 1} and min(acc.values()) > 0.9, tail(second)  # ids 0 and 1 again, not 2 and 3
    assert v2 == {s: 2 * v for s, v in v1.items()}                      # another run of epochs, from the first's step


def test_async_four_workers_with_the_volume_kept(project):
    if not project.resources()["volumes"]:                              # run alone: make a checkpoint to keep
        assert_clean_run(project, project.up(PS_EPOCHS="2"), workers=2)
    run = project.up(PS_MODE="async", PS_WORKERS="4", PS_EPOCHS="2")
    assert_clean_run(project, run, workers=4)
    assert set(versions(RESTORED, run)) == set(SERVERS), tail(run)
    assert set(accuracies(run)) == {0, 1, 2, 3}, tail(run)


def test_failing_workers_leave_no_container_running(project):
    # the data cannot be read: both workers exit 1 before they join; `stop` stops the
    # servers once none was live for PS_IDLE seconds
    run = project.up(PS_DATA="/no/such/data.csv", PS_IDLE="5")
    codes = exit_codes(project)
    assert codes["worker"] == [1, 1], (codes, tail(run))
    assert {s: codes[s] for s in (*SERVERS, "stop")} == {s: [0] for s in (*SERVERS, "stop")}, codes
    assert "no live worker for 5 s" in run.output and set(versions(FINAL, run)) == set(SERVERS), tail(run)


def test_a_refused_replica_leaves_no_container_running(project):
    # three replicas for --num-workers 2: the third is refused its id (or, when its container
    # starts after the two others finished and the servers stopped, finds no server), the
    # others train; `stop` waits for the 2 workers the run expects, not for the extra one
    run = project.up("--scale", "worker=3", PS_CONNECT_TIMEOUT="10")
    codes = exit_codes(project)
    assert sorted(codes["worker"]) == [0, 0, 1], (codes, tail(run))
    refused = "not below --num-workers 2" in run.output
    assert refused or "no server answered within 10 s" in run.output, tail(run)
    assert {s: codes[s] for s in (*SERVERS, "stop")} == {s: [0] for s in (*SERVERS, "stop")}, codes
    assert set(accuracies(run)) == {0, 1}, tail(run)


def test_down_v_leaves_nothing_and_the_next_up_starts_afresh(project):
    down = project.down()
    assert down.returncode == 0, tail(down)
    assert project.resources() == {"containers": [], "volumes": [], "networks": []}
    run = project.up(PS_EPOCHS="2")
    assert_clean_run(project, run, workers=2)
    assert FRESH in run.output and not RESTORED.search(run.output), tail(run)
    assert project.down().returncode == 0
    assert project.resources() == {"containers": [], "volumes": [], "networks": []}

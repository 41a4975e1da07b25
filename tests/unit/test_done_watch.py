"""launcher.done_watch: when ``ps-admin stop --when-done`` (compose's ``stop``) decides the run is over.

Socket-free: statuses are the dicts ``Client.status()`` returns; time is given.
"""

import pytest

from launcher.done_watch import DoneWatch, wait_until_done
from ps.errors import UnavailableError


def shards(known: dict[int, bool], n: int = 2) -> list[dict]:
    """``n`` shard statuses, each knowing the workers ``known`` ({id: live})."""
    return [{"workers": [{"id": w, "live": live} for w, live in known.items()]} for _ in range(n)]


def test_over_once_every_expected_worker_joined_and_left():
    watch = DoneWatch(num_workers=2, idle_s=60)
    assert watch.observe(shards({}), 0.0) is None                   # nobody joined yet
    assert watch.observe(shards({0: True, 1: True}), 1.0) is None
    assert watch.observe(shards({0: False, 1: True}), 2.0) is None  # one finished (or failed), one trains
    assert watch.observe(shards({0: False, 1: False}), 3.0) == "every worker left (2 joined)"


def test_a_worker_yet_to_join_keeps_the_run_going_until_idle():
    watch = DoneWatch(num_workers=4, idle_s=10)
    assert watch.observe(shards({0: True}), 0.0) is None
    assert watch.observe(shards({0: False}), 1.0) is None           # 3 more expected: wait for them
    assert watch.observe(shards({0: False, 1: True}), 5.0) is None  # a late one joined: the clock restarts
    assert watch.observe(shards({0: False, 1: False}), 6.0) is None
    assert watch.observe(shards({0: False, 1: False}), 15.9) is None
    reason = watch.observe(shards({0: False, 1: False}), 16.0)
    assert reason.startswith("no live worker for 10 s (2 of 4 expected joined")


def test_workers_that_never_join_end_the_run_after_idle():
    watch = DoneWatch(num_workers=2, idle_s=5)
    assert watch.observe(shards({}), 100.0) is None
    assert watch.observe(shards({}), 105.0).startswith("no live worker for 5 s (0 of 2")


def test_without_an_expected_count_one_worker_that_left_is_enough():
    watch = DoneWatch(num_workers=0, idle_s=60)
    assert watch.observe(shards({}), 0.0) is None
    assert watch.observe(shards({3: False}), 1.0) == "every worker left (1 joined)"


def test_every_shard_must_have_seen_the_whole_run():
    watch = DoneWatch(num_workers=2, idle_s=60)
    statuses = shards({0: False, 1: False})
    statuses[1]["workers"] = statuses[1]["workers"][:1]              # still registering with shard 1
    assert watch.observe(statuses, 0.0) is None


def test_wait_polls_until_over_and_retries_failing_status_calls():
    replies = iter([UnavailableError("restarting"), shards({0: True}), UnavailableError("again"),
                    shards({0: False})])
    now = [0.0]
    slept = []

    def status():
        reply = next(replies)
        if isinstance(reply, Exception):
            raise reply
        return reply

    def sleep(s):
        slept.append(s)
        now[0] += s

    reason = wait_until_done(status, DoneWatch(1, 60), error_timeout_s=5, poll_s=0.5, clock=lambda: now[0],
                             sleep=sleep)
    assert reason == "every worker left (1 joined)" and slept == [0.5, 0.5, 0.5]


def test_wait_gives_up_when_status_calls_keep_failing():
    now = [0.0]

    def status():
        raise UnavailableError("gone")

    def sleep(s):
        now[0] += s

    with pytest.raises(UnavailableError):
        wait_until_done(status, DoneWatch(1, 60), error_timeout_s=3, poll_s=1.0, clock=lambda: now[0], sleep=sleep)
    assert now[0] == 3.0

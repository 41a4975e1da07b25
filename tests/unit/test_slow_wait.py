"""worker.observe.slow_wait: a long wait is reported once, naming the workers waited for."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from worker.observe.slow_wait import SlowWaitWarner, describe_wait, stragglers


def status(mode, waiting=(), workers=(), version=7, address="h:1"):
    return {"address": address, "mode": mode, "version": version, "waiting_for": list(waiting),
            "workers": [{"id": i, "clock": c, "live": live, "last_contact_age_s": age} for i, c, live, age in workers]}


def wait_for_warnings(warner, timeout_s=10.0) -> bool:
    """Whether ``warner`` counted a warning within ``timeout_s`` (bounded poll)."""
    deadline = time.monotonic() + timeout_s
    while not warner.warnings:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_describe_names_whom_sync_and_ssp_wait_for():
    text = describe_wait([status("sync", waiting=[3], workers=[(3, 7, True, 12.04)]), status("sync", address="h:2")])
    assert text == "slowest: worker 3 at clock 7; shard 0 (h:1): sync step 7 waits for worker 3 (last heard 12.0 s ago)"
    text = describe_wait([status("ssp", workers=[(0, 9, True, 0.0), (1, 4, True, 2.0), (2, 8, False, 50.0)])],
                         my_clock=9)
    assert "slowest at clock 4: worker 1 (last heard 2.0 s ago)" in text
    assert describe_wait([status("async", workers=[(0, 1, True, 0.0)])]) == "no shard reports a worker it waits for"


def test_describe_names_workers_that_never_registered():
    # shard 1 expects 3 workers; 0 and 2 came and contributed; worker 1 never registered
    shards = [status("sync", version=0, waiting=[1], workers=[(0, 1, True, 0.2), (2, 1, True, 0.1)]),
              status("sync", version=0, waiting=[1], workers=[(0, 1, True, 0.2), (2, 1, True, 0.1)], address="h:2")]
    text = describe_wait(shards)
    assert text == ("shard 0 (h:1): sync step 0 waits for worker 1 (never registered); "
                    "shard 1 (h:2): sync step 0 waits for worker 1 (never registered)")
    assert "never registered" in describe_wait([status("ssp", waiting=[1], workers=[(0, 3, True, 0.0)])])


def test_the_slowest_of_the_workers_waited_for_is_the_one_behind_on_any_shard():
    # worker 1 pushed step 6 to shard 0 only; shard 0's step 7 also waits for worker 0, which
    # itself waits for shard 1's step 6
    shards = [status("sync", version=7, waiting=[0, 1], workers=[(0, 7, True, 0.1), (1, 7, True, 3.0)]),
              status("sync", version=6, waiting=[1], workers=[(0, 7, True, 0.1), (1, 6, True, 3.0)])]
    assert stragglers(shards) == [(1, 6)]
    assert describe_wait(shards).startswith("slowest: worker 1 at clock 6; shard 0")
    assert stragglers([status("async", workers=[(0, 1, True, 0.0)])]) == []


def test_a_long_call_is_reported_once_per_period_and_a_short_one_never(caplog):
    asked = threading.Event()

    def describe():
        asked.set()
        return "shard 0 waits for worker 1"

    warner = SlowWaitWarner(describe, after_s=0.05, repeat_s=60.0, logger=logging.getLogger("test-slow-wait"))
    warner.start()
    try:
        with warner.watching("quick pull"):
            pass
        with caplog.at_level(logging.WARNING, logger="test-slow-wait"):
            with warner.watching("pull for step 3"):
                assert asked.wait(10), "the warner never asked whom the call waits for"
                assert wait_for_warnings(warner), "the warner never warned"
        assert warner.warnings == 1
        (record,) = [r for r in caplog.records if r.name == "test-slow-wait"]
        assert "pull for step 3 has waited" in record.getMessage()
        assert record.getMessage().endswith("shard 0 waits for worker 1")
    finally:
        warner.stop(5)
    assert warner._thread is None


def test_a_failing_status_still_warns_and_bad_settings_are_refused(caplog):
    def describe():
        raise RuntimeError("shard down")

    warner = SlowWaitWarner(describe, after_s=0.01, logger=logging.getLogger("test-slow-wait-2")).start()
    try:
        with caplog.at_level(logging.WARNING, logger="test-slow-wait-2"), warner.watching("push of step 1"):
            assert wait_for_warnings(warner), "the warner never warned"
    finally:
        warner.stop(5)
    assert warner.warnings >= 1 and "status is unavailable (shard down)" in caplog.text
    with pytest.raises(ValueError):
        SlowWaitWarner(describe, after_s=0)


def test_a_warning_is_logged_before_it_is_counted():
    # a reader that sees the count must find the warning in the log: the count comes last
    counted_at_emit = []
    warner = None

    class Spy(logging.Handler):
        def emit(self, record):
            counted_at_emit.append(warner.warnings)

    logger = logging.getLogger("test-slow-wait-order")
    logger.propagate = False
    logger.addHandler(Spy())
    warner = SlowWaitWarner(lambda: "whom", after_s=0.01, logger=logger).start()
    try:
        with warner.watching("pull for step 1"):
            assert wait_for_warnings(warner), "the warner never warned"
    finally:
        warner.stop(5)
    assert counted_at_emit[0] == 0

"""ps.metrics: the Prometheus text format, naming rules, histograms, thread safety."""

from __future__ import annotations

import math
import threading

import pytest

from ps.metrics.registry import Registry, format_value, register_process_metrics
from tests.prometheus_text import parse, value


def test_counters_gauges_and_callbacks_render_in_the_text_format():
    r = Registry()
    c = r.counter("ps_requests_total", "calls\nhandled", ("method", "code"))
    c.inc(method="Push", code="OK")
    c.inc(2, method="Push", code="OK")
    g = r.gauge("ps_worker_loss", "loss")
    g.set(0.25)
    r.gauge_callback("ps_table_bytes", "bytes", ("table",), lambda: [(("w",), 4096), (('we"ird\\',), 1)])
    text = r.render()
    assert "# HELP ps_requests_total calls\\nhandled\n# TYPE ps_requests_total counter\n" in text
    assert 'ps_requests_total{method="Push",code="OK"} 3\n' in text
    assert "ps_worker_loss 0.25\n" in text
    assert 'ps_table_bytes{table="we\\"ird\\\\"} 1\n' in text
    samples = parse(text)
    assert value(samples, "ps_table_bytes", table="w") == 4096
    assert value(samples, "ps_table_bytes", table='we"ird\\') == 1
    assert text.endswith("\n")


def test_histograms_are_cumulative_with_sum_and_count():
    r = Registry()
    h = r.histogram("ps_request_duration_seconds", "time", ("method",), buckets=(0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 3.0, float("nan")):
        h.observe(v, method="Pull")
    samples = parse(r.render())
    buckets = {le: value(samples, "ps_request_duration_seconds_bucket", method="Pull", le=le)
               for le in ("0.1", "1", "+Inf")}
    assert buckets == {"0.1": 2, "1": 3, "+Inf": 4}  # an observation equal to a bound is in its bucket
    assert value(samples, "ps_request_duration_seconds_count", method="Pull") == 4 == h.count(method="Pull")
    assert value(samples, "ps_request_duration_seconds_sum", method="Pull") == pytest.approx(3.65)


@pytest.mark.parametrize("make, problem", [
    (lambda r: r.counter("ps_requests", "no _total"), "_total"),
    (lambda r: r.gauge("requests_in_flight", "no prefix"), "prefix"),
    (lambda r: r.gauge("ps_bad-name", "dash"), "invalid metric name"),
    (lambda r: r.gauge("ps_x", "bad label", ("__reserved",)), "invalid label"),
    (lambda r: r.histogram("ps_h_seconds", "le", ("le",)), "reserved"),
    (lambda r: r.histogram("ps_h_seconds", "order", (), buckets=(1.0, 0.5)), "ascending"),
])
def test_naming_rules_are_enforced(make, problem):
    with pytest.raises(ValueError, match=problem):
        make(Registry())


def test_misuse_is_refused():
    r = Registry()
    c = r.counter("ps_x_total", "x", ("kind",))
    with pytest.raises(ValueError, match="decrease"):
        c.inc(-1, kind="a")
    with pytest.raises(ValueError, match="labels"):
        c.inc(kind="a", extra="b")
    with pytest.raises(ValueError, match="already registered"):
        r.gauge("ps_x_total", "again")


def test_a_failing_callback_leaves_out_only_its_family():
    r = Registry()
    r.gauge("ps_ok", "fine").set(1)
    r.gauge_callback("ps_broken", "raises", (), lambda: 1 / 0)
    samples = parse(r.render())
    assert value(samples, "ps_ok") == 1 and value(samples, "ps_metrics_errors_total") == 1
    assert not any(name == "ps_broken" for name, _ in samples)


def test_concurrent_updates_are_not_lost():
    r = Registry()
    c = r.counter("ps_events_total", "events", ("kind",))
    h = r.histogram("ps_wait_seconds", "waits")

    def work():
        for i in range(2000):
            c.inc(kind="a")
            h.observe(i % 3 * 0.01)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert c.value(kind="a") == 8000 and h.count() == 8000


def test_process_metrics_report_this_process():
    r = Registry()
    register_process_metrics(r)
    samples = parse(r.render())
    assert value(samples, "process_resident_memory_bytes") > 1 << 20
    assert value(samples, "process_cpu_seconds_total") > 0
    assert value(samples, "process_start_time_seconds") > 1.6e9


def test_values_are_written_as_prometheus_reads_them():
    assert [format_value(v) for v in (3.0, 0.25, math.inf, -math.inf, math.nan, 2**60)] == \
        ["3", "0.25", "+Inf", "-Inf", "NaN", "1.152921504606847e+18"]

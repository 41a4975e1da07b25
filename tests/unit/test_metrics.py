"""ps.metrics and worker.observe's metrics on prometheus-client, rendered without sockets and
read back with its parser: scrape-time shard series, one registry per object, no I/O before start."""

from __future__ import annotations

import types

import numpy as np
import pytest
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest

from ps.config import ServerConfig
from ps.metrics.shard_collector import ShardCollector
from ps.metrics.shard_metrics import ShardMetrics
from ps.shard.consistency import Mode
from ps.shard.shard import Shard
from ps.tables.optim import OptimizerSpec
from ps.tables.sparse_spec import SparseTableSpec
from ps.tables.spec import TableSpec
from tests.scraped_metrics import parse, total, value
from worker.observe.worker_metrics import WorkerMetrics

SGD = OptimizerSpec("sgd", lr=1.0)


def rendered(registry) -> dict:
    return parse(generate_latest(registry).decode())


def make_shard(config: ServerConfig) -> Shard:
    shard = Shard(config)
    for worker in (0, 1):
        shard.register(worker)
    shard.create_table(TableSpec("b", (2,), optimizer=SGD))
    shard.rows.create(SparseTableSpec("emb", 2, optimizer=SGD))
    return shard


def test_shard_series_are_read_from_the_shard_when_scraped():
    config = ServerConfig(mode=Mode.ASYNC, shard_index=0, num_shards=1)
    shard = make_shard(config)
    metrics = ShardMetrics(shard, config)
    before = rendered(metrics.registry)
    assert value(before, "ps_updates_total", outcome="applied") == 0
    assert value(before, "ps_build_info", mode="async", version=dict(
        next(lbl for n, lbl in before if n == "ps_build_info"))["version"]) == 1
    for seq in (1, 2, 2):  # the second seq 2 is a retry: acknowledged, not applied
        shard.push(0, seq, 0, 0, 1, [("b", 0)], [np.ones(2, np.float32)], 5.0)
    shard.rows.push(1, 1, 0, 0, 1, "emb", np.array([3, 4, 5], np.int64), np.ones((3, 2), np.float32), 5.0)
    after = rendered(metrics.registry)
    assert value(after, "ps_updates_total", outcome="applied") == 3
    assert value(after, "ps_updates_total", outcome="duplicate") == 1
    assert value(after, "ps_shard_version") == 3
    assert value(after, "ps_workers", state="live") == 2 and value(after, "ps_workers", state="left") == 0
    assert value(after, "ps_worker_clock", stat="min") == 1 and value(after, "ps_worker_clock", stat="max") == 1
    assert value(after, "ps_table_blocks", table="b") == 1 and value(after, "ps_table_bytes", table="b") == 8
    assert value(after, "ps_table_version", table="b") == 2
    assert value(after, "ps_table_rows", table="emb") == 3
    assert value(after, "ps_shard_events_total", event="rows_pushed") > 0
    assert value(after, "ps_metrics_errors_total") == 0


def test_constructors_do_no_io_and_process_series_come_with_start():
    config = ServerConfig(shard_index=0, num_shards=1, metrics_port=1)  # a port nobody may bind: never bound
    metrics = ShardMetrics(Shard(config), config)
    worker = WorkerMetrics(port=1)
    for registry in (metrics.registry, worker.registry):
        assert not any(name.startswith("process_") for name, _ in rendered(registry))
    with pytest.raises(RuntimeError, match="not started"):
        metrics.endpoint.port
    metrics.stop()  # stopping what never started is a no-op
    worker.stop()


def test_each_object_has_its_own_registry_never_the_default():
    config = ServerConfig(shard_index=0, num_shards=1)
    a, b = ShardMetrics(Shard(config), config), ShardMetrics(Shard(config), config)
    WorkerMetrics(), WorkerMetrics()  # a second worker in the same process registers fine too
    a.observe_request("ps.v1.ParameterServer", "Push", "OK", 0.004)
    a.observe_request("ps.v1.ParameterServer", "Push", "UNAVAILABLE", 0.5)
    ra, rb = rendered(a.registry), rendered(b.registry)
    assert value(ra, "ps_requests_total", service="ps.v1.ParameterServer", method="Push", code="OK") == 1
    assert total(ra, "ps_requests_total") == 2
    assert value(ra, "ps_request_duration_seconds_count", service="ps.v1.ParameterServer", method="Push") == 2
    assert value(ra, "ps_request_duration_seconds_bucket", service="ps.v1.ParameterServer", method="Push",
                 le="0.005") == 1
    assert total(rb, "ps_requests_total") == 0
    assert b"ps_requests_total" not in generate_latest(REGISTRY)


def test_a_failing_source_leaves_out_only_its_family():
    registry = CollectorRegistry()
    broken = types.SimpleNamespace()  # no .last: ps_checkpoint_last_version cannot be read
    ShardCollector(Shard(ServerConfig(shard_index=0, num_shards=1)), registry, checkpointer=broken)
    samples = rendered(registry)
    assert not any(name == "ps_checkpoint_last_version" for name, _ in samples)
    assert value(samples, "ps_shard_version") == 0
    assert value(samples, "ps_metrics_errors_total") == 1


def test_worker_series_follow_the_watched_client():
    metrics = WorkerMetrics()
    assert not any(name == "ps_worker_info" for name, _ in rendered(metrics.registry))  # no client yet
    metrics.watch_client(types.SimpleNamespace(stats={"accumulated": 7}, clock=7, worker_id=3, mode="sync"))
    metrics.on_step(types.SimpleNamespace(loss=0.25, epoch=2), rows=32)
    metrics.observe_call("pull", 0.02)
    samples = rendered(metrics.registry)
    assert value(samples, "ps_worker_push_outcomes_total", outcome="accumulated") == 7
    assert value(samples, "ps_worker_push_outcomes_total", outcome="stale") == 0
    assert value(samples, "ps_worker_info", worker_id="3", mode="sync") == 1
    assert value(samples, "ps_worker_clock") == 7 and value(samples, "ps_worker_epoch") == 2
    assert value(samples, "ps_worker_samples_total") == 32
    assert value(samples, "ps_worker_call_duration_seconds_bucket", call="pull", le="0.025") == 1

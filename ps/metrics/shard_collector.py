"""``ShardCollector``: the series read from a shard when it is scraped (a prometheus-client collector).

One :meth:`~ps.shard.shard.Shard.snapshot` per scrape gives, whatever plane the requests came by:

- ``ps_updates_total{outcome}``: pushed messages by outcome (``applied``, ``accumulated``
  into a sync step, ``duplicate`` retries, ``stale`` late sync gradients, ``refused`` bad
  input, ``skipped`` non-finite values), dense and sparse;
- ``ps_sync_steps_total``, ``ps_pulls_total{kind}``, ``ps_shard_events_total{event}``
  (every counter of the Status call, raw);
- gauges ``ps_shard_version``, ``ps_shard_epoch``, ``ps_workers{state}``,
  ``ps_sync_waiting_workers``, ``ps_worker_clock{stat="min|max"}``, per table
  ``ps_table_version``, ``ps_table_blocks``, ``ps_table_bytes``, ``ps_table_rows``, and
  ``ps_checkpoint_last_version`` when the shard checkpoints.

A family whose source raises is left out of that scrape (one broken source cannot hide the
rest), logged, and counted in ``ps_metrics_errors_total``. Thread-safe: the shard's own
locks guard what is read; no lock of this module is held while reading.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

#: shard counter -> ``outcome`` label of ps_updates_total
OUTCOMES = {"applied": "applied", "accumulated": "accumulated", "duplicate": "duplicate", "stale": "stale",
            "refused": "refused", "nonfinite_skipped": "skipped"}


def _family(kind: type, name: str, documentation: str, labels: tuple[str, ...], samples) -> Metric:
    family = kind(name, documentation, labels=labels)
    for values, value in samples:
        family.add_metric(list(values), float(value))
    return family


class ShardCollector(Collector):
    """Reads ``shard`` (and ``checkpointer``, when given) at each scrape. Registers itself
    in ``registry`` and ``ps_metrics_errors_total`` beside it; no I/O."""

    def __init__(self, shard, registry: CollectorRegistry, checkpointer=None) -> None:
        self.shard = shard
        self.checkpointer = checkpointer
        registry.register(self)
        self.errors = Counter("ps_metrics_errors_total", "metric families left out of a scrape by an error",
                              registry=registry)  # after self: a scrape shows its own errors

    def collect(self) -> Iterator[Metric]:
        try:
            snap = self.shard.snapshot()
            rows = getattr(self.shard, "rows", None)
            sparse = rows.status() if rows is not None else []
            families = self._families(snap, rows, sparse)
        except Exception:  # noqa: BLE001 - a scrape must not fail on one source
            log.exception("metrics: cannot read the shard")
            self.errors.inc()
            return
        for build in families:
            try:
                yield build()
            except Exception:  # noqa: BLE001
                log.exception("metrics: a family failed")
                self.errors.inc()

    def _families(self, snap: dict, rows, sparse: list) -> list[Callable[[], Metric]]:
        counters = snap["counters"]
        workers = snap["workers"]
        clocks = [w[1] for w in workers if w[2]]
        live = len(clocks)

        def events():
            out = dict(counters)
            for k, v in (rows.counters() if rows is not None else {}).items():
                out[k] = out.get(k, 0) + v
            return [((k,), v) for k, v in out.items()]

        families: list[Callable[[], Metric]] = [
            lambda: _family(CounterMetricFamily, "ps_updates_total", "pushed messages by outcome", ("outcome",),
                            [((label,), counters.get(key, 0)) for key, label in OUTCOMES.items()]),
            lambda: _family(CounterMetricFamily, "ps_sync_steps_total", "sync steps applied", (),
                            [((), counters.get("steps", 0))]),
            lambda: _family(CounterMetricFamily, "ps_pulls_total", "pull messages answered", ("kind",),
                            [(("dense",), counters.get("pulls", 0)), (("rows",), counters.get("row_pulls", 0))]),
            lambda: _family(CounterMetricFamily, "ps_shard_events_total", "every counter of the Status call",
                            ("event",), events()),
            lambda: _family(GaugeMetricFamily, "ps_shard_version",
                            "updates applied (async, ssp) or steps applied (sync)", (), [((), snap["version"])]),
            lambda: _family(GaugeMetricFamily, "ps_shard_epoch",
                            "times this shard's state was restored from a checkpoint", (),
                            [((), getattr(self.shard, "epoch", 0))]),
            lambda: _family(GaugeMetricFamily, "ps_workers", "registered workers, live or left", ("state",),
                            [(("live",), live), (("left",), len(workers) - live)]),
            lambda: _family(GaugeMetricFamily, "ps_sync_waiting_workers",
                            "live workers the open sync step still waits for", (), [((), len(snap["waiting_for"]))]),
            lambda: _family(GaugeMetricFamily, "ps_worker_clock", "the lowest and highest clock of the live workers",
                            ("stat",), [(("min",), min(clocks)), (("max",), max(clocks))] if clocks else []),
            lambda: _family(GaugeMetricFamily, "ps_table_version",
                            "updates applied to the table's most updated block on this shard", ("table",),
                            self._table_versions()),
            lambda: _family(GaugeMetricFamily, "ps_table_blocks", "blocks of the table on this shard", ("table",),
                            [((spec.name,), n) for spec, n, _ in snap["tables"]]),
            lambda: _family(GaugeMetricFamily, "ps_table_bytes", "bytes of parameters of the table on this shard",
                            ("table",), [((spec.name,), nbytes) for spec, _, nbytes in snap["tables"]]
                            + [((spec.name,), nbytes) for spec, _, nbytes, _ in sparse]),
            lambda: _family(GaugeMetricFamily, "ps_table_rows", "rows of the sparse table on this shard", ("table",),
                            [((spec.name,), n) for spec, n, _, _ in sparse]),
        ]
        if self.checkpointer is not None:
            families.append(lambda: _family(GaugeMetricFamily, "ps_checkpoint_last_version",
                                            "version of the last checkpoint this shard wrote (-1: none yet)", (),
                                            [((), self._checkpoint_version())]))
        return families

    def _table_versions(self) -> list:
        out = []
        for table in list(self.shard.tables.values()):
            versions = [b.version for b in list(table.blocks.values())]
            out.append(((table.spec.name,), max(versions, default=0)))
        return out

    def _checkpoint_version(self) -> float:
        last = self.checkpointer.last
        return float(last.version) if last is not None else -1.0

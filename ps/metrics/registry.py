"""Prometheus metrics without a dependency: counters, gauges, histograms, text exposition.

A :class:`Registry` holds metric families and renders them in the Prometheus text format
(version 0.0.4), which every Prometheus server and most agents scrape::

    registry = Registry()
    pushes = registry.counter("ps_requests_total", "gRPC calls handled", ("method", "code"))
    pushes.inc(method="Push", code="OK")
    latency = registry.histogram("ps_request_duration_seconds", "time to handle a call", ("method",))
    latency.observe(0.004, method="Push")
    registry.gauge_callback("ps_table_bytes", "bytes of each table", ("table",),
                            lambda: [(("w",), 4096.0)])   # read when scraped
    text = registry.render()

Naming follows the Prometheus conventions (checked when a family is defined): a
``ps_`` (or ``process_``) prefix, base units in the name (``_seconds``, ``_bytes``),
counters end in ``_total``; label values must stay few (method, outcome, table names,
never ids of blocks or rows). Values are floats in base units: seconds, bytes.

Everything is thread-safe: each family has its own lock, held only to update or copy its
values; callbacks run at render time without any lock of the registry held. No I/O
except :func:`register_process_metrics`'s callbacks, which read ``/proc`` when scraped.
"""

from __future__ import annotations

import math
import os
import re
import resource
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence

__all__ = ["Counter", "Gauge", "Histogram", "Registry", "register_process_metrics",
           "DURATION_BUCKETS", "WAIT_BUCKETS", "STEP_BUCKETS", "CONTENT_TYPE"]

#: the Content-Type of :meth:`Registry.render`'s output
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: seconds: RPC handling and client call latency (0.5 ms .. 10 s)
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: seconds: waits on other workers (1 ms .. 2 min)
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0)
#: steps (clocks): staleness
STEP_BUCKETS = (0, 1, 2, 4, 8, 16, 32, 64, 128)

_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_PREFIXES = ("ps_", "process_")

LabelValues = tuple[str, ...]
Samples = Iterable[tuple[LabelValues, float]]


def format_value(value: float) -> str:
    """A sample value as Prometheus writes it: ``+Inf``, ``-Inf``, ``NaN``, ``3``, ``0.25``."""
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


def _escape_label(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _escape_help(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")


def _labels_text(names: Sequence[str], values: Sequence[str]) -> str:
    if not names:
        return ""
    return "{" + ",".join(f'{n}="{_escape_label(v)}"' for n, v in zip(names, values)) + "}"


class _Family:
    """One named metric with a fixed set of label names; values keyed by label values."""

    kind = ""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str]) -> None:
        if not _NAME.match(name):
            raise ValueError(f"invalid metric name {name!r}")
        if not name.startswith(_PREFIXES):
            raise ValueError(f"metric {name!r} needs an application prefix: {' or '.join(_PREFIXES)}")
        for label in labelnames:
            if not _LABEL.match(label) or label.startswith("__"):
                raise ValueError(f"invalid label name {label!r} on {name}")
        if len(set(labelnames)) != len(labelnames):
            raise ValueError(f"repeated label name on {name}: {labelnames}")
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._lock = threading.Lock()

    def _key(self, labels: dict[str, object]) -> LabelValues:
        if len(labels) != len(self.labelnames) or set(labels) != set(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {tuple(labels)}")
        return tuple(str(labels[n]) for n in self.labelnames)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {_escape_help(self.documentation)}", f"# TYPE {self.name} {self.kind}"]

    def lines(self) -> list[str]:  # pragma: no cover - every kind overrides it
        raise NotImplementedError


class _Scalar(_Family):
    """One float per label set: what counters and gauges share. Thread-safe."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> None:
        super().__init__(name, documentation, labelnames)
        self._values: dict[LabelValues, float] = {} if labelnames else {(): 0.0}  # unlabelled: 0 from the start

    def _add(self, amount: float, labels: dict[str, object]) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: object) -> float:
        """The current value of one series (0 if never set)."""
        key = self._key(labels)
        with self._lock:
            return self._values.get(key, 0.0)

    def lines(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return [f"{self.name}{_labels_text(self.labelnames, k)} {format_value(v)}" for k, v in items]


class Counter(_Scalar):
    """A value that only goes up (events, bytes, seconds spent). Thread-safe."""

    kind = "counter"

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> None:
        if not name.endswith("_total"):
            raise ValueError(f"counter {name!r} must end in _total")
        super().__init__(name, documentation, labelnames)

    def inc(self, amount: float = 1.0, **labels: object) -> None:
        """Add ``amount`` (>= 0) to the series with these labels. Raises ValueError."""
        if amount < 0:
            raise ValueError(f"{self.name}: a counter cannot decrease (inc by {amount})")
        self._add(amount, labels)


class Gauge(_Scalar):
    """A value that goes up and down (a loss, a queue length, bytes held). Thread-safe."""

    kind = "gauge"

    def set(self, value: float, **labels: object) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = float(value)

    def inc(self, amount: float = 1.0, **labels: object) -> None:
        self._add(amount, labels)


class Histogram(_Family):
    """Observations counted into cumulative buckets, with their sum and count. Thread-safe.

    ``buckets`` are the finite upper bounds (``le``), ascending; ``+Inf`` is added.
    """

    kind = "histogram"

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = (),
                 buckets: Sequence[float] = DURATION_BUCKETS) -> None:
        if "le" in labelnames:
            raise ValueError(f"{name}: 'le' is reserved for histogram buckets")
        super().__init__(name, documentation, labelnames)
        bounds = [float(b) for b in buckets]
        if not bounds or bounds != sorted(set(bounds)) or any(math.isinf(b) or math.isnan(b) for b in bounds):
            raise ValueError(f"{name}: buckets must be finite, ascending and distinct, got {buckets}")
        self.buckets = tuple(bounds)
        self._series: dict[LabelValues, list[float]] = {}  # per-bucket counts..., +Inf count, sum
        if not labelnames:
            self._series[()] = [0.0] * (len(self.buckets) + 2)

    def observe(self, value: float, **labels: object) -> None:
        """Count one observation (e.g. seconds); NaN is ignored."""
        value = float(value)
        if math.isnan(value):
            return
        key = self._key(labels)
        index = bisect_left(self.buckets, value)  # first bound >= value; len(buckets) is +Inf
        with self._lock:
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = [0.0] * (len(self.buckets) + 2)
            series[index] += 1
            series[-1] += value

    def count(self, **labels: object) -> int:
        """How many observations one series has."""
        key = self._key(labels)
        with self._lock:
            series = self._series.get(key)
            return int(sum(series[:-1])) if series else 0

    def lines(self) -> list[str]:
        with self._lock:
            items = sorted((k, list(v)) for k, v in self._series.items())
        out = []
        names = self.labelnames + ("le",)
        for key, series in items:
            cumulative = 0.0
            for bound, n in zip(self.buckets + (math.inf,), series[:-1]):
                cumulative += n
                out.append(f"{self.name}_bucket{_labels_text(names, key + (format_value(bound),))} "
                           f"{format_value(cumulative)}")
            labels = _labels_text(self.labelnames, key)
            out.append(f"{self.name}_sum{labels} {format_value(series[-1])}")
            out.append(f"{self.name}_count{labels} {format_value(cumulative)}")
        return out


class _Callback(_Family):
    """A counter or gauge whose samples a function returns when scraped."""

    def __init__(self, kind: str, name: str, documentation: str, labelnames: Sequence[str],
                 fn: Callable[[], Samples]) -> None:
        if kind == "counter" and not name.endswith("_total"):
            raise ValueError(f"counter {name!r} must end in _total")
        super().__init__(name, documentation, labelnames)
        self.kind = kind
        self._fn = fn

    def lines(self) -> list[str]:
        out = []
        for labels, value in sorted((tuple(str(v) for v in k), float(v)) for k, v in self._fn()):
            if len(labels) != len(self.labelnames):
                raise ValueError(f"{self.name}: callback gave labels {labels} for {self.labelnames}")
            out.append(f"{self.name}{_labels_text(self.labelnames, labels)} {format_value(value)}")
        return out


class Registry:
    """A set of metric families, rendered together. Thread-safe; no I/O."""

    def __init__(self) -> None:
        self._families: dict[str, _Family] = {}
        self._lock = threading.Lock()

    def _add(self, family: _Family) -> _Family:
        with self._lock:
            if family.name in self._families:
                raise ValueError(f"metric {family.name!r} is already registered")
            self._families[family.name] = family
        return family

    def counter(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> Counter:
        return self._add(Counter(name, documentation, labelnames))  # type: ignore[return-value]

    def gauge(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> Gauge:
        return self._add(Gauge(name, documentation, labelnames))  # type: ignore[return-value]

    def histogram(self, name: str, documentation: str, labelnames: Sequence[str] = (),
                  buckets: Sequence[float] = DURATION_BUCKETS) -> Histogram:
        return self._add(Histogram(name, documentation, labelnames, buckets))  # type: ignore[return-value]

    def counter_callback(self, name: str, documentation: str, labelnames: Sequence[str],
                         fn: Callable[[], Samples]) -> None:
        """A counter read from ``fn()`` (``[(label values, value), ...]``) at each scrape."""
        self._add(_Callback("counter", name, documentation, labelnames, fn))

    def gauge_callback(self, name: str, documentation: str, labelnames: Sequence[str],
                       fn: Callable[[], Samples]) -> None:
        """A gauge read from ``fn()`` (``[(label values, value), ...]``) at each scrape."""
        self._add(_Callback("gauge", name, documentation, labelnames, fn))

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._families)

    def render(self) -> str:
        """Every family in the text exposition format, ending with a newline.

        Runs the callbacks (on this thread); a family whose callback raises is left out
        (so one broken source cannot hide the rest) and ``ps_metrics_errors_total``
        counts it.
        """
        with self._lock:
            families = sorted(self._families.values(), key=lambda f: f.name)
        out: list[str] = []
        errors = 0
        for family in families:
            try:
                lines = family.lines()
            except Exception:  # noqa: BLE001 - a scrape must not fail on one source
                errors += 1
                continue
            out += family.header() + lines
        if errors:
            out += ["# HELP ps_metrics_errors_total metric families left out of this scrape by an error",
                    "# TYPE ps_metrics_errors_total counter", f"ps_metrics_errors_total {errors}"]
        return "\n".join(out) + "\n"


_IMPORTED_AT = time.time()  # the fallback start time where /proc is missing


def _resident_bytes() -> float:
    try:
        with open("/proc/self/statm", "rb") as f:
            return float(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE"))
    except (OSError, ValueError, IndexError):  # not Linux: the peak is the best we have
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return float(peak if os.uname().sysname == "Darwin" else peak * 1024)


def _open_fds() -> float:
    try:
        return float(len(os.listdir("/proc/self/fd")))
    except OSError:
        return math.nan


def register_process_metrics(registry: Registry) -> None:
    """The standard ``process_*`` series: resident memory, CPU seconds, start time, open fds."""
    registry.gauge_callback("process_resident_memory_bytes", "resident memory of this process in bytes", (),
                            lambda: [((), _resident_bytes())])
    registry.counter_callback("process_cpu_seconds_total", "user and system CPU time of this process in seconds",
                              (), lambda: [((), sum(os.times()[:2]))])
    registry.gauge_callback("process_start_time_seconds", "start time of this process since the Unix epoch",
                            (), lambda: [((), _process_start_time())])
    registry.gauge_callback("process_open_fds", "open file descriptors of this process", (),
                            lambda: [((), _open_fds())])


def _process_start_time() -> float:
    """Unix time this process started (from /proc when available, else first import)."""
    try:
        with open("/proc/self/stat", "rb") as f:
            ticks = int(f.read().rsplit(b")", 1)[1].split()[19])
        with open("/proc/stat", "rb") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith(b"btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return _IMPORTED_AT

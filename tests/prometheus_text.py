"""Read the Prometheus text format back, for tests: ``parse(text)`` and ``value(...)``."""

from __future__ import annotations

import re
import urllib.request

_SAMPLE = re.compile(r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})? (?P<value>\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')

Samples = list[tuple[str, dict[str, str]]]


def _unescape(s: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n"}.get(m.group(1), m.group(1)), s)


def parse(text: str) -> dict[tuple[str, frozenset], float]:
    """``{(name, frozenset(labels.items())): value}`` of every sample; raises on a bad line."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if m is None:
            raise ValueError(f"not a sample line: {line!r}")
        labels = {k: _unescape(v) for k, v in _LABEL.findall(m.group("labels") or "")}
        out[(m.group("name"), frozenset(labels.items()))] = float(m.group("value"))
    return out


def value(samples: dict, name: str, **labels: str) -> float:
    """One sample's value; KeyError naming what exists when it is missing."""
    key = (name, frozenset(labels.items()))
    if key not in samples:
        have = sorted(dict(lbl) for n, lbl in samples if n == name)
        raise KeyError(f"no sample {name}{labels}; have {have}")
    return samples[key]


def total(samples: dict, name: str, **labels: str) -> float:
    """The sum of every sample of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, lbl), v in samples.items() if n == name and want <= set(lbl))


def scrape(url: str, timeout_s: float = 5.0) -> dict:
    """GET a /metrics URL and parse it. Blocks at most ``timeout_s``."""
    with urllib.request.urlopen(url, timeout=timeout_s) as reply:
        assert reply.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return parse(reply.read().decode())

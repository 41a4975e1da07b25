"""Scrape a ``/metrics`` endpoint and read samples back with prometheus-client's own parser."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset], float]


def parse(text: str) -> Samples:
    """``{(sample name, frozenset(labels.items())): value}`` of every sample; raises ValueError
    on text that is not the Prometheus format."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; KeyError naming what exists when it is missing."""
    key = (name, frozenset(labels.items()))
    if key not in samples:
        have = sorted(str(dict(lbl)) for n, lbl in samples if n == name)
        raise KeyError(f"no sample {name}{labels}; have {have}")
    return samples[key]


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of every sample of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, lbl), v in samples.items() if n == name and want <= set(lbl))


def fetch(url: str, token: str | None = None, timeout_s: float = 5.0) -> str:
    """GET a /metrics URL (with ``Authorization: Bearer token`` when given): the text.
    Blocks at most about ``timeout_s``; raises urllib.error.HTTPError on 401, 404, ..."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(request, timeout=timeout_s) as reply:
        assert reply.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return reply.read().decode()


def scrape(url: str, token: str | None = None, timeout_s: float = 5.0) -> Samples:
    """GET and parse a /metrics URL; see :func:`fetch`."""
    return parse(fetch(url, token, timeout_s))

"""Shared fixtures: real shards on loopback, ports from the OS."""

from __future__ import annotations

import contextlib
import threading

import pytest

from ps import ServerConfig, ShardServer


@contextlib.contextmanager
def running_shards(num: int = 2, **config):
    """Start ``num`` ShardServers on 127.0.0.1:0 with the given ServerConfig fields."""
    config.setdefault("sync_timeout_s", 20.0)
    servers = [ShardServer(ServerConfig(port=0, **config)) for _ in range(num)]
    try:
        for s in servers:
            s.start()
        yield servers
    finally:
        for s in servers:
            s.stop(grace_s=0.5)


@pytest.fixture
def shards():
    """A factory: ``with shards(2, mode="sync", num_workers=3) as servers: ...``."""
    return running_shards


def run_threads(fns, timeout_s: float = 60.0):
    """Run callables in threads; re-raise the first error; fail if any is still running."""
    errors: list[BaseException] = []
    results: list = [None] * len(fns)

    def wrap(i, fn):
        try:
            results[i] = fn()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=wrap, args=(i, fn), daemon=True) for i, fn in enumerate(fns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout_s)
    assert not any(t.is_alive() for t in threads), f"threads still running after {timeout_s} s (a hang)"
    if errors:
        raise errors[0]
    return results


def count_block_copies(monkeypatch) -> list[int]:
    """``[n]``: how many blocks the shards copy out from now on (reads whose version the
    worker did not already hold), counted in ``DenseTable.read_if_newer``."""
    from ps.tables.dense_table import DenseTable

    copies = [0]
    real = DenseTable.read_if_newer

    def counting(self, block, known=None, out=None):
        data, version = real(self, block, known, out)
        copies[0] += data is not None
        return data, version

    monkeypatch.setattr(DenseTable, "read_if_newer", counting)
    return copies

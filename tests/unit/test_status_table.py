"""launcher.status_table: one table of shards, tables, workers and whom a sync step waits for."""

from launcher.status_table import HEADER, human_bytes, render, rows


def shard(address, mode="sync", version=12, waiting=(), workers=(), tables=(), sparse=(), epoch=0):
    return {"address": address, "mode": mode, "version": version, "epoch": epoch, "waiting_for": list(waiting),
            "workers": [{"id": i, "clock": c, "live": live, "last_contact_age_s": age} for i, c, live, age in workers],
            "tables": [{"name": n, "shape": (4,), "blocks": b, "bytes": nb} for n, b, nb in tables],
            "sparse_tables": [{"name": n, "dim": 8, "rows": r, "bytes": nb, "evicted": e} for n, r, nb, e in sparse],
            "counters": {}}


def test_one_table_names_the_workers_a_sync_step_waits_for():
    statuses = [
        shard("10.0.0.1:50051", waiting=[1], workers=[(0, 13, True, 0.1), (1, 12, True, 7.25)],
              tables=[("w", 2, 2 << 20), ("b", 1, 40)], sparse=[("emb", 100, 4096, 3)], epoch=1),
        shard("10.0.0.2:50051", workers=[(0, 13, True, 0.1), (1, 13, False, 30.0)]),
    ]
    text = render(statuses)
    lines = text.splitlines()
    assert lines[0].split() == [w for h in HEADER for w in h.split()]
    shard0 = next(ln for ln in lines if "10.0.0.1:50051" in ln)
    assert "sync, restored 1x; step 12 waits for worker 1" in shard0 and "3 tables, 2 MiB" in shard0
    worker1 = [ln for ln in lines if ln.split()[:4] == ["0", "worker", "1", "12"]]
    assert worker1 and "7.2 s ago" in worker1[0] and "live; step 12 waits for it (slowest)" in worker1[0]
    assert any("2 blocks, 2 MiB" in ln for ln in lines)
    assert any("100 rows, 4 KiB" in ln and "sparse, 3 evicted" in ln for ln in lines)
    shard1 = next(ln for ln in lines if "10.0.0.2:50051" in ln)
    assert "no step waiting" in shard1
    assert any(ln.split()[:3] == ["1", "worker", "1"] and ln.endswith("left") for ln in lines)


def test_async_shards_say_nothing_about_waiting_and_columns_align():
    table = rows([shard("h:1", mode="async", version=99, workers=[(5, 40, True, 0.0)])])
    assert table[0][-1] == "async" and table[1][-1] == "live"
    text = render([shard("h:1", mode="async")])
    header = text.splitlines()[0]
    assert header.index("ADDRESS") == len("SHARD") + 2


def test_human_bytes():
    assert [human_bytes(n) for n in (0, 1023, 1024, 1536, 5 << 30)] == ["0 B", "1023 B", "1 KiB", "1.5 KiB", "5 GiB"]


def test_a_worker_that_never_registered_is_named_in_the_shard_row():
    lines = render([shard("h:1", version=0, waiting=[1, 3], workers=[(0, 1, True, 0.1), (1, 0, True, 0.2)]),
                    shard("h:2", mode="ssp", waiting=[3], workers=[(0, 4, True, 0.1)])]).splitlines()
    assert "step 0 waits for workers 1, 3 (never registered)" in next(ln for ln in lines if "h:1" in ln)
    assert "ssp; pulls wait for worker 3 (never registered)" in next(ln for ln in lines if "h:2" in ln)

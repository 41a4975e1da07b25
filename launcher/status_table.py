"""``status_table``: the cluster's state as one plain-text table, for ``ps-admin status``.

Input: ``Client.status()`` (one dict per shard). One row per shard, then one per table it
holds and one per worker it knows; the shard's state names its placement map version
(``docs/placement.md``)::

    SHARD  ADDRESS          KIND    NAME  VERSION  SIZE              CLOCK  LAST CONTACT  STATE
    0      127.0.0.1:50051  shard         120      2 tables, 17 KiB                       sync; step 120 waits for worker 1; placement v1
    0                       table   w1             1 block, 16 KiB
    0                       worker  0                                121    0.1 s ago     live
    0                       worker  1                                120    5.3 s ago     live; step 120 waits for it (slowest)

A worker expected (``--num-workers``) that never registered has no row; the shard's state
names it: ``step 0 waits for workers 0, 2 (never registered)``. A sync step also waits for
workers blocked on another shard; "(slowest)" marks the ones
furthest behind (:func:`worker.observe.slow_wait.stragglers`), the workers to look at. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from worker.observe.slow_wait import never_registered, stragglers

HEADER = ("SHARD", "ADDRESS", "KIND", "NAME", "VERSION", "SIZE", "CLOCK", "LAST CONTACT", "STATE")


def human_bytes(n: float) -> str:
    """``1536`` -> ``"1.5 KiB"``; exact below 1 KiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{int(n)} B" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _workers(ids: Sequence[int], missing: Sequence[int] = ()) -> str:
    """``workers 0, 2 (never registered)``: ``missing`` ids are marked."""
    names = [f"{i} (never registered)" if i in missing else str(i) for i in ids]
    return ("worker " if len(ids) == 1 else "workers ") + ", ".join(names)


def rows(statuses: Sequence[dict[str, Any]]) -> list[tuple[str, ...]]:
    """The table's rows (without the header), as strings."""
    out: list[tuple[str, ...]] = []
    slowest = {w for w, _ in stragglers(statuses)}
    for index, s in enumerate(statuses):
        waiting = list(s.get("waiting_for") or ())
        dense, sparse = s.get("tables") or [], s.get("sparse_tables") or []
        total = sum(t["bytes"] for t in dense) + sum(t["bytes"] for t in sparse)
        state = s["mode"] + (f", restored {s['epoch']}x" if s.get("epoch") else "")
        missing = never_registered({"workers": s.get("workers") or (), "waiting_for": waiting})
        if s["mode"] == "sync":
            state += f"; step {s['version']} waits for {_workers(waiting, missing)}" if waiting else "; no step waiting"
        elif missing:
            state += f"; pulls wait for {_workers(missing, missing)}"
        if s.get("placement"):
            moved = s["placement"]["moved"]
            state += f"; placement v{s['placement']['version']}" + (f" ({_plural(moved, 'unit')} moved)" if moved else "")
        shard = str(index)
        out.append((shard, s["address"], "shard", "", str(s["version"]),
                    f"{_plural(len(dense) + len(sparse), 'table')}, {human_bytes(total)}", "", "", state))
        for t in dense:
            out.append((shard, "", "table", t["name"], "", f"{_plural(t['blocks'], 'block')}, "
                        f"{human_bytes(t['bytes'])}", "", "", ""))
        for t in sparse:
            out.append((shard, "", "table", t["name"], "", f"{_plural(t['rows'], 'row')}, {human_bytes(t['bytes'])}",
                        "", "", "sparse" + (f", {t['evicted']} evicted" if t.get("evicted") else "")))
        for w in s.get("workers") or ():
            note = "live" if w["live"] else "left"
            if w["id"] in waiting:
                note += f"; step {s['version']} waits for it" + (" (slowest)" if w["id"] in slowest else "")
            out.append((shard, "", "worker", str(w["id"]), "", "", str(w["clock"]),
                        f"{w['last_contact_age_s']:.1f} s ago", note))
    return out


def render(statuses: Sequence[dict[str, Any]]) -> str:
    """The whole table, columns aligned, one line per row, ending with a newline."""
    table = [HEADER, *rows(statuses)]
    widths = [max(len(r[c]) for r in table) for c in range(len(HEADER))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in table]
    return "\n".join(lines) + "\n"

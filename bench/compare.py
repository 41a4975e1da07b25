"""Put several runs of ``bench.run`` side by side: one table, each cell ``A / B / ...``.

    python -m bench.compare bench/results/run-A.json bench/results/run-B.json
    python -m bench.compare --before 'bench/results/issue11/before*.json' --after 'bench/results/issue11/after*.json'

Prints markdown: the systems' rates per size, the project's best path against each peer
(ratios within each run), and the memory ceiling of each run. Reads JSON only; no I/O
beyond the files named.
"""

from __future__ import annotations

import argparse
import glob
import json
import statistics

from bench.harness import SIZES

#: the project's path compared with every peer (the zero-copy same-host API)
BEST = "ps shm buffers x1"


def _rate(size: str, r: dict) -> float:
    return r["steps_per_s"] if size == "4KiB" else r["gb_per_s"]


def _fmt(size: str, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if size == "4KiB" else f"{value:.2f}"


def table(runs: list[dict]) -> str:
    """The markdown tables for ``runs`` (parsed run JSON files), in the order given."""
    sizes = [s for s in SIZES if all(s in r["settings"]["sizes"] for r in runs)]
    by = [{(x["key"], x["size"]): x for x in r["results"]} for r in runs]
    keys = list(dict.fromkeys(k for b in by for k, _ in b))
    head = ["| system | " + " | ".join("4 KiB steps/s" if s == "4KiB" else f"{s[:-3]} MiB GB/s" for s in sizes)
            + " |", "|---|" + "---:|" * len(sizes)]
    rows = []
    for k in keys:
        cells = [" / ".join(_fmt(s, _rate(s, b[(k, s)]) if (k, s) in b else None) for b in by) for s in sizes]
        rows.append(f"| {k} | " + " | ".join(cells) + " |")
    ceilings = []
    for r in runs:
        m = r["machine"]
        found = [m[k]["copy_warm_gb_s"] for k in ("memory_ceiling_start", "memory_ceiling_end") if k in m]
        ceilings.append(f"{min(found):.2f}" if found else "-")
    rows.append("| NumPy copy of 128 MiB into a warm buffer (memory ceiling) | "
                + " | ".join(" / ".join(ceilings) if s == "128MiB" else "" for s in sizes) + " |")
    peers = [k for k in keys if not k.startswith("ps ")]
    ratio = ["", f"`{BEST}` / each peer, within each run:", "",
             "| vs | " + " | ".join(sizes) + " |", "|---|" + "---:|" * len(sizes)]
    for peer in peers:
        cells = []
        for s in sizes:
            parts = [f"{_rate(s, b[(BEST, s)]) / _rate(s, b[(peer, s)]):.2f}"
                     if (BEST, s) in b and (peer, s) in b else "-" for b in by]
            cells.append(" / ".join(parts))
        ratio.append(f"| {peer} | " + " | ".join(cells) + " |")
    sources = "Runs: " + ", ".join(f"{r['settings']['started_utc']} (`{r['settings']['command']}`)" for r in runs)
    return "\n".join([sources, "", *head, *rows, *ratio])


def change(before: list[dict], after: list[dict]) -> str:
    """Markdown: for each system and size, the median rate of the ``after`` runs over the
    median of the ``before`` runs (> 1: faster after), with the extremes in brackets (the
    slowest after over the fastest before, and the other way round). Runs should alternate
    on one machine, so that both sides see the same neighbours."""
    def rates(runs: list[dict]) -> dict[tuple[str, str], list[float]]:
        out: dict[tuple[str, str], list[float]] = {}
        for r in runs:
            for x in r["results"]:
                out.setdefault((x["key"], x["size"]), []).append(_rate(x["size"], x))
        return out

    b, a = rates(before), rates(after)
    sizes = [s for s in SIZES if any(k[1] == s for k in b)]
    rows = ["| system | " + " | ".join(sizes) + " |", "|---|" + "---:|" * len(sizes)]
    for key in dict.fromkeys(k for k, _ in b):
        cells = []
        for s in sizes:
            if (key, s) in a and (key, s) in b:
                x, y = a[(key, s)], b[(key, s)]
                cells.append(f"{statistics.median(x) / statistics.median(y):.2f} "
                             f"({min(x) / max(y):.2f}-{max(x) / min(y):.2f})")
            else:
                cells.append("-")
        rows.append(f"| {key} | " + " | ".join(cells) + " |")
    return f"after / before, {len(after)} runs against {len(before)}:\n\n" + "\n".join(rows)


def _load(paths: list[str]) -> list[dict]:
    runs = []
    for pattern in paths:
        for path in sorted(glob.glob(pattern)) or [pattern]:
            with open(path) as f:
                runs.append(json.load(f))
    return runs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="*", help="run-*.json files written by bench.run")
    p.add_argument("--before", nargs="+", help="runs (files or globs) of the tree before a change")
    p.add_argument("--after", nargs="+", help="runs of the tree after it: prints the after/before ratios")
    args = p.parse_args()
    if bool(args.before) != bool(args.after) or (args.before and args.runs) or not (args.runs or args.before):
        p.error("give runs to put side by side, or both --before and --after")
    print(change(_load(args.before), _load(args.after)) if args.before else table(_load(args.runs)))


if __name__ == "__main__":
    main()

"""Put several runs of ``bench.run`` side by side: one table, each cell ``A / B / ...``.

    python -m bench.compare bench/results/run-A.json bench/results/run-B.json

Prints markdown: the systems' rates per size, the project's best path against each peer
(ratios within each run), and the memory ceiling of each run. Reads JSON only; no I/O
beyond the files named.
"""

from __future__ import annotations

import argparse
import json

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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="run-*.json files written by bench.run")
    args = p.parse_args()
    runs = []
    for path in args.runs:
        with open(path) as f:
            runs.append(json.load(f))
    print(table(runs))


if __name__ == "__main__":
    main()

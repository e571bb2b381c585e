"""The runs table's metric cells at scale: min/max and value-at-step for 10,000 runs.

    python bench/bench_table_cells.py [--runs 10000] [--points 1000] [--repeat 5]

Fills a SQLite store directly (each run logs one metric, ``loss``, of ``--points``
points written as 4 chunks, as a run flushing four times would), starts a collector on
it and times, over HTTP, the two reads behind the table's non-"last" cells:
``metric-extremes`` (min/max) and ``metric-at-step`` (value at a step, at a step in
the middle of the series and at one past its end), median and range of ``--repeat``
calls, and the answer's size. It also times the store method alone. Figures are from
a shared, noisy machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import urllib.request
import uuid
from array import array
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flightlog.collector.store import SqliteStore
from scripts.ui_harness import collector

UI = "/api/flightlog/ui"


def build(path: Path, runs: int, points: int) -> str:
    """The experiment's id, after writing ``runs`` runs of one ``points``-point metric."""
    store = SqliteStore(path / "flightlog.db", (path / "artifacts").as_uri())
    exp = store.create_experiment("cells", None, {})
    t0 = time.time() - 86400
    part = max(1, points // 4)
    for first in range(0, runs, 500):
        ops = []
        ids = [uuid.uuid4().hex for _ in range(first, min(runs, first + 500))]
        for i, rid in enumerate(ids):
            args = {"run_id": rid, "experiment_id": exp, "run_name": f"r{first + i}"}
            ops.append(("create_run", args))
        store.apply_batch(None, ops, [])
        for start in range(0, points, part):
            steps = array("q", range(start, min(points, start + part)))
            ts = array("d", (t0 + s for s in steps))
            series = [
                (rid, "loss", steps, array("d", (1 / (s + k + 1) for s in steps)), ts)
                for k, rid in enumerate(ids)
            ]
            store.apply_batch(None, [], series)
    store.close()
    return exp


def timed(url: str, repeat: int) -> tuple[list[float], int]:
    took = []
    size = 0
    for _ in range(repeat):
        t = time.perf_counter()
        with urllib.request.urlopen(url, timeout=120) as r:
            size = len(r.read())
        took.append((time.perf_counter() - t) * 1000)
    return took, size


def line(name: str, took: list[float], size: int | None = None) -> str:
    extra = f" | {size / 1024:,.0f} KB" if size is not None else " | "
    return (
        f"| {name} | {statistics.median(took):,.0f} ms | {min(took):,.0f}-{max(took):,.0f}{extra} |"
    )


def main() -> int:
    """Build, serve, measure, print a table."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs", type=int, default=10_000)
    p.add_argument("--points", type=int, default=1000)
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        t = time.perf_counter()
        exp = build(d / "store", args.runs, args.points)
        print(f"built {args.runs} runs x {args.points} points in {time.perf_counter() - t:.0f} s")
        store = SqliteStore(d / "store" / "flightlog.db", (d / "store" / "artifacts").as_uri())
        mid = args.points // 2 + 7
        direct = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            found = store.metric_values_at_step(exp, "loss", mid)
            direct.append((time.perf_counter() - t) * 1000)
        assert len(found) == args.runs
        store.close()
        rows = [line(f"store.metric_values_at_step, step {mid}", direct)]
        with collector(d / "store") as url:
            base = f"{url}{UI}/experiments/{exp}"
            for name, q in (
                ("metric-extremes (min/max cells)", "metric-extremes?key=loss"),
                (f"metric-at-step, step {mid}", f"metric-at-step?key=loss&step={mid}"),
                ("metric-at-step, past the end", f"metric-at-step?key=loss&step={10**9}"),
            ):
                timed(f"{base}/{q}", 1)  # warm the page cache
                took, size = timed(f"{base}/{q}", args.repeat)
                rows.append(line(f"HTTP {name}", took, size))
    print(f"\n{args.runs:,} runs x {args.points:,} points of one key (4 chunks a run)\n")
    print("| read | median | range | answer |")
    print("|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

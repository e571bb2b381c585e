"""Benchmark run search on a 10,000-run SQLite store (issue 3's performance case).

Builds, in a temporary directory, one experiment of 10,000 runs, each with 20 params,
20 metrics (latest values) and 10 tags, from schema.sql and search_indexes.sql; then
times ``search_run_ids`` with a two-condition filter (one metric comparison, one param
equality) and an order_by on a metric, returning the first 1,000 run ids. Prints the
median over repeated calls.

This measures the store query alone; the SDK-level figure (HTTP, loading the runs) is
measured separately. Usage: ``python bench/bench_search.py [--runs N] [--repeat R]``.
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import statistics
import tempfile
import time
import uuid
from importlib import resources
from pathlib import Path

from flightlog.collector.search import ACTIVE_ONLY, search_run_ids

N_PARAMS = 20
N_METRICS = 20
N_TAGS = 10
FILTER = "metrics.accuracy > 0.5 AND params.model_type = 'RandomForest'"
# (label, filter, order_by); the first is the figure.
CASES: list[tuple[str, str | None, list[str] | None]] = [
    ("filter + order_by metrics.f1 DESC", FILTER, ["metrics.f1 DESC"]),
    ("filter + order_by metrics.accuracy DESC (tutorial)", FILTER, ["metrics.accuracy DESC"]),
    ("no filter, default order (start_time DESC)", None, None),
]


def build_store(path: Path, n_runs: int, seed: int = 0) -> sqlite3.Connection:
    """Create the schema, the search indexes and ``n_runs`` runs in experiment 1."""
    rng = random.Random(seed)
    conn = sqlite3.connect(path)
    sql_dir = resources.files("flightlog.collector")
    conn.executescript(sql_dir.joinpath("schema.sql").read_text())
    conn.executescript(sql_dir.joinpath("search_indexes.sql").read_text())
    now = 1_700_000_000_000
    with conn:
        conn.execute(
            "INSERT INTO experiments VALUES (1, 'bench', '/tmp/artifacts', 'active', ?, ?)",
            (now, now),
        )
        runs, params, metrics, tags = [], [], [], []
        for i in range(n_runs):
            run_id = uuid.UUID(int=rng.getrandbits(128)).hex
            start = now + i * 1000
            runs.append((run_id, 1, f"run-{i}", "bench", "FINISHED", start, start + 500, "/a"))
            model = rng.choice(["RandomForest", "GradientBoosting"])
            params.append((run_id, "model_type", model))
            params.extend((run_id, f"p{k}", str(rng.randrange(10))) for k in range(1, N_PARAMS))
            metrics.append((run_id, "accuracy", rng.random(), start, 100))
            metrics.append((run_id, "f1", rng.random(), start, 100))
            metrics.extend((run_id, f"m{k}", rng.random(), start, 100) for k in range(2, N_METRICS))
            tags.append((run_id, "team", rng.choice(["ml", "ds"])))
            tags.extend((run_id, f"t{k}", f"v{rng.randrange(5)}") for k in range(1, N_TAGS))
        conn.executemany(
            "INSERT INTO runs (run_uuid, experiment_id, run_name, user_id, status, start_time,"
            " end_time, artifact_uri) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            runs,
        )
        conn.executemany("INSERT INTO params VALUES (?, ?, ?)", params)
        conn.executemany("INSERT INTO tags VALUES (?, ?, ?)", tags)
        conn.executemany(
            "INSERT INTO latest_metrics (run_uuid, key, value, timestamp, step)"
            " VALUES (?, ?, ?, ?, ?)",
            metrics,
        )
    return conn


def main() -> None:
    """Build the store, time each case, print the medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--max-results", type=int, default=1_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        conn = build_store(Path(tmp) / "bench.db", args.runs)
        print(
            f"store: {args.runs} runs x ({N_PARAMS} params, {N_METRICS} metrics, "
            f"{N_TAGS} tags), built in {time.perf_counter() - t0:.1f} s; sqlite "
            f"{sqlite3.sqlite_version}"
        )
        print(f"filter: {FILTER!r}; first {args.max_results} runs")
        for label, filter_string, order_by in CASES:
            timings = []
            ids: list[str] = []
            for _ in range(args.repeat):
                t = time.perf_counter()
                ids, _token = search_run_ids(
                    conn, ["1"], filter_string, ACTIVE_ONLY, args.max_results, order_by, None
                )
                timings.append((time.perf_counter() - t) * 1000)
            print(
                f"  {label}: median {statistics.median(timings):.1f} ms "
                f"(min {min(timings):.1f}, max {max(timings):.1f}; {len(ids)} ids)"
            )
        conn.close()


if __name__ == "__main__":
    main()

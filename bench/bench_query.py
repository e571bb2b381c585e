"""Benchmark of reads through the SDK (issue 3).

Builds a store in a temporary directory, starts a real collector process on it, and
times, through ``flightlog`` on loopback:
  - search_runs over 10,000 runs (20 params, 20 metrics, 10 tags each) with a metric
    comparison AND a param equality, ordered by a metric, first 1,000 runs
    (output_format="list" and "pandas");
  - get_metric_history of a 1,000,000-point series;
  - a downsampled read of 1,000 points from a 10,000,000-point series.

Run: python bench/bench_query.py [--repeat 7]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from array import array
from pathlib import Path

from flightlog.collector.store import SqliteStore


def build(store_dir: Path) -> tuple[str, str, str]:
    store = SqliteStore(store_dir / "flightlog.db", (store_dir / "artifacts").as_uri())
    exp = store.create_experiment("bench")
    rng = random.Random(7)
    ops = []
    series = []
    t0 = time.time()
    for i in range(10_000):
        rid = uuid.uuid4().hex
        ops.append(
            (
                "create_run",
                {
                    "run_id": rid,
                    "experiment_id": exp,
                    "run_name": f"r{i}",
                    "user_id": "bench",
                    "start_time": int(t0 * 1000) + i,
                    "tags": {f"tag{k}": f"v{rng.randrange(5)}" for k in range(10)},
                },
            )
        )
        ops.append(
            (
                "log_params",
                {
                    "run_id": rid,
                    "params": {
                        "model_type": rng.choice(["RandomForest", "XGBoost", "MLP"]),
                        **{f"p{k}": str(rng.randrange(100)) for k in range(19)},
                    },
                },
            )
        )
        for k in range(20):
            v = rng.random()
            series.append(
                (
                    rid,
                    f"m{k}" if k else "accuracy",
                    array("q", [0]),
                    array("d", [v]),
                    array("d", [t0]),
                )
            )
        if len(ops) >= 2000:
            store.apply_batch(None, ops, series)
            ops, series = [], []
    store.apply_batch(None, ops, series)
    long_ids = []
    for n in (1_000_000, 10_000_000):
        rid = uuid.uuid4().hex
        store.apply_batch(None, [("create_run", {"run_id": rid, "experiment_id": exp})], [])
        chunk = 100_000
        for start in range(0, n, chunk):
            steps = array("q", range(start, start + chunk))
            vals = array("d", (((i * 7919) % 1000) / 1000.0 for i in range(start, start + chunk)))
            ts = array("d", [t0]) * chunk
            store.apply_batch(None, [], [(rid, "loss", steps, vals, ts)])
        long_ids.append(rid)
    store.close()
    return exp, long_ids[0], long_ids[1]


def timed(fn: object, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()  # type: ignore[operator]
        out.append((time.perf_counter() - t) * 1000)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--repeat", type=int, default=7)
    args = p.parse_args()
    import flightlog as mlflow

    with tempfile.TemporaryDirectory(prefix="flightlog-query-") as d:
        store_dir = Path(d) / "store"
        t = time.perf_counter()
        exp, one_m, ten_m = build(store_dir)
        print(
            f"built store: 10,000 runs + 1M and 10M point series in {time.perf_counter() - t:.0f} s"
        )
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "flightlog.collector",
                "--store",
                str(store_dir),
                "--port",
                "0",
                "--port-file",
                str(store_dir / "port.json"),
            ],
            cwd=d,
            stderr=subprocess.DEVNULL,
        )
        try:
            while not (store_dir / "port.json").exists():
                time.sleep(0.05)
            import json

            port = json.loads((store_dir / "port.json").read_text())["port"]
            mlflow.set_tracking_uri(f"http://127.0.0.1:{port}")
            client = mlflow.MlflowClient()
            flt = "metrics.accuracy > 0.5 AND params.model_type = 'RandomForest'"
            order = ["metrics.m1 DESC"]
            runs = mlflow.search_runs(
                [exp], flt, order_by=order, max_results=1000, output_format="list"
            )
            assert len(runs) == 1000, len(runs)
            lst = timed(
                lambda: mlflow.search_runs(
                    [exp], flt, order_by=order, max_results=1000, output_format="list"
                ),
                args.repeat,
            )
            pdf = timed(
                lambda: mlflow.search_runs([exp], flt, order_by=order, max_results=1000),
                args.repeat,
            )
            print(
                f"search_runs, 10k runs, 2 conditions + metric order, first 1,000: median "
                f"{statistics.median(lst):.0f} ms (list), {statistics.median(pdf):.0f} ms (pandas)"
            )
            assert len(client.get_metric_history(one_m, "loss")) == 1_000_000
            hist = timed(lambda: client.get_metric_history(one_m, "loss"), 3)
            print(f"get_metric_history, 1,000,000 points: median {statistics.median(hist):.0f} ms")
            pts = client.get_metric_history(ten_m, "loss", max_points=1000)
            assert 0 < len(pts) <= 1000
            down = timed(
                lambda: client.get_metric_history(ten_m, "loss", max_points=1000), args.repeat
            )
            print(
                f"downsampled read, 1,000 of 10,000,000 points ({len(pts)} returned): median "
                f"{statistics.median(down):.0f} ms"
            )
        finally:
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    os.environ.setdefault("FLIGHTLOG_EMBEDDED_IDLE_TIMEOUT", "60")
    main()

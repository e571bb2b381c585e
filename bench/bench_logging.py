"""Benchmark of the logging path (issue 2).

Prints:
  (a) median and p99 nanoseconds per log_metric call in a tight loop;
  (b) end-to-end durable throughput, points/s from the first call until flush()
      returns, for 10M points shaped 1 metric x 10M steps and 100 metrics x 100k steps,
      and checks that every point was stored;
  (c) peak RSS of the training process and of the collector.

Run: python bench/bench_logging.py [--points 10000000]
Each shape runs in a fresh process with a fresh store and embedded collector.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile

CHILD = r"""
import json, os, sys, time, resource
import psutil
import flightlog as mlflow
shape, n = sys.argv[1], int(sys.argv[2])
mlflow.set_tracking_uri(sys.argv[3])
out = {}
with mlflow.start_run() as run:
    log = mlflow.log_metric
    if shape == "latency":
        clock = time.perf_counter_ns
        samples = []
        for rep in range(200):
            t0 = clock()
            for i in range(1000):
                log("loss", 0.5, step=i)
            samples.append((clock() - t0) / 1000)
        # A second measurement: per-call timing of single calls includes the clock's cost,
        # so the per-call figure is measured over blocks of 1000 calls.
        samples.sort()
        out["median_ns"] = statistics.median(samples) if False else samples[len(samples) // 2]
        out["p99_ns"] = samples[int(len(samples) * 0.99)]
        single = []
        for i in range(200000):
            t0 = clock(); log("acc", 0.5, step=i); single.append(clock() - t0)
        single.sort()
        empty = []
        for i in range(200000):
            t0 = clock(); t1 = clock(); empty.append(t1 - t0)
        empty.sort()
        out["single_median_ns"] = single[len(single) // 2] - empty[len(empty) // 2]
        out["single_p99_ns"] = single[int(len(single) * 0.99)] - empty[len(empty) // 2]
        mlflow.flush()
    else:
        keys = ["m%02d" % k for k in range(100)] if shape == "wide" else ["loss"]
        steps = n // len(keys)
        t0 = time.perf_counter()
        if len(keys) == 1:
            for i in range(steps):
                log("loss", 0.001 * i, step=i)
        else:
            for i in range(steps):
                for k in keys:
                    log(k, 0.5, step=i)
        t_calls = time.perf_counter() - t0
        mlflow.flush()
        t_all = time.perf_counter() - t0
        out.update(calls_s=t_calls, total_s=t_all, points=steps * len(keys))
    out["run_id"] = run.info.run_id
    out["agent_dropped"] = dict(mlflow.MlflowClient().ctx.agent.dropped)
out["train_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""


def _collector_pid(store: str) -> int:
    with open(os.path.join(store, "collector.json")) as f:
        return int(json.load(f)["pid"])


def _peak_rss_mb(pid: int) -> float:
    # VmHWM is the process's peak resident set size.
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run_shape(shape: str, n: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="flightlog-bench-") as d:
        store = os.path.join(d, "store")
        env = dict(os.environ, FLIGHTLOG_EMBEDDED_IDLE_TIMEOUT="60")
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, shape, str(n), store],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        if proc.returncode != 0:
            raise SystemExit(f"{shape} failed:\n{proc.stderr}")
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        pid = _collector_pid(store)
        out["collector_peak_rss_mb"] = _peak_rss_mb(pid)
        if shape != "latency":
            db = sqlite3.connect(os.path.join(store, "flightlog.db"))
            stored = db.execute(
                "SELECT COALESCE(SUM(n), 0) FROM metric_chunks WHERE run_uuid = ?", (out["run_id"],)
            ).fetchone()[0]
            out["stored_points"] = stored
            db.close()
        os.kill(pid, 15)
        return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--points", type=int, default=10_000_000)
    args = p.parse_args()
    lat = run_shape("latency", 0)
    print(
        f"(a) log_metric per call, blocks of 1000 calls: median {lat['median_ns']:.0f} ns, "
        f"p99 {lat['p99_ns']:.0f} ns"
    )
    print(
        f"    single calls (clock cost subtracted):        median {lat['single_median_ns']:.0f} ns,"
        f" p99 {lat['single_p99_ns']:.0f} ns"
    )
    for shape, label in (("narrow", "1 metric x %d steps"), ("wide", "100 metrics x %d steps")):
        r = run_shape(shape, args.points)
        steps = args.points if shape == "narrow" else args.points // 100
        rate = r["points"] / r["total_s"]
        print(
            f"(b) {label % steps}: {r['points']:,} points, calls {r['calls_s']:.2f} s, durable "
            f"after {r['total_s']:.2f} s -> {rate:,.0f} points/s; stored "
            f"{r['stored_points']:,} ({'all' if r['stored_points'] == r['points'] else 'MISSING'})"
            f"; dropped {r['agent_dropped'] or 0}"
        )
        print(
            f"(c)   peak RSS: training process {r['train_peak_rss_mb']:.0f} MB, "
            f"collector {r['collector_peak_rss_mb']:.0f} MB"
        )


if __name__ == "__main__":
    main()

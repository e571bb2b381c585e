"""Benchmark of the metric ring (issue 15), beside the previous in-memory queue.

Prints, for this checkout with FLIGHTLOG_METRIC_RING on ("ring") and off ("default"),
and (``--baseline PYTHON``: an interpreter whose flightlog is another checkout, e.g.
main's virtualenv) the previous code, each in fresh processes with their own store and
embedded collector:
  (a) log_metric per call: median and p99 of blocks of 1,000 calls;
  (b) CPU per point of the training thread and of every other thread (the agent), and
      durable points/s from the first call until flush() returned, 1 metric x N steps;
  (c) points stored after a SIGKILL right after 100,000 calls (no flush), once the
      next process for the same store has run.

Run: python bench/bench_ring.py [--points 2000000] [--baseline /work/main/.venv/bin/python]
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
import json, os, signal, sys, threading, time
import psutil
import flightlog as mlflow
case, n = sys.argv[1], int(sys.argv[2])
mlflow.set_tracking_uri(sys.argv[3])
out = {}
with mlflow.start_run() as run:
    out["run_id"] = run.info.run_id
    print(json.dumps(out), flush=True)
    log = mlflow.log_metric
    if case == "latency":
        clock = time.perf_counter_ns
        samples = []
        for rep in range(300):
            t0 = clock()
            for i in range(1000):
                log("loss", 0.5, step=i)
            samples.append((clock() - t0) / 1000)
        samples.sort()
        out["median_ns"] = samples[len(samples) // 2]
        out["p99_ns"] = samples[int(len(samples) * 0.99)]
        mlflow.flush()
    elif case == "throughput":
        me = psutil.Process()
        main_tid = threading.get_native_id()
        def cpu():
            main = other = 0.0
            for t in me.threads():
                s = t.user_time + t.system_time
                if t.id == main_tid:
                    main += s
                else:
                    other += s
            return main, other
        m0, o0 = cpu()
        t0 = time.perf_counter()
        for i in range(n):
            log("loss", 0.001 * i, step=i)
        t_calls = time.perf_counter() - t0
        mlflow.flush()
        t_all = time.perf_counter() - t0
        m1, o1 = cpu()
        out.update(calls_s=t_calls, total_s=t_all, points=n,
                   main_cpu_us=(m1 - m0) / n * 1e6, agent_cpu_us=(o1 - o0) / n * 1e6)
    elif case == "sigkill":
        for i in range(n):
            log("loss", 0.5, step=i)
        os.kill(os.getpid(), signal.SIGKILL)
print(json.dumps(out))
"""

NEXT = r"""
import sys, time
import flightlog as mlflow
mlflow.set_tracking_uri(sys.argv[1])
agent = mlflow.MlflowClient().ctx.agent
if getattr(agent, "_adopter", None) is not None:
    agent._adopter.join(60)
"""


def _stored(store: str, run_id: str) -> int:
    db = sqlite3.connect(os.path.join(store, "flightlog.db"))
    try:
        row = db.execute(
            "SELECT COALESCE(SUM(n), 0) FROM metric_chunks WHERE run_uuid = ?", (run_id,)
        ).fetchone()
        return int(row[0])
    finally:
        db.close()


def _stop_collector(store: str) -> None:
    try:
        with open(os.path.join(store, "collector.json")) as f:
            os.kill(int(json.load(f)["pid"]), 15)
    except (OSError, ValueError, KeyError):
        pass


def run(python: str, case: str, n: int, ring: bool) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="flightlog-bench-") as d:
        store = os.path.join(d, "store")
        env = dict(
            os.environ,
            FLIGHTLOG_EMBEDDED_IDLE_TIMEOUT="60",
            FLIGHTLOG_SPOOL_DIR=os.path.join(d, "spool"),
            FLIGHTLOG_METRIC_RING="1" if ring else "0",
        )
        proc = subprocess.run(
            [python, "-c", CHILD, case, str(n), store], capture_output=True, text=True, env=env
        )
        lines = proc.stdout.strip().splitlines()
        if not lines or (proc.returncode != 0 and case != "sigkill"):
            raise SystemExit(f"{case} failed:\n{proc.stderr}")
        out = json.loads(lines[-1])
        if case == "sigkill":
            subprocess.run([python, "-c", NEXT, store], env=env, capture_output=True, timeout=120)
        out["stored"] = _stored(store, out["run_id"])
        _stop_collector(store)
        return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--points", type=int, default=2_000_000)
    p.add_argument("--baseline", help="python of a checkout to compare with (previous code)")
    args = p.parse_args()
    # This checkout with FLIGHTLOG_METRIC_RING on, then off (the default), then the baseline.
    sides = [("ring", sys.executable, True), ("default", sys.executable, False)]
    if args.baseline:
        sides.append(("baseline", args.baseline, False))
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    for name, python, ring in sides:
        lat = run(python, "latency", 0, ring)
        print(
            f"[{name}] (a) log_metric, blocks of 1,000 calls: median {lat['median_ns']:.0f} ns, "
            f"p99 {lat['p99_ns']:.0f} ns"
        )
    for name, python, ring in sides:
        r = run(python, "throughput", args.points, ring)
        print(
            f"[{name}] (b) 1 metric x {r['points']:,} steps: training thread "
            f"{r['main_cpu_us']:.3f} us CPU/point, other threads {r['agent_cpu_us']:.3f} us "
            f"CPU/point; durable after {r['total_s']:.2f} s -> "
            f"{r['points'] / r['total_s']:,.0f} points/s; stored {r['stored']:,}"
        )
    for name, python, ring in sides:
        r = run(python, "sigkill", 100_000, ring)
        print(f"[{name}] (c) SIGKILL after 100,000 calls: {r['stored']:,} points stored")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

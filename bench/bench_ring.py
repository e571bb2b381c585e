"""Benchmark of the metric ring (issue 15), the default metric path, beside the queue.

Prints, for this checkout with the default ring ("ring": batches name their records in
the ring, which the embedded collector reads), the ring with FLIGHTLOG_RING_REFS=0
("ring inline": records copied into each batch, as to a collector on another node),
FLIGHTLOG_METRIC_RING=0 (the in-memory queue, kept as the fallback: "queue") and
(``--baseline PYTHON``: an interpreter whose flightlog is another checkout, e.g. main's
virtualenv, "baseline") the previous code, each in fresh processes with their own store
and embedded collector, the sides one after the other in the same run:
  (a) log_metric per call: median and p99 of blocks of 1,000 calls;
  (b) CPU per point of the training thread and of every other thread (the agent), and
      durable points/s from the first call until flush() returned, 1 metric x N steps;
  (c) a training loop of ~54 us pure-Python steps logging 10 metrics per step
      (``log_metrics``), against the same loop without logging: the slowdown, from the
      loop's start until flush() returned, wall and CPU time; rounds alternate the sides;
      "floor" is the same loop writing its records as the hot path does into a plain
      memory map, with no agent and no collector: what any Python-level writer costs;
  (d) points stored after a SIGKILL right after 100,000 calls (no flush), once the
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
import time

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
    elif case == "loop":
        work_n, logging = int(sys.argv[4]), sys.argv[5]
        def work(k):  # a pure-Python training step
            x = 0
            for j in range(k):
                x += j * j
            return x
        names = ["metric_%d" % k for k in range(10)]
        log_metrics = mlflow.log_metrics
        if logging == "floor":
            # The hot path's own work and nothing else: the 10 records of a step written
            # into a memory-mapped file as log_metrics writes them, no agent, no collector.
            import itertools, mmap, struct
            ring = mmap.mmap(-1, 32 * 10 * n)
            slots = zip(itertools.count(), range(0, 32 * 10 * n, 32), itertools.repeat(1))
            pack_into, clock = struct.Struct("<qddII").pack_into, time.time
            kd = {k: i for i, k in enumerate(names)}
            def log_metrics(metrics, step):
                ts = clock()
                for key, value in metrics.items():
                    sid = kd[key]
                    seq, offset, lap = next(slots)
                    if seq < n * 10:
                        pack_into(ring, offset, step, value, ts, sid, lap)
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(n):
            x = work(work_n)
            if logging != "0":
                log_metrics({k: 0.001 * i for k in names}, step=i)
        loop_s = time.perf_counter() - t0
        mlflow.flush()
        out.update(total_s=time.perf_counter() - t0, cpu_s=time.process_time() - c0, steps=n,
                   loop_s=loop_s)
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


def child_env(d: str, **settings: str) -> dict[str, str]:
    """The environment of a benchmark's child: its own spool under ``d``, an embedded
    collector that outlives a pause, and ``settings``."""
    return dict(
        os.environ,
        FLIGHTLOG_EMBEDDED_IDLE_TIMEOUT="60",
        FLIGHTLOG_SPOOL_DIR=os.path.join(d, "spool"),
        **settings,
    )


def run(python: str, case: str, n: int, ring: bool | str, *extra: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="flightlog-bench-") as d:
        store = os.path.join(d, "store")
        env = child_env(
            d,
            FLIGHTLOG_METRIC_RING="1" if ring else "0",  # (main's default is off)
            # "inline": the ring, its records copied into each batch (no references)
            FLIGHTLOG_RING_REFS="0" if ring == "inline" else "1",
        )
        proc = subprocess.run(
            [python, "-c", CHILD, case, str(n), store, *extra],
            capture_output=True,
            text=True,
            env=env,
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


def _work_per_step(target_us: float) -> int:
    """Iterations of the loop's pure-Python step that take about ``target_us`` here."""

    def work(k: int) -> int:
        x = 0
        for j in range(k):
            x += j * j
        return x

    best = float("inf")
    for _ in range(20):
        t0 = time.perf_counter()
        work(10_000)
        best = min(best, time.perf_counter() - t0)
    return max(1, round(target_us * 1e-6 / (best / 10_000)))


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--points", type=int, default=2_000_000)
    p.add_argument("--steps", type=int, default=50_000, help="steps of the training loop (c)")
    p.add_argument("--rounds", type=int, default=5, help="rounds of the training loop (c)")
    p.add_argument("--baseline", help="python of a checkout to compare with (previous code)")
    args = p.parse_args()
    sides: list[tuple[str, str, bool | str]] = [
        ("ring", sys.executable, True),
        ("ring inline", sys.executable, "inline"),
        ("queue", sys.executable, False),
    ]
    if args.baseline:
        sides.append(("baseline", args.baseline, False))
    print(f"load average at start: {os.getloadavg()[0]:.2f}", flush=True)
    for name, python, ring in sides:
        lat = run(python, "latency", 0, ring)
        print(
            f"[{name}] (a) log_metric, blocks of 1,000 calls: median {lat['median_ns']:.0f} ns, "
            f"p99 {lat['p99_ns']:.0f} ns",
            flush=True,
        )
    for name, python, ring in sides:
        r = run(python, "throughput", args.points, ring)
        print(
            f"[{name}] (b) 1 metric x {r['points']:,} steps: training thread "
            f"{r['main_cpu_us']:.3f} us CPU/point, other threads (agent) "
            f"{r['agent_cpu_us']:.3f} us CPU/point; durable after {r['total_s']:.2f} s -> "
            f"{r['points'] / r['total_s']:,.0f} points/s; stored {r['stored']:,}",
            flush=True,
        )
    work_n = _work_per_step(54.0)
    wall: dict[str, list[float]] = {}
    loop: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        floor = [("floor", sys.executable, True)]
        for name, python, ring in [("no logging", sys.executable, True), *floor, *sides]:
            logging = {"no logging": "0", "floor": "floor"}.get(name, "1")
            r = run(python, "loop", args.steps, ring, str(work_n), logging)
            wall.setdefault(name, []).append(r["total_s"] / r["steps"] * 1e6)
            loop.setdefault(name, []).append(r["loop_s"] / r["steps"] * 1e6)
            cpu.setdefault(name, []).append(r["cpu_s"] / r["steps"] * 1e6)
    bare_wall, bare_cpu = _median(wall.pop("no logging")), _median(cpu.pop("no logging"))
    bare_loop = _median(loop.pop("no logging"))
    print(
        f"(c) training loop, {args.steps:,} steps x 10 metrics (log_metrics), median of "
        f"{args.rounds} rounds; wall time until flush() returned (every point durable), "
        "the loop alone without that last flush, and CPU time of the training process "
        "(all its threads: steadier on a busy machine):"
    )
    print(f"    no logging: {bare_wall:.1f} us/step wall, {bare_cpu:.1f} us/step CPU", flush=True)
    for name in wall:
        w, c, lp = _median(wall[name]), _median(cpu[name]), _median(loop[name])
        print(
            f"[{name}] (c) wall {w:.1f} us/step, slowed by {(w / bare_wall - 1) * 100:.1f}% "
            f"(rounds {', '.join(f'{x:.0f}' for x in wall[name])}); loop alone slowed by "
            f"{(lp / bare_loop - 1) * 100:.1f}%; CPU {c:.1f} us/step, "
            f"+{c - bare_cpu:.1f} us = {(c / bare_cpu - 1) * 100:.1f}% "
            f"(rounds {', '.join(f'{x:.1f}' for x in cpu[name])})",
            flush=True,
        )
    for name, python, ring in sides:
        r = run(python, "sigkill", 100_000, ring)
        print(
            f"[{name}] (d) SIGKILL after 100,000 calls: {r['stored']:,} points stored", flush=True
        )
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

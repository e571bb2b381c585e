"""Benchmark of log_metric with threads, on a free-threaded build (PEP 703) and beside it.

A free-threaded interpreter (``python3.13t``, no GIL) runs the metric ring ``locked``
(``Ring.lock`` around reservation and write; the GIL build reserves with one atomic
``next()``). For each interpreter given and each thread count, a fresh process with its
own store and embedded collector starts a run; every thread logs its own key in blocks
of 1,000 ``log_metric`` calls, then the process flushes (with one thread, once on the
main thread, which started the run, and once on another thread). Prints:
  - ns/call: the median over every thread's blocks of the time of one call, as a thread
    sees it (with T threads running at once);
  - ns/point: the wall time from the threads' start until all have logged, per point
    logged by all of them (what the process as a whole pays);
  - durable/s: points per second from the threads' start until flush() returned;
  - stored: the points read back from the SQLite store (must equal the points logged).

``--locked`` also runs each interpreter with the ring forced into its locked mode
(the free-threaded build's path, under the GIL). Free-threaded interpreters run with
PYTHON_GIL=0 (orjson, built with UNSAFE_PYO3_BUILD_FREE_THREADED=1, would otherwise turn
the GIL back on when it is imported).

Run: python bench/bench_freethread.py --python .venv-ft/bin/python [--threads 1,4]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

from bench_ring import _median, _stop_collector, _stored, child_env

CHILD = r"""
import json, sys, threading, time
import flightlog as mlflow
from flightlog.agent import ring as ring_module
threads, per_thread, locked = int(sys.argv[1]), int(sys.argv[2]), sys.argv[4] == "1"
on_main = sys.argv[5] == "1"  # one thread: the one that started the run
if locked:
    ring_module.GIL = False
mlflow.set_tracking_uri(sys.argv[3])
blocks = [[] for _ in range(threads)]
start = threading.Barrier(threads + 1)
def work(t):
    log, clock, key, out = mlflow.log_metric, time.perf_counter_ns, f"loss{t}", blocks[t]
    start.wait()
    for b in range(per_thread // 1000):
        t0 = clock()
        for i in range(b * 1000, b * 1000 + 1000):
            log(key, 0.5, step=i)
        out.append((clock() - t0) / 1000)
with mlflow.start_run() as run:
    mlflow.log_metric("warm", 0.0)  # route, ring and key table made before the clock
    if on_main:
        start = threading.Barrier(1)
        t0 = time.perf_counter()
        work(0)
    else:
        ts = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
        for t in ts:
            t.start()
        start.wait()
        t0 = time.perf_counter()
        for t in ts:
            t.join()
    logged = time.perf_counter() - t0
    mlflow.flush()
    durable = time.perf_counter() - t0
    ring = mlflow.MlflowClient().ctx.agent.metric_ring()
    print(json.dumps({
        "run_id": run.info.run_id, "blocks": sorted(x for b in blocks for x in b),
        "logged_s": logged, "durable_s": durable, "locked": ring.locked,
        "gil": getattr(sys, "_is_gil_enabled", lambda: True)(),
    }), flush=True)
"""


def _free_threaded(python: str) -> bool:
    out = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_config_var('Py_GIL_DISABLED'))"],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip() == "1"


def run(
    python: str, threads: int, per_thread: int, locked: bool, on_main: bool
) -> dict[str, float]:
    """One process: ``threads`` threads logging ``per_thread`` points each (``on_main``:
    one, the main thread, which started the run)."""
    with tempfile.TemporaryDirectory(prefix="flightlog-bench-") as d:
        store = os.path.join(d, "store")
        env = child_env(d, FLIGHTLOG_METRIC_RING="1")
        if _free_threaded(python):
            env["PYTHON_GIL"] = "0"
        args = [str(threads), str(per_thread), store, str(int(locked)), str(int(on_main))]
        proc = subprocess.run([python, "-c", CHILD, *args], capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise SystemExit(f"{python} with {threads} threads failed:\n{proc.stderr}")
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        points = threads * (per_thread // 1000) * 1000
        stored = _stored(store, out["run_id"]) - 1  # less the warm-up point
        _stop_collector(store)
        return {
            "ns_call": _median(out["blocks"]),
            "ns_point": out["logged_s"] * 1e9 / points,
            "durable_s": points / out["durable_s"],
            "stored": stored,
            "points": points,
            "locked": out["locked"],
            "gil": out["gil"],
        }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--python", action="append", help="interpreter(s) (default: this one)")
    p.add_argument("--threads", default="1,4", help="thread counts, comma-separated")
    p.add_argument("--points", type=int, default=200_000, help="points per thread")
    p.add_argument("--locked", action="store_true", help="also force the locked ring")
    a = p.parse_args()
    print(
        f"{'python':<32} {'gil':>5} {'ring':>6} {'threads':>7} {'thread':>6} {'ns/call':>8} "
        f"{'ns/point':>8} {'durable/s':>10} {'stored':>16}"
    )
    for python in a.python or [sys.executable]:
        for locked in [False, True] if a.locked else [False]:
            for threads in (int(t) for t in a.threads.split(",")):
                for on_main in [True, False] if threads == 1 else [False]:
                    _row(python, threads, a.points, locked, on_main)


def _row(python: str, threads: int, per_thread: int, locked: bool, on_main: bool) -> None:
    r = run(python, threads, per_thread, locked, on_main)
    mode = "locked" if r["locked"] else "atomic"
    where = "main" if on_main else "worker"
    print(
        f"{python[-32:]:<32} {r['gil']!s:>5} {mode:>6} {threads:>7} {where:>6} "
        f"{r['ns_call']:>8.0f} {r['ns_point']:>8.0f} {r['durable_s']:>10,.0f} "
        f"{r['stored']:>7}/{r['points']:<8}",
        flush=True,
    )


if __name__ == "__main__":
    main()

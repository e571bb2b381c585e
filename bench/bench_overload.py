"""Overload benchmark (issue 6): many training processes flooding one collector.

Starts one collector (a real process, fresh SQLite store), then P training processes
(default 16). Each starts a run, waits for a common start signal, then logs one metric
paced to R points/s (default 100,000) for D seconds (default 10): it checks the clock
every 1,000 points and sleeps when ahead, so a process that gets its CPU share logs at
R, and one that does not logs as fast as it can. Then it ends its run (which flushes).

Prints, per process and in total: points logged, the rate achieved against the target,
the time until everything was durable, the agent's outages (sends refused with 503 or
failed) and drops; then, read from the SQLite file, points stored per run and distinct
steps (every point exactly once), and the collector's peak RSS (VmHWM from
/proc/<pid>/status). ``--json`` prints the figures as one JSON object instead, which
tests/test_reliability_overload.py checks.

On a machine with fewer cores than processes the target rate cannot be reached; the
achieved rate is then the honest figure: how much the machine sustained with nothing
lost. Usage: ``python bench/bench_overload.py [--processes 16] [--rate 100000]
[--seconds 10] [--json]`` (run it from a directory without a ``flightlog/`` store).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from array import array
from pathlib import Path
from typing import Any

CHILD = r"""
import json, resource, sys, time
import flightlog as mlflow

url, rate, seconds = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
mlflow.set_tracking_uri(url)
log = mlflow.log_metric
with mlflow.start_run() as run:
    agent = mlflow.MlflowClient().ctx.agent
    print("ready", flush=True)
    sys.stdin.readline()  # the common start signal
    t0 = time.perf_counter()
    end = t0 + seconds
    i = 0
    while True:
        for _ in range(1000):
            log("loss", 0.5, step=i)
            i += 1
        now = time.perf_counter()
        if now >= end:
            break
        ahead = i / rate - (now - t0)
        if ahead > 0:
            time.sleep(min(ahead, end - now))
    t_log = time.perf_counter() - t0
    # Acknowledged by the collector (through any 503s), not merely spooled.
    acked = agent.flush(timeout=600, through_outage=True)
    t_durable = time.perf_counter() - t0
print(json.dumps({
    "run_id": run.info.run_id,
    "acked": acked,
    "points": i,
    "log_s": t_log,
    "durable_s": t_durable,
    "outages": agent.outages,
    "dropped": dict(agent.dropped),
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
}), flush=True)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _peak_rss_mb(pid: int) -> float:
    # VmHWM: the process's peak resident set size so far.
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _start_collector(store: Path, extra: list[str]) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    port_file = store / "port.json"
    store.mkdir(parents=True, exist_ok=True)
    log = open(store / "collector.log", "ab")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flightlog.collector",
            "--store",
            str(store),
            "--port",
            str(port),
            "--port-file",
            str(port_file),
            *extra,
        ],
        stdout=log,
        stderr=log,
        cwd=str(store),
    )
    deadline = time.monotonic() + 60
    while not port_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"collector did not start: {(store / 'collector.log').read_text()}")
        time.sleep(0.05)  # waiting on another process's file
    return proc, f"http://127.0.0.1:{port}"


def _hold_budget(url: str, size: int) -> socket.socket:
    """Start an ingest request of ``size`` body bytes and send none of them.

    The collector reserves a request's Content-Length from its ingest budget before it
    reads the body, so while this connection is open the budget is taken and every
    other ingest is answered 503 + Retry-After, whatever the machine's speed. Closing
    the socket gives the budget back.
    """
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.sendall(
        f"POST /api/flightlog/ingest HTTP/1.1\r\nHost: {host}\r\n"
        f"Content-Type: application/msgpack\r\nContent-Length: {size}\r\n\r\n".encode()
    )
    return sock


def run(
    processes: int,
    rate: float,
    seconds: float,
    collector_args: list[str],
    hold_budget: tuple[int, float] | None = None,
) -> dict[str, Any]:
    """Run the benchmark; return its figures.

    ``hold_budget=(bytes, seconds)`` takes that much of the collector's ingest budget for
    the first seconds of logging (:func:`_hold_budget`), so that the collector must push
    back (503) on any machine: tests use it to check the agents honour it.
    """
    with tempfile.TemporaryDirectory(prefix="flightlog-overload-") as d:
        store = Path(d) / "store"
        env = {**os.environ, "FLIGHTLOG_SPOOL_DIR": str(Path(d) / "spool")}
        collector, url = _start_collector(store, collector_args)
        script = Path(d) / "child.py"
        script.write_text(CHILD)
        children = [
            subprocess.Popen(
                [sys.executable, str(script), url, str(rate), str(seconds)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                cwd=d,
                env=env,
            )
            for _ in range(processes)
        ]
        try:
            for c in children:  # all started and holding a run: start together
                assert c.stdout is not None
                if c.stdout.readline().strip() != "ready":
                    raise SystemExit("a training process failed to start")
            held = _hold_budget(url, hold_budget[0]) if hold_budget else None
            t0 = time.perf_counter()
            for c in children:
                assert c.stdin is not None
                c.stdin.write("go\n")
                c.stdin.flush()
            if held is not None and hold_budget is not None:
                time.sleep(hold_budget[1])  # the training processes log meanwhile
                held.close()
            results = []
            for c in children:
                out, _ = c.communicate(timeout=600)
                if c.returncode != 0:
                    raise SystemExit(f"a training process failed ({c.returncode})")
                results.append(json.loads(out.strip().splitlines()[-1]))
            wall = time.perf_counter() - t0
            collector_rss = _peak_rss_mb(collector.pid)
        finally:
            for c in children:
                if c.poll() is None:
                    c.kill()
            collector.terminate()
            collector.wait(timeout=60)
        db = sqlite3.connect(store / "flightlog.db")
        for r in results:
            steps: array[int] = array("q")
            for (blob,) in db.execute(
                "SELECT steps FROM metric_chunks WHERE run_uuid = ? AND key = 'loss'",
                (r["run_id"],),
            ):
                steps.frombytes(blob)
            r["stored"] = len(steps)
            r["distinct_steps"] = len(set(steps))
            r["status"] = db.execute(
                "SELECT status FROM runs WHERE run_uuid = ?", (r["run_id"],)
            ).fetchone()[0]
        db.close()
    total = sum(r["points"] for r in results)
    return {
        "processes": processes,
        "target_rate_per_process": rate,
        "seconds": seconds,
        "points": total,
        "stored": sum(r["stored"] for r in results),
        "all_stored_once": all(
            r["acked"] and r["stored"] == r["distinct_steps"] == r["points"] for r in results
        ),
        "rates": [r["points"] / r["log_s"] for r in results],
        "aggregate_rate": total / max(r["log_s"] for r in results),
        "durable_after_s": max(r["durable_s"] for r in results),
        "wall_s": wall,
        "outages": sum(r["outages"] for r in results),
        "dropped": sum(sum(r["dropped"].values()) for r in results),
        "collector_peak_rss_mb": collector_rss,
        "training_peak_rss_mb": max(r["peak_rss_mb"] for r in results),
        "runs": results,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--processes", type=int, default=16)
    p.add_argument("--rate", type=float, default=100_000, help="target points/s per process")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.add_argument(
        "--collector-arg",
        action="append",
        default=[],
        help="extra collector option (repeatable), "
        "e.g. --collector-arg=--ingest-max-pending-bytes=8000000",
    )
    args = p.parse_args()
    r = run(args.processes, args.rate, args.seconds, args.collector_arg)
    if args.json:
        print(json.dumps(r))
        return
    rates = sorted(r["rates"])
    print(
        f"{r['processes']} processes x {r['target_rate_per_process']:,.0f} points/s target x "
        f"{r['seconds']:.0f} s on {os.cpu_count()} CPUs"
    )
    print(
        f"  achieved per process: min {rates[0]:,.0f}, median {rates[len(rates) // 2]:,.0f}, "
        f"max {rates[-1]:,.0f} points/s; aggregate {r['aggregate_rate']:,.0f} points/s"
    )
    print(
        f"  logged {r['points']:,} points; stored {r['stored']:,} "
        f"({'every point exactly once' if r['all_stored_once'] else 'MISMATCH'}); "
        f"dropped {r['dropped']}; agent outages (503/failed sends) {r['outages']}"
    )
    print(
        f"  all durable {r['durable_after_s']:.1f} s after the start (logging {r['seconds']:.0f} s)"
    )
    print(
        f"  peak RSS: collector {r['collector_peak_rss_mb']:.0f} MB, "
        f"largest training process {r['training_peak_rss_mb']:.0f} MB"
    )


if __name__ == "__main__":
    main()

"""Benchmark of the collector under hostile and heavy input (issue 11).

Prints:
  (a) collector peak RSS while 8 connections at once send ingest "decompression bombs"
      (about 200 KB of gzip inflating to 200 MiB each), beside the configured budget;
      target: under the budget plus 150 MB;
  (b) the ingest success rate of 8 well-behaved agents while one connection declares a
      64 MiB body and stalls after one byte; target 100%;
  (c) REST write latency (runs/set-tag from another client), max and p99, while one
      ingest batch of 200,000 distinct series is applied; target p99 <= 1 s;
  (d) the usual durable ingest throughput (bench_logging's 1 metric x N steps);
      target >= 1M points/s.

Run: python bench/bench_hostile.py [--points 10000000] [--series 200000]
Each part runs against a fresh collector process and store.
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import json
import os
import socket
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_logging import run_shape
from bench_overload import _peak_rss_mb, _start_collector

from flightlog.collector.limits import DEFAULT_MAX_PENDING_BYTES
from flightlog.core.wire import encode_batch

MiB = 1024 * 1024


def _post(url: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    try:
        conn.request("POST", path, body, headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _batch(run_id: str, n_points: int, n_series: int = 1, create: bool = True) -> bytes:
    ops = [["create_run", {"run_id": run_id, "experiment_id": "0"}]] if create else []
    keys = [f"m{i % n_series}" for i in range(n_points)]
    columns = [
        [run_id] * n_points,
        keys,
        [0.5] * n_points,
        [i // n_series for i in range(n_points)],
        [1.7e9] * n_points,
    ]
    return encode_batch(uuid.uuid4().hex, "bench", ops, columns)


def _ingest(url: str, body: bytes, encoding: str | None = None) -> int:
    headers = {"Content-Type": "application/msgpack"}
    if encoding:
        headers["Content-Encoding"] = encoding
    return _post(url, "/api/flightlog/ingest", body, headers)[0]


def bombs(store: Path) -> dict[str, Any]:
    """(a) 8 concurrent decompression bombs: statuses and the collector's peak RSS."""
    proc, url = _start_collector(store, [])
    try:
        bomb = gzip.compress(b"\0" * (200 * MiB), compresslevel=9)
        baseline = _peak_rss_mb(proc.pid)
        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(lambda _: _ingest(url, bomb, "gzip"), range(8)))
        alive = _ingest(url, _batch(uuid.uuid4().hex, 10)) == 200
        return {
            "wire_kb": len(bomb) / 1024,
            "statuses": sorted(statuses),
            "baseline_mb": baseline,
            "peak_mb": _peak_rss_mb(proc.pid),
            "budget_mb": DEFAULT_MAX_PENDING_BYTES / MiB,
            "alive": alive,
        }
    finally:
        proc.terminate()
        proc.wait()


def stall(store: Path, agents: int = 8, batches: int = 40) -> dict[str, Any]:
    """(b) One stalled 64 MiB body; the other agents' ingest success rate."""
    proc, url = _start_collector(store, [])
    try:
        host, port = url.removeprefix("http://").split(":")
        hog = socket.create_connection((host, int(port)))
        hog.sendall(
            b"POST /api/flightlog/ingest HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/msgpack\r\n"
            + f"Content-Length: {64 * MiB}\r\n\r\n".encode()
            + b"\x85"
        )
        time.sleep(0.5)

        def agent(i: int) -> list[int]:
            run_id = uuid.uuid4().hex
            return [_ingest(url, _batch(run_id, 20_000, create=(b == 0))) for b in range(batches)]

        started = time.monotonic()
        with ThreadPoolExecutor(agents) as pool:
            statuses = [s for r in pool.map(agent, range(agents)) for s in r]
        seconds = time.monotonic() - started
        hog.close()
        return {"ok": statuses.count(200), "total": len(statuses), "seconds": seconds}
    finally:
        proc.terminate()
        proc.wait()


def fairness(store: Path, n_series: int) -> dict[str, Any]:
    """(c) REST write latencies while a batch of ``n_series`` distinct series is applied."""
    proc, url = _start_collector(store, [])
    try:
        _, data = _post(
            url,
            "/api/2.0/mlflow/runs/create",
            b'{"experiment_id": "0"}',
            {"Content-Type": "application/json"},
        )
        other = json.loads(data)["run"]["info"]["run_id"]
        body = _batch(uuid.uuid4().hex, n_series, n_series)
        done = threading.Event()
        applied: dict[str, float] = {}

        def send() -> None:
            t0 = time.monotonic()
            applied["status"] = _ingest(url, body)
            applied["seconds"] = time.monotonic() - t0
            done.set()

        sender = threading.Thread(target=send)
        sender.start()
        latencies = []
        i = 0
        while not done.is_set():
            tag = json.dumps({"run_id": other, "key": f"k{i % 50}", "value": str(i)}).encode()
            t0 = time.monotonic()
            s, _ = _post(
                url, "/api/2.0/mlflow/runs/set-tag", tag, {"Content-Type": "application/json"}
            )
            latencies.append(time.monotonic() - t0)
            assert s == 200, s
            i += 1
        sender.join()
        latencies.sort()
        return {
            "batch_status": applied["status"],
            "batch_s": applied["seconds"],
            "body_mb": len(body) / MiB,
            "writes": len(latencies),
            "max_s": latencies[-1] if latencies else float("nan"),
            "p99_s": latencies[int(len(latencies) * 0.99)] if latencies else float("nan"),
            "peak_mb": _peak_rss_mb(proc.pid),
        }
    finally:
        proc.terminate()
        proc.wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--points", type=int, default=10_000_000)
    p.add_argument("--series", type=int, default=200_000)
    args = p.parse_args()
    load = os.getloadavg()
    print(
        f"machine: {os.cpu_count()} cores, load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}"
    )
    with tempfile.TemporaryDirectory(prefix="flightlog-hostile-") as d:
        a = bombs(Path(d) / "a")
        print(
            f"(a) 8 concurrent decompression bombs ({a['wire_kb']:.0f} KB gzip -> 200 MiB each): "
            f"answers {a['statuses']}; collector peak RSS {a['peak_mb']:.0f} MB "
            f"(before {a['baseline_mb']:.0f} MB; budget {a['budget_mb']:.0f} MiB, target < "
            f"{a['budget_mb'] + 150:.0f} MB); still serving: {a['alive']}"
        )
        b = stall(Path(d) / "b")
        print(
            f"(b) one connection stalled on a 64 MiB body: other agents' ingest "
            f"{b['ok']}/{b['total']} succeeded ({100 * b['ok'] / b['total']:.1f}%) "
            f"in {b['seconds']:.1f} s"
        )
        c = fairness(Path(d) / "c", args.series)
        print(
            f"(c) batch of {args.series:,} distinct series ({c['body_mb']:.1f} MB, answered "
            f"{c['batch_status']} after {c['batch_s']:.1f} s): {c['writes']} REST writes "
            "meanwhile, "
            f"latency max {c['max_s'] * 1000:.0f} ms, p99 {c['p99_s'] * 1000:.0f} ms; "
            f"collector peak RSS {c['peak_mb']:.0f} MB"
        )
    r = run_shape("narrow", args.points)
    print(
        f"(d) ingest, 1 metric x {args.points:,} steps: durable after {r['total_s']:.2f} s -> "
        f"{r['points'] / r['total_s']:,.0f} points/s; stored {r['stored_points']:,} "
        f"({'all' if r['stored_points'] == r['points'] else 'MISSING'})"
    )


if __name__ == "__main__":
    main()

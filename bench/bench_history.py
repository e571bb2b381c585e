"""Benchmark of REST metrics/get-history on a long series (hardening: bounded pages).

Prints, for one series of N points (default 908,000) logged through ingest:
  (a) collector peak RSS (VmHWM) before and after 6 concurrent get-history requests
      that ask for every point (max_results=10^9); each is answered one page of
      25,000 points with a next_page_token;
  (b) the time MLflow's own client takes to read the whole series
      (MlflowClient.get_metric_history, which follows the page tokens), and its length.

Run: python bench/bench_history.py [--points 908000]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_overload import _peak_rss_mb, _start_collector

from flightlog.core.wire import encode_batch


def _request(port: int, method: str, path: str, body: bytes | None = None) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        conn.request(method, path, body, {"Content-Type": "application/msgpack"})
        resp = conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise SystemExit(f"{method} {path}: {resp.status} {data[:300]!r}")
        return data
    finally:
        conn.close()


def main() -> None:
    """Log the series, then print (a) and (b)."""
    p = argparse.ArgumentParser()
    p.add_argument("--points", type=int, default=908_000)
    n = p.parse_args().points
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = _start_collector(Path(tmp) / "store", [])
        port = int(url.rsplit(":", 1)[1])
        try:
            run_id = uuid.uuid4().hex
            ops: list[list[object]] = [["create_run", {"run_id": run_id, "experiment_id": "0"}]]
            for start in range(0, n, 100_000):
                stop = min(n, start + 100_000)
                columns = [
                    [run_id] * (stop - start),
                    ["loss"] * (stop - start),
                    [i / 7 for i in range(start, stop)],
                    list(range(start, stop)),
                    [1.7e9 + i / 1000 for i in range(start, stop)],
                ]
                body = encode_batch(uuid.uuid4().hex, "bench", ops, columns)
                _request(port, "POST", "/api/flightlog/ingest", body)
                ops = []
            before = _peak_rss_mb(proc.pid)
            path = (
                f"/api/2.0/mlflow/metrics/get-history?run_id={run_id}"
                "&metric_key=loss&max_results=1000000000"
            )
            t0 = time.perf_counter()
            with ThreadPoolExecutor(6) as pool:
                pages = list(pool.map(lambda _: _request(port, "GET", path), range(6)))
            took = time.perf_counter() - t0
            sizes = {len(json.loads(page)["metrics"]) for page in pages}
            print(
                f"(a) {n:,}-point series, 6 concurrent get-history max_results=10^9: "
                f"{sizes} points each, {took:.2f} s; collector peak RSS {before:.0f} MB "
                f"-> {_peak_rss_mb(proc.pid):.0f} MB"
            )
            os.environ.setdefault("MLFLOW_TRACKING_URI", url)
            from mlflow import MlflowClient

            t0 = time.perf_counter()
            history = MlflowClient(tracking_uri=url).get_metric_history(run_id, "loss")
            took = time.perf_counter() - t0
            print(
                f"(b) MlflowClient.get_metric_history: {len(history):,} points in {took:.1f} s "
                f"({len(history) / took:,.0f} points/s); collector peak RSS "
                f"{_peak_rss_mb(proc.pid):.0f} MB"
            )
        finally:
            proc.terminate()
            proc.wait(timeout=60)


if __name__ == "__main__":
    main()

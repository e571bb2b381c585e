"""Benchmark of the system-metrics sampler's own cost (issue 5: <= 1% of one core at 1 s).

Runs a ``SystemSampler`` for ``--duration`` seconds at each interval in ``--intervals``
(default 1 s and 0.1 s) with a no-op submit, and prints the sampler thread's CPU time as
a percentage of one core:

  total   all CPU the thread used over its whole life (start-up, NVML init included)
          divided by the wall time it ran;
  steady  CPU between its first and its last sample divided by the wall time between
          them: the cost per interval once running.

CPU is read inside the thread with ``time.thread_time()`` (in the submit callback, which
runs on the sampler thread) and cross-checked with psutil's per-thread times. GPU
metrics are on when NVML and a GPU are present (``--gpu none`` turns them off).

Run: python bench/bench_system_metrics.py [--duration 20] [--intervals 1,0.1]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from typing import Literal

import psutil

from flightlog.agent.system import SystemSampler


class ThreadClock:
    """A no-op collector that notes the sampler thread's CPU time at every sample."""

    def __init__(self) -> None:
        self.samples = 0
        self.names = 0
        self.first: tuple[float, float] | None = None  # (wall, thread cpu)
        self.last: tuple[float, float] | None = None

    def __call__(self, run_id: str, metrics: dict[str, float], step: int) -> None:
        point = (time.perf_counter(), time.thread_time())
        if self.first is None:
            self.first = point
        self.last = point
        self.samples += 1
        self.names = max(self.names, len(metrics))


def thread_cpu_psutil(native_id: int | None) -> float | None:
    if native_id is None:
        return None
    for thread in psutil.Process().threads():
        if thread.id == native_id:
            return float(thread.user_time + thread.system_time)
    return None


def measure(interval: float, duration: float, gpu: Literal["auto"] | None) -> dict[str, float]:
    clock = ThreadClock()
    with tempfile.TemporaryDirectory() as lock_dir:
        sampler = SystemSampler(
            f"bench-{os.getpid()}-{interval}",
            clock,
            interval=interval,
            gpu=gpu,
            lock_dir=lock_dir,
            environ={k: v for k, v in os.environ.items() if k != "FLIGHTLOG_NODE"},
        )
        started = time.perf_counter()
        sampler.start()
        thread = sampler._thread  # the bench looks inside on purpose
        # Waiting for the benchmark's length is the point here, not a synchronisation.
        threading.Event().wait(duration)
        by_psutil = thread_cpu_psutil(thread.native_id if thread else None)
        wall = time.perf_counter() - started
        assert sampler.stop(10.0), "sampler did not stop"
    assert clock.first is not None and clock.last is not None
    steady_wall = clock.last[0] - clock.first[0]
    steady_cpu = clock.last[1] - clock.first[1]
    return {
        "samples": clock.samples,
        "metrics_per_sample": clock.names,
        "total_pct": 100.0 * clock.last[1] / wall,
        "steady_pct": 100.0 * steady_cpu / steady_wall if steady_wall > 0 else float("nan"),
        "ms_per_sample": 1000.0 * steady_cpu / max(1, clock.samples - 1),
        "psutil_pct": 100.0 * by_psutil / wall if by_psutil is not None else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per interval")
    parser.add_argument("--intervals", default="1,0.1", help="comma-separated seconds")
    parser.add_argument("--gpu", choices=("auto", "none"), default="auto")
    args = parser.parse_args()
    gpu: Literal["auto"] | None = "auto" if args.gpu == "auto" else None

    print(f"cpus={os.cpu_count()} duration={args.duration:g}s gpu={args.gpu}")
    print(
        f"{'interval':>8} {'samples':>7} {'metrics':>7} {'steady %':>9} {'total %':>8} "
        f"{'psutil %':>8} {'ms/sample':>9}"
    )
    for text in args.intervals.split(","):
        interval = float(text)
        r = measure(interval, args.duration, gpu)
        verdict = ""
        if interval >= 1.0:
            verdict = "  ok (<= 1%)" if r["steady_pct"] <= 1.0 else "  OVER 1%"
        print(
            f"{interval:>7g}s {r['samples']:>7.0f} {r['metrics_per_sample']:>7.0f} "
            f"{r['steady_pct']:>9.3f} {r['total_pct']:>8.3f} {r['psutil_pct']:>8.3f} "
            f"{r['ms_per_sample']:>9.3f}{verdict}"
        )


if __name__ == "__main__":
    main()

"""Run a short real GPU workload with system metrics on, then print the stored GPU series.

For a machine with an NVIDIA GPU and ``nvidia-ml-py`` installed (``flightlog[gpu]``).
Everything goes through the public SDK, as a user would write it::

    import flightlog as mlflow
    mlflow.enable_system_metrics_logging()
    with mlflow.start_run(log_system_metrics=True) as run:
        ...  # torch matmuls for ~15 s

then reads back every ``system/.../gpu_*`` series with
``MlflowClient().get_metric_history``. Without torch the GPU idles through the same
window (the series are still stored, near zero). Exits 1 when no GPU series was stored,
so a missing driver or package shows as a failure, with flightlog's one info line
saying why.

Run: python scripts/gpu_system_metrics.py [--seconds 15] [--interval 1] [--tracking-uri DIR]
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import tempfile
import time

import flightlog as mlflow

GPU_SERIES = re.compile(r"^system/(?:[^/]+/)?gpu_[^/]+$")


def gpu_workload(seconds: float) -> str:
    """Keep every visible GPU busy with matmuls for about ``seconds``; say what ran."""
    try:
        import torch
    except ImportError:
        time.sleep(seconds)
        return f"torch is not installed: the GPU idled for {seconds:g} s"
    if not torch.cuda.is_available():
        time.sleep(seconds)
        return f"torch sees no CUDA device: idled for {seconds:g} s"
    devices = [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    n = 8192
    pairs = [
        (
            torch.randn(n, n, device=d, dtype=torch.float16),
            torch.randn(n, n, device=d, dtype=torch.float16),
        )
        for d in devices
    ]
    iterations = 0
    started = time.monotonic()
    deadline = started + seconds
    while time.monotonic() < deadline:
        for a, b in pairs:
            for _ in range(20):
                a = (a @ b).clamp_(-1.0, 1.0)  # keep values finite across iterations
        for d in devices:
            torch.cuda.synchronize(d)
        iterations += 20
    elapsed = time.monotonic() - started
    tflops = 2 * n**3 * iterations * len(devices) / elapsed / 1e12
    names = ", ".join(torch.cuda.get_device_name(d) for d in devices)
    return (
        f"{iterations} fp16 {n}x{n} matmuls per GPU in {elapsed:.1f} s on {names} "
        f"(~{tflops:.0f} TFLOP/s in all)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--tracking-uri", default=None, help="default: a fresh temp dir")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")

    mlflow.set_tracking_uri(args.tracking_uri or tempfile.mkdtemp(prefix="flightlog-gpu-"))
    mlflow.enable_system_metrics_logging()
    mlflow.set_system_metrics_sampling_interval(args.interval)
    with mlflow.start_run(log_system_metrics=True) as run:
        print(gpu_workload(args.seconds))
    run_id = run.info.run_id

    client = mlflow.MlflowClient()
    stored = client.get_run(run_id).data.metrics
    gpu_keys = sorted(key for key in stored if GPU_SERIES.match(key))
    print(f"run {run_id}: {len(stored)} metrics, {len(gpu_keys)} GPU series")
    for key in gpu_keys:
        history = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
        values = [m.value for m in history]
        print(
            f"{key}: {len(values)} points, min {min(values):.1f}, max {max(values):.1f}, "
            f"last {values[-1]:.1f}"
        )
        print("    " + " ".join(f"{m.step}:{m.value:.0f}" for m in history))
    others = sorted(key for key in stored if key.startswith("system/") and key not in gpu_keys)
    for key in others:
        print(f"{key}: last {stored[key]:.1f}")
    return 0 if gpu_keys else 1


if __name__ == "__main__":
    sys.exit(main())

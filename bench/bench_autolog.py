"""Benchmark of autologging's per-step cost (issue 13: <= 5 us per step), Keras and Lightning.

A tiny model trains for 1,000 steps (10 epochs of 100 batches) in each mode:

  off          no autolog
  epoch        autolog with its defaults (metrics once an epoch)
  every step   autolog that also logs the batch metrics at every step
               (Keras ``log_every_n_steps=1``, Lightning ``log_every_n_step=1``)

for flightlog (a fresh embedded store) and, beside it, MLflow's own autolog (the
``mlflow`` package in the dev extra, mlflow-skinny, logging to a SQLite store in a
temporary directory: its local default). Models and datasets are not logged, so the
figures are the per-step cost; each fit runs inside an open run, whose end (the final
flush) is not timed. Each tool runs in a process of its own; in it the modes alternate
over ``--rounds`` rounds after a warm-up fit, and the bench prints the median fit time per
step and the median overhead against "off" of the same process.

This machine is shared and noisy: a per-step figure of a few microseconds is well under
the round-to-round spread of a ~1 ms training step; read the spread column.

A second table isolates the hook itself: up to 100,000 direct calls (5 s at most) of
the per-batch hook of each tool's Keras callback with two metrics, the part of "every
step" that is autolog's own (no fit loop around it, so it is steadier on a busy machine).

Run: python bench/bench_autolog.py [--rounds 5] [--frameworks keras,lightning]
                                   [--tools flightlog,mlflow]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

STEPS_PER_EPOCH = 100
EPOCHS = 10
BATCH = 8
MODES = ("off", "epoch", "every step")
HOOK_CALLS = 100_000
ROOT = Path(__file__).resolve().parents[1]


# -- one process: one framework, one tool ------------------------------------------------------


def _keras_fit(tool: str) -> tuple[Any, Any, Any]:
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.normal(size=(STEPS_PER_EPOCH * BATCH, 4)).astype("float32")
    y = (x[:, 0] > 0).astype("float32")
    model = keras.Sequential([keras.Input(shape=(4,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse", metrics=["mae"])

    def fit() -> None:
        model.fit(x, y, epochs=EPOCHS, batch_size=BATCH, verbose=0)

    def configure(mode: str) -> None:
        if tool == "flightlog":
            import flightlog

            flightlog.tensorflow.autolog(
                disable=mode == "off",
                log_models=False,
                log_datasets=False,
                log_every_epoch=mode != "every step",
                log_every_n_steps=1 if mode == "every step" else None,
            )
        else:
            import mlflow

            # MLflow takes per-step logging only without per-epoch logging.
            mlflow.tensorflow.autolog(
                disable=mode == "off",
                log_models=False,
                log_datasets=False,
                log_every_epoch=mode != "every step",
                log_every_n_steps=1 if mode == "every step" else None,
                silent=True,
            )

    def hook() -> Any:
        if tool == "flightlog":
            import flightlog

            run_id = flightlog.active_run().info.run_id
            cb = flightlog.tensorflow._callback(run_id, 0, 1)
        else:
            from mlflow.tensorflow.callback import MlflowCallback

            cb = MlflowCallback(log_every_epoch=False, log_every_n_steps=1)
        cb.set_model(model)
        return cb.on_train_batch_end

    return fit, configure, hook


def _lightning_fit(tool: str) -> tuple[Any, Any, Any]:
    import lightning.pytorch as pl

    sys.path.insert(0, str(ROOT))
    from tests.lightning_models import TinyRegressor_lightning_pytorch

    model = TinyRegressor_lightning_pytorch(n=STEPS_PER_EPOCH * BATCH, batch_size=BATCH)

    def fit() -> None:
        trainer = pl.Trainer(
            max_epochs=EPOCHS,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_val_batches=0,
            accelerator="cpu",
        )
        trainer.fit(model)

    def configure(mode: str) -> None:
        step = 1 if mode == "every step" else None
        if tool == "flightlog":
            import flightlog

            flightlog.pytorch.autolog(
                disable=mode == "off", log_models=False, log_every_n_step=step
            )
        else:
            import mlflow

            mlflow.pytorch.autolog(
                disable=mode == "off",
                log_models=False,
                log_datasets=False,
                log_every_n_step=step,
                silent=True,
            )

    return fit, configure, None


def child(framework: str, tool: str, rounds: int) -> None:
    """Time each mode ``rounds`` times, interleaved; print JSON seconds per fit."""
    import logging
    import warnings

    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)
    work = tempfile.mkdtemp(prefix="bench-autolog-")
    os.chdir(work)
    if tool == "flightlog":
        import flightlog as api

        api.set_tracking_uri(os.path.join(work, "store"))
    else:
        import mlflow as api

        api.set_tracking_uri(f"sqlite:///{work}/mlflow.db")
    fit, configure, hook = (_keras_fit if framework == "keras" else _lightning_fit)(tool)
    times: dict[str, list[float]] = {m: [] for m in MODES}
    for r in range(rounds + 1):
        # The order rotates, so no mode always runs right after another.
        for mode in MODES[r % 3 :] + MODES[: r % 3]:
            configure(mode)
            with api.start_run():
                start = time.perf_counter()
                fit()
                elapsed = time.perf_counter() - start
            if r > 0:  # round 0 warms up every mode
                times[mode].append(elapsed)
    if hook is not None:
        configure("off")
        with api.start_run():
            call = hook()
            logs = {"loss": 0.25, "mae": 0.5}
            start = time.perf_counter()
            calls = 0
            # Up to HOOK_CALLS calls, or 5 s of them for a hook that pays a round trip.
            while calls < HOOK_CALLS and time.perf_counter() - start < 5.0:
                for i in range(calls, calls + 1000):
                    call(i, logs)
                calls += 1000
            times["hook"] = [(time.perf_counter() - start) / calls]
    print(json.dumps(times))


# -- the driver --------------------------------------------------------------------------------


def run_child(framework: str, tool: str, rounds: int) -> dict[str, list[float]] | None:
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run(
        [sys.executable, __file__, "--child", framework, tool, "--rounds", str(rounds)],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
    )
    if out.returncode != 0:
        print(f"{framework}/{tool} failed:\n{out.stderr[-2000:]}", file=sys.stderr)
        return None
    result: dict[str, list[float]] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--frameworks", default="keras,lightning")
    parser.add_argument("--tools", default="flightlog,mlflow")
    parser.add_argument("--child", nargs=2, metavar=("FRAMEWORK", "TOOL"))
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.rounds)
        return
    steps = EPOCHS * STEPS_PER_EPOCH
    print(f"{steps} steps per fit ({EPOCHS} epochs x {STEPS_PER_EPOCH}), {args.rounds} rounds")
    print(
        f"{'framework':<10} {'tool':<10} {'mode':<11} {'us/step median':>15} {'min':>8} "
        f"{'overhead, medians':>18} {'overhead, mins':>15} {'spread (all rounds)':>20}"
    )
    hooks: list[str] = []
    for framework in args.frameworks.split(","):
        for tool in args.tools.split(","):
            times = run_child(framework, tool, args.rounds)
            if times is None:
                continue
            off = [t / steps * 1e6 for t in times["off"]]
            for mode in MODES:
                per_step = [t / steps * 1e6 for t in times[mode]]
                over_med = statistics.median(per_step) - statistics.median(off)
                over_min = min(per_step) - min(off)
                print(
                    f"{framework:<10} {tool:<10} {mode:<11} {statistics.median(per_step):>15.1f} "
                    f"{min(per_step):>8.1f} {over_med:>18.1f} {over_min:>15.1f} "
                    f"{f'{min(per_step):.0f}-{max(per_step):.0f}':>20}"
                )
            if "hook" in times:
                hooks.append(f"{framework:<10} {tool:<10} {times['hook'][0] * 1e6:>10.2f}")
    if hooks:
        print(f"\nper-batch hook alone, up to {HOOK_CALLS:,} calls (5 s at most), 2 metrics")
        print(f"{'framework':<10} {'tool':<10} {'us/call':>10}")
        print("\n".join(hooks))


if __name__ == "__main__":
    main()

"""Take the README's screenshots of the web UI (docs/ui-*.png).

    python scripts/ui_screenshots.py [--out docs]

Fills a fresh store through the SDK with a small learning-rate sweep (nested runs,
train/ and val/ curves, artifacts) and one run with system metrics from two nodes of
two GPUs each, serves it with a collector and photographs the main pages in Debian's chromium. The
numbers are made up (a deterministic synthetic sweep); timestamps are spread over an
hour so that the time axes read like a real job's.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import random
import sys
import tempfile
import urllib.parse
from pathlib import Path

from ui_harness import collector, launch_chromium

STEPS = 3000
# (name, idle value, value under load) of the demo GPU series.
#: The nodes the best run's system metrics come from.
NODES = ("node-0", "node-1")
GPU_SERIES = (
    ("utilization_percentage", 0, 96),
    ("power_usage_watts", 60, 380),
    ("memory_usage_megabytes", 500, 61000),
    ("temperature_celsius", 35, 74),
)


def fill(url: str, tmp: Path) -> dict[str, str]:
    """Log the demo runs; returns the ids the screenshots need."""
    from PIL import Image, ImageDraw

    import flightlog as mlflow

    mlflow.set_tracking_uri(url)
    client = mlflow.MlflowClient()
    exp = mlflow.create_experiment("vision/resnet-sweep", tags={"team": "vision"})
    mlflow.create_experiment("nlp/bert-finetune")
    rng = random.Random(3)
    t0 = 1_790_000_000_000
    parent = client.create_run(exp, start_time=t0, run_name="lr-sweep")
    ids: dict[str, str] = {"experiment": exp, "parent": parent.info.run_id}
    children = []
    for i, (lr, opt) in enumerate(
        [(3e-4, "adam"), (1e-3, "adam"), (3e-3, "adam"), (1e-2, "sgd"), (3e-2, "sgd")]
    ):
        run = client.create_run(
            exp,
            start_time=t0 + i * 60_000,
            run_name=f"resnet50-lr{lr:g}",
            tags={"mlflow.parentRunId": parent.info.run_id, "mlflow.source.name": "train.py"},
        )
        rid = run.info.run_id
        children.append(rid)
        params = {"lr": lr, "optimizer": opt, "batch_size": 256, "epochs": 30, "model": "resnet50"}
        for key, value in params.items():
            client.log_param(rid, key, value)
        speed = 0.4 + 0.25 * i
        for s in range(STEPS):
            ts = t0 + i * 60_000 + s * 1200
            loss = 2.3 * math.exp(-s * speed / 900) + 0.15 + rng.gauss(0, 0.04)
            client.log_metric(rid, "train/loss", loss, timestamp=ts, step=s)
            if s % 100 == 0:
                acc = 0.93 - 0.5 * math.exp(-s * speed / 700) - 0.02 * abs(i - 2)
                client.log_metric(rid, "val/accuracy", acc, timestamp=ts, step=s)
                client.log_metric(rid, "val/loss", loss * 1.1 + 0.05, timestamp=ts, step=s)
                client.log_metric(
                    rid,
                    "lr",
                    lr * (0.5 + 0.5 * math.cos(math.pi * s / STEPS)),
                    timestamp=ts,
                    step=s,
                )
        client.set_terminated(rid, end_time=t0 + i * 60_000 + STEPS * 1200)
    client.set_terminated(parent.info.run_id, end_time=t0 + 10 * 60_000 + STEPS * 1200)
    best = children[2]
    ids["best"] = best
    ids["compare"] = ",".join(children[1:4])
    # System metrics of the best run, trained on two nodes: each node's host and two
    # GPUs, sampled every 10 s (names as the sampler gives them with FLIGHTLOG_NODE set).
    for n, node in enumerate(NODES):
        for k in range(360):
            ts = t0 + 2 * 60_000 + k * 10_000
            busy = 0 if k < 6 else 1
            host = {
                "cpu_utilization_percentage": 20 + 50 * busy - 5 * n + rng.uniform(-5, 5),
                "system_memory_usage_megabytes": 9000 + 12000 * busy + 20 * k - 500 * n,
            }
            for name, value in host.items():
                client.log_metric(best, f"system/{node}/{name}", value, timestamp=ts, step=k)
            for g in range(2):
                for name, idle, load in GPU_SERIES:
                    value = (
                        idle
                        + (load - idle) * busy * (1 - 0.03 * g - 0.02 * n)
                        + rng.uniform(-1, 1) * load * 0.02
                    )
                    key = f"system/{node}/gpu_{g}_{name}"
                    client.log_metric(best, key, value, timestamp=ts, step=k)
    # Artifacts: a per-class report, the config and a confusion matrix.
    report = "class,precision,recall,f1\n" + "".join(
        f"{c},{0.9 + rng.uniform(-0.05, 0.05):.3f},{0.9 + rng.uniform(-0.05, 0.05):.3f},"
        f"{0.9 + rng.uniform(-0.05, 0.05):.3f}\n"
        for c in ("cat", "dog", "car", "ship", "plane", "frog", "horse", "truck")
    )
    client.log_text(best, report, "eval/per_class.csv")
    config = {"lr": 3e-3, "optimizer": "adam", "augment": ["flip", "crop"]}
    client.log_text(best, json.dumps(config, indent=2), "config.json")
    img = Image.new("RGB", (320, 320), "white")
    draw = ImageDraw.Draw(img)
    for r in range(8):
        for c in range(8):
            v = 230 if r == c else rng.randrange(0, 40)
            draw.rectangle(
                [c * 40, r * 40, c * 40 + 39, r * 40 + 39], fill=(255 - v, 255 - v // 2, 255)
            )
    buf = io.BytesIO()
    img.save(buf, "PNG")
    (tmp / "confusion_matrix.png").write_bytes(buf.getvalue())
    client.log_artifact(best, str(tmp / "confusion_matrix.png"), "eval")
    client.ctx.agent.flush()
    return ids


def shoot(url: str, ids: dict[str, str], out: Path) -> list[Path]:
    """Photograph the main pages into ``out``."""
    from playwright.sync_api import sync_playwright

    exp, best = ids["experiment"], ids["best"]
    shots = []
    with sync_playwright() as p:
        browser = launch_chromium(p)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.on("pageerror", lambda e: print("page error:", e, file=sys.stderr))

        def snap(name: str) -> None:
            path = out / f"ui-{name}.png"
            page.screenshot(path=str(path))
            shots.append(path)

        page.goto(f"{url}/#/")
        page.wait_for_selector("table.experiments tbody tr")
        snap("experiments")
        page.goto(
            f"{url}/#/experiments/{exp}?cols=metrics.val/accuracy,metrics.train/loss,params.lr,params.optimizer&sort=-metrics.val/accuracy"
        )
        page.wait_for_selector(".vrows .row")
        box = page.get_by_label("Filter runs")
        box.fill("params.optimizer = 'adam' OR metrics.`val/accuracy` > 0.9")
        box.press("Enter")
        page.wait_for_function("() => document.querySelectorAll('.vrows .row').length === 4")
        for i in range(3):
            page.locator(".vrows .row input[type=checkbox]").nth(i).check()
        snap("runs")
        page.goto(f"{url}/#/experiments/{exp}/runs/{best}")
        page.wait_for_selector('.chart[data-key="train/loss"][data-state="drawn"]')
        page.wait_for_selector('.chart[data-key="val/accuracy"][data-state="drawn"]')
        snap("run")
        page.evaluate("() => document.querySelector('section.system').scrollIntoView()")
        page.wait_for_selector(
            f'.chart[data-key="system/{NODES[0]}/gpu_0_memory_usage_megabytes"][data-state="drawn"]'
        )
        page.wait_for_timeout(300)
        snap("system")
        page.evaluate("() => document.querySelector('.artifacts').scrollIntoView()")
        page.get_by_role("button", name="eval/").click()
        page.get_by_role("button", name="per_class.csv").click()
        page.wait_for_selector(".preview table.csv")
        snap("artifacts")
        page.goto(f"{url}/#/compare-runs?runs={ids['compare']}")
        page.wait_for_selector(".scatter canvas")
        page.evaluate("() => document.querySelector('table.diff').scrollIntoView()")
        page.wait_for_selector('.chart[data-key="train/loss"][data-state="drawn"]')
        page.wait_for_timeout(300)
        snap("compare")
        query = urllib.parse.urlencode({"experiment": exp, "filter": "params.model = 'resnet50'"})
        page.goto(f"{url}/#/compare-runs?{query}")
        page.wait_for_selector('.chart[data-key="train/loss"][data-state="drawn"]')
        page.get_by_label("group by").select_option("params.optimizer")
        page.evaluate("() => document.querySelector('.chart-group').scrollIntoView()")
        page.wait_for_timeout(300)
        snap("compare-grouped")
        browser.close()
    return shots


def main() -> int:
    """Fill, serve, photograph."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "docs")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(prefix="flightlog-shots-") as d,
        collector(Path(d) / "store") as url,
    ):
        ids = fill(url, Path(d))
        for path in shoot(url, ids, args.out):
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark of the web UI in a real browser (issue 12).

Builds a store in a temporary directory (written through the store directly, so that
building 20M points takes a minute, not the SDK's ingest time), starts a real collector
process on it and drives Debian's chromium with Playwright, timing what a person waits
for (medians of --repeat runs, each in a fresh page):

  - a run page with a 10,000,000-point metric: navigation to the chart drawn, and the
    size of each series payload;
  - zoom: a drag over the chart to the re-fetched range drawn;
  - an experiment with 10,000 runs: navigation to the table's first rows, and to all
    10,000 loaded;
  - compare of 20 runs x 5 keys x 100,000 points: navigation to all 5 charts drawn;
  - a run with 3,000 metric keys: navigation to the first chart drawn, charts fetched
    at open, and charts fetched while scrolling the whole page (only those on screen);
  - 1,000 runs on one chart: navigation to the chart drawn.

Beside each row, the same page in MLflow's own UI (bench/ui_mlflow.py: ``mlflow server``
from the full ``mlflow`` package, filled through its REST API at smaller sizes, in the
same browser); --no-mlflow skips it.

Run: python bench/bench_ui.py [--repeat 5] [--points 10000000] [--no-mlflow]
The figures depend on the machine; a shared 2-core machine is noisy.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
import uuid
from array import array
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import ui_mlflow
from ui_harness import collector, launch_chromium

from flightlog.collector.store import SqliteStore

CHUNK = 100_000
DRAWN = '.chart[data-key="{}"][data-state="drawn"]'


def _series(store: SqliteStore, rid: str, key: str, n: int, t0: float, spike: int = -1) -> None:
    for start in range(0, n, CHUNK):
        end = min(n, start + CHUNK)
        steps = array("q", range(start, end))
        vals = array(
            "d", (math.sin(i / 5000) + (i * 7919) % 1000 / 5000 for i in range(start, end))
        )
        if start <= spike < end:
            vals[spike - start] = 50.0
        ts = array("d", (t0 + i * 0.01 for i in range(start, end)))
        store.apply_batch(None, [], [(rid, key, steps, vals, ts)])


def _run(store: SqliteStore, exp: str, name: str, t0: float) -> str:
    rid = uuid.uuid4().hex
    args = {"run_id": rid, "experiment_id": exp, "run_name": name, "start_time": int(t0 * 1000)}
    store.apply_batch(None, [("create_run", args)], [])
    return rid


def build(d: Path, points: int) -> dict[str, Any]:
    """Fill the store; returns the ids the measurements need."""
    store = SqliteStore(d / "flightlog.db", (d / "artifacts").as_uri())
    t0 = time.time() - 86400
    out: dict[str, Any] = {}
    # A run with one long series (and a spike).
    exp = store.create_experiment("long", None, {})
    out["long_exp"], out["long"] = exp, _run(store, exp, "ten-million", t0)
    _series(store, out["long"], "loss", points, t0, spike=points * 2 // 3)
    # 10,000 runs with 10 params, 10 metrics and 5 tags each.
    exp = store.create_experiment("wide", None, {})
    out["wide_exp"] = exp
    ops: list[Any] = []
    series: list[Any] = []
    for i in range(10_000):
        rid = uuid.uuid4().hex
        tags = {f"t{k}": f"v{i % 7}" for k in range(5)}
        ops.append(
            (
                "create_run",
                {"run_id": rid, "experiment_id": exp, "run_name": f"r{i}", "tags": tags,
                 "start_time": int(t0 * 1000) + i},
            )
        )  # fmt: skip
        params = {f"p{k}": str(i % (k + 3)) for k in range(10)}
        ops.append(("log_params", {"run_id": rid, "params": params}))
        for k in range(10):
            one = (array("q", [0]), array("d", [i / 10_000 + k]), array("d", [t0]))
            series.append((rid, f"m{k}", *one))
        if len(ops) >= 2000:
            store.apply_batch(None, ops, series)
            ops, series = [], []
    store.apply_batch(None, ops, series)
    # 20 runs x 5 keys x 100,000 points.
    exp = store.create_experiment("compare", None, {})
    out["compare"] = [_run(store, exp, f"c{i}", t0) for i in range(20)]
    for rid in out["compare"]:
        for k in range(5):
            _series(store, rid, f"k{k}", 100_000, t0)
    # A run with 3,000 keys of 100 points.
    exp = store.create_experiment("keys", None, {})
    out["keys_exp"], out["keys"] = exp, _run(store, exp, "three-thousand-keys", t0)
    steps = array("q", range(100))
    ts = array("d", (t0 + i for i in range(100)))
    batch = []
    for k in range(3000):
        vals = array("d", ((i * (k + 1)) % 17 / 17 for i in range(100)))
        batch.append((out["keys"], f"group{k // 100:02d}/key{k:04d}", steps, vals, ts))
        if len(batch) == 500:
            store.apply_batch(None, [], batch)
            batch = []
    store.apply_batch(None, [], batch)
    # 1,000 runs of one key with 1,000 points.
    exp = store.create_experiment("thousand", None, {})
    out["thousand_exp"] = exp
    steps = array("q", range(1000))
    ts = array("d", (t0 + i for i in range(1000)))
    batch = []
    for i in range(1000):
        rid = _run(store, exp, f"s{i}", t0)
        vals = array("d", (math.exp(-s / (200 + i)) for s in range(1000)))
        batch.append((rid, "loss", steps, vals, ts))
        if len(batch) == 100:
            store.apply_batch(None, [], batch)
            batch = []
    store.apply_batch(None, [], batch)
    store.close()
    return out


class Timed(list[float]):
    """Measurements in ms, and the first visit's, which was not counted."""

    first: float | None = None


def timed(browser: Any, repeat: int, go: Callable[[Any], float]) -> list[float]:
    """``go(page)`` returns one measurement in ms; each repeat gets a fresh page."""
    out = []
    for _ in range(repeat + 1):  # the first warms the collector's caches and is dropped
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        page.set_default_timeout(120_000)
        out.append(go(page))
        context.close()
    kept = Timed(out[1:])
    kept.first = out[0]  # shown beside the range: the collector's caches were cold
    return kept


def since(t: float) -> float:
    """Milliseconds since perf_counter() read t."""
    return (time.perf_counter() - t) * 1000


def row(what: str, ms: list[float], target: str, mlflow: str) -> None:
    """One line of the README's table, with MLflow's UI's cell."""
    spread = f"{min(ms):,.0f}-{max(ms):,.0f}"
    first = getattr(ms, "first", None)
    spread += "" if first is None else f" (first visit {first:,.0f})"
    print(f"| {what} | {statistics.median(ms):,.0f} ms | {spread} | {target} | {mlflow} |")


class Pages:
    """The measurements, each on a fresh page."""

    def __init__(self, url: str, ids: dict[str, Any]) -> None:
        self.url = url
        self.ids = ids
        self.sizes: list[int] = []
        self.loaded: list[float] = []
        self.fetched: list[tuple[int, int, int]] = []

    def run_url(self, exp: str, run: str) -> str:
        return f"{self.url}/#/experiments/{self.ids[exp]}/runs/{self.ids[run]}"

    def long_run(self, page: Any) -> float:
        def size(r: Any) -> None:
            if "/ui/metrics" in r.url:
                self.sizes.append(len(r.body()))

        page.on("response", size)
        t = time.perf_counter()
        page.goto(self.run_url("long_exp", "long"))
        page.wait_for_selector(DRAWN.format("loss"))
        return since(t)

    def zoom(self, page: Any) -> float:
        page.goto(self.run_url("long_exp", "long"))
        page.wait_for_selector(DRAWN.format("loss"))
        box = page.locator('.chart[data-key="loss"] .u-over').bounding_box()
        y = box["y"] + box["height"] / 2
        page.mouse.move(box["x"] + box["width"] * 0.6, y)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] * 0.7, y, steps=3)
        t = time.perf_counter()
        page.mouse.up()
        page.wait_for_function(
            "() => { const c = document.querySelector('.chart[data-key=\"loss\"]');"
            " return c.dataset.state === 'drawn' &&"
            " c.querySelector('.chart-status').textContent.startsWith('steps'); }"
        )
        return since(t)

    def table(self, page: Any) -> float:
        t = time.perf_counter()
        page.goto(f"{self.url}/#/experiments/{self.ids['wide_exp']}")
        page.wait_for_selector(".vrows .row")
        first = since(t)
        page.wait_for_function(
            "() => document.querySelector('.count').textContent === '10000 runs'"
        )
        self.loaded.append(since(t))
        return first

    def compare(self, page: Any) -> float:
        page.set_viewport_size({"width": 1400, "height": 3000})  # all 5 charts on screen
        t = time.perf_counter()
        page.goto(f"{self.url}/#/compare-runs?runs={','.join(self.ids['compare'])}")
        page.wait_for_function(
            "() => document.querySelectorAll('.chart[data-state=\"drawn\"]').length === 5"
        )
        return since(t)

    def many_keys(self, page: Any) -> float:
        calls: list[str] = []
        page.on("request", lambda r: calls.append(r.url) if "/ui/metrics" in r.url else None)
        t = time.perf_counter()
        page.goto(self.run_url("keys_exp", "keys"))
        page.wait_for_selector(".chart[data-state='drawn']")
        took = since(t)
        page.wait_for_timeout(500)
        at_open = len(calls)
        for _ in range(30):
            page.mouse.wheel(0, 4000)
            page.wait_for_timeout(50)
        self.fetched.append((at_open, len(calls), page.locator(".chart-slot").count()))
        return took

    def thousand(self, page: Any) -> float:
        t = time.perf_counter()
        page.goto(f"{self.url}/#/compare-runs?experiment={self.ids['thousand_exp']}")
        page.wait_for_selector(DRAWN.format("loss"))
        return since(t)


def main() -> int:
    """Build, serve, measure, print the README's table."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--points", type=int, default=10_000_000)
    ui_mlflow.add_arguments(p)
    args = p.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="flightlog-bench-ui-") as d:
        t = time.perf_counter()
        ids = build(Path(d) / "store", args.points)
        print(f"built the store in {time.perf_counter() - t:.0f} s")
        with collector(Path(d) / "store") as url, sync_playwright() as pw:
            browser = launch_chromium(pw)
            mf = ui_mlflow.measure(args, browser, timed, Path(d))
            m = Pages(url, ids)
            n = args.repeat
            print("| page | median | range | target | MLflow's UI |\n|---|---|---|---|---|")
            row(
                f"run page, {args.points:,}-point metric: chart drawn",
                timed(browser, n, m.long_run),
                "<= 500 ms",
                mf["long"],
            )
            largest = f"{max(m.sizes) / 1024:,.0f} KB"
            print(
                f"|   series payload | {largest} (largest of {len(m.sizes)}) | | <= 200 KB"
                f" | {mf['payload']} |"
            )
            row(
                "zoom: drag to re-fetched range drawn",
                timed(browser, n, m.zoom),
                "<= 200 ms",
                mf["zoom"],
            )
            row(
                "experiment, 10,000 runs: table visible",
                timed(browser, n, m.table),
                "<= 1 s",
                mf["table"],
            )
            row("experiment, 10,000 runs: all 10,000 loaded", m.loaded[1:], "", mf["loaded"])
            row(
                "compare 20 runs x 5 keys x 100,000 points: drawn",
                timed(browser, n, m.compare),
                "<= 1 s",
                mf["compare"],
            )
            row(
                "run with 3,000 keys: first chart drawn",
                timed(browser, n, m.many_keys),
                "<= 1 s",
                mf["keys"],
            )
            a, b, slots = m.fetched[-1]
            print(
                f"|   charts fetched at open / after 30 wheel scrolls | {a} / {b} of {slots} |"
                f" | only on screen | {mf['fetched']} |"
            )
            row(
                "1,000 runs on one chart: drawn",
                timed(browser, n, m.thousand),
                "<= 1 s",
                mf["thousand"],
            )
            browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

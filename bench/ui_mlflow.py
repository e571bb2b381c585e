"""MLflow's own web UI beside ours in bench/bench_ui.py (issue 12).

``mlflow server`` from the full ``mlflow`` package (the UI bundle is only in that
distribution, not in ``mlflow-skinny``), installed in its own virtualenv under the
peers' cache (bench/bench_peers.py's machinery), with a SQLite backend in a temporary
directory and its GenAI job runner off. It is filled through its REST API
(``runs/log-batch``, 1,000 metrics per call, MLflow's limit) with the shapes bench_ui
uses, scaled down to what MLflow takes in reasonable time (:class:`Sizes`), and the
same pages are timed with Playwright in MLflow's UI:

- run page, "Model metrics" tab: navigation to the metric's chart drawn (a plotly
  trace path with points), and the bytes of the metric-history responses;
- experiment page: navigation to the runs table's first rows (ag-grid rows);
- compare of 20 runs x 5 keys: the experiment's chart view (MLflow's curves of many
  runs per key) with those 20 runs, navigation to all 5 charts drawn;
- a run with 3,000 keys: navigation to the first chart drawn, and the charts on the
  page (MLflow mounts and fetches them in sections, not per screen);
- 1,000 runs on one chart: the metric page (``#/metric``, where MLflow's compare page
  links) with ``--mlflow-chart-runs`` of them (100: with all 1,000 the page was not
  drawn, and still busy, 12 minutes after navigation).

Filling takes about 11 minutes with the default sizes on a busy 2-core machine;
``--mlflow-dir`` keeps the filled store for the next run.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import re
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from bench_peers import Peer, ensure_venv

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.mlflow_server import start_mlflow_server

#: The full package: ``mlflow-skinny`` (the tests' server) carries no UI.
PEER = Peer("mlflow-full", ["mlflow>=3.0"], "mlflow")


@dataclass
class Sizes:
    """What MLflow's store is filled with: bench_ui's shapes, scaled down to what MLflow
    takes in through its REST API in about a quarter of an hour on a shared 2-core
    machine (about 2 log-batch calls of 1,000 points a second, and 10-15 small calls)."""

    long_points: int = 300_000
    runs: int = 2_000
    compare_runs: int = 20
    compare_keys: int = 5
    compare_points: int = 2_000
    keys: int = 3_000
    key_points: int = 100
    many_runs: int = 1_000
    many_points: int = 100


class Rest:
    """MLflow's REST API over one keep-alive connection per thread."""

    def __init__(self, url: str) -> None:
        self.netloc = urlsplit(url).netloc
        self.local = threading.local()

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``/api/2.0/mlflow/<path>``; the JSON answer, or raise with MLflow's error."""
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        for attempt in (1, 2):
            conn = getattr(self.local, "conn", None)
            if conn is None:
                conn = self.local.conn = http.client.HTTPConnection(self.netloc, timeout=300)
            try:
                conn.request("POST", f"/api/2.0/mlflow/{path}", data, headers)
                r = conn.getresponse()
                out = r.read()
                break
            except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
                # The server closed an idle keep-alive connection: open a new one.
                conn.close()
                self.local.conn = None
                if attempt == 2:
                    raise
        if r.status != 200:
            raise RuntimeError(f"MLflow {path}: {r.status} {out[:300]!r}")
        return dict(json.loads(out or b"{}"))

    def experiment(self, name: str) -> str:
        # MLflow 3's UI asks what kind an experiment is unless this tag says so.
        tags = [{"key": "mlflow.experimentKind", "value": "custom_model_development"}]
        return str(self.post("experiments/create", {"name": name, "tags": tags})["experiment_id"])

    def run(self, exp: str, name: str, t0: float, tags: dict[str, str] | None = None) -> str:
        body: dict[str, Any] = {
            "experiment_id": exp,
            "run_name": name,
            "start_time": int(t0 * 1000),
            "tags": [{"key": k, "value": v} for k, v in (tags or {}).items()],
        }
        return str(self.post("runs/create", body)["run"]["info"]["run_id"])

    def metrics(self, rid: str, points: list[dict[str, Any]]) -> None:
        """Log ``points`` in batches of 1,000 (MLflow's limit per log-batch)."""
        for i in range(0, len(points), 1000):
            self.post("runs/log-batch", {"run_id": rid, "metrics": points[i : i + 1000]})


def _points(key: str, steps: range, value: Callable[[int], float], t0: float) -> list[Any]:
    return [
        {"key": key, "value": value(s), "timestamp": int((t0 + s * 0.01) * 1000), "step": s}
        for s in steps
    ]


def _wave(i: int) -> float:
    return math.sin(i / 5000) + (i * 7919) % 1000 / 5000


def fill(url: str, sizes: Sizes, threads: int = 4) -> dict[str, Any]:
    """Fill MLflow through its REST API; the ids the pages need."""
    api = Rest(url)
    t0 = time.time() - 86400
    out: dict[str, Any] = {}
    pool = ThreadPoolExecutor(threads)

    took: dict[str, float] = {}
    out["fill_s"] = took
    clock = [time.perf_counter()]

    def each(fn: Callable[[Any], Any], items: Any) -> list[Any]:
        return list(pool.map(fn, items))

    def done(part: str) -> None:
        now = time.perf_counter()
        took[part] = now - clock[0]
        clock[0] = now
        print(f"MLflow took in {part} in {took[part]:.0f} s", flush=True)

    # A run with one long series (and a spike), logged in parallel slices.
    out["long_exp"] = exp = api.experiment("long")
    out["long"] = rid = api.run(exp, "long-series", t0)
    n, spike = sizes.long_points, sizes.long_points * 2 // 3
    step = 100_000
    each(
        lambda a: api.metrics(
            rid,
            _points(
                "loss", range(a, min(n, a + step)), lambda s: 50.0 if s == spike else _wave(s), t0
            ),
        ),
        range(0, n, step),
    )
    done(f"a {n:,}-point metric")
    # Runs with 10 params, 10 metrics and 5 tags each.
    out["wide_exp"] = exp = api.experiment("wide")

    def wide(i: int) -> None:
        rid = api.run(exp, f"r{i}", t0 + i / 1000, {f"t{k}": f"v{i % 7}" for k in range(5)})
        body = {
            "run_id": rid,
            "params": [{"key": f"p{k}", "value": str(i % (k + 3))} for k in range(10)],
            "metrics": [
                {"key": f"m{k}", "value": i / sizes.runs + k, "timestamp": int(t0 * 1000),
                 "step": 0}
                for k in range(10)
            ],
        }  # fmt: skip
        api.post("runs/log-batch", body)

    each(wide, range(sizes.runs))
    done(f"{sizes.runs:,} runs")
    # Compare: runs x keys x points.
    out["compare_exp"] = exp = api.experiment("compare")
    out["compare"] = each(lambda i: api.run(exp, f"c{i}", t0), range(sizes.compare_runs))
    each(
        lambda rk: api.metrics(rk[0], _points(f"k{rk[1]}", range(sizes.compare_points), _wave, t0)),
        [(r, k) for r in out["compare"] for k in range(sizes.compare_keys)],
    )
    done(f"{sizes.compare_runs} runs x {sizes.compare_keys} keys x {sizes.compare_points:,} points")
    # A run with thousands of keys.
    out["keys_exp"] = exp = api.experiment("keys")
    out["keys"] = rid = api.run(exp, "three-thousand-keys", t0)
    per_call = max(1, 1000 // sizes.key_points)
    each(
        lambda k0: api.metrics(
            rid,
            [
                p
                for k in range(k0, min(sizes.keys, k0 + per_call))
                for p in _points(
                    f"group{k // 100:02d}/key{k:04d}",
                    range(sizes.key_points),
                    lambda s, k=k: (s * (k + 1)) % 17 / 17,
                    t0,
                )
            ],
        ),
        range(0, sizes.keys, per_call),
    )
    done(f"{sizes.keys:,} keys x {sizes.key_points} points")
    # Many runs of one key.
    out["many_exp"] = exp = api.experiment("thousand")

    def many(i: int) -> str:
        rid = api.run(exp, f"s{i}", t0)
        api.metrics(
            rid, _points("loss", range(sizes.many_points), lambda s: math.exp(-s / (200 + i)), t0)
        )
        return rid

    out["many"] = each(many, range(sizes.many_runs))
    done(f"{sizes.many_runs:,} runs x {sizes.many_points:,} points")
    pool.shutdown()
    return out


@contextmanager
def mlflow_ui(
    cache: Path, directory: Path, sizes: Sizes
) -> Iterator[tuple[str, dict[str, Any]] | None]:
    """``mlflow server`` from the full package on a store filled with ``sizes``; yields its
    URL and the ids, or None (with the reason printed) when MLflow cannot be installed.

    A ``directory`` kept from an earlier run with the same sizes is served as it is (its
    ``ids.json`` says what it holds): filling MLflow takes many minutes.
    """
    cache.mkdir(parents=True, exist_ok=True)
    ensure_venv(cache, PEER)
    if PEER.why_not:
        print(f"MLflow's UI not measured: {PEER.why_not}", flush=True)
        yield None
        return
    saved = directory / "ids.json"
    ids = json.loads(saved.read_text()) if saved.exists() else {}
    if ids.get("sizes") != asdict(sizes):
        for stale in ("mlflow.db", "ids.json"):
            (directory / stale).unlink(missing_ok=True)
        ids = {}
    server = start_mlflow_server(directory, python=str(PEER.python(cache)), workers=2)
    try:
        if not ids:
            ids = {**fill(server.url, sizes), "sizes": asdict(sizes)}
            saved.write_text(json.dumps(ids))
        yield server.url, ids
    finally:
        server.stop()


#: Before any of MLflow's scripts: its assistant panel opens itself on a first visit and
#: takes a third of the window; a user closes it once, so the bench starts with it closed.
NO_ASSISTANT = (
    "localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');"
    "localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');"
)
HISTORY = "/metrics/get-history"
#: Plotly draws a trace as a path; a chart is drawn when it has its traces with points.
TRACES_DRAWN = """([sel, plots, traces]) => {
  const ps = [...document.querySelectorAll(sel)];
  return ps.length >= plots && ps.every(p =>
    [...p.querySelectorAll('.scatterlayer .trace path.js-line')]
      .filter(l => (l.getAttribute('d') || '').length > 2).length >= traces);
}"""


def _drawn(page: Any, plots: int, traces: int, sel: str = ".js-plotly-plot") -> None:
    # Polled on a timer, not per frame: with 1,000 runs MLflow's page stops drawing frames,
    # and a per-frame wait then never times out.
    page.wait_for_function(TRACES_DRAWN, arg=[sel, plots, traces], polling=100)


def _metric_page(runs: list[str], exp: str, keys: list[str]) -> str:
    """MLflow's metric page for ``runs`` and ``keys`` (its own getMetricPageRoute)."""
    js = json.dumps
    return (
        f"/#/metric?runs={js(runs, separators=(',', ':'))}&metric={quote(js(keys[0]))}"
        f"&experiments={js([exp])}&plot_metric_keys={quote(js(keys))}&plot_layout={{}}"
        "&x_axis=step&y_axis_scale=linear&line_smoothness=1&show_point=false"
        "&deselected_curves=[]&last_linear_y_axis_range=[]"
    )


class MlflowPages:
    """bench_ui's measurements, in MLflow's UI; each ``go(page)`` returns ms."""

    def __init__(self, url: str, ids: dict[str, Any], sizes: Sizes) -> None:
        self.url = url
        self.ids = ids
        self.sizes = sizes
        self.payloads: list[int] = []
        self.spike_seen: list[bool] = []
        self.fetched: list[tuple[int, int, int]] = []
        self.zoom_refetch: list[bool] = []
        self.matching = ""
        self.chart_runs = sizes.many_runs

    def _open(self, page: Any, path: str) -> float:
        page.context.add_init_script(NO_ASSISTANT)
        t = time.perf_counter()
        page.goto(self.url + path)
        return t

    def run_path(self, exp: str, run: str) -> str:
        return f"/#/experiments/{self.ids[exp]}/runs/{self.ids[run]}/model-metrics"

    def long_run(self, page: Any) -> float:
        bodies: list[bytes] = []
        page.on("response", lambda r: bodies.append(r.body()) if HISTORY in r.url else None)
        t = self._open(page, self.run_path("long_exp", "long"))
        _drawn(page, 1, 1)
        took = (time.perf_counter() - t) * 1000
        page.wait_for_timeout(200)
        self.payloads += [len(b) for b in bodies]
        values = [m["value"] for b in bodies for m in json.loads(b).get("metrics", [])]
        self.spike_seen.append(bool(values) and max(values) >= 50.0)
        return took

    def zoom(self, page: Any) -> float:
        self._open(page, self.run_path("long_exp", "long"))
        _drawn(page, 1, 1)
        box = page.locator(".js-plotly-plot .nsewdrag").first.bounding_box()
        y = box["y"] + box["height"] / 2
        page.mouse.move(box["x"] + box["width"] * 0.6, y)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] * 0.7, y, steps=3)
        try:
            with page.expect_response(
                lambda r: HISTORY in r.url and "start_step" in r.url, timeout=10_000
            ):
                t = time.perf_counter()
                page.mouse.up()
        except Exception:  # Playwright's TimeoutError: MLflow drew the zoom from what it had
            self.zoom_refetch.append(False)
            return math.nan
        page.evaluate(
            "() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))"
        )
        self.zoom_refetch.append(True)
        return (time.perf_counter() - t) * 1000

    def table(self, page: Any) -> float:
        t = self._open(page, f"/#/experiments/{self.ids['wide_exp']}/runs")
        page.wait_for_selector(".ag-center-cols-container .ag-row")
        took = (time.perf_counter() - t) * 1000
        # It loads runs in pages ("Load more"); the footer says how many it holds.
        self.matching = page.get_by_text(re.compile(r"^\d+ matching runs$")).inner_text()
        return took

    def compare(self, page: Any) -> float:
        """The experiment's chart view (MLflow's overlay of runs per key), all runs shown."""
        page.set_viewport_size({"width": 1400, "height": 3000})
        exp = self.ids["compare_exp"]
        state = f'MLflowLocalStorage-1.1-ExperimentPage-["{exp}"]-ReactComponentState'
        # It shows the first 10 runs unless told "Show all runs"; a user picks that once.
        page.context.add_init_script(
            f'localStorage.setItem({json.dumps(state)}, \'{{"runsHiddenMode":"SHOWALL"}}\')'
        )
        t = self._open(page, f"/#/experiments/{exp}/runs?compareRunsMode=CHART")
        _drawn(page, self.sizes.compare_keys, self.sizes.compare_runs)
        return (time.perf_counter() - t) * 1000

    def many_keys(self, page: Any) -> float:
        calls: list[str] = []
        page.on("request", lambda r: calls.append(r.url) if HISTORY in r.url else None)
        t = self._open(page, self.run_path("keys_exp", "keys"))
        _drawn(page, 1, 1)
        took = (time.perf_counter() - t) * 1000
        page.wait_for_timeout(500)
        at_open = len(calls)
        page.mouse.move(700, 600)  # over the charts, which scroll in their own pane
        for _ in range(30):
            page.mouse.wheel(0, 4000)
            page.wait_for_timeout(50)
        self.fetched.append((at_open, len(calls), self.sizes.keys))
        return took

    def thousand(self, page: Any) -> float:
        runs = self.ids["many"][: self.chart_runs]
        t = self._open(page, _metric_page(runs, self.ids["many_exp"], ["loss"]))
        _drawn(page, 1, len(runs))
        return (time.perf_counter() - t) * 1000


def _patient(go: Callable[[Any], float]) -> Callable[[Any], float]:
    """``go``, or NaN when MLflow's page did not get there within the page's timeout;
    after one such time-out the later repeats are not tried (NaN at once)."""
    gave_up: list[bool] = []

    def run(page: Any) -> float:
        if gave_up:
            return math.nan
        try:
            return go(page)
        except Exception as e:  # Playwright's TimeoutError, whose module is imported lazily
            if type(e).__name__ != "TimeoutError":
                raise
            gave_up.append(True)
            return math.nan

    return run


def _cell(ms: list[float], timeout_s: float) -> str:
    """A table cell: the median and range, or how often the page never got there."""
    done = [x for x in ms if not math.isnan(x)]
    if not done:
        return f"not drawn in {timeout_s:.0f} s"
    out = f"{statistics.median(done):,.0f} ms ({min(done):,.0f}-{max(done):,.0f})"
    if len(done) < len(ms):
        out += f", {len(ms) - len(done)} of {len(ms)} not drawn in {timeout_s:.0f} s"
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    """bench_ui's flags for the MLflow column."""
    p.add_argument(
        "--mlflow",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="measure MLflow's own UI beside ours (installs the full mlflow package)",
    )
    p.add_argument("--mlflow-cache", type=Path, default=Path.home() / ".cache" / "flightlog-bench")
    p.add_argument(
        "--mlflow-dir",
        type=Path,
        default=None,
        help="keep MLflow's filled store here and reuse it next time (filling takes minutes)",
    )
    p.add_argument("--mlflow-repeat", type=int, default=None, help="default: --repeat")
    p.add_argument("--mlflow-timeout", type=float, default=120.0, help="seconds per page")
    p.add_argument(
        "--mlflow-chart-runs",
        type=int,
        default=100,
        help="runs on MLflow's one-chart page (of --mlflow-many-runs; with all 1,000 its"
        " tab was still busy 12 minutes on and never drawn)",
    )
    for f in fields(Sizes):
        p.add_argument(f"--mlflow-{f.name.replace('_', '-')}", type=int, default=f.default)


def measure(
    args: argparse.Namespace,
    browser: Any,
    timed: Callable[[Any, int, Callable[[Any], float]], list[float]],
    scratch: Path,
) -> dict[str, str]:
    """MLflow's cells for bench_ui's rows (keyed as :data:`ROWS`), measured with ``browser``
    and bench_ui's ``timed``; every cell says why when MLflow was not measured."""
    if not args.mlflow:
        return dict.fromkeys(ROWS, "not measured (--no-mlflow)")
    sizes = Sizes(**{f.name: getattr(args, f"mlflow_{f.name}") for f in fields(Sizes)})
    with mlflow_ui(args.mlflow_cache, args.mlflow_dir or scratch / "mlflow", sizes) as up:
        if up is None:
            return dict.fromkeys(ROWS, "not measured (no mlflow)")
        url, ids = up
        m = MlflowPages(url, ids, sizes)
        n = args.mlflow_repeat or args.repeat
        limit = args.mlflow_timeout

        def cell(go: Callable[[Any], float]) -> str:
            def bounded(page: Any) -> float:
                page.set_default_timeout(limit * 1000)
                return go(page)

            got = _cell(timed(browser, n, _patient(bounded)), limit)
            print(f"MLflow's UI, {go.__name__}: {got}", flush=True)
            return got

        out = {"long": cell(m.long_run)}
        spikes = sum(m.spike_seen[1:])
        out["payload"] = (
            f"{max(m.payloads) / 1024:,.0f} KB (largest of {len(m.payloads)});"
            f" spike in it {spikes} of {len(m.spike_seen) - 1} times"
        )
        out["zoom"] = cell(m.zoom)
        if not any(m.zoom_refetch):
            out["zoom"] = "no re-fetch (zooms into the points it has)"
        out["table"] = cell(m.table)
        out["loaded"] = f"{m.matching} shown, more on 'Load more'" if m.matching else ""
        out["compare"] = cell(m.compare)
        out["keys"] = cell(m.many_keys)
        a, b, total = m.fetched[-1] if m.fetched else (0, 0, sizes.keys)
        out["fetched"] = f"{a} / {b} of {total}"
        m.chart_runs = min(args.mlflow_chart_runs, sizes.many_runs)
        out["thousand"] = f"{cell(m.thousand)} with {m.chart_runs:,} runs"
        print(f"MLflow's store: {describe(sizes)}", flush=True)
        return out


#: bench_ui's rows, in its order.
ROWS = ("long", "payload", "zoom", "table", "loaded", "compare", "keys", "fetched", "thousand")


def describe(sizes: Sizes) -> str:
    """The sizes MLflow was filled with, for the README."""
    return (
        f"a {sizes.long_points:,}-point metric; {sizes.runs:,} runs x 10 params, 10 metrics,"
        f" 5 tags; {sizes.compare_runs} runs x {sizes.compare_keys} keys x"
        f" {sizes.compare_points:,} points; {sizes.keys:,} keys x {sizes.key_points} points;"
        f" {sizes.many_runs:,} runs x {sizes.many_points:,} points"
    )

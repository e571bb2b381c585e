"""More of the web UI in a real browser (tests/test_ui_browser.py's harness): log scale,
smoothing, the three x modes, YAML and JSON previews, value-at-step cells, sections by
key prefix, and system metrics of a run logged from two nodes. A real collector process
on a store the SDK filled; the assertions read what the page shows (pixels of the
charts' canvas, their axes' tick labels, the table's cells)."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import flightlog as mlflow
from tests.conftest import CollectorProcess
from tests.fake_nvml import FakeDevice, fake_nvml
from tests.test_ui_browser import (  # noqa: F401 (fixtures)
    BLUE,
    browser,
    page,
    pytestmark,
    run_url,
    sync_api,
)

__all__ = ["browser", "page"]  # the fixtures, shared with tests/test_ui_browser.py
REPO = Path(__file__).resolve().parent.parent

# Where a colour shows in a chart's plot area, over the columns [a, b] of its width,
# drawn at an opacity (alpha, 0-255) between lo and hi (the canvas is transparent):
# [top, bottom] as fractions of the plot's height (0 is the top), and the fraction of
# the plot's rows it shows in; null when it does not show there.
_COLOUR_EXTENT_JS = """([el, rgb, a, b, lo, hi]) => {
  const canvas = el.querySelector("canvas"), over = el.querySelector(".u-over");
  const k = canvas.width / canvas.clientWidth;
  const x0 = Math.round(over.offsetLeft * k), y0 = Math.round(over.offsetTop * k);
  const w = Math.round(over.offsetWidth * k), hh = Math.round(over.offsetHeight * k);
  const px = canvas.getContext("2d").getImageData(x0, y0, w, hh).data;
  let top = null, bottom = null, rows = 0;
  for (let y = 0; y < hh; y++) {
    let hit = false;
    for (let x = Math.floor(w * a); x < Math.floor(w * b); x++) {
      const i = (y * w + x) * 4;
      if (Math.abs(px[i] - rgb[0]) < 40 && Math.abs(px[i + 1] - rgb[1]) < 40 &&
          Math.abs(px[i + 2] - rgb[2]) < 40 && px[i + 3] > lo && px[i + 3] <= hi) {
        hit = true; break;
      }
    }
    if (hit) { rows++; if (top === null) top = y / hh; bottom = y / hh; }
  }
  return top === null ? null : [top, bottom, rows / hh];
}"""


def chart(page: Any, key: str) -> Any:
    return page.locator(f'.chart[data-key="{key}"]')


def drawn(page: Any, key: str, **attrs: str) -> Any:
    """The chart of a key once drawn (and its axes recorded), optionally with attributes."""
    extra = "".join(f'[data-{k.replace("_", "-")}="{v}"]' for k, v in attrs.items())
    page.wait_for_selector(f'.chart[data-key="{key}"][data-state="drawn"][data-x-ticks]{extra}')
    return chart(page, key)


def extent(
    el: Any, a: float = 0.0, b: float = 1.0, alpha: tuple[int, int] = (200, 255)
) -> list[float] | None:
    """[top, bottom, share of rows] of the first line colour at an opacity in alpha."""
    args = [list(BLUE), a, b, *alpha]
    return el.evaluate(f"(el) => ({_COLOUR_EXTENT_JS})([el, ...{args}])")


def ticks(el: Any, axis: str) -> list[str]:
    return [t for t in (el.get_attribute(f"data-{axis}-ticks") or "").split("|") if t]


def test_log_scale_changes_the_y_axis_and_leaves_non_positive_values_out(
    tracking: CollectorProcess, page: Any
) -> None:
    with mlflow.start_run(run_name="scales") as run:
        for s in range(200):
            mlflow.log_metrics(
                {
                    "loss": 10 ** (4 - 4 * s / 199),  # 10,000 down to 1
                    "delta": float(s - 100),  # negative, zero, then positive
                    "zeros": -float(s % 3),  # nothing a log scale can show
                },
                step=s,
            )
    mlflow.flush()
    page.goto(run_url(tracking, run))
    loss = drawn(page, "loss")
    assert loss.get_attribute("data-y-log") == "false"
    linear = ticks(loss, "y")
    assert "10000" in linear and "10" not in linear
    middle = extent(loss, 0.45, 0.55)
    assert middle is not None and middle[0] > 0.9  # 100 of 10,000: at the bottom

    page.get_by_label("log y").check()
    loss = drawn(page, "loss", y_log="true")
    assert {"1", "10", "100", "1000", "10000"} <= set(ticks(loss, "y"))
    middle = extent(loss, 0.45, 0.55)
    assert middle is not None and 0.35 < middle[0] < 0.65  # a straight line on log y
    assert "log=1" in page.url

    delta = drawn(page, "delta", y_log="true")
    assert all(float(t) > 0 for t in ticks(delta, "y")), ticks(delta, "y")
    # Only the positive half is drawn: the left half of the plot holds no line.
    assert extent(delta, 0.02, 0.48) is None
    assert extent(delta, 0.55, 0.98) is not None
    zeros = drawn(page, "zeros", y_log="true")
    assert extent(zeros) is None  # drawn empty, not an error (the page fixture checks)
    page.get_by_label("log y").uncheck()
    assert extent(drawn(page, "zeros", y_log="false")) is not None


def test_smoothing_draws_the_smoothed_line_over_the_faint_raw_one(
    tracking: CollectorProcess, page: Any
) -> None:
    with mlflow.start_run(run_name="noisy") as run:
        for s in range(200):
            mlflow.log_metric("acc", float(s % 2), step=s)  # 0, 1, 0, 1, ...
    mlflow.flush()
    page.goto(run_url(tracking, run))
    acc = drawn(page, "acc")
    raw = extent(acc, 0.5, 0.95)
    assert raw is not None and raw[2] > 0.8  # the zigzag covers the plot's height
    assert acc.locator(".u-legend .u-label").all_text_contents() == ["step", "acc"]

    page.get_by_label("smoothing").fill("0.9")
    page.wait_for_function(
        "() => document.querySelectorAll('.chart[data-key=\"acc\"] .u-legend .u-label').length"
        " === 3"
    )
    acc = drawn(page, "acc")
    assert acc.locator(".u-legend .u-label").all_text_contents() == ["step", "acc (raw)", "acc"]
    smoothed = extent(acc, 0.5, 0.95)
    # The full-colour line is now the moving average: a narrow band around 0.5 ...
    assert smoothed is not None and smoothed[2] < 0.25
    assert 0.3 < smoothed[0] and smoothed[1] < 0.7
    # ... and the raw zigzag is still there, faint (the same blue at 25% opacity).
    raw_now = extent(acc, 0.5, 0.95, alpha=(20, 0x40 + 10))
    assert raw_now is not None and raw_now[2] > 0.5
    assert "smooth=0.9" in page.url


def test_x_axis_by_step_wall_time_and_relative_time(tracking: CollectorProcess, page: Any) -> None:
    client = mlflow.MlflowClient()
    with mlflow.start_run(run_name="clock") as run:
        start = client.get_run(run.info.run_id).info.start_time
        for s in range(120):  # one point a second, from the run's start
            client.log_metric(
                run.info.run_id, "loss", 1 / (s + 1), timestamp=start + s * 1000, step=s
            )
    mlflow.flush()
    page.goto(run_url(tracking, run))
    loss = drawn(page, "loss")
    assert float(loss.get_attribute("data-x-min") or "nan") == 0
    assert float(loss.get_attribute("data-x-max") or "nan") == 119
    assert all(re.fullmatch(r"\d+", t) for t in ticks(loss, "x")), ticks(loss, "x")

    axis = page.get_by_label("x axis")
    axis.select_option("wall")
    loss = drawn(page, "loss")
    page.wait_for_function(
        "() => Number(document.querySelector('.chart[data-key=\"loss\"]').dataset.xMin) > 1e9"
    )
    assert float(loss.get_attribute("data-x-min") or 0) == pytest.approx(start / 1000, abs=1)
    assert float(loss.get_attribute("data-x-max") or 0) >= start / 1000 + 119
    wall = ticks(loss, "x")
    # Clock times: ":30" between labelled minutes such as "7:07am".
    assert wall and all(re.match(r":\d\d", t) for t in wall), wall
    assert any(re.search(r"\d:\d\d", t) for t in wall), wall

    axis.select_option("relative")
    page.wait_for_function(
        "() => Number(document.querySelector('.chart[data-key=\"loss\"]').dataset.xMin) < 1e9"
    )
    loss = drawn(page, "loss")
    assert float(loss.get_attribute("data-x-min") or "nan") == pytest.approx(0, abs=0.5)
    assert float(loss.get_attribute("data-x-max") or 0) >= 119
    relative = ticks(loss, "x")
    assert relative and all(re.fullmatch(r"\d+(\.\d)?s|\d+m \d\ds", t) for t in relative)
    assert "1m 00s" in relative or "60.0s" in relative, relative
    assert "x=relative" in page.url


def test_a_short_runs_charts_span_its_time_and_ticks_do_not_repeat(
    tracking: CollectorProcess, page: Any
) -> None:
    client = mlflow.MlflowClient()
    exp = mlflow.set_experiment("short").experiment_id
    start = 1_800_000_000_000  # a run of 0.3 s: a key with four points, one with one
    run_id = client.create_run(exp, start_time=start, run_name="short").info.run_id
    for i in range(4):
        client.log_metric(run_id, "loss", 1 / (i + 1), timestamp=start + 100 * i, step=i)
    client.log_metric(run_id, "once", 0.5, timestamp=start + 150, step=0)
    client.set_terminated(run_id, end_time=start + 300)
    run = client.get_run(run_id)
    page.goto(run_url(tracking, run) + "?x=wall")
    for key in ("loss", "once"):
        el = drawn(page, key)
        span = [float(el.get_attribute(f"data-x-{e}") or "nan") for e in ("min", "max")]
        # The run's start to its end, not a day-wide (or years-wide) axis for one point.
        assert span == pytest.approx([start / 1000, start / 1000 + 0.3], abs=1e-3), (key, span)
    page.get_by_label("x axis").select_option("relative")
    page.wait_for_function(
        "() => Number(document.querySelector('.chart[data-key=\"once\"]').dataset.xMin) < 1e9"
    )
    for key in ("loss", "once"):
        el = drawn(page, key)
        span = [float(el.get_attribute(f"data-x-{e}") or "nan") for e in ("min", "max")]
        assert span == pytest.approx([0, 0.3], abs=1e-3), (key, span)
        relative = ticks(el, "x")
        assert len(relative) >= 3 and len(set(relative)) == len(relative), relative
        assert all(re.fullmatch(r"\d\.\d+s", t) for t in relative), relative
    # Compare (no page-wide span): a one-point chart by wall time spans its data, padded
    # by half a second either side, never a day.
    page.goto(f"{tracking.url}/#/compare-runs?runs={run_id}&x=wall")
    page.wait_for_function(
        "() => Number(document.querySelector('.chart[data-key=\"once\"]')?.dataset.xMin) > 1e9"
    )
    el = drawn(page, "once")
    span = [float(el.get_attribute(f"data-x-{e}") or "nan") for e in ("min", "max")]
    assert span == pytest.approx([start / 1000 - 0.35, start / 1000 + 0.65], abs=1e-3), span


def test_json_and_yaml_artifacts_preview_as_text(tracking: CollectorProcess, page: Any) -> None:
    config = {"model": {"name": "<b>cnn</b>", "layers": [64, 32]}, "lr": 0.001}
    yaml_text = "model:\n  name: cnn\n  layers: [64, 32]\n# <script>alert(1)</script>\n"
    with mlflow.start_run(run_name="configs") as run:
        mlflow.log_text(json.dumps(config, separators=(",", ":")), "config.json")
        mlflow.log_text(yaml_text, "config.yaml")
        mlflow.log_text("{not json", "broken.json")
    mlflow.flush()
    page.goto(run_url(tracking, run))
    pre = page.locator(".preview pre.text-preview")
    page.get_by_role("button", name="config.json").click()
    pre.wait_for()
    assert pre.inner_text() == json.dumps(config, indent=2)  # pretty-printed
    assert pre.evaluate("el => el.children.length") == 0  # text, not markup

    page.get_by_role("button", name="config.yaml").click()
    page.wait_for_function(
        "() => document.querySelector('.preview strong').textContent === 'config.yaml'"
    )
    pre.wait_for()
    assert pre.text_content() == yaml_text  # as logged
    assert pre.evaluate("el => el.children.length") == 0
    page.get_by_role("button", name="broken.json").click()
    page.wait_for_function(
        "() => document.querySelector('.preview pre')?.textContent === '{not json'"
    )


def test_metric_cells_at_a_chosen_step(tracking: CollectorProcess, page: Any) -> None:
    exp_id = mlflow.create_experiment("at-step")
    with mlflow.start_run(experiment_id=exp_id, run_name="every"):
        for s in range(10):
            mlflow.log_metric("loss", 10.0 * s, step=s)
    with mlflow.start_run(experiment_id=exp_id, run_name="sparse"):
        for s in (0, 5):
            mlflow.log_metric("loss", 100.0 + s, step=s)
    with mlflow.start_run(experiment_id=exp_id, run_name="late"):
        mlflow.log_metric("loss", 1.0, step=8)
    mlflow.flush()
    page.goto(f"{tracking.url}/#/experiments/{exp_id}?cols=metrics.loss&sort=name")
    page.wait_for_selector(".vrows .row")

    def cells() -> list[str]:
        return list(page.locator(".vrows .row .cell.metrics").all_text_contents())

    assert cells() == ["90", "1", "105"]  # last: every, late, sparse
    page.get_by_label("metric cells").select_option("step")
    step = page.get_by_label("metric step")
    assert step.is_visible()
    step.fill("7")
    step.press("Enter")
    page.locator(".vhead .cell", has_text="loss (@7)").wait_for()
    # "sparse" logged nothing at 7: its value from step 5 shows, marked with its step.
    assert cells() == ["70", "", "105 (@5)"]
    assert "agg=step" in page.url and "step=7" in page.url
    page.locator(".vhead .cell", has_text="loss (@7)").click()  # sort by the cell values
    assert page.locator(".vrows .row .cell.name a").all_text_contents()[:2] == ["every", "sparse"]
    # The address keeps the choice: a reload shows the same cells.
    page.reload()
    page.locator(".vhead .cell", has_text="loss (@7)").wait_for()
    page.wait_for_function("() => document.querySelectorAll('.vrows .cell.metrics').length === 3")
    assert sorted(cells()) == sorted(["70", "", "105 (@5)"])


def test_sections_by_prefix_fold_charts_and_key_search_still_works(
    tracking: CollectorProcess, page: Any
) -> None:
    with mlflow.start_run(run_name="prefixes") as run:
        for s in range(3):
            metrics = {f"train/k{i:03d}": float(i + s) for i in range(120)}
            metrics.update({"val/loss": 1.0 / (s + 1), "val/acc": 0.5, "lr": 0.1})
            mlflow.log_metrics(metrics, step=s)
    mlflow.flush()
    asked: list[str] = []
    page.on("request", lambda r: asked.extend(_keys(r.url)) if "/ui/metrics" in r.url else None)
    page.goto(run_url(tracking, run))
    drawn(page, "lr")
    sections = page.locator(".metrics details.chart-group.depth-0")
    assert [s.get_attribute("data-group") for s in sections.all()] == ["train", "val"]
    assert sections.locator("summary").all_text_contents() == ["train · 120", "val · 2"]
    assert page.locator('.metrics .chart-group:not(details) [data-key="lr"]').count() == 1
    # Titles drop the prefix; only charts near the screen are mounted and fetched.
    assert page.locator('[data-key="train/k000"] .chart-title').first.inner_text() == "k000"
    page.wait_for_timeout(300)
    assert page.locator(".metrics .chart").count() < 40
    assert len(set(asked)) < 40 and "train/k119" not in asked

    train = page.locator('details[data-group="train"]')
    train.locator("summary").click()  # close train/: val/ comes up to the screen
    drawn(page, "val/loss")
    assert train.locator(".chart").count() == 0  # charts of a closed section unmounted
    assert page.locator('details[data-group="val"] .chart').count() == 2

    search = page.get_by_label("Search metric keys")
    search.fill("k11")
    page.wait_for_function("() => document.querySelectorAll('.metrics .chart-slot').length === 10")
    assert train.get_attribute("open") is not None  # a search opens what it matches
    drawn(page, "train/k115")
    search.fill("")
    # The section the user closed is closed again (and holds no chart): lr and val/ only.
    page.wait_for_function("() => document.querySelectorAll('.metrics .chart-slot').length === 3")
    assert page.locator('details[data-group="train"]').get_attribute("open") is None
    page.locator('details[data-group="train"] > summary').click()
    page.wait_for_function("() => document.querySelectorAll('.metrics .chart-slot').length === 123")
    drawn(page, "train/k000")


def _keys(url: str) -> list[str]:
    from urllib.parse import parse_qs, urlsplit

    return parse_qs(urlsplit(url).query).get("key", [])


def test_column_picker_and_compare_charts_group_keys_by_prefix(
    tracking: CollectorProcess, page: Any
) -> None:
    exp_id = mlflow.create_experiment("picker")
    ids = []
    for name in ("a", "b"):
        # (No system metrics even if an earlier test turned them on for this process.)
        with mlflow.start_run(experiment_id=exp_id, run_name=name, log_system_metrics=False) as run:
            # More than 12 keys: the pages group them by prefix (a few stay one grid).
            mlflow.log_metrics({f"grad/g{i:02d}": 0.1 * i for i in range(10)})
            mlflow.log_metrics({"train/loss": 1.0, "train/acc": 0.5, "val/loss": 2.0, "epoch": 1})
            mlflow.log_param("opt/name", name)
        ids.append(run.info.run_id)
    mlflow.flush()
    page.goto(f"{tracking.url}/#/experiments/{exp_id}?cols=metrics.epoch")
    page.wait_for_selector(".vrows .row")
    page.get_by_text("Columns").click()
    metrics = page.locator('.picker-panel fieldset[data-kind="metrics"]')
    metrics.locator("details.key-group").first.wait_for()
    groups = metrics.locator("details.key-group")
    assert [g.get_attribute("data-group") for g in groups.all()] == ["grad", "train", "val"]
    assert all(g.get_attribute("open") is None for g in groups.all())  # many keys: closed
    assert [t.strip() for t in metrics.locator(":scope > label.pick").all_text_contents()] == [
        "epoch"
    ]
    # One click takes every column of a prefix.
    page.get_by_label("all metrics train/").check()
    page.locator(".vhead .cell", has_text="acc").wait_for()
    heads = page.locator(".vhead .cell.head.metrics").all_inner_texts()
    assert heads == ["epoch", "train/acc", "train/loss"]
    train = metrics.locator('details.key-group[data-group="train"]')
    train.locator("summary").click()
    assert [t.strip() for t in train.locator("label.pick").all_text_contents()] == [
        "acc",
        "loss",
    ]
    train.locator("label.pick", has_text="loss").locator("input").uncheck()
    page.wait_for_function(
        "() => !document.querySelector('.vhead').textContent.includes('train/loss')"
    )
    assert page.get_by_label("all metrics train/").evaluate("el => el.indeterminate")
    assert page.locator('.picker-panel fieldset[data-kind="params"] details.key-group').count() == 1
    assert "train%2Facc" in page.url

    page.goto(f"{tracking.url}/#/compare-runs?runs={','.join(ids)}")
    drawn(page, "epoch")
    sections = page.locator("details.chart-group.depth-0")
    assert [s.get_attribute("data-group") for s in sections.all()] == ["grad", "train", "val"]
    page.get_by_label("Search metric keys").fill("loss")
    page.wait_for_function("() => document.querySelectorAll('.chart-slot').length === 2")
    assert sorted(s.get_attribute("data-key") or "" for s in page.locator(".chart-slot").all()) == [
        "train/loss",
        "val/loss",
    ]
    drawn(page, "val/loss", points="2")


_NODE_B = """
import sys, time
import flightlog as mlflow
mlflow.set_tracking_uri(sys.argv[1])
mlflow.start_run(run_id=sys.argv[2], log_system_metrics=True)
time.sleep(float(sys.argv[3]))
mlflow.end_run()
"""

_FAKE_PYNVML = """
import sys
from tests.fake_nvml import FakeDevice, fake_nvml
sys.modules[__name__] = fake_nvml(
    [FakeDevice(uuid=f"GPU-b{i}", util=70 + i, temp=50 + i) for i in range(2)]
)
"""


def test_system_metrics_of_two_nodes_show_per_node_and_per_gpu_on_the_training_time_axis(
    tracking: CollectorProcess, page: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Two "nodes" log system metrics into one run: this process as node-a and a child
    process as node-b, each through the SDK's own sampler with FLIGHTLOG_NODE set and
    NVML faked at its seam (two GPUs each)."""
    monkeypatch.setitem(
        sys.modules,
        "pynvml",
        fake_nvml([FakeDevice(uuid=f"GPU-a{i}", util=20 + i) for i in range(2)]),
    )
    monkeypatch.setenv("FLIGHTLOG_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    monkeypatch.setenv("FLIGHTLOG_NODE", "node-a")
    fake = tmp_path / "fake_nvml"
    fake.mkdir()
    (fake / "pynvml.py").write_text(_FAKE_PYNVML)
    run = mlflow.start_run(run_name="two-nodes", log_system_metrics=True)
    env = {
        **os.environ,
        "FLIGHTLOG_NODE": "node-b",
        "PYTHONPATH": os.pathsep.join([str(fake), str(REPO)]),
    }
    child = subprocess.Popen(
        [sys.executable, "-c", _NODE_B, tracking.url, run.info.run_id, "1.5"], env=env
    )
    for s in range(30):
        mlflow.log_metric("train/loss", math.exp(-s / 10), step=s)
        time.sleep(0.07)
    assert child.wait(timeout=60) == 0
    mlflow.end_run()
    mlflow.flush()

    page.goto(run_url(tracking, run) + "?x=relative")
    system = page.locator("section.system")
    system.wait_for()
    nodes = system.locator("details.chart-group.depth-0")
    assert [n.get_attribute("data-group") for n in nodes.all()] == [
        "system/node-a",
        "system/node-b",
    ]
    assert nodes.locator(":scope > summary h3").all_text_contents()[0].startswith("node node-a")
    gpu_spans = []
    for node, util in (("node-a", 20), ("node-b", 70)):
        parts = system.locator(f'details[data-group="system/{node}"] details.depth-1')
        titles = [t.split(" · ")[0] for t in parts.locator("summary").all_text_contents()]
        assert titles == ["host", "GPU 0", "GPU 1"]
        for gpu in (0, 1):
            panel = parts.nth(gpu + 1)
            keys = {s.get_attribute("data-key") for s in panel.locator(".chart-slot").all()}
            assert {
                f"system/{node}/gpu_{gpu}_{name}"
                for name in (
                    "utilization_percentage",
                    "memory_usage_megabytes",
                    "power_usage_watts",
                    "temperature_celsius",
                )
            } <= keys
        key = f"system/{node}/gpu_1_utilization_percentage"
        page.locator(f'[data-key="{key}"]').scroll_into_view_if_needed()
        gpu_chart = drawn(page, key)
        assert gpu_chart.locator(".chart-title").inner_text() == "utilization_percentage"
        assert int(gpu_chart.get_attribute("data-points") or 0) >= 3
        # The GPU's reading (this node's fake NVML), in the legend under the cursor.
        over = gpu_chart.locator(".u-over").bounding_box()
        assert over is not None
        page.mouse.move(over["x"] + over["width"] / 2, over["y"] + over["height"] / 2)
        legend = gpu_chart.locator(".u-legend .u-series").nth(1).locator(".u-value")
        assert legend.inner_text() == str(util + 1)
        gpu_spans.append(
            [float(gpu_chart.get_attribute(f"data-x-{e}") or "nan") for e in ("min", "max")]
        )

    # The same time axis: by relative time, training and GPU charts span the same range.
    page.locator('[data-key="train/loss"]').scroll_into_view_if_needed()
    train = drawn(page, "train/loss")
    span = [float(train.get_attribute(f"data-x-{e}") or "nan") for e in ("min", "max")]
    assert span[0] == pytest.approx(0, abs=0.2) and span[1] > 1.5
    assert gpu_spans == [pytest.approx(span, abs=0.25)] * 2
    # By step, system charts keep to time (relative), with duration labels.
    page.get_by_label("x axis").select_option("step")
    page.wait_for_function(
        "() => /^\\d+$/.test(document.querySelector('.chart[data-key=\"train/loss\"]')"
        ".dataset.xTicks.split('|')[0])"
    )
    page.locator(f'[data-key="{gpu_key(0)}"]').scroll_into_view_if_needed()
    gpu = drawn(page, gpu_key(0))
    assert all(t.endswith("s") for t in ticks(gpu, "x")), ticks(gpu, "x")


def gpu_key(gpu: int) -> str:
    return f"system/node-b/gpu_{gpu}_utilization_percentage"


def _sweep(name: str, lrs: tuple[float, ...]) -> list[str]:
    """Runs of a small sweep in a new experiment: param lr, tag opt, metrics loss and acc."""
    exp_id = mlflow.create_experiment(name)
    ids = []
    for i, lr in enumerate(lrs):
        with mlflow.start_run(experiment_id=exp_id, run_name=f"{name}{i}") as run:
            mlflow.log_param("lr", lr)
            mlflow.set_tag("opt", "adam" if i % 2 else "sgd")
            for s in range(50):
                mlflow.log_metrics({"loss": (1 + i) / (s + 1), "acc": s / 50}, step=s)
        ids.append(run.info.run_id)
    mlflow.flush()
    return ids


def test_compare_keeps_its_state_in_the_address(tracking: CollectorProcess, page: Any) -> None:
    ids = _sweep("kept", (0.1, 0.01, 0.001))
    page.goto(f"{tracking.url}/#/compare-runs?runs={','.join(ids)}")
    drawn(page, "loss")
    page.get_by_label("x axis").select_option("relative")
    page.get_by_label("log y").check()
    page.get_by_label("smoothing").fill("0.5")
    page.get_by_label("group by").select_option("tags.opt")
    page.get_by_label("Search metric keys").fill("loss")
    page.get_by_label("param", exact=True).select_option("lr")
    page.get_by_label("metric", exact=True).select_option("acc")
    page.wait_for_function("() => location.hash.includes('keys=loss')")
    for part in ("x=relative", "log=1", "smooth=0.5", "group=tags.opt", "sy=acc", "runs="):
        assert part in page.url, (part, page.url)

    page.reload()
    loss = drawn(page, "loss", y_log="true")
    assert page.get_by_label("x axis").input_value() == "relative"
    assert page.get_by_label("log y").is_checked()
    assert page.get_by_label("smoothing").input_value() == "0.5"
    assert page.get_by_label("group by").input_value() == "tags.opt"
    assert page.get_by_label("Search metric keys").input_value() == "loss"
    assert page.get_by_label("metric", exact=True).input_value() == "acc"
    assert [s.get_attribute("data-key") for s in page.locator(".chart-slot").all()] == ["loss"]
    # Relative time and two groups (adam, sgd), each a min, a max and a mean series.
    assert float(loss.get_attribute("data-x-min") or "nan") < 1e9
    assert loss.locator(".u-legend .u-series").count() == 1 + 2 * 3


def test_compare_scatter_starts_on_a_param_and_metric_most_runs_have(
    tracking: CollectorProcess, page: Any
) -> None:
    ids = _sweep("scatter", (0.1, 0.01, 0.001))
    # One more run without lr, with a metric and a param of its own that sort first.
    with mlflow.start_run(experiment_id=mlflow.get_run(ids[0]).info.experiment_id) as odd:
        mlflow.log_param("a_seed", 7)
        mlflow.log_metric("a_only", 1.0)
    mlflow.flush()
    page.goto(f"{tracking.url}/#/compare-runs?runs={','.join([*ids, odd.info.run_id])}")
    drawn(page, "loss")
    assert page.get_by_label("param", exact=True).input_value() == "lr"
    assert page.get_by_label("metric", exact=True).input_value() in ("loss", "acc")

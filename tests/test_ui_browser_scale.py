"""Chart data loading in a real browser (Playwright + Debian's chromium, a real
collector): many runs on one chart in one request, and infinities read back from the
UI's JSON encoding (collector/ui_json.py) instead of showing as null."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest

import flightlog as mlflow
from scripts.ui_harness import chromium_path, launch_chromium
from tests.conftest import CollectorProcess

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')"
)
pytestmark = pytest.mark.skipif(
    chromium_path() is None,
    reason="Debian's chromium is not on PATH (apt-get install chromium; .ci/run installs it)",
)


@pytest.fixture
def page() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        browser = launch_chromium(p)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        pg = context.new_page()
        errors: list[str] = []
        pg.on("pageerror", lambda e: errors.append(str(e)))
        pg.set_default_timeout(30_000)
        yield pg
        browser.close()
        assert not errors, errors


def test_many_runs_on_one_chart_are_one_request(tracking: CollectorProcess, page: Any) -> None:
    exp_id = mlflow.create_experiment("many")
    for i in range(150):
        with mlflow.start_run(experiment_id=exp_id, run_name=f"r{i}"):
            mlflow.log_metrics({"loss": 1.0 + i}, step=0)
            mlflow.log_metrics({"loss": 0.5 + i}, step=1)
    mlflow.flush()
    calls: list[Any] = []
    page.on("request", lambda r: calls.append(r) if "/ui/metrics" in r.url else None)
    page.goto(f"{tracking.url}/#/compare-runs?experiment={exp_id}")
    chart = page.locator('.chart[data-key="loss"][data-state="drawn"]')
    chart.wait_for()
    assert chart.get_attribute("data-points") == "300"  # 150 lines of 2 points
    # One POST for the 150 runs (their ids do not fit in a URL), not one call per run.
    assert [c.method for c in calls] == ["POST"]
    assert len(calls[0].post_data_json["run"]) == 150


def test_infinities_reach_the_chart_as_numbers(tracking: CollectorProcess, page: Any) -> None:
    values = [0.1, 0.2, math.inf, 0.3, -math.inf, 0.4]
    with mlflow.start_run(run_name="wild") as run:
        for s, v in enumerate(values):
            mlflow.log_metric("loss", v, step=s)
    mlflow.flush()
    page.goto(f"{tracking.url}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}")
    chart = page.locator('.chart[data-key="loss"][data-state="drawn"]')
    chart.wait_for()
    assert chart.get_attribute("data-points") == "6"
    # The chart holds the decoded numbers; its plotted table has gaps where they are.
    got = page.evaluate(
        """async () => {
          const { decodeValues } = await import("/ui/js/charts.js");
          return decodeValues([1, "Infinity", "-Infinity", null]).map(String);
        }"""
    )
    assert got == ["1", "Infinity", "-Infinity", "null"]
    # Hovering the infinite point shows it in the legend (the plot draws it as a gap).
    over = chart.locator(".u-over").bounding_box()
    assert over is not None
    legend = chart.locator(".u-legend .u-series").nth(1).locator(".u-value")
    for step, shown in ((2, "Infinity"), (4, "-Infinity"), (3, "0.3")):
        page.mouse.move(over["x"] + over["width"] * step / 5, over["y"] + over["height"] / 2)
        page.wait_for_function(
            "([el, want]) => el.textContent === want", arg=[legend.element_handle(), shown]
        )

"""Live pages in a real browser (Playwright + Debian's chromium, a real collector): the
compare page follows many RUNNING runs with a bounded number of requests per tick (one
run-states call, one metrics call per chart on screen), shows a run's new status when it
ends, and stops polling once no run is RUNNING."""

from __future__ import annotations

import urllib.parse
from typing import Any

import flightlog as mlflow
from tests.conftest import CollectorProcess
from tests.test_ui_browser_scale import page, pytestmark  # noqa: F401  (fixture, skip mark)

RUNS = 24


def _ui_calls(calls: list[Any], part: str) -> list[Any]:
    return [c for c in calls if f"/api/flightlog/ui/{part}" in c.url]


def test_compare_follows_many_running_runs_with_few_requests_per_tick(
    tracking: CollectorProcess,
    page: Any,  # noqa: F811  (the fixture imported above)
) -> None:
    client = mlflow.MlflowClient()
    exp_id = mlflow.create_experiment("live-many")
    ids = [client.create_run(exp_id, run_name=f"r{i}").info.run_id for i in range(RUNS)]
    # Each run at its own step, so no two lines share a last step.
    for i, rid in enumerate(ids):
        for s in range(i + 2):
            client.log_metric(rid, "loss", float(i), step=s)
    mlflow.flush()
    total = sum(i + 2 for i in range(RUNS))
    page.goto(f"{tracking.url}/#/compare-runs?experiment={exp_id}")
    page.wait_for_selector(f'.chart[data-key="loss"][data-points="{total}"]')
    calls: list[Any] = []
    page.on("request", lambda r: calls.append(r) if "/api/flightlog/ui/" in r.url else None)
    for i, rid in enumerate(ids):
        client.log_metric(rid, "loss", float(i), step=100 + i)
    mlflow.flush()
    page.wait_for_selector(f'.chart[data-key="loss"][data-points="{total + RUNS}"]')
    page.wait_for_timeout(2_500)  # at least one more whole tick
    states = _ui_calls(calls, "run-states")
    metrics = _ui_calls(calls, "metrics")
    assert states, calls
    # Nothing asked run by run: no /runs/ID and one run-states call per tick for all runs.
    assert not _ui_calls(calls, "runs/"), [c.url for c in calls]
    for c in states:
        assert c.method == "POST" and sorted(c.post_data_json["run"]) == sorted(ids)
    # One metrics call per tick for the one chart, each run after its own last step.
    assert len(metrics) <= len(states) + 1, [c.url for c in metrics]
    for c in metrics:
        q = urllib.parse.parse_qs(urllib.parse.urlsplit(c.url).query, keep_blank_values=True)
        assert len(q["run"]) == RUNS and len(q["after_step"]) == RUNS, c.url
        assert all(v != "" for v in q["after_step"]), c.url  # never a whole series again
    # A run that ends shows its status without reload, and is polled no more.
    client.set_terminated(ids[0], "FINISHED")
    client.set_terminated(ids[1], "FAILED")
    mlflow.flush()
    page.wait_for_selector(f'.legend-runs li[data-run-id="{ids[0]}"] .status-finished')
    page.wait_for_selector(f'.legend-runs li[data-run-id="{ids[1]}"] .status-failed')
    assert page.locator(f'.legend-runs li[data-run-id="{ids[2]}"] .status-running').count() == 1
    calls.clear()
    page.wait_for_timeout(4_500)  # two more ticks
    states = _ui_calls(calls, "run-states")
    assert states and all(sorted(c.post_data_json["run"]) == sorted(ids[2:]) for c in states)
    for c in _ui_calls(calls, "metrics"):
        q = urllib.parse.parse_qs(urllib.parse.urlsplit(c.url).query, keep_blank_values=True)
        assert sorted(q["run"]) == sorted(ids[2:]), c.url
    # When no run is RUNNING any more, the page stops asking.
    for rid in ids[2:]:
        client.set_terminated(rid, "FINISHED")
    mlflow.flush()
    page.wait_for_selector(f'.legend-runs li[data-run-id="{ids[-1]}"] .status-finished')
    page.wait_for_timeout(500)  # the last tick's final chart poll
    calls.clear()
    page.wait_for_timeout(4_500)
    assert not calls, [c.url for c in calls]
    assert page.locator(".legend-runs .status-running").count() == 0


def test_run_page_adds_a_new_keys_chart_without_refetching_the_others(
    tracking: CollectorProcess,
    page: Any,  # noqa: F811  (the fixture imported above)
) -> None:
    run = mlflow.start_run(run_name="growing")
    for s in range(40):
        mlflow.log_metric("loss", 1 / (s + 1), step=s)
    mlflow.flush()
    page.goto(f"{tracking.url}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}")
    page.wait_for_selector('.chart[data-key="loss"][data-points="40"]')
    calls: list[Any] = []
    page.on("request", lambda r: calls.append(r) if "/api/flightlog/ui/" in r.url else None)
    # A key the run had not logged: its chart appears; "loss" keeps its 40 points and
    # asks only for the ones after step 39.
    for s in range(40, 45):
        mlflow.log_metrics({"loss": 1 / (s + 1), "acc": s / 100}, step=s)
    mlflow.flush()
    page.wait_for_selector('.chart[data-key="acc"][data-state="drawn"]')
    page.wait_for_selector('.chart[data-key="loss"][data-points="45"]')
    loss = []
    for c in _ui_calls(calls, "metrics"):
        q = urllib.parse.parse_qs(urllib.parse.urlsplit(c.url).query, keep_blank_values=True)
        if q["key"] == ["loss"]:
            loss.append(q)
    assert loss and all(q["after_step"] != [""] and "after_step" in q for q in loss), loss
    mlflow.end_run()
    page.wait_for_selector(".run-head .status-finished")

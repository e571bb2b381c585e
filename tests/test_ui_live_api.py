"""The UI's live reads on a real collector process: one run-states call reports on many
runs (deduped, capped with a 400), and one metrics call returns each run's points after
its own last step, so a live page's tick costs a few requests whatever the run count."""

from __future__ import annotations

import urllib.parse

import flightlog as mlflow
from flightlog.collector.ui_api import MAX_STATE_RUNS
from tests.conftest import CollectorProcess
from tests.test_ui_metrics_api import call

UI = "/api/flightlog/ui"


def test_run_states_report_many_runs_in_one_call(tracking: CollectorProcess) -> None:
    client = mlflow.MlflowClient()
    eid = mlflow.get_experiment_by_name("Default").experiment_id
    live = client.create_run(eid, run_name="live").info.run_id
    done = client.create_run(eid, run_name="done").info.run_id
    quiet = client.create_run(eid, run_name="quiet").info.run_id
    for s in range(0, 50, 7):
        client.log_metric(live, "loss", 1.0 / (s + 1), step=s)
    client.log_metric(live, "acc", 0.5, step=3)
    client.log_metric(done, "loss", 0.1, step=9)
    client.set_terminated(done, "FINISHED")
    mlflow.flush()
    unknown = "f" * 32
    # GET: in the order asked, repeats once, unknown ids listed as missing.
    q = urllib.parse.urlencode([("run", r) for r in (done, live, done, unknown, quiet)])
    status, got = call(f"{tracking.url}{UI}/run-states?{q}")
    assert status == 200, got
    assert [r["run_id"] for r in got["runs"]] == [done, live, quiet]
    assert got["missing"] == [unknown]
    by_id = {r["run_id"]: r for r in got["runs"]}
    assert by_id[live]["status"] == "RUNNING" and by_id[live]["end_time"] is None
    assert by_id[live]["last_step"] == 49
    assert by_id[quiet]["last_step"] is None
    assert by_id[done]["status"] == "FINISHED" and by_id[done]["end_time"] > 0
    assert by_id[done]["last_step"] == 9
    assert set(by_id[live]) == {
        "run_id", "status", "start_time", "end_time", "lifecycle_stage", "last_step",
    }  # fmt: skip
    # POST: the same answer; a run that ends shows it at the next call.
    client.set_terminated(live, "FAILED")
    mlflow.flush()
    status, posted = call(f"{tracking.url}{UI}/run-states", {"run": [live, quiet]})
    assert status == 200
    assert [(r["run_id"], r["status"]) for r in posted["runs"]] == [
        (live, "FAILED"),
        (quiet, "RUNNING"),
    ]
    assert posted["runs"][0]["end_time"] > 0
    # Bad calls are 400s that say what was wrong.
    too_many = [f"{i:032x}" for i in range(MAX_STATE_RUNS + 1)]
    status, got = call(f"{tracking.url}{UI}/run-states", {"run": too_many})
    assert status == 400 and f"At most {MAX_STATE_RUNS} runs" in got["message"]
    # Repeats of one id are one run, however many.
    status, got = call(f"{tracking.url}{UI}/run-states", {"run": [live] * (MAX_STATE_RUNS + 5)})
    assert status == 200 and len(got["runs"]) == 1
    status, got = call(f"{tracking.url}{UI}/run-states")
    assert status == 400 and "at least one run" in got["message"]
    status, got = call(f"{tracking.url}{UI}/run-states?run=..%2Fx")
    assert status == 400 and got["error_code"] == "INVALID_PARAMETER_VALUE"


def test_metrics_after_each_runs_own_step(tracking: CollectorProcess) -> None:
    ids = []
    for n in (100, 50, 20):
        with mlflow.start_run() as run:
            for s in range(n):
                mlflow.log_metric("loss", s / n, step=s)
        ids.append(run.info.run_id)
    mlflow.flush()
    a, b, c = ids
    # One call, each run after its own last step ("" / null: a run with no points yet).
    q = urllib.parse.urlencode(
        [("run", a), ("run", b), ("run", c), ("key", "loss")]
        + [("after_step", v) for v in ("89", "39", "")]
    )
    for status, got in (
        call(f"{tracking.url}{UI}/metrics?{q}"),
        call(
            f"{tracking.url}{UI}/metrics",
            {"run": [a, b, c], "key": ["loss"], "after_step": [89, 39, None]},
        ),
    ):
        assert status == 200, got
        steps = {s["run_id"]: s["steps"] for s in got["series"]}
        assert steps == {a: list(range(90, 100)), b: list(range(40, 50)), c: list(range(20))}
    # A run asked twice reads after the earlier of its steps; one after_step is for all.
    status, got = call(
        f"{tracking.url}{UI}/metrics", {"run": [a, a], "key": ["loss"], "after_step": [97, 95]}
    )
    assert status == 200 and [s["steps"] for s in got["series"]] == [[96, 97, 98, 99]]
    status, got = call(
        f"{tracking.url}{UI}/metrics", {"run": [a, b], "key": ["loss"], "after_step": 47}
    )
    assert status == 200
    assert {s["run_id"]: len(s["steps"]) for s in got["series"]} == {a: 52, b: 2}
    # A GET for one run with one after_step.
    status, got = call(f"{tracking.url}{UI}/metrics?run={c}&key=loss&after_step=17")
    assert status == 200 and [s["steps"] for s in got["series"]] == [[18, 19]]
    # As many after_step values as runs, and integers.
    status, got = call(
        f"{tracking.url}{UI}/metrics", {"run": [a, b], "key": ["loss"], "after_step": [1, 2, 3]}
    )
    assert status == 400 and "after_step has 3 values for 2 runs" in got["message"]
    status, got = call(
        f"{tracking.url}{UI}/metrics", {"run": [a, b], "key": ["loss"], "after_step": [1, "x"]}
    )
    assert status == 400 and "'after_step' must be an integer" in got["message"]

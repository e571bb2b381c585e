"""The core pipeline: SDK -> agent -> real collector process -> real SQLite file."""

from __future__ import annotations

import math
import os
import sqlite3
from pathlib import Path

import pytest

import flightlog as mlflow
from flightlog import MlflowClient, MlflowException
from tests.conftest import CollectorProcess
from tests.helpers import run_status, stored_points


def test_params_metrics_tags_read_back(tracking: CollectorProcess) -> None:
    with mlflow.start_run() as run:
        mlflow.log_param("learning_rate", 0.01)
        mlflow.log_params({"batch_size": 32, "epochs": 100, "optimizer": "adam"})
        for epoch in range(100):
            mlflow.log_metric("train_loss", 1.0 / (epoch + 1), step=epoch)
        mlflow.log_metrics({"accuracy": 0.95, "f1_score": 0.94})
        mlflow.set_tag("model_type", "RandomForest")
        mlflow.set_tags({"team": "data-science", "priority": "high"})
    got = mlflow.get_run(run.info.run_id)
    assert got.info.status == "FINISHED"
    assert got.info.end_time is not None and got.info.end_time >= got.info.start_time
    assert got.info.experiment_id == "0"
    assert got.info.lifecycle_stage == "active"
    assert got.info.artifact_uri.endswith(f"/{run.info.run_id}/artifacts")
    assert got.info.user_id
    assert got.data.params == {
        "learning_rate": "0.01",
        "batch_size": "32",
        "epochs": "100",
        "optimizer": "adam",
    }
    assert got.data.metrics == {"train_loss": 0.01, "accuracy": 0.95, "f1_score": 0.94}
    assert got.data.tags["model_type"] == "RandomForest"
    assert got.data.tags["team"] == "data-science"
    assert got.data.tags["mlflow.runName"] == got.info.run_name
    history = MlflowClient().get_metric_history(run.info.run_id, "train_loss")
    assert [m.step for m in history] == list(range(100))
    assert [m.value for m in history] == [1.0 / (e + 1) for e in range(100)]
    assert all(m.timestamp >= got.info.start_time - 1000 for m in history)
    # Durable means in the SQLite file itself.
    assert stored_points(tracking.db, run.info.run_id, "train_loss") == 100


def test_metric_latest_value_is_largest_step(tracking: CollectorProcess) -> None:
    with mlflow.start_run() as run:
        mlflow.log_metric("accuracy", 0.80, step=1)
        mlflow.log_metric("accuracy", 0.95, step=4)
        mlflow.log_metric("accuracy", 0.90, step=3)
        mlflow.log_metric("accuracy", 0.85, step=2)
    assert mlflow.get_run(run.info.run_id).data.metrics["accuracy"] == 0.95
    hist = mlflow.get_metric_history(run.info.run_id, "accuracy")
    assert [(m.step, m.value) for m in hist] == [(1, 0.8), (4, 0.95), (3, 0.9), (2, 0.85)]


def test_nan_and_inf_are_legal_metric_values(tracking: CollectorProcess) -> None:
    with mlflow.start_run() as run:
        mlflow.log_metric("a", float("nan"), step=0)
        mlflow.log_metric("b", float("inf"))
        mlflow.log_metric("c", float("-inf"))
    data = mlflow.get_run(run.info.run_id).data.metrics
    assert math.isnan(data["a"]) and data["b"] == math.inf and data["c"] == -math.inf
    assert math.isnan(mlflow.get_metric_history(run.info.run_id, "a")[0].value)


def test_infinities_and_overflowing_values_in_one_series_are_all_stored(
    tracking: CollectorProcess,
) -> None:
    """+inf and -inf, or two values whose sum overflows, in one block of one batch: every
    point is stored (the block summary's sum once raised and the batch's points were lost)."""
    values = [1e308, 1e308, math.inf, -math.inf, float("nan"), -1e308, 2.0]
    with mlflow.start_run() as run:
        for i, value in enumerate(values):
            mlflow.log_metric("extreme", value, step=i)
    history = mlflow.get_metric_history(run.info.run_id, "extreme")
    got = [m.value for m in sorted(history, key=lambda m: m.step)]
    assert len(got) == len(values)
    assert got[:4] == values[:4] and math.isnan(got[4]) and got[5:] == values[5:]


def test_nested_runs_record_parent(tracking: CollectorProcess) -> None:
    with mlflow.start_run(run_name="parent-run") as parent:
        mlflow.log_param("dataset", "iris")
        children = []
        for fold in range(5):
            with mlflow.start_run(run_name=f"fold-{fold}", nested=True) as child:
                mlflow.log_metric("fold_accuracy", 0.95 - fold * 0.01)
                mlflow.log_param("fold", fold)
                assert mlflow.active_run() is child
                children.append(child.info.run_id)
        assert mlflow.active_run() is parent
    assert mlflow.active_run() is None
    for fold, rid in enumerate(children):
        r = mlflow.get_run(rid)
        assert r.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert r.info.run_name == f"fold-{fold}"
        assert r.data.params == {"fold": str(fold)}
        assert r.data.metrics["fold_accuracy"] == pytest.approx(0.95 - fold * 0.01)
    assert mlflow.get_run(parent.info.run_id).info.run_name == "parent-run"


def test_second_run_without_nested_is_an_error(tracking: CollectorProcess) -> None:
    with mlflow.start_run() as run:
        with pytest.raises(
            MlflowException,
            match=f"Run with UUID {run.info.run_id} is already active. To start a nested run",
        ):
            mlflow.start_run()


def test_exception_in_block_ends_run_failed(tracking: CollectorProcess) -> None:
    with pytest.raises(ValueError, match="boom"):
        with mlflow.start_run() as run:
            mlflow.log_metric("x", 1.0)
            raise ValueError("boom")
    assert mlflow.get_run(run.info.run_id).info.status == "FAILED"
    with pytest.raises(KeyboardInterrupt):
        with mlflow.start_run() as run2:
            raise KeyboardInterrupt
    assert mlflow.get_run(run2.info.run_id).info.status == "KILLED"


def test_end_run_status_and_last_active_run(tracking: CollectorProcess) -> None:
    run = mlflow.start_run()
    mlflow.log_metric("m", 2.0)
    mlflow.end_run(status="KILLED")
    last = mlflow.last_active_run()
    assert last is not None and last.info.run_id == run.info.run_id
    assert last.info.status == "KILLED" and last.data.metrics == {"m": 2.0}


def test_log_metric_without_run_starts_one(tracking: CollectorProcess) -> None:
    mlflow.log_metric("auto", 1.0)
    run = mlflow.active_run()
    assert run is not None
    mlflow.end_run()
    assert mlflow.get_run(run.info.run_id).data.metrics == {"auto": 1.0}


def test_experiments_with_hierarchical_names(tracking: CollectorProcess) -> None:
    exp_id = mlflow.create_experiment(
        name="my-experiment",
        artifact_location="s3://my-bucket/experiments",
        tags={"project": "customer-churn", "team": "data-science"},
    )
    exp = mlflow.get_experiment(exp_id)
    assert exp.name == "my-experiment" and exp.artifact_location == "s3://my-bucket/experiments"
    assert exp.tags == {"project": "customer-churn", "team": "data-science"}
    with pytest.raises(MlflowException, match="already exists") as e:
        mlflow.create_experiment("my-experiment")
    assert e.value.error_code == "RESOURCE_ALREADY_EXISTS"
    names = [
        "customer-churn/prediction/v1",
        "image-classification/resnet/experiment-1",
        "nlp/sentiment-analysis/production",
    ]
    for name in names:
        got = mlflow.set_experiment(name)
        assert got.name == name
        with mlflow.start_run() as run:
            mlflow.log_metric("x", 1.0)
        assert mlflow.get_run(run.info.run_id).info.experiment_id == got.experiment_id
    # set_experiment on an existing name reuses it.
    assert (
        mlflow.set_experiment(names[0]).experiment_id
        == mlflow.get_experiment_by_name(names[0]).experiment_id
    )  # type: ignore[union-attr]
    assert mlflow.get_experiment_by_name("nope") is None
    with mlflow.start_run(experiment_id=exp_id) as run:
        pass
    # Over HTTP the run reports the collector's proxy URI; the location stays the bucket.
    assert run.info.artifact_uri == f"mlflow-artifacts:/{exp_id}/{run.info.run_id}/artifacts"
    assert mlflow.get_experiment(exp_id).artifact_location == "s3://my-bucket/experiments"
    with pytest.raises(MlflowException, match="No Experiment with id=999 exists"):
        mlflow.get_experiment("999")


def test_deleted_experiment_cannot_be_set_or_used(tracking: CollectorProcess) -> None:
    exp = mlflow.set_experiment("to-delete")
    mlflow.delete_experiment(exp.experiment_id)
    with pytest.raises(MlflowException, match="deleted experiment 'to-delete'"):
        mlflow.set_experiment("to-delete")
    with pytest.raises(MlflowException, match="must be in the 'active' state"):
        MlflowClient().create_run(exp.experiment_id)


def test_tags_upsert_and_delete(tracking: CollectorProcess) -> None:
    with mlflow.start_run() as run:
        mlflow.set_tag("stage", "a")
        mlflow.set_tag("stage", "b")
        mlflow.set_tag("gone", "x")
        mlflow.delete_tag("gone")
        with pytest.raises(MlflowException, match="No tag with name: missing"):
            mlflow.delete_tag("missing")
    tags = mlflow.get_run(run.info.run_id).data.tags
    assert tags["stage"] == "b" and "gone" not in tags


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: mlflow.log_metric("bad key!", 1.0), "Invalid metric name: 'bad key!'"),
        (lambda: mlflow.log_metric("", 1.0), "Invalid metric name: ''"),
        (lambda: mlflow.log_metric("x" * 251, 1.0), "the limit is 250"),
        (lambda: mlflow.log_metric("../up", 1.0), "may not be absolute or contain '..'"),
        (lambda: mlflow.log_metric("loss", "high"), "Invalid value 'high' for metric 'loss'"),
        (lambda: mlflow.log_metric("loss", None), "Invalid value None for metric 'loss'"),
        (lambda: mlflow.log_metric("loss", 1.0, step=1.5), "Invalid step 1.5 for metric 'loss'"),
        (lambda: mlflow.log_metric("loss", 1.0, timestamp="now"), "Invalid timestamp 'now'"),
        (lambda: mlflow.log_param("p" * 300, 1), "Invalid param name"),
        (lambda: mlflow.log_param("big", "v" * 6001), "Param value for 'big' is 6001 characters"),
        (lambda: mlflow.set_tag("t", "v" * 8001), "Tag value for 't' is 8001 characters"),
        (lambda: mlflow.set_tag("bad\nkey", "v"), "Invalid tag name"),
        (lambda: mlflow.create_experiment(""), "Invalid experiment name"),
    ],
)
def test_validation_errors_at_call_site(
    tracking: CollectorProcess, call: object, message: str
) -> None:
    with mlflow.start_run() as run:
        with pytest.raises(
            MlflowException,
            match=message.replace("(", r"\(")
            .replace(")", r"\)")
            .replace(".", r"\.")
            .replace("*", r"\*"),
        ) as e:
            call()  # type: ignore[operator]
        assert e.value.error_code == "INVALID_PARAMETER_VALUE"
        mlflow.log_metric("ok", 1.0)  # the run and agent keep working
    assert mlflow.get_run(run.info.run_id).data.metrics == {"ok": 1.0}


def test_param_change_in_process_fails_at_call_site(tracking: CollectorProcess) -> None:
    with mlflow.start_run() as run:
        mlflow.log_param("lr", 0.01)
        mlflow.log_param("lr", 0.01)  # the same value again is fine
        with pytest.raises(MlflowException, match="Changing param values is not allowed"):
            mlflow.log_param("lr", 0.02)
    assert mlflow.get_run(run.info.run_id).data.params == {"lr": "0.01"}


def test_param_change_from_another_client_reported_at_flush(tracking: CollectorProcess) -> None:
    with mlflow.start_run() as run:
        mlflow.log_param("lr", 0.01)
        mlflow.flush()
        # A second process would not know what this one logged; simulate it with a
        # fresh client whose in-process param memory is empty.
        mlflow.MlflowClient().ctx.params.clear()
        mlflow.log_param("lr", 0.5)
        mlflow.log_metric("after", 1.0)
        with pytest.raises(MlflowException, match="Changing param values is not allowed"):
            mlflow.flush()
    got = mlflow.get_run(run.info.run_id)
    assert got.data.params == {"lr": "0.01"}
    assert got.data.metrics == {"after": 1.0}  # the rest of the batch was stored


def test_flush_makes_points_durable_in_sqlite(tracking: CollectorProcess) -> None:
    with mlflow.start_run() as run:
        for i in range(250_000):
            mlflow.log_metric("loss", i * 0.5, step=i)
        mlflow.flush()
        # Read the file directly: what flush() acknowledged is committed.
        assert stored_points(tracking.db, run.info.run_id, "loss") == 250_000
        assert run_status(tracking.db, run.info.run_id) == "RUNNING"
    assert run_status(tracking.db, run.info.run_id) == "FINISHED"
    conn = sqlite3.connect(tracking.db)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_many_keys_interleaved_and_explicit_client(tracking: CollectorProcess) -> None:
    client = MlflowClient(tracking.url)
    exp = client.create_experiment("explicit")
    run = client.create_run(exp, run_name="r1", tags={"k": "v"})
    keys = [f"m{k}" for k in range(20)]
    for step in range(500):
        for k in keys:
            client.log_metric(run.info.run_id, k, step * 1.0, step=step)
    client.log_param(run.info.run_id, "p", 1)
    client.set_tag(run.info.run_id, "t", "x")
    client.set_terminated(run.info.run_id)
    got = client.get_run(run.info.run_id)
    assert got.info.status == "FINISHED" and got.info.run_name == "r1"
    assert got.data.metrics == {k: 499.0 for k in keys}
    assert got.data.tags["k"] == "v" and got.data.tags["t"] == "x"
    for k in keys:
        assert [m.value for m in client.get_metric_history(run.info.run_id, k)] == [
            float(s) for s in range(500)
        ]
    with pytest.raises(MlflowException, match="not found") as e:
        client.get_run("0" * 32)
    assert e.value.error_code == "RESOURCE_DOES_NOT_EXIST"


def test_numpy_like_values_are_accepted(tracking: CollectorProcess) -> None:
    class Scalar:
        def __float__(self) -> float:
            return 3.5

    with mlflow.start_run() as run:
        mlflow.log_metric("v", Scalar())  # type: ignore[arg-type]
        mlflow.log_metric("i", 7)
        mlflow.log_metric("b", True)
    assert mlflow.get_run(run.info.run_id).data.metrics == {"v": 3.5, "i": 7.0, "b": 1.0}


def test_user_timestamp_kept(tracking: CollectorProcess) -> None:
    with mlflow.start_run() as run:
        mlflow.log_metric("t", 1.0, step=0, timestamp=1_700_000_000_123)
    [m] = mlflow.get_metric_history(run.info.run_id, "t")
    assert m.timestamp == 1_700_000_000_123


def test_fork_child_gets_its_own_agent(tracking: CollectorProcess) -> None:
    with mlflow.start_run() as run:
        for i in range(1000):
            mlflow.log_metric("parent", i, step=i)
        pid = os.fork()
        if pid == 0:  # child: log into the same run with its own queue and thread
            code = 0
            try:
                for i in range(1000):
                    mlflow.log_metric("child", i, step=i)
                mlflow.flush()
            except BaseException:
                import traceback

                traceback.print_exc()
                code = 1
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        for i in range(1000, 2000):
            mlflow.log_metric("parent", i, step=i)
    assert stored_points(tracking.db, run.info.run_id, "child") == 1000
    # The child did not ship a copy of the parent's queue: each parent point is stored once.
    assert stored_points(tracking.db, run.info.run_id, "parent") == 2000


def test_reads_see_own_writes_without_flush(tracking: CollectorProcess) -> None:
    with mlflow.start_run() as run:
        mlflow.log_metric("x", 1.0)
        mlflow.log_param("p", "v")
        got = mlflow.get_run(run.info.run_id)  # no explicit flush
        assert got.data.metrics == {"x": 1.0} and got.data.params == {"p": "v"}
        assert got.info.status == "RUNNING"


def test_collector_refuses_non_loopback_without_token(tmp_path: Path) -> None:
    import subprocess
    import sys

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "flightlog.collector",
            "--store",
            str(tmp_path / "s"),
            "--host",
            "0.0.0.0",
            "--port",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode != 0
    assert "pass --token or set FLIGHTLOG_TOKEN" in proc.stderr

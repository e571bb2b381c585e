"""Search and chart reads through the SDK against a real collector process."""

from __future__ import annotations

import math

import pytest

import flightlog as mlflow
from flightlog import MlflowClient, MlflowException, ViewType
from tests.conftest import CollectorProcess


def _runs(exp_id: str, rows: list[tuple[str, float, str, str]]) -> dict[str, str]:
    ids = {}
    for name, acc, model, team in rows:
        with mlflow.start_run(experiment_id=exp_id, run_name=name) as run:
            mlflow.log_metric("accuracy", acc)
            mlflow.log_param("model_type", model)
            mlflow.set_tag("team", team)
        ids[name] = run.info.run_id
    return ids


def test_tutorial_search_runs(tracking: CollectorProcess) -> None:
    e1 = mlflow.create_experiment("churn-a")
    e2 = mlflow.create_experiment("churn-b")
    a = _runs(
        e1,
        [
            ("a1", 0.95, "RandomForest", "ml"),
            ("a2", 0.85, "RandomForest", "ds"),
            ("a3", 0.97, "XGBoost", "ml"),
        ],
    )
    b = _runs(e2, [("b1", 0.92, "RandomForest", "ops"), ("b2", 0.99, "RandomForest", "ds")])
    runs = mlflow.search_runs(
        experiment_ids=[e1, e2],
        filter_string="metrics.accuracy > 0.9 AND params.model_type = 'RandomForest'",
        order_by=["metrics.accuracy DESC"],
        max_results=100,
    )
    sub = runs[["run_id", "metrics.accuracy", "params.model_type"]]
    assert list(sub["run_id"]) == [b["b2"], a["a1"], b["b1"]]
    assert list(sub["metrics.accuracy"]) == [0.99, 0.95, 0.92]
    assert list(runs.columns[:6]) == [
        "run_id",
        "experiment_id",
        "status",
        "artifact_uri",
        "start_time",
        "end_time",
    ]
    assert str(runs["start_time"].dt.tz) == "UTC"
    assert set(runs["tags.mlflow.runName"]) == {"b2", "a1", "b1"}
    # OR, which MLflow rejects and the tutorial uses.
    either = mlflow.search_runs(
        experiment_ids=[e1, e2],
        filter_string="tags.team = 'ml' OR tags.team = 'ds'",
        order_by=["attributes.run_name"],
        output_format="list",
    )
    assert [r.info.run_name for r in either] == ["a1", "a2", "a3", "b2"]
    grouped = mlflow.search_runs(
        experiment_ids=[e1, e2],
        output_format="list",
        filter_string="(tags.team = 'ml' OR tags.team = 'ops') and metrics.accuracy >= 0.95",
    )
    assert {r.info.run_name for r in grouped} == {"a1", "a3"}
    by_name = mlflow.search_runs(experiment_names=["churn-b"], output_format="list")
    assert {r.info.run_id for r in by_name} == set(b.values())


def test_search_active_and_all_experiments(tracking: CollectorProcess) -> None:
    mlflow.set_experiment("first")
    _runs(
        mlflow.get_experiment_by_name("first").experiment_id,  # type: ignore[union-attr]
        [("x", 0.5, "m", "t")],
    )
    mlflow.set_experiment("second")
    with mlflow.start_run():
        mlflow.log_metric("accuracy", 0.1)
    assert len(mlflow.search_runs(output_format="list")) == 1  # the active experiment only
    assert len(mlflow.search_runs(search_all_experiments=True, output_format="list")) == 2


def test_search_experiments_tutorial(tracking: CollectorProcess) -> None:
    mlflow.create_experiment("customer-churn/baseline", tags={"project": "customer-churn"})
    mlflow.create_experiment("customer-churn/tuning", tags={"project": "customer-churn"})
    mlflow.create_experiment("nlp/sentiment", tags={"project": "nlp"})
    experiments = mlflow.search_experiments(filter_string="tags.project = 'customer-churn'")
    assert {e.name for e in experiments} == {"customer-churn/baseline", "customer-churn/tuning"}
    assert all(e.tags == {"project": "customer-churn"} for e in experiments)
    liked = mlflow.search_experiments(
        filter_string="name LIKE 'customer-churn/%'", order_by=["name DESC"]
    )
    assert [e.name for e in liked] == ["customer-churn/tuning", "customer-churn/baseline"]


def test_client_pages_with_tokens(tracking: CollectorProcess) -> None:
    exp = mlflow.create_experiment("paged")
    for i in range(25):
        with mlflow.start_run(experiment_id=exp):
            mlflow.log_metric("i", i)
    client = MlflowClient()
    seen: list[float] = []
    sizes: list[int] = []
    token = None
    while True:
        page = client.search_runs(
            [exp], order_by=["metrics.i ASC"], max_results=10, page_token=token
        )
        seen.extend(r.data.metrics["i"] for r in page)
        sizes.append(len(page))
        token = page.token
        if token is None:
            break
    # Pages of max_results (a server ignoring it would answer one page of 25).
    assert sizes == [10, 10, 5]
    assert seen == [float(i) for i in range(25)]


def test_deleted_and_restored_runs_and_experiments(tracking: CollectorProcess) -> None:
    exp = mlflow.create_experiment("lifecycle")
    ids = _runs(exp, [("keep", 1.0, "m", "t"), ("drop", 2.0, "m", "t")])
    client = MlflowClient()
    client.delete_run(ids["drop"])

    def names(vt: int | str) -> set[str]:
        runs = mlflow.search_runs([exp], run_view_type=vt, output_format="list")
        return {r.info.run_name for r in runs}

    assert names(ViewType.ACTIVE_ONLY) == {"keep"}
    assert names(ViewType.DELETED_ONLY) == {"drop"}
    assert names("ALL") == {"keep", "drop"}
    assert mlflow.get_run(ids["drop"]).info.lifecycle_stage == "deleted"
    client.restore_run(ids["drop"])
    assert names(ViewType.ACTIVE_ONLY) == {"keep", "drop"}
    client.delete_experiment(exp)
    assert mlflow.get_experiment_by_name("lifecycle").lifecycle_stage == "deleted"  # type: ignore[union-attr]
    assert "lifecycle" not in {e.name for e in mlflow.search_experiments()}
    assert "lifecycle" in {
        e.name for e in mlflow.search_experiments(view_type=ViewType.DELETED_ONLY)
    }
    assert names(ViewType.ACTIVE_ONLY) == set()  # runs follow their experiment
    client.restore_experiment(exp)
    assert names(ViewType.ACTIVE_ONLY) == {"keep", "drop"}


@pytest.mark.parametrize(
    ("flt", "message"),
    [
        ("metrics.accuracy > 'high'", "position"),
        ("foo.bar = 1", "position 0"),
        ("params.lr = 'unclosed", "position"),
        ("metrics.acc >> 1", "position"),
        ("tags.team = 'ml' OR", "position"),
    ],
)
def test_malformed_filters_are_clear_errors(
    tracking: CollectorProcess, flt: str, message: str
) -> None:
    with pytest.raises(MlflowException, match=message) as e:
        mlflow.search_runs(experiment_ids=["0"], filter_string=flt)
    assert e.value.error_code == "INVALID_PARAMETER_VALUE"
    assert "Traceback" not in e.value.message and "sqlite" not in e.value.message.lower()


def test_downsampled_history_keeps_spikes(tracking: CollectorProcess) -> None:
    n = 300_000
    with mlflow.start_run() as run:
        for i in range(n):
            value = 1000.0 if i == 123_457 else (-5.0 if i == 7 else math.sin(i / 1000))
            mlflow.log_metric("loss", value, step=i)
        for i in range(50):
            mlflow.log_metric("short", i, step=i)
    client = MlflowClient()
    full = client.get_metric_history(run.info.run_id, "loss")
    assert len(full) == n
    small = client.get_metric_history(run.info.run_id, "loss", max_points=300)
    assert 0 < len(small) <= 300
    values = [m.value for m in small]
    assert 1000.0 in values and -5.0 in values
    assert small[-1].step == n - 1
    assert [m.step for m in small] == sorted(m.step for m in small)
    many = client.get_metric_histories([run.info.run_id], ["loss", "short"], max_points=30)
    assert len(many[run.info.run_id]["loss"]) <= 30
    assert [m.value for m in many[run.info.run_id]["short"]] == [float(i) for i in range(50)][
        :50
    ] or len(many[run.info.run_id]["short"]) <= 30


def test_pandas_missing_names_the_extra(
    tracking: CollectorProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    import builtins

    real_import = builtins.__import__

    def no_pandas(name: str, *args: object, **kwargs: object) -> object:
        if name == "pandas":
            raise ImportError("no pandas")
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", no_pandas)
    with pytest.raises(MlflowException, match=r"flightlog\[pandas\].*output_format='list'"):
        mlflow.search_runs(experiment_ids=["0"])
    assert mlflow.search_runs(experiment_ids=["0"], output_format="list") == []

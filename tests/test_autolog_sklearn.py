"""scikit-learn autologging and the sklearn model flavor, against a real collector."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import flightlog as mlflow
from flightlog import autologging
from flightlog.core.exceptions import MlflowException
from tests.conftest import CollectorProcess

sklearn = pytest.importorskip("sklearn")
np = pytest.importorskip("numpy")

from sklearn.datasets import load_iris, make_regression  # noqa: E402
from sklearn.ensemble import RandomForestClassifier  # noqa: E402
from sklearn.linear_model import LinearRegression, LogisticRegression  # noqa: E402
from sklearn.model_selection import GridSearchCV  # noqa: E402
from sklearn.pipeline import Pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402


@pytest.fixture(autouse=True)
def _autolog_off() -> Iterator[None]:
    yield
    autologging.reset_for_tests()


def _iris() -> tuple[object, object]:
    x, y = load_iris(return_X_y=True)
    return x, y


def test_classifier_fit_logs_params_metrics_tags_dataset_and_model(
    tracking: CollectorProcess,
) -> None:
    mlflow.sklearn.autolog()
    x, y = _iris()
    with mlflow.start_run() as run:
        model = RandomForestClassifier(n_estimators=5, max_depth=3, random_state=0).fit(x, y)
    got = mlflow.get_run(run.info.run_id)
    assert got.data.params["n_estimators"] == "5"
    assert got.data.params["max_depth"] == "3"
    assert got.data.tags["estimator_name"] == "RandomForestClassifier"
    assert got.data.tags["estimator_class"] == "sklearn.ensemble._forest.RandomForestClassifier"
    m = got.data.metrics
    for key in (
        "training_accuracy_score",
        "training_precision_score",
        "training_recall_score",
        "training_f1_score",
        "training_log_loss",
        "training_roc_auc",
        "training_score",
    ):
        assert key in m, key
    assert m["training_accuracy_score"] == pytest.approx(model.score(x, y))
    loaded = mlflow.sklearn.load_model(f"runs:/{run.info.run_id}/model")
    assert (loaded.predict(x) == model.predict(x)).all()
    names = {f.path for f in mlflow.MlflowClient().list_artifacts(run.info.run_id, "model")}
    assert {
        "model/MLmodel",
        "model/model.pkl",
        "model/requirements.txt",
        "model/python_env.yaml",
        "model/conda.yaml",
    } <= names


def test_regressor_metrics_and_a_run_of_its_own_without_an_active_run(
    tracking: CollectorProcess,
) -> None:
    mlflow.sklearn.autolog(log_models=False, extra_tags={"team": "ml"})
    x, y = make_regression(n_samples=60, n_features=3, noise=0.1, random_state=0)
    model = LinearRegression().fit(x, y)
    assert mlflow.active_run() is None, "autolog ends the run it started"
    run = mlflow.last_active_run()
    assert run is not None
    m = run.data.metrics
    assert m["training_r2_score"] == pytest.approx(model.score(x, y))
    assert m["training_root_mean_squared_error"] == pytest.approx(
        m["training_mean_squared_error"] ** 0.5
    )
    assert {"training_mean_absolute_error", "training_score"} <= set(m)
    assert run.data.tags["team"] == "ml"
    assert run.data.tags["mlflow.autologging"] == "sklearn"
    assert run.info.status == "FINISHED"
    assert not mlflow.MlflowClient().list_artifacts(run.info.run_id)


def test_pos_label_gives_the_binary_scores_of_that_label(tracking: CollectorProcess) -> None:
    from sklearn.metrics import precision_score

    mlflow.sklearn.autolog(log_models=False, log_datasets=False, pos_label=0)
    x, y = _iris()
    keep = y < 2
    x, y = x[keep][::3], y[keep][::3]
    y[:4] = 1 - y[:4]  # some errors, so the scores differ by label
    with mlflow.start_run() as run:
        model = LogisticRegression(max_iter=200).fit(x, y)
    got = mlflow.get_run(run.info.run_id).data.metrics["training_precision_score"]
    assert got == pytest.approx(precision_score(y, model.predict(x), pos_label=0))


def test_pipeline_logs_once_with_the_outer_estimators_params(tracking: CollectorProcess) -> None:
    mlflow.sklearn.autolog(log_models=False)
    x, y = _iris()
    with mlflow.start_run() as run:
        Pipeline([("scale", StandardScaler()), ("clf", LogisticRegression(max_iter=200))]).fit(x, y)
    got = mlflow.get_run(run.info.run_id)
    assert got.data.tags["estimator_name"] == "Pipeline"
    assert got.data.params["clf__max_iter"] == "200"
    assert "training_accuracy_score" in got.data.metrics


def test_grid_search_logs_best_params_and_a_child_run_per_candidate(
    tracking: CollectorProcess,
) -> None:
    mlflow.sklearn.autolog(max_tuning_runs=None)
    x, y = _iris()
    grid = {"C": [0.1, 1.0, 10.0]}
    with mlflow.start_run() as run:
        search = GridSearchCV(LogisticRegression(max_iter=300), grid, cv=3).fit(x, y)
    parent = mlflow.get_run(run.info.run_id)
    assert parent.data.params["best_C"] == str(search.best_params_["C"])
    assert parent.data.metrics["best_cv_score"] == pytest.approx(search.best_score_)
    children = mlflow.search_runs(
        filter_string=f"tags.mlflow.parentRunId = '{run.info.run_id}'", output_format="list"
    )
    assert sorted(c.data.params["C"] for c in children) == ["0.1", "1.0", "10.0"]
    for child in children:
        assert "mean_test_score" in child.data.metrics
        assert child.info.status == "FINISHED"
    arts = {f.path for f in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert {"model", "best_estimator", "cv_results.csv"} <= arts
    best = mlflow.sklearn.load_model(f"runs:/{run.info.run_id}/best_estimator")
    assert (best.predict(x) == search.best_estimator_.predict(x)).all()


def test_disable_and_exclusive(tracking: CollectorProcess) -> None:
    x, y = _iris()
    mlflow.sklearn.autolog(exclusive=True)
    with mlflow.start_run() as run:
        LogisticRegression(max_iter=200).fit(x, y)
    assert mlflow.get_run(run.info.run_id).data.params == {}
    mlflow.sklearn.autolog(disable=True)
    LogisticRegression(max_iter=200).fit(x, y)
    assert mlflow.last_active_run().info.run_id == run.info.run_id  # no run was started


def test_registered_model_name_is_refused_before_training(tracking: CollectorProcess) -> None:
    with pytest.raises(MlflowException, match="no model registry"):
        mlflow.sklearn.autolog(registered_model_name="churn")
    with mlflow.start_run(), pytest.raises(MlflowException, match="no model registry"):
        mlflow.sklearn.log_model(LinearRegression(), "model", registered_model_name="churn")


def test_log_datasets_reach_mlflows_client(tracking: CollectorProcess) -> None:
    mlflow_client = pytest.importorskip("mlflow")
    mlflow.sklearn.autolog(log_models=False)
    x, y = _iris()
    with mlflow.start_run() as run:
        LogisticRegression(max_iter=200).fit(x, y)
    client = mlflow_client.MlflowClient(tracking_uri=tracking.url)
    inputs = client.get_run(run.info.run_id).inputs.dataset_inputs
    assert len(inputs) == 1
    ds = inputs[0].dataset
    assert ds.name == "dataset" and len(ds.digest) == 8 and ds.source_type == "code"
    assert '"features_shape": [150, 4]' in ds.profile
    assert [(t.key, t.value) for t in inputs[0].tags] == [("mlflow.data.context", "train")]
    ours = mlflow.get_run(run.info.run_id).inputs.dataset_inputs
    assert [(d.dataset.name, d.dataset.digest) for d in ours] == [(ds.name, ds.digest)]


@pytest.mark.parametrize("fmt", ["pickle", "cloudpickle", "skops"])
def test_save_load_round_trip_in_each_format(tmp_path: Path, fmt: str) -> None:
    if fmt == "skops":
        pytest.importorskip("skops")
    x, y = _iris()
    model = LogisticRegression(max_iter=200).fit(x, y)
    path = tmp_path / "m"
    mlflow.sklearn.save_model(model, path, serialization_format=fmt, input_example=x[:3])
    mlmodel = (path / "MLmodel").read_text()
    assert f"serialization_format: {fmt}" in mlmodel
    assert "loader_module: mlflow.sklearn" in mlmodel
    assert "signature:" in mlmodel and "saved_input_example_info:" in mlmodel
    assert (path / "requirements.txt").read_text().startswith("scikit-learn==")
    for uri in (str(path), path.as_uri()):
        assert (mlflow.sklearn.load_model(uri).predict(x) == model.predict(x)).all()
        assert (mlflow.pyfunc.load_model(uri).predict(x) == model.predict(x)).all()
    with pytest.raises(MlflowException, match="already exists"):
        mlflow.sklearn.save_model(model, path)


def test_load_errors_name_the_uri(tmp_path: Path) -> None:
    with pytest.raises(MlflowException, match="No MLflow model"):
        mlflow.pyfunc.load_model(os.fspath(tmp_path))
    with pytest.raises(MlflowException, match="no model registry"):
        mlflow.pyfunc.load_model("models:/churn/1")
    with pytest.raises(MlflowException, match="runs:/<run_id>"):
        mlflow.pyfunc.load_model("runs:/abc")

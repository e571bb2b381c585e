"""Model directories cross between flightlog and MLflow's own loaders (mlflow-skinny)."""

from __future__ import annotations

from pathlib import Path

import pytest

import flightlog
from tests.conftest import CollectorProcess

pytest.importorskip("sklearn")
mlflow = pytest.importorskip("mlflow")
pytest.importorskip("mlflow.pyfunc")

from sklearn.datasets import load_iris  # noqa: E402
from sklearn.ensemble import RandomForestClassifier  # noqa: E402


@pytest.fixture(autouse=True)
def _allow_pickles(monkeypatch: pytest.MonkeyPatch) -> None:
    # MLflow 3.x refuses every sklearn model file unless told the source is trusted.
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")


def _model() -> tuple[object, object, RandomForestClassifier]:
    x, y = load_iris(return_X_y=True)
    return x, y, RandomForestClassifier(n_estimators=4, random_state=0).fit(x, y)


@pytest.mark.parametrize("fmt", ["cloudpickle", "pickle", "skops"])
def test_mlflow_loads_a_model_logged_by_flightlog_through_the_collector(
    tracking: CollectorProcess, tmp_path: Path, fmt: str
) -> None:
    if fmt == "skops":
        pytest.importorskip("skops")
    x, _, model = _model()
    with flightlog.start_run():
        # A forest's trees are a type skops asks the caller to trust explicitly.
        trusted = ["sklearn.tree._tree.Tree"] if fmt == "skops" else None
        info = flightlog.sklearn.log_model(
            model,
            name="model",
            serialization_format=fmt,
            input_example=x[:2],
            skops_trusted_types=trusted,
        )
    mlflow.set_tracking_uri(tracking.url)
    try:
        # runs:/ resolves through MLflow's client and the collector's artifact proxy.
        (tmp_path / "a").mkdir()
        pyfunc = mlflow.pyfunc.load_model(info.model_uri, dst_path=str(tmp_path / "a"))
        assert (pyfunc.predict(x) == model.predict(x)).all()
        local = Path(
            flightlog.MlflowClient().download_artifacts(info.run_id, "model", str(tmp_path / "b"))
        )
        sk = mlflow.sklearn.load_model(str(local))
        assert (sk.predict(x) == model.predict(x)).all()
        assert mlflow.models.Model.load(str(local)).signature is not None
    finally:
        mlflow.set_tracking_uri(None)


def test_skops_refuses_untrusted_types_when_saving(tmp_path: Path) -> None:
    pytest.importorskip("skops")
    _, _, model = _model()
    with pytest.raises(flightlog.MlflowException, match=r"sklearn\.tree\._tree\.Tree"):
        flightlog.sklearn.save_model(model, tmp_path / "m", serialization_format="skops")
    assert not (tmp_path / "m").exists()


def test_flightlog_loads_a_model_saved_by_mlflow(tmp_path: Path) -> None:
    x, _, model = _model()
    mlflow.sklearn.save_model(model, str(tmp_path / "m"), serialization_format="cloudpickle")
    assert (flightlog.sklearn.load_model(tmp_path / "m").predict(x) == model.predict(x)).all()
    assert (flightlog.pyfunc.load_model(tmp_path / "m").predict(x) == model.predict(x)).all()


def test_mlflow_loads_a_keras_model_saved_by_flightlog(tmp_path: Path) -> None:
    keras = pytest.importorskip("keras")
    pytest.importorskip("tensorflow")
    import numpy as np

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input(shape=(3,)), keras.layers.Dense(2)])
    x = np.arange(12, dtype="float32").reshape(4, 3)
    flightlog.tensorflow.save_model(model, tmp_path / "k")
    expected = model.predict(x, verbose=0)
    np.testing.assert_allclose(mlflow.pyfunc.load_model(str(tmp_path / "k")).predict(x), expected)
    reloaded = mlflow.tensorflow.load_model(str(tmp_path / "k"))
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), expected)

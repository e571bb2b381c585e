"""Keras 3 (TensorFlow backend) autologging and the Keras model flavor."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import flightlog as mlflow
from flightlog import autologging
from flightlog.core.exceptions import MlflowException
from tests.conftest import CollectorProcess

keras = pytest.importorskip("keras")
pytest.importorskip("tensorflow")
np = pytest.importorskip("numpy")


@pytest.fixture(autouse=True)
def _autolog_off() -> Iterator[None]:
    yield
    autologging.reset_for_tests()


def _data() -> tuple[object, object]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype("float32")
    y = (x[:, 0] + x[:, 1] > 0).astype("float32")
    return x, y


def _model() -> object:
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input(shape=(4,)),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=0.01),
        loss="binary_crossentropy",
        metrics=["accuracy"],
    )
    return model


def test_fit_logs_epoch_metrics_params_summary_dataset_and_model(
    tracking: CollectorProcess,
) -> None:
    mlflow.tensorflow.autolog()
    x, y = _data()
    model = _model()
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=50)
    with mlflow.start_run() as run:
        history = model.fit(
            x, y, epochs=4, batch_size=16, validation_split=0.25, callbacks=[stop], verbose=0
        )
    rid = run.info.run_id
    got = mlflow.get_run(rid)
    p = got.data.params
    assert p["epochs"] == "4" and p["batch_size"] == "16" and p["optimizer_name"] == "Adam"
    assert float(p["opt_learning_rate"]) == pytest.approx(0.01)
    assert p["monitor"] == "val_loss" and p["patience"] == "50"
    client = mlflow.MlflowClient()
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        points = client.get_metric_history(rid, key)
        assert [m.step for m in points] == [0, 1, 2, 3], key
        assert [m.value for m in points] == pytest.approx(history.history[key])
    assert got.data.metrics["stopped_epoch"] == 0
    arts = {f.path for f in client.list_artifacts(rid)}
    assert {"model", "model_summary.txt"} <= arts
    loaded = mlflow.tensorflow.load_model(f"runs:/{rid}/model")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5)
    pyfunc = mlflow.pyfunc.load_model(f"runs:/{rid}/model")
    np.testing.assert_allclose(pyfunc.predict(x), model.predict(x, verbose=0), rtol=1e-5)


def test_every_n_iter_thins_epochs_and_a_run_is_started_and_ended(
    tracking: CollectorProcess,
) -> None:
    mlflow.tensorflow.autolog(every_n_iter=2, log_models=False, log_datasets=False)
    x, y = _data()
    _model().fit(x, y, epochs=5, verbose=0)
    assert mlflow.active_run() is None
    run = mlflow.last_active_run()
    assert run.info.status == "FINISHED"
    steps = [m.step for m in mlflow.MlflowClient().get_metric_history(run.info.run_id, "loss")]
    assert steps == [0, 2, 4]


def test_log_every_n_steps_adds_batch_points(tracking: CollectorProcess) -> None:
    mlflow.tensorflow.autolog(log_models=False, log_every_n_steps=2, log_every_epoch=False)
    x, y = _data()
    with mlflow.start_run() as run:
        _model().fit(x, y, epochs=2, batch_size=16, verbose=0)  # 4 batches per epoch
    steps = [m.step for m in mlflow.MlflowClient().get_metric_history(run.info.run_id, "loss")]
    assert steps == [2, 4, 6, 8]


def test_a_failing_fit_ends_its_run_failed(tracking: CollectorProcess) -> None:
    mlflow.tensorflow.autolog(log_models=False)
    x, y = _data()

    class Boom(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: object = None) -> None:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        _model().fit(x, y, epochs=1, verbose=0, callbacks=[Boom()])
    run = mlflow.last_active_run()
    assert run.info.status == "FAILED"


def test_bad_arguments_are_refused(tracking: CollectorProcess) -> None:
    with pytest.raises(MlflowException, match="no model registry"):
        mlflow.tensorflow.autolog(registered_model_name="m")
    with pytest.raises(MlflowException, match="every_n_iter"):
        mlflow.tensorflow.autolog(every_n_iter=0)

"""``flightlog.tensorflow``: Keras 3 autologging (TensorFlow backend) and the Keras model
flavor in MLflow's ``tensorflow`` layout.

``autolog()`` patches ``keras.Model.fit``: a fit logs, with MLflow's names, its params
(``epochs``, ``batch_size``, ``steps_per_epoch``, ..., ``optimizer_name``,
``opt_learning_rate`` and the optimizer's other ``opt_*`` settings, EarlyStopping's
``monitor``/``min_delta``/``patience``/``baseline``/``restore_best_weights``), every
epoch's metrics (``loss``, ``accuracy``, ``val_*``...) at step = epoch through a callback
(``every_n_iter`` thins them; ``log_every_n_steps`` adds per-batch points), the
``stopped_epoch``/``restored_epoch`` of early stopping, ``model_summary.txt``, the training
dataset and the model. Points go to the agent's queue: no round trip per batch or epoch.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

from flightlog import autologging as al
from flightlog import mlmodel
from flightlog.core.exceptions import INVALID_PARAMETER_VALUE, MlflowException
from flightlog.mlmodel import ModelInfo

FLAVOR_NAME = "tensorflow"
_DATA = "data"
_MODEL_FILE = "model.keras"
_MIN_VERSION = (3, 0)


# -- the model flavor ------------------------------------------------------------------------


def save_model(
    model: Any,
    path: str | os.PathLike[str],
    conda_env: Any = None,
    code_paths: Any = None,
    mlflow_model: Any = None,
    custom_objects: Any = None,
    signature: Any = None,
    input_example: Any = None,
    pip_requirements: list[str] | None = None,
    extra_pip_requirements: list[str] | None = None,
    saved_model_kwargs: dict[str, Any] | None = None,
    keras_model_kwargs: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
    *,
    _run_id: str | None = None,
    _artifact_path: str | None = None,
) -> dict[str, Any]:
    """Save a Keras 3 model as an MLflow model directory (``data/model.keras``)."""
    import keras

    target = mlmodel.new_model_dir(path)
    data = target / _DATA
    data.mkdir()
    model.save(data / _MODEL_FILE, **(keras_model_kwargs or {}))
    # MLflow's loader reads these two files to pick the Keras module and the format.
    data.joinpath("keras_module.txt").write_text("keras")
    data.joinpath("save_format.txt").write_text("keras")
    tf_version = _tensorflow_version()
    requirements = [mlmodel.pinned("tensorflow-cpu") or mlmodel.pinned("tensorflow")]
    requirements.append(mlmodel.pinned("keras"))
    return mlmodel.write_model_dir(
        target,
        flavor=FLAVOR_NAME,
        flavor_conf={
            "code": None,
            "data": _DATA,
            "model_type": "keras",
            "keras_version": tf_version or keras.__version__,
            "save_format": "keras",
        },
        loader_module="mlflow.tensorflow",
        pyfunc_conf={"data": _DATA},
        requirements=[r for r in requirements if r],
        pip_requirements=pip_requirements,
        extra_pip_requirements=extra_pip_requirements,
        signature=signature,
        input_example=input_example,
        metadata=metadata,
        run_id=_run_id,
        artifact_path=_artifact_path,
    )


def _tensorflow_version() -> str | None:
    try:
        import tensorflow as tf
    except ImportError:
        return None
    return str(tf.__version__)


def log_model(
    model: Any,
    artifact_path: str | None = None,
    custom_objects: Any = None,
    conda_env: Any = None,
    code_paths: Any = None,
    signature: Any = None,
    input_example: Any = None,
    registered_model_name: str | None = None,
    await_registration_for: int | None = None,
    pip_requirements: list[str] | None = None,
    extra_pip_requirements: list[str] | None = None,
    saved_model_kwargs: dict[str, Any] | None = None,
    keras_model_kwargs: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
    *,
    name: str | None = None,
    **kwargs: Any,
) -> ModelInfo:
    """Log a Keras model as an MLflow model of the active run."""
    return mlmodel.log_model(
        lambda local, run_id, path: save_model(
            model,
            local,
            signature=signature,
            input_example=input_example,
            pip_requirements=pip_requirements,
            extra_pip_requirements=extra_pip_requirements,
            keras_model_kwargs=keras_model_kwargs,
            metadata=metadata,
            _run_id=run_id,
            _artifact_path=path,
        ),
        artifact_path,
        name,
        registered_model_name,
    )


def _model_file(data: Path) -> Path:
    for candidate in (data / _MODEL_FILE, data / "model.h5", data / "model"):
        if candidate.exists():
            return candidate
    return data / _MODEL_FILE


def load_model(
    model_uri: str | os.PathLike[str],
    dst_path: str | None = None,
    saved_model_kwargs: dict[str, Any] | None = None,
    keras_model_kwargs: dict[str, Any] | None = None,
) -> Any:
    """Load a Keras model logged by flightlog or MLflow (``.keras``/``.h5`` files)."""
    import keras

    path = mlmodel.local_model_path(model_uri, dst_path)
    conf = mlmodel.flavor_conf(path, FLAVOR_NAME)
    return keras.models.load_model(
        _model_file(path / conf.get("data", _DATA)), **(keras_model_kwargs or {})
    )


class _KerasModelWrapper:
    """The pyfunc face of a Keras model: ``predict`` on arrays or DataFrames."""

    def __init__(self, model: Any) -> None:
        self.keras_model = model

    def predict(self, data: Any) -> Any:
        import numpy as np

        values = data.to_numpy() if hasattr(data, "to_numpy") else np.asarray(data)
        return self.keras_model.predict(values, verbose=0)

    def get_raw_model(self) -> Any:
        return self.keras_model


def _load_pyfunc(data_path: str) -> _KerasModelWrapper:
    """Called by flightlog.pyfunc.load_model with the model's data directory."""
    import keras

    return _KerasModelWrapper(keras.models.load_model(_model_file(Path(data_path))))


# -- autologging -----------------------------------------------------------------------------


def autolog(
    every_n_iter: int = 1,
    log_models: bool = True,
    log_datasets: bool = True,
    disable: bool = False,
    exclusive: bool = False,
    disable_for_unsupported_versions: bool = False,
    silent: bool = False,
    registered_model_name: str | None = None,
    log_input_examples: bool = False,
    log_model_signatures: bool = True,
    saved_model_kwargs: dict[str, Any] | None = None,
    keras_model_kwargs: dict[str, Any] | None = None,
    extra_tags: dict[str, Any] | None = None,
    log_every_epoch: bool = True,
    log_every_n_steps: int | None = None,
    **kwargs: Any,
) -> None:
    """Log params, per-epoch metrics, the model summary, the dataset and the model of every
    Keras ``Model.fit`` (MLflow's ``mlflow.tensorflow.autolog``). ``every_n_iter`` (MLflow
    1.x's name) logs every n-th epoch; ``log_every_n_steps`` adds a point every n batches.
    With no active run, each fit gets a run of its own."""
    import keras

    if every_n_iter < 1:
        raise MlflowException(
            f"every_n_iter must be a positive integer, not {every_n_iter!r}",
            INVALID_PARAMETER_VALUE,
        )
    al.configure(
        FLAVOR_NAME,
        log_models=log_models,
        log_datasets=log_datasets,
        disable=disable,
        exclusive=exclusive,
        disable_for_unsupported_versions=disable_for_unsupported_versions,
        silent=silent,
        registered_model_name=registered_model_name,
        extra_tags=extra_tags,
        framework_version=keras.__version__,
        min_version=_MIN_VERSION,
        every_n_iter=every_n_iter if log_every_epoch else 0,
        log_every_n_steps=log_every_n_steps,
        log_input_examples=log_input_examples,
        log_model_signatures=log_model_signatures,
        keras_model_kwargs=keras_model_kwargs,
    )
    al.patch(FLAVOR_NAME, keras.Model, "fit", _patched_fit)


_callback_classes: dict[bool, type] = {}


def _callback(run_id: str, every_n_epochs: int, every_n_steps: int | None) -> Any:
    """A Keras callback that queues metrics: per epoch, and per batch only when asked (a
    batch hook that is not defined costs nothing per step)."""
    import keras

    per_step = bool(every_n_steps)
    cls = _callback_classes.get(per_step)
    if cls is None:

        class FlightlogCallback(keras.callbacks.Callback):
            def __init__(self, run_id: str, every_n_epochs: int, every_n_steps: int) -> None:
                super().__init__()
                self.run_id = run_id
                self.every_n_epochs = every_n_epochs
                self.every_n_steps = every_n_steps
                self.step = 0

            def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
                if logs and self.every_n_epochs and epoch % self.every_n_epochs == 0:
                    al.log_metrics(self.run_id, logs, step=epoch)

        class FlightlogStepCallback(FlightlogCallback):
            def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
                self.step += 1
                if logs and self.step % self.every_n_steps == 0:
                    al.log_metrics(self.run_id, logs, step=self.step)

        cls = FlightlogStepCallback if per_step else FlightlogCallback
        _callback_classes[per_step] = cls
    return cls(run_id, every_n_epochs, every_n_steps or 0)


def _patched_fit(original: Any) -> Any:
    signature = inspect.signature(original)

    def fit(self: Any, *args: Any, **kwargs: Any) -> Any:
        cfg = al.active_config(FLAVOR_NAME)
        if cfg is None:
            return original(self, *args, **kwargs)
        with al.outermost(FLAVOR_NAME) as first:
            if not first:
                return original(self, *args, **kwargs)
            with al.autolog_run(FLAVOR_NAME, cfg) as run_id:
                if run_id is None:
                    return original(self, *args, **kwargs)
                bound = signature.bind(self, *args, **kwargs)
                bound.apply_defaults()
                call = dict(bound.arguments)
                extra = call.pop("kwargs", None) or {}
                call.update(extra)
                callbacks = list(call.get("callbacks") or [])
                al.safely(cfg, "params", lambda: al.log_params(run_id, _fit_params(self, call)))
                callbacks.append(
                    _callback(run_id, cfg.options["every_n_iter"], cfg.options["log_every_n_steps"])
                )
                bound.arguments["callbacks"] = callbacks
                history = original(*bound.args, **bound.kwargs)
                al.safely(cfg, "results", lambda: _after_fit(run_id, cfg, self, call, callbacks))
                return history

    return fit


def _fit_params(model: Any, call: dict[str, Any]) -> dict[str, Any]:
    import keras

    params: dict[str, Any] = {}
    x = call.get("x")
    batch_size = call.get("batch_size")
    if batch_size is None and hasattr(x, "shape"):
        batch_size = 32  # Keras's default for arrays
    params["batch_size"] = batch_size
    for key in (
        "epochs",
        "steps_per_epoch",
        "validation_split",
        "validation_steps",
        "validation_freq",
        "shuffle",
        "class_weight",
        "initial_epoch",
    ):
        params[key] = call.get(key)
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None:
        params["optimizer_name"] = type(optimizer).__name__
        config = optimizer.get_config()
        for key, value in config.items():
            if key != "name":
                params[f"opt_{key}"] = value
        try:
            params["opt_learning_rate"] = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
        except Exception:  # a schedule: its config is logged above
            pass
    for cb in call.get("callbacks") or []:
        if isinstance(cb, keras.callbacks.EarlyStopping):
            for key in ("monitor", "min_delta", "patience", "baseline", "restore_best_weights"):
                params[key] = getattr(cb, key, None)
    return {k: val for k, val in params.items() if val is not None}


def _after_fit(
    run_id: str, cfg: al.AutologConfig, model: Any, call: dict[str, Any], callbacks: list[Any]
) -> None:
    import keras

    from flightlog.client import MlflowClient

    for cb in callbacks:
        if isinstance(cb, keras.callbacks.EarlyStopping):
            stopped = int(getattr(cb, "stopped_epoch", 0))
            metrics: dict[str, Any] = {"stopped_epoch": stopped}
            if cb.restore_best_weights and getattr(cb, "best_weights", None) is not None:
                metrics["restored_epoch"] = getattr(cb, "best_epoch", stopped)
            al.log_metrics(run_id, metrics, step=0)
    lines: list[str] = []
    model.summary(print_fn=lambda line, *a, **k: lines.append(line))
    MlflowClient().log_text(run_id, "\n".join(lines) + "\n", "model_summary.txt")
    x: Any = call.get("x")
    y: Any = call.get("y")
    if cfg.log_datasets and hasattr(x, "shape"):
        al.safely(cfg, "dataset", lambda: al.log_training_dataset(run_id, x, y))
    if cfg.log_models:
        signature = None
        if cfg.options.get("log_model_signatures", True) and hasattr(x, "shape"):
            signature = al.safely(
                cfg,
                "signature",
                lambda: mlmodel.infer_signature(x[:2], model.predict(x[:2], verbose=0)),
            )
        example = x[:5] if cfg.options.get("log_input_examples") and hasattr(x, "shape") else None
        log_model(
            model,
            "model",
            signature=signature,
            input_example=example,
            keras_model_kwargs=cfg.options.get("keras_model_kwargs"),
        )

"""``flightlog.pytorch``: PyTorch Lightning autologging and the PyTorch model flavor.

``autolog()`` patches ``Trainer.fit`` under both import names, ``lightning`` and
``pytorch_lightning`` (whichever are installed). A fit logs, with MLflow's names: the
params ``epochs``, ``optimizer_name`` and the optimizer's defaults (``lr``, ``betas``...),
EarlyStopping's ``monitor``/``mode``/``patience``/``min_delta`` (and the metrics
``stopped_epoch``/``wait_count``), every ``self.log`` value in ``trainer.callback_metrics``
(training and validation) at step = epoch after each epoch (``log_every_n_epoch`` thins them;
``log_every_n_step`` adds points at step = global step), ``model_summary.txt`` and the
model. Points go to the agent's queue: no round trip per batch or epoch.

Models are saved whole with ``torch.save`` (a pickle: loading runs code from the file, so
load only models you trust, and the model's class must be importable where it is loaded).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import pickle
from pathlib import Path
from typing import Any

from flightlog import autologging as al
from flightlog import mlmodel
from flightlog.core.exceptions import INVALID_PARAMETER_VALUE, MlflowException
from flightlog.mlmodel import ModelInfo

FLAVOR_NAME = "pytorch"
_DATA = "data"
_MODEL_FILE = "model.pth"
_PICKLE_INFO = "pickle_module_info.txt"
#: The Lightning packages autolog patches, by import name.
LIGHTNING_PACKAGES = ("lightning.pytorch", "pytorch_lightning")
_MIN_VERSION = (2, 0)


# -- the model flavor ------------------------------------------------------------------------


def save_model(
    pytorch_model: Any,
    path: str | os.PathLike[str],
    conda_env: Any = None,
    mlflow_model: Any = None,
    code_paths: Any = None,
    pickle_module: Any = None,
    signature: Any = None,
    input_example: Any = None,
    requirements_file: Any = None,
    extra_files: Any = None,
    pip_requirements: list[str] | None = None,
    extra_pip_requirements: list[str] | None = None,
    metadata: dict[str, Any] | None = None,
    *,
    _run_id: str | None = None,
    _artifact_path: str | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Save a ``torch.nn.Module`` (a LightningModule included) as an MLflow model directory
    (``data/model.pth``, written by ``torch.save``)."""
    import torch

    if not isinstance(pytorch_model, torch.nn.Module):
        raise MlflowException(
            f"pytorch.save_model takes a torch.nn.Module, not {type(pytorch_model).__name__}",
            INVALID_PARAMETER_VALUE,
        )
    module = pickle_module or pickle
    target = mlmodel.new_model_dir(path)
    data = target / _DATA
    data.mkdir()
    data.joinpath(_PICKLE_INFO).write_text(module.__name__)
    torch.save(pytorch_model, data / _MODEL_FILE, pickle_module=module, **kwargs)
    requirements = [mlmodel.pinned("torch")]
    top = type(pytorch_model).__mro__
    if any(k.__module__.startswith("lightning") for k in top):
        requirements.append(mlmodel.pinned("lightning"))
    elif any(k.__module__.startswith("pytorch_lightning") for k in top):
        requirements.append(mlmodel.pinned("pytorch-lightning"))
    return mlmodel.write_model_dir(
        target,
        flavor=FLAVOR_NAME,
        flavor_conf={"code": None, "model_data": _DATA, "pytorch_version": str(torch.__version__)},
        loader_module="mlflow.pytorch",
        requirements=[r for r in requirements if r],
        pip_requirements=pip_requirements,
        extra_pip_requirements=extra_pip_requirements,
        signature=signature,
        input_example=input_example,
        metadata=metadata,
        pyfunc_conf={
            "data": _DATA,
            "pickle_module_name": module.__name__,
            "model_config": {"device": None},
        },
        run_id=_run_id,
        artifact_path=_artifact_path,
    )


def log_model(
    pytorch_model: Any,
    artifact_path: str | None = None,
    conda_env: Any = None,
    code_paths: Any = None,
    pickle_module: Any = None,
    registered_model_name: str | None = None,
    signature: Any = None,
    input_example: Any = None,
    await_registration_for: int | None = None,
    requirements_file: Any = None,
    extra_files: Any = None,
    pip_requirements: list[str] | None = None,
    extra_pip_requirements: list[str] | None = None,
    metadata: dict[str, Any] | None = None,
    *,
    name: str | None = None,
    **kwargs: Any,
) -> ModelInfo:
    """Log a PyTorch model as an MLflow model of the active run."""
    return mlmodel.log_model(
        lambda local, run_id, path: save_model(
            pytorch_model,
            local,
            pickle_module=pickle_module,
            signature=signature,
            input_example=input_example,
            pip_requirements=pip_requirements,
            extra_pip_requirements=extra_pip_requirements,
            metadata=metadata,
            _run_id=run_id,
            _artifact_path=path,
        ),
        artifact_path,
        name,
        registered_model_name,
    )


def _load_file(data: Path, **kwargs: Any) -> Any:
    import torch

    file = data / _MODEL_FILE if data.is_dir() else data
    # Whatever pickle module wrote it (MLflow's default is a cloudpickle wrapper), the
    # standard unpickler reads it; weights_only=False because the file holds a whole module.
    return torch.load(file, weights_only=False, **kwargs)


def load_model(
    model_uri: str | os.PathLike[str], dst_path: str | None = None, **kwargs: Any
) -> Any:
    """Load a PyTorch model logged by flightlog or MLflow. This unpickles: trusted sources
    only, with the model's class importable."""
    path = mlmodel.local_model_path(model_uri, dst_path)
    conf = mlmodel.flavor_conf(path, FLAVOR_NAME)
    return _load_file(path / conf.get("model_data", _DATA), **kwargs)


class _PyTorchWrapper:
    """The pyfunc face of a torch module: float32 tensors in, numpy arrays out."""

    def __init__(self, model: Any) -> None:
        self.pytorch_model = model

    def predict(self, data: Any) -> Any:
        import numpy as np
        import torch

        values = data.to_numpy() if hasattr(data, "to_numpy") else np.asarray(data)
        self.pytorch_model.eval()
        with torch.no_grad():
            out = self.pytorch_model(torch.as_tensor(values, dtype=torch.float32))
        return out.detach().cpu().numpy()

    def get_raw_model(self) -> Any:
        return self.pytorch_model


def _load_pyfunc(data_path: str) -> _PyTorchWrapper:
    """Called by flightlog.pyfunc.load_model with the model's data directory."""
    return _PyTorchWrapper(_load_file(Path(data_path)))


# -- autologging -----------------------------------------------------------------------------


def _lightning_packages() -> list[Any]:
    found = []
    for name in LIGHTNING_PACKAGES:
        top = name.split(".")[0]
        if importlib.util.find_spec(top) is not None:
            found.append(importlib.import_module(name))
    return found


def autolog(
    log_every_n_epoch: int = 1,
    log_every_n_step: int | None = None,
    log_models: bool = True,
    log_datasets: bool = True,
    disable: bool = False,
    exclusive: bool = False,
    disable_for_unsupported_versions: bool = False,
    silent: bool = False,
    registered_model_name: str | None = None,
    extra_tags: dict[str, Any] | None = None,
    checkpoint: bool = False,
    **kwargs: Any,
) -> None:
    """Log params, every ``self.log`` value, the model summary and the model of every
        PyTorch Lightning ``Trainer.fit`` (MLflow's ``mlflow.pytorch.autolog``), under the
        ``lightning`` and ``pytorch_lightning`` import names. With no active run, each fit gets
        a run of its own. ``checkpoint`` is accepted for MLflow's signature, but flightlog logs
    the final model only (checkpoint logging is not implemented); ``log_datasets`` has no
    effect (dataloaders are not recorded)."""
    packages = _lightning_packages()
    if not packages:
        raise MlflowException(
            "pytorch autolog needs PyTorch Lightning: pip install 'flightlog[pytorch]'"
        )
    if log_every_n_epoch < 1 or (log_every_n_step is not None and log_every_n_step < 1):
        raise MlflowException(
            "log_every_n_epoch and log_every_n_step must be positive integers",
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
        framework_version=str(packages[0].__version__),
        min_version=_MIN_VERSION,
        log_every_n_epoch=log_every_n_epoch,
        log_every_n_step=log_every_n_step,
    )
    for package in packages:
        al.patch(FLAVOR_NAME, package.Trainer, "fit", _patched_fit_for(package))


_callback_classes: dict[tuple[str, bool], type] = {}


def _callback(package: Any, run_id: str, every_n_epoch: int, every_n_step: int | None) -> Any:
    """A Lightning callback (of ``package``'s own Callback class) that queues metrics. The
    per-batch hook exists only when ``log_every_n_step`` asks for it."""
    per_step = bool(every_n_step)
    key = (package.__name__, per_step)
    cls = _callback_classes.get(key)
    if cls is None:

        class FlightlogLightningCallback(package.Callback):
            def __init__(self, run_id: str, every_n_epoch: int, every_n_step: int) -> None:
                self.run_id = run_id
                self.every_n_epoch = every_n_epoch
                self.every_n_step = every_n_step

            def _log(self, trainer: Any, step: int) -> None:
                al.log_metrics(self.run_id, trainer.callback_metrics, step=step)

            def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
                # Validation at the end of an epoch has run by now, so callback_metrics
                # holds this epoch's training and validation values: one point each.
                epoch = trainer.current_epoch
                if epoch % self.every_n_epoch == 0:
                    self._log(trainer, epoch)

        class FlightlogLightningStepCallback(FlightlogLightningCallback):
            def on_train_batch_end(
                self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
            ) -> None:
                if trainer.global_step % self.every_n_step == 0:
                    self._log(trainer, trainer.global_step)

        cls = FlightlogLightningStepCallback if per_step else FlightlogLightningCallback
        _callback_classes[key] = cls
    return cls(run_id, every_n_epoch, every_n_step or 0)


def _patched_fit_for(package: Any) -> Any:
    def make(original: Any) -> Any:
        def fit(self: Any, model: Any, *args: Any, **kwargs: Any) -> Any:
            cfg = al.active_config(FLAVOR_NAME)
            # Under distributed training only rank 0 logs, as with Lightning's own loggers.
            if cfg is None or getattr(self, "global_rank", 0) != 0:
                return original(self, model, *args, **kwargs)
            with al.outermost(FLAVOR_NAME) as first:
                if not first:
                    return original(self, model, *args, **kwargs)
                with al.autolog_run(FLAVOR_NAME, cfg) as run_id:
                    if run_id is None:
                        return original(self, model, *args, **kwargs)
                    return _fit_and_log(package, original, run_id, cfg, self, model, args, kwargs)

        return fit

    return make


def _fit_and_log(
    package: Any,
    original: Any,
    run_id: str,
    cfg: al.AutologConfig,
    trainer: Any,
    model: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    opts = cfg.options
    callback = _callback(package, run_id, opts["log_every_n_epoch"], opts["log_every_n_step"])
    trainer.callbacks.append(callback)
    try:
        result = original(trainer, model, *args, **kwargs)
    finally:
        trainer.callbacks.remove(callback)
    al.safely(cfg, "params", lambda: al.log_params(run_id, _fit_params(package, trainer)))
    al.safely(cfg, "results", lambda: _after_fit(package, run_id, cfg, trainer, model))
    return result


def _early_stopping(package: Any, trainer: Any) -> list[Any]:
    return [cb for cb in trainer.callbacks if isinstance(cb, package.callbacks.EarlyStopping)]


def _fit_params(package: Any, trainer: Any) -> dict[str, Any]:
    params: dict[str, Any] = {"epochs": trainer.max_epochs}
    optimizers = getattr(trainer, "optimizers", None) or []
    if optimizers:
        optimizer = optimizers[0]
        params["optimizer_name"] = type(optimizer).__name__
        for key, value in getattr(optimizer, "defaults", {}).items():
            params[key] = value
    for stop in _early_stopping(package, trainer):
        for key in ("monitor", "mode", "patience", "min_delta"):
            params[key] = getattr(stop, key, None)
    return {k: val for k, val in params.items() if val is not None}


def _after_fit(package: Any, run_id: str, cfg: al.AutologConfig, trainer: Any, model: Any) -> None:
    from flightlog.client import MlflowClient

    for stop in _early_stopping(package, trainer):
        metrics = {"stopped_epoch": stop.stopped_epoch, "wait_count": stop.wait_count}
        al.log_metrics(run_id, metrics, step=0)
    summary = importlib.import_module(f"{package.__name__}.utilities.model_summary")
    text = str(summary.ModelSummary(model, max_depth=-1))
    MlflowClient().log_text(run_id, text + "\n", "model_summary.txt")
    if cfg.log_models:
        log_model(model, "model")

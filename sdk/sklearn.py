"""``flightlog.sklearn``: scikit-learn autologging and the ``sklearn`` model flavor.

``autolog()`` patches ``fit`` (and ``fit_transform``/``fit_predict`` where a class defines
its own) of every scikit-learn estimator. A fit logs, with MLflow's names: the estimator's
params, the tags ``estimator_name`` and ``estimator_class``, training metrics
(``training_accuracy_score``, ``training_precision_score``, ``training_recall_score``,
``training_f1_score``, ``training_log_loss``, ``training_roc_auc``, ``training_score`` for
classifiers; ``training_mean_squared_error``, ``training_root_mean_squared_error``,
``training_mean_absolute_error``, ``training_r2_score``, ``training_score`` for regressors),
the training dataset and the model. ``GridSearchCV``/``RandomizedSearchCV`` also log
``best_<param>`` params, ``best_cv_score``, the best estimator, ``cv_results.csv`` and one
child run per candidate (the ``max_tuning_runs`` best, 5 by default).

Models are written in MLflow's format; ``serialization_format`` is ``"cloudpickle"`` (the
default), ``"pickle"`` or ``"skops"`` (``pip install skops``), the one that does not run
code from the file when loading. Loading a pickle runs whatever code it holds: load only
models you trust.
"""

from __future__ import annotations

import csv
import io
import os
import pickle
import shutil
from pathlib import Path
from typing import Any

from flightlog import autologging as al
from flightlog import mlmodel
from flightlog.core.exceptions import INVALID_PARAMETER_VALUE, MlflowException
from flightlog.mlmodel import ModelInfo

FLAVOR_NAME = "sklearn"
SERIALIZATION_FORMAT_PICKLE = "pickle"
SERIALIZATION_FORMAT_CLOUDPICKLE = "cloudpickle"
SERIALIZATION_FORMAT_SKOPS = "skops"
SUPPORTED_SERIALIZATION_FORMATS = (
    SERIALIZATION_FORMAT_PICKLE,
    SERIALIZATION_FORMAT_CLOUDPICKLE,
    SERIALIZATION_FORMAT_SKOPS,
)
_MIN_VERSION = (1, 3)
_PATCHED_METHODS = ("fit", "fit_transform", "fit_predict")


# -- the model flavor ------------------------------------------------------------------------


def _default_format() -> str:
    try:
        import cloudpickle  # noqa: F401
    except ImportError:
        return SERIALIZATION_FORMAT_PICKLE
    return SERIALIZATION_FORMAT_CLOUDPICKLE


def _serialize(
    sk_model: Any, path: Path, serialization_format: str, trusted: list[str] | None
) -> str:
    """Write the model file; returns its name inside the model directory."""
    if serialization_format == SERIALIZATION_FORMAT_SKOPS:
        try:
            import skops.io
        except ImportError:
            raise MlflowException(
                "serialization_format='skops' needs skops: pip install 'flightlog[skops]'"
            ) from None
        target = path / "model.skops"
        skops.io.dump(sk_model, target)
        untrusted = skops.io.get_untrusted_types(file=target)
        missing = sorted(set(untrusted) - set(trusted or []))
        if missing:
            raise MlflowException(
                "The model references types that skops does not trust by default: "
                f"{', '.join(missing)}. If loading them is safe, pass them as "
                "skops_trusted_types=[...]",
                INVALID_PARAMETER_VALUE,
            )
        return target.name
    target = path / "model.pkl"
    with open(target, "wb") as f:
        if serialization_format == SERIALIZATION_FORMAT_CLOUDPICKLE:
            import cloudpickle

            cloudpickle.dump(sk_model, f)
        else:
            pickle.dump(sk_model, f, protocol=pickle.DEFAULT_PROTOCOL)
    return target.name


def save_model(
    sk_model: Any,
    path: str | os.PathLike[str],
    conda_env: Any = None,
    code_paths: Any = None,
    mlflow_model: Any = None,
    serialization_format: str | None = None,
    signature: Any = None,
    input_example: Any = None,
    pip_requirements: list[str] | None = None,
    extra_pip_requirements: list[str] | None = None,
    pyfunc_predict_fn: str = "predict",
    metadata: dict[str, Any] | None = None,
    skops_trusted_types: list[str] | None = None,
    *,
    _run_id: str | None = None,
    _artifact_path: str | None = None,
) -> dict[str, Any]:
    """Save a scikit-learn model as an MLflow model directory at ``path`` (which must not
    exist or be empty); returns the MLmodel contents."""
    import sklearn

    fmt = serialization_format or _default_format()
    if fmt not in SUPPORTED_SERIALIZATION_FORMATS:
        raise MlflowException(
            f"Unrecognized serialization format {fmt!r}; use one of "
            f"{', '.join(SUPPORTED_SERIALIZATION_FORMATS)}",
            INVALID_PARAMETER_VALUE,
        )
    target = mlmodel.new_model_dir(path)
    try:
        data = _serialize(sk_model, target, fmt, skops_trusted_types)
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)  # no half-written model directory
        raise
    if signature is None and input_example is not None and hasattr(sk_model, "predict"):
        signature = mlmodel.infer_signature(input_example, sk_model.predict(input_example))
    requirements = [mlmodel.pinned("scikit-learn")]
    if fmt != SERIALIZATION_FORMAT_PICKLE:
        requirements.append(mlmodel.pinned(fmt))
    has_predict = hasattr(sk_model, pyfunc_predict_fn)
    return mlmodel.write_model_dir(
        target,
        flavor=FLAVOR_NAME,
        flavor_conf={
            "code": None,
            "pickled_model": data,
            "serialization_format": fmt,
            "sklearn_version": sklearn.__version__,
            "skops_trusted_types": skops_trusted_types,
        },
        loader_module="mlflow.sklearn" if has_predict else None,
        requirements=[r for r in requirements if r],
        pip_requirements=pip_requirements,
        extra_pip_requirements=extra_pip_requirements,
        signature=signature,
        input_example=input_example,
        metadata=metadata,
        pyfunc_conf={"model_path": data, "predict_fn": pyfunc_predict_fn},
        run_id=_run_id,
        artifact_path=_artifact_path,
    )


def log_model(
    sk_model: Any,
    artifact_path: str | None = None,
    conda_env: Any = None,
    code_paths: Any = None,
    serialization_format: str | None = None,
    registered_model_name: str | None = None,
    signature: Any = None,
    input_example: Any = None,
    await_registration_for: int | None = None,
    pip_requirements: list[str] | None = None,
    extra_pip_requirements: list[str] | None = None,
    pyfunc_predict_fn: str = "predict",
    metadata: dict[str, Any] | None = None,
    skops_trusted_types: list[str] | None = None,
    *,
    name: str | None = None,
    **kwargs: Any,
) -> ModelInfo:
    """Log a scikit-learn model as an MLflow model under ``artifact_path`` (or ``name``) of
    the active run; ``runs:/<run_id>/<path>`` loads it back."""
    return mlmodel.log_model(
        lambda local, run_id, path: save_model(
            sk_model,
            local,
            serialization_format=serialization_format,
            signature=signature,
            input_example=input_example,
            pip_requirements=pip_requirements,
            extra_pip_requirements=extra_pip_requirements,
            pyfunc_predict_fn=pyfunc_predict_fn,
            metadata=metadata,
            skops_trusted_types=skops_trusted_types,
            _run_id=run_id,
            _artifact_path=path,
        ),
        artifact_path,
        name,
        registered_model_name,
    )


def _load_file(path: Path, conf: dict[str, Any]) -> Any:
    fmt = conf.get("serialization_format", SERIALIZATION_FORMAT_PICKLE)
    if fmt == SERIALIZATION_FORMAT_SKOPS:
        import skops.io

        return skops.io.load(path, trusted=conf.get("skops_trusted_types"))
    with open(path, "rb") as f:
        if fmt == SERIALIZATION_FORMAT_CLOUDPICKLE:
            import cloudpickle

            return cloudpickle.load(f)
        return pickle.load(f)


def load_model(model_uri: str | os.PathLike[str], dst_path: str | None = None) -> Any:
    """Load a scikit-learn model (logged by flightlog or MLflow) from ``runs:/<run_id>/<path>``,
    ``file:`` or a local path. Pickled models run code when loaded: trusted sources only."""
    path = mlmodel.local_model_path(model_uri, dst_path)
    conf = mlmodel.flavor_conf(path, FLAVOR_NAME)
    return _load_file(path / conf["pickled_model"], conf)


class _SklearnModelWrapper:
    """The pyfunc face of a scikit-learn model."""

    def __init__(self, model: Any, predict_fn: str) -> None:
        self.sklearn_model = model
        self._predict = getattr(model, predict_fn)

    def predict(self, data: Any) -> Any:
        return self._predict(data)

    def get_raw_model(self) -> Any:
        return self.sklearn_model


def _load_pyfunc(data_path: str) -> _SklearnModelWrapper:
    """Called by flightlog.pyfunc.load_model with the model file's path."""
    file = Path(data_path)
    root = file.parent if file.is_file() else file
    flavors = mlmodel.read_mlmodel(root)["flavors"]
    conf = flavors.get(FLAVOR_NAME, {})
    if not file.is_file():
        file = root / conf["pickled_model"]
    predict_fn = flavors.get("python_function", {}).get("predict_fn", "predict")
    return _SklearnModelWrapper(_load_file(file, conf), predict_fn)


# -- autologging -----------------------------------------------------------------------------


def autolog(
    log_input_examples: bool = False,
    log_model_signatures: bool = True,
    log_models: bool = True,
    log_datasets: bool = True,
    disable: bool = False,
    exclusive: bool = False,
    disable_for_unsupported_versions: bool = False,
    silent: bool = False,
    max_tuning_runs: int | None = 5,
    log_post_training_metrics: bool = True,
    serialization_format: str | None = None,
    registered_model_name: str | None = None,
    pos_label: Any = None,
    extra_tags: dict[str, Any] | None = None,
) -> None:
    """Log params, training metrics, tags, the dataset and the model of every scikit-learn
    ``fit`` (MLflow's ``mlflow.sklearn.autolog``). With no active run, each fit gets a run
    of its own. ``registered_model_name`` must be None: flightlog has no model registry.
    ``log_post_training_metrics`` is accepted for MLflow's signature, but flightlog does not
    log metrics of sklearn.metrics calls made after training (not implemented)."""
    import sklearn
    from sklearn.utils import all_estimators

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
        framework_version=sklearn.__version__,
        min_version=_MIN_VERSION,
        log_input_examples=log_input_examples,
        log_model_signatures=log_model_signatures,
        max_tuning_runs=max_tuning_runs,
        serialization_format=serialization_format,
        pos_label=pos_label,
    )
    for _, cls in all_estimators():
        for method in _PATCHED_METHODS:
            al.patch(FLAVOR_NAME, cls, method, _patched_fit)


def _patched_fit(original: Any) -> Any:
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
                al.safely(cfg, "params", lambda: _log_pre_fit(run_id, self))
                result = original(self, *args, **kwargs)
                x, y, weight = _fit_data(args, kwargs)
                al.safely(cfg, "metrics", lambda: _log_post_fit(run_id, cfg, self, x, y, weight))
                return result

    return fit


def _fit_data(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any, Any]:
    x = args[0] if args else kwargs.get("X")
    y = args[1] if len(args) > 1 else kwargs.get("y")
    return x, y, kwargs.get("sample_weight")


def _log_pre_fit(run_id: str, estimator: Any) -> None:
    al.log_params(run_id, estimator.get_params(deep=True))
    cls = type(estimator)
    al.set_tags(
        run_id,
        {"estimator_name": cls.__name__, "estimator_class": f"{cls.__module__}.{cls.__name__}"},
    )


def training_metrics(
    estimator: Any, x: Any, y: Any, weight: Any, pos_label: Any = None
) -> dict[str, float]:
    """MLflow's training metrics of a fitted classifier or regressor (``training_score``
    alone for other estimators with a ``score``). Precision, recall and F1 are weighted
    averages, or the scores of ``pos_label`` for a binary classifier when it is given."""
    from sklearn import metrics as m
    from sklearn.base import is_classifier, is_regressor

    out: dict[str, float] = {}
    if y is None:
        return out
    if is_classifier(estimator):
        pred = estimator.predict(x)
        out["training_accuracy_score"] = m.accuracy_score(y, pred, sample_weight=weight)
        binary = pos_label is not None and len(getattr(estimator, "classes_", ())) == 2
        averaging: dict[str, Any] = (
            {"average": "binary", "pos_label": pos_label} if binary else {"average": "weighted"}
        )
        for metric, fn in (
            ("precision", m.precision_score),
            ("recall", m.recall_score),
            ("f1", m.f1_score),
        ):
            out[f"training_{metric}_score"] = fn(
                y, pred, sample_weight=weight, zero_division=0, **averaging
            )
        if hasattr(estimator, "predict_proba"):
            proba = estimator.predict_proba(x)
            labels = getattr(estimator, "classes_", None)
            out["training_log_loss"] = m.log_loss(y, proba, sample_weight=weight, labels=labels)
            try:
                if proba.shape[1] == 2:
                    out["training_roc_auc"] = m.roc_auc_score(y, proba[:, 1], sample_weight=weight)
                else:
                    out["training_roc_auc"] = m.roc_auc_score(
                        y, proba, average="weighted", multi_class="ovo", labels=labels
                    )
            except ValueError:  # one class present in y: AUC is undefined
                pass
    elif is_regressor(estimator):
        pred = estimator.predict(x)
        mse = m.mean_squared_error(y, pred, sample_weight=weight)
        out["training_mean_squared_error"] = mse
        out["training_root_mean_squared_error"] = float(mse) ** 0.5
        out["training_mean_absolute_error"] = m.mean_absolute_error(y, pred, sample_weight=weight)
        out["training_r2_score"] = m.r2_score(y, pred, sample_weight=weight)
    if hasattr(estimator, "score"):
        try:
            kw = {} if weight is None else {"sample_weight": weight}
            out["training_score"] = estimator.score(x, y, **kw)
        except Exception:  # e.g. a scorer that needs more than (X, y)
            pass
    return {k: float(val) for k, val in out.items()}


def _log_post_fit(
    run_id: str, cfg: al.AutologConfig, estimator: Any, x: Any, y: Any, w: Any
) -> None:
    from sklearn.model_selection._search import BaseSearchCV

    metrics = training_metrics(estimator, x, y, w, cfg.options.get("pos_label"))
    al.log_metrics(run_id, metrics, step=0)
    search = isinstance(estimator, BaseSearchCV)
    if search and hasattr(estimator, "best_params_"):
        al.safely(cfg, "search results", lambda: _log_search(run_id, cfg, estimator))
    if cfg.log_datasets and x is not None:
        al.safely(cfg, "dataset", lambda: al.log_training_dataset(run_id, x, y))
    if cfg.log_models:
        signature = None
        if cfg.options.get("log_model_signatures", True) and hasattr(estimator, "predict"):
            signature = al.safely(
                cfg, "signature", lambda: mlmodel.infer_signature(x, estimator.predict(x[:5]))
            )
        example = x[:5] if cfg.options.get("log_input_examples") and x is not None else None
        fmt = cfg.options.get("serialization_format")
        log_model(
            estimator, "model", serialization_format=fmt, signature=signature, input_example=example
        )
        if search and hasattr(estimator, "best_estimator_"):
            log_model(estimator.best_estimator_, "best_estimator", serialization_format=fmt)


def _log_search(run_id: str, cfg: al.AutologConfig, search: Any) -> None:
    """Best params and score on the parent run; one child run per top candidate."""
    from flightlog import fluent
    from flightlog.client import MlflowClient

    al.log_params(run_id, {f"best_{k}": v for k, v in search.best_params_.items()})
    if hasattr(search, "best_score_"):
        al.log_metrics(run_id, {"best_cv_score": search.best_score_}, step=0)
    results: dict[str, Any] = search.cv_results_
    text = io.StringIO()
    writer = csv.writer(text)
    keys = list(results)
    writer.writerow(keys)
    for row in zip(*(results[k] for k in keys), strict=True):
        writer.writerow(row)
    client = MlflowClient()
    client.log_text(run_id, text.getvalue(), "cv_results.csv")

    limit = cfg.options.get("max_tuning_runs", 5)
    ranks = list(results.get("rank_test_score", range(1, len(results["params"]) + 1)))
    order = sorted(range(len(ranks)), key=lambda i: (ranks[i], i))
    if limit is not None:
        order = order[:limit]
    active = fluent.active_run()
    experiment_id = (
        active.info.experiment_id
        if active is not None and active.info.run_id == run_id
        else client.get_run(run_id).info.experiment_id
    )
    base = search.estimator.get_params(deep=True) if hasattr(search, "estimator") else {}
    for i in order:
        child = client.create_run(
            experiment_id,
            tags={
                "mlflow.parentRunId": run_id,
                "mlflow.autologging": FLAVOR_NAME,
                **cfg.extra_tags,
            },
        )
        cid = child.info.run_id
        al.log_params(cid, {**base, **results["params"][i]})
        numeric = {
            k: results[k][i]
            for k in keys
            if k != "params" and not k.startswith("param_") and _is_number(results[k][i])
        }
        al.log_metrics(cid, numeric, step=0)
        client.set_terminated(cid)


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True

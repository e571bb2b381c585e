"""What every framework's autolog shares: its settings, the patching of ``fit``, the run a
``fit`` logs into, dataset inputs, and ``flightlog.autolog()`` for every installed framework.

A patched ``fit`` reads its flavor's settings at call time, so calling ``autolog`` again
(``disable=True`` included) takes effect without unpatching. Only the outermost patched
call of a flavor logs: a Pipeline's steps or a search's candidates are fitted inside it.
Everything logged goes through the agent's queue (``log_metrics``, ``log_params``,
tags); a ``fit`` pays one flush at its end, when it uploads the model, never per batch
or epoch.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from flightlog import fluent
from flightlog.client import MlflowClient
from flightlog.core.entities import Param, RunStatus, RunTag
from flightlog.core.exceptions import INVALID_PARAMETER_VALUE, MlflowException

#: Longest param value MLflow stores; longer values are cut (autolog logs reprs).
MAX_PARAM_VALUE = 6000


@dataclass
class AutologConfig:
    """One flavor's autolog settings, with MLflow's names and meanings."""

    log_models: bool = True
    log_datasets: bool = True
    disable: bool = False
    exclusive: bool = False
    silent: bool = False
    extra_tags: dict[str, str] = field(default_factory=dict)
    #: Flavor-specific settings (every_n_iter, max_tuning_runs, log_every_n_step, ...).
    options: dict[str, Any] = field(default_factory=dict)


_configs: dict[str, AutologConfig] = {}
_guard = threading.local()


def check_registered_model_name(name: str | None) -> None:
    """Refuse a model registry name: flightlog has no model registry (yet)."""
    if name is not None:
        raise MlflowException(
            f"registered_model_name={name!r}: flightlog has no model registry (yet), so a model "
            "cannot be registered. Pass registered_model_name=None; the model is still logged "
            "as an artifact of the run (runs:/<run_id>/model).",
            INVALID_PARAMETER_VALUE,
        )


def version_tuple(version: str) -> tuple[int, ...]:
    """(major, minor) of a version string such as '2.6.0rc1'."""
    parts: list[int] = []
    for piece in version.split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def configure(
    flavor: str,
    *,
    log_models: bool,
    log_datasets: bool,
    disable: bool,
    exclusive: bool,
    disable_for_unsupported_versions: bool,
    silent: bool,
    registered_model_name: str | None,
    extra_tags: dict[str, Any] | None,
    framework_version: str | None = None,
    min_version: tuple[int, ...] = (),
    **options: Any,
) -> AutologConfig:
    """Record a flavor's settings; raises before any training for a registry name."""
    check_registered_model_name(registered_model_name)
    unsupported = framework_version is not None and version_tuple(framework_version) < min_version
    if unsupported and disable_for_unsupported_versions:
        disable = True
        if not silent:
            warnings.warn(
                f"flightlog: {flavor} autolog is disabled for version {framework_version} "
                f"(tested from {'.'.join(map(str, min_version))} on)",
                stacklevel=3,
            )
    cfg = AutologConfig(
        log_models=log_models,
        log_datasets=log_datasets,
        disable=disable,
        exclusive=exclusive,
        silent=silent,
        extra_tags={str(k): str(val) for k, val in (extra_tags or {}).items()},
        options=options,
    )
    _configs[flavor] = cfg
    return cfg


def active_config(flavor: str) -> AutologConfig | None:
    """The flavor's settings, or None when its autolog is off or was never called."""
    cfg = _configs.get(flavor)
    return None if cfg is None or cfg.disable else cfg


def patch(flavor: str, cls: type, name: str, make: Callable[[Callable[..., Any]], Any]) -> None:
    """Replace method ``name`` where ``cls`` gets it from (itself or a base class) with
    ``make(original)``, once: a method already patched for ``flavor`` is left alone."""
    owner = next((k for k in cls.__mro__ if name in k.__dict__), None)
    if owner is None or owner is object:
        return
    original = owner.__dict__[name]
    if getattr(original, "__flightlog_autolog__", None) == flavor or not callable(original):
        return
    wrapper = make(original)
    functools.update_wrapper(wrapper, original)
    wrapper.__flightlog_autolog__ = flavor
    setattr(owner, name, wrapper)


@contextlib.contextmanager
def outermost(flavor: str) -> Iterator[bool]:
    """True for the outermost patched call of ``flavor`` in this thread."""
    depth: dict[str, int] = _guard.__dict__.setdefault("depth", {})
    level = depth.get(flavor, 0)
    depth[flavor] = level + 1
    try:
        yield level == 0
    finally:
        depth[flavor] = level


@contextlib.contextmanager
def autolog_run(flavor: str, cfg: AutologConfig) -> Iterator[str | None]:
    """The id of the run a ``fit`` logs into, or None when it must not log (``exclusive``
    with a run the user started). With no active run, a run is started here and ended
    when the block ends: FINISHED, or FAILED when ``fit`` raised."""
    current = fluent.active_run()
    if current is not None:
        if cfg.exclusive:
            yield None
            return
        run_id = current.info.run_id
        safely(cfg, "tags", lambda: set_tags(run_id, {**cfg.extra_tags}))
        yield run_id
        return
    run = fluent.start_run(tags={"mlflow.autologging": flavor, **cfg.extra_tags})
    try:
        yield run.info.run_id
    except BaseException as e:
        fluent.end_run(
            RunStatus.KILLED if isinstance(e, KeyboardInterrupt) else RunStatus.FAILED, _run=run
        )
        raise
    fluent.end_run(_run=run)


def safely(cfg: AutologConfig, what: str, work: Callable[[], Any]) -> Any:
    """Run a logging step; a failure warns (unless ``silent``) and never reaches training."""
    try:
        with warnings.catch_warnings():
            if cfg.silent:
                warnings.simplefilter("ignore")
            return work()
    except Exception as e:
        if not cfg.silent:
            warnings.warn(f"flightlog autolog could not log {what}: {e}", stacklevel=2)
        return None


def param_text(value: Any) -> str:
    """A param value as MLflow autolog records it: str(), cut to MLflow's limit."""
    text = value if isinstance(value, str) else str(value)
    return text[:MAX_PARAM_VALUE]


def log_params(run_id: str, params: dict[str, Any]) -> None:
    """Queue params (values as text); nothing waits for the collector."""
    if params:
        clean = [Param(k, param_text(val)) for k, val in params.items()]
        MlflowClient().log_batch(run_id, params=clean)


def set_tags(run_id: str, tags: dict[str, Any]) -> None:
    """Queue tags; nothing waits for the collector."""
    if tags:
        MlflowClient().log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def log_metrics(run_id: str, metrics: dict[str, Any], step: int) -> None:
    """Queue one point per finite-or-not numeric value; other values are skipped."""
    for key, value in metrics.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        fluent.log_metric(key, number, step=step, run_id=run_id)


# -- dataset inputs -------------------------------------------------------------------------


def log_training_dataset(run_id: str, features: Any, targets: Any | None) -> None:
    """Record array-like training data as a dataset input of the run (``flightlog.data``'s
    NumpyDataset, named ``dataset``, context ``train``), once per ``fit``, through the
    collector's log-inputs path. Data that is not array-like (a generator, a tf.data
    pipeline) is skipped."""
    import numpy as np

    from flightlog import data
    from flightlog.core.entities import DatasetInput, InputTag
    from flightlog.fluent_data import CONTEXT_TAG

    array = np.asarray(features)
    if array.dtype == object:
        return
    dataset = data.from_numpy(array, targets=targets, name="dataset")
    entry = DatasetInput(dataset._to_entity(), [InputTag(CONTEXT_TAG, "train")])
    MlflowClient().log_inputs(run_id, [entry])


# -- flightlog.autolog() for every framework --------------------------------------------------

#: flavor module -> the import names whose loading patches it
_FRAMEWORKS: dict[str, tuple[str, ...]] = {
    "sklearn": ("sklearn",),
    "tensorflow": ("keras",),
    "pytorch": ("lightning", "pytorch_lightning"),
}
_pending: dict[str, Callable[[], None]] = {}


class _PostImportFinder(importlib.abc.MetaPathFinder):
    """Runs a flavor's autolog right after its framework is imported, so
    ``flightlog.autolog()`` imports no framework itself (tensorflow alone takes seconds)."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in _pending:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                _run_hook_after_exec(spec.loader, fullname)
                return spec
        return None


def _run_hook_after_exec(loader: Any, fullname: str) -> None:
    exec_module = loader.exec_module

    def run_then_patch(module: ModuleType) -> None:
        exec_module(module)
        hook = _pending.pop(fullname, None)
        if hook is not None:
            hook()

    loader.exec_module = run_then_patch


_finder = _PostImportFinder()


def autolog(
    log_models: bool = True,
    log_datasets: bool = True,
    disable: bool = False,
    exclusive: bool = False,
    disable_for_unsupported_versions: bool = False,
    silent: bool = False,
    extra_tags: dict[str, Any] | None = None,
    registered_model_name: str | None = None,
) -> None:
    """Turn on autologging for every supported framework that is installed: scikit-learn,
    Keras 3 (TensorFlow backend) and PyTorch Lightning. A framework already imported is
    patched now; one imported later is patched when its import finishes."""
    check_registered_model_name(registered_model_name)
    settings = {
        "log_models": log_models,
        "log_datasets": log_datasets,
        "disable": disable,
        "exclusive": exclusive,
        "disable_for_unsupported_versions": disable_for_unsupported_versions,
        "silent": silent,
        "extra_tags": extra_tags,
    }
    for flavor, import_names in _FRAMEWORKS.items():
        for import_name in import_names:
            if importlib.util.find_spec(import_name) is None:
                continue

            def hook(flavor: str = flavor) -> None:
                module = importlib.import_module(f"flightlog.{flavor}")
                module.autolog(**settings)

            if import_name in sys.modules:
                hook()
            else:
                _pending[import_name] = hook
                if _finder not in sys.meta_path:
                    sys.meta_path.insert(0, _finder)


def reset_for_tests() -> None:
    """Turn every flavor's autolog off (patches stay in place, inert) and forget hooks."""
    _configs.clear()
    _pending.clear()
    if _finder in sys.meta_path:
        sys.meta_path.remove(_finder)

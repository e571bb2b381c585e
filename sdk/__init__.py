"""flightlog: the MLflow Tracking API on an asynchronous logging agent.

``import flightlog as mlflow`` runs MLflow tracking code: log calls append to an
in-process queue and return; a background thread ships them to a collector that
stores them (SQLite by default, in ./flightlog).
"""

# The public names load on first use (PEP 562), so that ``import flightlog`` is cheap and
# importing a subpackage (``flightlog.collector``, ``flightlog.core``) does not load the
# SDK: imports run one way, and importing any of flightlog has no side effects.

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from flightlog.core.version import __version__

if TYPE_CHECKING:
    from flightlog import artifacts, data, tracking
    from flightlog.agent.system import (
        disable_system_metrics_logging,
        enable_system_metrics_logging,
        set_system_metrics_node_name,
        set_system_metrics_sampling_interval,
    )
    from flightlog.autologging import autolog
    from flightlog.client import MlflowClient
    from flightlog.context import get_tracking_uri, set_tracking_uri
    from flightlog.core.entities import (
        Experiment,
        FileInfo,
        Metric,
        Param,
        Run,
        RunData,
        RunInfo,
        RunStatus,
        RunTag,
        ViewType,
    )
    from flightlog.core.exceptions import MlflowException
    from flightlog.fluent import (
        ActiveRun,
        active_run,
        create_experiment,
        delete_experiment,
        delete_experiment_tag,
        delete_run,
        delete_tag,
        end_run,
        flush,
        flush_artifact_async_logging,
        flush_async_logging,
        get_artifact_uri,
        get_experiment,
        get_experiment_by_name,
        get_metric_history,
        get_parent_run,
        get_run,
        is_tracking_uri_set,
        last_active_run,
        log_artifact,
        log_artifacts,
        log_dict,
        log_figure,
        log_image,
        log_metric,
        log_metrics,
        log_param,
        log_params,
        log_text,
        restore_experiment,
        restore_run,
        search_experiments,
        search_runs,
        set_experiment,
        set_experiment_tag,
        set_experiment_tags,
        set_tag,
        set_tags,
        start_run,
    )
    from flightlog.fluent_data import load_table, log_input, log_inputs, log_table

#: Where each public name lives; ``module:module`` names a submodule.
_PUBLIC: dict[str, str] = {
    "ActiveRun": "flightlog.fluent",
    "Experiment": "flightlog.core.entities",
    "FileInfo": "flightlog.core.entities",
    "Metric": "flightlog.core.entities",
    "MlflowClient": "flightlog.client",
    "MlflowException": "flightlog.core.exceptions",
    "Param": "flightlog.core.entities",
    "Run": "flightlog.core.entities",
    "RunData": "flightlog.core.entities",
    "RunInfo": "flightlog.core.entities",
    "RunStatus": "flightlog.core.entities",
    "RunTag": "flightlog.core.entities",
    "ViewType": "flightlog.core.entities",
    "active_run": "flightlog.fluent",
    "artifacts": "flightlog.artifacts:module",
    "autolog": "flightlog.autologging",
    "create_experiment": "flightlog.fluent",
    "data": "flightlog.data:module",
    "delete_experiment": "flightlog.fluent",
    "delete_experiment_tag": "flightlog.fluent",
    "delete_run": "flightlog.fluent",
    "delete_tag": "flightlog.fluent",
    "disable_system_metrics_logging": "flightlog.agent.system",
    "enable_system_metrics_logging": "flightlog.agent.system",
    "end_run": "flightlog.fluent",
    "flush": "flightlog.fluent",
    "flush_artifact_async_logging": "flightlog.fluent",
    "flush_async_logging": "flightlog.fluent",
    "get_artifact_uri": "flightlog.fluent",
    "get_experiment": "flightlog.fluent",
    "get_experiment_by_name": "flightlog.fluent",
    "get_metric_history": "flightlog.fluent",
    "get_parent_run": "flightlog.fluent",
    "get_run": "flightlog.fluent",
    "get_tracking_uri": "flightlog.context",
    "is_tracking_uri_set": "flightlog.fluent",
    "last_active_run": "flightlog.fluent",
    "load_table": "flightlog.fluent_data",
    "log_artifact": "flightlog.fluent",
    "log_artifacts": "flightlog.fluent",
    "log_dict": "flightlog.fluent",
    "log_figure": "flightlog.fluent",
    "log_image": "flightlog.fluent",
    "log_input": "flightlog.fluent_data",
    "log_inputs": "flightlog.fluent_data",
    "log_metric": "flightlog.fluent",
    "log_metrics": "flightlog.fluent",
    "log_param": "flightlog.fluent",
    "log_params": "flightlog.fluent",
    "log_table": "flightlog.fluent_data",
    "log_text": "flightlog.fluent",
    "restore_experiment": "flightlog.fluent",
    "restore_run": "flightlog.fluent",
    "search_experiments": "flightlog.fluent",
    "search_runs": "flightlog.fluent",
    "set_experiment": "flightlog.fluent",
    "set_experiment_tag": "flightlog.fluent",
    "set_experiment_tags": "flightlog.fluent",
    "set_system_metrics_node_name": "flightlog.agent.system",
    "set_system_metrics_sampling_interval": "flightlog.agent.system",
    "set_tag": "flightlog.fluent",
    "set_tags": "flightlog.fluent",
    "set_tracking_uri": "flightlog.context",
    "start_run": "flightlog.fluent",
    "tracking": "flightlog.tracking:module",
}


def __getattr__(name: str) -> Any:
    where = _PUBLIC.get(name)
    if where is None:
        # A submodule not imported yet (``flightlog.sklearn``, ``flightlog.fluent``).
        try:
            value: Any = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    elif where.endswith(":module"):
        value = importlib.import_module(where.removesuffix(":module"))
    else:
        value = getattr(importlib.import_module(where), name)
    # Later lookups find the name in the module dict and skip this function: a hot
    # ``mlflow.log_metric`` costs what it did with eager imports.
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "ActiveRun",
    "Experiment",
    "FileInfo",
    "Metric",
    "MlflowClient",
    "MlflowException",
    "Param",
    "Run",
    "RunData",
    "RunInfo",
    "RunStatus",
    "RunTag",
    "ViewType",
    "__version__",
    "active_run",
    "artifacts",
    "autolog",
    "create_experiment",
    "data",
    "delete_experiment",
    "delete_experiment_tag",
    "delete_run",
    "delete_tag",
    "disable_system_metrics_logging",
    "enable_system_metrics_logging",
    "end_run",
    "flush",
    "flush_artifact_async_logging",
    "flush_async_logging",
    "get_artifact_uri",
    "get_experiment",
    "get_experiment_by_name",
    "get_metric_history",
    "get_parent_run",
    "get_run",
    "get_tracking_uri",
    "is_tracking_uri_set",
    "last_active_run",
    "load_table",
    "log_artifact",
    "log_artifacts",
    "log_dict",
    "log_figure",
    "log_image",
    "log_input",
    "log_inputs",
    "log_metric",
    "log_metrics",
    "log_param",
    "log_params",
    "log_table",
    "log_text",
    "restore_experiment",
    "restore_run",
    "search_experiments",
    "search_runs",
    "set_experiment",
    "set_experiment_tag",
    "set_experiment_tags",
    "set_system_metrics_node_name",
    "set_system_metrics_sampling_interval",
    "set_tag",
    "set_tags",
    "set_tracking_uri",
    "start_run",
    "tracking",
]

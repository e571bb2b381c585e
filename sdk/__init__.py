"""flightlog: the MLflow Tracking API on an asynchronous logging agent.

``import flightlog as mlflow`` runs MLflow tracking code: log calls append to an
in-process queue and return; a background thread ships them to a collector that
stores them (SQLite by default, in ./flightlog).
"""

from flightlog import tracking
from flightlog.agent.system import (
    disable_system_metrics_logging,
    enable_system_metrics_logging,
    set_system_metrics_node_name,
    set_system_metrics_sampling_interval,
)
from flightlog.client import MlflowClient
from flightlog.context import get_tracking_uri, set_tracking_uri
from flightlog.entities import (
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
from flightlog.exceptions import MlflowException
from flightlog.fluent import (
    ActiveRun,
    active_run,
    create_experiment,
    delete_experiment,
    delete_run,
    delete_tag,
    end_run,
    flush,
    flush_async_logging,
    get_artifact_uri,
    get_experiment,
    get_experiment_by_name,
    get_metric_history,
    get_run,
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
    search_experiments,
    search_runs,
    set_experiment,
    set_tag,
    set_tags,
    start_run,
)
from flightlog.version import __version__

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
    "create_experiment",
    "delete_experiment",
    "delete_run",
    "delete_tag",
    "disable_system_metrics_logging",
    "enable_system_metrics_logging",
    "end_run",
    "flush",
    "flush_async_logging",
    "get_artifact_uri",
    "get_experiment",
    "get_experiment_by_name",
    "get_metric_history",
    "get_run",
    "get_tracking_uri",
    "last_active_run",
    "log_artifact",
    "log_artifacts",
    "log_dict",
    "log_figure",
    "log_image",
    "log_metric",
    "log_metrics",
    "log_param",
    "log_params",
    "log_text",
    "search_experiments",
    "search_runs",
    "set_experiment",
    "set_system_metrics_node_name",
    "set_system_metrics_sampling_interval",
    "set_tag",
    "set_tags",
    "set_tracking_uri",
    "start_run",
    "tracking",
]

# Framework integrations load on first use: ``import flightlog`` imports no ML framework.
_LAZY_MODULES = ("sklearn", "tensorflow", "pytorch", "pyfunc", "mlmodel")


def __getattr__(name: str) -> object:
    if name in _LAZY_MODULES:
        import importlib

        return importlib.import_module(f"flightlog.{name}")
    if name == "autolog":
        from flightlog.autologging import autolog

        return autolog
    raise AttributeError(f"module 'flightlog' has no attribute {name!r}")

"""Search: runs and experiments by filter, as MLflow's ``search_runs`` and
``search_experiments``, plus the pandas DataFrame MLflow users expect.

The filter language is a superset of MLflow's (it has OR and parentheses); see
:mod:`flightlog.collector.filters`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from flightlog.core.entities import Experiment, Run, ViewType
from flightlog.core.exceptions import INVALID_PARAMETER_VALUE, MlflowException

if TYPE_CHECKING:
    from flightlog.client import MlflowClient

T = TypeVar("T")
PAGE = 50_000  # the collector's largest page


class PagedList(list[T]):
    """A page of results with the ``token`` of the next page (None on the last)."""

    def __init__(self, items: Iterable[T], token: str | None) -> None:
        super().__init__(items)
        self.token = token


def _check_max(max_results: int | None, what: str) -> None:
    if max_results is not None and (not isinstance(max_results, int) or max_results < 1):
        raise MlflowException(
            f"Invalid max_results {max_results!r} for {what}: a positive integer is required",
            INVALID_PARAMETER_VALUE,
        )


def all_runs(
    client: MlflowClient,
    experiment_ids: list[str],
    filter_string: str | None,
    run_view_type: int,
    max_results: int,
    order_by: list[str] | None,
) -> list[Run]:
    """Every matching run up to ``max_results``, fetched page by page."""
    _check_max(max_results, "search_runs")
    runs: list[Run] = []
    token: str | None = None
    while len(runs) < max_results:
        page = client.search_runs(
            experiment_ids,
            filter_string or "",
            run_view_type,
            min(PAGE, max_results - len(runs)),
            order_by,
            token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            break
    return runs


def all_experiments(
    client: MlflowClient,
    view_type: int,
    max_results: int | None,
    filter_string: str | None,
    order_by: list[str] | None,
) -> list[Experiment]:
    """Every matching experiment (up to ``max_results``), fetched page by page."""
    _check_max(max_results, "search_experiments")
    out: list[Experiment] = []
    token: str | None = None
    while max_results is None or len(out) < max_results:
        size = PAGE if max_results is None else min(PAGE, max_results - len(out))
        page = client.search_experiments(view_type, size, filter_string, order_by, token)
        out.extend(page)
        token = page.token
        if not token:
            break
    return out


def runs_to_pandas(runs: list[Run]) -> Any:
    """MLflow's search_runs DataFrame: info columns, then metrics.*, params.*, tags.*."""
    try:
        import pandas as pd
    except ImportError:
        raise MlflowException(
            "search_runs returns a pandas DataFrame by default, and pandas is not installed: "
            "pip install 'flightlog[pandas]', or pass output_format='list' for Run objects.",
            INVALID_PARAMETER_VALUE,
        ) from None
    info: dict[str, list[Any]] = {
        "run_id": [],
        "experiment_id": [],
        "status": [],
        "artifact_uri": [],
        "start_time": [],
        "end_time": [],
    }
    metrics: dict[str, list[Any]] = {}
    params: dict[str, list[Any]] = {}
    tags: dict[str, list[Any]] = {}
    for i, run in enumerate(runs):
        info["run_id"].append(run.info.run_id)
        info["experiment_id"].append(run.info.experiment_id)
        info["status"].append(run.info.status)
        info["artifact_uri"].append(run.info.artifact_uri)
        info["start_time"].append(run.info.start_time)
        info["end_time"].append(run.info.end_time)
        for table, values in (
            (metrics, run.data.metrics),
            (params, run.data.params),
            (tags, run.data.tags),
        ):
            for k, v in values.items():
                column = table.get(k)
                if column is None:
                    column = table[k] = [None] * len(runs)
                column[i] = v
    df = pd.DataFrame(info)
    # MLflow shows times as timezone-aware datetimes.
    df["start_time"] = pd.to_datetime(df["start_time"], unit="ms", utc=True)
    df["end_time"] = pd.to_datetime(df["end_time"], unit="ms", utc=True)
    extra = {}
    for prefix, table in (("metrics", metrics), ("params", params), ("tags", tags)):
        for k in sorted(table):
            extra[f"{prefix}.{k}"] = table[k]
    if extra:
        df = pd.concat([df, pd.DataFrame(extra, index=df.index)], axis=1)
    return df


def view(value: int | str | None) -> int:
    """A ViewType from MLflow's ints or names."""
    try:
        return ViewType.from_any(value)
    except ValueError as e:
        raise MlflowException(str(e), INVALID_PARAMETER_VALUE) from None

"""RPC methods for search and chart reads: search_runs, search_experiments and
downsampled metric histories (for many runs and keys in one call)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from flightlog.collector.request_args import (
    Args,
    max_results_arg,
    string_arg,
    string_list_arg,
    view_type_arg,
)
from flightlog.collector.state import Collector
from flightlog.core.exceptions import INVALID_PARAMETER_VALUE, MlflowException

MAX_RESULTS_DEFAULT = 1000
MAX_SERIES_PER_CALL = 10_000


async def search_runs(c: Collector, a: Args) -> Any:
    """``{experiment_ids, filter_string, run_view_type, max_results, order_by, page_token}``
    -> ``{runs, next_page_token}``."""
    experiment_ids = string_list_arg(a, "experiment_ids")
    filter_string = string_arg(a, "filter_string") or None
    view_type = view_type_arg(a, "run_view_type")
    max_results = max_results_arg(a, MAX_RESULTS_DEFAULT)
    order_by = string_list_arg(a, "order_by") or None
    page_token = string_arg(a, "page_token") or None

    def work() -> dict[str, Any]:
        ids, token = c.store.search_run_ids(
            experiment_ids, filter_string, view_type, max_results, order_by, page_token
        )
        return {"runs": c.store.get_runs(ids), "next_page_token": token}

    return await c.read(work)


async def search_experiments(c: Collector, a: Args) -> Any:
    """``{view_type, max_results, filter_string, order_by, page_token}``
    -> ``{experiments, next_page_token}``."""
    exps, token = await c.read(
        c.store.search_experiments,
        view_type_arg(a, "view_type"),
        max_results_arg(a, MAX_RESULTS_DEFAULT),
        string_arg(a, "filter_string") or None,
        string_list_arg(a, "order_by") or None,
        string_arg(a, "page_token") or None,
    )
    return {"experiments": exps, "next_page_token": token}


async def get_metric_histories(c: Collector, a: Args) -> Any:
    """``{run_ids, keys, max_points}`` -> ``{series: [[run_id, key, steps, values, ts]]}``,
    each series downsampled to at most max_points points."""
    run_ids = string_list_arg(a, "run_ids")
    keys = string_list_arg(a, "keys")
    max_points = a.get("max_points")
    if not isinstance(max_points, int) or max_points < 3:
        raise MlflowException("max_points must be an integer >= 3", INVALID_PARAMETER_VALUE)
    if len(run_ids) * len(keys) > MAX_SERIES_PER_CALL:
        raise MlflowException(
            f"At most {MAX_SERIES_PER_CALL} (run, key) series per call", INVALID_PARAMETER_VALUE
        )

    def work() -> list[list[Any]]:
        out = []
        for run_id in run_ids:
            for key in keys:
                steps, vals, ts = c.store.sampled_series(run_id, key, max_points)
                out.append([run_id, key, steps.tobytes(), vals.tobytes(), ts.tobytes()])
        return out

    return {"series": await c.read(work)}


METHODS: dict[str, Callable[[Collector, Args], Awaitable[Any]]] = {
    "search_runs": search_runs,
    "search_experiments": search_experiments,
    "get_metric_histories": get_metric_histories,
}

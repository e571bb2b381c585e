"""RPC methods for search and chart reads: search_runs, search_experiments and
downsampled metric histories (for many runs and keys in one call)."""

from __future__ import annotations

from typing import Any

from flightlog.collector.app import Collector, rpc
from flightlog.collector.downsample import sampled_series
from flightlog.core.exceptions import INVALID_PARAMETER_VALUE, MlflowException


def _str_list(a: dict[str, Any], name: str) -> list[str]:
    value = a.get(name) or []
    if not isinstance(value, list) or not all(isinstance(x, (str, int)) for x in value):
        raise MlflowException(f"{name!r} must be a list of strings", INVALID_PARAMETER_VALUE)
    return [str(x) for x in value]


def _int(a: dict[str, Any], name: str, default: int) -> int:
    value = a.get(name) or default
    if isinstance(value, bool) or not isinstance(value, int):
        raise MlflowException(f"{name!r} must be an integer", INVALID_PARAMETER_VALUE)
    return value


def _str(a: dict[str, Any], name: str) -> str | None:
    value = a.get(name) or None
    if value is not None and not isinstance(value, str):
        raise MlflowException(f"{name!r} must be a string", INVALID_PARAMETER_VALUE)
    return value


@rpc("search_runs")
async def _search_runs(c: Collector, a: dict[str, Any]) -> Any:
    runs, token = await c.read(
        c.store.search_runs,
        _str_list(a, "experiment_ids"),
        _str(a, "filter_string"),
        _int(a, "run_view_type", 1),
        _int(a, "max_results", 1000),
        _str_list(a, "order_by") or None,
        _str(a, "page_token"),
    )
    return {"runs": runs, "next_page_token": token}


@rpc("search_experiments")
async def _search_experiments(c: Collector, a: dict[str, Any]) -> Any:
    exps, token = await c.read(
        c.store.search_experiments,
        int(a.get("view_type") or 1),
        int(a.get("max_results") or 1000),
        a.get("filter_string") or None,
        _str_list(a, "order_by") or None,
        a.get("page_token") or None,
    )
    return {"experiments": exps, "next_page_token": token}


@rpc("get_metric_histories")
async def _get_metric_histories(c: Collector, a: dict[str, Any]) -> Any:
    run_ids = _str_list(a, "run_ids")
    keys = _str_list(a, "keys")
    max_points = a.get("max_points")
    if not isinstance(max_points, int) or max_points < 3:
        raise MlflowException("max_points must be an integer >= 3", INVALID_PARAMETER_VALUE)
    if len(run_ids) * len(keys) > 10_000:
        raise MlflowException("At most 10000 (run, key) series per call", INVALID_PARAMETER_VALUE)

    def work() -> list[list[Any]]:
        out = []
        for run_id in run_ids:
            for key in keys:
                steps, vals, ts = sampled_series(c.store, run_id, key, max_points)
                out.append([run_id, key, steps.tobytes(), vals.tobytes(), ts.tobytes()])
        return out

    return {"series": await c.read(work)}

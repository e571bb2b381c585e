"""MLflow's REST API 2.0 on the collector, so MLflow's own clients can use flightlog.

Point ``MLFLOW_TRACKING_URI`` at a collector (``http://127.0.0.1:5055``) and the official
Python, Java and R clients work unchanged. Served under ``/api/2.0/mlflow/`` and
``/ajax-api/2.0/mlflow/``:

- experiments: create, get, get-by-name, search (GET and POST), update, delete,
  restore, set-experiment-tag, delete-experiment-tag;
- runs: create, get, update, delete, restore, search, log-metric, log-batch,
  log-parameter, set-tag, delete-tag, log-inputs;
- metrics: get-history (paged with max_results / page_token), get-history-bulk-interval;
- artifacts: list (the artifact proxy and ``/get-artifact`` are in ``artifact_proxy.py``);
- ``/version`` and ``/api/3.0/mlflow/server-info`` (``/health`` is the collector's own);
- MLflow's UI routes, under ``/ajax-api`` only: metrics/get-history-bulk,
  experiments/search-datasets (and upload-artifact, from ``artifact_proxy.py``).

The data is the collector's store: a run logged with the flightlog SDK reads back
through the MLflow client and the reverse, search filters and history included.

Conventions are MLflow's: snake_case JSON, epoch-millisecond times, int64 fields accepted
as numbers or strings and answered as numbers, doubles NaN/Infinity/-Infinity as those
strings (protobuf's JSON mapping), GET parameters from the query string (repeated for
lists), empty fields left out, errors as ``{"error_code", "message"}`` with MLflow's HTTP
status for the code, log-batch limited to 1,000 metrics, 100 params, 100 tags, 1,000
entities and a 1 MB body.

Writes are durable before the answer: they run on the collector's writer thread and
commit there (not through the asynchronous ingest path the SDK uses), and each request
is one transaction. Run ids made here are uuid4 hex, like the SDK's and MLflow's.

Where flightlog differs on purpose:

- Artifacts always go through the collector. MLflow's client talks to the artifact store
  itself unless the server proxies it (``--serve-artifacts``); here a run's
  ``artifact_uri`` is answered as ``mlflow-artifacts:/<experiment_id>/<run_id>/artifacts``
  whatever the real location (a directory or ``s3://``; under the artifact root, the
  proxy's path of it), the client then sends its bytes to
  ``/api/2.0/mlflow-artifacts/artifacts/<experiment_id>/<run_id>/artifacts/...``, and
  the collector maps that path back to the run's real location. Clients need neither
  credentials for the object store nor access to the collector's disk. An experiment's
  ``artifact_location`` reads as ``mlflow-artifacts:/<path>`` when it lies under the
  artifact root (``mlflow-artifacts:/<id>`` by default, as MLflow's proxying server
  answers), and as given otherwise. Search filters on
  ``attributes.artifact_uri`` see the real URI.
- Filters accept OR and parentheses (MLflow refuses them); see ``filters.py``.
- Metric values keep +/-Infinity (MLflow's SQL store turns them into +/-1.8e308), and a
  point logged twice is stored twice (MLflow's metric table drops the exact duplicate).
- Logged models (``models`` in log-inputs, the logged-models endpoints) are not tracked:
  a request that carries them is refused rather than half stored.

Dataset inputs (log-inputs) live in the ``run_inputs`` table (``inputs_schema.sql``), the
dataset and its tags kept as the JSON the client sent, one row per (run, name, digest).
"""

from __future__ import annotations

import base64
import binascii
import itertools
import math
import operator
import uuid
from array import array
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson
from aiohttp import web

from flightlog.collector import artifact_proxy
from flightlog.collector.artifact_api import repository
from flightlog.collector.bodies import read_body
from flightlog.collector.errors import ENDPOINT_NOT_FOUND, MLFLOW_HTTP_STATUS
from flightlog.collector.experiment_checks import new_experiment
from flightlog.collector.request_args import (
    Args,
    double_arg,
    id_arg,
    int64_arg,
    invalid,
    json_args,
    key_values_arg,
    list_arg,
    max_results_arg,
    missing,
    run_id_arg,
    string_arg,
    string_list_arg,
    view_type_arg,
)
from flightlog.collector.state import COLLECTOR, Collector
from flightlog.collector.store import DEFAULT_EXPERIMENT_ID
from flightlog.collector.store_api import Row, Store
from flightlog.core import validation as v
from flightlog.core.artifact_paths import proxied_artifact_uri, safe_relative_path
from flightlog.core.entities import RunStatus
from flightlog.core.exceptions import (
    INVALID_PARAMETER_VALUE,
    INVALID_STATE,
    RESOURCE_DOES_NOT_EXIST,
    MlflowException,
)
from flightlog.core.run_names import generate_run_name
from flightlog.core.version import __version__

__all__ = ["API_PREFIXES", "MLFLOW_HTTP_STATUS", "served_artifact_uri"]

API_PREFIXES = ("/api/2.0/mlflow", "/ajax-api/2.0/mlflow")

# MLflow's limits (mlflow/utils/validation.py and the REST API reference).
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_TAGS_PER_BATCH = 100
MAX_ENTITIES_PER_BATCH = 1000
MAX_BATCH_LOG_REQUEST_SIZE = 1_000_000
MAX_RESULTS_DEFAULT = 1000  # SearchRuns / SearchExperiments when max_results is not sent
MAX_RUNS_GET_METRIC_HISTORY_BULK = 100
MAX_RESULTS_PER_RUN = 2500
MAX_HISTORY_BULK_RESULTS = 25000  # metrics/get-history-bulk
# metrics/get-history: the most points one answer holds (MLflow's client pages by 25,000,
# GET_METRIC_HISTORY_MAX_RESULTS, and follows next_page_token).
MAX_HISTORY_PAGE = 25000
MAX_DATASET_NAME_SIZE = 500
MAX_DATASET_DIGEST_SIZE = 36

_HISTORY_TOKEN_VERSION = 1

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# -- errors and JSON -----------------------------------------------------------------------


def _json(body: dict[str, Any]) -> web.Response:
    return web.Response(body=orjson.dumps(body), content_type="application/json")


def _double(x: float) -> float | str:
    """A double as protobuf's JSON mapping writes it (orjson would write NaN as null)."""
    if math.isfinite(x):
        return x
    if x != x:
        return "NaN"
    return "Infinity" if x > 0 else "-Infinity"


# -- what a REST client sees ----------------------------------------------------------------


def served_artifact_uri(store: Store) -> Callable[[str, str, str], str]:
    """A run's artifact URI as REST clients see it, given (experiment id, run id, real URI).

    Under the artifact root it is the proxy's path of the real location
    (``mlflow-artifacts:/<experiment_id>/<run_id>/artifacts`` by default,
    ``mlflow-artifacts:/<prefix>/<run_id>/artifacts`` in an experiment located at
    ``mlflow-artifacts:/<prefix>``, as MLflow answers); elsewhere (``s3://``, an allowed
    directory) the run's proxy path, which the proxy maps back to the real location.
    """
    root = store.artifact_root

    def uri(experiment_id: str, run_id: str, real_uri: str) -> str:
        served = artifact_proxy.proxy_location(root, real_uri)
        if served != real_uri:
            return served
        return proxied_artifact_uri(experiment_id, run_id, real_uri)

    return uri


def _experiment_json(store: Store, exp: Row) -> dict[str, Any]:
    eid = str(exp["experiment_id"])
    # Under the artifact root the proxy serves it: mlflow-artifacts:/<path>, as MLflow's
    # proxying server answers; elsewhere (s3://, an allowed directory) as stored.
    location = artifact_proxy.proxy_location(store.artifact_root, exp["artifact_location"])
    out: dict[str, Any] = {
        "experiment_id": eid,
        "name": exp["name"],
        "artifact_location": location,
        "lifecycle_stage": exp["lifecycle_stage"],
        "last_update_time": exp["last_update_time"],
        "creation_time": exp["creation_time"],
    }
    if exp["tags"]:
        out["tags"] = [{"key": k, "value": val} for k, val in exp["tags"].items()]
    return out


def _load_run(store: Store, run_id: str) -> dict[str, Any]:
    runs = store.runs_json([run_id], served_artifact_uri(store))
    if not runs:
        raise MlflowException(f"Run with id={run_id} not found", RESOURCE_DOES_NOT_EXIST)
    run: dict[str, Any] = orjson.loads(runs[0])
    return run


# -- experiments ----------------------------------------------------------------------------


def _experiment(c: Collector, experiment_id: str) -> Row:
    """An experiment by id, whatever its stage."""
    return c.store.get_experiment(experiment_id)


async def create_experiment(request: web.Request) -> web.Response:
    """POST experiments/create: ``{name, artifact_location?, tags?}`` -> ``{experiment_id}``."""
    c = request.app[COLLECTOR]
    a = await json_args(request)
    location = string_arg(a, "artifact_location") or None
    if location is not None:
        # mlflow-artifacts:/<prefix> is <prefix> under the artifact root (the proxy's tree).
        location = artifact_proxy.real_location(c.config.artifact_root, location)
    name, location, tags = new_experiment(
        c.config, string_arg(a, "name", required=True), location, key_values_arg(a, "tags")
    )
    eid = await c.write(c.store.create_experiment, name, location, tags)
    return _json({"experiment_id": eid})


async def get_experiment(request: web.Request) -> web.Response:
    """GET experiments/get?experiment_id= -> ``{experiment}`` (deleted ones too)."""
    c = request.app[COLLECTOR]
    a = await json_args(request)
    exp = await c.read(_experiment, c, id_arg(a, "experiment_id", required=True))
    return _json({"experiment": _experiment_json(c.store, exp)})


async def get_experiment_by_name(request: web.Request) -> web.Response:
    """GET experiments/get-by-name?experiment_name= -> ``{experiment}``."""
    c = request.app[COLLECTOR]
    a = await json_args(request)
    name = string_arg(a, "experiment_name", required=True)
    exp = await c.read(c.store.get_experiment_by_name, name)
    if exp is None:
        raise MlflowException(
            f"Could not find experiment with name '{name}'", RESOURCE_DOES_NOT_EXIST
        )
    return _json({"experiment": _experiment_json(c.store, exp)})


async def search_experiments(request: web.Request) -> web.Response:
    """experiments/search: ``{view_type, max_results, filter, order_by, page_token}``."""
    c = request.app[COLLECTOR]
    a = await json_args(request, lists=("order_by",))
    view_type = view_type_arg(a, "view_type")
    max_results = max_results_arg(a, MAX_RESULTS_DEFAULT)
    filter_string = string_arg(a, "filter") or None
    order_by = string_list_arg(a, "order_by") or None
    page_token = string_arg(a, "page_token") or None

    def work() -> dict[str, Any]:
        exps, token = c.store.search_experiments(
            view_type, max_results, filter_string, order_by, page_token
        )
        out: dict[str, Any] = {}
        if exps:
            out["experiments"] = [_experiment_json(c.store, e) for e in exps]
        if token:
            out["next_page_token"] = token
        return out

    return _json(await c.read(work))


def _require_experiment_stage(exp: Row, stage: str, experiment_id: str) -> None:
    # MLflow looks experiments up "in the stage the operation needs" and answers a
    # mismatch as if the experiment did not exist.
    if exp["lifecycle_stage"] != stage:
        raise MlflowException(
            f"No Experiment with id={experiment_id} exists", RESOURCE_DOES_NOT_EXIST
        )


def _require_active_experiment(exp: Row, experiment_id: str) -> None:
    if exp["lifecycle_stage"] != "active":
        raise MlflowException(
            f"The experiment {experiment_id} must be in the 'active' state. "
            f"Current state is {exp['lifecycle_stage']}.",
            INVALID_PARAMETER_VALUE,
        )


async def delete_experiment(request: web.Request) -> web.Response:
    """POST experiments/delete: ``{experiment_id}``; its runs are deleted with it."""
    c = request.app[COLLECTOR]
    eid = id_arg(await json_args(request), "experiment_id", required=True)
    _require_experiment_stage(await c.read(_experiment, c, eid), "active", eid)
    await c.write(c.store.delete_experiment, eid)
    return _json({})


async def restore_experiment(request: web.Request) -> web.Response:
    """POST experiments/restore: ``{experiment_id}``; its runs come back with it."""
    c = request.app[COLLECTOR]
    eid = id_arg(await json_args(request), "experiment_id", required=True)
    _require_experiment_stage(await c.read(_experiment, c, eid), "deleted", eid)
    await c.write(c.store.restore_experiment, eid)
    return _json({})


async def update_experiment(request: web.Request) -> web.Response:
    """POST experiments/update: ``{experiment_id, new_name}``."""
    c = request.app[COLLECTOR]
    a = await json_args(request)
    eid = id_arg(a, "experiment_id", required=True)
    new_name = v.validate_experiment_name(string_arg(a, "new_name", required=True))
    exp = await c.read(_experiment, c, eid)
    if exp["lifecycle_stage"] != "active":
        raise MlflowException("Cannot rename a non-active experiment.", INVALID_STATE)
    await c.write(c.store.rename_experiment, eid, new_name)
    return _json({})


async def set_experiment_tag(request: web.Request) -> web.Response:
    """POST experiments/set-experiment-tag: ``{experiment_id, key, value}``."""
    c = request.app[COLLECTOR]
    a = await json_args(request)
    eid = id_arg(a, "experiment_id", required=True)
    key = v.validate_key("tag", string_arg(a, "key", required=True))
    value = v.experiment_tag_value(key, string_arg(a, "value", default=""))
    _require_active_experiment(await c.read(_experiment, c, eid), eid)
    await c.write(c.store.set_experiment_tag, eid, key, value)
    return _json({})


async def delete_experiment_tag(request: web.Request) -> web.Response:
    """POST experiments/delete-experiment-tag: ``{experiment_id, key}``."""
    c = request.app[COLLECTOR]
    a = await json_args(request)
    eid = id_arg(a, "experiment_id", required=True)
    key = string_arg(a, "key", required=True)
    _require_active_experiment(await c.read(_experiment, c, eid), eid)
    await c.write(c.store.delete_experiment_tag, eid, key)
    return _json({})


# -- runs -----------------------------------------------------------------------------------


def _raise_first(errors: list[dict[str, str]]) -> None:
    if errors:
        raise MlflowException(errors[0]["message"], errors[0]["error_code"])


async def create_run(request: web.Request) -> web.Response:
    """POST runs/create: ``{experiment_id, user_id, run_name, start_time, tags}`` -> ``{run}``."""
    c = request.app[COLLECTOR]
    a = await json_args(request)
    eid = id_arg(a, "experiment_id") or str(DEFAULT_EXPERIMENT_ID)
    tags = {v.validate_key("tag", k): v.tag_value(k, val) for k, val in key_values_arg(a, "tags")}
    run_name = v.validate_run_name(
        string_arg(a, "run_name") or tags.get("mlflow.runName") or generate_run_name()
    )
    tags["mlflow.runName"] = run_name
    start_time = int64_arg(a, "start_time", default=0)
    exp = await c.read(_experiment, c, eid)
    _require_active_experiment(exp, eid)
    run_id = uuid.uuid4().hex
    op = {
        "run_id": run_id,
        "experiment_id": eid,
        "run_name": run_name,
        "user_id": v.limit_length(
            "user_id", string_arg(a, "user_id", default=""), v.MAX_USER_ID_LENGTH
        ),
        "start_time": start_time,
        "tags": tags,
    }
    _, errors = await c.write(c.store.apply_batch, None, [("create_run", op)], [])
    _raise_first(errors)
    return _json({"run": await c.read(_load_run, c.store, run_id)})


async def get_run(request: web.Request) -> web.Response:
    """GET runs/get?run_id= -> ``{run}`` (deleted runs too, as in MLflow)."""
    c = request.app[COLLECTOR]
    run_id = run_id_arg(await json_args(request))
    return _json({"run": await c.read(_load_run, c.store, run_id)})


async def update_run(request: web.Request) -> web.Response:
    """POST runs/update: ``{run_id, status?, end_time?, run_name?}`` -> ``{run_info}``."""
    c = request.app[COLLECTOR]
    a = await json_args(request)
    run_id = run_id_arg(a)
    status = string_arg(a, "status")
    if status is not None and status not in RunStatus.ALL:
        raise invalid("status", status)
    end_time = int64_arg(a, "end_time")
    run_name = string_arg(a, "run_name")
    if run_name is not None:
        v.validate_run_name(run_name)
    if status is None and end_time is not None:
        # The store sets end_time together with a status; keep the run's own status.
        status = (await c.read(_load_run, c.store, run_id))["info"]["status"]
    op = {"status": status, "end_time": end_time, "run_name": run_name}
    await c.write(c.store.write_run, run_id, [("update_run", op)])
    return _json({"run_info": (await c.read(_load_run, c.store, run_id))["info"]})


async def delete_run(request: web.Request) -> web.Response:
    """POST runs/delete: ``{run_id}``."""
    c = request.app[COLLECTOR]
    await c.write(c.store.delete_run, run_id_arg(await json_args(request)))
    return _json({})


async def restore_run(request: web.Request) -> web.Response:
    """POST runs/restore: ``{run_id}``."""
    c = request.app[COLLECTOR]
    await c.write(c.store.restore_run, run_id_arg(await json_args(request)))
    return _json({})


def _metric_point(m: Args, path: str) -> tuple[str, float, int, int]:
    """(key, value, timestamp ms, step) of a Metric message, checked."""
    key = m.get("key")
    if key is None or key == "":
        raise missing(f"{path}key")
    if not isinstance(key, str):
        raise invalid(f"{path}key", key)
    v.validate_key("metric", key)
    value = double_arg(m, "value", path=f"{path}value")
    timestamp = int64_arg(m, "timestamp", default=None)
    if timestamp is None:
        raise missing(f"{path}timestamp")
    if timestamp < 0:
        raise MlflowException(
            f"Invalid value {timestamp} for parameter '{path}timestamp' supplied: metric "
            f"'{key}' (value={value}). Timestamp must be a nonnegative long (64-bit integer)",
            INVALID_PARAMETER_VALUE,
        )
    step = int64_arg(m, "step", default=0)
    return key, value, timestamp, step


def _series(
    points: Sequence[tuple[str, float, int, int]],
) -> list[tuple[str, array[int], array[float], array[float]]]:
    """Points grouped into one column chunk per key, in the order they came."""
    by_key: dict[str, tuple[array[int], array[float], array[float]]] = {}
    for key, value, timestamp, step in points:
        cols = by_key.get(key)
        if cols is None:
            cols = by_key[key] = (array("q"), array("d"), array("d"))
        cols[0].append(step)
        cols[1].append(value)
        cols[2].append(timestamp / 1000.0)  # the store keeps epoch seconds
    return [(key, *cols) for key, cols in by_key.items()]


async def log_metric(request: web.Request) -> web.Response:
    """POST runs/log-metric: ``{run_id, key, value, timestamp, step?}``."""
    c = request.app[COLLECTOR]
    a = await json_args(request)
    run_id = run_id_arg(a)
    point = _metric_point(a, "")
    await c.write(c.store.write_run, run_id, (), _series([point]))
    return _json({})


def _check_batch_limit(what: str, limit: int, count: int) -> None:
    if count > limit:
        raise MlflowException(
            f"A batch logging request can contain at most {limit} {what}. Got {count} {what}. "
            f"Please split up {what} across multiple requests and try again.",
            INVALID_PARAMETER_VALUE,
        )


def _params_op(pairs: Sequence[tuple[str, str]]) -> tuple[str, dict[str, Any]]:
    params: dict[str, str] = {}
    dupes = []
    for key, value in pairs:
        v.validate_key("param", key)
        if key in params:
            dupes.append(key)
        params[key] = v.param_value(key, value)
    if dupes:
        raise MlflowException(
            f"Duplicate parameter keys have been submitted: {dupes}. Please ensure the "
            "request contains only one param value per param key.",
            INVALID_PARAMETER_VALUE,
        )
    return "log_params", {"params": params}


def _tags_op(pairs: Sequence[tuple[str, str]]) -> tuple[str, dict[str, Any]]:
    # A key sent twice keeps its last value, as MLflow documents.
    tags = {v.validate_key("tag", k): v.tag_value(k, val) for k, val in pairs}
    return "set_tags", {"tags": tags}


async def log_batch(request: web.Request) -> web.Response:
    """POST runs/log-batch: ``{run_id, metrics, params, tags}``, stored all or nothing."""
    c = request.app[COLLECTOR]
    size = request.content_length
    if size is not None and size > MAX_BATCH_LOG_REQUEST_SIZE:
        # Refused before the body is read: the limit is also a bound on memory.
        raise MlflowException(
            f"Batched logging API requests must be at most {MAX_BATCH_LOG_REQUEST_SIZE} "
            f"bytes, got a request of size {size}.",
            INVALID_PARAMETER_VALUE,
        )
    raw = await read_body(request)
    if len(raw) > MAX_BATCH_LOG_REQUEST_SIZE:
        raise MlflowException(
            f"Batched logging API requests must be at most {MAX_BATCH_LOG_REQUEST_SIZE} "
            f"bytes, got a request of size {len(raw)}.",
            INVALID_PARAMETER_VALUE,
        )
    a = await json_args(request)
    run_id = run_id_arg(a)
    metrics = list_arg(a, "metrics")
    params = key_values_arg(a, "params")
    tags = key_values_arg(a, "tags")
    _check_batch_limit("metrics", MAX_METRICS_PER_BATCH, len(metrics))
    _check_batch_limit("params", MAX_PARAMS_TAGS_PER_BATCH, len(params))
    _check_batch_limit("tags", MAX_PARAMS_TAGS_PER_BATCH, len(tags))
    _check_batch_limit(
        "metrics, params, and tags", MAX_ENTITIES_PER_BATCH, len(metrics) + len(params) + len(tags)
    )
    points = []
    for i, m in enumerate(metrics):
        if not isinstance(m, dict):
            raise invalid(f"metrics[{i}]", m)
        points.append(_metric_point(m, f"metrics[{i}]."))
    ops = []
    if params:
        ops.append(_params_op(params))
    if tags:
        ops.append(_tags_op(tags))
    await c.write(c.store.write_run, run_id, ops, _series(points))
    return _json({})


async def log_param(request: web.Request) -> web.Response:
    """POST runs/log-parameter: ``{run_id, key, value}``; a changed value is an error."""
    c = request.app[COLLECTOR]
    a = await json_args(request)
    run_id = run_id_arg(a)
    op = _params_op([(string_arg(a, "key", required=True), string_arg(a, "value", default=""))])
    await c.write(c.store.write_run, run_id, [op])
    return _json({})


async def set_tag(request: web.Request) -> web.Response:
    """POST runs/set-tag: ``{run_id, key, value}``."""
    c = request.app[COLLECTOR]
    a = await json_args(request)
    run_id = run_id_arg(a)
    op = _tags_op([(string_arg(a, "key", required=True), string_arg(a, "value", default=""))])
    await c.write(c.store.write_run, run_id, [op])
    return _json({})


async def delete_tag(request: web.Request) -> web.Response:
    """POST runs/delete-tag: ``{run_id, key}``; a tag that is not there is an error."""
    c = request.app[COLLECTOR]
    a = await json_args(request)
    run_id = run_id_arg(a)
    key = string_arg(a, "key", required=True)
    await c.write(c.store.write_run, run_id, [("delete_tag", {"key": key})])
    return _json({})


def _dataset_input(item: Any, i: int) -> tuple[str, str, str, str]:
    """(name, digest, dataset JSON, tags JSON) of one DatasetInput message, checked."""
    path = f"datasets[{i}]"
    if not isinstance(item, dict):
        raise invalid(path, item)
    dataset = item.get("dataset")
    if not isinstance(dataset, dict):
        raise missing(f"{path}.dataset")
    clean: dict[str, str] = {}
    for field in ("name", "digest", "source_type", "source", "schema", "profile"):
        value = string_arg(
            dataset, field, required=field in ("name", "digest", "source_type", "source")
        )
        if value is not None:
            clean[field] = value
    if len(clean["name"]) > MAX_DATASET_NAME_SIZE:
        raise MlflowException(
            f"Dataset name exceeds the maximum length of {MAX_DATASET_NAME_SIZE}",
            INVALID_PARAMETER_VALUE,
        )
    if len(clean["digest"]) > MAX_DATASET_DIGEST_SIZE:
        raise MlflowException(
            f"Dataset digest exceeds the maximum length of {MAX_DATASET_DIGEST_SIZE}",
            INVALID_PARAMETER_VALUE,
        )
    for field, limit in (
        ("source", v.MAX_DATASET_SOURCE_SIZE),
        ("schema", v.MAX_DATASET_SCHEMA_SIZE),
        ("profile", v.MAX_DATASET_PROFILE_SIZE),
    ):
        v.limit_length(f"{path}.dataset.{field}", clean.get(field, ""), limit)
    tags = [
        {
            "key": v.limit_length(f"{path}.tags key", k, v.MAX_INPUT_TAG_KEY_SIZE),
            "value": v.limit_length(f"{path}.tags value", val, v.MAX_INPUT_TAG_VALUE_SIZE),
        }
        for k, val in key_values_arg(item, "tags")
    ]
    return (
        clean["name"],
        clean["digest"],
        orjson.dumps(clean).decode(),
        orjson.dumps(tags).decode(),
    )


async def log_inputs(request: web.Request) -> web.Response:
    """POST runs/log-inputs: ``{run_id, datasets: [{dataset, tags}]}``."""
    c = request.app[COLLECTOR]
    a = await json_args(request)
    run_id = run_id_arg(a)
    if list_arg(a, "models"):
        raise MlflowException(
            "flightlog does not track logged models; log-inputs takes datasets only",
            INVALID_PARAMETER_VALUE,
        )
    inputs = [_dataset_input(item, i) for i, item in enumerate(list_arg(a, "datasets"))]
    _check_batch_limit("datasets", MAX_METRICS_PER_BATCH, len(inputs))
    await c.write(c.store.log_inputs, run_id, inputs)
    return _json({})


MAX_EXPERIMENT_IDS_PER_SEARCH_DATASETS = 20


async def search_datasets(request: web.Request) -> web.Response:
    """POST experiments/search-datasets (MLflow's UI route): ``{experiment_ids}`` ->
    ``{dataset_summaries: [{experiment_id, name, digest, context?}]}``, at most 1,000."""
    c = request.app[COLLECTOR]
    content_type = request.headers.get("Content-Type")
    # MLflow's server checks this route's Content-Type first, with these words.
    if content_type is None:
        raise MlflowException(
            "Bad Request. Content-Type header is missing.", INVALID_PARAMETER_VALUE
        )
    if content_type.split(";")[0].strip() != "application/json":
        raise MlflowException(
            "Bad Request. Content-Type must be one of ['application/json'].",
            INVALID_PARAMETER_VALUE,
        )
    a = await json_args(request)
    experiment_ids = string_list_arg(a, "experiment_ids")
    if not experiment_ids:
        raise MlflowException(
            "SearchDatasets request must specify at least one experiment_id.",
            INVALID_PARAMETER_VALUE,
        )
    if len(experiment_ids) > MAX_EXPERIMENT_IDS_PER_SEARCH_DATASETS:
        raise MlflowException(
            "SearchDatasets request cannot specify more than "
            f"{MAX_EXPERIMENT_IDS_PER_SEARCH_DATASETS} experiment_ids. Received "
            f"{len(experiment_ids)} experiment_ids.",
            INVALID_PARAMETER_VALUE,
        )
    for eid in experiment_ids:
        if not (eid.isascii() and eid.isdigit()):
            raise invalid("experiment_ids", eid)
    summaries = await c.read(c.store.search_datasets, experiment_ids)
    out: dict[str, Any] = {}
    if summaries:
        out["dataset_summaries"] = [
            {
                "experiment_id": eid,
                "name": name,
                "digest": digest,
                **({"context": context} if context else {}),
            }
            for eid, name, digest, context in summaries
        ]
    return _json(out)


async def search_runs(request: web.Request) -> web.Response:
    """POST runs/search: ``{experiment_ids, filter, run_view_type, max_results, order_by,
    page_token}`` -> ``{runs, next_page_token}``."""
    c = request.app[COLLECTOR]
    a = await json_args(request, lists=("experiment_ids", "order_by"))
    experiment_ids = string_list_arg(a, "experiment_ids")
    filter_string = string_arg(a, "filter") or None
    view_type = view_type_arg(a, "run_view_type")
    max_results = max_results_arg(a, MAX_RESULTS_DEFAULT)
    order_by = string_list_arg(a, "order_by") or None
    page_token = string_arg(a, "page_token") or None

    def work() -> bytes:
        ids, token = c.store.search_run_ids(
            experiment_ids,
            filter_string,
            view_type,
            max_results,
            order_by,
            page_token,
        )
        parts: list[str] = []
        if ids:
            parts.append(
                '"runs":[' + ",".join(c.store.runs_json(ids, served_artifact_uri(c.store))) + "]"
            )
        if token:
            parts.append('"next_page_token":' + orjson.dumps(token).decode())
        # Encoded on the reader thread: a page of 50,000 runs is tens of megabytes.
        return ("{" + ",".join(parts) + "}").encode()

    return web.Response(body=await c.read(work), content_type="application/json")


# -- metric history -------------------------------------------------------------------------


def _history(store: Store, run_id: str, key: str) -> list[tuple[int, int, float]]:
    """(timestamp ms, step, value) of every point, in MLflow's order: timestamp, step, value.

    An unknown run has no history (MLflow answers it with an empty list, not an error).
    """
    return _history_page(store, run_id, key, 0, None)[0]


def _history_page(
    store: Store, run_id: str, key: str, offset: int, count: int | None
) -> tuple[list[tuple[int, int, float]], int]:
    """Points ``offset`` to ``offset + count`` of :func:`_history`, and how many there are.

    The series is read as compact arrays (24 bytes a point); only the page becomes
    Python tuples, unless the points must be sorted first (timestamps out of step order).
    """
    try:
        steps, vals, ts = store.metric_history(run_id, key)
    except MlflowException as e:
        if e.error_code == RESOURCE_DOES_NOT_EXIST:
            return [], 0
        raise
    n = len(steps)

    def point(i: int) -> tuple[int, int, float]:
        return (round(ts[i] * 1000), steps[i], vals[i])

    end = n if count is None else min(n, offset + count)
    # The usual series (timestamps never going back, steps rising) is checked at C speed:
    # a page of a million-point series must not cost a second of tuple comparisons.
    # Rounding to ms keeps timestamps in order; where two round equal, steps decide.
    in_order = (
        all(map(operator.le, ts, itertools.islice(ts, 1, None)))
        and all(map(operator.lt, steps, itertools.islice(steps, 1, None)))
    ) or all(point(i) <= point(i + 1) for i in range(n - 1))
    if in_order:
        return [point(i) for i in range(offset, end)], n
    return sorted(point(i) for i in range(n))[offset:end], n


def _history_token(offset: int) -> str:
    payload = orjson.dumps({"v": _HISTORY_TOKEN_VERSION, "offset": offset})
    return base64.urlsafe_b64encode(payload).decode()


def _history_offset(token: str | None) -> int:
    if not token:
        return 0
    try:
        payload = orjson.loads(base64.urlsafe_b64decode(token.encode()))
    except (ValueError, binascii.Error, orjson.JSONDecodeError):
        payload = None
    offset = payload.get("offset") if isinstance(payload, dict) else None
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise MlflowException(
            "Invalid page_token: pass back the token the previous page returned",
            INVALID_PARAMETER_VALUE,
        )
    return offset


def _metric_json(key: str, point: tuple[int, int, float]) -> dict[str, Any]:
    return {"key": key, "value": _double(point[2]), "timestamp": point[0], "step": point[1]}


async def get_metric_history(request: web.Request) -> web.Response:
    """GET metrics/get-history?run_id=&metric_key=[&max_results=&page_token=]."""
    c = request.app[COLLECTOR]
    a = await json_args(request)
    run_id = run_id_arg(a)
    key = string_arg(a, "metric_key", required=True)
    max_results = int64_arg(a, "max_results")
    if max_results is not None and max_results <= 0:
        raise MlflowException(
            f"Invalid value {max_results} for parameter 'max_results' supplied. "
            "It must be a positive integer.",
            INVALID_PARAMETER_VALUE,
        )
    offset = _history_offset(string_arg(a, "page_token"))

    # At most MAX_HISTORY_PAGE points an answer, whatever max_results asks: the rest
    # comes with a next_page_token, which MLflow's client follows (it asks for pages of
    # 25,000 itself), so a whole series never sits in memory as one answer.
    page_size = MAX_HISTORY_PAGE if max_results is None else min(max_results, MAX_HISTORY_PAGE)

    def work() -> bytes:
        page, total = _history_page(c.store, run_id, key, offset, page_size)
        out: dict[str, Any] = {}
        if page:
            out["metrics"] = [_metric_json(key, p) for p in page]
        end = offset + len(page)
        if end < total:
            out["next_page_token"] = _history_token(end)
        return orjson.dumps(out)

    return web.Response(body=await c.read(work), content_type="application/json")


async def get_metric_history_bulk(request: web.Request) -> web.Response:
    """GET /ajax-api/2.0/mlflow/metrics/get-history-bulk?run_id=..&metric_key=[&max_results=]:
    the history of one metric for up to 100 runs (MLflow's UI route), runs in id order."""
    c = request.app[COLLECTOR]
    a = await json_args(request, lists=("run_id",))
    run_ids = string_list_arg(a, "run_id")
    if not run_ids:
        raise MlflowException(
            "GetMetricHistoryBulk request must specify at least one run_id.",
            INVALID_PARAMETER_VALUE,
        )
    if len(run_ids) > MAX_RUNS_GET_METRIC_HISTORY_BULK:
        raise MlflowException(
            f"GetMetricHistoryBulk request cannot specify more than "
            f"{MAX_RUNS_GET_METRIC_HISTORY_BULK} run_ids. Received {len(run_ids)} run_ids.",
            INVALID_PARAMETER_VALUE,
        )
    key = a.get("metric_key")
    if key is None:
        raise MlflowException(
            "GetMetricHistoryBulk request must specify a metric_key.", INVALID_PARAMETER_VALUE
        )
    key = string_arg(a, "metric_key")
    max_results = min(max_results_arg(a, MAX_HISTORY_BULK_RESULTS), MAX_HISTORY_BULK_RESULTS)

    def work() -> bytes:
        out: list[dict[str, Any]] = []
        for run_id in sorted(run_ids):
            for point in _history(c.store, run_id, key)[: max(max_results, 0)]:
                out.append({**_metric_json(key, point), "run_id": run_id})
        return orjson.dumps({"metrics": out[: max(max_results, 0)]})

    return web.Response(body=await c.read(work), content_type="application/json")


def _sample(points: list[tuple[int, int, float]], max_results: int) -> list[tuple[int, int, float]]:
    """MLflow's sample of one run's points (its SQL store, 3.x), for identical answers.

    Points are ordered by (step, timestamp, value); NTILE(max_results) splits them into
    buckets of near-equal size (the first ``n % max_results`` one point larger), the
    first point of each bucket is kept, and the last point is kept too, replacing the
    last sample when there is no room left.
    """
    n = len(points)
    if n <= max_results:
        return points
    small, big_count = divmod(n, max_results)
    picks = []
    index = 0
    for bucket in range(max_results):
        picks.append(points[index])
        index += small + (1 if bucket < big_count else 0)
    if picks[-1] != points[-1]:
        picks[-1] = points[-1]
    return picks


async def get_metric_history_bulk_interval(request: web.Request) -> web.Response:
    """GET metrics/get-history-bulk-interval?run_ids=..&metric_key=[&start_step=&end_step=
    &max_results=]: up to max_results points per run, sampled evenly by MLflow's rule."""
    c = request.app[COLLECTOR]
    a = await json_args(request, lists=("run_ids",))
    run_ids = string_list_arg(a, "run_ids")
    if not run_ids:
        raise missing("run_ids")
    if len(run_ids) > MAX_RUNS_GET_METRIC_HISTORY_BULK:
        raise MlflowException(
            f"GetMetricHistoryBulkInterval request must specify at most "
            f"{MAX_RUNS_GET_METRIC_HISTORY_BULK} run_ids. Received {len(run_ids)} run_ids.",
            INVALID_PARAMETER_VALUE,
        )
    key = string_arg(a, "metric_key", required=True)
    start_step = int64_arg(a, "start_step")
    end_step = int64_arg(a, "end_step")
    if (start_step is None) != (end_step is None):
        raise MlflowException(
            "If either start step or end step are specified, both must be specified.",
            INVALID_PARAMETER_VALUE,
        )
    if start_step is not None and start_step > end_step:
        raise MlflowException(
            "end_step must be greater than start_step. "
            f"Found start_step={start_step} and end_step={end_step}.",
            INVALID_PARAMETER_VALUE,
        )
    max_results = max_results_arg(a, MAX_RESULTS_PER_RUN)
    if not 1 <= max_results <= MAX_RESULTS_PER_RUN:
        raise MlflowException(
            f"max_results must be between 1 and {MAX_RESULTS_PER_RUN}.", INVALID_PARAMETER_VALUE
        )

    def work() -> bytes:
        out = []
        for run_id in run_ids:
            if not c.store.run_exists(run_id):
                raise MlflowException(f"Run with id={run_id} not found", RESOURCE_DOES_NOT_EXIST)
            points = [
                (s, t, x)
                for t, s, x in _history(c.store, run_id, key)
                if start_step is None or start_step <= s <= end_step
            ]
            # NaN sorts as MLflow's SQL column holds it: value 0, is_nan after.
            points.sort(key=lambda p: (p[0], p[1], 0.0 if p[2] != p[2] else p[2], p[2] != p[2]))
            for s, t, x in _sample(points, max_results):
                out.append(
                    {"key": key, "value": _double(x), "timestamp": t, "step": s, "run_id": run_id}
                )
        return orjson.dumps({"metrics": out} if out else {})

    return web.Response(body=await c.read(work), content_type="application/json")


# -- artifacts ------------------------------------------------------------------------------


async def list_artifacts(request: web.Request) -> web.Response:
    """GET artifacts/list?run_id=[&path=] -> ``{root_uri, files}`` (paths run-relative)."""
    c = request.app[COLLECTOR]
    a = await json_args(request)
    run_id = run_id_arg(a)
    path = string_arg(a, "path")
    rel = safe_relative_path(path, allow_root=True) if path is not None else ""
    eid, real_uri = await c.read(c.store.run_artifact_location, run_id)
    out: dict[str, Any] = {"root_uri": served_artifact_uri(c.store)(eid, run_id, real_uri)}
    files = await repository(c, real_uri).list(rel or None)
    if files:
        out["files"] = [_file_json(f.path, f.is_dir, f.file_size) for f in files]
    return _json(out)


def _file_json(path: str, is_dir: bool, size: int | None) -> dict[str, Any]:
    out: dict[str, Any] = {"path": path, "is_dir": is_dir}
    if size is not None:
        out["file_size"] = size
    return out


# -- service endpoints ----------------------------------------------------------------------


async def version(request: web.Request) -> web.Response:
    """GET /version: the server's version, as plain text (MLflow answers its own)."""
    return web.Response(text=__version__)


async def server_info(request: web.Request) -> web.Response:
    """GET /api/3.0/mlflow/server-info: what MLflow 3 clients ask before large transfers.

    Multipart and presigned transfers are off: clients then stream through the proxy.
    """
    return _json(
        {
            "store_type": "FlightlogStore",
            "workspaces_enabled": False,
            "trace_archival_enabled": False,
            "multipart_uploads_enabled": False,
            "multipart_downloads_enabled": False,
        }
    )


async def search_logged_models(request: web.Request) -> web.Response:
    """POST logged-models/search: flightlog tracks no logged models, so there are none.

    MLflow 3's client asks this before it downloads ``runs:/<run_id>/<path>`` (a run's
    model could hold the path); an empty answer sends it to the run's own artifacts.
    """
    await json_args(request)
    return _json({})


async def endpoint_not_found(request: web.Request) -> web.Response:
    """Any other path under the API prefixes: MLflow's 404 body, not aiohttp's page."""
    raise MlflowException(
        f"flightlog does not implement {request.method} {request.path}", ENDPOINT_NOT_FOUND
    )


_ROUTES: list[tuple[str, str, Handler]] = [
    ("POST", "/experiments/create", create_experiment),
    ("GET", "/experiments/get", get_experiment),
    ("GET", "/experiments/get-by-name", get_experiment_by_name),
    ("POST", "/experiments/search", search_experiments),
    ("GET", "/experiments/search", search_experiments),
    ("POST", "/experiments/update", update_experiment),
    ("POST", "/experiments/delete", delete_experiment),
    ("POST", "/experiments/restore", restore_experiment),
    ("POST", "/experiments/set-experiment-tag", set_experiment_tag),
    ("POST", "/experiments/delete-experiment-tag", delete_experiment_tag),
    ("POST", "/runs/create", create_run),
    ("GET", "/runs/get", get_run),
    ("POST", "/runs/update", update_run),
    ("POST", "/runs/delete", delete_run),
    ("POST", "/runs/restore", restore_run),
    ("POST", "/runs/search", search_runs),
    ("POST", "/runs/log-metric", log_metric),
    ("POST", "/runs/log-batch", log_batch),
    ("POST", "/runs/log-parameter", log_param),
    ("POST", "/runs/set-tag", set_tag),
    ("POST", "/runs/delete-tag", delete_tag),
    ("POST", "/runs/log-inputs", log_inputs),
    ("GET", "/metrics/get-history", get_metric_history),
    ("GET", "/metrics/get-history-bulk-interval", get_metric_history_bulk_interval),
    ("GET", "/artifacts/list", list_artifacts),
    ("POST", "/logged-models/search", search_logged_models),
]


def routes() -> list[web.RouteDef]:
    """MLflow's REST API, its artifact proxy, ``/version`` and ``server-info``."""
    out: list[web.RouteDef] = []
    # MLflow's UI route, served under /ajax-api only (as MLflow); before the catch-all.
    out.append(web.get("/ajax-api/2.0/mlflow/metrics/get-history-bulk", get_metric_history_bulk))
    out.append(web.post("/ajax-api/2.0/mlflow/experiments/search-datasets", search_datasets))
    out += artifact_proxy.ui_routes()
    for prefix in API_PREFIXES:
        out += [web.route(method, prefix + path, handler) for method, path, handler in _ROUTES]
        out.append(web.route("*", prefix + "/{tail:.*}", endpoint_not_found))
    out.append(web.get("/version", version))
    for prefix in ("/api/3.0/mlflow", "/ajax-api/3.0/mlflow"):
        out.append(web.get(prefix + "/server-info", server_info))
    return out

"""MLflow's REST API 2.0 on the collector, so MLflow's own clients can use flightlog.

Point ``MLFLOW_TRACKING_URI`` at a collector (``http://127.0.0.1:5055``) and the official
Python, Java and R clients work unchanged. Served under ``/api/2.0/mlflow/`` and
``/ajax-api/2.0/mlflow/``:

- experiments: create, get, get-by-name, search (GET and POST), update, delete,
  restore, set-experiment-tag, delete-experiment-tag;
- runs: create, get, update, delete, restore, search, log-metric, log-batch,
  log-parameter, set-tag, delete-tag, log-inputs;
- metrics: get-history (paged with max_results / page_token), get-history-bulk-interval;
- artifacts: list; the artifact proxy ``/api/2.0/mlflow-artifacts/artifacts/<path>``
  (GET download, PUT upload, DELETE, and GET ``?path=`` to list);
- ``/version`` and ``/api/3.0/mlflow/server-info`` (``/health`` is the collector's own).

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
  whatever the real location (a directory or ``s3://``), the client then sends its bytes
  to ``/api/2.0/mlflow-artifacts/artifacts/<experiment_id>/<run_id>/artifacts/...``, and
  the collector maps that path back to the run's real location. Clients need neither
  credentials for the object store nor access to the collector's disk. An experiment's
  ``artifact_location`` reads as ``mlflow-artifacts:/<id>`` when it is the collector's
  default (as MLflow's proxying server answers), and as given otherwise. Search filters on
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
import json
import math
import posixpath
import sqlite3
import uuid
from array import array
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from functools import wraps
from typing import Any

import orjson
from aiohttp import web

from flightlog.collector.app import COLLECTOR, Collector, extension
from flightlog.collector.artifacts import ArtifactRepository, repository_for
from flightlog.collector.search import (
    ACTIVE_ONLY,
    ALL,
    DELETED_ONLY,
    search_experiment_ids,
    search_run_ids,
)
from flightlog.collector.store import DEFAULT_EXPERIMENT_ID, Row, SqliteStore
from flightlog.core import validation as v
from flightlog.core.artifact_paths import proxied_artifact_uri, safe_relative_path
from flightlog.core.entities import RunStatus
from flightlog.core.exceptions import (
    BAD_REQUEST,
    INTERNAL_ERROR,
    INVALID_PARAMETER_VALUE,
    INVALID_STATE,
    RESOURCE_ALREADY_EXISTS,
    RESOURCE_DOES_NOT_EXIST,
    RESOURCE_EXHAUSTED,
    UNAUTHENTICATED,
    MlflowException,
)
from flightlog.core.run_names import generate_run_name
from flightlog.core.version import __version__

__all__ = ["API_PREFIXES", "ARTIFACTS_PREFIXES", "MLFLOW_HTTP_STATUS", "rest_artifact_uri"]

API_PREFIXES = ("/api/2.0/mlflow", "/ajax-api/2.0/mlflow")
ARTIFACTS_PREFIXES = (
    "/api/2.0/mlflow-artifacts/artifacts",
    "/ajax-api/2.0/mlflow-artifacts/artifacts",
)
ENDPOINT_NOT_FOUND = "ENDPOINT_NOT_FOUND"

# MLflow's ERROR_CODE_TO_HTTP_STATUS for the codes flightlog raises. It differs from the
# collector's own table in one place: MLflow answers INVALID_STATE with 500.
MLFLOW_HTTP_STATUS: dict[str, int] = {
    INVALID_PARAMETER_VALUE: 400,
    BAD_REQUEST: 400,
    RESOURCE_ALREADY_EXISTS: 400,
    RESOURCE_DOES_NOT_EXIST: 404,
    ENDPOINT_NOT_FOUND: 404,
    UNAUTHENTICATED: 401,
    RESOURCE_EXHAUSTED: 429,
    INVALID_STATE: 500,
    INTERNAL_ERROR: 500,
}

# MLflow's limits (mlflow/utils/validation.py and the REST API reference).
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_TAGS_PER_BATCH = 100
MAX_ENTITIES_PER_BATCH = 1000
MAX_BATCH_LOG_REQUEST_SIZE = 1_000_000
MAX_RESULTS_DEFAULT = 1000  # SearchRuns / SearchExperiments when max_results is not sent
MAX_RUNS_GET_METRIC_HISTORY_BULK = 100
MAX_RESULTS_PER_RUN = 2500
MAX_DATASET_NAME_SIZE = 500
MAX_DATASET_DIGEST_SIZE = 36

_VIEW_TYPES = {"ACTIVE_ONLY": ACTIVE_ONLY, "DELETED_ONLY": DELETED_ONLY, "ALL": ALL}
_HISTORY_TOKEN_VERSION = 1
_PROXY_SCHEME = "mlflow-artifacts"
_ARTIFACT_CHUNK = 1 << 20

Args = dict[str, Any]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# -- errors and JSON -----------------------------------------------------------------------


def _error(e: MlflowException) -> web.Response:
    return web.Response(
        status=MLFLOW_HTTP_STATUS.get(e.error_code, 500),
        body=orjson.dumps({"error_code": e.error_code, "message": e.message}),
        content_type="application/json",
    )


def _api(fn: Handler) -> Handler:
    """Answer an MlflowException as MLflow does: its JSON body and MLflow's HTTP status."""

    @wraps(fn)
    async def handler(request: web.Request) -> web.StreamResponse:
        try:
            return await fn(request)
        except MlflowException as e:
            return _error(e)

    return handler


def _json(body: dict[str, Any]) -> web.Response:
    return web.Response(body=orjson.dumps(body), content_type="application/json")


def _double(x: float) -> float | str:
    """A double as protobuf's JSON mapping writes it (orjson would write NaN as null)."""
    if math.isfinite(x):
        return x
    if x != x:
        return "NaN"
    return "Infinity" if x > 0 else "-Infinity"


# -- request arguments ---------------------------------------------------------------------


def _invalid(name: str, value: Any) -> MlflowException:
    return MlflowException(
        f"Invalid value {json.dumps(value, default=str)} for parameter '{name}' supplied: "
        f"Hint: Value was of type '{type(value).__name__}'. See the API docs for more "
        "information about request parameters.",
        INVALID_PARAMETER_VALUE,
    )


def _missing_arg(name: str) -> MlflowException:
    return MlflowException(
        f"Missing value for required parameter '{name}'. See the API docs for more "
        "information about request parameters.",
        INVALID_PARAMETER_VALUE,
    )


async def _args(request: web.Request, lists: Iterable[str] = ()) -> Args:
    """The request's arguments: the query string of a GET, else the JSON body.

    In a query string a list field is its repeated parameter (``?run_ids=a&run_ids=b``).
    """
    if request.method == "GET":
        list_fields = set(lists)
        out: Args = {}
        for name in request.query:
            if name not in out:
                out[name] = (
                    request.query.getall(name) if name in list_fields else request.query[name]
                )
        return out
    data = await request.read()
    if not data.strip():
        return {}
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise MlflowException("Request body is not valid JSON", BAD_REQUEST) from None
    if isinstance(body, str):
        # Old MLflow clients send their JSON encoded twice; MLflow's server decodes again.
        try:
            body = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise MlflowException("Request body is not valid JSON", BAD_REQUEST) from None
    if not isinstance(body, dict):
        raise MlflowException("Request body must be a JSON object", BAD_REQUEST)
    return body


def _str(a: Args, name: str, *, required: bool = False, default: str | None = None) -> Any:
    value = a.get(name)
    if value is None:
        if required:
            raise _missing_arg(name)
        return default
    if not isinstance(value, str):
        raise _invalid(name, value)
    if required and value == "":
        raise _missing_arg(name)
    return value


def _id_str(a: Args, name: str, *, required: bool = False) -> Any:
    """An id field: a string, though some clients send experiment ids as numbers."""
    value = a.get(name)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return _str(a, name, required=required)


def _run_id(a: Args) -> str:
    # ``run_uuid`` is MLflow's older name, still sent by old clients.
    run_id = a.get("run_id") or a.get("run_uuid")
    if run_id is None or run_id == "":
        raise _missing_arg("run_id")
    if not isinstance(run_id, str):
        raise _invalid("run_id", run_id)
    return run_id


def _int64(a: Args, name: str, *, required: bool = False, default: int | None = None) -> Any:
    """An int64 field, sent as a JSON number or a string of digits (protobuf's JSON)."""
    value = a.get(name)
    if value is None:
        if required:
            raise _missing_arg(name)
        return default
    if isinstance(value, bool):
        raise _invalid(name, value)
    if isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str):
        try:
            number = int(value.strip())
        except ValueError:
            raise _invalid(name, value) from None
    else:
        raise _invalid(name, value)
    if not -(2**63) <= number < 2**63:
        raise _invalid(name, value)
    return number


def _float(a: Args, name: str, *, path: str | None = None) -> float:
    """A double field: a JSON number, or "NaN", "Infinity", "-Infinity" or a numeric string."""
    value = a.get(name)
    shown = path or name
    if value is None:
        raise _missing_arg(shown)
    if isinstance(value, bool):
        raise _invalid(shown, value)
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)  # accepts "NaN", "Infinity", "-Infinity" and "1.5"
        except ValueError:
            raise _invalid(shown, value) from None
    raise _invalid(shown, value)


def _list(a: Args, name: str) -> list[Any]:
    value = a.get(name)
    if value is None:
        return []
    if not isinstance(value, list):
        raise _invalid(name, value)
    return value


def _str_list(a: Args, name: str) -> list[str]:
    items = _list(a, name)
    out = []
    for item in items:
        if isinstance(item, int) and not isinstance(item, bool):
            item = str(item)
        if not isinstance(item, str):
            raise _invalid(name, items)
        out.append(item)
    return out


def _key_values(a: Args, name: str) -> list[tuple[str, str]]:
    """A repeated {key, value} field (tags, params) as (key, value) pairs, values strings."""
    out = []
    for i, item in enumerate(_list(a, name)):
        if not isinstance(item, dict):
            raise _invalid(f"{name}[{i}]", item)
        key = item.get("key")
        if key is None or key == "":
            raise _missing_arg(f"{name}[{i}].key")
        if not isinstance(key, str):
            raise _invalid(f"{name}[{i}].key", key)
        value = item.get("value")
        if value is None:
            value = ""  # an unset proto string field is ""
        elif not isinstance(value, str):
            raise _invalid(f"{name}[{i}].value", value)
        out.append((key, value))
    return out


def _view_type(a: Args, name: str) -> int:
    value = a.get(name)
    if value is None or value == "":
        return ACTIVE_ONLY
    if isinstance(value, str):
        if value.upper() in _VIEW_TYPES:
            return _VIEW_TYPES[value.upper()]
        if value.isdigit():
            value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value in (1, 2, 3):
        return value
    raise _invalid(name, value)


def _max_results(a: Args, default: int) -> int:
    value = _int64(a, "max_results", default=default)
    return default if value is None else int(value)


# -- what a REST client sees ----------------------------------------------------------------


def rest_artifact_uri(experiment_id: str, run_id: str, real_uri: str) -> str:
    """A run's artifact URI as REST clients see it: the proxy's, when it can serve it."""
    return proxied_artifact_uri(experiment_id, run_id, real_uri)


def _experiment_json(store: SqliteStore, exp: Row) -> dict[str, Any]:
    eid = str(exp["experiment_id"])
    location = exp["artifact_location"]
    if location == f"{store.artifact_root}/{eid}":
        location = f"{_PROXY_SCHEME}:/{eid}"
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


def _metrics_json(conn: sqlite3.Cursor, ids: tuple[str]) -> dict[str, str]:
    """Each run's latest metrics as a JSON array, by run id (``ids``: a JSON id list).

    SQLite writes each metric's JSON up to its value (``{"key":..,"timestamp":..,
    "step":..,"value":``, the value last so that what follows it is always ``}``), and
    orjson writes all the page's values in one call: the shortest text that reads back
    as the same double, which SQLite's own JSON (15 digits) is not. NaN (stored as
    NULL) and the infinities arrive as the strings protobuf's JSON mapping uses.
    """
    rows = conn.execute(
        "SELECT run_uuid, '{\"key\":' || json_quote(key) || ',\"timestamp\":' || timestamp"
        " || ',\"step\":' || step || ',\"value\":',"
        " CASE WHEN is_nan THEN 'NaN' WHEN value > 1.7976931348623157e308 THEN 'Infinity'"
        " WHEN value < -1.7976931348623157e308 THEN '-Infinity' ELSE value END"
        " FROM latest_metrics WHERE run_uuid IN (SELECT value FROM json_each(?))"
        " ORDER BY run_uuid, key",
        ids,
    ).fetchall()
    if not rows:
        return {}
    run_ids, heads, values = zip(*rows, strict=True)
    # Floats never contain a comma, and neither do the three strings.
    texts = list(map(str.__add__, heads, orjson.dumps(values)[1:-1].decode().split(",")))
    out: dict[str, str] = {}
    start = 0
    # Rows come in run id order, so a run's metrics are the next `count` texts.
    for run_id, count in Counter(run_ids).items():
        out[run_id] = "[" + "},".join(texts[start : start + count]) + "}]"
        start += count
    return out


def _load_runs_json(store: SqliteStore, run_ids: Sequence[str]) -> list[str]:
    """Runs as MLflow JSON text (one object each), in the order of ``run_ids``.

    Unknown ids are skipped. One query per table for the whole page: a JSON array
    parameter stands for the id list, so 50,000 ids need neither 50,000 queries nor
    SQLite's bound-parameter limit. The text is assembled without a Python object per
    param, tag or metric: SQLite writes each run's params and tags as a JSON array
    (``json_group_array``; strings and integers are exact in its JSON), and the metrics
    as :func:`_metrics_json` says. The fields are those MLflow's server sends (a
    metric's value comes last in its object, which JSON readers do not mind); empty
    ``inputs`` and ``outputs`` are left out (MLflow sends ``{}``; the client builds the
    same Run either way, and parses two messages less per run).
    """
    if not run_ids:
        return []
    # Plain tuples, not the store's sqlite3.Row: a page of runs is tens of thousands of rows.
    conn = store.reader().cursor()
    conn.row_factory = None
    ids = (orjson.dumps(list(run_ids)).decode(),)
    where = "run_uuid IN (SELECT value FROM json_each(?))"
    infos: dict[str, str] = {}
    dumps = orjson.dumps
    for r in conn.execute(
        "SELECT run_uuid, experiment_id, run_name, user_id, status, start_time, end_time,"
        f" artifact_uri, lifecycle_stage FROM runs WHERE {where}",
        ids,
    ):
        run_id, eid = r[0], str(r[1])
        info: dict[str, Any] = {
            "run_uuid": run_id,
            "experiment_id": eid,
            "run_name": r[2],
            "user_id": r[3],
            "status": r[4],
            "start_time": r[5],
        }
        if r[6] is not None:
            info["end_time"] = r[6]
        info["artifact_uri"] = rest_artifact_uri(eid, run_id, r[7])
        info["lifecycle_stage"] = r[8]
        info["run_id"] = run_id
        infos[run_id] = dumps(info).decode()
    metrics = _metrics_json(conn, ids)
    arrays: list[dict[str, str]] = []
    for table in ("params", "tags"):
        arrays.append(
            dict(
                conn.execute(
                    "SELECT run_uuid, json_group_array(json_object('key', key, 'value', value))"
                    f" FROM {table} WHERE {where} GROUP BY run_uuid",
                    ids,
                ).fetchall()
            )
        )
    params, tags = arrays
    inputs: dict[str, list[dict[str, Any]]] = {}
    for r in conn.execute(
        f"SELECT run_uuid, dataset_json, tags_json FROM run_inputs WHERE {where} ORDER BY input_id",
        ids,
    ):
        entry: dict[str, Any] = {}
        input_tags = orjson.loads(r[2])
        if input_tags:
            entry["tags"] = input_tags
        entry["dataset"] = orjson.loads(r[1])
        inputs.setdefault(r[0], []).append(entry)
    out: list[str] = []
    for run_id in run_ids:
        info_text = infos.get(run_id)
        if info_text is None:
            continue
        data: list[str] = []
        if run_id in metrics:
            data.append('"metrics":' + metrics[run_id])
        if run_id in params:
            data.append('"params":' + params[run_id])
        if run_id in tags:
            data.append('"tags":' + tags[run_id])
        text = '{"info":' + info_text + ',"data":{' + ",".join(data) + "}"
        if run_id in inputs:
            text += ',"inputs":' + dumps({"dataset_inputs": inputs[run_id]}).decode()
        out.append(text + "}")
    return out


def _load_run(store: SqliteStore, run_id: str) -> dict[str, Any]:
    runs = _load_runs_json(store, [run_id])
    if not runs:
        raise MlflowException(f"Run with id={run_id} not found", RESOURCE_DOES_NOT_EXIST)
    run: dict[str, Any] = orjson.loads(runs[0])
    return run


# -- experiments ----------------------------------------------------------------------------


def _experiment(c: Collector, experiment_id: str) -> Row:
    """An experiment by id, whatever its stage."""
    return c.store.get_experiment(experiment_id)


def _check_location(location: str) -> None:
    # Only locations the collector can serve through the proxy: a directory or s3://.
    try:
        repository_for(location)
    except MlflowException as e:
        raise MlflowException(
            f"Invalid artifact_location {location!r}: {e.message}", INVALID_PARAMETER_VALUE
        ) from None


def _s3_endpoint_of(c: Collector) -> str | None:
    endpoint = c.config.extra.get("s3_endpoint_url")
    return endpoint if isinstance(endpoint, str) else None


@_api
async def create_experiment(request: web.Request) -> web.Response:
    """POST experiments/create: ``{name, artifact_location?, tags?}`` -> ``{experiment_id}``."""
    c = request.app[COLLECTOR]
    a = await _args(request)
    name = v.validate_experiment_name(_str(a, "name", required=True))
    location = _str(a, "artifact_location") or None
    if location is not None:
        _check_location(location)
    tags = {v.validate_key("tag", k): val for k, val in _key_values(a, "tags")}
    eid = await c.write(c.store.create_experiment, name, location, tags)
    return _json({"experiment_id": eid})


@_api
async def get_experiment(request: web.Request) -> web.Response:
    """GET experiments/get?experiment_id= -> ``{experiment}`` (deleted ones too)."""
    c = request.app[COLLECTOR]
    a = await _args(request)
    exp = await c.read(_experiment, c, _id_str(a, "experiment_id", required=True))
    return _json({"experiment": _experiment_json(c.store, exp)})


@_api
async def get_experiment_by_name(request: web.Request) -> web.Response:
    """GET experiments/get-by-name?experiment_name= -> ``{experiment}``."""
    c = request.app[COLLECTOR]
    a = await _args(request)
    name = _str(a, "experiment_name", required=True)
    exp = await c.read(c.store.get_experiment_by_name, name)
    if exp is None:
        raise MlflowException(
            f"Could not find experiment with name '{name}'", RESOURCE_DOES_NOT_EXIST
        )
    return _json({"experiment": _experiment_json(c.store, exp)})


@_api
async def search_experiments(request: web.Request) -> web.Response:
    """experiments/search: ``{view_type, max_results, filter, order_by, page_token}``."""
    c = request.app[COLLECTOR]
    a = await _args(request, lists=("order_by",))
    view_type = _view_type(a, "view_type")
    max_results = _max_results(a, MAX_RESULTS_DEFAULT)
    filter_string = _str(a, "filter") or None
    order_by = _str_list(a, "order_by") or None
    page_token = _str(a, "page_token") or None

    def work() -> dict[str, Any]:
        ids, token = search_experiment_ids(
            c.store.reader(), view_type, max_results, filter_string, order_by, page_token
        )
        out: dict[str, Any] = {}
        exps = c.store.list_experiments(ids)
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


@_api
async def delete_experiment(request: web.Request) -> web.Response:
    """POST experiments/delete: ``{experiment_id}``; its runs are deleted with it."""
    c = request.app[COLLECTOR]
    eid = _id_str(await _args(request), "experiment_id", required=True)
    _require_experiment_stage(await c.read(_experiment, c, eid), "active", eid)
    await c.write(c.store.delete_experiment, eid)
    return _json({})


@_api
async def restore_experiment(request: web.Request) -> web.Response:
    """POST experiments/restore: ``{experiment_id}``; its runs come back with it."""
    c = request.app[COLLECTOR]
    eid = _id_str(await _args(request), "experiment_id", required=True)
    _require_experiment_stage(await c.read(_experiment, c, eid), "deleted", eid)
    await c.write(c.store.restore_experiment, eid)
    return _json({})


@_api
async def update_experiment(request: web.Request) -> web.Response:
    """POST experiments/update: ``{experiment_id, new_name}``."""
    c = request.app[COLLECTOR]
    a = await _args(request)
    eid = _id_str(a, "experiment_id", required=True)
    new_name = v.validate_experiment_name(_str(a, "new_name", required=True))
    exp = await c.read(_experiment, c, eid)
    if exp["lifecycle_stage"] != "active":
        raise MlflowException("Cannot rename a non-active experiment.", INVALID_STATE)
    await c.write(c.store.rename_experiment, eid, new_name)
    return _json({})


@_api
async def set_experiment_tag(request: web.Request) -> web.Response:
    """POST experiments/set-experiment-tag: ``{experiment_id, key, value}``."""
    c = request.app[COLLECTOR]
    a = await _args(request)
    eid = _id_str(a, "experiment_id", required=True)
    key = v.validate_key("tag", _str(a, "key", required=True))
    value = _str(a, "value", default="")
    _require_active_experiment(await c.read(_experiment, c, eid), eid)
    await c.write(c.store.set_experiment_tag, eid, key, value)
    return _json({})


@_api
async def delete_experiment_tag(request: web.Request) -> web.Response:
    """POST experiments/delete-experiment-tag: ``{experiment_id, key}``."""
    c = request.app[COLLECTOR]
    a = await _args(request)
    eid = _id_str(a, "experiment_id", required=True)
    key = _str(a, "key", required=True)
    _require_active_experiment(await c.read(_experiment, c, eid), eid)
    await c.write(c.store.delete_experiment_tag, eid, key)
    return _json({})


# -- runs -----------------------------------------------------------------------------------


def _raise_first(errors: list[dict[str, str]]) -> None:
    if errors:
        raise MlflowException(errors[0]["message"], errors[0]["error_code"])


@_api
async def create_run(request: web.Request) -> web.Response:
    """POST runs/create: ``{experiment_id, user_id, run_name, start_time, tags}`` -> ``{run}``."""
    c = request.app[COLLECTOR]
    a = await _args(request)
    eid = _id_str(a, "experiment_id") or str(DEFAULT_EXPERIMENT_ID)
    tags = {v.validate_key("tag", k): v.tag_value(k, val) for k, val in _key_values(a, "tags")}
    run_name = _str(a, "run_name") or tags.get("mlflow.runName") or generate_run_name()
    if len(run_name) > v.MAX_RUN_NAME_LENGTH:
        raise MlflowException(
            f"Run name is {len(run_name)} characters long; the limit is {v.MAX_RUN_NAME_LENGTH}.",
            INVALID_PARAMETER_VALUE,
        )
    tags["mlflow.runName"] = run_name
    start_time = _int64(a, "start_time", default=0)
    exp = await c.read(_experiment, c, eid)
    _require_active_experiment(exp, eid)
    run_id = uuid.uuid4().hex
    op = {
        "run_id": run_id,
        "experiment_id": eid,
        "run_name": run_name,
        "user_id": _str(a, "user_id", default=""),
        "start_time": start_time,
        "tags": tags,
    }
    _, errors = await c.write(c.store.apply_batch, None, [("create_run", op)], [])
    _raise_first(errors)
    return _json({"run": await c.read(_load_run, c.store, run_id)})


@_api
async def get_run(request: web.Request) -> web.Response:
    """GET runs/get?run_id= -> ``{run}`` (deleted runs too, as in MLflow)."""
    c = request.app[COLLECTOR]
    run_id = _run_id(await _args(request))
    return _json({"run": await c.read(_load_run, c.store, run_id)})


@_api
async def update_run(request: web.Request) -> web.Response:
    """POST runs/update: ``{run_id, status?, end_time?, run_name?}`` -> ``{run_info}``."""
    c = request.app[COLLECTOR]
    a = await _args(request)
    run_id = _run_id(a)
    status = _str(a, "status")
    if status is not None and status not in RunStatus.ALL:
        raise _invalid("status", status)
    end_time = _int64(a, "end_time")
    run_name = _str(a, "run_name")
    if status is None and end_time is not None:
        # The store sets end_time together with a status; keep the run's own status.
        status = (await c.read(_load_run, c.store, run_id))["info"]["status"]
    op = {"status": status, "end_time": end_time, "run_name": run_name}
    await c.write(c.store.write_run, run_id, [("update_run", op)])
    return _json({"run_info": (await c.read(_load_run, c.store, run_id))["info"]})


@_api
async def delete_run(request: web.Request) -> web.Response:
    """POST runs/delete: ``{run_id}``."""
    c = request.app[COLLECTOR]
    await c.write(c.store.delete_run, _run_id(await _args(request)))
    return _json({})


@_api
async def restore_run(request: web.Request) -> web.Response:
    """POST runs/restore: ``{run_id}``."""
    c = request.app[COLLECTOR]
    await c.write(c.store.restore_run, _run_id(await _args(request)))
    return _json({})


def _metric_point(m: Args, path: str) -> tuple[str, float, int, int]:
    """(key, value, timestamp ms, step) of a Metric message, checked."""
    key = m.get("key")
    if key is None or key == "":
        raise _missing_arg(f"{path}key")
    if not isinstance(key, str):
        raise _invalid(f"{path}key", key)
    v.validate_key("metric", key)
    value = _float(m, "value", path=f"{path}value")
    timestamp = _int64(m, "timestamp", default=None)
    if timestamp is None:
        raise _missing_arg(f"{path}timestamp")
    if timestamp < 0:
        raise MlflowException(
            f"Invalid value {timestamp} for parameter '{path}timestamp' supplied: metric "
            f"'{key}' (value={value}). Timestamp must be a nonnegative long (64-bit integer)",
            INVALID_PARAMETER_VALUE,
        )
    step = _int64(m, "step", default=0)
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


@_api
async def log_metric(request: web.Request) -> web.Response:
    """POST runs/log-metric: ``{run_id, key, value, timestamp, step?}``."""
    c = request.app[COLLECTOR]
    a = await _args(request)
    run_id = _run_id(a)
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


@_api
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
    raw = await request.read()
    if len(raw) > MAX_BATCH_LOG_REQUEST_SIZE:
        raise MlflowException(
            f"Batched logging API requests must be at most {MAX_BATCH_LOG_REQUEST_SIZE} "
            f"bytes, got a request of size {len(raw)}.",
            INVALID_PARAMETER_VALUE,
        )
    a = await _args(request)
    run_id = _run_id(a)
    metrics = _list(a, "metrics")
    params = _key_values(a, "params")
    tags = _key_values(a, "tags")
    _check_batch_limit("metrics", MAX_METRICS_PER_BATCH, len(metrics))
    _check_batch_limit("params", MAX_PARAMS_TAGS_PER_BATCH, len(params))
    _check_batch_limit("tags", MAX_PARAMS_TAGS_PER_BATCH, len(tags))
    _check_batch_limit(
        "metrics, params, and tags", MAX_ENTITIES_PER_BATCH, len(metrics) + len(params) + len(tags)
    )
    points = []
    for i, m in enumerate(metrics):
        if not isinstance(m, dict):
            raise _invalid(f"metrics[{i}]", m)
        points.append(_metric_point(m, f"metrics[{i}]."))
    ops = []
    if params:
        ops.append(_params_op(params))
    if tags:
        ops.append(_tags_op(tags))
    await c.write(c.store.write_run, run_id, ops, _series(points))
    return _json({})


@_api
async def log_param(request: web.Request) -> web.Response:
    """POST runs/log-parameter: ``{run_id, key, value}``; a changed value is an error."""
    c = request.app[COLLECTOR]
    a = await _args(request)
    run_id = _run_id(a)
    op = _params_op([(_str(a, "key", required=True), _str(a, "value", default=""))])
    await c.write(c.store.write_run, run_id, [op])
    return _json({})


@_api
async def set_tag(request: web.Request) -> web.Response:
    """POST runs/set-tag: ``{run_id, key, value}``."""
    c = request.app[COLLECTOR]
    a = await _args(request)
    run_id = _run_id(a)
    op = _tags_op([(_str(a, "key", required=True), _str(a, "value", default=""))])
    await c.write(c.store.write_run, run_id, [op])
    return _json({})


@_api
async def delete_tag(request: web.Request) -> web.Response:
    """POST runs/delete-tag: ``{run_id, key}``; a tag that is not there is an error."""
    c = request.app[COLLECTOR]
    a = await _args(request)
    run_id = _run_id(a)
    key = _str(a, "key", required=True)
    await c.write(c.store.write_run, run_id, [("delete_tag", {"key": key})])
    return _json({})


def _dataset_input(item: Any, i: int) -> tuple[str, str, str, str]:
    """(name, digest, dataset JSON, tags JSON) of one DatasetInput message, checked."""
    path = f"datasets[{i}]"
    if not isinstance(item, dict):
        raise _invalid(path, item)
    dataset = item.get("dataset")
    if not isinstance(dataset, dict):
        raise _missing_arg(f"{path}.dataset")
    clean: dict[str, str] = {}
    for field in ("name", "digest", "source_type", "source", "schema", "profile"):
        value = _str(dataset, field, required=field in ("name", "digest", "source_type", "source"))
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
    tags = [{"key": k, "value": val} for k, val in _key_values(item, "tags")]
    return (
        clean["name"],
        clean["digest"],
        orjson.dumps(clean).decode(),
        orjson.dumps(tags).decode(),
    )


@_api
async def log_inputs(request: web.Request) -> web.Response:
    """POST runs/log-inputs: ``{run_id, datasets: [{dataset, tags}]}``."""
    c = request.app[COLLECTOR]
    a = await _args(request)
    run_id = _run_id(a)
    if _list(a, "models"):
        raise MlflowException(
            "flightlog does not track logged models; log-inputs takes datasets only",
            INVALID_PARAMETER_VALUE,
        )
    inputs = [_dataset_input(item, i) for i, item in enumerate(_list(a, "datasets"))]
    _check_batch_limit("datasets", MAX_METRICS_PER_BATCH, len(inputs))
    await c.write(c.store.log_inputs, run_id, inputs)
    return _json({})


@_api
async def search_runs(request: web.Request) -> web.Response:
    """POST runs/search: ``{experiment_ids, filter, run_view_type, max_results, order_by,
    page_token}`` -> ``{runs, next_page_token}``."""
    c = request.app[COLLECTOR]
    a = await _args(request, lists=("experiment_ids", "order_by"))
    experiment_ids = _str_list(a, "experiment_ids")
    filter_string = _str(a, "filter") or None
    view_type = _view_type(a, "run_view_type")
    max_results = _max_results(a, MAX_RESULTS_DEFAULT)
    order_by = _str_list(a, "order_by") or None
    page_token = _str(a, "page_token") or None

    def work() -> bytes:
        ids, token = search_run_ids(
            c.store.reader(),
            experiment_ids,
            filter_string,
            view_type,
            max_results,
            order_by,
            page_token,
        )
        parts: list[str] = []
        if ids:
            parts.append('"runs":[' + ",".join(_load_runs_json(c.store, ids)) + "]")
        if token:
            parts.append('"next_page_token":' + orjson.dumps(token).decode())
        # Encoded on the reader thread: a page of 50,000 runs is tens of megabytes.
        return ("{" + ",".join(parts) + "}").encode()

    return web.Response(body=await c.read(work), content_type="application/json")


# -- metric history -------------------------------------------------------------------------


def _history(store: SqliteStore, run_id: str, key: str) -> list[tuple[int, int, float]]:
    """(timestamp ms, step, value) of every point, in MLflow's order: timestamp, step, value.

    An unknown run has no history (MLflow answers it with an empty list, not an error).
    """
    try:
        steps, vals, ts = store.metric_history(run_id, key)
    except MlflowException as e:
        if e.error_code == RESOURCE_DOES_NOT_EXIST:
            return []
        raise
    points = [(round(t * 1000), s, x) for s, x, t in zip(steps, vals, ts, strict=True)]
    if any(points[i] > points[i + 1] for i in range(len(points) - 1)):
        points.sort()
    return points


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


@_api
async def get_metric_history(request: web.Request) -> web.Response:
    """GET metrics/get-history?run_id=&metric_key=[&max_results=&page_token=]."""
    c = request.app[COLLECTOR]
    a = await _args(request)
    run_id = _run_id(a)
    key = _str(a, "metric_key", required=True)
    max_results = _int64(a, "max_results")
    if max_results is not None and max_results <= 0:
        raise MlflowException(
            f"Invalid value {max_results} for parameter 'max_results' supplied. "
            "It must be a positive integer.",
            INVALID_PARAMETER_VALUE,
        )
    offset = _history_offset(_str(a, "page_token"))

    def work() -> bytes:
        points = _history(c.store, run_id, key)
        end = len(points) if max_results is None else min(len(points), offset + max_results)
        out: dict[str, Any] = {}
        page = points[offset:end]
        if page:
            out["metrics"] = [_metric_json(key, p) for p in page]
        if end < len(points):
            out["next_page_token"] = _history_token(end)
        return orjson.dumps(out)

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


@_api
async def get_metric_history_bulk_interval(request: web.Request) -> web.Response:
    """GET metrics/get-history-bulk-interval?run_ids=..&metric_key=[&start_step=&end_step=
    &max_results=]: up to max_results points per run, sampled evenly by MLflow's rule."""
    c = request.app[COLLECTOR]
    a = await _args(request, lists=("run_ids",))
    run_ids = _str_list(a, "run_ids")
    if not run_ids:
        raise _missing_arg("run_ids")
    if len(run_ids) > MAX_RUNS_GET_METRIC_HISTORY_BULK:
        raise MlflowException(
            f"GetMetricHistoryBulkInterval request must specify at most "
            f"{MAX_RUNS_GET_METRIC_HISTORY_BULK} run_ids. Received {len(run_ids)} run_ids.",
            INVALID_PARAMETER_VALUE,
        )
    key = _str(a, "metric_key", required=True)
    start_step = _int64(a, "start_step")
    end_step = _int64(a, "end_step")
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
    max_results = _max_results(a, MAX_RESULTS_PER_RUN)
    if not 1 <= max_results <= MAX_RESULTS_PER_RUN:
        raise MlflowException(
            f"max_results must be between 1 and {MAX_RESULTS_PER_RUN}.", INVALID_PARAMETER_VALUE
        )

    def work() -> bytes:
        conn = c.store.reader()
        out = []
        for run_id in run_ids:
            if conn.execute("SELECT 1 FROM runs WHERE run_uuid = ?", (run_id,)).fetchone() is None:
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


def _run_artifact_root(store: SqliteStore, run_id: str) -> tuple[str, str]:
    """(experiment id, real artifact URI) of a run."""
    row = (
        store.reader()
        .execute("SELECT experiment_id, artifact_uri FROM runs WHERE run_uuid = ?", (run_id,))
        .fetchone()
    )
    if row is None:
        raise MlflowException(f"Run with id={run_id} not found", RESOURCE_DOES_NOT_EXIST)
    return str(row[0]), str(row[1])


@_api
async def list_artifacts(request: web.Request) -> web.Response:
    """GET artifacts/list?run_id=[&path=] -> ``{root_uri, files}`` (paths run-relative)."""
    c = request.app[COLLECTOR]
    a = await _args(request)
    run_id = _run_id(a)
    path = _str(a, "path")
    rel = safe_relative_path(path, allow_root=True) if path is not None else ""
    eid, real_uri = await c.read(_run_artifact_root, c.store, run_id)
    out: dict[str, Any] = {"root_uri": rest_artifact_uri(eid, run_id, real_uri)}
    files = await repository_for(real_uri, s3_endpoint=_s3_endpoint_of(c)).list(rel or None)
    if files:
        out["files"] = [_file_json(f.path, f.is_dir, f.file_size) for f in files]
    return _json(out)


def _file_json(path: str, is_dir: bool, size: int | None) -> dict[str, Any]:
    out: dict[str, Any] = {"path": path, "is_dir": is_dir}
    if size is not None:
        out["file_size"] = size
    return out


async def _proxy_target(
    c: Collector, path: str, *, allow_root: bool
) -> tuple[ArtifactRepository, str]:
    """The repository and run-relative path of a proxy path ``<exp>/<run>/artifacts/<rel>``.

    The path is made canonical (and traversal refused) before it is split, so
    ``1/<run>/artifacts/../../<other run>/artifacts`` cannot reach another run's files.
    """
    canonical = safe_relative_path(path, allow_root=True)
    parts = canonical.split("/") if canonical else []
    if len(parts) < 3 or parts[2] != "artifacts":
        raise MlflowException(
            f"Invalid artifact path {path!r}: flightlog serves artifacts per run, as "
            "<experiment_id>/<run_id>/artifacts/<path>",
            INVALID_PARAMETER_VALUE,
        )
    eid, run_id = parts[0], parts[1]
    run_eid, real_uri = await c.read(_run_artifact_root, c.store, run_id)
    if run_eid != eid:
        raise MlflowException(f"Run {run_id} is not in experiment {eid}", RESOURCE_DOES_NOT_EXIST)
    rel = "/".join(parts[3:])
    if not rel and not allow_root:
        raise MlflowException(
            f"Invalid artifact path {path!r}: it names the run's artifact root, not a file",
            INVALID_PARAMETER_VALUE,
        )
    return repository_for(real_uri, s3_endpoint=_s3_endpoint_of(c)), rel


@_api
async def proxy_download(request: web.Request) -> web.StreamResponse:
    """GET mlflow-artifacts/artifacts/<path>: stream one file, as an attachment."""
    c = request.app[COLLECTOR]
    repo, rel = await _proxy_target(c, request.match_info["path"], allow_root=False)
    reader = await repo.open_read(rel, chunk_size=_ARTIFACT_CHUNK)
    name = posixpath.basename(rel).replace('"', "")
    response = web.StreamResponse(
        headers={
            "Content-Type": "application/octet-stream",
            "Content-Length": str(reader.size),
            # An attachment, never rendered: artifacts are user content (MLflow does the same).
            "Content-Disposition": f'attachment; filename="{name}"',
            "X-Content-Type-Options": "nosniff",
        }
    )
    async with reader:
        await response.prepare(request)
        async for chunk in reader:
            await response.write(chunk)
    await response.write_eof()
    return response


@_api
async def proxy_upload(request: web.Request) -> web.Response:
    """PUT mlflow-artifacts/artifacts/<path>: store the body, streamed in bounded memory."""
    c = request.app[COLLECTOR]
    repo, rel = await _proxy_target(c, request.match_info["path"], allow_root=False)

    async def chunks() -> Any:
        async for chunk in request.content.iter_chunked(_ARTIFACT_CHUNK):
            yield chunk

    size = await repo.put(rel, chunks())
    expected = request.content_length
    if expected is not None and size != expected:
        raise MlflowException(
            f"Upload of {rel!r} ended after {size} of {expected} bytes", INVALID_PARAMETER_VALUE
        )
    return _json({})


@_api
async def proxy_delete(request: web.Request) -> web.Response:
    """DELETE mlflow-artifacts/artifacts/<path>: a file or a directory tree."""
    c = request.app[COLLECTOR]
    repo, rel = await _proxy_target(c, request.match_info["path"], allow_root=True)
    await repo.delete(rel or None)
    return _json({})


@_api
async def proxy_list(request: web.Request) -> web.Response:
    """GET mlflow-artifacts/artifacts?path=<dir>: the directory's children, by base name."""
    c = request.app[COLLECTOR]
    path = request.query.get("path", "")
    repo, rel = await _proxy_target(c, path, allow_root=True)
    files = await repo.list(rel or None)
    out: dict[str, Any] = {}
    if files:
        out["files"] = [
            _file_json(posixpath.basename(f.path), f.is_dir, f.file_size) for f in files
        ]
    return _json(out)


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
    await _args(request)
    return _json({})


async def endpoint_not_found(request: web.Request) -> web.Response:
    """Any other path under the API prefixes: MLflow's 404 body, not aiohttp's page."""
    return _error(
        MlflowException(
            f"flightlog does not implement {request.method} {request.path}", ENDPOINT_NOT_FOUND
        )
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


@extension
def add_rest_routes(app: web.Application) -> None:
    """Register MLflow's REST API and artifact proxy on a collector application."""
    router = app.router
    for prefix in API_PREFIXES:
        for method, path, handler in _ROUTES:
            router.add_route(method, prefix + path, handler)
        router.add_route("*", prefix + "/{tail:.*}", endpoint_not_found)
    for prefix in ARTIFACTS_PREFIXES:
        router.add_get(prefix, proxy_list)
        router.add_get(prefix + "/{path:.+}", proxy_download)
        router.add_put(prefix + "/{path:.+}", proxy_upload)
        router.add_delete(prefix + "/{path:.+}", proxy_delete)
    router.add_get("/version", version)
    for prefix in ("/api/3.0/mlflow", "/ajax-api/3.0/mlflow"):
        router.add_get(prefix + "/server-info", server_info)

"""Request arguments, parsed one way for every endpoint: native RPC and MLflow's REST API.

The native RPC sends a msgpack map (:func:`msgpack_args`), MLflow's clients a JSON body or
a query string (:func:`json_args`); either way the handler reads fields with the
``*_arg`` functions below, which accept what MLflow's server accepts (ids as strings or
numbers, int64 as numbers or digit strings, doubles as numbers or "NaN"/"Infinity") and
refuse the rest with MLflow's messages (INVALID_PARAMETER_VALUE, naming the field).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import orjson
from aiohttp import web

from flightlog.collector.bodies import read_body
from flightlog.core.entities import ViewType
from flightlog.core.exceptions import BAD_REQUEST, INVALID_PARAMETER_VALUE, MlflowException
from flightlog.core.wire import unpack

Args = dict[str, Any]
_VIEW_TYPES = {
    "ACTIVE_ONLY": ViewType.ACTIVE_ONLY,
    "DELETED_ONLY": ViewType.DELETED_ONLY,
    "ALL": ViewType.ALL,
}


async def msgpack_args(request: web.Request) -> Args:
    """The arguments of a native RPC call: a msgpack map (an empty body is no arguments)."""
    data = await read_body(request)
    try:
        args = unpack(data) if data else {}
    except Exception:
        raise MlflowException("Request body is not valid msgpack", BAD_REQUEST) from None
    if not isinstance(args, dict):
        raise MlflowException("Request body must be a msgpack map", BAD_REQUEST)
    return args


def invalid(name: str, value: Any) -> MlflowException:
    """MLflow's error for an argument of the wrong type or value."""
    return MlflowException(
        f"Invalid value {json.dumps(value, default=str)} for parameter '{name}' supplied: "
        f"Hint: Value was of type '{type(value).__name__}'. See the API docs for more "
        "information about request parameters.",
        INVALID_PARAMETER_VALUE,
    )


def missing(name: str) -> MlflowException:
    """MLflow's error for a required argument that was not sent."""
    return MlflowException(
        f"Missing value for required parameter '{name}'. See the API docs for more "
        "information about request parameters.",
        INVALID_PARAMETER_VALUE,
    )


async def json_args(request: web.Request, lists: Iterable[str] = ()) -> Args:
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
    data = await read_body(request)
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


def string_arg(a: Args, name: str, *, required: bool = False, default: str | None = None) -> Any:
    """A string field; ``required`` refuses absent and empty."""
    value = a.get(name)
    if value is None:
        if required:
            raise missing(name)
        return default
    if not isinstance(value, str):
        raise invalid(name, value)
    if required and value == "":
        raise missing(name)
    return value


def id_arg(a: Args, name: str, *, required: bool = False) -> Any:
    """An id field: a string, though some clients send experiment ids as numbers."""
    value = a.get(name)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return string_arg(a, name, required=required)


def run_id_arg(a: Args) -> str:
    """The run id (``run_id``, or ``run_uuid`` from old clients)."""
    # ``run_uuid`` is MLflow's older name, still sent by old clients.
    run_id = a.get("run_id") or a.get("run_uuid")
    if run_id is None or run_id == "":
        raise missing("run_id")
    if not isinstance(run_id, str):
        raise invalid("run_id", run_id)
    return run_id


def int64_arg(a: Args, name: str, *, required: bool = False, default: int | None = None) -> Any:
    """An int64 field, sent as a JSON number or a string of digits (protobuf's JSON)."""
    value = a.get(name)
    if value is None:
        if required:
            raise missing(name)
        return default
    if isinstance(value, bool):
        raise invalid(name, value)
    if isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str):
        try:
            number = int(value.strip())
        except ValueError:
            raise invalid(name, value) from None
    else:
        raise invalid(name, value)
    if not -(2**63) <= number < 2**63:
        raise invalid(name, value)
    return number


def double_arg(a: Args, name: str, *, path: str | None = None) -> float:
    """A double field: a JSON number, or "NaN", "Infinity", "-Infinity" or a numeric string."""
    value = a.get(name)
    shown = path or name
    if value is None:
        raise missing(shown)
    if isinstance(value, bool):
        raise invalid(shown, value)
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)  # accepts "NaN", "Infinity", "-Infinity" and "1.5"
        except ValueError:
            raise invalid(shown, value) from None
    raise invalid(shown, value)


def list_arg(a: Args, name: str) -> list[Any]:
    """A repeated field; absent is empty."""
    value = a.get(name)
    if value is None:
        return []
    if not isinstance(value, list):
        raise invalid(name, value)
    return value


def string_list_arg(a: Args, name: str) -> list[str]:
    """A repeated string field (ids may come as numbers)."""
    items = list_arg(a, name)
    out = []
    for item in items:
        if isinstance(item, int) and not isinstance(item, bool):
            item = str(item)
        if not isinstance(item, str):
            raise invalid(name, items)
        out.append(item)
    return out


def key_values_arg(a: Args, name: str) -> list[tuple[str, str]]:
    """A repeated {key, value} field (tags, params) as (key, value) pairs, values strings."""
    out = []
    for i, item in enumerate(list_arg(a, name)):
        if not isinstance(item, dict):
            raise invalid(f"{name}[{i}]", item)
        key = item.get("key")
        if key is None or key == "":
            raise missing(f"{name}[{i}].key")
        if not isinstance(key, str):
            raise invalid(f"{name}[{i}].key", key)
        value = item.get("value")
        if value is None:
            value = ""  # an unset proto string field is ""
        elif not isinstance(value, str):
            raise invalid(f"{name}[{i}].value", value)
        out.append((key, value))
    return out


def view_type_arg(a: Args, name: str) -> int:
    """A view type: 1, 2, 3 or its name (ACTIVE_ONLY, DELETED_ONLY, ALL)."""
    value = a.get(name)
    if value is None or value == "":
        return ViewType.ACTIVE_ONLY
    if isinstance(value, str):
        if value.upper() in _VIEW_TYPES:
            return _VIEW_TYPES[value.upper()]
        if value.isascii() and value.isdigit():  # "²".isdigit() holds too
            value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value in (1, 2, 3):
        return value
    raise invalid(name, value)


def max_results_arg(a: Args, default: int) -> int:
    """``max_results`` as an int64, ``default`` when absent."""
    value = int64_arg(a, "max_results", default=default)
    return default if value is None else int(value)

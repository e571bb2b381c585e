"""Server-side checks of an ingest batch, with the SDK's own rules and messages.

``decode_batch`` checks the frame (msgpack, the map's shape, array lengths); this
checks what is inside: op names, argument types, keys and values with
``flightlog.core.validation`` (the limits the SDK enforces at the call site), and metric
timestamps. The SDK already checks all of it, so what fails here comes from another
client or a damaged frame. A bad op or series is left out and reported in the reply's
``errors``, like an op the store refuses; the rest of the batch is stored, so one
client's mistake never costs it (or anyone else) the rest of its data.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Callable
from typing import Any

from flightlog.collector.float_bounds import below_power_of_two
from flightlog.core import ops
from flightlog.core import validation as v
from flightlog.core.entities import RunStatus
from flightlog.core.exceptions import INVALID_PARAMETER_VALUE, MlflowException

Series = tuple[str, str, "array[int]", "array[float]", "array[float]"]
Op = tuple[str, dict[str, Any]]
INT64 = 2**63
MAX_ID_LENGTH = 64  # run ids are 32 hex characters; leave room, refuse the absurd
MAX_USER_LENGTH = 1000
# Timestamps are epoch seconds on the wire, shown as int64 milliseconds.
MAX_TS_SECONDS = INT64 / 1000 - 1
TS_POWER = 49  # |ts| < 2**49 s (year 17 million) is within MAX_TS_SECONDS


def _bad(message: str) -> MlflowException:
    return MlflowException(message, INVALID_PARAMETER_VALUE)


def _run_id(a: dict[str, Any]) -> None:
    run_id = a.get("run_id")
    if not isinstance(run_id, str) or not 0 < len(run_id) <= MAX_ID_LENGTH:
        raise _bad(f"Invalid run id {str(run_id)[:80]!r}")


def _opt_str(a: dict[str, Any], name: str, limit: int) -> None:
    value = a.get(name)
    if value is None:
        return
    if not isinstance(value, str):
        raise _bad(f"Argument {name!r} must be a string, not {type(value).__name__}")
    if len(value) > limit:
        raise _bad(f"Argument {name!r} is {len(value)} characters long; the limit is {limit}")


def _opt_int64(a: dict[str, Any], name: str) -> None:
    value = a.get(name)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not -INT64 <= value < INT64:
        raise _bad(f"Argument {name!r} must be a 64-bit integer, got {str(value)[:40]!r}")


def _opt_status(a: dict[str, Any]) -> None:
    status = a.get("status")
    if status is not None and status not in RunStatus.ALL:
        raise _bad(f"Invalid run status {str(status)[:40]!r}")


def _str_map(
    a: dict[str, Any], name: str, kind: str, value_check: Callable[[str, Any], str]
) -> None:
    m = a.get(name)
    if m is None and name == "tags":
        return
    if not isinstance(m, dict):
        raise _bad(f"Argument {name!r} must be a map of strings")
    for k, val in m.items():
        v.validate_key(kind, k)
        if not isinstance(val, str):
            raise _bad(f"The value of {kind} {k!r} must be a string, not {type(val).__name__}")
        value_check(k, val)


def _check_create_run(a: dict[str, Any]) -> None:
    v.validate_run_id(a.get("run_id"))
    eid = a.get("experiment_id")
    if isinstance(eid, bool) or not isinstance(eid, (str, int)) or len(str(eid)) > MAX_ID_LENGTH:
        raise _bad(f"Invalid experiment id {str(eid)[:80]!r}")
    _opt_str(a, "run_name", v.MAX_RUN_NAME_LENGTH)
    _opt_str(a, "user_id", MAX_USER_LENGTH)
    _opt_int64(a, "start_time")
    _opt_status(a)
    _str_map(a, "tags", "tag", v.tag_value)


def _check_log_params(a: dict[str, Any]) -> None:
    _run_id(a)
    _str_map(a, "params", "param", v.param_value)


def _check_set_tags(a: dict[str, Any]) -> None:
    _run_id(a)
    if a.get("tags") is None:
        raise _bad("Argument 'tags' must be a map of strings")
    _str_map(a, "tags", "tag", v.tag_value)


def _check_delete_tag(a: dict[str, Any]) -> None:
    _run_id(a)
    v.validate_key("tag", a.get("key"))


def _check_update_run(a: dict[str, Any]) -> None:
    _run_id(a)
    _opt_status(a)
    _opt_int64(a, "end_time")
    _opt_str(a, "run_name", v.MAX_RUN_NAME_LENGTH)


def _check_log_metric(a: dict[str, Any]) -> None:
    _run_id(a)
    key = a.get("key")
    if not isinstance(key, str):  # (before the key cache, which needs a hashable key)
        raise _bad(f"Invalid metric name: {str(key)[:80]!r}. Names must be strings.")
    v.validate_metric_key(key)
    value = a.get("value")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(f"Invalid value for metric {key!r}: metric values must be numbers")
    if isinstance(value, int) and not -INT64 <= value < INT64:
        raise _bad(f"Invalid value for metric {key!r}: out of range")
    v.metric_step(key, a.get("step"))
    ts = v.metric_timestamp(key, a.get("timestamp"))
    if abs(ts) > MAX_TS_SECONDS:
        raise _bad(f"Invalid timestamp for metric {key!r}: out of the int64 range")


def _check_heartbeat(a: dict[str, Any]) -> None:
    _run_id(a)


CHECKS: dict[str, Callable[[dict[str, Any]], None]] = {
    ops.CREATE_RUN: _check_create_run,
    ops.LOG_PARAMS: _check_log_params,
    ops.SET_TAGS: _check_set_tags,
    ops.DELETE_TAG: _check_delete_tag,
    ops.UPDATE_RUN: _check_update_run,
    ops.LOG_METRIC: _check_log_metric,
    ops.HEARTBEAT: _check_heartbeat,
}


def _error(op: str, e: MlflowException) -> dict[str, str]:
    return {"op": op, "error_code": e.error_code, "message": e.message}


def check_series(run_id: str, key: str, ts: array[float]) -> None:
    """A series' key and run id, and timestamps that are finite and int64 milliseconds.

    Values may be NaN or infinite (MLflow allows it); steps are int64 by construction.
    """
    if not 0 < len(run_id) <= MAX_ID_LENGTH:
        raise _bad(f"Invalid run id {run_id[:80]!r}")
    v.validate_metric_key(key)
    if not ts or below_power_of_two(ts, TS_POWER):  # the common case, at C speed
        return
    if not math.isfinite(sum(ts)) or min(ts) < -MAX_TS_SECONDS or max(ts) > MAX_TS_SECONDS:
        raise _bad(
            f"Invalid timestamps for metric {key!r}: they must be finite and fit int64 milliseconds"
        )


def check_batch(
    ops: list[Op], series: list[Series]
) -> tuple[list[Op], list[Series], list[dict[str, str]]]:
    """The ops and series that pass, and an error for each that does not."""
    good_ops: list[Op] = []
    errors: list[dict[str, str]] = []
    for name, args in ops:
        check = CHECKS.get(name)
        try:
            if check is None:
                raise _bad(f"Unknown operation {name[:80]!r}")
            check(args)
        except MlflowException as e:
            errors.append(_error(name[:80], e))
            continue
        good_ops.append((name, args))
    good_series: list[Series] = []
    for s in series:
        try:
            check_series(s[0], s[1], s[4])
        except MlflowException as e:
            errors.append(_error("log_metric", e))
            continue
        good_series.append(s)
    return good_ops, good_series, errors

"""Argument checks made at the call site, with MLflow's limits and messages.

These run in the training thread, so the common path (a key seen before) must be a
set lookup; the full checks run once per distinct key.
"""

from __future__ import annotations

import math
import numbers
import re
from typing import Any

from flightlog.core.exceptions import INVALID_PARAMETER_VALUE, MlflowException

MAX_ENTITY_KEY_LENGTH = 250
MAX_PARAM_VAL_LENGTH = 6000
MAX_TAG_VAL_LENGTH = 8000
MAX_EXPERIMENT_NAME_LENGTH = 500
MAX_RUN_NAME_LENGTH = 250
MAX_EXPERIMENT_TAG_VAL_LENGTH = 20000
# MLflow's runs.user_id column is VARCHAR(256); its server refuses nothing, SQL stores cut it.
MAX_USER_ID_LENGTH = 256
MAX_DATASET_SOURCE_SIZE = 65535
MAX_DATASET_SCHEMA_SIZE = 1048575
MAX_DATASET_PROFILE_SIZE = 16777215
MAX_INPUT_TAG_KEY_SIZE = 255
MAX_INPUT_TAG_VALUE_SIZE = 500
# Experiment ids are SQLite INTEGERs: at most 19 ASCII digits below 2**63. Python's int()
# would also take "1_0", " 1", "+1", "²" and Arabic-Indic digits; MLflow's server takes none.
_EXPERIMENT_ID = re.compile(r"[0-9]{1,19}")

# MLflow's rule: alphanumerics, underscores, dashes, periods, spaces, colons and slashes.
_VALID_KEY = re.compile(r"^[/\w.\- :]*$")
_seen_metric_keys: set[str] = set()
_SEEN_CAP = 100_000


def _bad(message: str) -> MlflowException:
    return MlflowException(message, INVALID_PARAMETER_VALUE)


def validate_key(kind: str, key: Any) -> str:
    """Check a metric, param or tag key; return it."""
    if not isinstance(key, str):
        raise _bad(
            f"Invalid {kind} name: {key!r}. Names must be strings, got {type(key).__name__}."
        )
    if key == "":
        raise _bad(f"Invalid {kind} name: ''. Names may not be empty.")
    if len(key) > MAX_ENTITY_KEY_LENGTH:
        raise _bad(
            f"Invalid {kind} name: {key[:40]!r}... is {len(key)} characters long; "
            f"the limit is {MAX_ENTITY_KEY_LENGTH}."
        )
    if not _VALID_KEY.match(key):
        raise _bad(
            f"Invalid {kind} name: {key!r}. Names may only contain alphanumerics, "
            "underscores (_), dashes (-), periods (.), spaces ( ), colons (:) and slashes (/)."
        )
    # A path-like key must not climb out of its namespace (MLflow refuses "../x" and "/x").
    if key.startswith("/") or ".." in key.split("/"):
        raise _bad(f"Invalid {kind} name: {key!r}. Names may not be absolute or contain '..'.")
    return key


def validate_metric_key(key: Any) -> str:
    """Check a metric key, remembering keys already seen so the next check is a set lookup."""
    if key in _seen_metric_keys:
        return str(key)
    validate_key("metric", key)
    if len(_seen_metric_keys) < _SEEN_CAP:
        _seen_metric_keys.add(key)
    return str(key)


def metric_value(key: str, value: Any) -> float:
    """Coerce a metric value to float; NaN and +/-inf are legal, strings are not."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, numbers.Number):
        try:
            return float(value)  # type: ignore[arg-type]
        except TypeError:
            pass
    elif not isinstance(value, (str, bytes)) and hasattr(value, "__float__"):
        # numpy scalars, 0-d tensors and the like.
        try:
            return float(value)
        except (TypeError, ValueError):
            pass
    raise _bad(
        f"Invalid value {value!r} for metric {key!r}: metric values must be numbers "
        f"(got {type(value).__name__})."
    )


def metric_step(key: str, step: Any) -> int:
    """Check a metric step: an integer (numpy integers accepted)."""
    if isinstance(step, bool) or not isinstance(step, numbers.Integral):
        raise _bad(f"Invalid step {step!r} for metric {key!r}: steps must be integers.")
    step = int(step)
    if not -(2**63) <= step < 2**63:
        raise _bad(f"Invalid step {step} for metric {key!r}: out of the int64 range.")
    return step


def metric_timestamp(key: str, timestamp: Any) -> float:
    """Convert a user timestamp (epoch milliseconds) to the internal epoch seconds."""
    if isinstance(timestamp, bool) or not isinstance(timestamp, numbers.Real):
        raise _bad(
            f"Invalid timestamp {timestamp!r} for metric {key!r}: "
            "timestamps are integers in milliseconds since the epoch."
        )
    t = float(timestamp)
    if math.isnan(t) or math.isinf(t):
        raise _bad(f"Invalid timestamp {timestamp!r} for metric {key!r}.")
    return t / 1000.0


def param_value(key: str, value: Any) -> str:
    """Stringify a param value and check MLflow's length limit."""
    text = str(value)
    if len(text) > MAX_PARAM_VAL_LENGTH:
        raise _bad(
            f"Param value for {key!r} is {len(text)} characters long; "
            f"the limit is {MAX_PARAM_VAL_LENGTH}."
        )
    return text


def tag_value(key: str, value: Any) -> str:
    """Stringify a tag value and check MLflow's length limit."""
    text = str(value)
    if len(text) > MAX_TAG_VAL_LENGTH:
        raise _bad(
            f"Tag value for {key!r} is {len(text)} characters long; "
            f"the limit is {MAX_TAG_VAL_LENGTH}."
        )
    return text


def validate_experiment_name(name: Any) -> str:
    """Experiment names: non-empty strings; '/' hierarchies are allowed."""
    if not isinstance(name, str) or not name.strip():
        raise _bad(f"Invalid experiment name: {name!r}. Names must be non-empty strings.")
    if len(name) > MAX_EXPERIMENT_NAME_LENGTH:
        raise _bad(
            f"Invalid experiment name: {len(name)} characters; "
            f"the limit is {MAX_EXPERIMENT_NAME_LENGTH}."
        )
    return name


def parse_experiment_id(value: Any) -> int:
    """An experiment id as an int: ASCII digits (or an int) in SQLite's INTEGER range.

    :raises MlflowException: ``INVALID_PARAMETER_VALUE`` naming the id for anything else.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and _EXPERIMENT_ID.fullmatch(value):
        number = int(value)
    else:
        number = -1
    if not 0 <= number < 2**63:
        shown = repr(value) if len(repr(value)) <= 100 else repr(value)[:100] + "..."
        raise _bad(f"Invalid experiment id {shown}: experiment ids are integers below 2^63.")
    return number


def limit_length(what: str, value: str, limit: int) -> str:
    """Refuse a string field longer than MLflow's ``limit``, naming the field."""
    if len(value) > limit:
        raise _bad(f"{what} is {len(value)} characters long; the limit is {limit}.")
    return value


def validate_run_name(name: str) -> str:
    """A run name within MLflow's limit (it is also the ``mlflow.runName`` tag)."""
    return limit_length("Run name", name, MAX_RUN_NAME_LENGTH)


def experiment_tag_value(key: str, value: Any) -> str:
    """Stringify an experiment tag value and check MLflow's limit (20,000 characters)."""
    return limit_length(
        f"Experiment tag value for {key!r}", str(value), MAX_EXPERIMENT_TAG_VAL_LENGTH
    )


def validate_run_id(run_id: Any) -> str:
    """Run ids are 32 lowercase hex characters (MLflow's uuid4().hex); others are refused."""
    if not isinstance(run_id, str) or not re.fullmatch(r"[0-9a-f]{32}", run_id):
        raise MlflowException(
            f"Invalid run id {run_id!r}: expected 32 hex characters.", INVALID_PARAMETER_VALUE
        )
    return run_id

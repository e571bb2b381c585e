"""Checks on a new experiment and its tags, the same for the REST API and the native RPC."""

from __future__ import annotations

from typing import Any

from flightlog.collector.artifact_policy import check_location
from flightlog.collector.config import CollectorConfig
from flightlog.collector.request_args import invalid
from flightlog.core import validation as v


def experiment_tags(tags: Any) -> dict[str, str]:
    """Tags as a {key: value} mapping (RPC) or (key, value) pairs (REST), within MLflow's limits."""
    if tags is None:
        return {}
    if not isinstance(tags, (dict, list)):
        raise invalid("tags", tags)
    pairs = tags.items() if isinstance(tags, dict) else tags
    out: dict[str, str] = {}
    for pair in pairs:
        if not isinstance(pair, tuple) or len(pair) != 2:
            raise invalid("tags", tags)
        key, value = pair
        out[v.validate_key("tag", key)] = v.experiment_tag_value(key, value)
    return out


def new_experiment(
    config: CollectorConfig, name: Any, location: str | None, tags: Any
) -> tuple[str, str | None, dict[str, str]]:
    """(name, artifact location to store, tags) of an experiment a client creates.

    :raises MlflowException: ``INVALID_PARAMETER_VALUE`` naming the field at fault; a
        location outside the allowed artifact roots names those roots.
    """
    name = v.validate_experiment_name(name)
    if location is not None:
        location = check_location(config, location)
    return name, location, experiment_tags(tags)

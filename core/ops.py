"""The operations a batch carries, by name, with the arguments each takes.

An ingest batch (see :mod:`flightlog.core.wire`) holds ``[name, args]`` pairs in the order
the SDK issued them; the agent builds them, the collector checks and applies them. The
names and argument shapes are defined here once so both sides agree on them.
"""

from __future__ import annotations

from typing import Final, TypedDict

CREATE_RUN: Final = "create_run"
LOG_PARAMS: Final = "log_params"
SET_TAGS: Final = "set_tags"
DELETE_TAG: Final = "delete_tag"
UPDATE_RUN: Final = "update_run"
LOG_METRIC: Final = "log_metric"
HEARTBEAT: Final = "heartbeat"

#: Every operation name, in the order a run's life usually issues them.
ALL: Final = (CREATE_RUN, LOG_PARAMS, SET_TAGS, DELETE_TAG, UPDATE_RUN, LOG_METRIC, HEARTBEAT)


class _CreateRunArgsRequired(TypedDict):
    run_id: str
    experiment_id: str | int


class CreateRunArgs(_CreateRunArgsRequired, total=False):
    """``create_run``: a run with a client-made id (32 hex characters)."""

    run_name: str | None
    user_id: str | None
    start_time: int | None  # epoch milliseconds
    status: str | None  # one of RunStatus.ALL; RUNNING when absent
    tags: dict[str, str] | None
    heartbeat: bool  # the agent sends heartbeats for this run


class LogParamsArgs(TypedDict):
    """``log_params``: params are immutable; the same value again is a no-op."""

    run_id: str
    params: dict[str, str]


class SetTagsArgs(TypedDict):
    """``set_tags``: tags upsert."""

    run_id: str
    tags: dict[str, str]


class DeleteTagArgs(TypedDict):
    """``delete_tag``."""

    run_id: str
    key: str


class _UpdateRunArgsRequired(TypedDict):
    run_id: str


class UpdateRunArgs(_UpdateRunArgsRequired, total=False):
    """``update_run``: a new status (ending the run sets end_time) and/or name."""

    status: str | None
    end_time: int | None  # epoch milliseconds
    run_name: str | None
    heartbeat: bool


class _LogMetricArgsRequired(TypedDict):
    run_id: str
    key: str
    value: float


class LogMetricArgs(_LogMetricArgsRequired, total=False):
    """``log_metric`` as an op (single points; bulk points travel as wire columns)."""

    step: int | None
    timestamp: float | None  # epoch seconds on the wire


class HeartbeatArgs(TypedDict):
    """``heartbeat``: the agent that owns the run is alive."""

    run_id: str

"""The tracking data model, with MLflow's names and fields.

Times are epoch milliseconds, as in MLflow. Entities are plain objects built by the
client from collector answers; they hold no connection and can be pickled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class RunStatus:
    """Run states, as MLflow names them."""

    RUNNING = "RUNNING"
    SCHEDULED = "SCHEDULED"
    FINISHED = "FINISHED"
    FAILED = "FAILED"
    KILLED = "KILLED"

    ALL = (RUNNING, SCHEDULED, FINISHED, FAILED, KILLED)
    TERMINATED = (FINISHED, FAILED, KILLED)

    @staticmethod
    def is_terminated(status: str) -> bool:
        """True for FINISHED, FAILED and KILLED."""
        return status in RunStatus.TERMINATED


class ViewType:
    """Which lifecycle stages a search or lookup includes (MLflow's values)."""

    ACTIVE_ONLY = 1
    DELETED_ONLY = 2
    ALL = 3

    @staticmethod
    def from_any(value: int | str | None) -> int:
        """Accept MLflow's ints or their names ("ACTIVE_ONLY", ...)."""
        if value is None:
            return ViewType.ACTIVE_ONLY
        if isinstance(value, str):
            try:
                return int(getattr(ViewType, value.upper()))
            except AttributeError:
                raise ValueError(
                    f"Invalid view type {value!r}: use ACTIVE_ONLY, DELETED_ONLY or ALL"
                ) from None
        if value not in (1, 2, 3):
            raise ValueError(f"Invalid view type {value!r}: use 1 (ACTIVE_ONLY), 2 or 3")
        return int(value)


class LifecycleStage:
    ACTIVE = "active"
    DELETED = "deleted"


class Metric:
    """One metric point (timestamp in epoch milliseconds).

    A slotted class rather than a dataclass: history reads build millions of them.
    """

    __slots__ = ("key", "run_id", "step", "timestamp", "value")

    def __init__(
        self, key: str, value: float, timestamp: int, step: int, run_id: str | None = None
    ) -> None:
        self.key = key
        self.value = value
        self.timestamp = timestamp
        self.step = step
        self.run_id = run_id

    def _tuple(self) -> tuple[Any, ...]:
        return (self.key, self.value, self.timestamp, self.step, self.run_id)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Metric):
            return NotImplemented
        a, b = self._tuple(), other._tuple()
        # NaN values compare equal here so that a stored NaN point equals the one logged.
        return a == b or (a[0] == b[0] and a[2:] == b[2:] and a[1] != a[1] and b[1] != b[1])

    def __hash__(self) -> int:
        return hash((self.key, self.timestamp, self.step, self.run_id))

    def __repr__(self) -> str:
        return (
            f"Metric(key={self.key!r}, value={self.value!r}, timestamp={self.timestamp!r}, "
            f"step={self.step!r})"
        )


@dataclass(frozen=True)
class Param:
    key: str
    value: str


@dataclass(frozen=True)
class RunTag:
    key: str
    value: str


@dataclass(frozen=True)
class ExperimentTag:
    key: str
    value: str


@dataclass
class Experiment:
    """An experiment: a named group of runs."""

    experiment_id: str
    name: str
    artifact_location: str
    lifecycle_stage: str = LifecycleStage.ACTIVE
    tags: dict[str, str] = field(default_factory=dict)
    creation_time: int | None = None
    last_update_time: int | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Experiment:
        """Build from a collector answer."""
        return cls(
            experiment_id=str(d["experiment_id"]),
            name=d["name"],
            artifact_location=d["artifact_location"],
            lifecycle_stage=d["lifecycle_stage"],
            tags=dict(d.get("tags") or {}),
            creation_time=d.get("creation_time"),
            last_update_time=d.get("last_update_time"),
        )


@dataclass
class RunInfo:
    """A run's metadata."""

    run_id: str
    experiment_id: str
    run_name: str
    user_id: str
    status: str
    start_time: int
    end_time: int | None
    artifact_uri: str
    lifecycle_stage: str = LifecycleStage.ACTIVE

    @property
    def run_uuid(self) -> str:
        """MLflow's older name for run_id."""
        return self.run_id


@dataclass
class RunData:
    """A run's params, tags and the latest value of each metric."""

    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class InputTag:
    """A tag of a dataset input (``mlflow.data.context``: training, eval, ...)."""

    key: str
    value: str


@dataclass(frozen=True)
class Dataset:
    """A dataset as a run records it, as ``mlflow.entities.Dataset``: name, digest,
    source (type and JSON), and optional schema and profile JSON."""

    name: str
    digest: str
    source_type: str
    source: str
    schema: str | None = None
    profile: str | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Dataset:
        """Build from the JSON (REST) or collector form."""
        return cls(
            name=d["name"],
            digest=d["digest"],
            source_type=d["source_type"],
            source=d["source"],
            schema=d.get("schema"),
            profile=d.get("profile"),
        )

    def to_dict(self) -> dict[str, str]:
        """The REST form (``None`` fields left out)."""
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass(frozen=True)
class DatasetInput:
    """A dataset a run used, with its tags, as ``mlflow.entities.DatasetInput``."""

    dataset: Dataset
    tags: list[InputTag] = field(default_factory=list)


@dataclass
class RunInputs:
    dataset_inputs: list[DatasetInput] = field(default_factory=list)


@dataclass
class Run:
    """A run: its info and data."""

    info: RunInfo
    data: RunData
    inputs: RunInputs = field(default_factory=RunInputs)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Run:
        """Build from a collector answer."""
        i = d["info"]
        info = RunInfo(
            run_id=i["run_id"],
            experiment_id=str(i["experiment_id"]),
            run_name=i["run_name"],
            user_id=i["user_id"],
            status=i["status"],
            start_time=i["start_time"],
            end_time=i.get("end_time"),
            artifact_uri=i["artifact_uri"],
            lifecycle_stage=i["lifecycle_stage"],
        )
        data = d["data"]
        inputs = [
            DatasetInput(
                Dataset.from_dict(item["dataset"]),
                [InputTag(t["key"], t["value"]) for t in item.get("tags") or []],
            )
            for item in (d.get("inputs") or {}).get("dataset_inputs") or []
        ]
        return cls(
            info=info,
            data=RunData(
                metrics=dict(data.get("metrics") or {}),
                params=dict(data.get("params") or {}),
                tags=dict(data.get("tags") or {}),
            ),
            inputs=RunInputs(inputs),
        )


@dataclass(frozen=True)
class FileInfo:
    """An artifact entry: path relative to the run's artifact root."""

    path: str
    is_dir: bool
    file_size: int | None

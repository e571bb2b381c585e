"""The tracking store's interface: every query the collector makes goes through it.

Handlers (native RPC, MLflow's REST API, search, charts, liveness, housekeeping) call
these methods and hold no SQL; :class:`~flightlog.collector.store.SqliteStore` implements
them, and a second backend (PostgreSQL) implements the same and runs the same test suite
(tests/test_store.py). Methods are synchronous: the collector calls them on its writer
thread (writes) or its reader threads (reads).

Errors are :class:`~flightlog.core.exceptions.MlflowException` with MLflow's codes
(RESOURCE_DOES_NOT_EXIST for an unknown id, and so on). Rows are plain dicts: an
experiment ``{experiment_id, name, artifact_location, lifecycle_stage, creation_time,
last_update_time, tags}``, a run ``{info: {...}, data: {metrics, params, tags}}``.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

#: The experiment every store starts with, as in MLflow.
DEFAULT_EXPERIMENT_ID = 0
DEFAULT_EXPERIMENT_NAME = "Default"

Row = dict[str, Any]
#: The columns both stores select for :meth:`StoreAPI.run_states`, in
#: :func:`run_state` order (the last step: the largest step of the run's latest metrics).
RUN_STATE_COLUMNS = (
    "r.run_uuid, r.status, r.start_time, r.end_time, r.lifecycle_stage,"
    " (SELECT MAX(m.step) FROM latest_metrics m WHERE m.run_uuid = r.run_uuid)"
)


def run_state(r: Sequence[Any]) -> Row:
    """A :data:`RUN_STATE_COLUMNS` row as the dict :meth:`StoreAPI.run_states` returns."""
    keys = ("run_id", "status", "start_time", "end_time", "lifecycle_stage", "last_step")
    return dict(zip(keys, r, strict=True))


#: One op of an ingest batch: (name from flightlog.core.ops, arguments).
Op = tuple[str, dict[str, Any]]
#: One column chunk of an ingest batch: (run_id, key, steps, values, timestamps in s).
Series = tuple[str, str, "array[int]", "array[float]", "array[float]"]
#: A series of one run (REST writes): (key, steps, values, timestamps in s).
RunSeries = tuple[str, "array[int]", "array[float]", "array[float]"]
Points = tuple["array[int]", "array[float]", "array[float]"]


class Store(Protocol):
    """What the collector needs of a tracking store."""

    #: Default artifact root: a new experiment's location is ``<root>/<experiment_id>``.
    artifact_root: str

    def close(self) -> None:
        """Release connections; the store is not used afterwards."""

    # -- experiments ------------------------------------------------------------------

    def create_experiment(
        self, name: str, artifact_location: str | None = None, tags: dict[str, str] | None = None
    ) -> str:
        """Create an experiment and return its id; the name must be unused."""
        ...

    def get_experiment(self, experiment_id: str) -> Row:
        """An experiment by id, deleted ones included."""
        ...

    def get_experiment_by_name(self, name: str) -> Row | None:
        """An experiment by name, or None."""
        ...

    def list_experiments(self, ids: Iterable[str]) -> list[Row]:
        """Experiments by id in the order given; unknown ids skipped."""
        ...

    def delete_experiment(self, experiment_id: str) -> None:
        """Mark an experiment and its runs deleted."""

    def restore_experiment(self, experiment_id: str) -> None:
        """Bring a deleted experiment and its runs back."""

    def rename_experiment(self, experiment_id: str, new_name: str) -> None:
        """Rename an experiment."""

    def set_experiment_tag(self, experiment_id: str, key: str, value: str) -> None:
        """Set (upsert) an experiment tag."""

    def delete_experiment_tag(self, experiment_id: str, key: str) -> None:
        """Delete an experiment tag; a missing tag is an error."""

    # -- writes ---------------------------------------------------------------------------

    def apply_batch(
        self, batch_id: str | None, ops: Sequence[Op], series: Sequence[Series]
    ) -> tuple[bool, list[dict[str, str]]]:
        """Apply one ingest batch in one transaction; return (duplicate, errors)."""
        ...

    def write_run(self, run_id: str, ops: Sequence[Op], series: Sequence[RunSeries] = ()) -> None:
        """Apply ops and series to one active run atomically: all or nothing."""

    def log_inputs(self, run_id: str, inputs: Sequence[tuple[str, str, str, str]]) -> None:
        """Record (name, digest, dataset JSON, tags JSON) dataset inputs of an active run."""

    def search_datasets(
        self, experiment_ids: Sequence[str]
    ) -> list[tuple[str, str, str, str | None]]:
        """(experiment id, name, digest, context) of datasets logged to the experiments' runs."""
        ...

    # -- runs ------------------------------------------------------------------------------

    def get_run(self, run_id: str) -> Row:
        """A run with params, tags and latest metrics; deleted runs included."""
        ...

    def get_runs(self, run_ids: Sequence[str]) -> list[Row]:
        """Runs by id in the given order; unknown ids skipped."""
        ...

    def run_states(self, run_ids: Sequence[str]) -> list[Row]:
        """Each run's ``run_id``, ``status``, ``start_time``, ``end_time``,
        ``lifecycle_stage`` and ``last_step`` (the largest step of its latest metrics, None
        before any), in order; unknown ids skipped. Light: no params, tags or metrics."""
        ...

    def runs_json(
        self, run_ids: Sequence[str], artifact_uri: Callable[[str, str, str], str]
    ) -> list[str]:
        """Runs as MLflow's REST JSON text, one object each, in order; unknown ids skipped.

        ``artifact_uri(experiment_id, run_id, real_uri)`` gives the URI clients see.
        """
        ...

    def run_exists(self, run_id: str) -> bool:
        """Whether a run with this id exists (whatever its stage)."""
        ...

    def run_artifact_location(self, run_id: str) -> tuple[str, str]:
        """(experiment id, artifact URI) of a run."""
        ...

    def delete_run(self, run_id: str) -> None:
        """Mark a run deleted."""

    def restore_run(self, run_id: str) -> None:
        """Bring a deleted run back."""

    # -- metrics ---------------------------------------------------------------------------

    def metric_chunks(self, run_id: str, key: str) -> list[tuple[bytes, bytes, bytes]]:
        """The packed (steps, values, timestamps) chunks of one series, in logged order."""
        ...

    def metric_history(self, run_id: str, key: str) -> Points:
        """A whole series as (steps, values, timestamps in seconds) arrays."""
        ...

    def series_extent(self, run_id: str, key: str) -> tuple[int, int, int]:
        """(points, smallest step, largest step) of a series; (0, 0, 0) when it is empty."""
        ...

    def block_summaries(self, run_id: str, key: str) -> array[float]:
        """The series' block summaries (collector.downsample), concatenated in order."""
        ...

    def sampled_series(self, run_id: str, key: str, max_points: int) -> Points:
        """At most ``max_points`` points of a series, its shape kept (collector.downsample)."""
        ...

    # -- reads for the web UI (collector.ui_api) -------------------------------------------

    def experiment_summaries(self) -> list[Row]:
        """Every experiment with its tags, run count and last activity (epoch ms)."""
        ...

    def experiment_columns(self, experiment_id: str) -> dict[str, list[str]]:
        """The param, metric and tag keys that the experiment's runs use, sorted."""
        ...

    def child_run_ids(self, run_id: str) -> list[str]:
        """Runs whose ``mlflow.parentRunId`` tag names this run."""
        ...

    def metric_series_info(self, run_id: str) -> list[Row]:
        """Each metric key of a run with its point count and step range."""
        ...

    def metric_extremes(self, experiment_id: str, key: str) -> dict[str, tuple[float, float]]:
        """Each run's smallest and largest value of one metric (NaN ignored)."""
        ...

    def metric_values_at_step(
        self, experiment_id: str, key: str, step: int
    ) -> dict[str, tuple[int, float]]:
        """Per run: (step, value) of its point of a metric with the largest step at or
        before ``step`` (the latest of those at that step); runs without one are absent."""
        ...

    def metric_chunk_spans(
        self, run_id: str, key: str, min_step: int | None, max_step: int | None
    ) -> list[tuple[int, int, int, int]]:
        """(chunk_id, points, min_step, max_step) of the chunks overlapping a step range."""
        ...

    def metric_chunk_spans_many(
        self,
        run_ids: Sequence[str],
        keys: Sequence[str],
        min_step: int | None,
        max_step: int | None,
    ) -> dict[tuple[str, str], list[tuple[int, int, int, int]]]:
        """(run_id, key) -> the spans of that series' chunks that overlap a step range,
        for every pair of the given runs and keys (pairs without chunks left out)."""
        ...

    def metric_chunk_data(
        self, chunk_ids: Sequence[int], *, summaries: bool
    ) -> dict[int, tuple[bytes, ...]]:
        """Chunks by id: their block summary, or their packed steps, values, timestamps."""
        ...

    # -- search ----------------------------------------------------------------------------

    def search_run_ids(
        self,
        experiment_ids: Sequence[str],
        filter_string: str | None,
        run_view_type: int,
        max_results: int,
        order_by: Sequence[str] | None,
        page_token: str | None,
    ) -> tuple[list[str], str | None]:
        """One page of matching run ids, in order, and the next page's token."""
        ...

    def search_experiments(
        self,
        view_type: int,
        max_results: int,
        filter_string: str | None,
        order_by: Sequence[str] | None,
        page_token: str | None,
    ) -> tuple[list[Row], str | None]:
        """One page of matching experiments, in order, and the next page's token."""
        ...

    # -- upkeep ----------------------------------------------------------------------------

    def prune_batch_ids(self, older_than_ms: int) -> int:
        """Forget ingest batch ids received before the given time; return how many."""
        ...

    def fail_stale_runs(self, older_than_ms: int) -> list[str]:
        """Mark FAILED the watched RUNNING runs not heard since the given time; their ids."""
        ...

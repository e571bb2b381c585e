"""The fluent API for datasets and tables: ``log_input``, ``log_inputs``, ``log_table``
and ``load_table``, on the active run and experiment, as MLflow's fluent module."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flightlog.client import MlflowClient
from flightlog.core.entities import DatasetInput, InputTag
from flightlog.core.exceptions import INVALID_PARAMETER_VALUE, MlflowException
from flightlog.data import Dataset
from flightlog.fluent import _resolve_experiment_id, _run_id_for_write

#: The input tag naming what a dataset was for (training, eval, ...), as in MLflow.
CONTEXT_TAG = "mlflow.data.context"


def _dataset_input(
    dataset: Dataset, context: str | None, tags: dict[str, str] | None
) -> DatasetInput:
    if not isinstance(dataset, Dataset):
        raise MlflowException(
            f"log_input takes a dataset from flightlog.data (from_pandas, from_numpy), not "
            f"{type(dataset).__name__}",
            INVALID_PARAMETER_VALUE,
        )
    input_tags = [InputTag(str(k), str(v)) for k, v in (tags or {}).items()]
    if context is not None:
        input_tags.append(InputTag(CONTEXT_TAG, context))
    return DatasetInput(dataset._to_entity(), input_tags)


def log_input(
    dataset: Dataset | None = None,
    context: str | None = None,
    tags: dict[str, str] | None = None,
    model: Any = None,
) -> None:
    """Record a dataset the active run used; ``context`` says what for ("training")."""
    one = dataset is not None
    log_inputs(
        [dataset] if one else [],
        [context] if one else [],
        [tags] if one else [],
        [model] if model is not None else None,
    )


def log_inputs(
    datasets: Sequence[Dataset | None] | None = None,
    contexts: Sequence[str | None] | None = None,
    tags_list: Sequence[dict[str, str] | None] | None = None,
    models: Sequence[Any] | None = None,
) -> None:
    """Record several datasets of the active run, each with its context and tags."""
    items = list(datasets or [])
    ctxs = list(contexts or [None] * len(items))
    tagss = list(tags_list or [None] * len(items))
    if len(ctxs) != len(items) or len(tagss) != len(items):
        raise MlflowException(
            "datasets, contexts and tags_list must have the same length",
            INVALID_PARAMETER_VALUE,
        )
    inputs = [
        _dataset_input(d, c, t) for d, c, t in zip(items, ctxs, tagss, strict=True) if d is not None
    ]
    rid, client = _run_id_for_write(None)
    client.log_inputs(rid, inputs, models)


def log_table(data: Any, artifact_file: str, run_id: str | None = None) -> None:
    """Store a table (dict of columns or DataFrame) as a JSON artifact of the active run."""
    rid, client = _run_id_for_write(run_id)
    client.log_table(rid, data, artifact_file)


def load_table(
    artifact_file: str,
    run_ids: list[str] | None = None,
    extra_columns: list[str] | None = None,
) -> Any:
    """The table ``artifact_file`` of the current experiment's runs, as one DataFrame."""
    client = MlflowClient()
    return client.load_table(_resolve_experiment_id(), artifact_file, run_ids, extra_columns)

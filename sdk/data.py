"""Datasets for ``log_input``: ``flightlog.data.from_pandas`` and ``from_numpy``.

As ``mlflow.data``: a dataset has a name, a digest (a short hash of its content, so the
same data logged twice is recognised), a source (where it came from), a schema and a
profile (its size). ``mlflow.log_input(dataset, context="training")`` records it on the
active run; the MLflow client reads the same fields back. pandas and numpy are imported
only when a dataset is built from them.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from typing import Any

from flightlog.core.entities import Dataset as DatasetEntity
from flightlog.core.exceptions import INVALID_PARAMETER_VALUE, MlflowException

__all__ = ["Dataset", "DatasetSource", "from_numpy", "from_pandas"]

#: Rows hashed for a digest: enough to tell datasets apart, bounded for large ones.
DIGEST_ROWS = 10_000


@dataclass(frozen=True)
class DatasetSource:
    """Where a dataset came from: a type (``local``, ``http``, ``s3``, ``code``) and JSON."""

    source_type: str
    source: dict[str, Any]

    def to_json(self) -> str:
        """The source as MLflow stores it."""
        return json.dumps(self.source)

    @staticmethod
    def resolve(source: str | os.PathLike[str] | DatasetSource | None) -> DatasetSource:
        """A source from a URI or path; None is the running script (a ``code`` source)."""
        if isinstance(source, DatasetSource):
            return source
        if source is None:
            name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "<console>"
            return DatasetSource(
                "code", {"tags": {"mlflow.source.name": name, "mlflow.source.type": "LOCAL"}}
            )
        text = os.fspath(source)
        scheme = text.split("://", 1)[0].lower() if "://" in text else ""
        if scheme in ("http", "https"):
            return DatasetSource("http", {"url": text})
        if scheme in ("", "file"):
            return DatasetSource("local", {"uri": text})
        return DatasetSource(scheme, {"uri": text})


class Dataset:
    """A dataset to log: name, digest, source, schema and profile, as ``mlflow.data``."""

    def __init__(
        self,
        *,
        name: str | None,
        digest: str,
        source: DatasetSource,
        schema: dict[str, Any] | None,
        profile: dict[str, Any] | None,
        data: Any = None,
        targets: str | None = None,
    ) -> None:
        self.name = name or "dataset"
        self.digest = digest
        self.source = source
        self.schema = schema
        self.profile = profile
        self.targets = targets
        self._data = data

    def to_dict(self) -> dict[str, str]:
        """The fields as strings, as ``mlflow.data.Dataset.to_dict``."""
        return self._to_entity().to_dict()

    def _to_entity(self) -> DatasetEntity:
        return DatasetEntity(
            name=self.name,
            digest=self.digest,
            source_type=self.source.source_type,
            source=self.source.to_json(),
            schema=json.dumps(self.schema) if self.schema is not None else None,
            profile=json.dumps(self.profile) if self.profile is not None else None,
        )

    def __repr__(self) -> str:
        return f"<Dataset name={self.name!r} digest={self.digest!r} source={self.source}>"


class PandasDataset(Dataset):
    """A dataset built from a pandas DataFrame; ``.df`` is the frame."""

    @property
    def df(self) -> Any:
        return self._data


class NumpyDataset(Dataset):
    """A dataset built from numpy arrays; ``.features`` and ``.targets_array``."""

    @property
    def features(self) -> Any:
        return self._data[0]

    @property
    def targets_array(self) -> Any:
        return self._data[1]


def _digest(*parts: bytes) -> str:
    h = hashlib.md5(usedforsecurity=False)
    for p in parts:
        h.update(p)
    return h.hexdigest()[:8]


_PANDAS_TYPES = {"b": "boolean", "i": "long", "u": "long", "f": "double", "M": "datetime"}


def _column_type(dtype: Any) -> str:
    kind = getattr(dtype, "kind", "O")
    if kind == "i" and dtype.itemsize <= 4:
        return "integer"
    if kind == "f" and dtype.itemsize <= 4:
        return "float"
    if kind in ("O", "U", "S"):
        return "string"
    return _PANDAS_TYPES.get(kind, "string")


def from_pandas(
    df: Any,
    source: str | os.PathLike[str] | DatasetSource | None = None,
    targets: str | None = None,
    name: str | None = None,
    digest: str | None = None,
    predictions: str | None = None,
) -> PandasDataset:
    """A dataset from a pandas DataFrame, as ``mlflow.data.from_pandas``.

    The digest hashes the first rows' content, the shape and the column names; the
    schema lists each column's type; the profile gives the row and element counts.
    """
    import pandas as pd

    if not isinstance(df, pd.DataFrame):
        raise MlflowException(
            f"from_pandas needs a pandas DataFrame, got {type(df).__name__}",
            INVALID_PARAMETER_VALUE,
        )
    for label, col in (("targets", targets), ("predictions", predictions)):
        if col is not None and col not in df.columns:
            raise MlflowException(
                f"The {label} column {col!r} is not in the DataFrame", INVALID_PARAMETER_VALUE
            )
    if digest is None:
        head = df.head(DIGEST_ROWS)
        hashed = pd.util.hash_pandas_object(head, index=False).to_numpy().tobytes()
        digest = _digest(
            hashed, str(df.shape).encode(), json.dumps(list(map(str, df.columns))).encode()
        )
    schema = {
        "mlflow_colspec": [
            {"type": _column_type(df[c].dtype), "name": str(c), "required": True}
            for c in df.columns
        ]
    }
    profile = {"num_rows": len(df), "num_elements": int(df.size)}
    return PandasDataset(
        name=name,
        digest=digest,
        source=DatasetSource.resolve(source),
        schema=schema,
        profile=profile,
        data=df,
        targets=targets,
    )


def _tensor_spec(arr: Any) -> dict[str, Any]:
    return {
        "type": "tensor",
        "tensor-spec": {"dtype": str(arr.dtype), "shape": [-1, *arr.shape[1:]]},
    }


def from_numpy(
    features: Any,
    source: str | os.PathLike[str] | DatasetSource | None = None,
    targets: Any = None,
    name: str | None = None,
    digest: str | None = None,
) -> NumpyDataset:
    """A dataset from numpy arrays (features, optional targets), as ``mlflow.data.from_numpy``."""
    import numpy as np

    feats = np.asarray(features)
    tgts = None if targets is None else np.asarray(targets)
    if tgts is not None and len(tgts) != len(feats):
        raise MlflowException(
            f"features have {len(feats)} rows but targets {len(tgts)}", INVALID_PARAMETER_VALUE
        )
    arrays = [("features", feats)] + ([("targets", tgts)] if tgts is not None else [])
    if digest is None:
        parts: list[bytes] = []
        for _, arr in arrays:
            flat = np.ascontiguousarray(arr[:DIGEST_ROWS])
            parts += [flat.tobytes(), str(arr.shape).encode(), str(arr.dtype).encode()]
        digest = _digest(*parts)
    schema = {
        "mlflow_tensorspec": {label: json.dumps([_tensor_spec(arr)]) for label, arr in arrays}
    }
    profile: dict[str, Any] = {}
    for label, arr in arrays:
        profile[f"{label}_shape"] = list(arr.shape)
        profile[f"{label}_size"] = int(arr.size)
        profile[f"{label}_nbytes"] = int(arr.nbytes)
    return NumpyDataset(
        name=name,
        digest=digest,
        source=DatasetSource.resolve(source),
        schema=schema,
        profile=profile,
        data=(feats, tgts),
    )

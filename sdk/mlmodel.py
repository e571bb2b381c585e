"""MLflow's model format: the directory every flavor writes and reads.

A model directory holds the serialized model, an ``MLmodel`` file (YAML: the flavors, a
``python_function`` section naming MLflow's loader module, signature and input example),
``requirements.txt``, ``python_env.yaml`` and ``conda.yaml``. It is the layout MLflow
writes, so ``mlflow.pyfunc.load_model(path)`` and the flavor's ``mlflow.<flavor>.load_model``
load what flightlog logs, and flightlog loads what MLflow logs.

Model URIs: ``runs:/<run_id>/<path>`` (downloaded through the collector's artifact API,
wherever the run's artifacts live, S3 included), ``file:`` URIs and local paths.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from flightlog.core.exceptions import (
    INVALID_PARAMETER_VALUE,
    RESOURCE_ALREADY_EXISTS,
    RESOURCE_DOES_NOT_EXIST,
    MlflowException,
)

MLMODEL = "MLmodel"
REQUIREMENTS = "requirements.txt"
PYTHON_ENV = "python_env.yaml"
CONDA_ENV = "conda.yaml"
INPUT_EXAMPLE = "input_example.json"
#: MLflow's loader modules and the flightlog modules that load the same flavors.
LOADERS = {
    "mlflow.sklearn": "flightlog.sklearn",
    "mlflow.tensorflow": "flightlog.tensorflow",
    "mlflow.pytorch": "flightlog.pytorch",
}


def _yaml() -> Any:
    try:
        import yaml
    except ImportError:
        raise MlflowException(
            "MLflow model files are YAML: pip install pyyaml (or a flightlog extra such as "
            "'flightlog[sklearn]', which brings it)"
        ) from None
    return yaml


def pinned(distribution: str) -> str | None:
    """``name==version`` of an installed distribution, or None when it is not installed."""
    try:
        return f"{distribution}=={importlib.metadata.version(distribution)}"
    except importlib.metadata.PackageNotFoundError:
        return None


@dataclass
class ModelInfo:
    """What log_model returns (MLflow's ModelInfo fields that apply without a registry)."""

    artifact_path: str
    flavors: dict[str, Any]
    model_uri: str
    model_uuid: str
    run_id: str
    utc_time_created: str
    signature: dict[str, Any] | None = None
    saved_input_example_info: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = field(default=None)


# -- signatures and input examples -----------------------------------------------------------


def _column_type(dtype: Any) -> str:
    kind = getattr(dtype, "kind", "O")
    if kind == "b":
        return "boolean"
    if kind in "iu":
        return "long" if getattr(dtype, "itemsize", 8) > 4 else "integer"
    if kind == "f":
        return "double" if getattr(dtype, "itemsize", 8) > 4 else "float"
    return "string"


def schema_of(data: Any) -> list[dict[str, Any]] | None:
    """MLflow's schema of a pandas DataFrame (named columns) or an array (a tensor spec)."""
    columns = getattr(data, "columns", None)
    dtypes = getattr(data, "dtypes", None)
    if columns is not None and dtypes is not None:
        return [
            {"type": _column_type(dt), "name": str(name), "required": True}
            for name, dt in zip(columns, dtypes, strict=True)
        ]
    try:
        import numpy as np

        array = np.asarray(data)
    except Exception:
        return None
    if array.dtype == object:
        return None
    shape = [-1, *list(array.shape[1:])]
    return [{"type": "tensor", "tensor-spec": {"dtype": str(array.dtype), "shape": shape}}]


def infer_signature(model_input: Any, model_output: Any = None) -> dict[str, Any] | None:
    """A model signature (MLflow's MLmodel form: JSON texts) of example input and output."""
    inputs = schema_of(model_input)
    if inputs is None:
        return None
    outputs = schema_of(model_output) if model_output is not None else None
    return {
        "inputs": json.dumps(inputs),
        "outputs": json.dumps(outputs) if outputs is not None else None,
        "params": None,
    }


def _signature_dict(signature: Any) -> dict[str, Any] | None:
    if signature is None or signature is False:
        return None
    if isinstance(signature, dict):
        return signature
    to_dict = getattr(signature, "to_dict", None)  # an mlflow.models.ModelSignature
    if callable(to_dict):
        return dict(to_dict())
    raise MlflowException(
        f"signature must be a dict from flightlog.mlmodel.infer_signature or an MLflow "
        f"ModelSignature, not {type(signature).__name__}",
        INVALID_PARAMETER_VALUE,
    )


def _save_input_example(path: Path, example: Any) -> dict[str, Any]:
    if hasattr(example, "to_dict") and hasattr(example, "columns"):
        split = example.to_dict(orient="split")
        split.pop("index", None)
        path.joinpath(INPUT_EXAMPLE).write_text(json.dumps(split, default=str))
        return {"artifact_path": INPUT_EXAMPLE, "type": "dataframe", "pandas_orient": "split"}
    import numpy as np

    array = np.asarray(example)
    path.joinpath(INPUT_EXAMPLE).write_text(json.dumps({"inputs": array.tolist()}))
    return {"artifact_path": INPUT_EXAMPLE, "type": "ndarray", "format": "tf-serving"}


# -- writing -----------------------------------------------------------------------------------


def write_model_dir(
    path: Path,
    *,
    flavor: str,
    flavor_conf: dict[str, Any],
    loader_module: str | None,
    requirements: list[str],
    pip_requirements: list[str] | None = None,
    extra_pip_requirements: list[str] | None = None,
    signature: Any = None,
    input_example: Any = None,
    metadata: dict[str, Any] | None = None,
    pyfunc_conf: dict[str, Any] | None = None,
    run_id: str | None = None,
    artifact_path: str | None = None,
) -> dict[str, Any]:
    """Write MLmodel and the environment files beside an already serialized model;
    returns the MLmodel contents. ``loader_module`` None leaves out ``python_function``;
    ``pyfunc_conf`` names the model's file or directory for it, as MLflow's flavors do
    (sklearn: ``model_path``; tensorflow, pytorch: ``data``)."""
    yaml = _yaml()
    python_version = platform.python_version()
    flavors: dict[str, Any] = {}
    if loader_module is not None:
        flavors["python_function"] = {
            "env": {"conda": CONDA_ENV, "virtualenv": PYTHON_ENV},
            "loader_module": loader_module,
            "python_version": python_version,
            **(pyfunc_conf or {}),
        }
    flavors[flavor] = flavor_conf
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    mlmodel: dict[str, Any] = {
        "artifact_path": artifact_path,
        "flavors": flavors,
        "model_size_bytes": size,
        "model_uuid": uuid.uuid4().hex,
        "run_id": run_id,
        "utc_time_created": datetime.datetime.now(datetime.timezone.utc).strftime(
            "%Y-%m-%d %H:%M:%S.%f"
        ),
        "flightlog_version": _flightlog_version(),
    }
    sig = _signature_dict(signature)
    if sig is not None:
        mlmodel["signature"] = sig
    if input_example is not None:
        mlmodel["saved_input_example_info"] = _save_input_example(path, input_example)
    if metadata:
        mlmodel["metadata"] = metadata
    mlmodel = {k: val for k, val in mlmodel.items() if val is not None}
    with open(path / MLMODEL, "w", encoding="utf-8") as f:
        yaml.safe_dump(mlmodel, f, default_flow_style=False, sort_keys=False)

    reqs = list(pip_requirements if pip_requirements is not None else requirements)
    reqs += list(extra_pip_requirements or [])
    path.joinpath(REQUIREMENTS).write_text("".join(f"{r}\n" for r in reqs))
    build = [r for r in (pinned("pip"), pinned("setuptools"), pinned("wheel")) if r]
    python_env = {
        "python": python_version,
        "build_dependencies": build,
        "dependencies": [f"-r {REQUIREMENTS}"],
    }
    with open(path / PYTHON_ENV, "w", encoding="utf-8") as f:
        yaml.safe_dump(python_env, f, default_flow_style=False, sort_keys=False)
    conda = {
        "name": "mlflow-env",
        "channels": ["conda-forge"],
        "dependencies": [f"python={python_version}", "pip", {"pip": reqs}],
    }
    with open(path / CONDA_ENV, "w", encoding="utf-8") as f:
        yaml.safe_dump(conda, f, default_flow_style=False, sort_keys=False)
    return mlmodel


def _flightlog_version() -> str:
    from flightlog.core.version import __version__

    return __version__


def new_model_dir(path: str | os.PathLike[str]) -> Path:
    """The directory a save_model writes; it must not exist yet (as in MLflow)."""
    target = Path(path)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise MlflowException(
            f"Path '{target}' already exists and is not empty", RESOURCE_ALREADY_EXISTS
        )
    target.mkdir(parents=True, exist_ok=True)
    return target


def log_model(
    save: Callable[[Path, str, str], dict[str, Any]],
    artifact_path: str | None,
    name: str | None,
    registered_model_name: str | None,
) -> ModelInfo:
    """Save a model with ``save(dir, run_id, artifact_path)`` into a temporary directory and
    upload it as ``artifact_path`` of the active run (started if there is none)."""
    from flightlog import fluent
    from flightlog.autologging import check_registered_model_name
    from flightlog.client import MlflowClient

    check_registered_model_name(registered_model_name)
    path = name or artifact_path
    if not path:
        raise MlflowException(
            "log_model needs a name for the model (e.g. log_model(model, 'model'))",
            INVALID_PARAMETER_VALUE,
        )
    path = path.strip("/")
    run = fluent.active_run() or fluent._current()
    if run is None:
        run = fluent.start_run()
    run_id = run.info.run_id
    with tempfile.TemporaryDirectory(prefix="flightlog-model-") as tmp:
        local = Path(tmp) / "model"
        mlmodel = save(local, run_id, path)
        MlflowClient().log_artifacts(run_id, local, path)
    return ModelInfo(
        artifact_path=path,
        flavors=mlmodel["flavors"],
        model_uri=f"runs:/{run_id}/{path}",
        model_uuid=mlmodel["model_uuid"],
        run_id=run_id,
        utc_time_created=mlmodel["utc_time_created"],
        signature=mlmodel.get("signature"),
        saved_input_example_info=mlmodel.get("saved_input_example_info"),
        metadata=mlmodel.get("metadata"),
    )


# -- reading -----------------------------------------------------------------------------------


def local_model_path(model_uri: str | os.PathLike[str], dst_path: str | None = None) -> Path:
    """A local directory holding the model that ``model_uri`` names (downloaded for
    ``runs:/``); raises with the URI when there is no model there."""
    uri = os.fspath(model_uri)
    parsed = urlsplit(uri)
    if parsed.scheme == "runs":
        rest = uri[len("runs:") :].lstrip("/")
        run_id, _, artifact = rest.partition("/")
        if not run_id or not artifact:
            raise MlflowException(
                f"Model URI {uri!r} must look like runs:/<run_id>/<artifact path>",
                INVALID_PARAMETER_VALUE,
            )
        from flightlog.client import MlflowClient

        target = dst_path or tempfile.mkdtemp(prefix="flightlog-model-")
        local = Path(MlflowClient().download_artifacts(run_id, artifact.strip("/"), target))
    elif parsed.scheme == "file":
        local = Path(unquote(parsed.path))
    elif parsed.scheme == "" or (len(parsed.scheme) == 1 and os.name == "nt"):
        local = Path(uri)
    elif parsed.scheme == "models":
        raise MlflowException(
            f"Model URI {uri!r}: flightlog has no model registry (yet); use runs:/<run_id>/<path>",
            INVALID_PARAMETER_VALUE,
        )
    else:
        raise MlflowException(
            f"Unsupported model URI {uri!r}: use runs:/<run_id>/<path>, file: or a local path",
            INVALID_PARAMETER_VALUE,
        )
    if not local.joinpath(MLMODEL).is_file():
        raise MlflowException(
            f"No MLflow model at {uri!r}: {local / MLMODEL} does not exist",
            RESOURCE_DOES_NOT_EXIST,
        )
    return local


def read_mlmodel(path: Path) -> dict[str, Any]:
    """The MLmodel file of a model directory, as a dict."""
    with open(path / MLMODEL, encoding="utf-8") as f:
        data = _yaml().safe_load(f)
    if not isinstance(data, dict) or not isinstance(data.get("flavors"), dict):
        raise MlflowException(f"{path / MLMODEL} is not an MLmodel file (no flavors)")
    return data


def flavor_conf(path: Path, flavor: str) -> dict[str, Any]:
    """One flavor's section of a model's MLmodel; raises naming the flavors it has."""
    flavors = read_mlmodel(path)["flavors"]
    if flavor not in flavors:
        raise MlflowException(
            f"The model at {path} has no {flavor!r} flavor (it has: {', '.join(flavors)})",
            RESOURCE_DOES_NOT_EXIST,
        )
    conf: dict[str, Any] = flavors[flavor]
    return conf

"""``flightlog.pyfunc``: load any MLflow model with a ``python_function`` flavor.

``load_model(uri).predict(data)`` works for the models flightlog's flavors log
(sklearn, Keras, PyTorch) and for the same flavors logged by MLflow: the MLmodel file
names MLflow's loader module (``mlflow.sklearn``...), which maps to flightlog's.

Loading a pickle-based model (sklearn's pickle/cloudpickle, a PyTorch module) runs code
from the model file: load only models you trust, or log sklearn models with
``serialization_format="skops"``.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

from flightlog.core.exceptions import RESOURCE_DOES_NOT_EXIST, MlflowException
from flightlog.mlmodel import LOADERS, local_model_path, read_mlmodel

FLAVOR_NAME = "python_function"


class PyFuncModel:
    """A loaded model with MLflow's generic ``predict(data)`` interface."""

    def __init__(self, impl: Any, metadata: dict[str, Any], path: Path) -> None:
        self._impl = impl
        self.metadata = metadata
        self.path = path

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> Any:
        """Predictions for ``data`` (a pandas DataFrame, numpy array or list of rows)."""
        return self._impl.predict(data)

    def get_raw_model(self) -> Any:
        """The framework's own model object."""
        raw = getattr(self._impl, "get_raw_model", None)
        return raw() if callable(raw) else self._impl

    @property
    def loader_module(self) -> str:
        return str(self.metadata["flavors"][FLAVOR_NAME]["loader_module"])

    def __repr__(self) -> str:
        return f"PyFuncModel(loader_module={self.loader_module!r}, path={str(self.path)!r})"


def load_model(
    model_uri: str | os.PathLike[str],
    suppress_warnings: bool = False,
    dst_path: str | None = None,
    model_config: dict[str, Any] | None = None,
) -> PyFuncModel:
    """Load a model as a PyFuncModel from ``runs:/<run_id>/<path>``, ``file:`` or a path."""
    path = local_model_path(model_uri, dst_path)
    meta = read_mlmodel(path)
    conf = meta["flavors"].get(FLAVOR_NAME)
    if conf is None:
        raise MlflowException(
            f"The model at {model_uri!r} has no python_function flavor "
            f"(it has: {', '.join(meta['flavors'])}); load it with its flavor's load_model",
            RESOURCE_DOES_NOT_EXIST,
        )
    loader = str(conf["loader_module"])
    module_name = LOADERS.get(loader)
    if module_name is None:
        raise MlflowException(
            f"The model at {model_uri!r} needs the loader {loader!r}, which flightlog does not "
            f"have (it loads {', '.join(sorted(LOADERS))}); load it with MLflow itself",
            RESOURCE_DOES_NOT_EXIST,
        )
    module = importlib.import_module(module_name)
    # sklearn's section names its file as model_path; tensorflow's and pytorch's, data.
    rel = conf.get("model_path") or conf.get("data")
    data = path / rel if rel else path
    return PyFuncModel(module._load_pyfunc(str(data)), meta, path)

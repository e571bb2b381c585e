"""Every Python code block of the tutorial (shared/seed/mlflow-tracking-tutorial.zh.txt)
runs with ``import flightlog as mlflow`` against a real collector process.

The blocks are taken from the tutorial file itself. What the harness changes, and why:
- ``import mlflow`` becomes ``import flightlog as mlflow``;
- names the tutorial leaves to the reader (``params``, ``X_train``, ``calculate_train_loss``,
  the files it logs...) are defined by a prelude, and the placeholder argument
  ``("run_id")`` is replaced by the id of a real run;
- ``time.sleep`` is a no-op, so the 100-second system-metrics loop runs in a moment.
Blocks that use autologging or model flavors (``mlflow.sklearn``, ``mlflow.tensorflow``,
``mlflow.pytorch``) get a tiny ``model`` (and data) of their framework from a prelude of
their own, and skip when the framework is not installed.

The tutorial lives in ../shared beside the repository, which CI provides; in a clone
without it these tests skip and say so.
"""

from __future__ import annotations

import os
import re
import textwrap
import time
from pathlib import Path

import pytest

import flightlog as mlflow
from flightlog import autologging
from tests.conftest import CollectorProcess

TUTORIAL = (
    Path(__file__).resolve().parents[2] / "shared" / "seed" / "mlflow-tracking-tutorial.zh.txt"
)

pytestmark = pytest.mark.skipif(
    not TUTORIAL.exists(),
    reason=f"the tutorial is not at {TUTORIAL}: it lives in ../shared beside the "
    "repository, which CI provides (not part of a clone)",
)


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(line number, code) of each block introduced by a line reading ``python``."""
    lines = text.splitlines()
    blocks: list[tuple[int, str]] = []
    i = 0
    while i < len(lines):
        if lines[i].strip() == "python":
            start = i + 1
            j = start
            body: list[str] = []
            # A block runs until the next section heading (a line ending in " #").
            while (
                j < len(lines)
                and not re.search(r"\s#$", lines[j])
                and lines[j].strip() not in ("python", "text")
            ):
                body.append(lines[j])
                j += 1
            blocks.append((start, "\n".join(body).strip() + "\n"))
            i = j
        else:
            i += 1
    return blocks


def _blocks() -> list[tuple[int, str]]:
    """The tutorial's blocks; none without the file (the module is skipped then)."""
    if not TUTORIAL.exists():
        return []
    return python_blocks(TUTORIAL.read_text(encoding="utf-8"))


# Each framework block's own prelude: the ``model`` (and data) its code takes as given.
FRAMEWORK_PRELUDES = {
    "mlflow.sklearn.log_model": (
        "sklearn",
        "from sklearn.linear_model import LogisticRegression\n"
        "model = LogisticRegression().fit(X_train, y_train)\n",
    ),
    "mlflow.sklearn": ("sklearn", ""),
    "mlflow.tensorflow": (
        "tensorflow",
        "import numpy as _np\n"
        "import keras as _keras\n"
        "X_train = _np.random.default_rng(0).normal(size=(32, 2)).astype('float32')\n"
        "y_train = (X_train[:, 0] > 0).astype('float32')\n"
        "model = _keras.Sequential([_keras.Input(shape=(2,)), _keras.layers.Dense(1)])\n"
        "model.compile(optimizer='adam', loss='mse')\n",
    ),
    "mlflow.pytorch": (
        "pytorch_lightning",
        "from tests.lightning_models import TinyRegressor_pytorch_lightning\n"
        "model = TinyRegressor_pytorch_lightning()\n",
    ),
}


def _cases() -> list[object]:
    """One case per block."""
    return [pytest.param(line, code, id=f"line{line}") for line, code in _blocks()]


PRELUDE = """
import os
import flightlog as _fl
X_train, y_train = [[0.0, 1.0], [1.0, 0.0]], [0, 1]
params = {"learning_rate": 0.01, "batch_size": 32}
metrics = {"accuracy": 0.95, "loss": 0.05}
tags = {"team": "ml"}
accuracy = 0.93
project, task, version = "customer-churn", "prediction", "v2"
def calculate_train_loss(epoch): return 1.0 / (epoch + 1)
def calculate_val_loss(epoch): return 1.2 / (epoch + 1)
def train_model(): return None
"""


def _setup_files(work: Path) -> None:
    (work / "config.yaml").write_text("learning_rate: 0.01\n")
    (work / "model.pkl").write_bytes(b"\x80\x04model")
    (work / "results.json").write_text('{"accuracy": 0.95}')
    for d, name in (("outputs", "predictions.json"), ("plots", "curve.png")):
        (work / d).mkdir(exist_ok=True)
        (work / d / name).write_text("x")


def _seed_runs() -> str:
    """Experiments 1 and 2 with runs the search example finds; returns a real run id."""
    e1 = mlflow.create_experiment("seed-1", tags={"project": "customer-churn"})
    e2 = mlflow.create_experiment("seed-2")
    assert (e1, e2) == ("1", "2")
    for exp, acc in ((e1, 0.95), (e2, 0.91), (e2, 0.5)):
        with mlflow.start_run(experiment_id=exp) as run:
            mlflow.log_metric("accuracy", acc)
            mlflow.log_param("model_type", "RandomForest")
            mlflow.log_artifact("config.yaml")
    return run.info.run_id


@pytest.mark.parametrize(("line", "code"), _cases())
def test_tutorial_block(
    tracking: CollectorProcess,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    line: int,
    code: str,
) -> None:
    prelude = PRELUDE
    framework = next((v for k, v in FRAMEWORK_PRELUDES.items() if k in code), None)
    if framework is not None:
        pytest.importorskip(framework[0])
        prelude += framework[1]
        monkeypatch.setenv("KERAS_BACKEND", "tensorflow")
        monkeypatch.setenv("PL_DISABLE_FORK", "1")
    pytest.importorskip("matplotlib").use("Agg")
    os.chdir(tmp_path)
    _setup_files(tmp_path)
    run_id = _seed_runs()
    monkeypatch.setattr(time, "sleep", lambda seconds: None)
    source = re.sub(r"^import mlflow[ \t\r]*$", "import flightlog as mlflow", code, flags=re.M)
    source = source.replace('("run_id")', f"({run_id!r})")
    namespace: dict[str, object] = {"__name__": "__tutorial__"}
    try:
        exec(compile(prelude + textwrap.dedent(source), f"tutorial:{line}", "exec"), namespace)
    finally:
        autologging.reset_for_tests()
    assert mlflow.active_run() is None, "the block left a run open"
    mlflow.flush()
    if ".autolog(" in code:
        run = mlflow.last_active_run()
        assert run is not None and run.data.metrics, "autolog logged no metrics"
        names = {f.path for f in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
        assert "model" in names, "autolog logged no model"


def test_every_block_was_found() -> None:
    blocks = _blocks()
    assert len(blocks) >= 25
    assert any("tags.project = 'customer-churn'" in code for _, code in blocks)

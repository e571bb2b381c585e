"""A relative tracking URI is pinned where it is first used: changing directory mid-run
(Hydra does by default) keeps the run's store."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from flightlog import MlflowClient, context
from flightlog.core.exceptions import MlflowException
from flightlog.core.uris import absolute_uri
from tests.helpers import run_script, run_status, stored_points

CHDIR_MID_RUN = """
import json, os
import flightlog as mlflow
with mlflow.start_run() as run:
    for i in range(100):
        mlflow.log_metric("loss", 1.0 / (i + 1), step=i)
    os.makedirs("outputs/2026-11-30", exist_ok=True)
    os.chdir("outputs/2026-11-30")  # what Hydra does before the task function runs
    for i in range(100, 200):
        mlflow.log_metrics({"loss": 1.0 / (i + 1), "acc": i / 200}, step=i)
    with open("model.txt", "w") as f:
        f.write("weights")
    mlflow.log_artifact("model.txt")
    mlflow.log_param("lr", 0.1)
got = mlflow.get_run(run.info.run_id)
arts = [f.path for f in mlflow.MlflowClient().list_artifacts(run.info.run_id)]
info = json.load(open(os.path.join(mlflow.get_tracking_uri(), "collector.json")))
print(json.dumps({"run_id": run.info.run_id, "uri": mlflow.get_tracking_uri(),
                  "status": got.info.status, "params": got.data.params,
                  "metrics": got.data.metrics, "artifacts": arts, "pid": info["pid"],
                  "stores_here": os.path.exists("flightlog")}))
"""


@pytest.mark.parametrize("env", [{}, {"FLIGHTLOG_TRACKING_URI": "runs"}], ids=["default", "env"])
def test_run_keeps_its_store_when_the_script_changes_directory(
    tmp_path: Path, env: dict[str, str]
) -> None:
    work = tmp_path / "project"
    work.mkdir()
    out = json.loads(run_script(tmp_path, CHDIR_MID_RUN, cwd=work, env=env).stdout)
    try:
        store = (work / env.get("FLIGHTLOG_TRACKING_URI", "flightlog")).resolve()
        assert out["uri"] == str(store)
        assert out["status"] == "FINISHED"
        assert out["params"] == {"lr": "0.1"}
        assert out["metrics"] == {"loss": 1.0 / 200, "acc": 199 / 200}
        assert out["artifacts"] == ["model.txt"]
        # No second store in the directory the script moved to, and nothing lost.
        assert not out["stores_here"]
        assert not (work / "outputs" / "2026-11-30" / "flightlog").exists()
        db = store / "flightlog.db"
        assert stored_points(db, out["run_id"], "loss") == 200
        assert stored_points(db, out["run_id"], "acc") == 100
        assert run_status(db, out["run_id"]) == "FINISHED"
        assert (store / "artifacts").is_dir()
        found = list((store / "artifacts").rglob("model.txt"))
        assert len(found) == 1 and found[0].read_text() == "weights"
    finally:
        os.kill(out["pid"], signal.SIGTERM)


def test_relative_uri_is_pinned_on_first_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLIGHTLOG_TRACKING_URI", "store")
    first = context.get_tracking_uri()
    assert first == str(Path("store").resolve())
    other = tmp_path / "elsewhere"
    other.mkdir()
    monkeypatch.chdir(other)
    assert context.get_tracking_uri() == first
    # set_tracking_uri pins against the directory it is called in.
    context.set_tracking_uri("sqlite:///x/runs.db")
    assert context.get_tracking_uri() == f"sqlite:///{other.resolve() / 'x' / 'runs.db'}"


def test_absolute_uri() -> None:
    assert absolute_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert absolute_uri("/srv/store") == "/srv/store"
    assert absolute_uri("sqlite:////srv/x.db") == "sqlite:////srv/x.db"
    assert absolute_uri("file:///srv/store") == "file:///srv/store"
    assert absolute_uri("rel") == str(Path("rel").resolve())
    assert absolute_uri("file:rel") == str(Path("rel").resolve())
    assert absolute_uri("sqlite:///rel.db") == f"sqlite:///{Path('rel.db').resolve()}"
    with pytest.raises(MlflowException, match="Unsupported tracking URI"):
        absolute_uri("s3://bucket/x")
    with pytest.raises(ValueError, match="names no database file"):
        absolute_uri("sqlite://")


def test_registry_uri_is_refused_not_ignored() -> None:
    with pytest.raises(MlflowException, match="no model registry") as e:
        MlflowClient(registry_uri="sqlite:///registry.db")
    assert e.value.error_code == "INVALID_PARAMETER_VALUE"
    MlflowClient(registry_uri=None)  # the default stays accepted

"""The rest of MLflow's tracking API, through flightlog and the official ``mlflow`` client
against one collector: each side reads what the other wrote.

Experiment tags, restore, parent runs, dataset inputs (flightlog.data), tables and image
histories. One collector process serves the module; each test makes its own experiment.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mlflow_server import ServerProcess, quiet_mlflow, start_flightlog_collector

quiet_mlflow()

import mlflow  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from mlflow import MlflowClient as OfficialClient  # noqa: E402

import flightlog  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    s = start_flightlog_collector(tmp_path_factory.mktemp("dropin"))
    yield s
    s.stop()


@pytest.fixture
def both(server: ServerProcess) -> Iterator[OfficialClient]:
    """flightlog and the official client (fluent API included) on the same collector, in a
    fresh experiment that both have set."""
    flightlog.set_tracking_uri(server.url)
    mlflow.set_tracking_uri(server.url)
    name = f"exp-{uuid.uuid4().hex[:8]}"
    exp = flightlog.set_experiment(name)
    mlflow.set_experiment(experiment_id=exp.experiment_id)
    yield OfficialClient(server.url)
    while mlflow.active_run() is not None:
        mlflow.end_run()


def test_experiment_tags_set_and_delete(both: OfficialClient) -> None:
    exp_id = mlflow.tracking.fluent._get_experiment_id()
    flightlog.set_experiment_tag("team", "vision")
    flightlog.set_experiment_tags({"owner": "ada", "stage": "dev"})
    flightlog.delete_experiment_tag("stage")
    assert both.get_experiment(exp_id).tags == {"team": "vision", "owner": "ada"}
    # And the other way round.
    mlflow.set_experiment_tags({"by": "mlflow"})
    mlflow.delete_experiment_tag("team")
    assert flightlog.get_experiment(exp_id).tags == {"owner": "ada", "by": "mlflow"}
    client = flightlog.MlflowClient()
    client.set_experiment_tags(exp_id, {"x": 1})
    assert both.get_experiment(exp_id).tags["x"] == "1"


def test_restore_experiment_and_run(both: OfficialClient) -> None:
    client = flightlog.MlflowClient()
    exp_id = client.create_experiment(f"gone-{uuid.uuid4().hex[:8]}")
    run = client.create_run(exp_id)
    client.set_terminated(run.info.run_id)
    both.delete_run(run.info.run_id)
    client.restore_run(run.info.run_id)
    assert both.get_run(run.info.run_id).info.lifecycle_stage == "active"
    both.delete_experiment(exp_id)
    assert client.get_experiment(exp_id).lifecycle_stage == "deleted"
    client.restore_experiment(exp_id)
    assert both.get_experiment(exp_id).lifecycle_stage == "active"
    # The fluent forms (MLflow 3.x has them too).
    both.delete_run(run.info.run_id)
    flightlog.restore_run(run.info.run_id)
    assert both.get_run(run.info.run_id).info.lifecycle_stage == "active"
    both.delete_experiment(exp_id)
    flightlog.restore_experiment(exp_id)
    assert both.get_experiment(exp_id).lifecycle_stage == "active"
    assert flightlog.is_tracking_uri_set()


def test_get_parent_run(both: OfficialClient) -> None:
    with flightlog.start_run() as parent:
        with flightlog.start_run(nested=True) as child:
            pass
    got = flightlog.get_parent_run(child.info.run_id)
    assert got is not None and got.info.run_id == parent.info.run_id
    assert flightlog.get_parent_run(parent.info.run_id) is None
    assert flightlog.MlflowClient().get_parent_run(child.info.run_id).info.run_id == (  # type: ignore[union-attr]
        parent.info.run_id
    )
    official = mlflow.get_parent_run(child.info.run_id)
    assert official is not None and official.info.run_id == parent.info.run_id


def test_log_input_pandas_and_numpy_datasets(both: OfficialClient) -> None:
    df = pd.DataFrame({"x": [1.0, 2.0, 3.0], "label": [0, 1, 0], "name": ["a", "b", "c"]})
    ds = flightlog.data.from_pandas(df, source="/data/train.csv", targets="label", name="train")
    assert ds.name == "train" and len(ds.digest) == 8
    assert ds.digest == flightlog.data.from_pandas(df.copy(), name="again").digest
    assert ds.digest != flightlog.data.from_pandas(df.head(2)).digest
    assert ds.profile == {"num_rows": 3, "num_elements": 9}
    assert [c["name"] for c in ds.schema["mlflow_colspec"]] == ["x", "label", "name"]  # type: ignore[index]
    arr = flightlog.data.from_numpy(np.zeros((4, 2)), targets=np.ones(4), name="arr")
    assert arr.profile["features_shape"] == [4, 2]  # type: ignore[index]
    with flightlog.start_run() as run:
        flightlog.log_input(ds, context="training", tags={"split": "a"})
        flightlog.log_inputs([arr], contexts=["eval"])
    seen = both.get_run(run.info.run_id).inputs.dataset_inputs
    by_name = {d.dataset.name: d for d in seen}
    assert set(by_name) == {"train", "arr"}
    train = by_name["train"]
    assert train.dataset.digest == ds.digest
    assert train.dataset.source_type == "local"
    assert json.loads(train.dataset.source) == {"uri": "/data/train.csv"}
    assert json.loads(train.dataset.profile) == {"num_rows": 3, "num_elements": 9}
    assert json.loads(train.dataset.schema)["mlflow_colspec"][0]["type"] == "double"
    assert {t.key: t.value for t in train.tags} == {"split": "a", "mlflow.data.context": "training"}
    assert {t.key: t.value for t in by_name["arr"].tags} == {"mlflow.data.context": "eval"}
    # flightlog reads them back too, and sees what the official client logs.
    with mlflow.start_run() as other:
        mlflow.log_input(mlflow.data.from_pandas(df, name="theirs"), context="training")
    mine = flightlog.get_run(run.info.run_id).inputs.dataset_inputs
    assert {d.dataset.name for d in mine} == {"train", "arr"}
    theirs = flightlog.get_run(other.info.run_id).inputs.dataset_inputs
    assert theirs[0].dataset.name == "theirs"
    assert {t.key for t in theirs[0].tags} == {"mlflow.data.context"}
    with pytest.raises(flightlog.MlflowException, match=r"flightlog\.data"):
        with flightlog.start_run():
            flightlog.log_input(df)  # type: ignore[arg-type]


def test_log_table_and_load_table_both_ways(both: OfficialClient) -> None:
    ids = []
    for i in range(2):
        with flightlog.start_run() as run:
            flightlog.log_table({"q": [f"q{i}"], "score": [i * 0.5]}, "eval/table.json")
        ids.append(run.info.run_id)
    mine = flightlog.load_table("eval/table.json", extra_columns=["run_id"])
    assert sorted(mine["q"]) == ["q0", "q1"]
    assert set(mine["run_id"]) == set(ids)
    # The official client finds flightlog's tables (the tag and the JSON are MLflow's).
    theirs = mlflow.load_table("eval/table.json", run_ids=ids, extra_columns=["run_id"])
    assert sorted(theirs["q"]) == ["q0", "q1"]
    # And flightlog reads a table the official client logged.
    with mlflow.start_run() as other:
        mlflow.log_table(pd.DataFrame({"q": ["m"], "score": [9.0]}), "eval/table.json")
    got = flightlog.load_table("eval/table.json", run_ids=[other.info.run_id])
    assert list(got["q"]) == ["m"] and list(got["score"]) == [9.0]
    with pytest.raises(flightlog.MlflowException, match="No runs found"):
        flightlog.load_table("eval/none.json")
    with pytest.raises(flightlog.MlflowException, match=r"\.json"):
        with flightlog.start_run():
            flightlog.log_table({"a": [1]}, "table.csv")


def test_image_histories_both_ways(both: OfficialClient, tmp_path: Path) -> None:
    img = np.zeros((64, 48, 3), dtype=np.uint8)
    with flightlog.start_run() as run:
        for step in range(3):
            img[:, :, 0] = step * 40
            flightlog.log_image(img, key="val/sample", step=step)
        flightlog.flush_artifact_async_logging()
        flightlog.log_image(img, "plain.png")
    files = [f.path for f in both.list_artifacts(run.info.run_id, "images")]
    assert len(files) == 6
    full = sorted(f for f in files if f.endswith(".png"))
    assert [f.split("+")[2] for f in full] == ["0", "1", "2"]
    assert all(f.startswith("images/val~sample+step+") for f in files)
    assert sum(f.endswith("+compressed.webp") for f in files) == 3
    assert both.get_run(run.info.run_id).data.tags["mlflow.loggedImages"] == "true"
    local = both.download_artifacts(run.info.run_id, full[2], str(tmp_path))
    from PIL import Image

    assert Image.open(local).getpixel((0, 0))[0] == 80
    # The official client's image history reads the same way through flightlog.
    with mlflow.start_run() as other:
        mlflow.log_image(img, key="k", step=7, synchronous=True)
    names = [f.path for f in flightlog.MlflowClient().list_artifacts(other.info.run_id, "images")]
    assert any(n.startswith("images/k+step+7+") and n.endswith(".png") for n in names)
    with pytest.raises(flightlog.MlflowException, match="either artifact_file, or key"):
        flightlog.MlflowClient().log_image(run.info.run_id, img)


def test_download_artifacts_by_uri_from_either_side(both: OfficialClient, tmp_path: Path) -> None:
    with mlflow.start_run() as run:
        mlflow.log_text("from mlflow", "t/x.txt")
    uri = both.get_run(run.info.run_id).info.artifact_uri + "/t/x.txt"
    assert flightlog.artifacts.load_text(uri) == "from mlflow"
    assert mlflow.artifacts.load_text(uri) == "from mlflow"

"""MLflow's UI routes and its whole-tree artifact proxy on a live collector (issue 17).

Driven by the official ``mlflow`` client where it has a call for the route, else by raw
HTTP as MLflow's UI sends it; answers and error texts are MLflow's (the differential test
compares them with a real ``mlflow server``).
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mlflow_server import ServerProcess, quiet_mlflow, start_flightlog_collector

quiet_mlflow()

import mlflow  # noqa: E402
import requests  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import Dataset, DatasetInput, InputTag  # noqa: E402

from tests.test_rest_api import db_of, new_experiment  # noqa: E402

PROXY = "/api/2.0/mlflow-artifacts/artifacts"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    s = start_flightlog_collector(tmp_path_factory.mktemp("compat"))
    yield s
    s.stop()


@pytest.fixture
def client(server: ServerProcess) -> Iterator[MlflowClient]:
    mlflow.set_tracking_uri(server.url)
    yield MlflowClient(server.url)
    while mlflow.active_run() is not None:
        mlflow.end_run()


def artifact_root(server: ServerProcess) -> Path:
    return db_of(server).parent / "artifacts"


def _dataset(name: str, digest: str) -> Dataset:
    return Dataset(name=name, digest=digest, source_type="local", source="/data/x.csv")


# -- search-datasets ------------------------------------------------------------------------


def test_search_datasets(server: ServerProcess, client: MlflowClient) -> None:
    e1, e2 = new_experiment(client), new_experiment(client)
    r1, r2, r3 = (client.create_run(e).info.run_id for e in (e1, e1, e2))
    train = InputTag("mlflow.data.context", "training")
    client.log_inputs(r1, [DatasetInput(_dataset("iris", "d1"), [train])])
    # The same dataset and context from another run of the experiment: one summary.
    client.log_inputs(r2, [DatasetInput(_dataset("iris", "d1"), [train])])
    client.log_inputs(r2, [DatasetInput(_dataset("wine", "d2"), [])])  # no context
    client.log_inputs(r3, [DatasetInput(_dataset("iris", "d1"), [InputTag("k", "v")])])
    url = f"{server.url}/ajax-api/2.0/mlflow/experiments/search-datasets"
    r = requests.post(url, json={"experiment_ids": [e1, e2]}, timeout=30)
    assert r.status_code == 200, r.text
    got = sorted(
        (s["experiment_id"], s["name"], s["digest"], s.get("context"))
        for s in r.json()["dataset_summaries"]
    )
    assert got == [
        (e1, "iris", "d1", "training"),
        (e1, "wine", "d2", None),
        (e2, "iris", "d1", None),
    ]
    # An experiment without datasets (or none that exists): an empty answer, as MLflow.
    r = requests.post(url, json={"experiment_ids": [new_experiment(client), "987654"]}, timeout=30)
    assert (r.status_code, r.json()) == (200, {})


@pytest.mark.parametrize(
    ("body", "headers", "message"),
    [
        ({}, None, "SearchDatasets request must specify at least one experiment_id."),
        (
            {"experiment_ids": [str(i) for i in range(21)]},
            None,
            "SearchDatasets request cannot specify more than 20 experiment_ids. "
            "Received 21 experiment_ids.",
        ),
        (
            b'{"experiment_ids": ["0"]}',
            {"Content-Type": "text/plain"},
            "Bad Request. Content-Type must be one of ['application/json'].",
        ),
    ],
)
def test_search_datasets_refusals(
    server: ServerProcess, body: object, headers: dict[str, str] | None, message: str
) -> None:
    url = f"{server.url}/ajax-api/2.0/mlflow/experiments/search-datasets"
    if isinstance(body, bytes):
        r = requests.post(url, data=body, headers=headers, timeout=30)
    else:
        r = requests.post(url, json=body, timeout=30)
    assert r.status_code == 400
    assert r.json() == {"error_code": "INVALID_PARAMETER_VALUE", "message": message}


# -- upload-artifact ------------------------------------------------------------------------


def test_upload_artifact(server: ServerProcess, client: MlflowClient) -> None:
    eid = new_experiment(client)
    run_id = client.create_run(eid).info.run_id
    url = f"{server.url}/ajax-api/2.0/mlflow/upload-artifact"
    r = requests.post(
        url, params={"run_uuid": run_id, "path": "ui/notes.txt"}, data=b"hi", timeout=30
    )
    # MLflow answers an empty JSON-typed body.
    assert (r.status_code, r.content) == (200, b"")
    assert r.headers["Content-Type"].startswith("application/json")
    assert [f.path for f in client.list_artifacts(run_id, "ui")] == ["ui/notes.txt"]
    with tempfile.TemporaryDirectory() as d:
        assert Path(client.download_artifacts(run_id, "ui/notes.txt", d)).read_bytes() == b"hi"
    refusals = [
        ({"path": "a.txt"}, b"x", "Request must specify run_uuid."),
        ({"run_uuid": run_id}, b"x", "Request must specify path."),
        ({"run_uuid": run_id, "path": "a.txt"}, b"", "Request must specify data."),
        (
            {"run_uuid": run_id, "path": "big.bin"},
            b"\0" * (10 * 1024 * 1024 + 1),
            "Artifact size is too large. Max size is 10MB.",
        ),
    ]
    for params, data, message in refusals:
        r = requests.post(url, params=params, data=data, timeout=60)
        assert r.status_code == 400
        assert r.json() == {"error_code": "INVALID_PARAMETER_VALUE", "message": message}
    r = requests.post(url, params={"run_uuid": run_id, "path": "../x.txt"}, data=b"x", timeout=30)
    assert r.status_code == 400 and r.json()["message"].startswith("Invalid path")
    r = requests.post(
        url, params={"run_uuid": uuid.uuid4().hex, "path": "x"}, data=b"x", timeout=30
    )
    assert r.status_code == 404 and r.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    assert not (artifact_root(server) / eid / run_id / "artifacts" / "big.bin").exists()
    assert not list(artifact_root(server).parent.rglob("x.txt"))

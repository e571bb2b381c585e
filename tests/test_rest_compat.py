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

from tests.test_rest_api import artifact_dir, new_experiment, raw  # noqa: E402

PROXY = "/api/2.0/mlflow-artifacts/artifacts"
# MLflow 3's classification of INVALID_PARAMETER_VALUE in its error bodies.
CLASSIFIED = {"sqlstate": "KAM00", "error_class": "INVALID_PARAMETER_VALUE"}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """A collector on SQLite, then one on a database of the session's PostgreSQL."""
    store = None
    if request.param == "postgresql":
        store = request.getfixturevalue("pg_server").create_database()
    s = start_flightlog_collector(tmp_path_factory.mktemp("compat"), store=store)
    yield s
    s.stop()


@pytest.fixture
def client(server: ServerProcess) -> Iterator[MlflowClient]:
    mlflow.set_tracking_uri(server.url)
    yield MlflowClient(server.url)
    while mlflow.active_run() is not None:
        mlflow.end_run()


def artifact_root(server: ServerProcess) -> Path:
    return artifact_dir(server)


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
    assert r.json() == {"error_code": "INVALID_PARAMETER_VALUE", "message": message, **CLASSIFIED}


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
        assert r.json() == {
            "error_code": "INVALID_PARAMETER_VALUE",
            "message": message,
            **CLASSIFIED,
        }
    r = requests.post(url, params={"run_uuid": run_id, "path": "../x.txt"}, data=b"x", timeout=30)
    assert r.status_code == 400 and r.json()["message"].startswith("Invalid path")
    r = requests.post(
        url, params={"run_uuid": uuid.uuid4().hex, "path": "x"}, data=b"x", timeout=30
    )
    assert r.status_code == 404 and r.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    assert not (artifact_root(server) / eid / run_id / "artifacts" / "big.bin").exists()
    assert not list(artifact_root(server).parent.rglob("x.txt"))


# -- the whole-tree artifact proxy ----------------------------------------------------------


def test_proxy_serves_any_path_under_the_artifact_root(server: ServerProcess) -> None:
    base = f"{server.url}{PROXY}"
    top = f"loose-{uuid.uuid4().hex[:8]}"
    for rel, data in ((f"{top}/a.txt", b"alpha"), (f"{top}/some/dir/b.json", b"{}")):
        r = requests.put(f"{base}/{rel}", data=data, timeout=30)
        assert (r.status_code, r.content) == (200, b""), r.text
        assert (artifact_root(server) / rel).read_bytes() == data
        assert requests.get(f"{base}/{rel}", timeout=30).content == data
    r = requests.get(base, params={"path": top}, timeout=30)
    assert sorted((f["path"], f["is_dir"]) for f in r.json()["files"]) == [
        ("a.txt", False),
        ("some", True),
    ]
    r = requests.get(base, params={"path": f"{top}/some/dir"}, timeout=30)
    assert r.json() == {"files": [{"path": "b.json", "is_dir": False, "file_size": 2}]}
    assert top in [f["path"] for f in requests.get(base, timeout=30).json()["files"]]
    assert requests.delete(f"{base}/{top}/some", timeout=30).status_code == 200
    assert not (artifact_root(server) / top / "some").exists()
    r = requests.get(f"{base}/{top}/some/dir/b.json", timeout=30)
    assert r.status_code == 404 and r.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    # A directory is not a file to download; the store's root is not deleted whole.
    r = requests.get(f"{base}/{top}", timeout=30)
    assert r.status_code == 400 and r.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    got, body = raw(server, "DELETE", f"{PROXY}/%2e")
    assert got == 400 and body["message"].startswith("Invalid path"), body
    assert (artifact_root(server) / top / "a.txt").exists()


def test_run_less_artifacts_through_mlflows_repository(
    server: ServerProcess, client: MlflowClient, tmp_path: Path
) -> None:
    """MLflow's own mlflow-artifacts repository, for a prefix that belongs to no run."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    prefix = f"shared-{uuid.uuid4().hex[:8]}"
    repo = get_artifact_repository(f"mlflow-artifacts:/{prefix}")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "table.csv").write_text("a,b\n1,2\n")
    (tmp_path / "src" / "deep").mkdir()
    (tmp_path / "src" / "deep" / "w.bin").write_bytes(b"\1" * 1000)
    repo.log_artifacts(str(tmp_path / "src"), "data")
    assert (artifact_root(server) / prefix / "data" / "table.csv").read_text() == "a,b\n1,2\n"
    assert sorted(f.path for f in repo.list_artifacts("data")) == ["data/deep", "data/table.csv"]
    (tmp_path / "out").mkdir()
    out = Path(repo.download_artifacts("data", str(tmp_path / "out")))
    assert (out / "deep" / "w.bin").read_bytes() == b"\1" * 1000
    repo.delete_artifacts("data/deep")
    assert [f.path for f in repo.list_artifacts("data")] == ["data/table.csv"]


def test_experiment_with_an_mlflow_artifacts_location(
    server: ServerProcess, client: MlflowClient, tmp_path: Path
) -> None:
    prefix = f"team-{uuid.uuid4().hex[:8]}"
    eid = new_experiment(client, artifact_location=f"mlflow-artifacts:/{prefix}")
    assert client.get_experiment(eid).artifact_location == f"mlflow-artifacts:/{prefix}"
    mlflow.set_experiment(experiment_id=eid)
    (tmp_path / "model.txt").write_text("weights")
    with mlflow.start_run() as run:
        mlflow.log_artifact(str(tmp_path / "model.txt"), "m")
    run_id = run.info.run_id
    # Reported as MLflow's proxying server reports it.
    assert (
        client.get_run(run_id).info.artifact_uri == f"mlflow-artifacts:/{prefix}/{run_id}/artifacts"
    )
    # Stored under <artifact root>/<prefix>/<run_id>/artifacts, readable by either path.
    real = artifact_root(server) / prefix / run_id / "artifacts" / "m" / "model.txt"
    assert real.read_text() == "weights"
    got = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="m/model.txt")
    assert Path(got).read_text() == "weights"
    r = requests.get(f"{server.url}{PROXY}/{prefix}/{run_id}/artifacts/m/model.txt", timeout=30)
    assert r.content == b"weights"
    # Another server's proxy (a host in the URI) or a path out of the root: refused.
    for location in ("mlflow-artifacts://elsewhere:5000/x", "mlflow-artifacts:/../../etc"):
        with pytest.raises(mlflow.exceptions.MlflowException) as e:
            new_experiment(client, artifact_location=location)
        assert e.value.error_code == "INVALID_PARAMETER_VALUE"


@pytest.mark.parametrize(
    "path",
    [
        "../escape.txt",
        "a/../escape.txt",  # MLflow refuses any "..", even one that stays inside
        "a/..%2f..%2fescape.txt",
        "%2e%2e/escape.txt",
        "%2Ftmp%2Fescape.txt",
        "a\\..\\..\\escape.txt",
    ],
)
def test_proxy_tree_refuses_traversal(server: ServerProcess, path: str) -> None:
    for method in ("PUT", "GET", "DELETE"):
        got, body = raw(server, method, f"{PROXY}/{path}", b"x" if method == "PUT" else b"")
        assert got == 400 and body["error_code"] == "INVALID_PARAMETER_VALUE", (method, body)
        assert body["message"].startswith("Invalid path"), body
    r = requests.get(f"{server.url}{PROXY}", params={"path": "a/../.."}, timeout=30)
    assert r.status_code == 400 and r.json()["message"].startswith("Invalid path")
    assert not list(Path("/tmp").glob("escape.txt"))
    assert not list(artifact_root(server).parent.parent.rglob("escape.txt"))


def test_proxy_tree_symlink_out_of_the_root(server: ServerProcess, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    link = artifact_root(server) / f"link-{uuid.uuid4().hex[:8]}"
    link.symlink_to(outside, target_is_directory=True)
    r = requests.get(f"{server.url}{PROXY}/{link.name}/secret.txt", timeout=30)
    assert r.status_code in (400, 404) and r.content != b"secret"
    r = requests.put(f"{server.url}{PROXY}/{link.name}/new.txt", data=b"x", timeout=30)
    assert r.status_code in (400, 404)
    assert not (outside / "new.txt").exists()


@pytest.mark.parametrize(
    ("name", "ctype"),
    [
        ("notes.txt", "text/plain"),
        ("config.yaml", "text/plain"),
        ("MLmodel", "text/plain"),
        ("plot.png", "image/png"),
        ("report.pdf", "application/pdf"),
        ("weights", "application/octet-stream"),
    ],
)
def test_proxy_tree_content_types(server: ServerProcess, name: str, ctype: str) -> None:
    url = f"{server.url}{PROXY}/types-{uuid.uuid4().hex[:8]}/{name}"
    assert requests.put(url, data=b"data", timeout=30).status_code == 200
    r = requests.get(url, timeout=30)
    assert r.headers["Content-Type"].split(";")[0] == ctype
    assert r.headers["Content-Disposition"] == f"attachment; filename={name}"
    assert r.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize("name", ["page.txt", "page.html", "image.svg"])
def test_download_type_is_never_the_clients(server: ServerProcess, name: str) -> None:
    """An artifact uploaded as text/html and asked for as text/html is still served by
    its extension's type, as an attachment, never sniffed: it cannot run as a page."""
    url = f"{server.url}{PROXY}/xss-{uuid.uuid4().hex[:8]}/{name}"
    page = b"<html><script>alert(1)</script></html>"
    r = requests.put(url, data=page, headers={"Content-Type": "text/html"}, timeout=30)
    assert r.status_code == 200
    r = requests.get(
        url, params={"content_type": "text/html"}, headers={"Accept": "text/html"}, timeout=30
    )
    assert r.content == page
    assert r.headers["Content-Disposition"].startswith("attachment")
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    if name.endswith(".txt"):
        assert r.headers["Content-Type"].split(";")[0] == "text/plain"

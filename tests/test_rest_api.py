"""MLflow's REST API on a live collector, driven by the official ``mlflow`` client.

One collector process serves the module for each store kind (SQLite, and a database of
the session's PostgreSQL cluster from tests/pgserver.py); each test makes its own
experiment, so tests do not see each other's runs.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.mlflow_server import ServerProcess, quiet_mlflow, start_flightlog_collector

quiet_mlflow()

import mlflow  # noqa: E402
import requests  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag, ViewType  # noqa: E402
from mlflow.exceptions import MlflowException as MlflowClientError  # noqa: E402

import flightlog  # noqa: E402
from tests.helpers import run_script, stored_points  # noqa: E402


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    store = None
    if request.param == "postgresql":
        store = request.getfixturevalue("pg_server").create_database()
    s = start_flightlog_collector(tmp_path_factory.mktemp("rest"), store=store)
    yield s
    s.stop()


@pytest.fixture
def client(server: ServerProcess) -> Iterator[MlflowClient]:
    """The official client, fluent API included, pointed at the collector."""
    mlflow.set_tracking_uri(server.url)
    yield MlflowClient(server.url)
    while mlflow.active_run() is not None:
        mlflow.end_run()


def db_of(server: ServerProcess) -> Path:
    return server.log.parent / "store" / "flightlog.db"


def artifact_dir(server: ServerProcess) -> Path:
    """Where the collector keeps artifacts: beside its SQLite file, or (on PostgreSQL)
    ./mlartifacts of the directory it runs in, MLflow's default."""
    if server.store:
        return server.log.parent / "mlartifacts"
    return db_of(server).parent / "artifacts"


def points_in_store(server: ServerProcess, run_id: str, key: str) -> int:
    """Points of a series, read from the store itself (the SQLite file or the database)."""
    if not server.store:
        return stored_points(db_of(server), run_id, key)
    import psycopg

    with psycopg.connect(server.store) as conn:
        row = conn.execute(
            "SELECT COALESCE(SUM(n), 0) FROM metric_chunks WHERE run_uuid = %s AND key = %s",
            (run_id, key),
        ).fetchone()
    return int(row[0]) if row else 0


def new_experiment(client: MlflowClient, **kwargs: Any) -> str:
    return client.create_experiment(f"exp-{uuid.uuid4().hex[:8]}", **kwargs)


def raw(server: ServerProcess, method: str, path: str, body: bytes = b"") -> tuple[int, Any]:
    """Send ``path`` exactly as written (HTTP clients would remove its ``..`` segments)."""
    host, port = server.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request(method, path, body=body)
        response = conn.getresponse()
        data = response.read()
        return response.status, json.loads(data) if data.startswith(b"{") else data
    finally:
        conn.close()


def api(server: ServerProcess, method: str, path: str, **kwargs: Any) -> requests.Response:
    return requests.request(method, f"{server.url}/api/2.0/mlflow/{path}", timeout=30, **kwargs)


def test_experiments_create_get_update_tags_delete_restore(client: MlflowClient) -> None:
    name = f"exp-{uuid.uuid4().hex[:8]}"
    eid = client.create_experiment(name, tags={"project": "churn"})
    exp = client.get_experiment(eid)
    assert (exp.name, exp.lifecycle_stage, exp.tags) == (name, "active", {"project": "churn"})
    # The default location is proxied: the client uploads through the collector.
    assert exp.artifact_location == f"mlflow-artifacts:/{eid}"
    assert exp.creation_time and exp.last_update_time
    assert client.get_experiment_by_name(name).experiment_id == eid
    assert client.get_experiment_by_name("no-such-experiment") is None

    with pytest.raises(MlflowClientError) as e:
        client.create_experiment(name)
    assert e.value.error_code == "RESOURCE_ALREADY_EXISTS"
    with pytest.raises(MlflowClientError) as e:
        client.get_experiment("987654")
    assert e.value.error_code == "RESOURCE_DOES_NOT_EXIST"

    client.rename_experiment(eid, name + "-renamed")
    client.set_experiment_tag(eid, "stage", "dev")
    client.delete_experiment_tag(eid, "project")
    exp = client.get_experiment(eid)
    assert exp.name == name + "-renamed" and exp.tags == {"stage": "dev"}
    with pytest.raises(MlflowClientError) as e:
        client.delete_experiment_tag(eid, "project")
    assert e.value.error_code == "RESOURCE_DOES_NOT_EXIST"

    run = client.create_run(eid, run_name="r")
    client.delete_experiment(eid)
    assert client.get_experiment(eid).lifecycle_stage == "deleted"
    assert client.get_run(run.info.run_id).info.lifecycle_stage == "deleted"
    names = {e.name for e in client.search_experiments(view_type=ViewType.DELETED_ONLY)}
    assert name + "-renamed" in names
    assert name + "-renamed" not in {e.name for e in client.search_experiments()}
    with pytest.raises(MlflowClientError) as e:
        client.create_run(eid)
    assert e.value.error_code == "INVALID_PARAMETER_VALUE"
    client.restore_experiment(eid)
    assert client.get_experiment(eid).lifecycle_stage == "active"
    assert client.get_run(run.info.run_id).info.lifecycle_stage == "active"

    found = client.search_experiments(
        filter_string=f"name LIKE '{name}%' AND tags.stage = 'dev'", order_by=["name DESC"]
    )
    assert [e.experiment_id for e in found] == [eid]


def test_runs_params_metrics_tags_nested(client: MlflowClient) -> None:
    eid = new_experiment(client)
    mlflow.set_experiment(experiment_id=eid)
    with mlflow.start_run(run_name="parent") as parent:
        mlflow.log_params({"lr": 0.01, "batch_size": 32})
        for step in range(5):
            mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
        mlflow.log_metrics({"acc": 0.9, "bad": float("nan")})
        mlflow.set_tags({"team": "ml", "temp": "x"})
        mlflow.delete_tag("temp")
        with mlflow.start_run(run_name="child", nested=True) as child:
            mlflow.log_metric("child_metric", 7.0, step=3)
    run = client.get_run(parent.info.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "parent"
    assert run.info.end_time >= run.info.start_time > 0
    assert run.info.artifact_uri == f"mlflow-artifacts:/{eid}/{parent.info.run_id}/artifacts"
    assert len(parent.info.run_id) == 32 and int(parent.info.run_id, 16) >= 0
    assert run.data.params == {"lr": "0.01", "batch_size": "32"}
    assert run.data.metrics["loss"] == 0.2 and run.data.metrics["acc"] == 0.9
    assert math.isnan(run.data.metrics["bad"])
    assert run.data.tags["team"] == "ml" and "temp" not in run.data.tags
    assert run.data.tags["mlflow.runName"] == "parent"
    kid = client.get_run(child.info.run_id)
    assert kid.data.tags["mlflow.parentRunId"] == parent.info.run_id
    history = client.get_metric_history(parent.info.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(s, 1.0 / (s + 1)) for s in range(5)]

    # A param's value cannot change; the same value again is fine.
    client.log_param(parent.info.run_id, "lr", "0.01")
    with pytest.raises(MlflowClientError) as e:
        client.log_param(parent.info.run_id, "lr", "0.02")
    assert e.value.error_code == "INVALID_PARAMETER_VALUE"
    assert "Changing param values is not allowed" in e.value.message

    # update: name and status.
    client.update_run(parent.info.run_id, status="KILLED", name="renamed")
    info = client.get_run(parent.info.run_id).info
    assert (info.status, info.run_name) == ("KILLED", "renamed")


def test_log_batch_limits_and_atomicity(client: MlflowClient, server: ServerProcess) -> None:
    eid = new_experiment(client)
    run_id = client.create_run(eid, run_name="batch").info.run_id
    metrics = [Metric("m", float(i), 1_700_000_000_000 + i, i) for i in range(1000)]
    client.log_batch(run_id, metrics=metrics, params=[Param("p", "1")], tags=[RunTag("t", "v")])
    history = client.get_metric_history(run_id, "m")
    assert [m.step for m in history] == list(range(1000))
    assert history[10].timestamp == 1_700_000_000_010
    # MLflow's limits, answered with MLflow's error body and status.
    too_many = {"run_id": run_id, "params": [{"key": f"k{i}", "value": "v"} for i in range(101)]}
    r = api(server, "POST", "runs/log-batch", json=too_many)
    assert r.status_code == 400
    assert r.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert "at most 100 params" in r.json()["message"]
    big = {"run_id": run_id, "tags": [{"key": "t", "value": "x" * 1_000_001}]}
    r = api(server, "POST", "runs/log-batch", json=big)
    assert r.status_code == 400 and "at most 1000000 bytes" in r.json()["message"]
    # One request is one transaction: a failing param leaves the batch's metrics out.
    r = api(
        server,
        "POST",
        "runs/log-batch",
        json={
            "run_id": run_id,
            "metrics": [{"key": "late", "value": 1, "timestamp": 1, "step": 0}],
            "params": [{"key": "p", "value": "changed"}],
        },
    )
    assert r.status_code == 400
    assert client.get_metric_history(run_id, "late") == []
    assert client.get_run(run_id).data.params == {"p": "1"}


def test_writes_are_durable_before_the_answer(client: MlflowClient, server: ServerProcess) -> None:
    eid = new_experiment(client)
    run_id = client.create_run(eid).info.run_id
    client.log_metric(run_id, "x", 1.5, step=3)
    # Read from the store itself, right after the call returned: no flush exists.
    assert points_in_store(server, run_id, "x") == 1


def test_search_runs_filters_order_and_pages(client: MlflowClient) -> None:
    eid = new_experiment(client)
    for i in range(7):
        with mlflow.start_run(experiment_id=eid, run_name=f"run-{i}"):
            mlflow.log_metric("acc", i / 10)
            mlflow.log_param("model", "rf" if i % 2 else "xgb")
            mlflow.set_tag("team", "ml" if i < 4 else "ds")
    runs = client.search_runs(
        [eid], "metrics.acc >= 0.2 AND params.model = 'xgb'", order_by=["metrics.acc DESC"]
    )
    assert [r.info.run_name for r in runs] == ["run-6", "run-4", "run-2"]
    runs = client.search_runs([eid], "tags.team = 'ds'", order_by=["attributes.run_name ASC"])
    assert [r.info.run_name for r in runs] == ["run-4", "run-5", "run-6"]
    # flightlog's filter language also has OR (MLflow's server refuses it).
    runs = client.search_runs([eid], "metrics.acc < 0.1 OR tags.team = 'ds'")
    assert {r.info.run_name for r in runs} == {"run-0", "run-4", "run-5", "run-6"}
    # Pages: max_results and the token, no run twice, none missing.
    seen = []
    page = client.search_runs([eid], order_by=["metrics.acc ASC"], max_results=3)
    seen += page
    sizes = [len(page)]
    while page.token:
        page = client.search_runs(
            [eid], order_by=["metrics.acc ASC"], max_results=3, page_token=page.token
        )
        seen += page
        sizes.append(len(page))
    assert sizes == [3, 3, 1]  # one page of 7 if max_results were ignored
    assert [r.info.run_name for r in seen] == [f"run-{i}" for i in range(7)]
    frame = mlflow.search_runs([eid], filter_string="params.model = 'rf'")
    assert sorted(frame["tags.mlflow.runName"]) == ["run-1", "run-3", "run-5"]
    assert set(frame["metrics.acc"]) == {0.1, 0.3, 0.5}
    with pytest.raises(MlflowClientError) as e:
        client.search_runs([eid], "metrics.acc >")
    assert e.value.error_code == "INVALID_PARAMETER_VALUE"


def test_search_and_get_answer_exact_values(client: MlflowClient, server: ServerProcess) -> None:
    """search_runs and get_run write the page's JSON without Python objects per metric,
    param or tag: doubles must read back bit for bit (SQLite's JSON keeps 15 digits),
    NaN and the infinities as protobuf's strings, odd keys and values escaped."""
    eid = new_experiment(client)
    doubles = {
        "third": 1 / 3,
        "sum": 0.1 + 0.2,
        "tiny": 5e-324,
        "huge": 1.7976931348623157e308,
        "neg": -2.5e-17,
        "int": 3.0,
        "zero": 0.0,
        "nan": math.nan,
        "inf": math.inf,
        "ninf": -math.inf,
    }
    odd = 'q"uote\\back\nline\ttab\x01ctl \u00e9\u2028\U0001f600'
    key = "odd key:/x-1.y_z"
    run = client.create_run(eid, run_name="exact")
    rid = run.info.run_id
    client.log_batch(
        rid,
        metrics=[Metric(k, v, 1_700_000_000_123, i * 7) for i, (k, v) in enumerate(doubles.items())]
        + [Metric(key, 1.5, 1, 2**40)],
        params=[Param("p", odd), Param(key, "v")],
        tags=[RunTag("t", odd), RunTag(key, "")],
    )
    client.create_run(eid, run_name="bare")  # a run with no metrics or params between
    for found in (
        client.search_runs([eid], "attributes.run_name = 'exact'")[0],
        client.get_run(rid),
    ):
        metrics = found.data.metrics
        for k, v in doubles.items():
            if math.isnan(v):
                assert math.isnan(metrics[k])
            else:
                assert metrics[k] == v, k
        assert metrics[key] == 1.5
        assert found.data.params == {"p": odd, key: "v"}
        assert {k: v for k, v in found.data.tags.items() if k != "mlflow.runName"} == {
            "t": odd,
            key: "",
        }
    history = {m.key: m for m in client.get_metric_history(rid, key)}
    assert history[key].step == 2**40
    runs = client.search_runs([eid], order_by=["attributes.run_name ASC"])
    assert [r.info.run_name for r in runs] == ["bare", "exact"]
    assert runs[0].data.metrics == {} and runs[0].data.params == {}
    # The raw answer: steps and timestamps as JSON numbers, specials as strings.
    body = api(server, "POST", "runs/search", json={"experiment_ids": [eid]}).json()
    exact = next(r for r in body["runs"] if r["info"]["run_name"] == "exact")
    by_key = {m["key"]: m for m in exact["data"]["metrics"]}
    assert by_key["nan"]["value"] == "NaN" and by_key["inf"]["value"] == "Infinity"
    assert by_key["ninf"]["value"] == "-Infinity"
    assert by_key["sum"] == {
        "key": "sum",
        "value": 0.1 + 0.2,
        "timestamp": 1_700_000_000_123,
        "step": 7,
    }
    assert "inputs" not in exact and "outputs" not in exact


def test_delete_restore_runs_and_view_types(client: MlflowClient) -> None:
    eid = new_experiment(client)
    keep = client.create_run(eid, run_name="keep").info.run_id
    gone = client.create_run(eid, run_name="gone").info.run_id
    client.delete_run(gone)
    assert [r.info.run_id for r in client.search_runs([eid])] == [keep]
    deleted = client.search_runs([eid], run_view_type=ViewType.DELETED_ONLY)
    assert [r.info.run_id for r in deleted] == [gone]
    assert len(client.search_runs([eid], run_view_type=ViewType.ALL)) == 2
    # A deleted run is read-only, as in MLflow.
    with pytest.raises(MlflowClientError) as e:
        client.log_metric(gone, "x", 1.0)
    assert e.value.error_code == "INVALID_PARAMETER_VALUE"
    client.restore_run(gone)
    assert {r.info.run_id for r in client.search_runs([eid])} == {keep, gone}
    with pytest.raises(MlflowClientError) as e:
        client.get_run(uuid.uuid4().hex)
    assert e.value.error_code == "RESOURCE_DOES_NOT_EXIST"


def test_artifacts_up_and_down(client: MlflowClient, server: ServerProcess, tmp_path: Path) -> None:
    eid = new_experiment(client)
    src = tmp_path / "src"
    (src / "nested").mkdir(parents=True)
    (src / "config.yaml").write_text("lr: 0.1\n")
    (src / "nested" / "weights.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 7))
    with mlflow.start_run(experiment_id=eid) as run:
        mlflow.log_artifact(str(src / "config.yaml"))
        mlflow.log_artifacts(str(src), artifact_path="bundle")
        mlflow.log_text("hello", "notes/readme.txt")
    run_id = run.info.run_id
    top = client.list_artifacts(run_id)
    assert [(f.path, f.is_dir) for f in top] == [
        ("bundle", True),
        ("config.yaml", False),
        ("notes", True),
    ]
    assert top[1].file_size == len("lr: 0.1\n")
    nested = client.list_artifacts(run_id, "bundle/nested")
    assert [(f.path, f.file_size) for f in nested] == [("bundle/nested/weights.bin", 3145735)]
    out = Path(client.download_artifacts(run_id, "bundle", str(tmp_path / "dl")))
    assert (out / "nested" / "weights.bin").read_bytes() == (
        src / "nested" / "weights.bin"
    ).read_bytes()
    got = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="notes/readme.txt")
    assert Path(got).read_text() == "hello"
    # The bytes are in the collector's own artifact store, under the run's real location.
    real = artifact_dir(server) / eid / run_id / "artifacts" / "config.yaml"
    assert real.read_text() == "lr: 0.1\n"
    # artifacts/list of the tracking API answers run-relative paths and the proxy root.
    listing = api(server, "GET", "artifacts/list", params={"run_id": run_id, "path": "notes"})
    assert listing.json() == {
        "root_uri": f"mlflow-artifacts:/{eid}/{run_id}/artifacts",
        "files": [{"path": "notes/readme.txt", "is_dir": False, "file_size": 5}],
    }
    # DELETE through the proxy.
    proxy = f"{server.url}/api/2.0/mlflow-artifacts/artifacts/{eid}/{run_id}/artifacts"
    assert requests.delete(f"{proxy}/notes", timeout=30).status_code == 200
    assert [f.path for f in client.list_artifacts(run_id)] == ["bundle", "config.yaml"]


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("{eid}/{run}/artifacts/../../../../etc/passwd", 400),
        ("{eid}/{run}/artifacts/..%2f..%2f..%2fescape.txt", 400),
        ("{eid}/{run}/artifacts/%2e%2e/%2e%2e/%2e%2e/escape.txt", 400),
        ("%2Ftmp%2Fescape.txt", 400),
    ],
)
def test_artifact_proxy_refuses_paths_outside_the_run(
    client: MlflowClient, server: ServerProcess, path: str, status: int
) -> None:
    eid = new_experiment(client)
    run_id = client.create_run(eid).info.run_id
    url = "/api/2.0/mlflow-artifacts/artifacts/" + path.format(eid=eid, run=run_id)
    code = "INVALID_PARAMETER_VALUE" if status == 400 else "RESOURCE_DOES_NOT_EXIST"
    for method in ("PUT", "GET", "DELETE"):
        got, body = raw(server, method, url, b"x" if method == "PUT" else b"")
        assert (got, body["error_code"]) == (status, code), (method, body)
        if status == 400:
            # MLflow's text first (clients match on it), flightlog's reason after.
            assert body["message"].startswith("Invalid path"), body
    assert not list(Path("/tmp").glob("escape.txt"))
    assert not list(server.log.parent.rglob("escape.txt"))
    listing = requests.get(
        f"{server.url}/api/2.0/mlflow-artifacts/artifacts",
        params={"path": f"{eid}/{run_id}/artifacts/../../.."},
        timeout=30,
    )
    assert listing.status_code == 400


def test_rest_conventions(client: MlflowClient, server: ServerProcess) -> None:
    eid = new_experiment(client)
    # int64 fields as strings, doubles as protobuf's NaN/Infinity strings.
    r = api(server, "POST", "runs/create", json={"experiment_id": eid, "start_time": "1000"})
    run = r.json()["run"]
    run_id = run["info"]["run_id"]
    assert run["info"]["start_time"] == 1000 and "end_time" not in run["info"]
    for value, ts, step in (("NaN", "2000", "1"), ("Infinity", 3000, 2), (-1.5, "4000", "3")):
        body = {"run_id": run_id, "key": "m", "value": value, "timestamp": ts, "step": step}
        assert api(server, "POST", "runs/log-metric", json=body).status_code == 200
    history = api(
        server, "GET", "metrics/get-history", params={"run_id": run_id, "metric_key": "m"}
    )
    assert history.json() == {
        "metrics": [
            {"key": "m", "value": "NaN", "timestamp": 2000, "step": 1},
            {"key": "m", "value": "Infinity", "timestamp": 3000, "step": 2},
            {"key": "m", "value": -1.5, "timestamp": 4000, "step": 3},
        ]
    }
    # Paged history.
    page = api(
        server,
        "GET",
        "metrics/get-history",
        params={"run_id": run_id, "metric_key": "m", "max_results": 2},
    ).json()
    assert [m["step"] for m in page["metrics"]] == [1, 2]
    rest = api(
        server,
        "GET",
        "metrics/get-history",
        params={"run_id": run_id, "metric_key": "m", "page_token": page["next_page_token"]},
    ).json()
    assert [m["step"] for m in rest["metrics"]] == [3] and "next_page_token" not in rest
    # Bulk interval: repeated query parameters for lists.
    bulk = requests.get(
        f"{server.url}/ajax-api/2.0/mlflow/metrics/get-history-bulk-interval",
        params=[("run_ids", run_id), ("metric_key", "m"), ("max_results", "2")],
        timeout=30,
    ).json()["metrics"]
    assert [(m["step"], m["run_id"]) for m in bulk] == [(1, run_id), (3, run_id)]
    # Errors: MLflow's body, MLflow's status.
    r = api(server, "GET", "runs/get", params={"run_id": "f" * 32})
    assert r.status_code == 404
    assert r.json() == {
        "error_code": "RESOURCE_DOES_NOT_EXIST",
        "message": f"Run with id={'f' * 32} not found",
        "sqlstate": "KAM00",
        "error_class": "RESOURCE_NOT_FOUND",
    }
    r = api(server, "POST", "runs/log-metric", json={"run_id": run_id, "key": "m", "value": "x"})
    assert r.status_code == 400 and r.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    r = api(server, "POST", "runs/log-metric", json={"run_id": run_id, "key": "m", "value": 1})
    assert r.status_code == 400 and "timestamp" in r.json()["message"]
    r = api(server, "POST", "no-such/endpoint", json={})
    assert r.status_code == 404 and r.json()["error_code"] == "ENDPOINT_NOT_FOUND"
    r = api(server, "POST", "experiments/create", data=b"{not json")
    assert r.status_code == 400 and r.json()["error_code"] == "BAD_REQUEST"
    assert requests.get(f"{server.url}/version", timeout=30).text == flightlog.__version__
    # Experiment search over GET, with the list in repeated parameters.
    r = api(
        server, "GET", "experiments/search", params=[("max_results", "1"), ("order_by", "name")]
    )
    assert len(r.json()["experiments"]) == 1 and r.json()["next_page_token"]


def test_log_inputs(client: MlflowClient) -> None:
    eid = new_experiment(client)
    run_id = client.create_run(eid).info.run_id
    dataset = Dataset(name="iris", digest="abc123", source_type="local", source='{"uri": "x"}')
    tag = InputTag("mlflow.data.context", "training")
    client.log_inputs(run_id, datasets=[DatasetInput(dataset, tags=[tag])])
    client.log_inputs(run_id, datasets=[DatasetInput(dataset, tags=[tag])])  # no duplicate
    inputs = client.get_run(run_id).inputs.dataset_inputs
    assert len(inputs) == 1
    assert (inputs[0].dataset.name, inputs[0].dataset.digest) == ("iris", "abc123")
    assert inputs[0].dataset.source == '{"uri": "x"}'
    assert [(t.key, t.value) for t in inputs[0].tags] == [("mlflow.data.context", "training")]
    assert client.search_runs([eid])[0].inputs.dataset_inputs[0].dataset.name == "iris"


def test_one_data_set_flightlog_sdk_then_mlflow_client(
    client: MlflowClient, server: ServerProcess, tmp_path: Path
) -> None:
    """A run logged by the flightlog SDK (another process) reads back through MLflow's client."""
    proc = run_script(
        tmp_path,
        f"""
        import flightlog
        flightlog.set_tracking_uri({server.url!r})
        eid = flightlog.create_experiment("sdk-written-{uuid.uuid4().hex[:6]}")
        with flightlog.start_run(experiment_id=eid, run_name="from-sdk") as run:
            flightlog.log_param("optimizer", "adam")
            for step in range(50):
                flightlog.log_metric("loss", 1.0 / (step + 1), step=step)
            flightlog.set_tag("team", "ml")
            flightlog.log_text("sdk text", "notes/sdk.txt")
        print(eid, run.info.run_id)
        """,
    )
    eid, run_id = proc.stdout.split()
    run = client.get_run(run_id)
    assert run.info.run_name == "from-sdk" and run.info.status == "FINISHED"
    assert run.data.params == {"optimizer": "adam"} and run.data.metrics == {"loss": 0.02}
    history = client.get_metric_history(run_id, "loss")
    assert [m.step for m in history] == list(range(50))
    found = client.search_runs([eid], "metrics.loss < 0.05 AND params.optimizer = 'adam'")
    assert [r.info.run_id for r in found] == [run_id]
    got = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="notes/sdk.txt")
    assert Path(got).read_text() == "sdk text"


def test_one_data_set_mlflow_client_then_flightlog_sdk(
    client: MlflowClient, server: ServerProcess
) -> None:
    """A run logged by MLflow's client reads back through flightlog's SDK."""
    eid = new_experiment(client)
    with mlflow.start_run(experiment_id=eid, run_name="from-mlflow") as run:
        mlflow.log_param("depth", 6)
        for step in range(20):
            mlflow.log_metric("auc", step / 20, step=step)
        mlflow.set_tag("team", "ds")
        mlflow.log_text("from mlflow", "t.txt")
    fl = flightlog.MlflowClient(server.url)
    got = fl.get_run(run.info.run_id)
    assert got.info.run_name == "from-mlflow" and got.info.experiment_id == eid
    assert got.data.params == {"depth": "6"} and got.data.metrics == {"auc": 0.95}
    assert got.data.tags["team"] == "ds"
    assert [m.step for m in fl.get_metric_history(run.info.run_id, "auc")] == list(range(20))
    runs = fl.search_runs([eid], "metrics.auc > 0.9 AND tags.team = 'ds'")
    assert [r.info.run_id for r in runs] == [run.info.run_id]
    assert [f.path for f in fl.list_artifacts(run.info.run_id)] == ["t.txt"]


def test_ui_routes_history_bulk_and_get_artifact(
    server: ServerProcess, client: MlflowClient
) -> None:
    """MLflow's UI routes: metrics/get-history-bulk (under /ajax-api) and /get-artifact."""
    eid = new_experiment(client)
    a, b = client.create_run(eid).info.run_id, client.create_run(eid).info.run_id
    for run_id, scale in ((a, 1.0), (b, 2.0)):
        for step in range(3):
            client.log_metric(run_id, "loss", scale * step, timestamp=1000 + step, step=step)
    url = f"{server.url}/ajax-api/2.0/mlflow/metrics/get-history-bulk"
    r = requests.get(url, params={"run_id": [b, a], "metric_key": "loss"}, timeout=30)
    assert r.status_code == 200
    got = [(m["run_id"], m["step"], m["value"]) for m in r.json()["metrics"]]
    first, second = sorted((a, b))
    want = {a: 1.0, b: 2.0}
    assert got == [(rid, s, want[rid] * s) for rid in (first, second) for s in range(3)]
    r = requests.get(
        url, params={"run_id": [a], "metric_key": "loss", "max_results": 2}, timeout=30
    )
    assert [m["step"] for m in r.json()["metrics"]] == [0, 1]
    r = requests.get(url, params={"metric_key": "loss"}, timeout=30)
    assert r.status_code == 400 and r.json() == {
        "error_code": "INVALID_PARAMETER_VALUE",
        "message": "GetMetricHistoryBulk request must specify at least one run_id.",
        "sqlstate": "KAM00",
        "error_class": "INVALID_PARAMETER_VALUE",
    }
    r = requests.get(url, params={"run_id": [a] * 101, "metric_key": "loss"}, timeout=30)
    assert r.status_code == 400 and "cannot specify more than 100 run_ids" in r.json()["message"]
    # /get-artifact: MLflow's content type by extension, as an attachment.
    with tempfile.TemporaryDirectory() as d:
        for name, data in (("notes.yaml", b"a: 1\n"), ("pic.png", b"\x89PNG"), ("blob", b"\0")):
            Path(d, name).write_bytes(data)
            client.log_artifact(a, str(Path(d, name)), "files")
    for name, ctype in (
        ("notes.yaml", "text/plain"),
        ("pic.png", "image/png"),
        ("blob", "application/octet-stream"),
    ):
        r = requests.get(
            f"{server.url}/get-artifact", params={"run_id": a, "path": f"files/{name}"}, timeout=30
        )
        assert r.status_code == 200 and r.headers["Content-Type"].startswith(ctype), name
        assert r.headers["Content-Disposition"] == f"attachment; filename={name}"
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        proxy = f"{server.url}/api/2.0/mlflow-artifacts/artifacts/{eid}/{a}/artifacts/files/{name}"
        assert requests.get(proxy, timeout=30).headers["Content-Type"].startswith(ctype)
    r = requests.get(
        f"{server.url}/get-artifact", params={"run_id": a, "path": "files/none"}, timeout=30
    )
    assert r.status_code == 404 and r.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    r = requests.get(f"{server.url}/get-artifact", params={"run_id": a}, timeout=30)
    assert r.status_code == 400 and r.json()["error_code"] == "INVALID_PARAMETER_VALUE"


def test_long_request_line_gets_a_json_answer(server: ServerProcess) -> None:
    """1,000 run ids in a GET (about 33 kB of URL) reach the handler's own validation."""
    run_ids = [uuid.uuid4().hex for _ in range(1000)]
    r = requests.get(
        f"{server.url}/api/2.0/mlflow/metrics/get-history-bulk-interval",
        params={"run_ids": run_ids, "metric_key": "loss"},
        timeout=30,
    )
    assert len(r.request.url or "") > 8190
    assert r.status_code == 400
    assert r.json()["message"].startswith(
        "GetMetricHistoryBulkInterval request must specify at most 100 run_ids."
    )

"""Differential test: the same MLflow client calls against ``mlflow server`` and flightlog.

One scenario of client calls runs against a real ``mlflow server`` (SQLite store,
proxied artifacts, started here on 127.0.0.1) and against a flightlog collector. Every
answer is turned into plain data, run ids are renamed in order of appearance and
wall-clock times replaced by a marker; then the two transcripts must be equal, step by
step. Times the scenario sets itself (start_time=1000, metric timestamps) are compared
as they are.

Where flightlog differs on purpose, the scenario says so and checks each side's own
behaviour instead of equality (see ``DELIBERATE``).
"""

from __future__ import annotations

import functools
import http.client
import json
import math
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.mlflow_server import (
    ServerProcess,
    quiet_mlflow,
    start_flightlog_collector,
    start_mlflow_server,
)

quiet_mlflow()

import mlflow  # noqa: E402
import requests  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import (  # noqa: E402
    Dataset,
    DatasetInput,
    Experiment,
    FileInfo,
    InputTag,
    Metric,
    Param,
    Run,
    RunTag,
    ViewType,
)
from mlflow.exceptions import MlflowException as MlflowClientError  # noqa: E402

# Steps whose answers differ on purpose, and why. The scenario checks each side there.
DELIBERATE = {
    "search OR": "flightlog's filter language has OR; MLflow's server refuses it",
    "infinity": "MLflow's SQL store turns +inf into the largest double; flightlog keeps inf",
}

_HEX_ID = re.compile(r"[0-9a-f]{32}")
_NOW_MS = 1_000_000_000_000  # epoch ms after 2001: a wall-clock time, not one we chose


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def servers(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, ServerProcess]]:
    """A fresh mlflow server and flightlog on each of its stores (PostgreSQL: a fresh
    database of tests/pgserver.py): ids are compared, so both start empty."""
    store = None
    if request.param == "postgresql":
        store = request.getfixturevalue("pg_server").create_database()
    ml = start_mlflow_server(tmp_path_factory.mktemp("mlflow"))
    try:
        fl = start_flightlog_collector(tmp_path_factory.mktemp("flightlog"), store=store)
    except BaseException:
        ml.stop()
        raise
    yield {"mlflow": ml, "flightlog": fl}
    ml.stop()
    fl.stop()


def plain(value: Any) -> Any:
    """An MLflow client answer as comparable plain data."""
    if isinstance(value, Experiment):
        return {
            "experiment_id": value.experiment_id,
            "name": value.name,
            "artifact_location": value.artifact_location,
            "lifecycle_stage": value.lifecycle_stage,
            "tags": dict(value.tags),
            "creation_time": plain(value.creation_time),
            "last_update_time": plain(value.last_update_time),
        }
    if isinstance(value, Run):
        i = value.info
        return {
            "info": {
                k: plain(getattr(i, k))
                for k in (
                    "run_id",
                    "experiment_id",
                    "run_name",
                    "user_id",
                    "status",
                    "start_time",
                    "end_time",
                    "artifact_uri",
                    "lifecycle_stage",
                )
            },
            "metrics": plain(value.data.metrics),
            "params": dict(value.data.params),
            "tags": dict(value.data.tags),
            "inputs": [
                {
                    "dataset": plain(
                        {
                            k: getattr(d.dataset, k)
                            for k in ("name", "digest", "source_type", "source", "schema")
                        }
                    ),
                    "tags": {t.key: t.value for t in d.tags},
                }
                for d in (value.inputs.dataset_inputs if value.inputs else [])
            ],
        }
    if isinstance(value, Metric):
        return [value.key, plain(value.value), plain(value.timestamp), value.step]
    if isinstance(value, FileInfo):
        return [value.path, value.is_dir, value.file_size]
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if isinstance(value, int) and not isinstance(value, bool) and value >= _NOW_MS:
        return "<now>"
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


class Transcript:
    """The answers of one server, step by step, with run ids renamed by first appearance."""

    def __init__(self) -> None:
        self.steps: dict[str, Any] = {}
        self._ids: dict[str, str] = {}

    def _rename(self, value: Any) -> Any:
        if isinstance(value, str):
            return _HEX_ID.sub(
                lambda m: self._ids.setdefault(m[0], f"<run{len(self._ids)}>"), value
            )
        if isinstance(value, dict):
            return {self._rename(k): self._rename(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._rename(v) for v in value]
        return value

    def record(self, step: str, call: Callable[[], Any]) -> Any:
        """Make one call; record its answer, or the error code it raised."""
        try:
            answer = call()
        except MlflowClientError as e:
            self.steps[step] = {"error": e.error_code}
            return None
        self.steps[step] = self._rename(plain(answer))
        return answer


def scenario(url: str, tmp: Path) -> Transcript:
    """The calls both servers answer, made with the official client."""
    mlflow.set_tracking_uri(url)
    client = MlflowClient(url)
    t = Transcript()
    rec = t.record

    eid = rec("create experiment", lambda: client.create_experiment("diff", tags={"p": "x"}))
    rec("get experiment", lambda: client.get_experiment(eid))
    rec("get experiment by name", lambda: client.get_experiment_by_name("diff"))
    rec("get missing experiment by name", lambda: client.get_experiment_by_name("nope"))
    rec("get missing experiment", lambda: client.get_experiment("4242"))
    rec("duplicate experiment", lambda: client.create_experiment("diff"))
    rec("set experiment tag", lambda: client.set_experiment_tag(eid, "owner", "me"))
    rec("delete experiment tag", lambda: client.delete_experiment_tag(eid, "p"))
    rec("delete missing experiment tag", lambda: client.delete_experiment_tag(eid, "p"))
    rec("rename experiment", lambda: client.rename_experiment(eid, "diff-renamed"))
    rec("experiment after changes", lambda: client.get_experiment(eid))

    run = rec(
        "create run",
        lambda: client.create_run(eid, start_time=1000, tags={"a": "1"}, run_name="first"),
    )
    rid = run.info.run_id
    rec("log param", lambda: client.log_param(rid, "lr", "0.1"))
    rec("log same param", lambda: client.log_param(rid, "lr", "0.1"))
    rec("change param", lambda: client.log_param(rid, "lr", "0.2"))
    rec("log metric", lambda: client.log_metric(rid, "loss", 0.5, timestamp=2000, step=1))
    rec("log metric nan", lambda: client.log_metric(rid, "odd", math.nan, timestamp=2001))
    rec(
        "log batch",
        lambda: client.log_batch(
            rid,
            metrics=[Metric("loss", 0.25, 3000, 2), Metric("loss", 0.75, 2500, 0)]
            + [Metric("acc", i / 10, 4000 + i, i) for i in range(10)],
            params=[Param("depth", "6"), Param("opt", "adam")],
            tags=[RunTag("team", "ml"), RunTag("team", "ds")],
        ),
    )
    rec("batch with changed param", lambda: client.log_batch(rid, params=[Param("depth", "7")]))
    rec("set tag", lambda: client.set_tag(rid, "temp", "1"))
    rec("delete tag", lambda: client.delete_tag(rid, "temp"))
    rec("delete missing tag", lambda: client.delete_tag(rid, "temp"))
    rec(
        "log inputs",
        lambda: client.log_inputs(
            rid,
            datasets=[
                DatasetInput(
                    Dataset("iris", "d1", "local", '{"uri": "iris.csv"}', schema='{"a": 1}'),
                    tags=[InputTag("mlflow.data.context", "train")],
                )
            ],
        ),
    )
    rec("get run", lambda: client.get_run(rid))
    rec("metric history", lambda: client.get_metric_history(rid, "loss"))
    rec("nan history", lambda: client.get_metric_history(rid, "odd"))
    rec("missing history", lambda: client.get_metric_history(rid, "none"))
    rec("terminate", lambda: client.set_terminated(rid, "FINISHED", end_time=9000))
    rec("update run name", lambda: client.update_run(rid, name="first-renamed"))
    rec("get run after update", lambda: client.get_run(rid))
    rec("get missing run", lambda: client.get_run(uuid.uuid4().hex))
    rec("log to missing run", lambda: client.log_metric(uuid.uuid4().hex, "x", 1.0))

    # Nested runs and a small population for search, through the fluent API.
    mlflow.set_experiment(experiment_id=eid)
    with mlflow.start_run(run_name="parent") as parent:
        mlflow.log_metric("acc", 0.5)
        for i in range(6):
            with mlflow.start_run(run_name=f"child-{i}", nested=True):
                mlflow.log_param("model", "rf" if i % 2 else "xgb")
                mlflow.log_metric("acc", i / 10, step=i)
                mlflow.set_tag("group", "a" if i < 3 else "b")
    t.steps["parent run"] = t._rename(plain(client.get_run(parent.info.run_id)))

    def names(runs: list[Run]) -> list[str]:
        return [r.info.run_name for r in runs]

    rec(
        "search metric and param",
        lambda: names(
            client.search_runs(
                [eid], "metrics.acc >= 0.2 and params.model = 'xgb'", order_by=["metrics.acc DESC"]
            )
        ),
    )
    rec(
        "search tag like, order by name",
        lambda: names(client.search_runs([eid], "tags.group LIKE 'b%'", order_by=["run_name"])),
    )
    rec(
        "search attributes",
        lambda: names(
            client.search_runs(
                [eid],
                "attributes.status = 'FINISHED' and attributes.run_name != 'parent'",
                order_by=["attributes.run_name DESC"],
            )
        ),
    )
    rec(
        "search parent id",
        lambda: sorted(
            names(client.search_runs([eid], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"))
        ),
    )
    rec(
        "search order by param then metric",
        lambda: names(client.search_runs([eid], "", order_by=["params.model", "metrics.acc DESC"])),
    )
    rec(
        "search full runs",
        lambda: client.search_runs([eid], "params.model = 'rf'", order_by=["run_name"]),
    )

    def paged() -> list[str]:
        out: list[str] = []
        token = None
        while True:
            page = client.search_runs([eid], order_by=["run_name"], max_results=4, page_token=token)
            out += names(page)
            token = page.token
            if not token:
                return out

    rec("search in pages", paged)
    rec("bad filter", lambda: client.search_runs([eid], "metrics.acc >"))
    rec(
        "search experiments",
        lambda: [e.name for e in client.search_experiments(filter_string="name LIKE 'diff%'")],
    )
    rec(
        "bulk interval",
        lambda: requests.get(
            f"{url}/api/2.0/mlflow/metrics/get-history-bulk-interval",
            params=[("run_ids", rid), ("metric_key", "acc"), ("max_results", "4")],
            timeout=30,
        ).json(),
    )

    # Artifacts through the server.
    src = tmp / "art"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("alpha")
    (src / "sub" / "b.bin").write_bytes(bytes(range(256)) * 100)
    rec("log artifacts", lambda: client.log_artifacts(rid, str(src), "files"))
    rec("log artifact", lambda: client.log_artifact(rid, str(src / "a.txt")))
    rec("list root", lambda: client.list_artifacts(rid))
    rec("list dir", lambda: client.list_artifacts(rid, "files/sub"))
    rec(
        "download",
        lambda: (
            Path(client.download_artifacts(rid, "files/sub/b.bin", str(tmp / "dl"))).read_bytes()
            == (src / "sub" / "b.bin").read_bytes()
        ),
    )

    # Deletes and restores.
    rec("delete run", lambda: client.delete_run(rid))
    rec("deleted run", lambda: client.get_run(rid).info.lifecycle_stage)
    rec("log to deleted run", lambda: client.log_metric(rid, "x", 1.0))
    rec(
        "search deleted only",
        lambda: names(client.search_runs([eid], run_view_type=ViewType.DELETED_ONLY)),
    )
    rec("restore run", lambda: client.restore_run(rid))
    rec("delete experiment", lambda: client.delete_experiment(eid))
    rec("delete experiment again", lambda: client.delete_experiment(eid))
    rec("deleted experiment", lambda: client.get_experiment(eid).lifecycle_stage)
    rec("run in deleted experiment", lambda: client.create_run(eid))
    rec(
        "search deleted experiments",
        lambda: [e.name for e in client.search_experiments(view_type=ViewType.DELETED_ONLY)],
    )
    rec("restore experiment", lambda: client.restore_experiment(eid))
    rec("restore experiment again", lambda: client.restore_experiment(eid))
    rec("run after restore", lambda: client.get_run(rid).info.lifecycle_stage)
    ui_and_proxy(url, client, eid, rid, rec)
    return t


def http_answer(r: requests.Response) -> dict[str, Any]:
    """A raw HTTP answer as comparable data: status, base content type, and the JSON body
    (an error's ``error_code`` and message) or the bytes with the download headers."""
    out: dict[str, Any] = {
        "status": r.status_code,
        "type": r.headers.get("Content-Type", "").split(";")[0],
    }
    if out["type"] == "application/json" and r.content:
        body = r.json()
        if isinstance(body, dict) and str(body.get("message", "")).startswith("Invalid path"):
            # MLflow's text is "Invalid path"; flightlog adds its reason after it.
            body = {**body, "message": "Invalid path"}
        out["json"] = body
    else:
        out["bytes"] = r.content
        for header in ("Content-Disposition", "X-Content-Type-Options"):
            out[header] = r.headers.get(header)
    return out


def raw_answer(url: str, method: str, path: str, body: bytes = b"") -> dict[str, Any]:
    """Send ``path`` exactly as written (requests would remove its ``..`` segments)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    try:
        conn.request(method, path, body=body)
        response = conn.getresponse()
        data = response.read()
    finally:
        conn.close()
    out: dict[str, Any] = {"status": response.status}
    if data.startswith(b"{"):
        answer = json.loads(data)
        out["error_code"] = answer.get("error_code")
        out["Invalid path"] = str(answer.get("message", "")).startswith("Invalid path")
    return out


def ui_and_proxy(
    url: str, client: MlflowClient, eid: str, rid: str, rec: Callable[[str, Callable[[], Any]], Any]
) -> None:
    """MLflow's UI routes and its artifact proxy's whole tree, as raw HTTP (issue 17)."""
    get, put, post, delete = (
        functools.partial(requests.request, method, timeout=60)
        for method in ("GET", "PUT", "POST", "DELETE")
    )
    ajax = f"{url}/ajax-api/2.0/mlflow"
    datasets = f"{ajax}/experiments/search-datasets"
    rec(
        "search datasets",
        lambda: http_answer(post(datasets, json={"experiment_ids": [eid]})),
    )
    rec("search datasets, none", lambda: http_answer(post(datasets, json={})))
    rec(
        "search datasets, 21 ids",
        lambda: http_answer(post(datasets, json={"experiment_ids": [str(i) for i in range(21)]})),
    )
    rec(
        "search datasets, text/plain",
        lambda: http_answer(post(datasets, data=b"{}", headers={"Content-Type": "text/plain"})),
    )
    rec(
        "history bulk",
        lambda: http_answer(
            get(f"{ajax}/metrics/get-history-bulk", params={"run_id": rid, "metric_key": "loss"})
        ),
    )
    upload = f"{ajax}/upload-artifact"
    for step, params, data in (
        ("upload artifact", {"run_uuid": rid, "path": "ui/n.txt"}, b"note"),
        ("upload artifact, no run", {"path": "x.txt"}, b"x"),
        ("upload artifact, no path", {"run_uuid": rid}, b"x"),
        ("upload artifact, no data", {"run_uuid": rid, "path": "x.txt"}, b""),
        ("upload artifact, '..'", {"run_uuid": rid, "path": "../x.txt"}, b"x"),
        ("upload artifact, missing run", {"run_uuid": uuid.uuid4().hex, "path": "x.txt"}, b"x"),
        (
            "upload artifact, 10 MB + 1",
            {"run_uuid": rid, "path": "b.bin"},
            b"\0" * (10 * 2**20 + 1),
        ),
    ):
        rec(step, lambda p=params, d=data: http_answer(post(upload, params=p, data=d)))
    rec("uploaded through the UI", lambda: client.list_artifacts(rid, "ui"))
    rec(
        "get-artifact",
        lambda: http_answer(get(f"{url}/get-artifact", params={"run_id": rid, "path": "ui/n.txt"})),
    )
    # MLflow answers Flask's HTML 400 page here; flightlog its JSON error: the status only.
    rec(
        "get-artifact, missing path",
        lambda: get(f"{url}/get-artifact", params={"run_id": rid}).status_code,
    )

    # The proxy's whole tree: paths that are no run's.
    proxy = f"{url}/api/2.0/mlflow-artifacts/artifacts"
    rec("tree put", lambda: http_answer(put(f"{proxy}/loose/a.txt", data=b"alpha")))
    rec("tree put deep", lambda: http_answer(put(f"{proxy}/loose/x/y.json", data=b"{}")))
    rec("tree get", lambda: http_answer(get(f"{proxy}/loose/a.txt")))
    rec("tree list", lambda: http_answer(get(proxy, params={"path": "loose"})))
    rec("tree list deep", lambda: http_answer(get(proxy, params={"path": "loose/x"})))
    rec("tree delete dir", lambda: http_answer(delete(f"{proxy}/loose/x")))
    rec("tree list after delete", lambda: http_answer(get(proxy, params={"path": "loose"})))
    for name in ("a.txt", "c.yaml", "MLmodel", "p.png", "r.pdf", "w", "page.html", "i.svg", "s.js"):

        def typed(name: str = name) -> dict[str, Any]:
            put(f"{proxy}/types/{name}", data=b"<b>x</b>", headers={"Content-Type": "text/html"})
            return http_answer(get(f"{proxy}/types/{name}", headers={"Accept": "text/html"}))

        rec(f"content type {name}", typed)
    for step, method, path in (
        ("tree '..' get", "GET", "/api/2.0/mlflow-artifacts/artifacts/loose/../loose/a.txt"),
        ("tree '..' put", "PUT", "/api/2.0/mlflow-artifacts/artifacts/../escape.txt"),
        ("tree '..' delete", "DELETE", "/api/2.0/mlflow-artifacts/artifacts/loose/%2e%2e/loose"),
        ("tree '..' list", "GET", "/api/2.0/mlflow-artifacts/artifacts?path=loose/../.."),
    ):
        rec(step, lambda m=method, p=path: raw_answer(url, m, p, b"x" if m == "PUT" else b""))

    # An experiment located at mlflow-artifacts:/<prefix>, and a run of it.
    pid = client.create_experiment("diff-prefix", artifact_location="mlflow-artifacts:/team")
    rec("prefix experiment location", lambda: client.get_experiment(pid).artifact_location)
    prid = client.create_run(pid).info.run_id
    rec("prefix run artifact uri", lambda: client.get_run(prid).info.artifact_uri)
    rec(
        "prefix run upload",
        lambda: client.log_text(prid, "weights", "m/model.txt"),
    )
    rec(
        "prefix run file in the tree",
        lambda: http_answer(get(f"{proxy}/team/{prid}/artifacts/m/model.txt")),
    )


def deliberate_differences(url: str) -> dict[str, Any]:
    """The calls where flightlog differs on purpose, answered by one server."""
    client = MlflowClient(url)
    eid = client.create_experiment(f"deliberate-{uuid.uuid4().hex[:6]}")
    rid = client.create_run(eid, run_name="r").info.run_id
    client.log_metric(rid, "m", 1.0, timestamp=1, step=0)
    out: dict[str, Any] = {}
    try:
        out["search OR"] = len(client.search_runs([eid], "metrics.m = 1 OR metrics.m = 2"))
    except MlflowClientError as e:
        out["search OR"] = e.error_code
    client.log_metric(rid, "big", math.inf, timestamp=1, step=0)
    out["infinity"] = client.get_run(rid).data.metrics["big"]
    return out


def test_same_calls_same_answers(servers: dict[str, ServerProcess], tmp_path: Path) -> None:
    ml = scenario(servers["mlflow"].url, tmp_path / "mlflow")
    fl = scenario(servers["flightlog"].url, tmp_path / "flightlog")
    assert list(fl.steps) == list(ml.steps)
    differing = {
        step: {"mlflow": ml.steps[step], "flightlog": fl.steps[step]}
        for step in ml.steps
        if ml.steps[step] != fl.steps[step]
    }
    assert differing == {}
    # The scenario exercised what it claims to (a transcript of errors would also be equal).
    assert fl.steps["search metric and param"] == ["child-4", "child-2"]
    assert fl.steps["download"] is True
    assert fl.steps["change param"] == {"error": "INVALID_PARAMETER_VALUE"}
    assert fl.steps["get run"]["params"] == {"lr": "0.1", "depth": "6", "opt": "adam"}
    summaries = fl.steps["search datasets"]["json"]["dataset_summaries"]
    assert [(d["name"], d.get("context")) for d in summaries] == [("iris", "train")]
    assert fl.steps["upload artifact"]["status"] == 200
    assert fl.steps["uploaded through the UI"] == [["ui/n.txt", False, 4]]
    assert fl.steps["tree get"]["bytes"] == b"alpha"
    assert fl.steps["tree '..' put"] == {
        "status": 400,
        "error_code": "INVALID_PARAMETER_VALUE",
        "Invalid path": True,
    }
    page = fl.steps["content type page.html"]
    assert page["Content-Disposition"] == "attachment; filename=page.html"
    assert page["X-Content-Type-Options"] == "nosniff"
    assert fl.steps["prefix run file in the tree"]["bytes"] == b"weights"


def test_deliberate_differences(servers: dict[str, ServerProcess]) -> None:
    ml = deliberate_differences(servers["mlflow"].url)
    fl = deliberate_differences(servers["flightlog"].url)
    assert set(ml) == set(fl) == set(DELIBERATE)
    # OR: MLflow refuses the filter; flightlog answers it.
    assert ml["search OR"] == "INVALID_PARAMETER_VALUE"
    assert fl["search OR"] == 1
    # Infinity: MLflow clamps it to the largest double; flightlog keeps it.
    assert ml["infinity"] == 1.7976931348623157e308
    assert fl["infinity"] == math.inf

"""The web UI's page, static files and JSON endpoints on a real collector process."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from array import array
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

import flightlog as mlflow
from tests.conftest import CollectorProcess, free_port, start_collector

UI = "/api/flightlog/ui"


def get(url: str, token: str | None = None) -> tuple[int, dict[str, str], bytes]:
    """GET a URL; (status, headers, body) whatever the status."""
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def get_json(url: str, token: str | None = None) -> Any:
    status, _, body = get(url, token)
    assert status == 200, body
    return json.loads(body)


def test_page_and_static_files_carry_a_content_security_policy(collector: CollectorProcess) -> None:
    status, headers, body = get(collector.url + "/")
    assert status == 200
    assert re.search(rb'<script type="module" src="/ui/v/[0-9a-f]{16}/js/main\.js">', body)
    csp = headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "object-src 'none'" in csp
    assert headers["X-Content-Type-Options"] == "nosniff"
    status, headers, body = get(collector.url + "/ui/js/main.js")
    assert status == 200 and headers["Content-Type"].startswith("text/javascript")
    status, _, body = get(collector.url + "/ui/vendor/uplot/uPlot.esm.js")
    assert status == 200 and b"export" in body
    # Paths that leave the UI's directory are refused, not served.
    for bad in ("/ui/%2e%2e/app.py", "/ui/..%5Capp.py", "/ui/js/nope.js"):
        status, _, _ = get(collector.url + bad)
        assert status in (400, 404), bad


def test_experiments_runs_and_filters(tracking: CollectorProcess) -> None:
    mlflow.set_experiment("ui/exp")
    for model, acc in (("cnn", 0.9), ("mlp", 0.8), ("rnn", 0.7)):
        with mlflow.start_run(run_name=model):
            mlflow.log_param("model", model)
            mlflow.log_metric("acc", acc)
    mlflow.flush()
    exps = get_json(tracking.url + UI + "/experiments")["experiments"]
    exp = next(e for e in exps if e["name"] == "ui/exp")
    assert exp["run_count"] == 3 and exp["last_activity"] >= exp["creation_time"]
    eid = exp["experiment_id"]
    assert get_json(f"{tracking.url}{UI}/experiments/{eid}")["experiment"]["name"] == "ui/exp"
    columns = get_json(f"{tracking.url}{UI}/experiments/{eid}/columns")["columns"]
    assert columns["params"] == ["model"]
    # system/ keys too when an earlier test in this process enabled system metrics.
    assert [k for k in columns["metrics"] if not k.startswith("system/")] == ["acc"]
    assert columns["tags"] == [
        "mlflow.runName",
        "mlflow.source.name",
        "mlflow.source.type",
        "mlflow.user",
    ]
    q = urllib.parse.urlencode({"filter": "params.model = 'cnn' OR metrics.acc < 0.75"})
    runs = get_json(f"{tracking.url}{UI}/experiments/{eid}/runs?{q}")["runs"]
    assert sorted(r["info"]["run_name"] for r in runs) == ["cnn", "rnn"]
    q = urllib.parse.urlencode({"filter": "metrics.acc >> 1"})
    status, _, body = get(f"{tracking.url}{UI}/experiments/{eid}/runs?{q}")
    assert status == 400
    message = json.loads(body)["message"]
    assert "position 12" in message and message.endswith("^")
    status, _, body = get(f"{tracking.url}{UI}/experiments/{eid}/runs?view=sideways")
    assert status == 400 and b"view must be one of" in body
    assert get(f"{tracking.url}{UI}/experiments/999/columns")[0] == 404


def test_metric_extremes_per_run(tracking: CollectorProcess) -> None:
    exp = mlflow.create_experiment("extremes")
    with mlflow.start_run(experiment_id=exp) as a:
        for s, v in enumerate([3.0, -2.0, float("nan"), 7.5, 1.0] * 300):
            mlflow.log_metric("loss", v, step=s)
    with mlflow.start_run(experiment_id=exp) as b:
        mlflow.log_metric("loss", 4.0, step=0)
        mlflow.log_metric("other", 100.0, step=0)
    with mlflow.start_run(experiment_id=exp):
        mlflow.log_metric("other", 1.0)
    mlflow.flush()
    got = get_json(f"{tracking.url}{UI}/experiments/{exp}/metric-extremes?key=loss")
    assert got["extremes"] == {a.info.run_id: [-2.0, 7.5], b.info.run_id: [4.0, 4.0]}
    status, _, body = get(f"{tracking.url}{UI}/experiments/{exp}/metric-extremes")
    assert status == 400 and b"key=K" in body


@pytest.fixture(params=["sqlite", "postgresql"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CollectorProcess]:
    """flightlog pointed at a real collector on a SQLite store, then on PostgreSQL (a
    fresh database of the session's throwaway cluster; skipped where it is missing)."""
    extra: tuple[str, ...] = ()
    if request.param == "postgresql":
        extra = ("--store", request.getfixturevalue("pg_server").create_database())
    c = start_collector(tmp_path / "store", None, *extra)
    mlflow.set_tracking_uri(c.url)
    yield c
    c.stop()


def test_metric_value_at_a_step_per_run_on_both_stores(any_store: CollectorProcess) -> None:
    exp = mlflow.create_experiment("at-step")
    client = mlflow.MlflowClient()
    with mlflow.start_run(experiment_id=exp) as dense:
        for part in range(3):  # three flushes: the series spans several chunks
            for s in range(part * 200, part * 200 + 200):
                mlflow.log_metric("loss", s / 2, step=s)
            mlflow.flush()
        # A second point at step 250, logged later: the latest at a step wins.
        client.log_metric(dense.info.run_id, "loss", -1.0, step=250, timestamp=2**41)
        mlflow.flush()
    with mlflow.start_run(experiment_id=exp) as sparse:
        for s in range(0, 1001, 100):
            mlflow.log_metric("loss", float(s), step=s)
    with mlflow.start_run(experiment_id=exp) as shuffled:
        for s in (50, 10, 300, 20):  # steps out of logging order
            mlflow.log_metric("loss", s + 0.5, step=s)
    with mlflow.start_run(experiment_id=exp):  # starts after the step: no value there
        mlflow.log_metric("loss", 9.0, step=500)
    with mlflow.start_run(experiment_id=exp):
        mlflow.log_metric("other", 1.0, step=0)
    mlflow.flush()
    url = f"{any_store.url}{UI}/experiments/{exp}/metric-at-step"

    got = get_json(f"{url}?key=loss&step=250")
    assert got["key"] == "loss" and got["step"] == 250
    assert got["values"] == {
        dense.info.run_id: [250, -1.0],
        sparse.info.run_id: [200, 200.0],
        shuffled.info.run_id: [50, 50.5],
    }
    assert get_json(f"{url}?key=loss&step=399")["values"][dense.info.run_id] == [399, 199.5]
    assert get_json(f"{url}?key=loss&step=-1")["values"] == {}
    for query, message in (
        ("key=loss", b"step=S"),
        ("key=loss&step=ten", b"'step' must be an integer"),
        (f"key=loss&step={2**63}", b"64-bit"),
        ("step=3", b"key=K"),
    ):
        status, _, body = get(f"{url}?{query}")
        assert status == 400 and message in body, (query, body)
    assert get(f"{any_store.url}{UI}/experiments/999/metric-at-step?key=loss&step=1")[0] == 404


def test_value_at_step_reads_one_chunk_per_run_when_steps_grow() -> None:
    from flightlog.collector.step_values import values_at_step

    def chunk(steps: list[int], values: list[float], ts: list[float]) -> tuple[bytes, ...]:
        return (
            array("q", steps).tobytes(),
            array("d", values).tobytes(),
            array("d", ts).tobytes(),
        )

    chunks = {
        cid: chunk(list(range(cid * 100, cid * 100 + 100)), [float(cid)] * 100, [0.0] * 100)
        for cid in range(10)
    }
    # Run b: its chunk 11 holds steps out of order, chunk 12 repeats step 405 later.
    chunks[11] = chunk([900, 405, 3], [1.0, 2.0, 3.0], [1.0, 1.0, 1.0])
    chunks[12] = chunk([405, 405], [4.0, 5.0], [2.0, 1.5])
    reads: list[list[int]] = []

    def read(ids: Sequence[int]) -> dict[int, tuple[bytes, ...]]:
        reads.append(sorted(ids))
        return {i: chunks[i] for i in ids}

    spans = [(cid, "a", cid * 100, cid * 100 + 99) for cid in range(5)]
    spans += [(11, "b", 3, 900), (12, "b", 405, 405)]
    assert values_at_step(spans, read, 450) == {"a": (450, 4.0), "b": (405, 4.0)}
    # One round for both runs; a second only for b, whose chunk 12 could still hold a
    # later point at the step its chunk 11 gave (405): it does, by timestamp.
    assert reads == [[4, 11], [12]]


def test_run_parent_children_and_metric_keys(tracking: CollectorProcess) -> None:
    with mlflow.start_run(run_name="parent") as parent:
        with mlflow.start_run(run_name="child", nested=True) as child:
            mlflow.log_metrics({"train/loss": 1.0, "val/loss": 2.0}, step=3)
    mlflow.flush()
    got = get_json(f"{tracking.url}{UI}/runs/{parent.info.run_id}")
    assert [c["info"]["run_name"] for c in got["children"]] == ["child"]
    assert got["parent"] is None and got["experiment"]["experiment_id"] == "0"
    got = get_json(f"{tracking.url}{UI}/runs/{child.info.run_id}")
    assert got["parent"]["info"]["run_id"] == parent.info.run_id
    # (system/ keys too when an earlier test in this process enabled system metrics)
    assert [m for m in got["metrics"] if not m["key"].startswith("system/")] == [
        {"key": "train/loss", "points": 1, "min_step": 3, "max_step": 3},
        {"key": "val/loss", "points": 1, "min_step": 3, "max_step": 3},
    ]
    status, _, body = get(f"{tracking.url}{UI}/runs/not-a-run")
    assert status == 400 and b"Invalid run id" in body
    status, _, _ = get(f"{tracking.url}{UI}/runs/{'0' * 32}")
    assert status == 404


def _series(url: str, run_id: str, key: str, **params: Any) -> dict[str, Any]:
    q = urllib.parse.urlencode({"run": run_id, "key": key, **params})
    series = get_json(f"{url}{UI}/metrics?{q}")["series"]
    assert len(series) == 1
    return dict(series[0])


def test_metric_reads_keep_spikes_zoom_to_raw_and_follow_new_points(
    tracking: CollectorProcess,
) -> None:
    n, spike_step = 300_000, 212_345
    with mlflow.start_run() as run:
        for s in range(n):
            mlflow.log_metric("loss", 1000.0 if s == spike_step else (s % 97) / 97, step=s)
    mlflow.flush()
    rid = run.info.run_id
    whole = _series(tracking.url, rid, "loss", points=2400)
    assert whole["sampled"] and len(whole["steps"]) <= 2400
    assert max(whole["values"]) == 1000.0
    assert whole["steps"][whole["values"].index(1000.0)] == spike_step
    assert whole["steps"] == sorted(whole["steps"])
    assert whole["steps"][0] == 0 and whole["steps"][-1] == n - 1
    # A zoom range in the middle of a chunk is cut exactly at both edges: nothing outside,
    # a point in the first bucket (about 125 steps wide) and the last point of the range.
    mid = _series(tracking.url, rid, "loss", points=2400, min_step=150_000, max_step=250_000)
    assert mid["sampled"] and 150_000 <= mid["steps"][0] < 150_130
    assert mid["steps"][-1] == 250_000
    assert 1000.0 in mid["values"] and min(mid["values"]) == 0.0
    # Few points for many: inner chunks are read from their block summaries, the edge
    # chunks raw; the spike and the exact edges survive.
    for lo, hi in ((None, None), (150_000, 250_000), (1, n - 2)):
        bounds = {} if lo is None else {"min_step": lo, "max_step": hi}
        few = _series(tracking.url, rid, "loss", points=300, **bounds)
        assert few["sampled"] and len(few["steps"]) <= 300
        assert 1000.0 in few["values"] and min(few["values"]) == 0.0
        assert few["steps"] == sorted(few["steps"])
        assert few["steps"][-1] == (n - 1 if hi is None else hi)
        assert few["steps"][0] >= (lo or 0)
    # Zoomed in far enough, the raw points come back.
    near = _series(tracking.url, rid, "loss", points=2400, min_step=212_000, max_step=213_000)
    assert not near["sampled"] and near["steps"] == list(range(212_000, 213_001))
    assert near["values"][spike_step - 212_000] == 1000.0
    # Live: only the points after a step.
    tail = _series(tracking.url, rid, "loss", points=2400, after_step=n - 11)
    assert tail["steps"] == list(range(n - 10, n)) and not tail["sampled"]
    # Many runs per call, and bad arguments are 400s that say what was wrong.
    q = urllib.parse.urlencode({"key": "loss", "points": 2})
    status, _, body = get(f"{tracking.url}{UI}/metrics?run={rid}&{q}")
    assert status == 400 and b"points must be between 3" in body
    status, _, body = get(f"{tracking.url}{UI}/metrics?run={rid}&key=loss&min_step=x")
    assert status == 400 and b"'min_step' must be an integer" in body
    status, _, body = get(f"{tracking.url}{UI}/metrics?key=loss")
    assert status == 400 and b"at least one run" in body


def test_artifact_previews_are_safe(tracking: CollectorProcess, tmp_path: Path) -> None:
    from PIL import Image

    with mlflow.start_run() as run:
        mlflow.log_text("a,b\n1,2\n", "data/table.csv")
        mlflow.log_text("<script>alert(1)</script>", "report.html")
        mlflow.log_text('<svg xmlns="http://www.w3.org/2000/svg"></svg>', "plot.svg")
        buf = io.BytesIO()
        Image.new("RGB", (4, 3), "red").save(buf, "PNG")
        png = tmp_path / "img.png"
        png.write_bytes(buf.getvalue())
        mlflow.log_artifact(str(png), "images")
    mlflow.flush()
    base = f"{tracking.url}{UI}/runs/{run.info.run_id}"
    files = get_json(base + "/artifacts")["files"]
    assert {(f["path"], f["is_dir"]) for f in files} == {
        ("data", True),
        ("images", True),
        ("plot.svg", False),
        ("report.html", False),
    }
    assert get_json(base + "/artifacts?path=data")["files"][0]["path"] == "data/table.csv"
    status, headers, body = get(base + "/artifact?path=data/table.csv")
    assert status == 200 and body == b"a,b\n1,2\n"
    assert headers["Content-Type"] == "text/plain; charset=utf-8"
    assert "sandbox" in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"
    status, headers, body = get(base + "/artifact?path=images/img.png")
    assert status == 200 and headers["Content-Type"] == "image/png" and body == buf.getvalue()
    for name in ("report.html", "plot.svg"):
        status, _, body = get(f"{base}/artifact?path={name}")
        assert status == 400 and b"download-only" in body
        status, headers, body = get(f"{base}/artifact?path={name}&download=1")
        assert status == 200 and headers["Content-Type"] == "application/octet-stream"
        assert headers["Content-Disposition"].startswith(f'attachment; filename="{name}"')
    status, _, body = get(base + "/artifact?path=../../etc/passwd")
    assert status == 400 and b"../../etc/passwd" in body


def test_token_guards_every_data_endpoint_but_not_the_page(tmp_path: Path) -> None:
    c = start_collector(tmp_path / "store", None, "--token", "s3cret")
    try:
        assert get(c.url + "/")[0] == 200
        assert get(c.url + "/ui/js/api.js")[0] == 200
        for path in ("/experiments", "/experiments/0", "/experiments/0/runs", f"/runs/{'a' * 32}"):
            assert get(c.url + UI + path)[0] == 401, path
            assert get(c.url + UI + path, token="wrong")[0] == 401, path
        assert get_json(c.url + UI + "/experiments", token="s3cret")["experiments"]
    finally:
        c.stop()


def test_flightlog_ui_command_prints_the_url(tmp_path: Path) -> None:
    port = free_port()
    command = ["ui", "--store", str(tmp_path / "s"), "--port", str(port)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "flightlog.cli", *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "FLIGHTLOG_LOG_LEVEL": "WARNING"},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line == f"flightlog UI: http://127.0.0.1:{port}/"
        status, _, body = get(line.split(": ", 1)[1])
        assert status == 200 and b"/js/main.js" in body
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a.csv", "attachment; filename=\"a.csv\"; filename*=UTF-8''a.csv"),
        ('x"y.bin', "attachment; filename=\"x_y.bin\"; filename*=UTF-8''x%22y.bin"),
        ("é.txt", "attachment; filename=\"_.txt\"; filename*=UTF-8''%C3%A9.txt"),
    ],
)
def test_content_disposition_quotes_names(name: str, expected: str) -> None:
    from flightlog.collector.ui_api import content_disposition

    assert content_disposition(f"dir/{name}") == expected

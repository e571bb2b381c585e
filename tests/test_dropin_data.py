"""Data that must go to the right place: one collector per store, reads that recover or
refuse, a quick exit with the collector down, one artifact URI on every client.

Real collector processes and real SQLite files throughout.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

import flightlog
from flightlog.agent.embedded import stop_collector
from flightlog.core.uris import local_store
from tests.conftest import CollectorProcess, free_port
from tests.helpers import run_script, run_status, stored_points

ONE_RUN = """
import json, sys
import flightlog as mlflow
mlflow.set_tracking_uri(sys.argv[1] if len(sys.argv) > 1 else {uri!r})
with mlflow.start_run() as run:
    for i in range(100):
        mlflow.log_metric("loss", 1.0 / (i + 1), step=i)
status = mlflow.get_run(run.info.run_id).info.status
print(json.dumps({{"run_id": run.info.run_id, "status": status}}))
"""


def test_two_sqlite_stores_in_one_directory_never_mix(tmp_path: Path) -> None:
    work = tmp_path / "project"
    work.mkdir()
    outs = {}
    try:
        for name in ("mystore.db", "other.db"):
            proc = run_script(tmp_path, ONE_RUN.format(uri=f"sqlite:///{name}"), cwd=work)
            outs[name] = json.loads(proc.stdout)
            assert outs[name]["status"] == "FINISHED"
        for name, out in outs.items():
            db = work / name
            assert db.is_file(), f"{name} was never created"
            assert stored_points(db, out["run_id"], "loss") == 100
            assert run_status(db, out["run_id"]) == "FINISHED"
        # Neither store holds the other's run.
        assert stored_points(work / "mystore.db", outs["other.db"]["run_id"]) == 0
        assert stored_points(work / "other.db", outs["mystore.db"]["run_id"]) == 0
        # Two collectors, each with its own discovery file naming its database.
        infos = [json.loads((work / f"{n}.collector.json").read_text()) for n in outs]
        assert infos[0]["pid"] != infos[1]["pid"]
        assert not (work / "collector.json").exists()
    finally:
        for name in outs:
            stop_collector(local_store(f"sqlite:///{work / name}"))


def test_a_collector_serving_another_store_is_refused(tmp_path: Path) -> None:
    from flightlog.agent.embedded import ensure_collector

    a = local_store(f"sqlite:///{tmp_path / 'a.db'}")
    b = local_store(f"sqlite:///{tmp_path / 'b.db'}")
    try:
        url_a = ensure_collector(a)
        # b's discovery file points at a's collector (a stale copy, a shared directory):
        # b's client must not use it, and starts b's own.
        b.collector_file.write_text(a.collector_file.read_text())
        url_b = ensure_collector(b)
        assert url_b != url_a
        assert (
            json.loads(b.collector_file.read_text())["pid"]
            != json.loads(a.collector_file.read_text())["pid"]
        )
    finally:
        stop_collector(a)
        stop_collector(b)


def test_a_read_after_the_embedded_collector_idled_out_starts_it_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLIGHTLOG_EMBEDDED_IDLE_TIMEOUT", "1")
    store = tmp_path / "store"
    flightlog.set_tracking_uri(str(store))
    try:
        with flightlog.start_run() as run:
            flightlog.log_metric("loss", 0.5)
        client = flightlog.MlflowClient()
        assert client.get_run(run.info.run_id).info.status == "FINISHED"  # a live connection
        pid = json.loads((store / "collector.json").read_text())["pid"]
        # The collector removes its discovery file as it exits (it is this process's
        # child, so it lingers as a zombie: its pid would still answer).
        deadline = time.monotonic() + 30
        while (store / "collector.json").exists() and time.monotonic() < deadline:
            time.sleep(0.1)  # waiting on another process to exit on its own idle timer
        assert not (store / "collector.json").exists(), "the embedded collector did not idle out"
        time.sleep(0.5)  # and it closes its socket right after
        # The read meets the closed keep-alive connection, then a refused port.
        got = client.get_run(run.info.run_id)
        assert got.info.status == "FINISHED"
        assert client.get_metric_history(run.info.run_id, "loss")[0].value == 0.5
        assert json.loads((store / "collector.json").read_text())["pid"] != pid
    finally:
        flightlog.context.reset_for_tests()
        stop_collector(store)


def test_reads_of_a_store_that_does_not_exist_create_nothing(tmp_path: Path) -> None:
    work = tmp_path / "empty"
    work.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "flightlog.cli", "artifacts", "list", "--run-id", "0" * 32],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert "No flightlog store at" in proc.stderr and "flightlog.db" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert list(work.iterdir()) == []
    # The SDK's reads say so too, and leave nothing behind either.
    client = flightlog.MlflowClient(f"sqlite:///{work / 'nothing.db'}")
    for read in (
        lambda: client.get_run("0" * 32),
        lambda: client.search_runs(["0"]),
        lambda: client.search_experiments(),
        lambda: client.list_artifacts("0" * 32),
    ):
        with pytest.raises(flightlog.MlflowException, match="No flightlog store at") as e:
            read()
        assert e.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    assert list(work.iterdir()) == []


def test_exit_with_the_collector_down_is_quick_and_says_where_the_spool_is(
    tmp_path: Path,
) -> None:
    port = free_port()  # nothing listens there
    spool = tmp_path / "spool"
    code = """
    import flightlog as mlflow
    mlflow.set_tracking_uri("http://127.0.0.1:{port}")
    with mlflow.start_run() as run:
        for i in range(10_000):
            mlflow.log_metric("loss", i, step=i)
    """.replace("{port}", str(port))
    t0 = time.monotonic()
    proc = run_script(tmp_path, code, env={"FLIGHTLOG_SPOOL_DIR": str(spool)})
    elapsed = time.monotonic() - t0
    # The default exit budget is 30 s: the exit did not wait it out (interpreter start
    # and imports take a few seconds on a busy machine, hence the margin).
    assert elapsed < 15, f"exit took {elapsed:.1f}s"
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "flightlog sync" in lines[0] and str(spool) in lines[0] and "unreachable" in lines[0]
    assert any(spool.rglob("*.seg")) or any(p.is_file() for p in spool.rglob("*"))


def test_one_artifact_uri_per_run_on_every_client(
    tracking: CollectorProcess, tmp_path: Path
) -> None:
    from tests.mlflow_server import quiet_mlflow

    quiet_mlflow()
    from mlflow import MlflowClient as OfficialClient

    with flightlog.start_run() as run:
        flightlog.log_text("hello", "notes/a.txt")
    uri = run.info.artifact_uri
    assert uri == f"mlflow-artifacts:/{run.info.experiment_id}/{run.info.run_id}/artifacts"
    assert flightlog.get_run(run.info.run_id).info.artifact_uri == uri
    assert flightlog.search_runs(output_format="list")[0].info.artifact_uri == uri
    assert OfficialClient(tracking.url).get_run(run.info.run_id).info.artifact_uri == uri
    # The URI is usable from the SDK: the bytes come through the collector.
    got = flightlog.artifacts.download_artifacts(f"{uri}/notes/a.txt", dst_path=str(tmp_path))
    assert Path(got).read_text() == "hello"
    assert flightlog.artifacts.load_text(f"runs:/{run.info.run_id}/notes/a.txt") == "hello"


def test_a_local_store_keeps_local_artifact_uris(tmp_path: Path) -> None:
    store = tmp_path / "store"
    flightlog.set_tracking_uri(str(store))
    try:
        with flightlog.start_run() as run:
            flightlog.log_text("x", "a.txt")
        uri = flightlog.get_run(run.info.run_id).info.artifact_uri
        assert uri.startswith("file://")
        path = flightlog.artifacts.download_artifacts(
            run_id=run.info.run_id, artifact_path="a.txt", dst_path=str(tmp_path / "d")
        )
        assert Path(path).read_text() == "x"
    finally:
        flightlog.context.reset_for_tests()
        stop_collector(store)

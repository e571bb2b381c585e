"""A central tier on PostgreSQL: real collector processes sharing one real database.

Several collectors on one database each answer any request, and a batch id is stored
once across them; a trainer logging through a node sidecar keeps every point exactly
once while the central collector is killed -9 and PostgreSQL itself is restarted.
"""

from __future__ import annotations

import signal
import threading
from array import array
from pathlib import Path

import psycopg
import pytest
from conftest import CollectorProcess, start_collector
from pgserver import PgServer
from test_reliability import Child, wait_until
from test_sidecar import TRAINER, backlog, one_point_batch, start_sidecar, stop_all

import flightlog
from flightlog import MlflowClient
from flightlog.agent.transport import CollectorClient

TOKEN = "central-secret"


@pytest.fixture(autouse=True)
def _own_spool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLIGHTLOG_SPOOL_DIR", str(tmp_path / "spool"))
    for var in ("FLIGHTLOG_TOKEN", "FLIGHTLOG_UPSTREAM", "FLIGHTLOG_UPSTREAM_TOKEN"):
        monkeypatch.delenv(var, raising=False)


def start_central(tmp: Path, name: str, uri: str, port: int | None = None) -> CollectorProcess:
    """A collector on the database ``uri`` (the second --store wins over the directory
    start_collector gives, which keeps its port file and log)."""
    return start_collector(tmp / name, port, "--store", uri, "--token", TOKEN)


def run_exists(uri: str, run_id: str) -> bool:
    with psycopg.connect(uri) as conn:
        return bool(conn.execute("SELECT 1 FROM runs WHERE run_uuid = %s", (run_id,)).fetchone())


def steps_in(uri: str, run_id: str, key: str) -> array[int]:
    steps: array[int] = array("q")
    with psycopg.connect(uri) as conn, conn.cursor(binary=True) as cur:
        for (blob,) in cur.execute(
            "SELECT steps FROM metric_chunks WHERE run_uuid = %s AND key = %s ORDER BY chunk_id",
            (run_id, key),
        ):
            steps.frombytes(blob)
    return steps


def test_two_collectors_share_a_database_and_a_batch_is_stored_once(
    tmp_path: Path, pg_server: PgServer
) -> None:
    uri = pg_server.create_database()
    a = start_central(tmp_path, "a", uri)
    b = start_central(tmp_path, "b", uri)
    try:
        # The password never shows in /health.
        health = CollectorClient(a.url, token=TOKEN).healthy()
        assert health is not None and pg_server.password not in health["store"]
        # The same batch reaches both collectors at once, many times over.
        run_id = "f" * 32
        body = one_point_batch(run_id)
        answers: list[bool] = []

        def post(url: str) -> None:
            client = CollectorClient(url, token=TOKEN)
            for _ in range(10):
                status, _, data = client.request("POST", "/api/flightlog/ingest", body)
                assert status == 200
                answers.append(b"duplicate\xc3" in data)

        threads = [threading.Thread(target=post, args=(u,)) for u in (a.url, b.url) * 2]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert answers.count(False) == 1  # one collector stored it, every other saw it
        assert list(steps_in(uri, run_id, "m")) == [0]
        # Either collector answers for what the other stored.
        flightlog.set_tracking_uri(a.url)
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("FLIGHTLOG_TOKEN", TOKEN)
            exp = MlflowClient(a.url).create_experiment("shared")
            assert MlflowClient(b.url).get_experiment(exp).name == "shared"
            assert MlflowClient(b.url).get_run(run_id).data.metrics == {"m": 1.0}
            found = MlflowClient(b.url).search_runs(["0"], "metrics.m = 1")
            assert [r.info.run_id for r in found] == [run_id]
    finally:
        a.stop()
        b.stop()


def test_central_killed_and_postgres_restarted_mid_run_every_point_once(
    tmp_path: Path, pg_server: PgServer
) -> None:
    uri = pg_server.create_database()
    central = start_central(tmp_path, "central", uri)
    sidecar = start_sidecar(tmp_path / "node", central.url)
    n, pauses = 400_000, (100_000, 250_000)
    child = Child(
        tmp_path,
        TRAINER.format(url=sidecar.url, n=n, every=50_000, pauses=pauses),
        env={"FLIGHTLOG_FLUSH_INTERVAL": "0.2"},
        stdin=True,
    )
    run_id = child.expect("run")
    try:
        while int(child.expect("at")) < pauses[0]:
            pass
        central.stop(signal.SIGKILL)
        child.send("go")
        wait_until(lambda: backlog(sidecar) > 0, 30, "batches to wait on the node")
        central = start_central(tmp_path, "central", uri, central.port)
        while int(child.expect("at")) < pauses[1]:
            pass
        # The database goes down under a live collector (crash-stop, then back).
        pg_server.restart()
        child.send("go")
        assert child.expect("flushed", timeout=240) == "True"
        child.expect("done")
        assert child.wait() == 0
        wait_until(lambda: backlog(sidecar) == 0, 120, "the node to forward everything")
    finally:
        child.kill()
        sidecar.stop()
        central.stop()
    steps = steps_in(uri, run_id, "loss")
    assert len(steps) == n and len(set(steps)) == n  # none lost, none twice
    with psycopg.connect(uri) as conn:
        row = conn.execute("SELECT status FROM runs WHERE run_uuid = %s", (run_id,)).fetchone()
    assert row == ("FINISHED",)


NODE_TRAINER = """
import sys
import flightlog as mlflow
mlflow.set_tracking_uri("{url}")
with mlflow.start_run(run_id="{run_id}"):
    for i in range({n}):
        mlflow.log_metric("{key}", i * 0.5, step=i)
        if i + 1 == {n} // 2:
            print("half", flush=True)
            sys.stdin.readline()  # the test breaks the central tier meanwhile
    agent = mlflow.MlflowClient().ctx.agent
    print("flushed", agent.flush(timeout=240, through_outage=True), flush=True)
"""


def test_nodes_with_two_trainers_each_log_into_one_run_through_central_outages(
    tmp_path: Path, pg_server: PgServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = pg_server.create_database()
    central = start_central(tmp_path, "central", uri)
    # Each node's sidecar on its own loopback address, as separate machines would be.
    sidecars = [
        start_sidecar(tmp_path / f"node{i}", central.url, host=f"127.0.0.{i + 2}") for i in range(4)
    ]
    nodes = [s.url for s in sidecars]
    monkeypatch.setenv("FLIGHTLOG_TOKEN", TOKEN)
    run_id = MlflowClient(central.url).create_run("0").info.run_id
    # create_run is sent by this process's agent: wait until the central store has it.
    wait_until(lambda: run_exists(uri, run_id), 30, "the run in the central store")
    n = 60_000
    children = [
        Child(
            tmp_path,
            NODE_TRAINER.format(url=url, run_id=run_id, n=n, key=f"loss/node{i}/trainer{j}"),
            name=f"n{i}t{j}",
            stdin=True,
        )
        for i, url in enumerate(nodes)
        for j in range(2)
    ]
    try:
        for c in children:
            c.expect("half", timeout=120)
        central.stop(signal.SIGKILL)
        pg_server.restart()
        for c in children:
            c.send("go")
        wait_until(lambda: any(backlog(s) for s in sidecars), 30, "batches held on the nodes")
        central = start_central(tmp_path, "central", uri, central.port)
        for c in children:
            assert c.expect("flushed", timeout=240) == "True"
            assert c.wait() == 0
        for s in sidecars:
            wait_until(lambda s=s: backlog(s) == 0, 120, "every node to forward everything")
    finally:
        stop_all(children, sidecars, central)
    for i in range(4):
        for j in range(2):
            steps = steps_in(uri, run_id, f"loss/node{i}/trainer{j}")
            assert sorted(steps) == list(range(n)), (i, j)  # every point once

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
from test_sidecar import backlog, one_point_batch, start_sidecar, start_trainer, stop_all

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
        # db is the database's redacted URI, not a file path made up from it.
        assert health["db"] == health["store"] and health["db"].startswith("postgresql://")
        assert pg_server.password not in health["db"] and "flightlog.db" not in health["db"]
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
    child, run_id = start_trainer(tmp_path, sidecar.url, n, pauses)
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


def test_a_version_1_database_is_migrated_once_and_keeps_its_runs(pg_server: PgServer) -> None:
    """A database made by migration 1 (with a run in it) is brought to the latest version
    by the collectors that start on it together, exactly once, and search still finds
    the run through the new indexes."""
    from flightlog.collector import pgstore

    uri = pg_server.create_database()
    run_id = "a" * 32
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pgstore, "MIGRATIONS", pgstore.MIGRATIONS[:1])
        first = pgstore.PostgresStore(uri, "s3://b/a")
        try:
            first.apply_batch(
                None,
                [("create_run", {"run_id": run_id, "experiment_id": "0", "start_time": 5})],
                [],
            )
            first.apply_batch(None, [("log_params", {"run_id": run_id, "params": {"p": "v"}})], [])
        finally:
            first.close()
    results: list[list[int]] = []

    def migrate_now() -> None:
        with psycopg.connect(uri) as conn:
            results.append(pgstore.migrate(conn))

    threads = [threading.Thread(target=migrate_now) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    later = [v for v, _ in pgstore.MIGRATIONS[1:]]
    assert sorted(results) == [[], [], later]  # under the advisory lock: migrated once
    with psycopg.connect(uri) as conn:
        versions = [r[0] for r in conn.execute("SELECT version FROM flightlog_migrations")]
        assert sorted(versions) == [v for v, _ in pgstore.MIGRATIONS]
        pkey = conn.execute("SELECT indexdef FROM pg_indexes WHERE indexname = 'params_pkey'")
        assert "INCLUDE (value)" in pkey.fetchone()[0]  # type: ignore[index]
    store = pgstore.PostgresStore(uri, "s3://b/a")
    try:
        assert store.search_run_ids(["0"], "params.p = 'v'", 1, 10, None, None) == ([run_id], None)
        assert store.get_run(run_id)["data"]["params"] == {"p": "v"}
    finally:
        store.close()


def test_points_of_known_runs_take_one_round_trip_and_are_stored_once(
    pg_server: PgServer,
) -> None:
    """Two collectors' stores on one database: a batch of points for a run a store has
    seen stored goes in one pipeline, and a batch id the other store already stored is
    still acknowledged as a duplicate without adding a point (the whole transaction is
    rolled back). Points for a run that does not exist are still refused."""
    from flightlog.collector.pgstore import PostgresStore

    uri = pg_server.create_database()
    a, b = PostgresStore(uri, "s3://b/a"), PostgresStore(uri, "s3://b/a")
    try:
        run_id = "b" * 32
        create = [("create_run", {"run_id": run_id, "experiment_id": "0"})]
        assert a.apply_batch("create", create, []) == (False, [])
        assert run_id in a._stored_runs  # so the next batch takes the one-trip path

        def points(first: int) -> list[tuple[str, str, array[int], array[float], array[float]]]:
            steps = array("q", [first, first + 1])
            return [(run_id, "m", steps, array("d", [0.5, 0.25]), array("d", [1.7e9] * 2))]

        assert a.apply_batch("p1", [], points(0)) == (False, [])  # a's one-trip path
        assert b.apply_batch("p1", [], points(0)) == (True, [])  # b checks the run first
        assert b.apply_batch("p2", [], points(2)) == (False, [])
        assert b.apply_batch("p1", [], points(0)) == (True, [])  # now b's one-trip path
        assert a.apply_batch("p2", [], points(2)) == (True, [])
        assert list(steps_in(uri, run_id, "m")) == [0, 1, 2, 3]
        assert a.get_run(run_id)["data"]["metrics"] == {"m": 0.25}
        duplicate, errors = a.apply_batch("p3", [], [("c" * 32, *points(0)[0][1:])])
        assert not duplicate and [e["error_code"] for e in errors] == ["RESOURCE_DOES_NOT_EXIST"]
        assert not run_exists(uri, "c" * 32)
    finally:
        a.close()
        b.close()

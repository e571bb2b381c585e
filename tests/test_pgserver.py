"""The throwaway PostgreSQL cluster the PostgreSQL tests run against (tests/pgserver.py)."""

from __future__ import annotations

import subprocess

import pytest
from pgserver import PgServer, find_bindir, postgres_cluster


def test_cluster_is_postgres_15_on_loopback_with_password(pg_server: PgServer) -> None:
    version = pg_server.psql("SHOW server_version_num")
    assert int(version) // 10000 == 15
    assert pg_server.psql("SHOW listen_addresses") == "127.0.0.1"
    assert pg_server.psql("SHOW password_encryption") == "scram-sha-256"
    wrong = pg_server.uri().replace(pg_server.password, "wrong")
    out = subprocess.run(
        [str(pg_server.bindir / "psql"), "-X", "-d", wrong, "-c", "SELECT 1"],
        capture_output=True,
        text=True,
    )
    assert out.returncode != 0 and "password authentication failed" in out.stderr


def test_databases_are_separate_and_survive_a_crash_restart(pg_server: PgServer) -> None:
    uri = pg_server.create_database()
    db = uri.rsplit("/", 1)[1]
    pg_server.psql("CREATE TABLE t (x int); INSERT INTO t VALUES (42)", db)
    pg_server.restart()
    assert pg_server.psql("SELECT x FROM t", db) == "42"
    other = pg_server.create_database().rsplit("/", 1)[1]
    assert pg_server.psql("SELECT count(*) FROM pg_tables WHERE tablename = 't'", other) == "0"


def test_cluster_is_stopped_and_removed_at_exit() -> None:
    try:
        find_bindir()
    except RuntimeError as e:
        pytest.skip(str(e))
    with postgres_cluster() as server:
        data_dir = server.data_dir
        assert (data_dir / "postmaster.pid").exists()
    assert not data_dir.exists()
    out = subprocess.run(
        [str(server.bindir / "pg_isready"), "-h", server.host, "-p", str(server.port)],
        capture_output=True,
    )
    assert out.returncode != 0

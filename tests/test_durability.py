"""What an acknowledgement depends on survives a power loss: the store commits with
synchronous=FULL by default (FLIGHTLOG_SQLITE_SYNCHRONOUS=NORMAL is a validated option),
and the spool fsyncs its files and directory entries."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from flightlog.agent.spool import TARGET_NAME, Spool
from flightlog.collector.store import SqliteStore
from flightlog.core.exceptions import SettingError

LEVELS = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}


def _levels(tmp_path: Path) -> tuple[str, str]:
    store = SqliteStore(tmp_path / "s.db", (tmp_path / "a").as_uri())
    conn = store._connect()
    try:
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        return mode, LEVELS[conn.execute("PRAGMA synchronous").fetchone()[0]]
    finally:
        conn.close()


def test_full_is_the_default_in_wal_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLIGHTLOG_SQLITE_SYNCHRONOUS", raising=False)
    assert _levels(tmp_path) == ("wal", "FULL")


def test_normal_is_an_option(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLIGHTLOG_SQLITE_SYNCHRONOUS", "normal")
    assert _levels(tmp_path) == ("wal", "NORMAL")


def test_anything_else_is_refused_naming_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLIGHTLOG_SQLITE_SYNCHRONOUS", "FULL; DROP TABLE runs")
    with pytest.raises(SettingError, match=r"FLIGHTLOG_SQLITE_SYNCHRONOUS=.*OFF, NORMAL, FULL"):
        SqliteStore(tmp_path / "s.db", (tmp_path / "a").as_uri())


def test_the_spool_syncs_what_flush_reports_as_on_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    spool = Spool(tmp_path / "root", owner="f" * 32, tracking_uri="http://127.0.0.1:1")
    spool.append(1, 1, b"x" * 100)
    spool.sync()  # what Outbox does before a flush() returns "on disk"
    root, directory = tmp_path / "root", spool.directory
    segment = next(directory.glob("*.seg"))
    # The target file, the new entries in the root and in the process's directory, and
    # the segment's bytes.
    assert any(p.startswith(str(root / f".{TARGET_NAME}")) for p in synced)
    assert {str(root), str(directory), str(segment)} <= set(synced)
    spool.close()

"""The store commits with synchronous=FULL by default (an acknowledged batch survives a
power loss); FLIGHTLOG_SQLITE_SYNCHRONOUS=NORMAL is a validated option."""

from __future__ import annotations

from pathlib import Path

import pytest

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

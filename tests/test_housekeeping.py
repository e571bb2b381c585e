"""Old ingest batch ids are pruned by a running collector; recent ones still dedupe."""

from __future__ import annotations

import sqlite3
import time
import uuid
from pathlib import Path

import pytest

from flightlog.agent.transport import CollectorClient
from flightlog.collector.store import SqliteStore, now_ms
from flightlog.core import settings
from flightlog.core.exceptions import SettingError
from flightlog.core.wire import encode_batch, unpack
from tests.conftest import start_collector


def _ids(db: Path) -> set[str]:
    conn = sqlite3.connect(db)
    try:
        return {r[0] for r in conn.execute("SELECT batch_id FROM batches")}
    finally:
        conn.close()


def test_collector_forgets_old_batch_ids_and_keeps_recent_ones(tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    store = SqliteStore(store_dir / "flightlog.db", (store_dir / "artifacts").as_uri())
    run_id = uuid.uuid4().hex
    store.apply_batch("recent", [("create_run", {"run_id": run_id, "experiment_id": "0"})], [])
    store.apply_batch("old", [], [])
    store._writer.execute(
        "UPDATE batches SET received_at = ? WHERE batch_id = 'old'", (now_ms() - 3 * 86400 * 1000,)
    )
    store.close()
    c = start_collector(store_dir, None, env={"FLIGHTLOG_BATCH_ID_RETENTION_DAYS": "2"})
    try:
        deadline = time.monotonic() + 30
        while "old" in _ids(store_dir / "flightlog.db"):
            assert time.monotonic() < deadline, "the old batch id was not pruned"
            time.sleep(0.05)  # waiting on the collector's own task
        assert _ids(store_dir / "flightlog.db") == {"recent"}
        # A resend of a batch still remembered is acknowledged as a duplicate.
        client = CollectorClient(c.url)
        body = encode_batch(
            "recent", "agent", [["set_tags", {"run_id": run_id, "tags": {"x": "1"}}]], []
        )
        status, _, data = client.request("POST", "/api/flightlog/ingest", body)
        assert status == 200 and unpack(data)["duplicate"] is True
    finally:
        c.stop()


def test_retention_setting_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLIGHTLOG_BATCH_ID_RETENTION_DAYS", "soon")
    with pytest.raises(SettingError, match="FLIGHTLOG_BATCH_ID_RETENTION_DAYS='soon'"):
        settings.BATCH_ID_RETENTION_DAYS.get()
    monkeypatch.setenv("FLIGHTLOG_BATCH_ID_RETENTION_DAYS", "0")
    assert settings.BATCH_ID_RETENTION_DAYS.get() == 0

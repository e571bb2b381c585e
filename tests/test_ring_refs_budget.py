"""Ring references count against the collector's memory budget.

A reference is a few dozen bytes, but the collector reads (and decodes) as many records
as it names, up to a whole body's worth: those bytes are held against
``FLIGHTLOG_INGEST_MAX_PENDING_BYTES`` as an inline batch's would be, so concurrent
references are answered 503 past the budget instead of growing the collector's memory
without bound (24 of 2M records each held ~1.9 GB at once before); and the ids tables
the reader keeps between batches are bounded in bytes."""

from __future__ import annotations

import http.client
import os
import socket
import uuid
from pathlib import Path

import pytest
from conftest import start_collector

from flightlog.agent.ring import Ring
from flightlog.core import ring_refs
from flightlog.core.ring_format import RECORD, rings_root
from flightlog.core.spool_paths import default_spool_root
from flightlog.core.wire import encode_raw_batch, referenced_records

BUDGET = 1 << 20
MSGPACK = "application/msgpack"


def _post(port: int, body: bytes) -> int:
    h = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        h.request("POST", "/api/flightlog/ingest", body, {"Content-Type": "application/msgpack"})
        response = h.getresponse()
        response.read()
        return response.status
    finally:
        h.close()


def test_a_reference_is_refused_503_while_others_hold_the_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = tmp_path / "spool"
    monkeypatch.setenv("FLIGHTLOG_SPOOL_DIR", str(spool))
    env = {
        **os.environ,
        "FLIGHTLOG_INGEST_MAX_BODY_BYTES": str(BUDGET),
        "FLIGHTLOG_INGEST_MAX_PENDING_BYTES": str(BUDGET),
    }
    c = start_collector(tmp_path / "store", env=env)
    points = BUDGET // RECORD  # the most one batch may name
    ring = Ring(rings_root(default_spool_root(c.url, None)), uuid.uuid4().hex, points)
    sid = ring.series_index("f" * 32, "loss")
    for step in range(points):
        _seq, offset, lap = next(ring.slots)
        ring.pack_into(ring.mm, offset, step, 0.5, 1.7e9, sid, lap)
    body = encode_raw_batch(uuid.uuid4().hex, "a", [], None, ref=ring.ref(0, points))
    assert referenced_records(body) == points
    try:
        assert _post(c.port, body) == 200  # alone, a reference may use the whole budget
        # Another request holds most of the budget: a body on its way (600 KB of 900).
        with socket.create_connection(("127.0.0.1", c.port)) as slow:
            slow.sendall(
                b"POST /api/flightlog/ingest HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/msgpack\r\nContent-Length: 900000\r\n\r\n"
                + b"\0"
                * 600_000
            )
            assert _post(c.port, body) == 503  # its records do not fit beside it
        assert _post(c.port, body) == 200  # and once the other is gone, they do
    finally:
        ring.close(remove=True)
        c.stop()


def test_the_ids_tables_kept_between_batches_are_bounded_in_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ring's ids file may be up to MAX_IDS_BYTES; the reader keeps parsed tables for
    the next batches only up to MAX_TABLE_BYTES of them (the least recent go first), so
    rings with big ids files cannot make the collector hold 256 of them (~330 MB each,
    measured for a 64 MB file). An evicted ring's table is read anew when next named."""
    monkeypatch.setattr(ring_refs, "MAX_TABLE_BYTES", 12_000)
    root = tmp_path / "rings"
    reader = ring_refs.LocalRings([root], 100)
    rings = []
    for n in range(3):
        ring = Ring(root, uuid.uuid4().hex, 8)
        for i in range(100):  # about 5 KB of ids entries each
            sid = ring.series_index("c" * 32, f"ring{n}/key{i:04d}")
        _seq, offset, lap = next(ring.slots)
        ring.pack_into(ring.mm, offset, 0, 1.0, 1e9, sid, lap)
        rings.append(ring)
        _records, table = reader(ring.ref(0, 1))
        assert table[sid] == ("c" * 32, f"ring{n}/key0099")
    held = list(reader._tables)
    assert held == [rings[1].ring_id, rings[2].ring_id]  # the first went over the bound
    assert reader(rings[0].ref(0, 1))[1][99] == ("c" * 32, "ring0/key0099")  # read anew
    assert list(reader._tables) == [rings[2].ring_id, rings[0].ring_id]
    for ring in rings:
        ring.close(remove=True)


def test_the_retry_after_for_references_follows_the_records_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The write rate that sets Retry-After is learnt from the records a reference made
    the collector write, not from its few dozen bytes (which taught it ~1 KB/s: every
    503 said 30 s while the budget was held by references)."""
    monkeypatch.setenv("FLIGHTLOG_SPOOL_DIR", str(tmp_path / "spool"))
    c = start_collector(tmp_path / "store", env=dict(os.environ))
    points = (64 << 20) // RECORD  # the default body limit's worth
    ring = Ring(rings_root(default_spool_root(c.url, None)), uuid.uuid4().hex, points)
    sid = ring.series_index("f" * 32, "loss")
    for step in range(points):
        _seq, offset, lap = next(ring.slots)
        ring.pack_into(ring.mm, offset, step, 0.5, 1.7e9, sid, lap)
    try:
        for _ in range(3):  # the rate is learnt from these
            body = encode_raw_batch(uuid.uuid4().hex, "a", [], None, ref=ring.ref(0, points))
            assert _post(c.port, body) == 200
        with socket.create_connection(("127.0.0.1", c.port)) as slow:
            slow.sendall(
                b"POST /api/flightlog/ingest HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/msgpack\r\nContent-Length: 50000000\r\n\r\n"
                + b"\0"
                * 40_000_000
            )
            h = http.client.HTTPConnection("127.0.0.1", c.port, timeout=60)
            h.request(
                "POST", "/api/flightlog/ingest", body, {"Content-Type": "application/msgpack"}
            )
            response = h.getresponse()
            response.read()
            assert response.status == 503
            # 40 MB held, written at tens of MB/s: seconds, not MAX_RETRY_AFTER (30).
            assert int(response.headers["Retry-After"]) < 30
            h.close()
    finally:
        ring.close(remove=True)
        c.stop()

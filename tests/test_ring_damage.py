"""Damaged and hostile rings: each is adopted as far as it can be, or moved aside, alone.

A node crash leaves zero-filled tails (0x00 is msgpack 0), a disk may cut a file short,
and anyone on the node may plant a symlink, a FIFO or a huge file in a rings directory.
Whatever one ring holds, its lock is released, the other rings of the same poll are
adopted, and a ring that cannot be sent is moved to ``<rings root>/damaged/<name>`` (with
a ``reason`` file) instead of being retried every poll. Unit tests build ring
directories by hand (a dead pid, the agent's file format) and deliver through
``decode_batch``, the collector's own decoder (a ``WireError`` there is the collector's
400); one test plants them beside a real collector.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import signal
import struct
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import msgpack
import pytest
from conftest import start_collector
from helpers import run_status, stored_points
from test_reliability import wait_until

from flightlog.agent.delivery import DeliveryLoop
from flightlog.agent.ring_adopter import send_dead_ring
from flightlog.agent.sender import OK, REJECTED, Ack
from flightlog.agent.spool import Spool
from flightlog.core import ring_format
from flightlog.core.exceptions import WireError
from flightlog.core.ring_adoption import Refused, adopt_dead_rings
from flightlog.core.ring_format import (
    DAMAGED,
    HEADER,
    HEADER_FORMAT,
    MAGIC,
    RECORD,
    RECORD_FORMAT,
    DeadRing,
    RingClaims,
    rings_root,
)
from flightlog.core.wire import decode_batch, encode_raw_batch

START = 12345  # a start time no process has: the owner is dead


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def make_ring(
    root: Path,
    name: str,
    *,
    n: int = 100,
    capacity: int = 1000,
    acked: int = 0,
    series: int = 0,
    ops: bytes | None = None,
    ids: bytes | None = None,
    ring_bytes: int | None = None,
) -> str:
    """A ring directory as an agent that died leaves it: ``n`` published points of series
    ``series`` after ``acked``, a create_run op; returns the run id."""
    d = root / name
    d.mkdir(parents=True)
    run_id = uuid.uuid4().hex
    (d / "lock").write_bytes(b"")
    if ops is None:
        args = {"run_id": run_id, "experiment_id": "0", "run_name": name, "user_id": "u"}
        ops = msgpack.packb([0, "create_run", {**args, "start_time": 1, "tags": {}}])
    (d / "ops").write_bytes(ops)
    (d / "ids").write_bytes(msgpack.packb([2, 0, run_id, "loss"]) if ids is None else ids)
    (d / "cuts").write_bytes(b"")
    head = HEADER_FORMAT.pack(MAGIC, capacity, acked, 0, _dead_pid(), START).ljust(HEADER, b"\0")
    body = bytearray(capacity * RECORD)
    for pos in range(acked, acked + n):
        lap = pos // capacity + 1
        RECORD_FORMAT.pack_into(body, pos % capacity * RECORD, pos, pos * 0.5, 1.0, series, lap)
    data = head + bytes(body)
    (d / "ring").write_bytes(data if ring_bytes is None else data[:ring_bytes])
    return run_id


class Collected:
    """A deliver that decodes as the collector does; what it stored, per run."""

    def __init__(self, root: Path | None = None) -> None:
        self.points: dict[str, int] = {}
        self.ended: set[str] = set()
        self.calls = 0
        self.root = root
        self.most_locked = 0

    async def __call__(self, body: bytes, points: int) -> bool:
        self.calls += 1
        if self.root is not None:
            self.most_locked = max(self.most_locked, len(_locked(self.root)))
        try:
            _bid, _agent, ops, series = decode_batch(body)
        except WireError as e:
            raise Refused(str(e)) from None
        for run_id, _key, steps, _vals, _ts in series:
            self.points[run_id] = self.points.get(run_id, 0) + len(steps)
        for name, args in ops:
            if name == "update_run" and args.get("status") == "FAILED":
                self.ended.add(args["run_id"])
        return True


def _locked(root: Path) -> list[Path]:
    """The ring directories under ``root`` whose lock someone holds."""
    held = []
    for d in root.iterdir():
        if not (d / "lock").is_file():
            continue
        fd = os.open(d / "lock", os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            held.append(d)
        finally:
            os.close(fd)
    return held


def _adopt(spool: Path, deliver: Collected, claims: RingClaims | None = None) -> int:
    coro = adopt_dead_rings([spool], deliver, "test", claims)
    return asyncio.run(asyncio.wait_for(coro, 30))


def _reason(rings: Path, name: str) -> str:
    return (rings / DAMAGED / name / "reason").read_text()


@pytest.fixture()
def spool(tmp_path: Path) -> Path:
    root = tmp_path / "spool" / "http-127.0.0.1-1"
    root.mkdir(parents=True)
    return root


def test_a_zero_filled_tail_ends_the_entries_and_the_other_rings_are_adopted(
    spool: Path,
) -> None:
    """F1: bare ints (0x00) after the entries, in ids and in ops, a whole file of them."""
    rings = rings_root(spool)
    a = make_ring(rings, "a-idstail", ids=None, n=50)
    (rings / "a-idstail" / "ids").write_bytes(
        (rings / "a-idstail" / "ids").read_bytes() + b"\0" * 4096
    )
    b = make_ring(rings, "b-opstail", n=60)
    (rings / "b-opstail" / "ops").write_bytes((rings / "b-opstail" / "ops").read_bytes() + b"\0")
    make_ring(rings, "c-opsint", ops=b"\0\0", n=0)  # the attacker's aa-opsint
    d = make_ring(rings, "d-good", n=70)
    got = Collected()
    _adopt(spool, got)
    assert got.points == {a: 50, b: 60, d: 70}
    assert got.ended == {a, b, d}
    assert not list(rings.glob("*/lock"))  # all sent and deleted, none left locked
    assert not (rings / DAMAGED).exists()


def test_a_ring_cut_short_sends_its_whole_records(spool: Path) -> None:
    """F2: a ring file not a multiple of 4 (nor of 32) long; the missing slots are unsent."""
    rings = rings_root(spool)
    run = make_ring(rings, "a-short", n=100, ring_bytes=HEADER + 50 * RECORD + 3)
    got = Collected()
    _adopt(spool, got)
    assert got.points == {run: 50}
    assert not (rings / "a-short").exists()


def test_a_header_out_of_range_is_moved_aside_and_the_next_ring_adopted(spool: Path) -> None:
    """F2: a lap past 2**32 (the attacker's db-lap), a capacity of 0, a header cut short."""
    rings = rings_root(spool)
    make_ring(rings, "a-lap", capacity=1, acked=1 << 40, n=0)
    make_ring(rings, "b-cap", n=0)
    with open(rings / "b-cap" / "ring", "r+b") as f:
        f.seek(8)
        f.write(struct.pack("<q", 0))
    make_ring(rings, "c-head", ring_bytes=40)
    good = make_ring(rings, "d-good", n=10)
    got = Collected()
    _adopt(spool, got)
    assert got.points == {good: 10}
    assert "last lap" in _reason(rings, "a-lap")
    assert "capacity 0" in _reason(rings, "b-cap")
    # A header cut short reads as no ring at all: never claimed, never moved.
    assert (rings / "c-head").is_dir()
    assert sorted(p.name for p in rings.iterdir()) == ["c-head", DAMAGED]
    assert not _locked(rings)


def test_records_of_an_unknown_series_are_left_out_and_the_ring_moved_aside(
    spool: Path,
) -> None:
    """F2: records naming a series the ids table lacks (the collector refuses the batch)."""
    rings = rings_root(spool)
    run = make_ring(rings, "a-unknown", n=40)
    with open(rings / "a-unknown" / "ring", "r+b") as f:  # 5 records name series 7
        for pos in range(10, 15):
            RECORD_FORMAT.pack_into(buf := bytearray(RECORD), 0, pos, 0.0, 1.0, 7, 1)
            f.seek(HEADER + pos * RECORD)
            f.write(buf)
    got = Collected()
    _adopt(spool, got)
    assert got.points == {run: 35}  # the rest is recovered
    assert run in got.ended
    assert "5 record(s) name a series not in its ids" in _reason(rings, "a-unknown")
    calls = got.calls
    _adopt(spool, got)  # a second poll: nothing is sent again
    assert got.calls == calls


def test_a_refused_batch_moves_the_ring_aside_once(spool: Path) -> None:
    """F2: the destination refuses (a 400): not retried every poll, the rest still sent."""
    rings = rings_root(spool)
    run = make_ring(rings, "a-refused", n=30)
    other = make_ring(rings, "b-good", n=20)
    got = Collected()
    real = got.__call__

    async def refuse_a(body: bytes, points: int) -> bool:
        if b"ring-a-refused-0-0" in body:
            raise Refused("bad batch")
        return await real(body, points)

    asyncio.run(adopt_dead_rings([spool], refuse_a, "test"))
    assert got.points == {other: 20}
    assert run in got.ended  # its end batch still went
    assert "bad batch" in _reason(rings, "a-refused")
    assert [p.name for p in rings.iterdir()] == [DAMAGED]


@pytest.mark.parametrize("target", ["fifo", "/dev/zero", "huge", "dir"])
@pytest.mark.parametrize("name", ["ids", "ops", "cuts"])
def test_a_planted_file_is_refused_without_blocking_or_reading_it(
    spool: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: str, name: str
) -> None:
    """F3: a symlink to a FIFO or /dev/zero, a file over its bound, a directory."""
    monkeypatch.setattr(ring_format, f"MAX_{name.upper()}_BYTES", 1 << 16)
    rings = rings_root(spool)
    make_ring(rings, "a-planted")
    planted = rings / "a-planted" / name
    planted.unlink()
    if target == "fifo":
        os.mkfifo(tmp_path / "fifo")
        planted.symlink_to(tmp_path / "fifo")
    elif target == "huge":
        with open(planted, "wb") as f:
            f.truncate((1 << 16) + 1)
    elif target == "dir":
        planted.mkdir()
    else:
        planted.symlink_to(target)
    good = make_ring(rings, "b-good", n=5)
    got = Collected()
    _adopt(spool, got)  # within 30 s, or wait_for raises
    assert got.points == {good: 5}
    reason = _reason(rings, "a-planted")
    assert name in reason, reason
    assert not _locked(rings / DAMAGED)


def test_a_fifo_ring_file_is_skipped_without_blocking(spool: Path, tmp_path: Path) -> None:
    """F3: the ring file itself a FIFO (direct or by symlink): not a ring, never opened."""
    rings = rings_root(spool)
    make_ring(rings, "a-fifo")
    (rings / "a-fifo" / "ring").unlink()
    os.mkfifo(rings / "a-fifo" / "ring")
    make_ring(rings, "b-link")
    (rings / "b-link" / "ring").unlink()
    (rings / "b-link" / "ring").symlink_to(rings / "a-fifo" / "ring")
    good = make_ring(rings, "c-good", n=3)
    got = Collected()
    _adopt(spool, got)
    assert got.points == {good: 3}


def test_rings_are_adopted_one_at_a_time(spool: Path) -> None:
    """F4: while one ring is sent, no other is locked (nor read: memory holds one)."""
    rings = rings_root(spool)
    runs = {make_ring(rings, f"r{i}", n=10 + i) for i in range(5)}
    got = Collected(rings)
    _adopt(spool, got)
    assert set(got.points) == runs
    assert got.most_locked == 1


def test_a_ring_that_cannot_be_moved_aside_is_not_read_again_until_it_changes(
    spool: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """F4: damaged, and ``damaged`` cannot be made (a file holds the name)."""
    rings = rings_root(spool)
    make_ring(rings, "a-lap", capacity=1, acked=1 << 40, n=0)
    (rings / DAMAGED).write_bytes(b"")
    opened: list[Path] = []
    real_open = DeadRing.open.__func__  # type: ignore[attr-defined]

    def spy(cls: Any, directory: Path, fd: int) -> DeadRing:
        opened.append(directory)
        return real_open(cls, directory, fd)

    monkeypatch.setattr(DeadRing, "open", classmethod(spy))
    claims = RingClaims()
    for _ in range(3):
        _adopt(spool, Collected(), claims)
    assert opened == [rings / "a-lap"]  # read once, not every poll
    assert not _locked(rings)
    time.sleep(0.01)
    (rings / "a-lap" / "cuts").write_bytes(b"\0" * 16)  # changed: read again
    _adopt(spool, Collected(), claims)
    assert len(opened) == 2


class _Rejecting:
    """A sender that rejects (400) the batches holding ``marker``, accepts the rest."""

    def __init__(self, marker: bytes) -> None:
        self.marker = marker
        self.sent: list[bytes] = []

    def send(self, body: bytes, timeout: float | None = None) -> Ack:
        if self.marker in body:
            return Ack(REJECTED, 400, [], 0.0, "HTTP 400: refused")
        self.sent.append(body)
        return Ack(OK, 200, [], 0.0, "")


def test_the_agent_adopter_moves_a_refused_ring_aside_as_the_collector_does(
    spool: Path,
) -> None:
    """The next agent on the node: same claims, same damage handling, same quarantine."""
    rings = rings_root(spool)
    make_ring(rings, "a-refused", n=30)
    make_ring(rings, "b-opsint", ops=b"\0\0\0", n=4)
    make_ring(rings, "c-lap", capacity=1, acked=1 << 40, n=0)
    sender = _Rejecting(b"ring-a-refused-0-0")
    claims = RingClaims()
    for d in claims.candidates(rings):
        ring = claims.claim(d)
        if ring is not None:
            assert send_dead_ring(ring, DeliveryLoop(sender), "test", claims)
    assert "HTTP 400: refused" in _reason(rings, "a-refused")
    assert "last lap" in _reason(rings, "c-lap")
    assert sorted(p.name for p in rings.iterdir()) == [DAMAGED]  # b-opsint sent, deleted
    assert not _locked(rings / DAMAGED)


def test_a_real_collector_adopts_around_damaged_rings_and_still_stops_on_sigterm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The node's collector: a FIFO planted as ids (which wedged its watch, and then its
    SIGTERM), a lap past 2**32, a zero-filled ops tail and a ring beside them."""
    monkeypatch.setenv("FLIGHTLOG_METRIC_RING", "1")
    monkeypatch.setenv("FLIGHTLOG_SPOOL_DIR", str(tmp_path / "spool"))
    c = start_collector(tmp_path / "store")
    try:
        rings = rings_root(tmp_path / "spool" / f"http-127.0.0.1-{c.port}")
        stage = tmp_path / "stage"  # made whole here, then moved in: the watch is polling
        make_ring(stage, "a-fifo")
        (stage / "a-fifo" / "ids").unlink()
        os.mkfifo(stage / "a-fifo" / "ids")
        make_ring(stage, "b-lap", capacity=1, acked=1 << 40, n=0)
        tail = make_ring(stage, "c-tail", n=500)
        with open(stage / "c-tail" / "ops", "ab") as f:
            f.write(b"\0" * 512)
        good = make_ring(stage, "d-good", n=1000)
        rings.mkdir(parents=True, exist_ok=True)
        for d in stage.iterdir():
            d.rename(rings / d.name)
        wait_until(
            lambda: sorted(p.name for p in rings.iterdir()) == [DAMAGED],
            15,
            "every ring adopted or moved aside",
        )
        assert stored_points(c.db, tail) == 500
        assert stored_points(c.db, good) == 1000
        assert run_status(c.db, good) == "FAILED"
        assert sorted(p.name for p in (rings / DAMAGED).iterdir()) == ["a-fifo", "b-lap"]
        began = time.monotonic()
        c.stop(signal.SIGTERM)
        assert time.monotonic() - began < 30
    finally:
        c.stop(signal.SIGKILL)


def test_a_refused_spool_record_is_skipped_not_retried_every_poll(spool: Path) -> None:
    """A dead process's spool whose one record the collector refuses (a 400): the others
    are stored and the directory goes, as the agent's adopter does (``send_claim``)."""
    mine = Spool(spool, owner="deadbeef" * 4, tracking_uri="http://127.0.0.1:1")
    good = encode_raw_batch("b1", "a", [], None)
    for seq, body in enumerate([good, b"\xc1 not msgpack", good], 1):
        mine.append(seq, 1, body)
    mine.close()
    mine.directory.rename(spool / f"{_dead_pid()}-deadbeef")
    got = Collected()
    _adopt(spool, got)
    assert got.calls == 3
    assert not [p for p in spool.iterdir() if p.is_dir()]
    _adopt(spool, got)
    assert got.calls == 3


def test_a_planted_damaged_symlink_moves_nothing_out_of_the_rings_root(
    spool: Path, tmp_path: Path
) -> None:
    rings = rings_root(spool)
    make_ring(rings, "a-lap", capacity=1, acked=1 << 40, n=0)
    (tmp_path / "elsewhere").mkdir()
    (rings / DAMAGED).symlink_to(tmp_path / "elsewhere")
    _adopt(spool, Collected())
    assert (rings / "a-lap").is_dir()
    assert not list((tmp_path / "elsewhere").iterdir())
    assert not _locked(rings)

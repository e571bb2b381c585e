"""The metric ring: this process's metric points in a memory-mapped file.

A training process that is SIGKILLed (the OOM killer) or ends through ``os._exit()`` runs
no exit handler; what sat in the agent's memory was lost. The ring keeps every point in
a file mapped MAP_SHARED, so the page cache holds it the moment ``log_metric`` returns
and another process can read it after the owner is gone. One directory per process::

    <spool root>-rings/<agent id>/
        lock   flock()ed by the owner for as long as it lives (as spool directories)
        ring   HEADER bytes, then CAPACITY records of RECORD_FORMAT
        ids    append-only msgpack [2, index, run id, key]: the series indexes
        ops    append-only msgpack [index, name, args]: create_run, params, tags, end ...
        cuts   append-only pairs of int64 (ring end, ops end): the batches the agent cut

A record is (step, value, timestamp in seconds, series index, lap + 1), 32 bytes. Position
``p`` lives in slot ``p % capacity`` of lap ``p // capacity``; a slot is published when
its last field equals its position's lap + 1 (written last, so a write cut short by the
owner's death is not taken). A slot never holds a later lap than the position a reader
looks for (a lap is written only once the one before it is acknowledged), so a stale
slot from an earlier lap, a fresh zero slot and a slot reserved but not yet written all
fail the test, and a block of one lap is checked with one bytes comparison of its laps
column against the lap repeated (``published_prefix``); a reader never takes half a
write (``pack_into`` writes the record in one C call, under the GIL).

The hot path reserves a slot with one ``next()`` on ``Ring.slots``, a zip of C iterators
yielding (position, byte offset, lap + 1): atomic under the GIL and no arithmetic in
Python. On a free-threaded build (no GIL) reservation, write and the reader's copy take
``Ring.lock`` instead (``Ring.locked``). The agent ships the records as they are (the
wire's ``r`` form, ``flightlog.core.wire``) with the ``ids`` table beside them.

The header holds what the collector acknowledged (ring and ops positions), written by
the sender after each acknowledgement. Batch ids are made from ring and ops positions
(``batch_id``), and every cut is appended to ``cuts`` before its batch is sent, so a
process that adopts a dead ring re-cuts the same batches with the same ids: a batch the
collector committed just before the owner died is deduplicated, not stored twice.

Ids, ops and cuts are written with ``os.write`` before anything that depends on them is
published: the kernel holds them across a SIGKILL of the writer. A node crash (kernel
panic, power loss) loses what only the page cache held, so the sender fdatasyncs ids,
ops and cuts (``sync_journal``) before it sends a batch: an adopter after the reboot
then re-cuts the batches the collector may have committed with their own ids (were the
cut lost, its first re-cut batch would carry the committed batch's id with more points
in it, and the extra points would be dropped as a duplicate). That is at most one round
of fdatasync per send, on the sender's thread, which waits for the collector's answer
anyway; never on ``log_metric``'s path, nor on the packer's. The header's acked
positions and the records are not synced: a stale ack after a crash only makes an
adopter resend batches the collector deduplicates by id, and points nobody
acknowledged are not promised across a node crash.

The file format, and the one reader of a dead process's ring (``DeadRing``), live in
``flightlog.core.ring_format``: the node's collector and sidecar adopt rings too.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import mmap
import os
import sys
import threading
from pathlib import Path
from typing import Any

import msgpack

from flightlog.core.ring_format import (
    ACKED,
    ACKED_AT,
    CUT,
    HEADER,
    HEADER_FORMAT,
    LAP_AT,
    MAGIC,
    RECORD,
    RECORD_FORMAT,
    SERIES,
    batch_id,
    own_start,
    published_prefix,
    read_published,
    remove_ring,
    rings_root,
)
from flightlog.core.wire import RING_WIRE_VERSION, RingRef, ids_stream

__all__ = [
    "HEADER",
    "RECORD",
    "RECORD_FORMAT",
    "Ring",
    "batch_id",
    "encode_points",
    "record_runs",
    "rings_root",
]
IDS_WHOLE = 256 * 1024  # up to this size a batch carries the whole ids table
GIL = getattr(sys, "_is_gil_enabled", lambda: True)()


def _append(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _sync(fd: int) -> None:
    fdatasync = getattr(os, "fdatasync", os.fsync)  # macOS has no fdatasync
    with contextlib.suppress(OSError):  # closed (the agent closing): nothing to sync
        fdatasync(fd)


class Ring:
    """The owner's side: interning, the hot path's slots, the ops journal, the header."""

    def __init__(self, root: Path, ring_id: str, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"ring capacity must be at least 1, not {capacity}")
        self.ring_id = ring_id
        self.capacity = capacity
        self.directory = root / ring_id
        self.directory.mkdir(parents=True, mode=0o700)
        d = self.directory
        self._lock_fd = os.open(d / "lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW
        self._ids_fd = os.open(d / "ids", flags, 0o600)
        self._ops_fd = os.open(d / "ops", flags, 0o600)
        self._cuts_fd = os.open(d / "cuts", flags, 0o600)
        fd = os.open(d / "ring", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            os.ftruncate(fd, HEADER + capacity * RECORD)  # sparse: pages come when written
            self.mm = mmap.mmap(fd, HEADER + capacity * RECORD, mmap.MAP_SHARED)
        finally:
            os.close(fd)
        self._fds = [self._ids_fd, self._ops_fd, self._cuts_fd, self._lock_fd]
        self.pid, self.started = os.getpid(), own_start()
        HEADER_FORMAT.pack_into(self.mm, 0, MAGIC, capacity, 0, 0, self.pid, self.started)
        self.pack_into = RECORD_FORMAT.pack_into
        self.counter = itertools.count()
        # The hot path's reservation: one next() yields (position, byte offset of its
        # slot, lap + 1), all computed in C (atomic under the GIL, no arithmetic in
        # Python). The offsets come from a range per lap, so no table is held.
        self.slots = zip(
            self.counter,
            itertools.chain.from_iterable(
                itertools.repeat(range(HEADER, HEADER + capacity * RECORD, RECORD))
            ),
            itertools.chain.from_iterable(
                map(itertools.repeat, itertools.count(1), itertools.repeat(capacity))
            ),
            strict=False,  # all three are endless
        )
        self.locked = not GIL
        self.lock = threading.Lock()
        # Series (run id, key) -> small index, per run: the hot path's one dict lookup.
        self.key_ids: dict[str, dict[str, int]] = {}
        self.series: list[tuple[str, str]] = []
        # The ``ids`` file's bytes as well (a msgpack stream): each batch carries it.
        self.ids_blob = b""
        self._intern_lock = threading.Lock()
        self.ops_lock = threading.Lock()  # journal and queue take ops in one order
        self.ops_count = 0
        # Which journal files were appended to since the last sync_journal(): each is
        # synced only when it changed (ids and ops rarely do), for each fdatasync costs
        # the sender a wait for the GIL when it returns. Set after each append, cleared
        # before each sync: an append racing a sync is covered by it or flags the next.
        self._unsynced = {self._ids_fd: False, self._ops_fd: False, self._cuts_fd: False}
        # Reserved positions at or past ``limit`` take the slow path (``Agent.ring_full``):
        # the packer is woken, and past acked + capacity the point goes to ``overflow``.
        self.acked = 0
        self.acked_ops = 0
        self.limit = capacity
        self.overflow: dict[int, Any] = {}  # seq -> (sid, step, value, ts), or None

    # -- interning (rare: the first point of a series) ---------------------------------

    def keys_of(self, run_id: str) -> dict[str, int]:
        """The key -> series index table of ``run_id`` (filled by ``series_index``)."""
        kd = self.key_ids.get(run_id)
        if kd is None:
            with self._intern_lock:
                kd = self.key_ids.setdefault(run_id, {})
        return kd

    def series_index(self, run_id: str, key: str) -> int:
        """The small index of (``run_id``, ``key``), written to ``ids`` before first use."""
        kd = self.keys_of(run_id)
        i = kd.get(key)
        if i is not None:
            return i
        with self._intern_lock:
            i = kd.get(key)
            if i is None:
                i = len(self.series)
                entry = msgpack.packb([SERIES, i, run_id, key])
                _append(self._ids_fd, entry)
                self._unsynced[self._ids_fd] = True
                self.series.append((run_id, key))
                self.ids_blob += entry
                kd[key] = i  # published last: a reader of the ring finds the name first
            return i

    def ids_for(self, chunks: list[Any]) -> bytes:
        """The ``ids`` stream a batch of these record blocks carries: the whole table
        while it is small (its bytes as they are), else only the series they use."""
        blob = self.ids_blob
        if len(blob) <= IDS_WHOLE:
            return blob
        return ids_stream(chunks, self.series.__getitem__)

    # -- the hot path's helpers ----------------------------------------------------------

    def write_at(self, seq: int, sid: int, step: int, value: float, ts: float) -> None:
        """Write a reserved slot (the slow path, below acked + capacity)."""
        lap, slot = divmod(seq, self.capacity)
        self.pack_into(self.mm, HEADER + slot * RECORD, step, value, ts, sid, lap + 1)

    def reserve(self) -> int:
        """Reserve one position (the slow paths; the hot path takes ``next(slots)``)."""
        seq: int = next(self.slots)[0]
        return seq

    def reserved(self) -> int:
        """Positions reserved so far (a peek at the counter)."""
        r = repr(self.counter)  # "count(N)"
        return int(r[6:-1])

    # -- ops ---------------------------------------------------------------------------

    def journal_op(self, name: str, args: dict[str, Any]) -> int:
        """Append an op to ``ops``; returns its index. The caller holds ``ops_lock``."""
        i = self.ops_count
        _append(self._ops_fd, msgpack.packb([i, name, args], use_bin_type=True))
        self._unsynced[self._ops_fd] = True
        self.ops_count = i + 1
        return i

    # -- the packer's and the sender's side ---------------------------------------------

    def take(self, start: int, end: int) -> tuple[int, list[Any], list[Any]]:
        """The published records in [start, end): (new start, raw record blocks, overflow
        points (sid, step, value, ts), None for a point that was dropped).

        Stops at the first slot that is neither published nor in ``overflow`` (a write in
        flight on another thread).
        """
        if self.locked:
            with self.lock:
                return _take(self.mm, self.capacity, start, end, self.overflow)
        return _take(self.mm, self.capacity, start, end, self.overflow)

    def ref(self, start: int, end: int) -> RingRef:
        """The wire's reference to records [start, end) of this ring (``r.ref``)."""
        return (self.ring_id, self.pid, self.started, start, end)

    def materialize(self, body: bytes) -> bytes | None:
        """``body`` with the records its ``r.ref`` names copied in (the wire's ``rec``
        form), for the disk spool or a collector that cannot read this ring; None if
        it holds no reference, or its slots no longer hold its records (written over
        once the batch was spooled: the spool's copy is the one to send)."""
        batch = msgpack.unpackb(body, raw=False)
        ref = batch.get("r", {}).get("ref")
        if ref is None:
            return None
        _ring_id, _pid, _started, start, end = ref
        chunks = self.records(start, end)
        if chunks is None:
            return None
        batch["v"] = RING_WIRE_VERSION
        batch["r"] = {"rec": b"".join(chunks), "ids": self.ids_for(chunks)}
        packed: bytes = msgpack.packb(batch, use_bin_type=True)
        return packed

    def records(self, start: int, end: int) -> list[bytes] | None:
        """Copies of the published records [start, end); None if one is not."""
        mm = self.mm
        parts, upto = read_published(
            lambda offset, n: mm[offset : offset + n], self.capacity, start, end
        )
        return parts if upto == end else None

    def cut(self, ring_end: int, ops_end: int) -> None:
        """Record a batch boundary before the batch is sent (see the module docstring)."""
        _append(self._cuts_fd, CUT.pack(ring_end, ops_end))
        self._unsynced[self._cuts_fd] = True

    def sync_journal(self) -> None:
        """Make ids, ops and cuts durable (the sender, before it sends a batch): a node
        crash must not leave an adopter to re-cut a committed batch differently. One
        call covers every cut made before it, so it costs at most one round of
        fdatasync per send, and none when nothing was cut since the last."""
        for fd, dirty in self._unsynced.items():  # ids, ops, cuts: a reader's order
            if dirty:
                self._unsynced[fd] = False
                _sync(fd)

    def set_acked(self, ring_pos: int, ops_pos: int) -> None:
        """Everything before these positions is acknowledged or in the disk spool."""
        ACKED.pack_into(self.mm, ACKED_AT, ring_pos, ops_pos)
        self.acked = ring_pos
        self.acked_ops = ops_pos

    def close(self, *, remove: bool) -> None:
        """Close the files; ``remove`` (everything acknowledged) deletes the directory.
        The map stays (a thread may still be logging): every later point takes the
        slow path (``limit`` -1), which counts it as dropped."""
        self.limit = -1
        if remove:
            remove_ring(self.directory)
        self._close_fds()

    def _close_fds(self) -> None:
        # Each descriptor once: its number may be reused at once (a pipe of a subprocess).
        fds, self._fds = self._fds, []
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)

    def forget_after_fork(self) -> None:
        """In a forked child: close the parent's descriptors (its flock stays the parent's)
        and send every later write to the slow path (the map is the parent's)."""
        self.limit = -1
        self._close_fds()


_MISSING = object()


def _take(
    mm: Any, cap: int, start: int, end: int, overflow: dict[int, Any]
) -> tuple[int, list[Any], list[Any]]:
    # Views of the map, not copies: the slots taken stay as they are until they are
    # acknowledged (no lap overwrites them before), and the batch's encoding copies
    # them once.
    chunks: list[Any] = []
    extra: list[Any] = []
    pos = start
    view = memoryview(mm)
    while pos < end:
        slot = pos % cap
        n = min(end - pos, cap - slot)  # up to the end of the file, then wrap
        raw = view[HEADER + slot * RECORD : HEADER + (slot + n) * RECORD]
        good = published_prefix(raw, pos // cap + 1, n)
        if good:
            chunks.append(raw if good == n else raw[: good * RECORD])
            pos += good
        if good < n:
            point = overflow.pop(pos, _MISSING)
            if point is _MISSING:
                break  # a write in flight on another thread
            extra.append(point)
            pos += 1
    return pos, chunks, extra


def encode_points(points: list[tuple[int, int, float, float]]) -> bytes:
    """Records (lap 0) of points that found the ring full and were kept aside (rare)."""
    pack = RECORD_FORMAT.pack
    return b"".join(pack(step, value, ts, sid, 0) for sid, step, value, ts in points)


def record_runs(chunks: list[Any], series: list[tuple[str, str]]) -> list[str]:
    """The run id of every record in ``chunks`` (a rare path: counting dropped points)."""
    out: list[str] = []
    for chunk in chunks:
        out += [series[i][0] for i in memoryview(chunk).cast("I")[LAP_AT - 1 :: RECORD // 4]]
    return out

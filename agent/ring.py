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
column against the lap repeated (``_published_prefix``); a reader never takes half a
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
published: the kernel holds them across a SIGKILL of the writer.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import mmap
import os
import struct
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack

MAGIC = b"FLRING02"
# magic, capacity, acked ring position, acked ops index, owner pid
HEADER_FORMAT = struct.Struct("<8sqqqq")
HEADER = 64  # bytes before the first record
RECORD_FORMAT = struct.Struct("<qddII")  # step, value, ts, series index, lap + 1
RECORD = RECORD_FORMAT.size  # 32
QWORDS = RECORD // 8
LAP_AT = RECORD // 4 - 1  # the lap's position in the record as uint32 words
_ACKED_AT = 16  # offset of the acked positions in the header
_ACKED = struct.Struct("<qq")
_CUT = struct.Struct("<qq")
SERIES = 2  # kind of an ``ids`` entry: [SERIES, index, run id, key]
IDS_WHOLE = 256 * 1024  # up to this size a batch carries the whole ids table
GIL = getattr(sys, "_is_gil_enabled", lambda: True)()


def rings_root(spool_root: Path) -> Path:
    """Where the rings of the processes that log to one destination live (beside its
    spool root, not in it: the spool adopter claims every directory in that one)."""
    return spool_root.with_name(spool_root.name + "-rings")


def batch_id(ring_id: str, ring_start: int, ops_start: int) -> str:
    """The id of the batch that starts at these positions: the same in any process."""
    return f"ring-{ring_id}-{ring_start}-{ops_start}"


def _append(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


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
        HEADER_FORMAT.pack_into(self.mm, 0, MAGIC, capacity, 0, 0, os.getpid())
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
        used: set[int] = set()
        for chunk in chunks:
            used.update(memoryview(chunk).cast("I")[LAP_AT - 1 :: RECORD // 4])
        series = self.series
        return b"".join(msgpack.packb([SERIES, i, *series[i]]) for i in sorted(used))

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

    def cut(self, ring_end: int, ops_end: int) -> None:
        """Record a batch boundary before the batch is sent (see the module docstring)."""
        _append(self._cuts_fd, _CUT.pack(ring_end, ops_end))

    def set_acked(self, ring_pos: int, ops_pos: int) -> None:
        """Everything before these positions is acknowledged or in the disk spool."""
        _ACKED.pack_into(self.mm, _ACKED_AT, ring_pos, ops_pos)
        self.acked = ring_pos
        self.acked_ops = ops_pos

    def close(self, *, remove: bool) -> None:
        """Close the files; ``remove`` (everything acknowledged) deletes the directory.
        The map stays (a thread may still be logging): every later point takes the
        slow path (``limit`` -1), which counts it as dropped."""
        self.limit = -1
        if remove:
            _remove(self.directory)
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
        good = _published_prefix(raw, pos // cap + 1, n)
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


def _published_prefix(raw: Any, lap: int, n: int) -> int:
    """How many records from the start of ``raw`` (one lap's slots) carry ``lap``.

    A slot holds at most its position's lap (a later lap is written only once this
    one is acknowledged), so an unwritten slot shows an earlier lap or zero: the laps
    column of a fully published block equals ``lap`` repeated, one bytes comparison.
    """
    laps = memoryview(raw).cast("I")[LAP_AT :: RECORD // 4].tobytes()
    want = lap.to_bytes(4, sys.byteorder) * n
    if laps == want:
        return n
    lo, hi = 0, n  # the first mismatch is in [lo, hi): bisect on equal prefixes
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if laps[: mid * 4] == want[: mid * 4]:
            lo = mid
        else:
            hi = mid
    return lo if laps[: hi * 4] != want[: hi * 4] else hi


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


def _remove(directory: Path) -> None:
    for name in ("ring", "ids", "ops", "cuts", "lock"):
        with contextlib.suppress(OSError):
            (directory / name).unlink()
    with contextlib.suppress(OSError):
        directory.rmdir()


# -- a dead process's ring ---------------------------------------------------------------


class DeadRing:
    """A ring whose owner is gone, locked by us while we send what it holds."""

    def __init__(self, directory: Path, lock_fd: int) -> None:
        self.directory = directory
        self.lock_fd = lock_fd
        self.ring_id = directory.name
        data = (directory / "ring").read_bytes()
        magic, self.capacity, self.acked, self.acked_ops, self.pid = HEADER_FORMAT.unpack_from(data)
        if magic != MAGIC:
            raise ValueError(f"{directory}: not a flightlog ring")
        self.data = data
        # The ids table as it reached the file: its whole entries (a write cut short by
        # the owner's death ends it), as a dict and as the bytes a batch carries.
        entries, used = _unpack_prefix(_read(directory / "ids"))
        self.series: dict[int, tuple[str, str]] = {
            e[1]: (e[2], e[3]) for e in entries if len(e) == 4 and e[0] == SERIES
        }
        self.ids_blob = used
        self.ops = [(i, name, args) for i, name, args in _unpack_all(directory / "ops")]
        raw = _read(directory / "cuts")
        raw = raw[: len(raw) - len(raw) % _CUT.size]
        self.cuts = [c for c in _CUT.iter_unpack(raw)]

    @classmethod
    def claim(cls, directory: Path) -> DeadRing | None:
        """Lock ``directory`` if its owner is gone (None if it lives or is claimed)."""
        try:
            fd = os.open(directory / "lock", os.O_RDWR | os.O_NOFOLLOW)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return None
        try:
            return cls(directory, fd)
        except (OSError, ValueError, struct.error):
            os.close(fd)
            return None

    def end(self) -> int:
        """The ring position after the last published record."""
        pos = self.acked
        end = self.acked + self.capacity
        while pos < end:
            slot = pos % self.capacity
            n = min(end - pos, self.capacity - slot, 65536)
            raw = self.data[HEADER + slot * RECORD : HEADER + (slot + n) * RECORD]
            good = _published_prefix(raw, pos // self.capacity + 1, n)
            pos += good
            if good < n:
                break
        return pos

    def batches(self, max_points: int) -> Iterator[tuple[str, int, int, int, int]]:
        """(batch id, ring start, ring end, ops start, ops end) of what is unacknowledged:
        first the cuts the owner made (same ids), then the rest in new cuts."""
        ring_end = self.end()
        ops_end = len(self.ops)
        rpos, opos = self.acked, self.acked_ops
        for r, o in self.cuts:
            if r <= rpos and o <= opos:
                continue
            r, o = min(r, ring_end), min(o, ops_end)
            yield batch_id(self.ring_id, rpos, opos), rpos, r, opos, o
            rpos, opos = max(rpos, r), max(opos, o)
        while rpos < ring_end or opos < ops_end:
            r = min(ring_end, rpos + max_points)
            yield batch_id(self.ring_id, rpos, opos), rpos, r, opos, ops_end
            rpos, opos = r, ops_end

    def records(self, start: int, end: int) -> list[bytes]:
        """The raw records in [start, end)."""
        chunks = []
        pos = start
        while pos < end:
            slot = pos % self.capacity
            n = min(end - pos, self.capacity - slot)
            chunks.append(self.data[HEADER + slot * RECORD : HEADER + (slot + n) * RECORD])
            pos += n
        return chunks

    def open_runs(self) -> list[str]:
        """Runs the owner created and did not end (no update_run with an end time)."""
        open_: dict[str, None] = {}
        for _, name, args in self.ops:
            if name == "create_run":
                open_[args["run_id"]] = None
            elif name == "update_run" and args.get("end_time") is not None:
                open_.pop(args.get("run_id"), None)
        return list(open_)

    def finish(self) -> None:
        """Delete the directory (everything was sent) and drop the lock."""
        _remove(self.directory)
        with contextlib.suppress(OSError):
            os.close(self.lock_fd)

    def release(self) -> None:
        """Keep the directory for a later adopter (the collector is away)."""
        with contextlib.suppress(OSError):
            os.close(self.lock_fd)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


def _unpack_prefix(data: bytes) -> tuple[list[Any], bytes]:
    """The whole msgpack items at the start of ``data``, and the bytes they span."""
    out = []
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
    unpacker.feed(data)
    used = 0
    with contextlib.suppress(msgpack.OutOfData, ValueError):
        for item in unpacker:
            out.append(item)
            used = unpacker.tell()
    return out, data[:used]


def _unpack_all(path: Path) -> list[Any]:
    out = []
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
    unpacker.feed(_read(path))
    with contextlib.suppress(msgpack.OutOfData, ValueError):
        for item in unpacker:  # a record torn by the owner's death ends the list
            out.append(item)
    return out


def claim_dead_rings(root: Path, exclude: Path | None = None) -> list[DeadRing]:
    """Lock every ring directory under ``root`` whose owner is gone."""
    try:
        dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink())
    except OSError:
        return []
    claimed = []
    for d in dirs:
        if d == exclude:
            continue
        c = DeadRing.claim(d)
        if c is not None:
            claimed.append(c)
    return claimed


def now_ms() -> int:
    """Milliseconds since the epoch (the end time of a run a dead process left open)."""
    return int(time.time() * 1000)

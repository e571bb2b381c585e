"""The metric ring's file format, and the one reader of a ring whose owner died.

The owner's side (``flightlog.agent.ring.Ring``) writes these files; whoever adopts a
dead process's ring reads them here: the next agent on the node
(``flightlog.agent.adopter``), the node's collector (``flightlog.collector.ring_watch``)
and the node sidecar (``flightlog.agent.forward``). One directory per process::

    <spool root>-rings/<agent id>/
        lock   flock()ed by the owner for as long as it lives (as spool directories)
        ring   HEADER bytes, then CAPACITY records of RECORD_FORMAT
        ids    append-only msgpack [2, index, run id, key]: the series indexes
        ops    append-only msgpack [index, name, args]: create_run, params, tags, end ...
        cuts   append-only pairs of int64 (ring end, ops end): the batches the agent cut

The header holds the owner's pid and its start time (``/proc/<pid>/stat`` field 22, in
clock ticks since boot), written when the ring is made: a ring's owner is dead when no
process with that pid and that start time lives (a zombie counts as dead), so a pid
reused by another process cannot keep a dead ring waiting, nor make a live one look
dead. The owner's flock is the second check: an adopter takes it before it reads, so a
ring is adopted by one process at a time and never while its owner holds it. Where
``/proc`` is missing (not Linux) the start time is 0 and the flock alone decides.

A record is (step, value, timestamp in seconds, series index, lap + 1), 32 bytes; a slot
is published when its last field equals its position's lap + 1 (written last). See
``flightlog.agent.ring`` for why a reader never takes half a write.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import struct
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack

from flightlog.core.ops import SET_TAGS, UPDATE_RUN
from flightlog.core.spool_format import lock_or_close
from flightlog.core.wire import encode_raw_batch

log = logging.getLogger("flightlog.rings")

MAGIC = b"FLRING02"
# magic, capacity, acked ring position, acked ops index, owner pid, owner start ticks
HEADER_FORMAT = struct.Struct("<8sqqqqq")
HEADER = 64  # bytes before the first record
RECORD_FORMAT = struct.Struct("<qddII")  # step, value, ts, series index, lap + 1
RECORD = RECORD_FORMAT.size  # 32
LAP_AT = RECORD // 4 - 1  # the lap's position in the record as uint32 words
ACKED_AT = 16  # offset of the acked positions in the header
ACKED = struct.Struct("<qq")
CUT = struct.Struct("<qq")
SERIES = 2  # kind of an ``ids`` entry: [SERIES, index, run id, key]
FILES = ("ring", "ids", "ops", "cuts", "lock")
#: The tag an adopter sets on the runs a dead process left open, beside FAILED (the
#: collector's heartbeat watch sets ``heartbeat_timeout`` there).
END_REASON_TAG = "flightlog.endReason"
PROCESS_DIED = "process_died"
#: Points per batch an adopter sends.
BATCH_POINTS = 100_000
#: Ops per batch an adopter sends (the collector takes at most 100,000 in one batch).
BATCH_OPS = 10_000
#: The most an adopter reads of a ring: its capacity in records (the agent's queue bound
#: is far below), and the bytes of its ids (one entry per series), ops and cuts files. A
#: file past its bound, or not a regular file (a symlink, a FIFO, a device), was not
#: written by an agent: the ring is moved aside (``DAMAGED``), never read.
MAX_CAPACITY = 1 << 27
MAX_IDS_BYTES = 64 << 20
MAX_OPS_BYTES = 256 << 20
MAX_CUTS_BYTES = 16 << 20
#: Where damaged rings go, under the rings root: ``<rings root>/damaged/<agent id>``, with
#: a ``reason`` file. Nothing reads them again; an operator may inspect or delete them.
DAMAGED = "damaged"


def rings_root(spool_root: Path) -> Path:
    """Where the rings of the processes that log to one destination live (beside its
    spool root, not in it: the spool adopter claims every directory in that one)."""
    return spool_root.with_name(spool_root.name + "-rings")


def batch_id(ring_id: str, ring_start: int, ops_start: int) -> str:
    """The id of the batch that starts at these positions: the same in any process."""
    return f"ring-{ring_id}-{ring_start}-{ops_start}"


# -- whether the owner lives ---------------------------------------------------------------


def process_start(pid: int) -> int | None:
    """When process ``pid`` started, in clock ticks since boot (``/proc/<pid>/stat`` field
    22); None if there is no such process, it is a zombie, or there is no ``/proc``."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces and ')'.
    fields = stat[stat.rfind(b")") + 2 :].split()
    if len(fields) < 20 or fields[0] in (b"Z", b"X"):
        return None  # a zombie is dead: it runs no more code and holds no lock
    return int(fields[19])


def own_start() -> int:
    """This process's start time for the ring header (0 where there is no ``/proc``)."""
    return process_start(os.getpid()) or 0


def owner_alive(pid: int, start: int) -> bool | None:
    """Whether the process that made a ring lives: None when the ring recorded no start
    time (not Linux), which leaves the decision to the flock."""
    if start == 0:
        return None
    return process_start(pid) == start


def read_owner(directory: Path) -> tuple[int, int] | None:
    """(pid, start ticks) from a ring's header; None if it is not (yet) a ring."""
    try:
        head = read_file(directory / "ring", HEADER_FORMAT.size, prefix=True)
        magic, _cap, _acked, _ops, pid, start = HEADER_FORMAT.unpack(head)
    except (DamagedRing, struct.error):
        return None
    if magic != MAGIC:
        return None
    return pid, start


# -- reading records -----------------------------------------------------------------------


def published_prefix(raw: Any, lap: int, n: int) -> int:
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


def read_published(
    read: Callable[[int, int], bytes], capacity: int, start: int, end: int
) -> tuple[list[bytes], int]:
    """The records [start, end) of a ring, read as ``read(byte offset, length)`` one
    contiguous part at a time (a span wraps at most once), each part checked published
    for its lap: (the parts, the first position not published, ``end`` if all are)."""
    parts: list[bytes] = []
    pos = start
    while pos < end:
        slot = pos % capacity
        n = min(end - pos, capacity - slot)
        raw = read(HEADER + slot * RECORD, n * RECORD)
        good = published_prefix(raw, pos // capacity + 1, len(raw) // RECORD)
        if good != n:
            return parts, pos + good
        parts.append(raw)
        pos += n
    return parts, end


def remove_ring(directory: Path) -> None:
    """Delete a ring directory and its files."""
    for name in FILES:
        with contextlib.suppress(OSError):
            (directory / name).unlink()
    with contextlib.suppress(OSError):
        directory.rmdir()


def now_ms() -> int:
    """Milliseconds since the epoch (the end time of a run a dead process left open)."""
    return int(time.time() * 1000)


# -- a dead process's ring -----------------------------------------------------------------


class DamagedRing(ValueError):
    """A ring's files are not what an agent writes: it is moved aside, never retried."""


class DeadRing:
    """A ring whose owner is gone, locked by us while we send what it holds.

    Everything is checked as it is read, since a node crash leaves zero-filled tails and
    anyone on the node may write there: a header out of range or a file that is not a
    regular one raises ``DamagedRing``; the records end at the last whole one; an ids,
    ops or cuts entry that is not what the agent writes ends that file's readable prefix
    (as a write torn by the owner's death does), and records naming a series the ids do
    not hold are left out of the batches (counted in ``dropped``)."""

    def __init__(self, directory: Path, lock_fd: int) -> None:
        self.directory = directory
        self.lock_fd = lock_fd
        self.ring_id = directory.name
        self.dropped = 0
        head = read_file(directory / "ring", HEADER_FORMAT.size, prefix=True)
        if len(head) < HEADER_FORMAT.size:
            raise DamagedRing(f"the ring file is {len(head)} bytes, shorter than its header")
        magic, self.capacity, self.acked, self.acked_ops, self.pid, self.start = (
            HEADER_FORMAT.unpack(head)
        )
        if magic != MAGIC:
            raise DamagedRing("the ring file is not a flightlog ring")
        if not 1 <= self.capacity <= MAX_CAPACITY:
            raise DamagedRing(f"capacity {self.capacity} is not in [1, {MAX_CAPACITY}]")
        if self.acked < 0 or self.acked_ops < 0:
            raise DamagedRing(f"acknowledged positions {self.acked}, {self.acked_ops} < 0")
        if (self.acked + self.capacity) // self.capacity + 1 >= 1 << 32:
            raise DamagedRing(f"acknowledged position {self.acked} is past the last lap")
        data = read_file(directory / "ring", HEADER + self.capacity * RECORD, prefix=True)
        # A file cut short holds fewer slots: the missing ones are unpublished.
        self.slots = max(0, (len(data) - HEADER) // RECORD)
        self.data = data
        # The ids table as it reached the file: its whole entries (a write cut short by
        # the owner's death ends it), as a dict and as the bytes a batch carries.
        entries, used = _unpack_prefix(
            read_file(directory / "ids", MAX_IDS_BYTES), is_series, "ids", directory
        )
        self.series: dict[int, tuple[str, str]] = {e[1]: (e[2], e[3]) for e in entries}
        self.ids_blob = used
        ops, _ = _unpack_prefix(
            read_file(directory / "ops", MAX_OPS_BYTES), _is_op, "ops", directory
        )
        self.ops: list[tuple[int, str, dict[str, Any]]] = [(i, n, a) for i, n, a in ops]
        raw = read_file(directory / "cuts", MAX_CUTS_BYTES)
        raw = raw[: len(raw) - len(raw) % CUT.size]
        self.cuts = [c for c in CUT.iter_unpack(raw)]

    @staticmethod
    def lock(directory: Path) -> int | None:
        """The locked fd of ``directory``'s lock if its owner is gone (None if it lives, may
        live, or another adopter holds it). Never touches a live process's ring: the owner
        must be dead by pid and start time (where recorded) and its flock free."""
        owner = read_owner(directory)
        if owner is None or owner_alive(*owner):
            return None
        try:
            fd = os.open(directory / "lock", os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            return None
        if not lock_or_close(fd):
            return None
        return fd

    @classmethod
    def open(cls, directory: Path, fd: int) -> DeadRing:
        """Read the ring locked by ``fd``; ``DamagedRing`` (the lock then released) for any
        damage, whatever exception it raised."""
        try:
            return cls(directory, fd)
        except Exception as e:
            os.close(fd)
            if isinstance(e, DamagedRing):
                raise
            raise DamagedRing(f"{type(e).__name__}: {e}") from e

    @classmethod
    def claim(cls, directory: Path) -> DeadRing | None:
        """Lock and read ``directory`` if its owner is gone (``lock``); a damaged ring is
        moved aside (``quarantine``) and None returned. Nothing raised while reading one
        ring leaves its lock held."""
        fd = cls.lock(directory)
        if fd is None:
            return None
        try:
            return cls.open(directory, fd)
        except DamagedRing as e:
            quarantine(directory, str(e))
            return None

    def end(self) -> int:
        """The ring position after the last published record."""
        pos = self.acked
        end = self.acked + self.capacity
        while pos < end:
            slot = pos % self.capacity
            n = min(end - pos, self.capacity - slot, self.slots - slot, 65536)
            if n <= 0:
                break  # past the end of a file cut short
            raw = self.data[HEADER + slot * RECORD : HEADER + (slot + n) * RECORD]
            good = published_prefix(raw, pos // self.capacity + 1, n)
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
            o = min(ops_end, opos + BATCH_OPS)
            yield batch_id(self.ring_id, rpos, opos), rpos, r, opos, o
            rpos, opos = r, o

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

    def known_records(self, records: bytes) -> bytes:
        """``records`` without those naming a series the ids table does not hold (the
        collector refuses a batch with one): counted in ``dropped``."""
        if not records:
            return records
        codes = memoryview(records).cast("I")[LAP_AT - 1 :: RECORD // 4]
        if set(codes) <= self.series.keys():
            return records
        kept = [
            records[i : i + RECORD]
            for i, code in zip(range(0, len(records), RECORD), codes, strict=True)
            if code in self.series
        ]
        self.dropped += len(codes) - len(kept)
        return b"".join(kept)

    def open_runs(self) -> list[str]:
        """Runs the owner created and did not end (no update_run with an end time)."""
        open_: dict[str, None] = {}
        for _, name, args in self.ops:
            run_id = args.get("run_id")
            if not isinstance(run_id, str):
                continue
            if name == "create_run":
                open_[run_id] = None
            elif name == "update_run" and args.get("end_time") is not None:
                open_.pop(run_id, None)
        return list(open_)

    def bodies(self, agent_id: str, max_points: int = BATCH_POINTS) -> Iterator[tuple[bytes, int]]:
        """The encoded batches (body, points) that send what the ring holds, exactly once:
        the owner's cuts re-made with the same batch ids (a batch the collector committed
        just before the owner died is deduplicated by its id), then new cuts whose ids also
        come from ring positions (a second adopter makes the same ones), and last one
        batch that ends FAILED, tagged ``flightlog.endReason=process_died``, the runs the
        owner created and never ended (a SIGTERM or Ctrl-C ends them KILLED itself, and
        that update is in the ops journal)."""
        for bid, r0, r1, o0, o1 in self.batches(max_points):
            ops = [[name, args] for _, name, args in self.ops[o0:o1]]
            records = self.known_records(b"".join(self.records(r0, r1)))
            points = len(records) // RECORD
            yield encode_raw_batch(bid, agent_id, ops, None, records, self.ids_blob), points
        end = now_ms()
        ends: list[list[Any]] = []
        for rid in self.open_runs():
            ends.append([SET_TAGS, {"run_id": rid, "tags": {END_REASON_TAG: PROCESS_DIED}}])
            ends.append([UPDATE_RUN, {"run_id": rid, "status": "FAILED", "end_time": end}])
        if ends:
            yield encode_raw_batch(f"ring-{self.ring_id}-end", agent_id, ends, None), 0

    def finish(self) -> None:
        """Delete the directory (everything was sent) and drop the lock."""
        remove_ring(self.directory)
        self.release()

    def release(self) -> None:
        """Keep the directory for a later adopter (the collector is away)."""
        self.data = b""  # memory holds one ring: this one's goes before the next is read
        with contextlib.suppress(OSError):
            os.close(self.lock_fd)

    def quarantine(self, reason: str) -> None:
        """Move the directory aside (what could be sent was) and drop the lock."""
        quarantine(self.directory, reason)
        self.release()


def quarantine(directory: Path, reason: str) -> Path | None:
    """Move a damaged ring to ``<rings root>/damaged/<name>`` with a ``reason`` file, and
    log it (once: it is never read again); None if it could not be moved."""
    aside = directory.parent / DAMAGED
    try:
        aside.mkdir(exist_ok=True)
        if aside.is_symlink():  # planted: nothing is moved out of the rings root
            raise OSError(f"{aside} is a symlink")
        target = aside / directory.name
        n = 0
        while target.exists() or target.is_symlink():
            n += 1
            target = aside / f"{directory.name}.{n}"
        os.rename(directory, target)
    except OSError as e:
        log.error("the damaged metric ring %s stays (%s): %s", directory, e, reason)
        return None
    with contextlib.suppress(OSError):
        (target / "reason").write_text(reason + "\n")
    log.error("a damaged metric ring was moved to %s: %s", target, reason)
    return target


def read_file(path: Path, limit: int, *, prefix: bool = False) -> bytes:
    """A ring file's bytes (empty if missing): refused (``DamagedRing``) unless it is a
    regular file, not a symlink, and at most ``limit`` bytes; with ``prefix`` its first
    ``limit`` bytes. Opened non-blocking: a FIFO planted there cannot wedge the reader."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return b""
    except OSError as e:
        raise DamagedRing(f"{path.name} cannot be opened: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise DamagedRing(f"{path.name} is not a regular file")
        if st.st_size > limit and not prefix:
            raise DamagedRing(f"{path.name} is {st.st_size} bytes, more than {limit}")
        chunks = []
        left = min(limit, st.st_size)
        while left > 0:  # a file growing meanwhile is still read only to its bound
            chunk = os.read(fd, left)  # one read, one buffer, for a regular file
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    except OSError as e:
        raise DamagedRing(f"{path.name} cannot be read: {e.strerror}") from None
    finally:
        os.close(fd)


def is_series(e: Any) -> bool:
    """Whether ``e`` is an ``ids`` entry as the agent writes it."""
    return (
        isinstance(e, list)
        and len(e) == 4
        and e[0] == SERIES
        and type(e[1]) is int
        and 0 <= e[1] < 1 << 32
        and isinstance(e[2], str)
        and isinstance(e[3], str)
    )


def _is_op(e: Any) -> bool:
    return (
        isinstance(e, list)
        and len(e) == 3
        and isinstance(e[1], str)
        and isinstance(e[2], dict)
        and all(isinstance(k, str) for k in e[2])
    )


def whole_entries(data: bytes, valid: Callable[[Any], bool]) -> tuple[list[Any], int]:
    """The whole, valid msgpack items at the start of ``data`` and the bytes they span: a
    torn write (or one still being written), an invalid item or a zero-filled tail
    (msgpack 0) ends them."""
    out = []
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=len(data) + 1)
    unpacker.feed(data)
    used = 0
    with contextlib.suppress(Exception):  # msgpack raises a handful of types
        for item in unpacker:
            if not valid(item):
                break
            out.append(item)
            used = unpacker.tell()
    return out, used


def _unpack_prefix(
    data: bytes, valid: Callable[[Any], bool], what: str, directory: Path
) -> tuple[list[Any], bytes]:
    """``whole_entries`` of a dead ring's file, and the bytes they span; what follows is
    ignored with a warning."""
    out, used = whole_entries(data, valid)
    if used < len(data):
        log.warning(
            "%s/%s: %d byte(s) after its last whole entry are ignored",
            directory,
            what,
            len(data) - used,
        )
    return out, data[:used]


def ring_dirs(root: Path) -> list[Path]:
    """The ring directories under ``root`` (not the damaged ones moved aside)."""
    try:
        return sorted(
            p for p in root.iterdir() if p.name != DAMAGED and p.is_dir() and not p.is_symlink()
        )
    except OSError:
        return []


def _signature(directory: Path) -> tuple[tuple[int, int, int], ...]:
    out = []
    for name in FILES[:4]:
        try:
            st = os.stat(directory / name, follow_symlinks=False)
        except OSError:
            out.append((0, 0, -1))
        else:
            out.append((st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(out)


class RingClaims:
    """One adopter's walk over a rings root, one ring at a time (claim, read, send, let go,
    next: memory holds one ring), the same for every adopter (the collector, the sidecar,
    the next agent). A ring whose damage could not be moved aside, or whose sending
    failed for an unexpected reason, is not read again until one of its files changes
    (or ``RETRY_SECONDS`` passed, for a failure that may be transient)."""

    RETRY_SECONDS = 60.0

    def __init__(self) -> None:
        self.skip: dict[Path, tuple[tuple[tuple[int, int, int], ...], float]] = {}

    def candidates(self, root: Path, exclude: Path | None = None) -> list[Path]:
        """The ring directories under ``root`` worth a ``claim`` now."""
        out = []
        for d in ring_dirs(root):
            if d == exclude:
                continue
            skipped = self.skip.get(d)
            if skipped is not None:
                if skipped[0] == _signature(d) and time.monotonic() < skipped[1]:
                    continue
                del self.skip[d]
            out.append(d)
        return out

    def claim(self, directory: Path) -> DeadRing | None:
        """Lock and read one ring if its owner is gone (``DeadRing.lock``); a damaged one is
        moved aside (or, where it cannot be, left unread until it changes) and None
        returned. The caller ends the ring (``finish``, ``release``, ``refused`` or
        ``failed``) before claiming the next: memory holds one ring."""
        fd = DeadRing.lock(directory)
        if fd is None:
            return None
        try:
            return DeadRing.open(directory, fd)
        except DamagedRing as e:
            if quarantine(directory, str(e)) is None:
                self.skip[directory] = (_signature(directory), float("inf"))
            return None

    def failed(self, ring: DeadRing, error: BaseException) -> None:
        """Sending ``ring`` failed unexpectedly: let it go and leave it a while."""
        log.error("sending the metric ring %s failed: %r; it stays", ring.directory, error)
        self.skip[ring.directory] = (
            _signature(ring.directory),
            time.monotonic() + self.RETRY_SECONDS,
        )
        ring.release()

    def sent(self, ring: DeadRing, refused: list[str]) -> None:
        """Every batch of ``ring`` was answered: delete it, or, if some were refused (or
        records were left out), move it aside."""
        if ring.dropped:
            refused = [*refused, f"{ring.dropped} record(s) name a series not in its ids"]
        if refused:
            self.refused(ring, "; ".join(refused))
        else:
            ring.finish()

    def refused(self, ring: DeadRing, reason: str) -> None:
        """The destination refused a batch of ``ring`` (resending cannot help): the rest
        was sent; move it aside."""
        ring.quarantine(f"a batch was refused: {reason}")
        if ring.directory.exists():
            self.skip[ring.directory] = (_signature(ring.directory), float("inf"))

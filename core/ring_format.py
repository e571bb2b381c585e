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
import fcntl
import os
import struct
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack

from flightlog.core.ops import SET_TAGS, UPDATE_RUN
from flightlog.core.wire import encode_raw_batch

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
        with open(directory / "ring", "rb") as f:
            head = f.read(HEADER_FORMAT.size)
        magic, _cap, _acked, _ops, pid, start = HEADER_FORMAT.unpack(head)
    except (OSError, struct.error):
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


class DeadRing:
    """A ring whose owner is gone, locked by us while we send what it holds."""

    def __init__(self, directory: Path, lock_fd: int) -> None:
        self.directory = directory
        self.lock_fd = lock_fd
        self.ring_id = directory.name
        data = (directory / "ring").read_bytes()
        head = HEADER_FORMAT.unpack_from(data)
        magic, self.capacity, self.acked, self.acked_ops, self.pid, self.start = head
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
        raw = raw[: len(raw) - len(raw) % CUT.size]
        self.cuts = [c for c in CUT.iter_unpack(raw)]

    @classmethod
    def claim(cls, directory: Path) -> DeadRing | None:
        """Lock ``directory`` if its owner is gone (None if it lives, may live, or another
        adopter holds it). Never touches a live process's ring: the owner must be dead by
        pid and start time (where recorded) and its flock free."""
        owner = read_owner(directory)
        if owner is None or owner_alive(*owner):
            return None
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
            records = b"".join(self.records(r0, r1))
            yield encode_raw_batch(bid, agent_id, ops, None, records, self.ids_blob), r1 - r0
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


def ring_dirs(root: Path) -> list[Path]:
    """The ring directories under ``root``."""
    try:
        return sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink())
    except OSError:
        return []


def claim_dead_rings(root: Path, exclude: Path | None = None) -> list[DeadRing]:
    """Lock every ring directory under ``root`` whose owner is gone."""
    claimed = []
    for d in ring_dirs(root):
        if d == exclude:
            continue
        c = DeadRing.claim(d)
        if c is not None:
            claimed.append(c)
    return claimed

"""Reading ring-reference batches: the records an agent on this node left in its ring.

An agent whose collector runs on its node sends its metric batches as references (wire
version 3, ``flightlog.core.wire``): the ring's id, its owner's pid and start time, and
the positions [start, end). :class:`LocalRings` reads those records from
``<rings root>/<ring id>/ring`` and the series names from the ring's ``ids`` file, for
the roots this collector watches (``CollectorConfig.ring_roots``, the same ones whose
dead rings it adopts: ``collector.ring_watch``), and nowhere else.

Everything in a reference is checked, since anyone who holds the token can send one:
the ring id is one path component; the file is a regular one, opened without following
links; its header must name the pid and start time the batch gives (a ring of another
process, or one a restarted agent made anew, is refused); the positions must lie within
one capacity of the acknowledged one and every record in them must be published for its
lap (a slot written over since the batch was cut fails that test). A refusal is a
``WireError`` (the endpoint answers 400; the agent then sends the records inline).

The ids file only grows, so each ring's table is read once and then only its new bytes
(an LRU of ``MAX_TABLES`` rings, ``MAX_TABLE_BYTES`` of ids files): batches carry no
ids table at all.
"""

from __future__ import annotations

import os
import re
import stat
import threading
from collections import OrderedDict
from pathlib import Path

from flightlog.core.exceptions import WireError
from flightlog.core.ring_format import (
    HEADER_FORMAT,
    MAGIC,
    MAX_CAPACITY,
    MAX_IDS_BYTES,
    is_series,
    read_published,
    whole_entries,
)
from flightlog.core.wire import RingRef

_RING_ID = re.compile(r"[0-9a-f]{32}")
MAX_TABLES = 256  # rings whose ids tables are kept between batches
# ... and the ids file bytes they hold at most (about 5 times that in memory): one ring's
# ids file may be MAX_IDS_BYTES, and 256 of them kept parsed would be tens of GB.
MAX_TABLE_BYTES = 64 << 20
_OPEN = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


class _Table:
    """One ring's ids table as read so far: entries up to ``offset`` of its file."""

    __slots__ = ("inode", "offset", "series")

    def __init__(self, inode: tuple[int, int]) -> None:
        self.inode = inode
        self.offset = 0
        self.series: dict[int, tuple[str, str]] = {}


class LocalRings:
    """The reader of ring references for the rings under ``roots``."""

    def __init__(self, roots: list[Path], max_points: int) -> None:
        self.roots = roots
        self.max_points = max_points  # the most records one batch may name
        self._tables: OrderedDict[str, _Table] = OrderedDict()
        self._lock = threading.Lock()  # batches are decoded on several threads

    def __call__(self, ref: RingRef) -> tuple[bytes, dict[int, tuple[str, str]]]:
        """The raw records ``ref`` names and the ids table naming their series."""
        ring_id, pid, started, start, end = ref
        if not _RING_ID.fullmatch(ring_id):
            raise WireError(f"'r.ref' names ring {ring_id[:80]!r}, not a ring id")
        if end - start > self.max_points:
            raise WireError(f"'r.ref' names {end - start} records, over {self.max_points}")
        directory = self._find(ring_id)
        fd = _open_regular(directory / "ring")
        try:
            head = os.pread(fd, HEADER_FORMAT.size, 0)
            if len(head) < HEADER_FORMAT.size:
                raise WireError(f"ring {ring_id} is shorter than its header")
            magic, capacity, acked, _ops, owner, owner_start = HEADER_FORMAT.unpack(head)
            if magic != MAGIC or not 1 <= capacity <= MAX_CAPACITY:
                raise WireError(f"ring {ring_id} is not a flightlog ring")
            if (owner, owner_start) != (pid, started):
                raise WireError(f"ring {ring_id} belongs to another process than the batch says")
            if start < acked or end > acked + capacity:
                raise WireError(
                    f"'r.ref' positions [{start}, {end}) are not in ring {ring_id}'s window "
                    f"[{acked}, {acked + capacity})"
                )
            records = _read_records(fd, ring_id, capacity, start, end)
            # Once more after the read: the agent frees slots (moves ``acked`` past
            # them) before any is written over, so an unmoved ``acked`` means no record
            # read was being overwritten meanwhile (a stale reference, resent after its
            # batch went to the agent's disk spool).
            if HEADER_FORMAT.unpack(os.pread(fd, HEADER_FORMAT.size, 0))[2] > start:
                raise WireError(f"ring {ring_id}'s slots [{start}, {end}) were freed meanwhile")
        finally:
            os.close(fd)
        return records, self._table(ring_id, directory)

    def _find(self, ring_id: str) -> Path:
        for root in self.roots:
            directory = root / ring_id
            # A ring directory, not a link to one elsewhere (the agent makes real ones).
            if directory.is_dir() and not directory.is_symlink():
                return directory
        raise WireError(f"ring {ring_id} is not under a rings directory this collector reads")

    def _table(self, ring_id: str, directory: Path) -> dict[int, tuple[str, str]]:
        """The ring's ids table, reading only what was appended since the last batch."""
        fd = _open_regular(directory / "ids")
        try:
            st = os.fstat(fd)
            with self._lock:
                table = self._tables.get(ring_id)
                if table is None or table.inode != (st.st_dev, st.st_ino):
                    table = _Table((st.st_dev, st.st_ino))
                self._tables[ring_id] = table
                self._tables.move_to_end(ring_id)
                while len(self._tables) > MAX_TABLES:
                    self._tables.popitem(last=False)
                if st.st_size > table.offset:
                    if st.st_size > MAX_IDS_BYTES:
                        raise WireError(f"ring {ring_id}'s ids file is over {MAX_IDS_BYTES} bytes")
                    _read_entries(table, os.pread(fd, st.st_size - table.offset, table.offset))
                held = sum(t.offset for t in self._tables.values())
                while held > MAX_TABLE_BYTES and len(self._tables) > 1:
                    held -= self._tables.popitem(last=False)[1].offset  # never this one
                return table.series  # only grows; lookups meanwhile are safe
        finally:
            os.close(fd)


def _open_regular(path: Path) -> int:
    try:
        fd = os.open(path, _OPEN)
    except OSError as e:
        raise WireError(f"cannot open {path.parent.name}/{path.name}: {e.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise WireError(f"{path.parent.name}/{path.name} is not a regular file")
    return fd


def _read_records(fd: int, ring_id: str, capacity: int, start: int, end: int) -> bytes:
    """Records [start, end), each checked published for its lap."""
    parts, upto = read_published(lambda offset, n: os.pread(fd, n, offset), capacity, start, end)
    if upto != end:
        raise WireError(f"ring {ring_id} holds no published record at position {upto}")
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _read_entries(table: _Table, data: bytes) -> None:
    """Add the whole entries at the start of ``data`` (the file's new bytes); an entry
    cut short (the owner writing it now) is read with the next batch."""
    entries, used = whole_entries(data, is_series)
    table.series.update((e[1], (e[2], e[3])) for e in entries)
    table.offset += used

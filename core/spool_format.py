"""The disk spool's record format, and the one reader of a spool its owner left.

See ``flightlog.agent.spool`` for the layout. The agent writes spools; a dead process's
spool directory is read here by whoever sends it: the next agent on the node, ``flightlog
sync``, the node sidecar's forward buffer, and the node's collector
(``flightlog.core.ring_adoption``), which sends the spools and the metric rings that
dead trainers left.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

HEADER = struct.Struct("<4sIIIQ")  # magic, body length, crc32(body), points, seq
MAGIC = b"FLS1"
SEGMENT_SUFFIX = ".seg"
LOCK_NAME = "lock"


def open_lock(directory: Path) -> int:
    """Open (or make) a spool directory's lock file."""
    # O_NOFOLLOW: a symlink planted as the lock file must not make us lock (or create)
    # some other file.
    return os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)


def lock_or_close(fd: int) -> bool:
    """Take an exclusive flock on ``fd`` without waiting; when another process holds it
    (its owner lives, or another adopter got there first) close ``fd`` and say so."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False
    return True


@dataclass(frozen=True)
class RecordRef:
    """Where one record of a claimed spool lies."""

    seq: int
    points: int
    path: Path
    offset: int  # of the body
    length: int
    crc: int


def scan_segment(path: Path) -> Iterator[RecordRef]:
    """The intact records of one segment file, in file order; stops at a torn record."""
    try:
        f = open(path, "rb")
    except OSError:
        return
    with f:
        end = os.fstat(f.fileno()).st_size
        pos = 0
        while pos + HEADER.size <= end:
            header = f.read(HEADER.size)
            if len(header) < HEADER.size:
                return
            magic, length, crc, points, seq = HEADER.unpack(header)
            if magic != MAGIC or pos + HEADER.size + length > end:
                return
            yield RecordRef(seq, points, path, pos + HEADER.size, length, crc)
            pos += HEADER.size + length
            f.seek(pos)


class ClaimedSpool:
    """A dead process's spool directory, locked by us while we send it."""

    def __init__(self, directory: Path, lock_fd: int) -> None:
        self.directory = directory
        self._lock_fd: int | None = lock_fd
        self.records: list[RecordRef] = []
        self._pending: dict[Path, int] = {}  # segment -> records not yet sent
        self._scan()

    @classmethod
    def claim(cls, directory: Path) -> ClaimedSpool | None:
        """Take the directory's lock if its owner is gone; None while it lives."""
        try:
            fd = open_lock(directory)
        except OSError:
            return None
        if not lock_or_close(fd):
            return None
        return cls(directory, fd)

    def _scan(self) -> None:
        seen: set[int] = set()
        records: list[RecordRef] = []
        for path in sorted(self.directory.glob(f"*{SEGMENT_SUFFIX}")):
            count = 0
            for ref in scan_segment(path):
                count += 1
                # A seq written twice (cannot happen today) is sent once.
                if ref.seq not in seen:
                    seen.add(ref.seq)
                    records.append(ref)
            self._pending[path] = count
        records.sort(key=lambda r: r.seq)
        self.records = records

    @property
    def points(self) -> int:
        """Points in the records still to send."""
        return sum(r.points for r in self.records)

    @property
    def body_bytes(self) -> int:
        """Body bytes still to send."""
        return sum(r.length for r in self.records)

    def read(self, ref: RecordRef) -> bytes | None:
        """A record's body, or None if it is damaged (its CRC does not match)."""
        try:
            with open(ref.path, "rb") as f:
                f.seek(ref.offset)
                body = f.read(ref.length)
        except OSError:
            return None
        if len(body) != ref.length or zlib.crc32(body) != ref.crc:
            return None
        return body

    def done(self, ref: RecordRef) -> None:
        """A record was delivered (or found damaged); drop its segment when empty."""
        left = self._pending.get(ref.path, 0) - 1
        self._pending[ref.path] = left
        if left <= 0:
            with contextlib.suppress(FileNotFoundError):
                ref.path.unlink()

    def finish(self) -> None:
        """Remove the directory if everything was sent, and release the lock."""
        if self._lock_fd is None:
            return
        if all(n <= 0 for n in self._pending.values()):
            for path in self.directory.glob(f"*{SEGMENT_SUFFIX}"):
                # Segments with no intact record (a crash mid-way through the first).
                with contextlib.suppress(OSError):
                    path.unlink()
            with contextlib.suppress(OSError):
                (self.directory / LOCK_NAME).unlink()
            with contextlib.suppress(OSError):
                self.directory.rmdir()
        os.close(self._lock_fd)
        self._lock_fd = None

    def forget_after_fork(self) -> None:
        """In a forked child: close our copy of the lock, which stays the parent's."""
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)
            self._lock_fd = None


def agent_dirs(root: Path) -> list[Path]:
    """The per-process directories under a spool root, oldest first by name order."""
    try:
        return sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink())
    except OSError:
        return []


def claim_orphans(root: Path, *, exclude: Path | None = None) -> list[ClaimedSpool]:
    """Lock every directory under ``root`` whose owner is gone and that holds records."""
    claimed: list[ClaimedSpool] = []
    for d in agent_dirs(root):
        if exclude is not None and d == exclude:
            continue
        c = ClaimedSpool.claim(d)
        if c is None:
            continue
        if c.records:
            claimed.append(c)
        else:
            c.finish()  # an empty leftover: tidy it away
    return claimed

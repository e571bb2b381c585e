"""The disk spool: where encoded batches wait while the collector is away or slow.

Layout::

    <spool root>/                       one per collector (or local store)
        target.json                     {"tracking_uri": ...}: where these batches belong
        <pid>-<agent8>/                 one per agent (process) that had to spool
            lock                        flock()ed by its owner for as long as it lives
            <first seq:016d>.seg        segment files holding records

A record is a 24-byte header (magic, body length, CRC-32 of the body, points, seq)
followed by the batch exactly as it is POSTed, batch id included, so sending a record
twice is harmless: the collector stores a batch id once. The header's ``seq`` orders
records across segments (a batch that failed in flight may be written after later
ones); a reader sorts by it. A record cut short by a crash fails its length or CRC
check and ends its segment's readable part.

An agent writes only its own directory. A directory whose lock nobody holds belongs to
a process that died: the next agent for the same collector on the node, or
``flightlog sync``, claims it by taking the lock, sends its records in order and
deletes it. ``flock`` locks vanish with their process, so a killed owner never leaves
a directory that looks alive.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import zlib
from pathlib import Path

from flightlog.core import settings
from flightlog.core.exceptions import SpoolFull
from flightlog.core.spool_format import (
    HEADER,
    LOCK_NAME,
    MAGIC,
    SEGMENT_SUFFIX,
    ClaimedSpool,
    RecordRef,
    agent_dirs,
    claim_orphans,
    open_lock,
    scan_segment,
)

# The reader of a dead process's spool lives in the core (the node's collector sends
# dead trainers' spools too); its names stay importable from here.
__all__ = [
    "HEADER",
    "LOCK_NAME",
    "MAGIC",
    "SEGMENT_SUFFIX",
    "TARGET_NAME",
    "ClaimedSpool",
    "RecordRef",
    "Segment",
    "Spool",
    "agent_dirs",
    "claim_orphans",
    "read_target",
    "scan_segment",
    "spool_roots",
]

log = logging.getLogger("flightlog.agent")

TARGET_NAME = "target.json"
# Where spools are (FLIGHTLOG_SPOOL_DIR ...): flightlog.core.spool_paths, since the node's
# collector looks there too (for the metric rings of dead processes).
DEFAULT_SPOOL_MAX_BYTES = settings.SPOOL_MAX_BYTES.default
DEFAULT_SEGMENT_BYTES = 16 * 1024**2


def _write_target(root: Path, tracking_uri: str) -> None:
    target = root / TARGET_NAME
    if target.exists():
        return
    tmp = root / f".{TARGET_NAME}.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(json.dumps({"tracking_uri": tracking_uri}))
        f.flush()
        os.fsync(f.fileno())  # `flightlog sync` needs it to know where the batches go
    os.replace(tmp, target)


def read_target(root: Path) -> str | None:
    """The tracking URI a spool root's batches belong to, if it recorded one."""
    try:
        uri = json.loads((root / TARGET_NAME).read_text())["tracking_uri"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return uri if isinstance(uri, str) else None


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class Segment:
    """One open segment file of this process's spool."""

    __slots__ = ("fd", "live", "path", "size")

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.fd = fd
        self.size = 0
        self.live = 0  # records written and not yet acknowledged


class Spool:
    """This process's own spool directory: append records, read them back, drop them.

    Not thread-safe: the agent calls it under its outbox lock. The directory and its
    lock are made on the first append, so a process that never spools leaves nothing.
    """

    def __init__(
        self,
        root: Path,
        *,
        owner: str,
        tracking_uri: str,
        max_bytes: int = DEFAULT_SPOOL_MAX_BYTES,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
    ) -> None:
        self.root = root
        self.directory = root / f"{os.getpid()}-{owner[:8]}"
        self.tracking_uri = tracking_uri
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.used_bytes = 0  # bytes of the segment files on disk
        self._lock_fd: int | None = None
        self._current: Segment | None = None
        self._segments: list[Segment] = []

    @property
    def exists(self) -> bool:
        """Whether this process has written its spool directory."""
        return self._lock_fd is not None

    def _open(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        _write_target(self.root, self.tracking_uri)
        self.directory.mkdir(mode=0o700, exist_ok=True)
        # The new entries (target.json, this directory) must survive a power cut with
        # the segments that flush() reports as on disk.
        _fsync_dir(self.root)
        fd = open_lock(self.directory)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise
        self._lock_fd = fd

    def _new_segment(self, seq: int) -> Segment:
        if self._lock_fd is None:
            self._open()
        if self._current is not None:
            # A finished segment is synced once, so what the spool holds survives a
            # power cut as well as a crash (a crash alone loses nothing in the page cache).
            os.fsync(self._current.fd)
        path = self.directory / f"{seq:016d}{SEGMENT_SUFFIX}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
        seg = Segment(path, fd)
        seg.size = os.fstat(fd).st_size
        self.used_bytes += seg.size
        self._segments.append(seg)
        self._current = seg
        _fsync_dir(self.directory)
        return seg

    def append(self, seq: int, points: int, body: bytes) -> tuple[Segment, int]:
        """Write one record; return where its body lies. Raises SpoolFull."""
        size = HEADER.size + len(body)
        if self.used_bytes + size > self.max_bytes:
            raise SpoolFull(f"spool cap of {self.max_bytes} bytes reached")
        try:
            seg = self._current
            if seg is None or (seg.size and seg.size + size > self.segment_bytes):
                seg = self._new_segment(seq)
            record = HEADER.pack(MAGIC, len(body), zlib.crc32(body), points, seq) + body
            written = os.write(seg.fd, record)
            if written != len(record):
                # A short write (disk full): cut the partial record off again.
                os.ftruncate(seg.fd, seg.size)
                raise OSError(errno.ENOSPC, "short write to the spool")
        except OSError as e:
            raise SpoolFull(f"cannot write the spool in {self.directory}: {e}") from e
        offset = seg.size + HEADER.size
        seg.size += size
        seg.live += 1
        self.used_bytes += size
        return seg, offset

    def read(self, seg: Segment, offset: int, length: int) -> bytes:
        """The body of a record this process wrote."""
        data = os.pread(seg.fd, length, offset)
        if len(data) != length:
            raise OSError(errno.EIO, f"short read from {seg.path}")
        return data

    def release(self, seg: Segment) -> None:
        """One record of ``seg`` was acknowledged; delete the segment once none is left."""
        seg.live -= 1
        if seg.live > 0:
            return
        if seg is self._current:
            self._current = None
        self._segments.remove(seg)
        self.used_bytes -= seg.size
        os.close(seg.fd)
        with contextlib.suppress(FileNotFoundError):
            seg.path.unlink()

    def sync(self) -> None:
        """fsync the segment being written (earlier ones were synced when finished)."""
        if self._current is not None:
            with contextlib.suppress(OSError):
                os.fsync(self._current.fd)

    def close(self) -> None:
        """Sync and let go: an empty directory is removed, a non-empty one left for
        the next agent or ``flightlog sync`` (the lock goes when its descriptor closes)."""
        self.sync()
        empty = all(seg.live == 0 for seg in self._segments)
        for seg in self._segments:
            os.close(seg.fd)
            if empty:
                with contextlib.suppress(FileNotFoundError):
                    seg.path.unlink()
        self._segments.clear()
        self._current = None
        self.used_bytes = 0
        if self._lock_fd is None:
            return
        if empty:
            # Remove while still holding the lock, so no adopter claims a directory
            # that is going away; an adopter that opened the lock file meanwhile finds
            # it locked, and one that comes later finds nothing.
            with contextlib.suppress(OSError):
                (self.directory / LOCK_NAME).unlink()
            with contextlib.suppress(OSError):
                self.directory.rmdir()
        else:
            _fsync_dir(self.directory)
        os.close(self._lock_fd)
        self._lock_fd = None

    def forget_after_fork(self) -> None:
        """In a forked child: drop the parent's descriptors without touching its lock.

        Closing the child's copy keeps the parent's flock (it goes only when every copy
        is closed); flock(LOCK_UN) here would release the parent's lock.
        """
        for seg in self._segments:
            with contextlib.suppress(OSError):
                os.close(seg.fd)
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)
        self._segments.clear()
        self._current = None
        self._lock_fd = None
        self.used_bytes = 0


# -- reading a dead process's spool --------------------------------------------------------


def spool_roots(base: Path) -> list[Path]:
    """Spool roots (one per destination) under a base directory such as ~/.cache/..."""
    if (base / TARGET_NAME).exists():
        return [base]
    try:
        return sorted(p for p in base.iterdir() if (p / TARGET_NAME).exists())
    except OSError:
        return []

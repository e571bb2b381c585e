"""The outbox: encoded batches in order, from the packer to the sender, and flush markers.

The outbox holds encoded batches in order. They stay in memory while the collector
keeps up; once a send fails (collector unreachable, refusing, or answering 429/503),
or the in-memory part passes its byte budget, they go to the disk spool
(``flightlog.agent.spool``), and everything in memory follows, so the order is kept
and memory stays bounded for as long as the outage lasts.

A :class:`FlushMarker` registers after the last batch packed before it and settles once
that batch is acknowledged (or, unless it is strict, once an outage is found and every
batch before it is on disk).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

from flightlog.agent.spool import Segment, Spool
from flightlog.core.exceptions import SpoolFull


class FlushMarker:
    """A queue item that marks a flush() point; ``done`` fires when it is settled.

    ``acked`` tells whether everything before it was acknowledged. A marker that is not
    ``strict`` also settles (unacknowledged) once the collector is found unreachable and
    everything before it is in the outbox.
    """

    __slots__ = ("acked", "done", "strict")

    def __init__(self, *, strict: bool = False) -> None:
        self.done = threading.Event()
        self.acked = False
        self.strict = strict

    def settle(self, acked: bool) -> None:
        self.acked = acked
        self.done.set()


class Entry:
    """One encoded batch waiting for acknowledgement: in memory or in the spool."""

    __slots__ = ("body", "length", "offset", "points", "ref", "segment", "seq")

    def __init__(self, seq: int, points: int, body: bytes | None, ref: bool = False) -> None:
        self.seq = seq
        self.points = points
        self.body = body
        self.ref = ref  # the body names ring records (``r.ref``) instead of holding them
        self.segment: Segment | None = None
        self.offset = 0
        self.length = 0 if body is None else len(body)


class Outbox:
    """Encoded batches in order, from the packer to the sender.

    The batch sequence number orders everything: a flush marker waits for the last
    batch packed before it, and ``acked_seq`` says that every batch up to it is done.
    """

    def __init__(self, spool: Spool, max_memory: int) -> None:
        self.lock = threading.Lock()
        # Copies a ring reference's records into its body (``Ring.materialize``): a
        # batch goes to the spool with its records, since its ring slots are freed
        # once it is there.
        self.materialize: Callable[[bytes], bytes | None] | None = None
        self.spool = spool
        self.max_memory = max_memory
        self.entries: deque[Entry] = deque()
        self.memory = 0  # bytes of the bodies held in memory
        self.outage = False  # did the last send fail?
        self.last_seq = 0
        self.acked_seq = 0
        self.markers: deque[tuple[int, FlushMarker]] = deque()
        self.closed = False  # set at close(): the sender changes nothing any more

    def add(self, points: int, body: bytes, *, must_keep: bool = False, ref: bool = False) -> int:
        """Append a batch; return its seq. Raises SpoolFull when it cannot be kept,
        unless ``must_keep``: then it stays in memory past the budget (small op batches
        that must not be lost, such as a run's creation). ``ref``: the body names ring
        records instead of holding them."""
        with self.lock:
            if self.closed:
                raise SpoolFull("the agent is closed")
            seq = self.last_seq + 1
            entry = Entry(seq, points, body, ref)
            if self.outage or self.memory + len(body) > self.max_memory:
                try:
                    self._to_spool(entry)
                except SpoolFull:
                    if not must_keep:
                        raise
            if entry.body is not None:
                self.memory += len(body)
            self.entries.append(entry)
            self.last_seq = seq
            return seq

    def head(self) -> Entry | None:
        with self.lock:
            return self.entries[0] if self.entries else None

    def _to_spool(self, entry: Entry) -> None:
        """Write an in-memory entry to the spool (its records copied in first if it
        names them in the ring); raises SpoolFull."""
        body = entry.body
        assert body is not None
        if entry.ref:
            body = self._inline(entry)
        entry.segment, entry.offset = self.spool.append(entry.seq, entry.points, body)
        entry.length = len(body)
        entry.body = None
        entry.ref = False

    def _inline(self, entry: Entry) -> bytes:
        assert entry.body is not None and self.materialize is not None
        body = self.materialize(entry.body)
        if body is None:  # cannot happen before the entry is acknowledged or spooled
            raise SpoolFull("a ring reference's records are gone")
        return body

    def inline(self, entry: Entry) -> bytes | None:
        """The body of ``entry`` with its records in it (a collector that cannot read
        the ring): from the spool if it is there, else copied from the ring now and
        kept in place of the reference. None once the entry is acknowledged."""
        with self.lock:
            if self.closed or entry not in self.entries:
                return None
            if entry.body is None:
                assert entry.segment is not None
                return self.spool.read(entry.segment, entry.offset, entry.length)
            if not entry.ref:
                return entry.body
            body = self._inline(entry)
            self.memory += len(body) - len(entry.body)
            entry.body, entry.ref, entry.length = body, False, len(body)
            return body

    def body(self, entry: Entry) -> tuple[bytes, bool]:
        """The body to send for ``entry``, and whether it is a ring reference (read
        together: the entry may go to the spool, and lose its reference, meanwhile)."""
        with self.lock:
            if self.closed:
                raise OSError("the outbox is closed")
            if entry.body is not None:
                return entry.body, entry.ref
            assert entry.segment is not None
            return self.spool.read(entry.segment, entry.offset, entry.length), False

    def ack(self, entry: Entry) -> list[FlushMarker]:
        """The head batch was acknowledged (or given up): drop it, settle its markers."""
        with self.lock:
            if self.closed or not self.entries or self.entries[0] is not entry:
                return []
            self.entries.popleft()
            if entry.body is not None:
                self.memory -= len(entry.body)
            elif entry.segment is not None:
                self.spool.release(entry.segment)
            self.acked_seq = entry.seq
            fired: list[FlushMarker] = []
            while self.markers and self.markers[0][0] <= self.acked_seq:
                fired.append(self.markers.popleft()[1])
            return fired

    def add_marker(self, marker: FlushMarker) -> bool:
        """Register a marker after the last batch packed; True if it is settled already."""
        with self.lock:
            seq = self.last_seq
            if seq <= self.acked_seq:
                marker.settle(True)
                return True
            if self.outage and not marker.strict:
                self.spool.sync()
                marker.settle(False)
                return True
            self.markers.append((seq, marker))
            return False

    def _spill(self) -> tuple[int, int]:
        """Move in-memory batches to the spool, in place; return what stayed in memory."""
        kept_batches = kept_points = 0
        for entry in self.entries:
            body = entry.body
            if body is None:
                continue
            try:
                self._to_spool(entry)
            except SpoolFull:
                kept_batches += 1
                kept_points += entry.points
                continue
            self.memory -= len(body)
        self.spool.sync()
        return kept_batches, kept_points

    def spooled_prefix(self) -> int:
        """The seq of the last batch up to which every batch is acknowledged or on disk."""
        with self.lock:
            last = self.acked_seq
            for entry in self.entries:
                if entry.body is not None:
                    break
                last = entry.seq
            return last

    def spill(self) -> None:
        """Move the in-memory batches to the spool now (the metric ring is full)."""
        with self.lock:
            if not self.closed:
                self._spill()

    def enter_outage(self) -> list[FlushMarker]:
        """A send failed: spool what is in memory and settle the non-strict markers."""
        with self.lock:
            if self.closed:
                return []
            first = not self.outage
            self.outage = True
            if first:
                self._spill()
            else:
                self.spool.sync()
            fired = [m for _, m in self.markers if not m.strict]
            if fired:
                self.markers = deque((s, m) for s, m in self.markers if m.strict)
            return fired

    def leave_outage(self) -> None:
        if self.outage:
            with self.lock:
                self.outage = False

    def close(self) -> tuple[int, int, int, int]:
        """Stop all changes, spool what is in memory; return (batches, points) left
        over in total and (batches, points) of those that only memory held."""
        with self.lock:
            self.closed = True
            kept_batches, kept_points = self._spill() if self.entries else (0, 0)
            batches = len(self.entries)
            points = sum(e.points for e in self.entries)
            self.spool.close()
            return batches, points, kept_batches, kept_points

"""Agent: the bounded queue, and the threads that batch it, ship it and spool it.

Contract (after sentry-python's worker): the training thread only extends ``queue``
and never waits on the network or the disk. Three threads do the rest:

- the packer (``flightlog-agent``) cuts the queue into batches, in order, encodes each
  once (metric points as columns, other operations as records) and adds it to the
  outbox. It sleeps on ``Event.wait(flush_interval)`` and is woken early when the
  queue passes ``batch_points`` or a flush is asked for: no polling.
- the sender (``flightlog-sender``) POSTs the outbox's oldest batch and drops it once
  the collector acknowledges it, which the collector does after commit. It also sends
  the heartbeats of the runs this process has open.
- the adopter (``flightlog-adopter``, only when needed) sends the spools that processes
  which died left behind for the same collector.

The outbox holds encoded batches in order. They stay in memory while the collector
keeps up; once a send fails (collector unreachable, refusing, or answering 429/503),
or the in-memory part passes its byte budget, they go to the disk spool
(``flightlog.agent.spool``), and everything in memory follows, so the order is kept
and memory stays bounded for as long as the outage lasts. Delivery is at-least-once:
a batch is resent until acknowledged, and the collector stores a batch id once.

``flush()`` puts a marker in the queue and waits until every batch before it is
acknowledged, so "everything logged before flush() returned is durable" holds by
construction. During an outage it returns False once the batches are in the outbox
rather than stall training for as long as the outage lasts (see ``flush``).

When the queue passes half of ``max_queue`` points (the packer is starved of CPU or
stuck on a slow disk), the logging call itself packs one batch (a bounded, rare
spill); at ``max_queue`` new points are dropped. What is dropped is counted per reason
and per run, logged once per interval, and recorded on the run as the tags
``flightlog.dropped.<reason>``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import sys
import threading
import time
import uuid
import weakref
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from itertools import compress
from pathlib import Path
from typing import Any, NamedTuple

from flightlog.agent.spool import (
    DEFAULT_SPOOL_MAX_BYTES,
    ClaimedSpool,
    Segment,
    Spool,
    claim_orphans,
    default_spool_root,
)
from flightlog.agent.transport import TOKEN_HINT, CollectorClient
from flightlog.core.entities import RunStatus
from flightlog.core.exceptions import CollectorUnavailable, MlflowException, SpoolFull
from flightlog.core.wire import MetricTuple, encode_batch, pack, unpack

log = logging.getLogger("flightlog.agent")

# Settings: explicit argument > environment variable > default.
# FLIGHTLOG_FLUSH_INTERVAL: seconds between batches when the queue is not full (default 1.0).
DEFAULT_FLUSH_INTERVAL = 1.0
# FLIGHTLOG_BATCH_POINTS: queue items per batch; also the early-wake threshold (default 100000:
# measured here, twice the batch of 50000 cut the per-batch round trips enough to lift the
# 100-metric shape from ~0.95M to ~1.07M points/s).
DEFAULT_BATCH_POINTS = 100_000
# FLIGHTLOG_MAX_QUEUE: points held in the in-memory queue at most (default 1000000, about
# 120 MB); past half of it the logging call spills a batch itself, at the cap points drop.
DEFAULT_MAX_QUEUE = 1_000_000
# FLIGHTLOG_MAX_PENDING_BYTES: encoded bytes kept in memory awaiting acknowledgement
# before further batches go to the disk spool (default 32 MiB).
DEFAULT_MAX_PENDING_BYTES = 32 * 1024**2
# FLIGHTLOG_EXIT_FLUSH_TIMEOUT: seconds the interpreter's exit waits for the collector to
# acknowledge what is left (default 30); the rest stays in the spool.
DEFAULT_EXIT_FLUSH_TIMEOUT = 30.0
# FLIGHTLOG_HEARTBEAT_INTERVAL: seconds between heartbeats of each open run (default 10).
DEFAULT_HEARTBEAT_INTERVAL = 10.0
# (FLIGHTLOG_SPOOL_DIR and FLIGHTLOG_SPOOL_MAX_BYTES are described in flightlog.agent.spool.)

BACKOFF_START = 0.05  # seconds before the first retry
BACKOFF_MAX = 5.0  # the cap of the exponential backoff
RETRY_AFTER_MAX = 60.0  # the longest Retry-After we honour
HEARTBEAT_TIMEOUT = 5.0  # a heartbeat is not worth a long wait; the next one follows
SLOW_SEND = 5.0  # seconds a send may take before flush() treats it as an outage
SPILL_WAIT = 0.01  # seconds a logging call at the queue's cap waits for the packer's lock
DROP_REPORT_INTERVAL = 30.0  # at most one drop warning (and tag update) per interval
MAX_KEPT_ERRORS = 1000
DROP_REASONS = {
    "queue_full": "the in-memory queue was full: FLIGHTLOG_MAX_QUEUE",
    "spool_full": "the collector was not taking batches and the spool was full or "
    "unwritable: FLIGHTLOG_SPOOL_MAX_BYTES",
    "invalid_point": "points the wire format cannot carry",
    "closed": "logged after the agent was closed",
}
INGEST = "/api/flightlog/ingest"


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number") from None
    if value <= 0:
        raise ValueError(f"{name}={raw!r} must be positive")
    return value


def _setting(value: float | None, env: str, default: float) -> float:
    return value if value is not None else _env_float(env, default)


# -- the exit budget -----------------------------------------------------------------------

_exit_deadline: float | None = None


def begin_exit(budget: float) -> None:
    """Start the process's exit: from now on every flush shares one time budget.

    The excepthook, atexit and signal paths call this, so that ending runs and closing
    agents can never hang the exit, whatever state the collector is in.
    """
    global _exit_deadline
    deadline = time.monotonic() + budget
    if _exit_deadline is None or deadline < _exit_deadline:
        _exit_deadline = deadline


@contextlib.contextmanager
def time_budget(seconds: float) -> Iterator[None]:
    """Bound every flush made in the block by ``seconds`` in all, then lift the bound.

    For a signal whose handler may let the program go on: ending runs must not hang,
    but what comes after is not the exit.
    """
    global _exit_deadline
    saved = _exit_deadline
    begin_exit(seconds)
    try:
        yield
    finally:
        _exit_deadline = saved


def _bounded(timeout: float | None) -> float | None:
    if _exit_deadline is None:
        return timeout
    left = max(0.0, _exit_deadline - time.monotonic())
    return left if timeout is None else min(timeout, left)


def _reset_exit_for_tests() -> None:
    global _exit_deadline
    _exit_deadline = None


# -- queue items ---------------------------------------------------------------------------


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


class Op:
    """A non-metric operation (create_run, log_params, set_tags, update_run, ...)."""

    __slots__ = ("args", "name")

    def __init__(self, name: str, args: dict[str, Any]) -> None:
        self.name = name
        self.args = args


# The queue is one flat list of 5-slot records: (run_id, key, value, step, ts_seconds)
# for a metric point, (OP, Op | FlushMarker, None, None, None) for anything else. A
# producer adds a record with one ``list += tuple``, which is atomic under the GIL, so
# records never interleave; the packer then cuts columns with C-level slices
# (``items[2::5]``) instead of a Python loop per point, and no per-point tuple outlives
# the call (so it never reaches the garbage collector's generations).
RECORD = 5
OP = object()


# -- the outbox ------------------------------------------------------------------------------


class Entry:
    """One encoded batch waiting for acknowledgement: in memory or in the spool."""

    __slots__ = ("body", "length", "offset", "points", "segment", "seq")

    def __init__(self, seq: int, points: int, body: bytes | None) -> None:
        self.seq = seq
        self.points = points
        self.body = body
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
        self.spool = spool
        self.max_memory = max_memory
        self.entries: deque[Entry] = deque()
        self.memory = 0  # bytes of the bodies held in memory
        self.outage = False  # did the last send fail?
        self.last_seq = 0
        self.acked_seq = 0
        self.markers: deque[tuple[int, FlushMarker]] = deque()
        self.closed = False  # set at close(): the sender changes nothing any more

    def add(self, points: int, body: bytes, *, must_keep: bool = False) -> int:
        """Append a batch; return its seq. Raises SpoolFull when it cannot be kept,
        unless ``must_keep``: then it stays in memory past the budget (small op batches
        that must not be lost, such as a run's creation)."""
        with self.lock:
            if self.closed:
                raise SpoolFull("the agent is closed")
            seq = self.last_seq + 1
            entry = Entry(seq, points, body)
            if self.outage or self.memory + len(body) > self.max_memory:
                try:
                    entry.segment, entry.offset = self.spool.append(seq, points, body)
                    entry.body = None
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

    def body(self, entry: Entry) -> bytes:
        with self.lock:
            if self.closed:
                raise OSError("the outbox is closed")
            if entry.body is not None:
                return entry.body
            assert entry.segment is not None
            return self.spool.read(entry.segment, entry.offset, entry.length)

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
            if entry.body is None:
                continue
            try:
                entry.segment, entry.offset = self.spool.append(entry.seq, entry.points, entry.body)
            except SpoolFull:
                kept_batches += 1
                kept_points += entry.points
                continue
            self.memory -= len(entry.body)
            entry.body = None
        self.spool.sync()
        return kept_batches, kept_points

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


# -- the agent ---------------------------------------------------------------------------------


class Agent:
    """One process's logging agent for one collector."""

    def __init__(
        self,
        client: CollectorClient,
        *,
        flush_interval: float | None = None,
        batch_points: int | None = None,
        max_queue: int | None = None,
        max_pending_bytes: int | None = None,
        heartbeat_interval: float | None = None,
        spool_root: Path | None = None,
        spool_max_bytes: int | None = None,
        tracking_uri: str | None = None,
    ) -> None:
        self.client = client
        self.flush_interval = _setting(
            flush_interval, "FLIGHTLOG_FLUSH_INTERVAL", DEFAULT_FLUSH_INTERVAL
        )
        self.batch_points = int(
            _setting(batch_points, "FLIGHTLOG_BATCH_POINTS", DEFAULT_BATCH_POINTS)
        )
        self.max_queue = int(_setting(max_queue, "FLIGHTLOG_MAX_QUEUE", DEFAULT_MAX_QUEUE))
        self.max_pending_bytes = int(
            _setting(max_pending_bytes, "FLIGHTLOG_MAX_PENDING_BYTES", DEFAULT_MAX_PENDING_BYTES)
        )
        self.heartbeat_interval = _setting(
            heartbeat_interval, "FLIGHTLOG_HEARTBEAT_INTERVAL", DEFAULT_HEARTBEAT_INTERVAL
        )
        self.spool_max_bytes = int(
            _setting(spool_max_bytes, "FLIGHTLOG_SPOOL_MAX_BYTES", DEFAULT_SPOOL_MAX_BYTES)
        )
        self.tracking_uri = tracking_uri or client.base_url
        self.spool_root = spool_root or default_spool_root(client.base_url, None)
        self.wake_len = self.batch_points * RECORD  # queue slots that wake the packer early
        # Past this many slots the logging call packs a batch itself; past the cap it drops.
        self._cap_len = max(self.max_queue, 2 * self.batch_points) * RECORD
        self._spill_len = self._cap_len // 2
        self.dropped: dict[str, int] = {}  # points (or batches) dropped, per reason
        self.shipped_points = 0
        self.reachable = True  # did the last exchange with the collector succeed?
        self.outages = 0  # times a send failed after one had succeeded (or at the start)
        # run id -> None: the runs this process has open, which get heartbeats.
        self.open_runs: dict[str, None] = {}
        self._errors: list[dict[str, str]] = []
        self._error_notes: set[str] = set()  # one-off errors already reported
        self._hooks: list[Callable[[], None]] = []
        self._init_state(adopt=True)
        _track_for_fork(self)

    def _init_state(self, *, adopt: bool) -> None:
        # Producers only extend the end; the packer takes records from the front with one
        # slice and one slice deletion, so nothing appended in between is lost.
        self.queue: list[Any] = []
        self.agent_id = uuid.uuid4().hex
        self._pid = os.getpid()
        self._wake = threading.Event()  # wakes the packer
        self._send_wake = threading.Event()  # wakes an idle sender
        self._kick = threading.Event()  # cuts a sender's backoff short (close)
        self._stop = threading.Event()  # every thread: stop now
        self._packer_done = threading.Event()
        # Reentrant: a signal handler may run on a thread that holds it (see signals).
        self._lock = threading.RLock()
        self._pack_lock = threading.Lock()  # one packer at a time keeps batches in order
        self._packer_stuck = False  # a logging call waited for the lock in vain
        self._sending_since: float | None = None  # when the sender's request began
        self._outage_told = False  # has flush() warned about the current outage?
        self._closing = False
        self._close_marker: FlushMarker | None = None  # close()'s, while it waits
        self._last_down = False  # did the last send get no answer at all?
        self._closed = False
        self._ops_submitted = 0  # ops and flush markers appended (under _lock)
        self._ops_taken = 0  # ... and taken by a packer (under _pack_lock)
        self._drops: dict[tuple[str, str], int] = {}  # (run, reason) -> points, cumulative
        self._drops_reported: dict[tuple[str, str], int] = {}
        self._drops_warned: dict[str, int] = {}
        self._last_drop_report = -DROP_REPORT_INTERVAL
        self._last_drop_warning = -DROP_REPORT_INTERVAL
        self._next_heartbeat = time.monotonic() + self.heartbeat_interval
        spool = Spool(
            self.spool_root,
            owner=self.agent_id,
            tracking_uri=self.tracking_uri,
            max_bytes=self.spool_max_bytes,
        )
        self.outbox = Outbox(spool, self.max_pending_bytes)
        self._packer = threading.Thread(target=self._pack_loop, name="flightlog-agent", daemon=True)
        self._sender = threading.Thread(
            target=self._send_loop, name="flightlog-sender", daemon=True
        )
        self._packer.start()
        self._sender.start()
        self._adopter: threading.Thread | None = None
        self._claims: list[ClaimedSpool] = []
        if adopt and self.spool_root.is_dir():
            self._adopter = threading.Thread(
                target=self._adopt_loop, name="flightlog-adopter", daemon=True
            )
            self._adopter.start()

    def _after_fork_in_child(self) -> None:
        # The parent's queue, outbox and spool belong to the parent; the child starts
        # empty with its own threads, connection and spool directory (the parent's
        # socket and lock must not be shared). The parent's open runs stay its own.
        self.client.reset()
        self.outbox.spool.forget_after_fork()
        for claim in self._claims:
            claim.forget_after_fork()
        self._errors = []
        self.open_runs = {}
        self._init_state(adopt=False)
        for hook in self._hooks:
            hook()

    # -- the producer side (training thread) ---------------------------------------

    def on_pressure(self) -> None:
        """Called by the hot path once the queue holds ``wake_len`` slots or more."""
        if not self._wake.is_set():
            self._wake.set()
        q = self.queue
        if len(q) <= self._spill_len:
            return
        # The packer is behind (starved of CPU, or on a slow disk): pack one batch here.
        # Below the cap, only if the lock is free (its holder is packing: progress too).
        # At the cap, wait for it a little, since the holder may just be waiting for the
        # GIL this thread holds; but not again until the packer finished a batch, so a
        # packer stuck on a slow disk costs the training loop one short wait, not many.
        over = len(q) > self._cap_len
        if not self._closed:
            if over and not self._packer_stuck:
                got = self._pack_lock.acquire(timeout=SPILL_WAIT)
                self._packer_stuck = not got
            else:
                got = self._pack_lock.acquire(blocking=False)
            if got:
                try:
                    self._pack_front()
                except Exception:  # never raise into the training loop
                    log.exception("flightlog agent: packing a batch failed")
                finally:
                    self._pack_lock.release()
                return
        # (Measured again: waiting for the lock may have let the packer drain the queue.)
        if len(q) > self._cap_len and q[-RECORD] is not OP:
            # Over the bound: give up the newest point rather than block the caller.
            key = (q[-RECORD], "queue_full")
            del q[-RECORD:]
            self._drops[key] = self._drops.get(key, 0) + 1
            self.dropped["queue_full"] = self.dropped.get("queue_full", 0) + 1

    def submit_metric(self, item: MetricTuple) -> None:
        """Queue one (run_id, key, value, step, ts_seconds) point."""
        q = self.queue
        q += item
        if len(q) >= self.wake_len:
            self.on_pressure()

    def submit_op(self, name: str, args: dict[str, Any]) -> None:
        """Queue a non-metric operation; it is shipped in order with the metrics."""
        if name == "create_run" or name == "update_run":
            args = self._track_run(name, args)
        self._count_op()
        q = self.queue
        q += (OP, Op(name, args), None, None, None)
        if len(q) >= self.wake_len:
            self.on_pressure()

    def _track_run(self, name: str, args: dict[str, Any]) -> dict[str, Any]:
        # Runs this process creates or resumes get heartbeats until they end; the flag
        # tells the collector to watch them (runs created by other clients, which send
        # no heartbeats, are never timed out).
        run_id = args.get("run_id")
        if not isinstance(run_id, str):
            return args
        status = args.get("status")
        if name == "create_run" or status == "RUNNING":
            self.open_runs[run_id] = None
            return {**args, "heartbeat": True}
        if status in RunStatus.TERMINATED:
            self.open_runs.pop(run_id, None)
        return args

    def flush(
        self,
        timeout: float | None = None,
        *,
        raise_errors: bool = True,
        through_outage: bool = False,
        tell_outage: bool = True,
    ) -> bool:
        """Block until everything submitted before this call is acknowledged (True).

        Returns False if ``timeout`` passes first, or, unless ``through_outage`` is set,
        as soon as the collector is found unreachable (or refusing) and everything
        before this call is in the outbox, on disk where the spool has room: waiting
        would stall training for as long as the outage lasts, and the agent delivers
        the spooled batches when the collector is back (or, if this process ends
        first, the next agent on the node or ``flightlog sync`` does). During the
        process's exit every wait is also bounded by the exit budget.

        Errors the collector reported for earlier operations (a changed param, an
        unknown run) are raised here as one MlflowException when ``raise_errors`` is set.
        An early return for an outage is said once on stderr; ``tell_outage=False`` (the
        end of a run, usually just before the exit, whose line says it) leaves that to
        the next flush or the exit.
        """
        if self._pid != os.getpid():
            self._after_fork_in_child()
        marker = FlushMarker(strict=through_outage)
        ok = self._wait_marker(marker, _bounded(timeout))
        if not ok and marker.done.is_set() and not self._outage_told and tell_outage:
            # Returned early for an outage: say so once per outage, since the fluent
            # flush() and end_run() return nothing that would tell.
            self._outage_told = True
            log.warning(
                "flightlog: the collector at %s is not taking batches; what was logged "
                "is kept in the spool under %s and sent when it is back",
                self.client.base_url,
                self.spool_root,
            )
        if raise_errors:
            self.raise_errors()
        return ok

    def _wait_marker(self, marker: FlushMarker, timeout: float | None) -> bool:
        if self._stop.is_set():
            return False  # closed: nothing will settle it
        self._enqueue_marker(marker)
        if marker.strict:
            return marker.done.wait(timeout) and marker.acked
        # A collector that accepts the connection but does not answer (hung, swamped)
        # holds the sender in one request for up to the client's timeout: once a send
        # has been waiting SLOW_SEND seconds, count it as an outage, so the batches go
        # to disk and this wait ends, as it would if the collector were down.
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if marker.done.wait(SLOW_SEND if left is None else max(0.0, min(left, SLOW_SEND))):
                return marker.acked
            if left is not None and left <= SLOW_SEND:
                return False
            since = self._sending_since
            if since is not None and time.monotonic() - since >= SLOW_SEND:
                self.reachable = False
                self._settle(self.outbox.enter_outage(), False)

    def _enqueue_marker(self, marker: FlushMarker) -> None:
        self._count_op()
        q = self.queue
        q += (OP, marker, None, None, None)
        self._wake.set()

    def _count_op(self) -> None:
        # Counted before the append, so that once a packer has taken a slice, every
        # op in it is already counted (see _split).
        with self._lock:
            self._ops_submitted += 1

    def raise_errors(self) -> None:
        """Raise (and forget) the errors the collector reported since the last call."""
        with self._lock:
            errors, self._errors = self._errors, []
            self._error_notes.clear()  # a condition that persists is reported again
        if errors:
            first = errors[0]
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            raise MlflowException(
                f"{first['message']}{more}", first.get("error_code", "INTERNAL_ERROR")
            )

    def close(self, timeout: float | None = None) -> bool:
        """Deliver what is queued within ``timeout``, then stop. Idempotent.

        What the collector has not acknowledged by then is left in the spool, synced
        to disk, for the next agent on the node or ``flightlog sync``, and said so on
        stderr. Returns whether everything was acknowledged.
        """
        if self._closed:
            return True
        if self._pid != os.getpid():
            self._after_fork_in_child()
        self._closed = True
        timeout = _bounded(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        marker = FlushMarker(strict=True)
        self._close_marker = marker
        self._enqueue_marker(marker)
        # Only after the marker is queued: the packer stops once it sees this and an
        # empty queue, so the marker is packed first.
        self._closing = True
        self._kick.set()  # one immediate retry if the sender is backing off
        ok = marker.done.wait(timeout) and marker.acked
        if ok and self._adopter is not None:
            # Spools of dead processes: exit waits for them within the same budget.
            self._adopter.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        self._stop.set()
        self._kick.set()
        self._send_wake.set()
        self._wake.set()
        batches, points, memory_batches, memory_points = self.outbox.close()
        for claim in self._claims:
            claim.finish()
        if batches:
            where = self.outbox.spool.directory
            why = "is unreachable" if self._last_down else "did not acknowledge them in time"
            msg = (
                f"flightlog: {batches} batch(es) ({points} points) not sent: the collector "
                f"at {self.client.base_url} {why}; "
            )
            if memory_batches < batches:
                msg += (
                    f"they are kept in {where}; `flightlog sync` (or the next flightlog run "
                    "for this collector on this node) sends them."
                )
            if memory_batches:
                msg += (
                    f" {memory_batches} batch(es) ({memory_points} points) could not be "
                    "written to the spool (full or unwritable) and are lost."
                )
                self._count_drop("exit_spool_full", memory_points)
            print(msg, file=sys.stderr, flush=True)
        self._packer.join(timeout=1.0)
        self._sender.join(timeout=1.0)
        return ok

    # -- the packer ---------------------------------------------------------------------

    def _pack_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            try:
                while self.queue and not self._stop.is_set():
                    with self._pack_lock:
                        self._pack_front()
                    self._packer_stuck = False
            except Exception:  # the thread must outlive any one failure
                log.exception("flightlog agent: unexpected error while packing; will retry")
            if self._closing and not self.queue:
                self._packer_done.set()
                self._send_wake.set()
                return

    def _pack_front(self) -> None:
        """Take one batch from the queue's front, encode it, hand it to the outbox.

        Called with ``_pack_lock`` held, so batches enter the outbox in queue order.
        """
        q = self.queue
        n = min(len(q), self.wake_len)
        n -= n % RECORD
        if n == 0:
            return
        items = q[:n]
        del q[:n]
        columns, ops, markers = self._split(items)
        try:
            self._add_batch(columns, ops, bool(markers))
        except Exception as e:
            self._count_drop("agent_error", len(columns[0]) or 1)
            self._note_error("agent_error", f"a batch was lost to an agent error: {e!r}")
            raise
        finally:
            # Markers wait for the batches packed before them, even if this one was lost.
            for m in markers:
                if not self.outbox.add_marker(m):
                    self._send_wake.set()

    def _split(
        self, items: list[Any]
    ) -> tuple[list[list[Any]], list[list[Any]], list[FlushMarker]]:
        ops: list[list[Any]] = []
        markers: list[FlushMarker] = []
        columns = [items[i::RECORD] for i in range(RECORD)]
        # Skip the search for ops when none can be in the batch: the common case.
        if self._ops_submitted != self._ops_taken and OP in columns[0]:
            mask = [r is not OP for r in columns[0]]
            objs = [o for keep, o in zip(mask, columns[1], strict=True) if not keep]
            ops = [[o.name, o.args] for o in objs if o.__class__ is Op]
            markers = [o for o in objs if o.__class__ is FlushMarker]
            self._ops_taken += len(objs)
            columns = [list(compress(c, mask)) for c in columns]
        return columns, ops, markers

    def _encode(self, ops: list[list[Any]], columns: Sequence[Sequence[Any]]) -> bytes:
        try:
            return encode_batch(uuid.uuid4().hex, self.agent_id, ops, columns)
        except Exception as e:
            # Only a point that slipped past the call-site checks gets here (a run id
            # that is not a string, a value that is not a number): drop those points,
            # keep the rest, report it at the next flush.
            clean, bad = _clean_points(columns)
            if not bad:
                raise
            self._count_drop("invalid_point", bad)
            self._note_error(
                "invalid_point",
                f"{bad} metric point(s) with an invalid run id, key, value, step or "
                f"timestamp were dropped ({type(e).__name__}: {e})",
            )
            return encode_batch(uuid.uuid4().hex, self.agent_id, ops, clean)

    def _add_batch(self, columns: list[list[Any]], ops: list[list[Any]], flushing: bool) -> None:
        points = len(columns[0])
        ops = ops + self._drop_tag_ops(force=flushing)
        if not points and not ops:
            return
        body = self._encode(ops, columns)
        try:
            self.outbox.add(points, body, must_keep=not points)
            self.shipped_points += points
        except SpoolFull:
            if self.outbox.closed:
                self._count_points_dropped(columns[0], "closed")
                return
            # The spool is full too: drop the points, keep the operations (a run's
            # creation or end must not be lost for want of room for its points).
            self._count_points_dropped(columns[0], "spool_full")
            ops = ops + self._drop_tag_ops(force=flushing)
            if ops:
                try:
                    self.outbox.add(0, self._encode(ops, []), must_keep=True)
                except SpoolFull:  # closed meanwhile
                    self._count_drop("closed", len(ops))
        finally:
            if self.dropped != self._drops_warned:
                self._warn_drops()
            self._send_wake.set()

    # -- drops: counted per reason and run, warned once per interval, tagged on the run --

    def _count_drop(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + n

    def _count_points_dropped(self, run_ids: Sequence[Any], reason: str) -> None:
        for run_id, n in Counter(run_ids).items():
            if isinstance(run_id, str):
                key = (run_id, reason)
                self._drops[key] = self._drops.get(key, 0) + n
        self._count_drop(reason, len(run_ids))

    def _warn_drops(self) -> None:
        """Log what was dropped since the last warning, at most once per interval."""
        now = time.monotonic()
        if now - self._last_drop_warning < DROP_REPORT_INTERVAL:
            return
        counts = dict(self.dropped)
        new = {r: n - self._drops_warned.get(r, 0) for r, n in counts.items()}
        new = {r: n for r, n in new.items() if n}
        self._drops_warned = counts
        if not new:
            return
        self._last_drop_warning = now
        log.warning(
            "flightlog: dropped %s since the last warning (%s); counts are recorded on the "
            "run as flightlog.dropped.<reason> tags",
            ", ".join(f"{n} ({r})" for r, n in sorted(new.items())),
            "; ".join(DROP_REASONS.get(r, r) for r in sorted(new)),
        )

    def _drop_tag_ops(self, *, force: bool) -> list[list[Any]]:
        """set_tags ops recording each run's drop counts, when they changed."""
        if not self._drops:
            return []
        now = time.monotonic()
        if not force and now - self._last_drop_report < DROP_REPORT_INTERVAL:
            return []
        counts = self._drops.copy()  # the hot path may add to it meanwhile
        changed: dict[str, dict[str, str]] = {}
        for (run_id, reason), n in counts.items():
            if self._drops_reported.get((run_id, reason)) != n:
                changed.setdefault(run_id, {})[f"flightlog.dropped.{reason}"] = str(n)
        if not changed:
            return []
        self._drops_reported = counts
        self._last_drop_report = now
        return [["set_tags", {"run_id": r, "tags": tags}] for r, tags in changed.items()]

    # -- the sender -------------------------------------------------------------------------

    def _send_loop(self) -> None:
        delay = BACKOFF_START
        while not self._stop.is_set():
            try:
                self._heartbeat_if_due()
                entry = self.outbox.head()
                if entry is None:
                    if self._packer_done.is_set():
                        return
                    self._send_wake.wait(self._until_heartbeat())
                    self._send_wake.clear()
                    continue
                try:
                    body = self.outbox.body(entry)
                except OSError as e:
                    if self._stop.is_set():
                        return
                    log.error("flightlog agent: a spooled batch is unreadable, dropped: %s", e)
                    self._count_drop("spool_unreadable", entry.points)
                    self._settle(self.outbox.ack(entry), True)
                    continue
                self._sending_since = time.monotonic()
                try:
                    outcome, errors, retry_after = self._post(body)
                finally:
                    self._sending_since = None
                if outcome == "retry":
                    if self.reachable:
                        self.outages += 1
                    self.reachable = False
                    exit_marker = self._close_marker
                    if exit_marker is not None and self._last_down:
                        # Exiting with the collector down: once what is left is on disk,
                        # waiting out the exit budget only delays the exit; the next run
                        # or `flightlog sync` sends it.
                        exit_marker.strict = False
                    self._settle(self.outbox.enter_outage(), False)
                    self._backoff(max(delay * (0.5 + random.random()), retry_after))
                    delay = min(delay * 2, BACKOFF_MAX)
                    continue
                delay = BACKOFF_START
                self.reachable = True
                self._outage_told = False
                self.outbox.leave_outage()
                if errors:
                    self._record_errors(errors)
                self._settle(self.outbox.ack(entry), True)
            except Exception:  # the thread must outlive any one failure
                log.exception("flightlog agent: unexpected error while sending; will retry")
                self._backoff(BACKOFF_MAX)

    @staticmethod
    def _settle(markers: list[FlushMarker], acked: bool) -> None:
        for m in markers:
            m.settle(acked)

    def _backoff(self, seconds: float) -> None:
        """Wait before a retry; close() cuts it short, heartbeats go on meanwhile."""
        deadline = time.monotonic() + seconds
        while not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            if self._kick.wait(min(left, self._until_heartbeat())):
                self._kick.clear()
                return
            self._heartbeat_if_due()

    def _post(
        self, body: bytes, timeout: float | None = None
    ) -> tuple[str, list[dict[str, str]], float]:
        """One attempt at POSTing a batch: ("ok" | "rejected" | "retry", errors, retry_after)."""
        d = post_batch(self.client, body, timeout)
        self._last_down = d.status == 0  # no answer at all, not a busy or refusing one
        if d.status in (401, 403):
            self._note_error(
                f"auth{d.status}",
                f"The collector at {self.client.base_url} refused this client ({d.message}). "
                f"{TOKEN_HINT} Batches are kept in the spool until it accepts them.",
                "UNAUTHENTICATED",
            )
        elif d.outcome == "rejected":
            self._count_drop(f"rejected_http_{d.status}")
        return d.outcome, d.errors, d.retry_after

    def _record_errors(self, errors: list[dict[str, Any]]) -> None:
        clean = [
            {
                "op": str(e.get("op", "")),
                "error_code": str(e.get("error_code", "INTERNAL_ERROR")),
                "message": str(e.get("message", "")),
            }
            for e in errors
            if isinstance(e, dict)
        ]
        with self._lock:
            # Bounded: a stream of failing ops must not grow memory without end.
            self._errors.extend(clean[: max(0, MAX_KEPT_ERRORS - len(self._errors))])

    def _note_error(self, kind: str, message: str, code: str = "INVALID_PARAMETER_VALUE") -> None:
        """Report a condition at the next flush, once however often it happens before."""
        with self._lock:
            if kind in self._error_notes:
                return
            self._error_notes.add(kind)
        self._record_errors([{"op": kind, "error_code": code, "message": message}])
        log.warning("flightlog: %s", message)

    # -- heartbeats ---------------------------------------------------------------------------

    def _until_heartbeat(self) -> float:
        return max(0.01, self._next_heartbeat - time.monotonic())

    def _heartbeat_if_due(self) -> None:
        now = time.monotonic()
        if now < self._next_heartbeat:
            return
        self._next_heartbeat = now + self.heartbeat_interval
        runs = list(self.open_runs)  # one C-level copy: safe beside other threads
        if not runs:
            return
        # Heartbeats travel on their own, ahead of any backlog, so a run whose data is
        # still in the spool is not taken for dead. They carry no batch id: applying one
        # twice is harmless, and they must not fill the collector's table of batch ids.
        body = pack(
            {
                "v": 1,
                "agent_id": self.agent_id,
                "ops": [["heartbeat", {"run_id": r}] for r in runs],
            }
        )
        outcome, _, _ = self._post(body, timeout=HEARTBEAT_TIMEOUT)
        # A run the collector does not know yet (its creation is still queued) answers
        # with an error; that is expected and not the user's concern.
        log.debug("flightlog agent: heartbeat for %d run(s): %s", len(runs), outcome)

    # -- the adopter ------------------------------------------------------------------------

    def _adopt_loop(self) -> None:
        """Send the spools of dead processes for the same collector, oldest first."""
        try:
            self._claims = claim_orphans(self.spool_root, exclude=self.outbox.spool.directory)
            for claim in self._claims:
                self._send_claim(claim)
                if self._stop.is_set():
                    return
                claim.finish()
        except Exception:
            log.exception("flightlog agent: sending a dead process's spool failed")

    def _send_claim(self, claim: ClaimedSpool) -> None:
        log.info(
            "flightlog: sending %d batch(es) (%d points) left in %s by a process that ended",
            len(claim.records),
            claim.points,
            claim.directory,
        )
        delay = BACKOFF_START
        for ref in list(claim.records):
            body = claim.read(ref)
            if body is None:
                self._count_drop("spool_damaged", ref.points)
                log.error("flightlog: a damaged record in %s was skipped", ref.path)
                claim.done(ref)
                continue
            while True:
                if self._stop.is_set():
                    return
                outcome, errors, retry_after = self._post(body)
                if outcome != "retry":
                    if errors:
                        log.warning(
                            "flightlog: the collector reported %d error(s) for a spooled "
                            "batch of an ended process, e.g. %s",
                            len(errors),
                            errors[0].get("message"),
                        )
                    claim.done(ref)
                    delay = BACKOFF_START
                    break
                self._stop.wait(max(delay * (0.5 + random.random()), retry_after))
                delay = min(delay * 2, BACKOFF_MAX)


class Delivery(NamedTuple):
    """The outcome of one POST of a batch."""

    outcome: str  # "ok": stored; "rejected": resending cannot help; "retry": try later
    status: int  # HTTP status, 0 when no answer came
    errors: list[dict[str, str]]  # per-op errors the collector reported (or the rejection)
    retry_after: float  # seconds the collector asked us to wait, 0 if it did not say
    message: str


def post_batch(client: CollectorClient, body: bytes, timeout: float | None = None) -> Delivery:
    """POST one encoded batch to the ingest endpoint, once, and classify the answer.

    401/403 (a wrong or missing token) count as "retry": the batch is kept, since the
    same bytes go through once the token is fixed. 408, 429 and 5xx are "retry", with
    the Retry-After the collector sent; any other 4xx is "rejected".
    """
    try:
        status, headers, data = client.request("POST", INGEST, body, timeout=timeout)
    except CollectorUnavailable as e:
        log.debug("flightlog agent: %s", e)
        return Delivery("retry", 0, [], 0.0, str(e))
    if status == 200:
        try:
            reply = unpack(data) if data else {}
        except Exception:
            reply = {}
        errors = reply.get("errors") if isinstance(reply, dict) else None
        return Delivery("ok", 200, list(errors) if isinstance(errors, list) else [], 0.0, "")
    message = f"HTTP {status}: {_reply_message(data)}"
    if status in (401, 403):
        return Delivery("retry", status, [], BACKOFF_MAX, message)
    if status in (408, 429) or status >= 500:
        return Delivery("retry", status, [], _retry_after(headers.get("retry-after")), message)
    error = {
        "op": "batch",
        "error_code": "BAD_REQUEST",
        "message": f"Collector rejected a batch ({message})",
    }
    return Delivery("rejected", status, [error], 0.0, message)


def _retry_after(raw: str | None) -> float:
    if not raw:
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        return 0.0  # an HTTP date: rare from our collector; the backoff still applies
    return min(max(value, 0.0), RETRY_AFTER_MAX)


def _reply_message(data: bytes) -> str:
    try:
        reply = unpack(data)
        if isinstance(reply, dict) and "message" in reply:
            return str(reply["message"])
    except Exception:
        pass
    return data[:500].decode("utf-8", "replace")


def _clean_points(columns: Sequence[Sequence[Any]]) -> tuple[list[list[Any]], int]:
    """The points of ``columns`` that the wire format can carry, and how many were not."""
    keep: list[bool] = []
    for rid, key, value, step, ts in zip(*columns, strict=True):
        keep.append(
            isinstance(rid, str)
            and isinstance(key, str)
            and isinstance(value, (float, int))
            and isinstance(step, int)
            and -(2**63) <= step < 2**63
            and isinstance(ts, (float, int))
        )
    clean = [list(compress(c, keep)) for c in columns]
    return clean, len(keep) - sum(keep)


_live_agents: weakref.WeakSet[Agent] = weakref.WeakSet()
_fork_hook_installed = False


def _reinit_all_after_fork() -> None:
    for agent in list(_live_agents):
        agent._after_fork_in_child()


def _track_for_fork(agent: Agent) -> None:
    # The fork hook is installed with the first agent, not at import: importing
    # flightlog has no side effects.
    global _fork_hook_installed
    if not _fork_hook_installed:
        os.register_at_fork(after_in_child=_reinit_all_after_fork)
        _fork_hook_installed = True
    _live_agents.add(agent)

"""The agent: the bounded queue, and the threads that batch it, ship it and spool it.

Contract (after sentry-python's worker): the training thread only extends ``queue``
and never waits on the network or the disk. Three threads do the rest:

- the packer (``flightlog-agent``) cuts the queue into batches, in order, encodes each
  once (metric points as columns, other operations as records: ``flightlog.agent.records``)
  and adds it to the outbox (``flightlog.agent.outbox``). It sleeps on
  ``Event.wait(flush_interval)`` and is woken early when the queue passes
  ``batch_points`` or a flush is asked for: no polling.
- the sender (``flightlog-sender``) delivers the outbox's oldest batch
  (``flightlog.agent.delivery``: backoff, Retry-After, outages) and drops it once the
  collector acknowledges it, which the collector does after commit. It also sends the
  heartbeats of the runs this process has open.
- the adopter (``flightlog-adopter``, only when needed) sends the spools that processes
  which died left behind for the same collector.

Delivery is at-least-once: a batch is resent until acknowledged, and the collector
stores a batch id once.

``flush()`` puts a marker in the queue and waits until every batch before it is
acknowledged, so "everything logged before flush() returned is durable" holds by
construction. During an outage it returns False once the batches are in the outbox
rather than stall training for as long as the outage lasts (see ``flush``). During the
process's exit every wait shares one budget (``flightlog.agent.exit_budget``).

When the queue passes half of ``max_queue`` points (the packer is starved of CPU or
stuck on a slow disk), the logging call itself packs one batch (a bounded, rare
spill); at ``max_queue`` new points are dropped. What is dropped is counted per reason
and per run (``flightlog.agent.drops``).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from flightlog.agent.adopter import Adopter
from flightlog.agent.delivery import BACKOFF_MAX, DeliveryLoop
from flightlog.agent.drops import DropLedger
from flightlog.agent.exit_budget import begin_exit, bounded, time_budget
from flightlog.agent.heartbeats import Heartbeats
from flightlog.agent.outbox import Entry, FlushMarker, Outbox
from flightlog.agent.records import OP, RECORD, Op, clean_points, split_records
from flightlog.agent.reported_errors import ReportedErrors
from flightlog.agent.ring import Ring, batch_id, encode_points, record_runs, rings_root
from flightlog.agent.sender import REJECTED, Ack, Sender
from flightlog.agent.signals import keep_off_this_thread
from flightlog.agent.spool import Spool
from flightlog.agent.transport import TOKEN_HINT, CollectorClient, HttpSender
from flightlog.core import settings
from flightlog.core.exceptions import SpoolFull
from flightlog.core.spool_paths import default_spool_root
from flightlog.core.uris import is_loopback
from flightlog.core.wire import MetricTuple, encode_batch, encode_raw_batch

__all__ = ["Agent", "FlushMarker", "Op", "begin_exit", "time_budget"]

log = logging.getLogger("flightlog.agent")

# Settings (explicit argument > environment > default) are declared in
# flightlog.core.settings: FLUSH_INTERVAL, BATCH_POINTS, MAX_QUEUE, MAX_PENDING_BYTES,
# HEARTBEAT_INTERVAL, SPOOL_MAX_BYTES.
HEARTBEAT_TIMEOUT = 5.0  # a heartbeat is not worth a long wait; the next one follows
SPILL_WAIT = 0.01  # seconds a logging call at the queue's cap waits for the packer's lock
WAKE_POINTS = 16_384  # ring records that wake the packer (at most batch_points)


def _write_reserved(ring: Ring, seq: int, sid: int, step: int, value: float, ts: float) -> None:
    """Write a slot reserved earlier (``Agent.ring_full``). A locked ring (a free-threaded
    build: no GIL around ``pack_into``) writes under ``Ring.lock``, as its reservations
    do: the packer's ``take`` holds it too, and must never find a record half written."""
    if ring.locked:
        with ring.lock:
            ring.write_at(seq, sid, step, value, ts)
    else:
        ring.write_at(seq, sid, step, value, ts)


class Agent:
    """One process's logging agent for one collector."""

    def __init__(
        self,
        client: CollectorClient,
        *,
        sender: Sender | None = None,
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
        self.sender: Sender = sender or HttpSender(client)
        self.flush_interval = settings.FLUSH_INTERVAL.resolve(flush_interval)
        self.batch_points = settings.BATCH_POINTS.resolve(batch_points)
        self.max_queue = settings.MAX_QUEUE.resolve(max_queue)
        self.max_pending_bytes = settings.MAX_PENDING_BYTES.resolve(max_pending_bytes)
        self.heartbeat_interval = settings.HEARTBEAT_INTERVAL.resolve(heartbeat_interval)
        self.spool_max_bytes = settings.SPOOL_MAX_BYTES.resolve(spool_max_bytes)
        self.tracking_uri = tracking_uri or client.base_url
        self.spool_root = spool_root or default_spool_root(client.base_url, None)
        self.wake_len = self.batch_points * RECORD  # queue slots that wake the packer early
        # Ring records that wake the packer (a call past ``ring.limit`` takes the slow
        # path, which wakes it): a fraction of a batch, so little waits at a flush.
        self.wake_points = max(1, min(self.batch_points, WAKE_POINTS))
        # Past this many slots the logging call packs a batch itself; past the cap it drops.
        self._cap_len = max(self.max_queue, 2 * self.batch_points) * RECORD
        self._spill_len = self._cap_len // 2
        self.drops = DropLedger()
        self.dropped = self.drops.dropped  # points (or batches) dropped, per reason
        self.shipped_points = 0
        self.errors = ReportedErrors()
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
        self._outage_told = False  # has flush() warned about the current outage?
        self._closing = False
        self._close_marker: FlushMarker | None = None  # close()'s, while it waits
        self._last_down = False  # did the last send get no answer at all?
        self._sending_ref = False  # is the batch being sent a ring reference?
        self._closed = False
        self._close_finished = False
        self._ops_submitted = 0  # ops and flush markers appended (under _lock)
        self._ops_taken = 0  # ... and taken by a packer (under _pack_lock)
        self.drops.forget_runs()
        self.heartbeats = Heartbeats(self.heartbeat_interval)
        self.ring: Ring | None = None
        # The default (FLIGHTLOG_METRIC_RING=0 turns it off): the ring opens with the
        # agent (and in a fork child, at the fork). Off, or where the spool directory is
        # not writable, the agent has no ring and points take the in-memory queue.
        self.ring_wanted = settings.METRIC_RING.get()
        self._ring_taken = 0  # ring positions packed so far
        self._ring_marks: dict[int, tuple[int, int]] = {}  # outbox seq -> positions
        self._ops_start = 0  # journal index where the next batch's ops start
        self._ring_lock = threading.Lock()  # _ring_marks and the ring's acked positions
        # Batches name their ring records instead of copying them (the wire's ``r.ref``)
        # when the collector is on this node's loopback: it reads them from the ring
        # file. Turned off for good by a collector that cannot (``_send_inline``).
        self.ring_refs = (
            settings.RING_REFS.get()
            and isinstance(self.sender, HttpSender)
            and is_loopback(self.client.host)
        )
        spool = Spool(
            self.spool_root,
            owner=self.agent_id,
            tracking_uri=self.tracking_uri,
            max_bytes=self.spool_max_bytes,
        )
        self.outbox = Outbox(spool, self.max_pending_bytes)
        self.outbox.materialize = self._materialize
        self.delivery = DeliveryLoop(
            self.sender,
            wait=self._backoff,
            on_failure=self._on_send_failure,
            on_success=self._on_send_success,
            on_answer=self._on_answer,
        )
        self._packer = threading.Thread(target=self._pack_loop, name="flightlog-agent", daemon=True)
        self._sender = threading.Thread(
            target=self._send_loop, name="flightlog-sender", daemon=True
        )
        if self.ring_wanted:
            self._open_ring()
        self._packer.start()
        self._sender.start()
        self._adopter: Adopter | None = None
        if adopt and (self.spool_root.is_dir() or rings_root(self.spool_root).is_dir()):
            self._adopter = Adopter(
                self.spool_root, spool.directory, self.sender, self._stop, self.drops
            )
            self._adopter.start()

    def _after_fork_in_child(self) -> None:
        # The parent's queue, outbox and spool belong to the parent; the child starts
        # empty with its own threads, connection and spool directory (the parent's
        # socket and lock must not be shared). The parent's open runs stay its own.
        self.client.reset()
        self.outbox.spool.forget_after_fork()
        if self.ring is not None:
            self.ring.forget_after_fork()
        if self._adopter is not None:
            self._adopter.forget_after_fork()
        self.errors = ReportedErrors()
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
            run_id = q[-RECORD]
            del q[-RECORD:]
            self.drops.count_point(run_id, "queue_full")

    def _open_ring(self) -> Ring | None:
        # Capacity: the queue's bound (points neither acknowledged nor on disk).
        with self._lock:
            if self.ring_wanted and self._pid == os.getpid():
                self.ring_wanted = False
                self._make_ring()
        return self.ring

    def metric_ring(self) -> Ring | None:
        """This process's metric ring (opened now if it is wanted and not open yet)."""
        ring = self.ring
        if ring is None and self.ring_wanted:
            ring = self._open_ring()
        if self._pid != os.getpid():
            return None
        return ring

    def _materialize(self, body: bytes) -> bytes | None:
        ring = self.ring
        return None if ring is None else ring.materialize(body)

    def _make_ring(self) -> None:
        capacity = self.max_queue
        try:
            self.ring = Ring(rings_root(self.spool_root), self.agent_id, capacity)
        except OSError as e:  # an unwritable spool: points take the in-memory queue
            log.warning("flightlog: no metric ring (%s); points are kept in memory", e)
            return
        self.ring.limit = min(capacity, self.wake_points)

    def submit_metric(self, item: MetricTuple) -> None:
        """Log one (run_id, key, value, step, ts_seconds) point."""
        ring = self.ring
        if ring is None and self.ring_wanted:
            ring = self._open_ring()
        if ring is None or self._pid != os.getpid():
            q = self.queue
            q += item
            if len(q) >= self.wake_len:
                self.on_pressure()
            return
        rid, key, value, step, ts = item
        if (
            rid.__class__ is not str
            or key.__class__ is not str
            or value.__class__ is not float
            or step.__class__ is not int
            or not -(2**63) <= step < 2**63
            or ts.__class__ is not float
        ):
            # Past the call-site checks (a plug-in feeding the agent directly): the
            # queue's path drops what the wire cannot carry and reports it at the flush.
            q = self.queue
            q += item
            return
        self.ring_write(ring.series_index(rid, key), step, value, ts)

    def ring_write(self, sid: int, step: int, value: float, ts: float) -> None:
        """Reserve a slot and write one point (the hot path's general form)."""
        ring = self.ring
        assert ring is not None
        if ring.locked:
            with ring.lock:
                seq = ring.reserve()
                if seq < ring.limit:
                    ring.write_at(seq, sid, step, value, ts)
                    return
        else:
            seq, offset, lap = next(ring.slots)
            if seq < ring.limit:
                ring.pack_into(ring.mm, offset, step, value, ts, sid, lap)
                return
        self.ring_full(seq, sid, step, value, ts)

    def ring_full(self, seq: int, sid: int, step: int, value: float, ts: float) -> None:
        """A reserved position at or past ``ring.limit``: wake the packer, and write the
        slot if it is free (below acked + capacity).

        A full ring spills: the logging call packs what is before it and moves the
        outbox's batches to the disk spool, which frees their slots (a bounded, rare
        cost, as the queue's spill was). If the packer's lock stays taken (a packer
        stuck on a slow disk) or the spool is full, the point is dropped and counted.
        A dropped slot is marked in ``overflow`` so the reader passes it.
        """
        ring = self.ring
        assert ring is not None
        if not self._wake.is_set():
            self._wake.set()
        held = seq - ring.acked  # positions neither acknowledged nor on disk
        if self._closed:
            pass
        elif held * 4 < ring.capacity * 3:
            _write_reserved(ring, seq, sid, step, value, ts)
            # The packer is woken: until it has packed (it may wait for the GIL a
            # while), later calls go on at full speed, up to three quarters of the ring,
            # rather than each take this path. Never past acked + capacity.
            soft = ring.acked + ring.capacity * 3 // 4
            if ring.limit < soft:
                ring.limit = soft
            return
        else:
            # Past three quarters (the packer spills from half: it is behind, starved
            # of CPU) the call packs and spills itself if the packer's lock is free; at
            # the cap it waits for the lock a little, as the queue's spill did.
            if held >= ring.capacity and not self._packer_stuck:
                got = self._pack_lock.acquire(timeout=SPILL_WAIT)
                self._packer_stuck = not got
            else:
                got = self._pack_lock.acquire(blocking=False)
            if got:
                try:
                    for _ in range(ring.capacity // self.batch_points + 2):
                        if self._ring_taken >= seq or not self._pack_front():
                            break
                    self.outbox.spill()
                    self._advance_ring()
                except Exception:  # never raise into the training loop
                    log.exception("flightlog agent: spilling the metric ring failed")
                finally:
                    self._pack_lock.release()
            if seq < ring.acked + ring.capacity:
                _write_reserved(ring, seq, sid, step, value, ts)
                return
        ring.overflow[seq] = None
        self.drops.count_point(ring.series[sid][0], "closed" if self._closed else "queue_full")

    def _advance_ring(self) -> None:
        """Move the ring's acked positions past every batch acknowledged or on disk."""
        ring = self.ring
        if ring is None:
            return
        with self._ring_lock:
            last = self.outbox.spooled_prefix()
            marks = self._ring_marks
            done = [s for s in marks if s <= last]
            if done:
                for s in done[:-1]:
                    del marks[s]
                ring.set_acked(*marks.pop(done[-1]))
            ring.limit = min(ring.acked + ring.capacity, self._ring_taken + self.wake_points)

    def submit_op(self, name: str, args: dict[str, Any]) -> None:
        """Queue a non-metric operation; it is shipped in order with the metrics."""
        if name == "create_run" or name == "update_run":
            args = self.heartbeats.track(name, args)
        self._count_op()
        ring = self.ring
        if ring is None and self.ring_wanted:
            ring = self._open_ring()
        if ring is None or self._pid != os.getpid():
            q = self.queue
            q += (OP, Op(name, args), None, None, None)
        else:
            # Journaled (for a process that adopts this ring) and queued in one order.
            with ring.ops_lock:
                pos = ring.reserved()
                index = ring.journal_op(name, args)
                q = self.queue
                q += (OP, Op(name, args), index, pos, None)
        if len(q) >= self.wake_len:
            self.on_pressure()

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
        ok = self._wait_marker(marker, bounded(timeout))
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
        slow = self.delivery.slow_send
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if marker.done.wait(slow if left is None else max(0.0, min(left, slow))):
                return marker.acked
            if left is not None and left <= slow:
                return False
            self.delivery.check_stalled()

    def _enqueue_marker(self, marker: FlushMarker) -> None:
        self._count_op()
        q = self.queue
        pos = None if self.ring is None else self.ring.reserved()
        q += (OP, marker, None, pos, None)
        self._wake.set()

    def _count_op(self) -> None:
        # Counted before the append, so that once a packer has taken a slice, every
        # op in it is already counted (see _split).
        with self._lock:
            self._ops_submitted += 1

    def raise_errors(self) -> None:
        """Raise (and forget) the errors the collector reported since the last call."""
        self.errors.raise_if_any()

    def close(self, timeout: float | None = None) -> bool:
        """Deliver what is queued within ``timeout``, then stop. Idempotent.

        What the collector has not acknowledged by then is left in the spool, synced
        to disk, for the next agent on the node or ``flightlog sync``, and said so on
        stderr. Returns whether everything was acknowledged.
        """
        if self._closed:
            marker = self._close_marker
            if marker is None or self._close_finished:
                return True
            # A close in progress that cannot go on: the SIGTERM handler's helper while
            # the main thread's close (a forked Pool worker's exit) is interrupted. The
            # process dies when this returns, so wait, as that close would, for what
            # it queued to be acknowledged (the packer and sender work on without it).
            return marker.done.wait(bounded(timeout)) and marker.acked
        if self._pid != os.getpid():
            self._after_fork_in_child()
        self._closed = True
        timeout = bounded(timeout)
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
        if self.ring is not None:
            # Everything acknowledged: the ring goes; else it stays for an adopter.
            done = ok and self.ring.acked >= self.ring.reserved()
            self.ring.close(remove=done)
        if self._adopter is not None:
            self._adopter.finish()
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
                self.drops.count("exit_spool_full", memory_points)
            print(msg, file=sys.stderr, flush=True)
        self._packer.join(timeout=1.0)
        self._sender.join(timeout=1.0)
        self._close_finished = True
        return ok

    # -- the packer ---------------------------------------------------------------------

    def _pack_loop(self) -> None:
        keep_off_this_thread()
        while not self._stop.is_set():
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            try:
                while (self.queue or self._ring_pending()) and not self._stop.is_set():
                    if self._gathering():
                        break  # the next call past ring.limit wakes it (_advance_ring)
                    with self._pack_lock:
                        moved = self._pack_front()
                    self._packer_stuck = False
                    self._spill_if_lagging()
                    if not moved:
                        time.sleep(0.001)  # a write in flight on another thread
            except Exception:  # the thread must outlive any one failure
                log.exception("flightlog agent: unexpected error while packing; will retry")
            if self._closing and not self.queue and not self._ring_pending():
                self._packer_done.set()
                self._send_wake.set()
                return

    def _spill_if_lagging(self) -> None:
        # The collector lags (over half the ring is unacknowledged): the batches go to
        # the disk spool, which frees their slots, so the training thread does not reach
        # a full ring. Outside the packer's lock: a logging call at the cap may take it.
        ring = self.ring
        if ring is not None and ring.reserved() - ring.acked > ring.capacity // 2:
            if not self._closed:
                self.outbox.spill()
                self._advance_ring()

    def _gathering(self) -> bool:
        """Let ring records gather into a bigger batch: the sender is still busy with
        an earlier one and fewer than ``batch_points`` are waiting. A batch costs the
        collector a commit whatever its size, so while it is the bottleneck batches
        grow toward ``batch_points``; while it keeps up, the packer cuts at every wake
        (``WAKE_POINTS`` records, or ``flush_interval``), so a flush finds little left
        to send. Ops and flush markers (the queue) are never held back. Once the sender
        is done, ``_advance_ring`` puts ``ring.limit`` a wake's worth past what was
        packed, so the next logging call past it wakes the packer."""
        ring = self.ring
        return (
            ring is not None
            and not self.queue
            and not self._closing
            and ring.reserved() - self._ring_taken < min(self.batch_points, ring.capacity // 4)
            and self.outbox.head() is not None
        )

    def _ring_pending(self) -> bool:
        ring = self.ring
        return ring is not None and ring.reserved() > self._ring_taken

    def _pack_front(self) -> bool:
        """Take one batch from the queue's front (and the ring), encode it, hand it to
        the outbox. Returns whether anything was taken.

        Called with ``_pack_lock`` held, so batches enter the outbox in queue order.
        """
        q = self.queue
        n = min(len(q), self.wake_len)
        n -= n % RECORD
        items = q[:n]
        del q[:n]
        if self.ring is not None:
            return self._pack_ring(items)
        if n == 0:
            return False
        columns, ops, markers = self._split(items)
        try:
            self._add_batch(columns, ops, bool(markers))
        except Exception as e:
            self.drops.count("agent_error", len(columns[0]) or 1)
            self.errors.note("agent_error", f"a batch was lost to an agent error: {e!r}")
            raise
        finally:
            # Markers wait for the batches packed before them, even if this one was lost.
            for m in markers:
                if not self.outbox.add_marker(m):
                    self._send_wake.set()
        return True

    def _pack_ring(self, items: list[Any]) -> bool:
        """One batch of queued ops and the ring records logged before the next queued op
        (so a run's creation never comes after its points, and a flush marker after
        every point logged before it). Its id comes from its ring and ops positions."""
        ring = self.ring
        assert ring is not None
        ops: list[list[Any]] = []
        markers: list[FlushMarker] = []
        ops_end = self._ops_start
        points_in_queue: list[Any] = []
        end = min(ring.reserved(), self._ring_taken + self.batch_points)
        for j in range(0, len(items), RECORD):
            if items[j] is not OP:  # a point logged before the ring existed (fork)
                points_in_queue += items[j : j + RECORD]
                continue
            obj, index, pos = items[j + 1], items[j + 2], items[j + 3]
            if obj.__class__ is Op:
                ops.append([obj.name, obj.args])
                if index is not None:
                    ops_end = index + 1
            else:
                markers.append(obj)
            if pos is not None:
                end = max(end, pos)
        with self._lock:
            self._ops_taken += len(ops) + len(markers)
        nxt = self.queue[:RECORD]
        if nxt and nxt[0] is OP and nxt[3] is not None:
            end = min(end, nxt[3])  # points logged after the next op wait for it
        start = self._ring_taken
        taken, chunks, extra = ring.take(start, max(end, start))
        if taken == start and not ops and not markers and not points_in_queue:
            return False
        self._ring_taken = taken
        try:
            ops = ops + self.drops.tag_ops(force=bool(markers))
            points = taken - start - sum(1 for e in extra if e is None)
            if taken > start or ops_end > self._ops_start:
                bid = batch_id(ring.ring_id, start, self._ops_start)
                ref = self.ring_refs and not extra and taken > start
                if ref:
                    body = encode_raw_batch(
                        bid, self.agent_id, ops, None, ref=ring.ref(start, taken)
                    )
                else:
                    body = self._encode_ring(bid, ops, chunks, extra)
                self._ops_start = ops_end
                ring.cut(taken, ops_end)
                self._add_ring_batch(
                    bid, points, body, ops, chunks, bool(markers), (taken, ops_end), ref
                )
            elif ops:  # only the drop counters' tags: nothing an adopter re-cuts
                body = encode_raw_batch(uuid.uuid4().hex, self.agent_id, ops, None)
                self.outbox.add(0, body, must_keep=True)
            self._advance_ring()
            if points_in_queue:
                columns, _, _ = self._split(points_in_queue)
                self._add_batch(columns, [], False)
        except Exception as e:
            self.drops.count("agent_error", taken - start or 1)
            self.errors.note("agent_error", f"a batch was lost to an agent error: {e!r}")
            raise
        finally:
            self._send_wake.set()
            for m in markers:
                if not self.outbox.add_marker(m):
                    self._send_wake.set()
        return True

    def _add_ring_batch(
        self,
        bid: str,
        points: int,
        body: bytes,
        ops: list[list[Any]],
        chunks: list[Any],
        flushing: bool,
        mark: tuple[int, int],
        ref: bool,
    ) -> None:
        try:
            with self._ring_lock:
                seq = self.outbox.add(points, body, must_keep=not points, ref=ref)
                self._ring_marks[seq] = mark
            self.shipped_points += points
        except SpoolFull:
            # As the queue's path: drop the points, keep the operations, same batch id
            # (an adopter's copy of this batch is then a duplicate, not a second run).
            ring = self.ring
            assert ring is not None
            run_ids = record_runs(chunks, ring.series)
            reason = "closed" if self.outbox.closed else "spool_full"
            self.drops.count_points(run_ids, reason)
            if reason == "closed":
                return
            ops = ops + self.drops.tag_ops(force=flushing)
            if ops:
                try:
                    seq = self.outbox.add(
                        0, encode_raw_batch(bid, self.agent_id, ops, None), must_keep=True
                    )
                    with self._ring_lock:
                        self._ring_marks[seq] = mark
                except SpoolFull:  # closed meanwhile
                    self.drops.count("closed", len(ops))
        finally:
            self.drops.warn_if_due()

    def _encode_ring(
        self,
        bid: str,
        ops: list[list[Any]],
        chunks: list[Any],
        extra: list[Any],
    ) -> bytes:
        """The batch of ring records as they are (the wire's ``r`` form) and ``ops``."""
        ring = self.ring
        assert ring is not None
        kept = [e for e in extra if e is not None]
        if kept:  # points that found the ring full (rare)
            chunks = [*chunks, encode_points(kept)]
        records = b"".join(chunks) if len(chunks) != 1 else chunks[0]
        return encode_raw_batch(bid, self.agent_id, ops, None, records, ring.ids_for(chunks))

    def _split(
        self, items: list[Any]
    ) -> tuple[list[list[Any]], list[list[Any]], list[FlushMarker]]:
        # Skip the search for ops when none can be in the batch: the common case.
        columns, ops, markers, taken = split_records(items, self._ops_submitted != self._ops_taken)
        self._ops_taken += taken
        return columns, ops, markers

    def _encode(self, ops: list[list[Any]], columns: Sequence[Sequence[Any]]) -> bytes:
        try:
            return encode_batch(uuid.uuid4().hex, self.agent_id, ops, columns)
        except Exception as e:
            # Only a point that slipped past the call-site checks gets here (a run id
            # that is not a string, a value that is not a number): drop those points,
            # keep the rest, report it at the next flush.
            clean, bad = clean_points(columns)
            if not bad:
                raise
            self.drops.count("invalid_point", bad)
            self.errors.note(
                "invalid_point",
                f"{bad} metric point(s) with an invalid run id, key, value, step or "
                f"timestamp were dropped ({type(e).__name__}: {e})",
            )
            return encode_batch(uuid.uuid4().hex, self.agent_id, ops, clean)

    def _add_batch(self, columns: list[list[Any]], ops: list[list[Any]], flushing: bool) -> None:
        points = len(columns[0])
        ops = ops + self.drops.tag_ops(force=flushing)
        if not points and not ops:
            return
        body = self._encode(ops, columns)
        try:
            self.outbox.add(points, body, must_keep=not points)
            self.shipped_points += points
        except SpoolFull:
            if self.outbox.closed:
                self.drops.count_points(columns[0], "closed")
                return
            # The spool is full too: drop the points, keep the operations (a run's
            # creation or end must not be lost for want of room for its points).
            self.drops.count_points(columns[0], "spool_full")
            ops = ops + self.drops.tag_ops(force=flushing)
            if ops:
                try:
                    self.outbox.add(0, self._encode(ops, []), must_keep=True)
                except SpoolFull:  # closed meanwhile
                    self.drops.count("closed", len(ops))
        finally:
            self.drops.warn_if_due()
            self._send_wake.set()

    # -- the sender -------------------------------------------------------------------------

    def _send_loop(self) -> None:
        keep_off_this_thread()
        while not self._stop.is_set():
            try:
                self._heartbeat_if_due()
                entry = self.outbox.head()
                if entry is None:
                    if self._packer_done.is_set():
                        return
                    self._send_wake.wait(self.heartbeats.until_due())
                    self._send_wake.clear()
                    continue
                try:
                    body, ref = self.outbox.body(entry)
                except OSError as e:
                    if self._stop.is_set():
                        return
                    log.error("flightlog agent: a spooled batch is unreadable, dropped: %s", e)
                    self.drops.count("spool_unreadable", entry.points)
                    self._settle(self.outbox.ack(entry), True)
                    continue
                ring = self.ring
                if ring is not None:
                    ring.sync_journal()  # this batch's cut is durable before it is sent
                self._sending_ref = ref
                ack = self.delivery.deliver(body)
                if ack is not None and ack.outcome == REJECTED and ref:
                    ack = self._send_inline(entry, ack)
                if ack is None:
                    continue  # stopped
                if ack.errors:
                    self.errors.record(ack.errors)
                self._settle(self.outbox.ack(entry), True)
                # (Moves ``ring.limit`` to a wake's worth past what was packed: the
                # next logging call past it wakes the packer for what gathered.)
                self._advance_ring()
            except Exception:  # the thread must outlive any one failure
                log.exception("flightlog agent: unexpected error while sending; will retry")
                self._backoff(BACKOFF_MAX)

    def _send_inline(self, entry: Entry, refused: Ack) -> Ack | None:
        """A collector refused a batch that names ring records (one elsewhere, or
        older, or one that cannot read this ring): send it with its records, and every
        later batch too. The refusal counts as nothing dropped.

        Unless the batch went to the disk spool while its reference was out (an outage
        long enough to spill): its slots were freed, which is why it was refused; that
        says nothing about the collector, so later batches still name their records."""
        self._sending_ref = False
        spooled = not entry.ref  # cleared by ``Outbox._to_spool``
        body = self.outbox.inline(entry)
        if body is None:
            return refused
        if self.ring_refs and not spooled:
            self.ring_refs = False
            log.info(
                "flightlog agent: the collector at %s does not read this process's metric "
                "ring (%s); batches carry their records from now on",
                self.client.base_url,
                refused.message,
            )
        return self.delivery.deliver(body)

    @property
    def reachable(self) -> bool:
        """Did the last exchange with the collector succeed?"""
        return self.delivery.reachable

    @property
    def outages(self) -> int:
        """Times a send failed after one had succeeded (or at the start)."""
        return self.delivery.outages

    def _on_send_failure(self) -> None:
        exit_marker = self._close_marker
        if exit_marker is not None and self._last_down:
            # Exiting with the collector down: once what is left is on disk, waiting out
            # the exit budget only delays the exit; the next run or `flightlog sync`
            # sends it.
            exit_marker.strict = False
        # Everything in memory goes to disk; flushes that may end early do.
        self._settle(self.outbox.enter_outage(), False)

    def _on_send_success(self) -> None:
        self._outage_told = False
        self.outbox.leave_outage()

    def _on_answer(self, ack: Ack) -> None:
        self._last_down = ack.status == 0  # no answer at all, not a busy or refusing one
        if ack.status in (401, 403):
            self.errors.note(
                f"auth{ack.status}",
                f"The collector at {self.client.base_url} refused this client ({ack.message}). "
                f"{TOKEN_HINT} Batches are kept in the spool until it accepts them.",
                "UNAUTHENTICATED",
            )
        elif ack.outcome == REJECTED and not self._sending_ref:  # (a ref is resent inline)
            self.drops.count(f"rejected_http_{ack.status}")

    @staticmethod
    def _settle(markers: list[FlushMarker], acked: bool) -> None:
        for m in markers:
            m.settle(acked)

    def _backoff(self, seconds: float) -> bool:
        """Wait before a retry; close() cuts it short, heartbeats go on meanwhile.

        Returns False once the agent stops.
        """
        deadline = time.monotonic() + seconds
        while not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return True
            if self._kick.wait(min(left, self.heartbeats.until_due())):
                self._kick.clear()
                return not self._stop.is_set()
            self._heartbeat_if_due()
        return False

    # -- heartbeats ---------------------------------------------------------------------------

    def _heartbeat_if_due(self) -> None:
        due = self.heartbeats.due(self.agent_id)
        if due is None:
            return
        runs, body = due
        ack = self.delivery.attempt(body, timeout=HEARTBEAT_TIMEOUT)
        # A run the collector does not know yet (its creation is still queued) answers
        # with an error; that is expected and not the user's concern.
        log.debug("flightlog agent: heartbeat for %d run(s): %s", runs, ack.outcome)


_live_agents: weakref.WeakSet[Agent] = weakref.WeakSet()
_fork_hook_installed = False


def _reinit_all_after_fork() -> None:
    for agent in list(_live_agents):
        agent._after_fork_in_child()
    _close_at_multiprocessing_exit()


class _AfterForkKey:
    """What multiprocessing's after-fork registry holds on to (it wants a weakref-able
    object)."""


_AFTER_FORK_KEY = _AfterForkKey()


def _close_at_multiprocessing_exit() -> None:
    # A multiprocessing child started by fork (Process, Pool workers) ends with
    # os._exit(): no atexit handler runs, and what it logged would be lost. Before that
    # exit multiprocessing runs its own finalizers; but its bootstrap clears those the
    # child inherited, then runs its after-fork registry, so register the finalizer
    # from there. multiprocessing is imported by whoever forks through it: a process
    # that never imports it pays nothing.
    util = sys.modules.get("multiprocessing.util")
    if util is not None:
        util.register_after_fork(_AFTER_FORK_KEY, _register_exit_finalizer)


def _register_exit_finalizer(_: object) -> None:
    util = sys.modules["multiprocessing.util"]
    util.Finalize(None, close_all_at_exit, exitpriority=10)


def close_all_at_exit() -> None:
    """Deliver what every agent of this process holds, within the exit budget."""
    budget = settings.EXIT_FLUSH_TIMEOUT.get()
    begin_exit(budget)
    for agent in list(_live_agents):
        agent.close(budget)


def _track_for_fork(agent: Agent) -> None:
    # The fork hook is installed with the first agent, not at import: importing
    # flightlog has no side effects.
    global _fork_hook_installed
    if not _fork_hook_installed:
        os.register_at_fork(after_in_child=_reinit_all_after_fork)
        _fork_hook_installed = True
    _live_agents.add(agent)

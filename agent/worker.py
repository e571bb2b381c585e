"""Agent: the bounded queue and the background thread that batches and ships it.

Contract (after sentry-python's worker): the training thread only extends
``queue``; the thread drains it in order, packs metric points as columns and other
operations as records, POSTs each batch to the collector and waits for the
acknowledgement, which the collector sends after commit. ``flush()`` puts a marker in
the queue and waits until the batch holding it is acknowledged, so "everything logged
before flush() returned is durable" holds by construction.

The thread sleeps on ``Event.wait(flush_interval)`` and is woken early when the queue
passes ``batch_points`` or a flush is asked for: no polling.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from itertools import compress
from typing import Any

from flightlog.exceptions import MlflowException
from flightlog.transport import CollectorClient, CollectorUnavailable
from flightlog.wire import MetricTuple, encode_batch, unpack

log = logging.getLogger("flightlog.agent")

# Settings: explicit argument > environment variable > default.
# FLIGHTLOG_FLUSH_INTERVAL: seconds between batches when the queue is not full (default 1.0).
DEFAULT_FLUSH_INTERVAL = 1.0
# FLIGHTLOG_BATCH_POINTS: queue items per batch; also the early-wake threshold (default 50000).
DEFAULT_BATCH_POINTS = 50_000
# FLIGHTLOG_MAX_QUEUE: queue items held in memory at most (default 4000000, ~0.5 GB at worst).
DEFAULT_MAX_QUEUE = 4_000_000
# FLIGHTLOG_EXIT_FLUSH_TIMEOUT: seconds the interpreter's exit waits for the queue (default 30).
DEFAULT_EXIT_FLUSH_TIMEOUT = 30.0


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


class FlushMarker:
    """A queue item that marks a flush() point; its event fires once it is acknowledged."""

    __slots__ = ("done", "errors")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.errors: list[dict[str, str]] = []


class Op:
    """A non-metric operation (create_run, log_params, set_tags, update_run, ...)."""

    __slots__ = ("args", "name")

    def __init__(self, name: str, args: dict[str, Any]) -> None:
        self.name = name
        self.args = args


# The queue is one flat list of 5-slot records: (run_id, key, value, step, ts_seconds)
# for a metric point, (OP, Op | FlushMarker, None, None, None) for anything else. A
# producer adds a record with one ``list += tuple``, which is atomic under the GIL, so
# records never interleave; the thread then cuts columns with C-level slices
# (``items[2::5]``) instead of a Python loop per point, and no per-point tuple outlives
# the call (so it never reaches the garbage collector's generations).
RECORD = 5
OP = object()


class Agent:
    """One process's logging agent for one collector."""

    def __init__(
        self,
        client: CollectorClient,
        *,
        flush_interval: float | None = None,
        batch_points: int | None = None,
        max_queue: int | None = None,
    ) -> None:
        self.client = client
        self.flush_interval = (
            flush_interval
            if flush_interval is not None
            else _env_float("FLIGHTLOG_FLUSH_INTERVAL", DEFAULT_FLUSH_INTERVAL)
        )
        self.batch_points = int(
            batch_points
            if batch_points is not None
            else _env_float("FLIGHTLOG_BATCH_POINTS", DEFAULT_BATCH_POINTS)
        )
        self.max_queue = int(
            max_queue
            if max_queue is not None
            else _env_float("FLIGHTLOG_MAX_QUEUE", DEFAULT_MAX_QUEUE)
        )
        self.wake_len = self.batch_points * RECORD  # queue slots that wake the thread early
        self.agent_id = uuid.uuid4().hex
        self.dropped: dict[str, int] = {}
        self.shipped_points = 0
        self.reachable = True  # did the last exchange with the collector succeed?
        self._errors: list[dict[str, str]] = []
        self._hooks: list[Callable[[], None]] = []
        self._init_state()
        _live_agents.add(self)

    def _init_state(self) -> None:
        # Producers only extend the end; the thread takes records from the front with one
        # slice and one slice deletion, so nothing appended in between is lost.
        self.queue: list[Any] = []
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._closed = False
        self._ops_submitted = 0  # ops and flush markers appended (under _lock)
        self._ops_taken = 0  # ... and taken by the thread
        self._pid = os.getpid()
        self._thread = threading.Thread(target=self._run, name="flightlog-agent", daemon=True)
        self._thread.start()

    def _after_fork_in_child(self) -> None:
        # The parent's queue items belong to the parent; the child starts empty with its
        # own thread and connection (the parent's socket must not be shared).
        self.client.reset()
        self._errors = []
        self._init_state()
        for hook in self._hooks:
            hook()

    # -- the producer side (training thread) ---------------------------------------

    def on_pressure(self) -> None:
        """Called by the hot path once the queue holds ``wake_len`` slots or more."""
        if not self._wake.is_set():
            self._wake.set()
        q = self.queue
        if len(q) > self.max_queue * RECORD and q[-RECORD] is not OP:
            # Over the bound: give up the newest point rather than block the caller.
            del q[-RECORD:]
            self.dropped["queue_full"] = self.dropped.get("queue_full", 0) + 1

    def submit_metric(self, item: MetricTuple) -> None:
        """Queue one (run_id, key, value, step, ts_seconds) point."""
        q = self.queue
        q += item
        if len(q) >= self.wake_len:
            self.on_pressure()

    def submit_op(self, name: str, args: dict[str, Any]) -> None:
        """Queue a non-metric operation; it is shipped in order with the metrics."""
        self._count_op()
        q = self.queue
        q += (OP, Op(name, args), None, None, None)
        if len(q) >= self.wake_len:
            self.on_pressure()

    def flush(self, timeout: float | None = None, *, raise_errors: bool = True) -> bool:
        """Block until everything submitted before this call is acknowledged.

        Returns False if the timeout passed first. Errors the collector reported for
        earlier operations (a changed param, an unknown run) are raised here as one
        MlflowException when ``raise_errors`` is set.
        """
        if self._pid != os.getpid():
            self._after_fork_in_child()
        marker = FlushMarker()
        self._count_op()
        q = self.queue
        q += (OP, marker, None, None, None)
        self._wake.set()
        ok = marker.done.wait(timeout)
        if raise_errors:
            self.raise_errors()
        return ok

    def raise_errors(self) -> None:
        """Raise (and forget) the errors the collector reported since the last call."""
        with self._lock:
            errors, self._errors = self._errors, []
        if errors:
            first = errors[0]
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            raise MlflowException(
                f"{first['message']}{more}", first.get("error_code", "INTERNAL_ERROR")
            )

    def close(self, timeout: float | None = None) -> bool:
        """Flush, then stop the thread. Idempotent."""
        if self._closed:
            return True
        ok = self.flush(timeout, raise_errors=False)
        self._closed = True
        self._wake.set()
        self._thread.join(timeout=1.0)
        return ok

    # -- the thread ---------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            try:
                self._drain()
            except Exception:  # the thread must outlive any one failure
                log.exception("flightlog agent: unexpected error while shipping; will retry")
            if self._closed and not self.queue:
                return

    def _drain(self) -> None:
        q = self.queue
        while q:
            n = min(len(q), self.wake_len)
            n -= n % RECORD
            items = q[:n]
            del q[:n]
            self._ship(items)

    def _count_op(self) -> None:
        # Counted before the append, so that once the thread has taken a slice, every
        # op in it is already counted (see _ship).
        with self._lock:
            self._ops_submitted += 1

    def _ship(self, items: list[Any]) -> None:
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
        points = len(columns[0])
        if points or ops:
            body = encode_batch(uuid.uuid4().hex, self.agent_id, ops, columns)
            errors = self._send(body)
            if errors:
                with self._lock:
                    # Bounded: a stream of failing ops must not grow memory without end.
                    self._errors.extend(errors[: max(0, 1000 - len(self._errors))])
            self.shipped_points += points
        for m in markers:
            m.done.set()

    def _send(self, body: bytes) -> list[dict[str, str]]:
        """POST one batch until it is acknowledged; return the errors it reported."""
        delay = 0.05
        while True:
            try:
                status, headers, data = self.client.request("POST", "/api/flightlog/ingest", body)
            except CollectorUnavailable as e:
                self.reachable = False
                if self._closed:
                    self._count_drop("collector_unreachable_at_exit")
                    log.warning("flightlog: dropped a batch at exit: %s", e)
                    return []
                log.debug("flightlog agent: %s; retrying in %.2fs", e, delay)
            else:
                self.reachable = True
                if status == 200:
                    reply = unpack(data) if data else {}
                    return list(reply.get("errors") or []) if isinstance(reply, dict) else []
                if status in (429, 503) or status >= 500:
                    retry_after = headers.get("retry-after")
                    if retry_after:
                        try:
                            delay = max(delay, float(retry_after))
                        except ValueError:
                            pass
                else:
                    # 4xx: resending the same bytes cannot succeed. Count it and report it.
                    self._count_drop(f"rejected_http_{status}")
                    message = data[:500].decode("utf-8", "replace")
                    try:
                        reply = unpack(data)
                        message = str(reply.get("message", message))
                    except Exception:
                        pass
                    return [
                        {
                            "op": "batch",
                            "error_code": "BAD_REQUEST",
                            "message": f"Collector rejected a batch: {message}",
                        }
                    ]
            # Capped exponential backoff with jitter, interruptible by close().
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 5.0)

    def _count_drop(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + n


_live_agents: weakref.WeakSet[Agent] = weakref.WeakSet()


def _reinit_all_after_fork() -> None:
    for agent in list(_live_agents):
        agent._after_fork_in_child()


os.register_at_fork(after_in_child=_reinit_all_after_fork)

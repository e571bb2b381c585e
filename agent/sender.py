"""The network seam of delivery: a :class:`Sender` sends one encoded batch and says how
it went (:class:`Ack`).

:class:`flightlog.agent.transport.HttpSender` POSTs to a collector's ingest endpoint;
:class:`MemorySender` is an in-memory collector behind the same seam (as httpx's
``MockTransport`` is for httpx), so that outage, Retry-After, 503, lost-acknowledgement
and slow-send handling get fast unit tests without a process or a socket.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable
from typing import Any, NamedTuple, Protocol

from flightlog.core.wire import decode_batch

OK = "ok"  # stored (after commit)
REJECTED = "rejected"  # resending the same bytes cannot help
RETRY = "retry"  # try again later (no answer, 408, 429, 5xx, 401/403)


class Ack(NamedTuple):
    """The outcome of one attempt at sending a batch."""

    outcome: str  # OK, REJECTED or RETRY
    status: int  # HTTP status, 0 when no answer came
    errors: list[dict[str, str]]  # per-op errors the collector reported (or the rejection)
    retry_after: float  # seconds the collector asked us to wait, 0 if it did not say
    message: str


class Sender(Protocol):
    """Sends one encoded batch (``flightlog.core.wire``) to a collector, once.

    The batch id travels inside the body; the collector stores a batch id once, so
    sending the same bytes again after a lost acknowledgement is harmless. ``send`` never
    raises for a network failure: it answers RETRY with status 0.
    """

    def send(self, body: bytes, timeout: float | None = None) -> Ack:
        """One attempt; ``timeout`` bounds it (None: the sender's own default)."""
        ...


def no_answer(message: str) -> Ack:
    """The Ack of a send that got no answer (refused, reset, timed out)."""
    return Ack(RETRY, 0, [], 0.0, message)


class MemorySender:
    """An in-memory collector: stores each batch once by batch id, answers as scripted.

    ``script`` holds the answers to the next sends, one per send, before the default
    behaviour resumes. Each item is an :class:`Ack` (returned as is; the batch is stored
    only if it says OK), an HTTP status (503, 429 ...: not stored, RETRY with
    ``retry_after``), ``"down"`` (no answer, not stored) or ``"lost"`` (stored, but the
    answer is lost: RETRY with status 0). With ``down`` set every send answers as
    ``"down"``. ``gate``, when set, holds every send until it is set (a hung collector);
    ``delay`` makes every send take that long.
    """

    def __init__(
        self,
        script: Iterable[Ack | int | str] = (),
        *,
        retry_after: float = 0.0,
        delay: float = 0.0,
    ) -> None:
        self.script: deque[Ack | int | str] = deque(script)
        self.retry_after = retry_after
        self.delay = delay
        self.down = False
        self.gate: threading.Event | None = None
        self.lock = threading.Lock()
        #: batch id -> (ops, series), what was stored, in arrival order.
        self.batches: dict[str, tuple[list[tuple[str, dict[str, Any]]], list[Any]]] = {}
        self.attempts: list[float] = []  # monotonic time of every send of a batch
        self.duplicates = 0  # batches received again after they were stored
        self.heartbeats = 0  # bodies without a batch id

    def points(self) -> int:
        """Metric points stored."""
        with self.lock:
            return sum(len(s[2]) for _, series in self.batches.values() for s in series)

    def ops(self) -> list[tuple[str, dict[str, Any]]]:
        """Operations stored, in order."""
        with self.lock:
            return [op for ops, _ in self.batches.values() for op in ops]

    def send(self, body: bytes, timeout: float | None = None) -> Ack:
        """Answer one send as the script, ``down``, ``gate`` and ``delay`` say."""
        if self.gate is not None and not self.gate.wait(timeout):
            return no_answer("timed out")
        if self.delay:
            time.sleep(self.delay)
        batch_id, _, ops, series = decode_batch(body)
        if batch_id is None:
            self.heartbeats += 1
            return Ack(OK, 200, [], 0.0, "")
        with self.lock:
            self.attempts.append(time.monotonic())
            answer: Ack | int | str = "down" if self.down else OK
            if self.script and not self.down:
                answer = self.script.popleft()
            if isinstance(answer, Ack):
                if answer.outcome == OK:
                    self._store(batch_id, ops, series)
                return answer
            if answer == "down":
                return no_answer("connection refused")
            if isinstance(answer, int):
                return Ack(RETRY, answer, [], self.retry_after, f"HTTP {answer}")
            self._store(batch_id, ops, series)
            return no_answer("connection reset") if answer == "lost" else Ack(OK, 200, [], 0.0, "")

    def _store(self, batch_id: str, ops: list[tuple[str, dict[str, Any]]], series: Any) -> None:
        if batch_id in self.batches:
            self.duplicates += 1
        else:
            self.batches[batch_id] = (ops, series)

"""Ingest limits: how big one batch may be, and how much ingest may be in flight.

The collector bounds its own memory: every ingest request reserves its body size
(from Content-Length) from one budget before the body is read, and gives it back
once the batch is committed or refused. A request that does not fit while others are
in flight is answered 503 with a Retry-After estimated from the recent write rate, so
the writer falling behind turns into agents spooling on their side, not into the
collector's memory growing. A single request larger than the whole budget is let
through only when nothing else is in flight, so a lone big batch is never starved.

Memory held per request is about four times its body (the body, the unpacked
arrays, the per-series arrays, SQLite's copies), so peak ingest memory is about four
times ``max_pending_bytes`` above the collector's baseline.
"""

from __future__ import annotations

import math
import time

from flightlog.core.exceptions import BodyTooLarge, Overloaded

# FLIGHTLOG_INGEST_MAX_BODY_BYTES / --ingest-max-body-bytes: the largest ingest batch
# (default 64 MiB; the agent's batches are a few MB). Larger ones are answered 413.
DEFAULT_MAX_BODY_BYTES = 64 * 1024**2
# FLIGHTLOG_INGEST_MAX_PENDING_BYTES / --ingest-max-pending-bytes: body bytes of ingest
# requests being read, decoded or written at once (default 64 MiB); beyond it, 503.
DEFAULT_MAX_PENDING_BYTES = 64 * 1024**2
UNKNOWN_SIZE = 1024**2  # reserved for a chunked body until its real size is known
MIN_RATE = 1024**2  # bytes/s assumed before any write was measured
MAX_RETRY_AFTER = 30


class IngestLimits:
    """The budget of ingest bytes in flight, and the write rate it learns."""

    def __init__(
        self,
        *,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES,
    ) -> None:
        self.max_body_bytes = max_body_bytes
        self.max_pending_bytes = max_pending_bytes
        self.pending = 0
        self.peak_pending = 0
        self.refused = 0  # requests answered 503
        self._rate = float(MIN_RATE)  # bytes written per second, smoothed

    def reserve(self, size: int | None) -> Reservation:
        """Take ``size`` bytes from the budget, or raise BodyTooLarge / Overloaded."""
        if size is not None and size > self.max_body_bytes:
            raise BodyTooLarge(size, self.max_body_bytes)
        n = UNKNOWN_SIZE if size is None else size
        if self.pending and self.pending + n > self.max_pending_bytes:
            self.refused += 1
            raise Overloaded(self.retry_after(), self.pending)
        self.pending += n
        self.peak_pending = max(self.peak_pending, self.pending)
        return Reservation(self, n)

    def retry_after(self) -> int:
        """Whole seconds until the writer is likely to have caught up (1 to 30)."""
        seconds = self.pending / max(self._rate, MIN_RATE)
        return max(1, min(MAX_RETRY_AFTER, math.ceil(seconds)))

    def record_write(self, size: int, seconds: float) -> None:
        """Learn the writer's throughput from one committed batch."""
        if seconds > 0:
            self._rate = 0.8 * self._rate + 0.2 * (size / seconds)


class Reservation:
    """One request's share of the ingest budget; released exactly once."""

    def __init__(self, limits: IngestLimits, size: int) -> None:
        self._limits = limits
        self.size = size
        self._started = time.monotonic()

    def resize(self, size: int) -> None:
        """The body turned out to be ``size`` bytes (a chunked upload)."""
        if size > self._limits.max_body_bytes:
            raise BodyTooLarge(size, self._limits.max_body_bytes)
        self._limits.pending += size - self.size
        self.size = size

    def release(self, *, written: bool = False) -> None:
        if self.size < 0:
            return
        self._limits.pending -= self.size
        if written:
            self._limits.record_write(self.size, time.monotonic() - self._started)
        self.size = -1

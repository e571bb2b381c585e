"""The request-body budget: how much may be in memory at once, and how big one batch may be.

The collector bounds its own memory: every body it gathers in memory (ingest batches,
RPC and REST arguments; collector.bodies) takes its bytes from one budget *as they
arrive and inflate* (a small first share up to its declared size, then the rest as
it comes), and gives them back once its response is made. Counting arriving bytes, not
declared sizes, means a client that declares 64 MiB and stalls holds only what it sent,
and a gzip body is counted as what it inflates to. A request that needs more while
others hold the budget is answered 503 with a Retry-After estimated from the recent
write rate, so the writer falling behind turns into agents spooling on their side, not
into the collector's memory growing. A single request larger than the whole budget is
let through only when nothing else is in flight, so a lone big batch is never starved.

The budget counts body bytes; what a request holds is more: about four times its body
for the agent's usual batches (the body, the unpacked arrays, the per-series arrays,
SQLite's copies), and up to about 25 times for a batch of hundreds of thousands of
one-point series, whose per-series Python objects dominate (bench/bench_hostile.py: a
6.8 MB batch of 200,000 series took the collector's peak RSS from 42 MB to 228 MB).
"""

from __future__ import annotations

import math
import time

from flightlog.core.exceptions import Overloaded

# FLIGHTLOG_INGEST_MAX_BODY_BYTES / --ingest-max-body-bytes: the largest ingest batch
# (default 64 MiB; the agent's batches are a few MB). Larger ones are answered 413.
DEFAULT_MAX_BODY_BYTES = 64 * 1024**2
# FLIGHTLOG_INGEST_MAX_PENDING_BYTES / --ingest-max-pending-bytes: body bytes being
# read, decoded or written at once (default 64 MiB); beyond it, 503.
DEFAULT_MAX_PENDING_BYTES = 64 * 1024**2
MIN_RATE = 1024**2  # bytes/s assumed before any write was measured
MAX_RETRY_AFTER = 30


class IngestLimits:
    """The budget of body bytes in memory, and the write rate it learns."""

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
        self.last_refused = -math.inf  # time.monotonic() of the latest 503
        self._rate = float(MIN_RATE)  # bytes written per second, smoothed

    def reserve_for(self, declared: int | None, initial: int) -> Reservation:
        """A reservation of ``initial`` bytes (at most ``declared``) that grows as bytes arrive.

        :raises Overloaded: others hold the budget and this first share does not fit.
        """
        reservation = Reservation(self)
        reservation.grow_to(initial if declared is None else min(declared, initial))
        return reservation

    def _take(self, held: int, extra: int) -> None:
        # Alone (nothing held but by this request), it may exceed the budget.
        others = self.pending - held
        if others and self.pending + extra > self.max_pending_bytes:
            self.refused += 1
            self.last_refused = time.monotonic()
            raise Overloaded(self.retry_after(), self.pending)
        self.pending += extra
        self.peak_pending = max(self.peak_pending, self.pending)

    def retry_after(self) -> int:
        """Whole seconds until the writer is likely to have caught up (1 to 30)."""
        seconds = self.pending / max(self._rate, MIN_RATE)
        return max(1, min(MAX_RETRY_AFTER, math.ceil(seconds)))

    def record_write(self, size: int, seconds: float) -> None:
        """Learn the writer's throughput from one committed batch."""
        if seconds > 0:
            self._rate = 0.8 * self._rate + 0.2 * (size / seconds)


class Reservation:
    """One request's share of the budget; grows as its body arrives, released once."""

    def __init__(self, limits: IngestLimits) -> None:
        self._limits = limits
        self.size = 0

    def grow_to(self, size: int) -> None:
        """Hold ``size`` bytes in all (no-op when already holding as many).

        :raises Overloaded: others hold the budget and the growth does not fit.
        """
        if size <= self.size or self.size < 0:
            return
        self._limits._take(self.size, size - self.size)
        self.size = size

    def release(self) -> None:
        """Give the bytes back (idempotent)."""
        if self.size < 0:
            return
        self._limits.pending -= self.size
        self.size = -1

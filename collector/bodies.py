"""Reading request bodies within the collector's memory budget and deadline.

Every body the collector reads goes through here, whatever the endpoint: ingest batches
and RPC/REST arguments are gathered in memory by :func:`read_body`, artifact uploads
stream through :func:`body_chunks`. Either way:

- Content-Encoding (gzip, deflate) is undone here, chunk by chunk with a cap on each
  step's output, so a 200 KB "decompression bomb" never inflates past the endpoint's
  limit: the server itself does not decompress (``auto_decompress=False`` in
  collector.main), and inflated bytes, not wire bytes, are what count.
- A gathered body takes its bytes from the budget (collector.limits) as they arrive,
  never its declared size up front, so a client that declares 64 MiB and sends one
  byte holds one byte of it and cannot starve the others.
- A body must keep arriving: a buffered body must be complete within the body timeout,
  an upload must not pause for longer; past it the request is answered 408 and the
  connection closed (``--body-timeout``).
- A compressed body must end its stream: a truncated gzip upload is refused, before
  anything is committed.
"""

from __future__ import annotations

import asyncio
import io
import time
import zlib
from collections.abc import AsyncIterator, Iterator

from aiohttp import web

from flightlog.collector.limits import IngestLimits, Reservation
from flightlog.collector.state import COLLECTOR
from flightlog.core.exceptions import BAD_REQUEST, BodyTooLarge, MlflowException

# Per-request state (a request is a mapping): the decoded body once read, its share of
# the budget until the response, and whether the rest of the body was left unread.
_BODY = web.RequestKey("flightlog.body", bytes)
_RESERVATION = web.RequestKey("flightlog.reservation", Reservation)
_ABANDONED = web.RequestKey("flightlog.abandoned", bool)

#: Most bytes one decompression step may produce: bounds a bomb's inflation per step.
INFLATE_STEP = 256 * 1024
#: Bytes reserved before a body arrives (at most its declared size); more as it comes.
INITIAL_RESERVATION = 256 * 1024

_ENCODINGS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


#: Bytes a second a streamed upload must average over each ``--body-timeout`` window.
MIN_UPLOAD_RATE = 1024
#: Seconds a gathered body may pause, while others are refused the budget it holds.
STALL_SECONDS = 5.0


class BodyTimeout(MlflowException):
    """A request body that stopped arriving (HTTP 408)."""

    def __init__(self, seconds: float, rate: float | None = None) -> None:
        if rate is None:
            message = f"The request body did not arrive within {seconds:g}s (--body-timeout)"
        else:
            message = (
                f"The request body arrived at {rate:.0f} bytes/s over {seconds:g}s "
                f"(--body-timeout), below the {MIN_UPLOAD_RATE} bytes/s an upload must keep"
            )
        super().__init__(message + "; the connection is closed.", BAD_REQUEST)

    def http_status(self) -> int:
        return 408


class BodyStalled(BodyTimeout):
    """A gathered body that paused while the budget it holds was refused to others (408)."""

    def __init__(self, seconds: float, held: int) -> None:
        MlflowException.__init__(
            self,
            f"The request body paused for {seconds:g}s holding {held} bytes of the "
            "collector's memory budget while other requests were refused for want of it; "
            "the connection is closed.",
            BAD_REQUEST,
        )


def _bad(message: str) -> MlflowException:
    return MlflowException(message, BAD_REQUEST)


class _Decoder:
    """Undoes one Content-Encoding in bounded steps; identity passes bytes through."""

    def __init__(self, encoding: str) -> None:
        name = encoding.strip().lower()
        if name in ("", "identity"):
            self._z = None
        elif name in _ENCODINGS:
            self._z = zlib.decompressobj(_ENCODINGS[name])
        else:
            raise _bad(
                f"Unsupported Content-Encoding {encoding[:40]!r}: send gzip, deflate or identity"
            )
        self.encoding = name

    def steps(self, data: bytes) -> Iterator[bytes]:
        """The decoded pieces of ``data``, each at most :data:`INFLATE_STEP` bytes.

        A generator: the caller counts (and refuses) each piece before the next is made,
        so 64 KB of a bomb never becomes 64 MB at once.
        """
        z = self._z
        if z is None:
            if data:
                yield data
            return
        pending = data
        while pending:
            if z.eof:
                raise _bad(f"Data after the end of the {self.encoding} stream")
            try:
                piece = z.decompress(pending, INFLATE_STEP)
            except zlib.error as e:
                raise _bad(f"Request body is not valid {self.encoding}: {e}") from None
            pending = z.unconsumed_tail
            if piece:
                yield piece

    def finish(self) -> None:
        """Refuse a compressed body whose stream did not end (cut off in transit)."""
        if self._z is not None and self._z.unused_data:
            raise _bad(f"Data after the end of the {self.encoding} stream")
        if self._z is not None and not self._z.eof:
            raise _bad(
                f"The {self.encoding} request body ends before its stream does "
                "(truncated); nothing was stored"
            )


def _close_after(request: web.Request) -> None:
    # The rest of this body will not be read: the error middleware answers, then closes.
    request[_ABANDONED] = True


def body_abandoned(request: web.Request) -> bool:
    """Whether the body was left unread (the connection must close after the answer)."""
    return bool(request.get(_ABANDONED))


async def _next_raw(request: web.Request, deadline: float, timeout: float) -> bytes:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise BodyTimeout(timeout)
    try:
        return await asyncio.wait_for(request.content.readany(), remaining)
    except asyncio.TimeoutError:
        raise BodyTimeout(timeout) from None


async def body_chunks(request: web.Request) -> AsyncIterator[bytes]:
    """The decoded body in pieces, each piece within the body timeout of the last.

    For streaming into storage (artifact uploads): memory held is one piece. A truncated
    compressed stream raises at the end, before the caller commits anything.

    :raises BodyTooLarge: a gzip/deflate body inflating past the collector's
        ``upload_max_decoded_bytes`` (FLIGHTLOG_UPLOAD_MAX_DECODED_BYTES); 413.
    """
    config = request.app[COLLECTOR].config
    timeout = config.body_timeout
    decoder = _Decoder(request.headers.get("Content-Encoding", ""))
    # An identity body is stored as sent (its size is what the client paid to send); an
    # encoded one is bounded once decoded, or a 500 KB bomb becomes a 512 MiB file.
    limit = None if decoder.encoding in ("", "identity") else config.upload_max_decoded_bytes
    decoded = 0
    # A per-piece deadline alone lets a client drip one byte just inside each timeout
    # and hold the upload (and its temp file) open forever: each window of ``timeout``
    # seconds must also bring MIN_UPLOAD_RATE bytes a second on average.
    window_end = time.monotonic() + timeout
    window_bytes = 0
    try:
        while True:
            raw = await _next_raw(request, time.monotonic() + timeout, timeout)
            if not raw:
                break
            window_bytes += len(raw)
            now = time.monotonic()
            if now >= window_end:
                if window_bytes < MIN_UPLOAD_RATE * timeout:
                    raise BodyTimeout(timeout, window_bytes / timeout)
                window_end, window_bytes = now + timeout, 0
            for piece in decoder.steps(raw):
                decoded += len(piece)
                if limit is not None and decoded > limit:
                    raise BodyTooLarge(
                        decoded,
                        limit,
                        f"Artifact upload ({decoder.encoding}-encoded)",
                        "once decoded (FLIGHTLOG_UPLOAD_MAX_DECODED_BYTES); "
                        "send it without Content-Encoding, as MLflow's clients do.",
                    )
                yield piece
        decoder.finish()
    except BaseException:
        _close_after(request)
        raise


def decoded_size(request: web.Request) -> int | None:
    """The body's size after decoding, when the headers tell it (identity bodies)."""
    if _Decoder(request.headers.get("Content-Encoding", "")).encoding in ("", "identity"):
        return request.content_length
    return None


async def read_body(
    request: web.Request, limit: int | None = None, what: str = "Request body"
) -> bytes:
    """The whole decoded body, at most ``limit`` bytes, counted against the collector's budget.

    The body's bytes stay counted until the response is sent (:func:`release_body`, in
    the error middleware), since the handler keeps the body and what it decodes from it.
    A second call returns the same bytes.

    :param limit: The most decoded bytes; default the collector's ``max_body_bytes`` or
        its whole budget, whichever is less (only an ingest batch may exceed the budget,
        when it is the only body in flight).
    :raises BodyTooLarge: past ``limit`` (declared or inflated); 413.
    :raises Overloaded: the budget is spent by other requests; 503 with Retry-After.
    :raises BodyTimeout: the body was not complete within the body timeout; 408.
    :raises MlflowException: an unsupported or corrupt Content-Encoding; 400.
    """
    cached = request.get(_BODY)
    if cached is not None:
        return bytes(cached)
    c = request.app[COLLECTOR]
    if limit is None:
        limit = min(c.config.max_body_bytes, c.config.ingest_max_pending_bytes)
    budget: IngestLimits = c.limits
    declared = decoded_size(request)
    if declared is not None and declared > limit:
        _close_after(request)
        raise BodyTooLarge(declared, limit, what)
    reservation = budget.reserve_for(declared, INITIAL_RESERVATION)
    request[_RESERVATION] = reservation
    try:
        body = await _gather(request, limit, reservation, what)
    except BaseException:
        _close_after(request)
        release_body(request)
        raise
    request[_BODY] = body
    return body


def hold_more(request: web.Request, extra: int) -> None:
    """Count ``extra`` more bytes against the budget for this request, until its response
    (what a small body makes the collector read: the records a ring reference names).

    :raises Overloaded: others hold the budget and these bytes do not fit; 503.
    """
    reservation = request.get(_RESERVATION)
    if reservation is not None and extra > 0:
        reservation.grow_to(reservation.size + extra)


def release_body(request: web.Request) -> None:
    """Give the request body's bytes back to the budget (once the response is made)."""
    reservation = request.pop(_RESERVATION, None)
    if reservation is not None:
        reservation.release()


async def _gather(request: web.Request, limit: int, reservation: Reservation, what: str) -> bytes:
    timeout = request.app[COLLECTOR].config.body_timeout
    deadline = time.monotonic() + timeout
    decoder = _Decoder(request.headers.get("Content-Encoding", ""))
    buffer = io.BytesIO()
    total = 0
    while True:
        raw = await _next_gathered(request, deadline, timeout, reservation)
        if not raw:
            break
        for piece in decoder.steps(raw):
            total += len(piece)
            if total > limit:
                raise BodyTooLarge(total, limit, what)
            reservation.grow_to(total)
            buffer.write(piece)
    decoder.finish()
    return buffer.getvalue()


async def _next_gathered(
    request: web.Request, deadline: float, timeout: float, reservation: Reservation
) -> bytes:
    """The next raw bytes of a gathered body, within its deadline.

    A body that sends most of its bytes and then stalls would hold its share of the
    budget until the body timeout while every other writer is answered 503. So the wait
    is cut into :data:`STALL_SECONDS` slices: a body that brought nothing for a whole
    slice, while another request was refused for want of the budget, is dropped (408).
    Alone, or with room for the others, it may pause until the body timeout.
    """
    budget = request.app[COLLECTOR].limits
    quiet_since = time.monotonic()
    stall = min(STALL_SECONDS, timeout)
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BodyTimeout(timeout)
        try:
            # readany keeps what arrived in its buffer when the wait is cut short.
            return await asyncio.wait_for(request.content.readany(), min(remaining, stall))
        except asyncio.TimeoutError:
            if time.monotonic() >= deadline:
                raise BodyTimeout(timeout) from None
            if budget.last_refused >= quiet_since:
                raise BodyStalled(time.monotonic() - quiet_since, reservation.size) from None

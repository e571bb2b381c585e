"""The node sidecar: a collector that buffers ingest on the node's disk and forwards upstream.

``flightlog collector --store DIR --upstream URL [--upstream-token TOKEN]`` runs it.
Trainers on the node talk to it over loopback exactly as to any collector:

* ``POST /api/flightlog/ingest`` is answered as soon as the batch is durable (written
  and fsync'ed) in a bounded buffer under ``DIR/forward`` (the agent's spool segments,
  :mod:`flightlog.agent.spool`). A full buffer answers 503 with Retry-After, so the
  trainer's agent keeps the batch in its own spool meanwhile.
* One forwarding thread sends the buffered batches upstream one at a time, in the order
  they were acknowledged, byte for byte (so with their original batch ids: the upstream
  stores a batch id once, and a batch resent after a lost answer is harmless). Upstream
  outages are ridden out with the agent's backoff and the upstream's Retry-After.
* A restarted sidecar adopts what the previous process left in the buffer (its segments'
  lock died with it) and forwards that first: forwarding resumes where it stopped.
* The metric rings (and spools) that trainers of this node left when they died
  (SIGKILL, the OOM killer) are buffered and forwarded like ingest, and the runs they
  left open are ended FAILED (:mod:`flightlog.core.ring_adoption`).
* Every other request (run and experiment reads, MLflow's REST API, search, artifacts) is
  passed to the upstream, streaming both ways, with the upstream token. Before passing a
  request on, the sidecar waits (up to ``READ_BARRIER_SECONDS``) until every batch
  acknowledged before it has been forwarded, so a trainer reads its own writes (a run it
  created through ingest exists upstream when it asks for it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import logging
import os
import threading
import time
import urllib.parse
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson
from aiohttp import web

from flightlog.agent.delivery import DeliveryLoop
from flightlog.agent.sender import REJECTED, RETRY, Ack
from flightlog.agent.spool import ClaimedSpool, RecordRef, Segment, Spool, claim_orphans
from flightlog.agent.transport import CollectorClient, HttpSender
from flightlog.core import settings
from flightlog.core.exceptions import (
    BAD_REQUEST,
    UNAUTHENTICATED,
    MlflowException,
    SpoolFull,
)
from flightlog.core.ring_adoption import watch_rings
from flightlog.core.ring_format import RECORD, rings_root
from flightlog.core.ring_refs import LocalRings
from flightlog.core.serving import check_exposure, run_app, serve_until_stopped
from flightlog.core.spool_paths import served_spool_roots
from flightlog.core.uris import local_store
from flightlog.core.version import __version__
from flightlog.core.wire import decode_batch, pack, referenced_records, with_records

log = logging.getLogger("flightlog.agent.forward")

MSGPACK = "application/msgpack"
INGEST = "/api/flightlog/ingest"
#: How long a passed-through request waits for earlier batches to reach the upstream.
READ_BARRIER_SECONDS = 30.0
#: Seconds a trainer is asked to wait when the buffer is full.
FULL_RETRY_AFTER = 2
#: Batches the forwarding-delay quantiles in /health are computed over.
DELAY_WINDOW = 1000
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "authorization",
    }
)


@dataclass
class _Pending:
    """One buffered batch waiting to be forwarded."""

    number: int  # position in acknowledgement order, from 1
    points: int
    length: int
    read: Callable[[], bytes | None]
    done: Callable[[], None]
    acknowledged_at: float  # time.monotonic() when it was queued


class ForwardBuffer:
    """The bounded on-disk queue of acknowledged batches; thread-safe.

    New batches go to this process's own spool directory under ``root``; directories
    of earlier (dead) processes are adopted at start and queued first.
    """

    def __init__(self, root: Path, upstream: str, max_bytes: int) -> None:
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.root = root
        self._cond = threading.Condition()
        self._queue: deque[_Pending] = deque()
        self.acknowledged = 0  # batches ever queued (adopted ones included)
        self.forwarded = 0  # batches delivered (or dropped as rejected), in order
        self.forwarded_points = 0
        self.queued_bytes = 0
        # Seconds from acknowledgement to the upstream's answer, of recent batches.
        self._delays: deque[float] = deque(maxlen=DELAY_WINDOW)
        self._claims = claim_orphans(root)
        adopted_bytes = 0
        with self._cond:
            for claim in self._claims:
                for ref in claim.records:
                    self._enqueue(ref.points, ref.length, *self._claimed_access(claim, ref))
                    adopted_bytes += ref.length
        self.adopted = self.acknowledged
        if self.adopted:
            log.info("resuming: %d batch(es) left by an earlier sidecar", self.adopted)
        # A random owner (not only the pid): in a container the pid repeats across restarts.
        self._spool = Spool(
            root,
            owner=uuid.uuid4().hex,
            tracking_uri=upstream,
            max_bytes=max(max_bytes - adopted_bytes, 0),
        )
        self.max_bytes = max_bytes

    @staticmethod
    def _claimed_access(
        claim: ClaimedSpool, ref: RecordRef
    ) -> tuple[Callable[[], bytes | None], Callable[[], None]]:
        return (lambda: claim.read(ref)), (lambda: claim.done(ref))

    def _enqueue(
        self,
        points: int,
        length: int,
        read: Callable[[], bytes | None],
        done: Callable[[], None],
    ) -> int:
        self.acknowledged += 1
        item = _Pending(self.acknowledged, points, length, read, done, time.monotonic())
        self._queue.append(item)
        self.queued_bytes += length
        self._cond.notify_all()
        return self.acknowledged

    def append(self, body: bytes, points: int) -> int:
        """Make one batch durable and queue it; its number. Raises SpoolFull."""
        with self._cond:
            seq = self.acknowledged + 1
            seg, offset = self._spool.append(seq, points, body)
            # Acknowledged means on disk: fsync before answering (a crash of the
            # process alone would not need it; a crash of the node would).
            self._spool.sync()
            spool = self._spool

            def read(seg: Segment = seg, offset: int = offset) -> bytes | None:
                return spool.read(seg, offset, len(body))

            def done(seg: Segment = seg) -> None:
                spool.release(seg)

            return self._enqueue(points, len(body), read, done)

    def peek(self, timeout: float) -> _Pending | None:
        """The oldest batch not yet forwarded, waiting up to ``timeout`` for one."""
        with self._cond:
            if not self._queue:
                self._cond.wait(timeout)
            return self._queue[0] if self._queue else None

    def read(self, item: _Pending) -> bytes | None:
        """A queued batch's bytes, or None if its record is damaged."""
        with self._cond:
            return item.read()

    def done(self, item: _Pending) -> None:
        """The oldest batch was forwarded: drop it from the buffer."""
        with self._cond:
            head = self._queue.popleft()
            assert head is item, "batches are forwarded in order"
            item.done()
            self.queued_bytes -= item.length
            self.forwarded = item.number
            self.forwarded_points += item.points
            self._delays.append(time.monotonic() - item.acknowledged_at)
            if self.forwarded == self.adopted:
                for claim in self._claims:
                    claim.finish()
                self._claims = []
            self._cond.notify_all()

    def wait_forwarded(self, number: int, timeout: float) -> bool:
        """Block until batch ``number`` and all before it were forwarded (or timeout)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.forwarded < number:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def delay_quantiles(self) -> dict[str, float | None]:
        """Median and p99 forwarding delay (s) of the last DELAY_WINDOW batches."""
        with self._cond:
            delays = sorted(self._delays)
        if not delays:
            return {"p50": None, "p99": None}
        return {"p50": delays[len(delays) // 2], "p99": delays[int(len(delays) * 0.99)]}

    @property
    def backlog(self) -> int:
        """Batches acknowledged and not yet forwarded."""
        with self._cond:
            return len(self._queue)

    def close(self) -> None:
        """Sync and release the buffer; what is left is adopted by the next sidecar."""
        with self._cond:
            self._spool.close()
            for claim in self._claims:
                claim.finish()
            self._claims = []


class Forwarder:
    """The thread that sends buffered batches upstream, in order, until stopped.

    Each batch goes through the agent's delivery loop (:mod:`flightlog.agent.delivery`:
    backoff with jitter, Retry-After, the same bytes again after a lost answer).
    """

    def __init__(self, buffer: ForwardBuffer, upstream: str, token: str | None) -> None:
        self.buffer = buffer
        self.last_error = ""
        self.rejected = 0
        self._stop = threading.Event()
        sender = HttpSender(CollectorClient(upstream, token=token or "", timeout=60.0))
        self.delivery = DeliveryLoop(
            sender, wait=self._wait, on_answer=self._note, on_success=self._reachable
        )
        self._thread = threading.Thread(target=self._run, name="flightlog-forwarder", daemon=True)

    def start(self) -> None:
        """Start forwarding."""
        self._thread.start()

    def stop(self) -> None:
        """Stop after the batch in flight (an unanswered one is sent again next start)."""
        self._stop.set()
        self._thread.join(timeout=70)

    def _wait(self, seconds: float) -> bool:
        return not self._stop.wait(seconds)

    def _note(self, ack: Ack) -> None:
        if ack.outcome == RETRY:
            if ack.message != self.last_error:
                log.warning("upstream refused or unreachable, retrying: %s", ack.message)
            self.last_error = ack.message

    def _reachable(self) -> None:
        if self.last_error:
            log.info("upstream reachable again; %d batch(es) behind", self.buffer.backlog)
        self.last_error = ""

    def _run(self) -> None:
        while not self._stop.is_set():
            item = self.buffer.peek(timeout=0.5)
            if item is None:
                continue
            body = self.buffer.read(item)
            if body is None:
                log.error("a damaged batch in the forward buffer was skipped")
                self.buffer.done(item)
                continue
            ack = self.delivery.deliver(body)
            if ack is None:
                return  # stopping: the batch stays in the buffer for the next start
            if ack.outcome == REJECTED:
                # Resending the same bytes cannot succeed: keep the rest flowing.
                self.rejected += 1
                log.error("upstream rejected a batch, dropped: %s", ack.message)
            for error in ack.errors:
                log.warning("upstream reported: %s", error)
            self.buffer.done(item)


@dataclass
class SidecarConfig:
    """What a node sidecar serves and where it forwards."""

    buffer_dir: Path
    upstream: str
    upstream_token: str | None
    buffer_max_bytes: int
    host: str = "127.0.0.1"
    port: int = 5055
    token: str | None = None  # required of local clients when set
    max_body_bytes: int = 256 * 1024 * 1024
    #: Spool roots of the trainers that log here: what dead ones left (metric rings,
    #: spools) is buffered and forwarded (flightlog.core.ring_adoption); empty: none.
    ring_roots: tuple[Path, ...] = ()


class Sidecar:
    """Shared state of a running sidecar: buffer, forwarder, upstream HTTP session."""

    def __init__(self, config: SidecarConfig) -> None:
        self.config = config
        self.buffer = ForwardBuffer(config.buffer_dir, config.upstream, config.buffer_max_bytes)
        self.forwarder = Forwarder(self.buffer, config.upstream, config.upstream_token)
        # One thread appends (and fsyncs) to the buffer, keeping arrival order.
        self.writer = ThreadPoolExecutor(1, thread_name_prefix="flightlog-buffer")
        self.session: aiohttp.ClientSession | None = None
        # The ring references of trainers on this node: read here, since the upstream
        # cannot (``ingest`` buffers the batch with its records).
        self.rings = LocalRings(
            [rings_root(r) for r in config.ring_roots], config.max_body_bytes // RECORD
        )


SIDECAR = web.AppKey("sidecar", Sidecar)


def _error(status: int, code: str, message: str, retry_after: int | None = None) -> web.Response:
    response = web.Response(
        status=status,
        body=orjson.dumps({"error_code": code, "message": message}),
        content_type="application/json",
    )
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    return response


@web.middleware
async def _auth(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    token = request.app[SIDECAR].config.token
    if token and request.path != "/health":
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(
            given.encode("utf-8", "surrogateescape"), f"Bearer {token}".encode()
        ):
            message = "Missing or wrong token: send 'Authorization: Bearer <token>'."
            return _error(401, UNAUTHENTICATED, message)
    return await handler(request)


async def health(request: web.Request) -> web.Response:
    """Liveness of the sidecar itself, with its backlog and the upstream's last error."""
    s = request.app[SIDECAR]
    return web.json_response(
        {
            "status": "OK",
            "version": __version__,
            "pid": os.getpid(),
            "store": s.config.upstream,
            "role": "sidecar",
            "upstream": s.config.upstream,
            "backlog_batches": s.buffer.backlog,
            "forwarded_batches": s.buffer.forwarded,
            "forwarded_points": s.buffer.forwarded_points,
            "rejected_batches": s.forwarder.rejected,
            "forward_delay_seconds": s.buffer.delay_quantiles(),
            "upstream_error": s.forwarder.last_error or None,
        },
        dumps=lambda o: orjson.dumps(o).decode(),
    )


async def ingest(request: web.Request) -> web.Response:
    """Check a batch, make it durable in the buffer, acknowledge it."""
    s = request.app[SIDECAR]
    data = await request.read()
    try:
        # A batch that names ring records is buffered with them (the upstream is on
        # another node); they are read before the batch is acknowledged.
        if referenced_records(data):  # (a cheap look: an inline batch is not unpacked twice)
            data = await asyncio.to_thread(with_records, data, s.rings)
        _batch_id, _agent, _ops, series = decode_batch(data)
    except MlflowException as e:
        return _error(400, BAD_REQUEST, e.message)
    points = sum(len(col[2]) for col in series)
    loop = asyncio.get_running_loop()
    try:
        await loop.run_in_executor(s.writer, s.buffer.append, data, points)
    except SpoolFull as e:
        return _error(503, "TEMPORARILY_UNAVAILABLE", f"forward buffer full: {e}", FULL_RETRY_AFTER)
    # The upstream has not seen it yet: duplicates and op errors are its to find (logged).
    return web.Response(
        body=pack({"ok": True, "duplicate": False, "errors": []}), content_type=MSGPACK
    )


async def passthrough(request: web.Request) -> web.StreamResponse:
    """Pass a request to the upstream once earlier batches reached it; stream both ways."""
    s = request.app[SIDECAR]
    assert s.session is not None
    loop = asyncio.get_running_loop()
    mark = s.buffer.acknowledged
    if s.buffer.forwarded < mark:
        await loop.run_in_executor(None, s.buffer.wait_forwarded, mark, READ_BARRIER_SECONDS)
    headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
    if s.config.upstream_token:
        headers["Authorization"] = f"Bearer {s.config.upstream_token}"
    url = s.config.upstream.rstrip("/") + request.rel_url.raw_path_qs
    body = request.content if request.body_exists else None
    try:
        async with s.session.request(
            request.method, url, headers=headers, data=body, allow_redirects=False
        ) as upstream:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for key, value in upstream.headers.items():
                if key.lower() not in _HOP_BY_HOP:
                    response.headers.add(key, value)
            await response.prepare(request)
            async for block in upstream.content.iter_chunked(1 << 20):
                await response.write(block)
            await response.write_eof()
            return response
    except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as e:
        return _error(
            503,
            "TEMPORARILY_UNAVAILABLE",
            f"upstream {s.config.upstream} unreachable: {type(e).__name__}: {e}",
            5,
        )


def _buffer_for(s: Sidecar) -> Callable[[bytes, int], Awaitable[bool]]:
    async def deliver(body: bytes, points: int) -> bool:
        # As an ingest request: durable in the buffer, then forwarded in order.
        try:
            await asyncio.get_running_loop().run_in_executor(
                s.writer, s.buffer.append, body, points
            )
        except SpoolFull:
            return False  # the ring or spool waits for the next poll
        return True

    return deliver


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    s = app[SIDECAR]
    # No overall timeout: artifact streams may take long; the connect must not.
    s.session = aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
        auto_decompress=False,
    )
    s.forwarder.start()
    watch = asyncio.create_task(watch_rings(s.config.ring_roots, _buffer_for(s), "sidecar"))
    yield
    watch.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watch
    s.forwarder.stop()
    s.writer.shutdown(wait=True)
    s.buffer.close()
    await s.session.close()


def create_sidecar_app(config: SidecarConfig) -> web.Application:
    """Build the sidecar's application."""
    app = web.Application(middlewares=[_auth], client_max_size=config.max_body_bytes)
    app[SIDECAR] = Sidecar(config)
    app.router.add_get("/health", health)
    app.router.add_post(INGEST, ingest)
    app.router.add_route("*", "/{tail:.*}", passthrough)
    app.cleanup_ctx.append(_lifecycle)
    return app


def sidecar_config_from_args(args: argparse.Namespace) -> SidecarConfig:
    """Validate a node sidecar's options (``flightlog collector --upstream``)."""
    check_exposure(args.host, args.token)
    parts = urllib.parse.urlsplit(args.upstream)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SystemExit(
            f"flightlog collector: --upstream {args.upstream!r} is not an http(s)://host:port URL"
        )
    if args.upstream_buffer_bytes <= 0:
        raise SystemExit("flightlog collector: --upstream-buffer-bytes must be > 0")
    store = local_store(args.store, args.artifacts)
    return SidecarConfig(
        buffer_dir=store.directory / "forward",
        upstream=args.upstream,
        upstream_token=args.upstream_token,
        buffer_max_bytes=args.upstream_buffer_bytes,
        host=args.host,
        port=args.port,
        token=args.token,
        max_body_bytes=args.ingest_max_body_bytes,
        ring_roots=tuple(served_spool_roots(None, args.host, args.port)),
    )


async def serve_sidecar(config: SidecarConfig, port_file: str | None) -> None:
    """Serve a node sidecar until SIGTERM/SIGINT."""
    app = create_sidecar_app(config)
    label = f"{config.buffer_dir} -> {config.upstream}"
    await run_app(app, config.host, config.port, label, port_file)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``flightlog collector --upstream URL`` (the collector's options)."""
    logging.basicConfig(
        level=settings.LOG_LEVEL.get(),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    config = sidecar_config_from_args(args)
    return serve_until_stopped(serve_sidecar(config, args.port_file), config.host, config.port)

"""The collector's aiohttp application: ingest, RPC reads and health.

``create_app(config, store)`` builds it; ``collector.main`` runs it. Blocking store
work runs in threads: one writer thread (SQLite allows one writer; a single thread
keeps batches in arrival order) and a small pool of readers, so reads never queue
behind a large ingest.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
from aiohttp import web

from flightlog.collector import limits
from flightlog.collector.batch_checks import check_batch
from flightlog.collector.store import SqliteStore
from flightlog.core.exceptions import (
    BAD_REQUEST,
    INTERNAL_ERROR,
    INVALID_PARAMETER_VALUE,
    UNAUTHENTICATED,
    MlflowException,
    Overloaded,
)
from flightlog.core.version import __version__
from flightlog.core.wire import decode_batch, pack, unpack

log = logging.getLogger("flightlog.collector")
T = TypeVar("T")
MSGPACK = "application/msgpack"


@dataclass
class CollectorConfig:
    """What a collector serves and how."""

    store_uri: str
    artifact_root: str
    host: str = "127.0.0.1"
    port: int = 5055
    token: str | None = None
    idle_timeout: float | None = None  # seconds without requests before exiting
    max_body_bytes: int = 256 * 1024 * 1024
    # Seconds without a heartbeat before a RUNNING run is marked FAILED; 0: never
    # (flightlog.collector.liveness).
    run_timeout: float = 60.0
    # The largest ingest batch, and ingest bytes in flight at once (collector.limits).
    ingest_max_body_bytes: int = limits.DEFAULT_MAX_BODY_BYTES
    ingest_max_pending_bytes: int = limits.DEFAULT_MAX_PENDING_BYTES
    extra: dict[str, Any] = field(default_factory=dict)


class Collector:
    """Shared state of one running collector."""

    def __init__(self, config: CollectorConfig, store: SqliteStore) -> None:
        self.config = config
        self.store = store
        self.writer = ThreadPoolExecutor(1, thread_name_prefix="flightlog-writer")
        self.readers = ThreadPoolExecutor(4, thread_name_prefix="flightlog-reader")
        self.last_activity = time.monotonic()
        self.ingested_points = 0
        self.limits = limits.IngestLimits(
            max_body_bytes=config.ingest_max_body_bytes,
            max_pending_bytes=config.ingest_max_pending_bytes,
        )

    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a store write on the writer thread."""
        return await asyncio.get_running_loop().run_in_executor(self.writer, fn, *args)

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a store read on a reader thread."""
        return await asyncio.get_running_loop().run_in_executor(self.readers, fn, *args)


COLLECTOR = web.AppKey("collector", Collector)


def _error_response(status: int, code: str, message: str, request: web.Request) -> web.Response:
    body = {"error_code": code, "message": message}
    # msgpack for the SDK (it sends msgpack), JSON for everyone else (curl, browsers).
    if request.content_type == MSGPACK or MSGPACK in request.headers.get("Accept", ""):
        return web.Response(status=status, body=pack(body), content_type=MSGPACK)
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


@web.middleware
async def error_middleware(
    request: web.Request,
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> web.StreamResponse:
    """Map every failure to a JSON/msgpack error body; the collector never dies of a request."""
    collector = request.app[COLLECTOR]
    collector.last_activity = time.monotonic()
    token = collector.config.token
    if token and request.path != "/health":
        given = request.headers.get("Authorization", "")
        # surrogateescape: a header that is not UTF-8 is a wrong token, not a crash.
        if not hmac.compare_digest(
            given.encode("utf-8", "surrogateescape"), f"Bearer {token}".encode()
        ):
            return _error_response(
                401,
                UNAUTHENTICATED,
                "Missing or wrong token: send 'Authorization: Bearer <token>'.",
                request,
            )
    try:
        return await handler(request)
    except MlflowException as e:
        return _error_response(e.http_status(), e.error_code, e.message, request)
    except web.HTTPRequestEntityTooLarge as e:
        return _error_response(413, BAD_REQUEST, f"Request body too large: {e.text}", request)
    except web.HTTPException:
        raise
    except Exception as e:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return _error_response(500, INTERNAL_ERROR, f"{type(e).__name__}: {e}", request)


async def health(request: web.Request) -> web.Response:
    """Liveness, and which store this collector serves (the SDK checks it)."""
    c = request.app[COLLECTOR]
    return web.json_response(
        {
            "status": "OK",
            "version": __version__,
            "pid": os.getpid(),
            "store": c.config.store_uri,
            "db": c.config.extra.get("db_path"),
        },
        dumps=lambda o: orjson.dumps(o).decode(),
    )


async def ingest(request: web.Request) -> web.Response:
    """Store one msgpack batch; answer only after it is committed.

    Bounded (collector.limits): 413 for a body over the limit, 503 with Retry-After
    while the writer is behind. Ops and series that fail the checks (collector.
    batch_checks) are reported in ``errors`` and the rest is stored.
    """
    c = request.app[COLLECTOR]
    try:
        reservation = c.limits.reserve(request.content_length)
    except Overloaded as e:
        response = _error_response(503, "TEMPORARILY_UNAVAILABLE", str(e), request)
        response.headers["Retry-After"] = str(e.retry_after)
        return response
    written = False
    try:
        data = await request.read()
        reservation.resize(len(data))
        batch_id, _agent_id, ops, series = decode_batch(data)
        ops, series, problems = check_batch(ops, series)
        duplicate, errors = await c.write(c.store.apply_batch, batch_id, ops, series)
        written = True
    finally:
        reservation.release(written=written)
    if not duplicate:
        c.ingested_points += sum(len(s[2]) for s in series)
    return web.Response(
        body=pack({"ok": True, "duplicate": duplicate, "errors": problems + errors}),
        content_type=MSGPACK,
    )


RpcHandler = Callable[[Collector, dict[str, Any]], Awaitable[Any]]
RPC: dict[str, RpcHandler] = {}


def rpc(name: str) -> Callable[[RpcHandler], RpcHandler]:
    """Register an RPC method under /api/flightlog/rpc/<name>."""

    def register(fn: RpcHandler) -> RpcHandler:
        RPC[name] = fn
        return fn

    return register


def _arg(args: dict[str, Any], name: str, kind: type | tuple[type, ...] = str) -> Any:
    if name not in args:
        raise MlflowException(f"Missing argument {name!r}", INVALID_PARAMETER_VALUE)
    value = args[name]
    if not isinstance(value, kind):
        raise MlflowException(
            f"Argument {name!r} has the wrong type ({type(value).__name__})",
            INVALID_PARAMETER_VALUE,
        )
    return value


@rpc("create_experiment")
async def _create_experiment(c: Collector, a: dict[str, Any]) -> Any:
    eid = await c.write(
        c.store.create_experiment, _arg(a, "name"), a.get("artifact_location"), a.get("tags") or {}
    )
    return {"experiment_id": eid}


@rpc("get_experiment")
async def _get_experiment(c: Collector, a: dict[str, Any]) -> Any:
    return await c.read(c.store.get_experiment, str(_arg(a, "experiment_id", (str, int))))


@rpc("get_experiment_by_name")
async def _get_experiment_by_name(c: Collector, a: dict[str, Any]) -> Any:
    return await c.read(c.store.get_experiment_by_name, _arg(a, "name"))


@rpc("delete_experiment")
async def _delete_experiment(c: Collector, a: dict[str, Any]) -> Any:
    await c.write(c.store.delete_experiment, str(_arg(a, "experiment_id", (str, int))))


@rpc("restore_experiment")
async def _restore_experiment(c: Collector, a: dict[str, Any]) -> Any:
    await c.write(c.store.restore_experiment, str(_arg(a, "experiment_id", (str, int))))


@rpc("rename_experiment")
async def _rename_experiment(c: Collector, a: dict[str, Any]) -> Any:
    await c.write(
        c.store.rename_experiment, str(_arg(a, "experiment_id", (str, int))), _arg(a, "new_name")
    )


@rpc("set_experiment_tag")
async def _set_experiment_tag(c: Collector, a: dict[str, Any]) -> Any:
    await c.write(
        c.store.set_experiment_tag,
        str(_arg(a, "experiment_id", (str, int))),
        _arg(a, "key"),
        _arg(a, "value"),
    )


@rpc("delete_experiment_tag")
async def _delete_experiment_tag(c: Collector, a: dict[str, Any]) -> Any:
    await c.write(
        c.store.delete_experiment_tag, str(_arg(a, "experiment_id", (str, int))), _arg(a, "key")
    )


@rpc("get_run")
async def _get_run(c: Collector, a: dict[str, Any]) -> Any:
    return await c.read(c.store.get_run, _arg(a, "run_id"))


@rpc("delete_run")
async def _delete_run(c: Collector, a: dict[str, Any]) -> Any:
    await c.write(c.store.delete_run, _arg(a, "run_id"))


@rpc("restore_run")
async def _restore_run(c: Collector, a: dict[str, Any]) -> Any:
    await c.write(c.store.restore_run, _arg(a, "run_id"))


@rpc("get_metric_history")
async def _get_metric_history(c: Collector, a: dict[str, Any]) -> Any:
    chunks = await c.read(c.store.metric_chunks, _arg(a, "run_id"), _arg(a, "key"))
    return {"chunks": chunks}


async def rpc_handler(request: web.Request) -> web.Response:
    """Dispatch /api/flightlog/rpc/<method> with a msgpack map of arguments."""
    c = request.app[COLLECTOR]
    name = request.match_info["method"]
    fn = RPC.get(name)
    if fn is None:
        raise MlflowException(f"Unknown method {name!r}", BAD_REQUEST)
    data = await request.read()
    try:
        args = unpack(data) if data else {}
    except Exception:
        raise MlflowException("Request body is not valid msgpack", BAD_REQUEST) from None
    if not isinstance(args, dict):
        raise MlflowException("Request body must be a msgpack map", BAD_REQUEST)
    result = await fn(c, args)
    return web.Response(body=pack(result), content_type=MSGPACK)


def run_in_background(
    app: web.Application, make: Callable[[web.Application], Coroutine[Any, Any, None] | None]
) -> None:
    """Run ``make(app)`` as a task for as long as the application runs.

    ``make`` returns None when the feature is switched off. The task starts when the
    app starts and is cancelled (and awaited) at cleanup.
    """

    async def context(app: web.Application) -> AsyncIterator[None]:
        coro = make(app)
        task = asyncio.create_task(coro) if coro is not None else None
        yield
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    app.cleanup_ctx.append(context)


def _idle_watch(app: web.Application) -> Coroutine[Any, Any, None] | None:
    c = app[COLLECTOR]
    timeout = c.config.idle_timeout
    if not timeout:
        return None

    async def watch() -> None:
        while True:
            await asyncio.sleep(min(timeout / 4, 5.0))
            if time.monotonic() - c.last_activity > timeout:
                log.info("idle for %.0fs: exiting", timeout)
                stop = app.get(STOP)
                if stop is not None:
                    stop.set()
                return

    return watch()


async def _executors(app: web.Application) -> AsyncIterator[None]:
    yield
    c = app[COLLECTOR]
    c.writer.shutdown(wait=True)
    c.readers.shutdown(wait=True)
    c.store.close()


STOP = web.AppKey("stop", asyncio.Event)


def create_app(config: CollectorConfig, store: SqliteStore) -> web.Application:
    """Build the collector application around a store."""
    app = web.Application(middlewares=[error_middleware], client_max_size=config.max_body_bytes)
    app[COLLECTOR] = Collector(config, store)
    app.router.add_get("/health", health)
    app.router.add_post("/api/flightlog/ingest", ingest)
    app.router.add_post("/api/flightlog/rpc/{method}", rpc_handler)
    app.cleanup_ctx.append(_executors)
    run_in_background(app, _idle_watch)
    _load_features()
    for extend in _EXTENSIONS:
        extend(app)
    return app


def _load_features() -> None:
    # Feature modules register their routes with @extension when imported; they import
    # this module, so they are imported here rather than at the top.
    import flightlog.collector.artifact_api
    import flightlog.collector.housekeeping
    import flightlog.collector.liveness
    import flightlog.collector.rest
    import flightlog.collector.search_api  # noqa: F401


# Feature modules (search, artifacts, REST API) add their routes here at import time.
_EXTENSIONS: list[Callable[[web.Application], None]] = []


def extension(fn: Callable[[web.Application], None]) -> Callable[[web.Application], None]:
    """Register a function that adds routes to every app create_app builds."""
    _EXTENSIONS.append(fn)
    return fn

"""The collector's aiohttp application, assembled explicitly by :func:`create_app`.

Each feature module offers its routes (``routes() -> list[web.RouteDef]``) or, when it
runs in the background, a ``setup(app)`` that adds its task to ``cleanup_ctx``;
``create_app`` adds them in one visible list. Nothing registers itself at import time.
Shared state lives under typed app keys (:mod:`flightlog.collector.state`); every error
goes through one middleware (:mod:`flightlog.collector.errors`).

==========================  ==========================================================
module                      what it adds
==========================  ==========================================================
``app`` (here)              ``GET /health``, the idle watch, the store's shutdown
``ingest``                  ``POST /api/flightlog/ingest``
``rpc`` (+ ``search_api``)  ``POST /api/flightlog/rpc/<method>``
``artifact_api``            ``/api/flightlog/artifacts/...`` (the SDK's artifacts)
``rest``                    MLflow's REST API and artifact proxy, ``/version``
``liveness``                the heartbeat watch (RUNNING runs of dead agents end FAILED)
``ring_watch``              the metric rings of dead trainers: stored, runs ended
``housekeeping``            pruning of old ingest batch ids
``ui``                      the web UI's page ``/`` and files ``/ui/...``
``ui_api``                  the web UI's JSON endpoints ``/api/flightlog/ui/...``
==========================  ==========================================================
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from flightlog.collector import (
    artifact_api,
    artifact_proxy,
    housekeeping,
    ingest,
    liveness,
    rest,
    ring_watch,
    rpc,
    ui,
    ui_api,
)
from flightlog.collector.config import CollectorConfig
from flightlog.collector.errors import authorized, error_middleware
from flightlog.collector.state import COLLECTOR, Collector, run_in_background
from flightlog.collector.store_api import Store
from flightlog.core.serving import STOP
from flightlog.core.uris import DB_NAME, store_id
from flightlog.core.version import __version__

__all__ = ["COLLECTOR", "STOP", "Collector", "CollectorConfig", "create_app"]

log = logging.getLogger("flightlog.collector")


async def health(request: web.Request) -> web.Response:
    """Liveness, and which store this collector serves (the SDK checks its ``store_id``).

    The store's path and the PID only go to a client that sent the collector's token:
    /health needs none, and a collector without a token shows them to nobody. ``db`` is
    the SQLite file, or a PostgreSQL store's URI with its password redacted.
    """
    c = request.app[COLLECTOR]
    db_path = c.config.db_path or str(Path(c.config.store_uri) / DB_NAME)
    body: dict[str, object] = {
        "status": "OK",
        "version": __version__,
        "store_id": store_id(db_path),
    }
    token = c.config.token
    if token and authorized(request, token):
        # store_uri is already redacted for a database (collector.main.config_from_args).
        db = c.config.store_uri if c.config.database_uri else db_path
        body.update(pid=os.getpid(), store=c.config.store_uri, db=db)
    return web.json_response(body, dumps=lambda o: orjson.dumps(o).decode())


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


async def _close_store(app: web.Application) -> AsyncIterator[None]:
    yield
    app[COLLECTOR].close()


async def _nosniff(request: web.Request, response: web.StreamResponse) -> None:
    # As MLflow's server: no answer (an artifact above all) is content-sniffed into a page.
    response.headers.setdefault("X-Content-Type-Options", "nosniff")


def create_app(config: CollectorConfig, store: Store) -> web.Application:
    """Build the collector application around a store.

    :param config: What to serve and how (token, limits, timeouts).
    :param store: The tracking store; the application closes it at cleanup.
    """
    app = web.Application(middlewares=[error_middleware], client_max_size=config.max_body_bytes)
    app[COLLECTOR] = Collector(config, store)
    app.on_response_prepare.append(_nosniff)
    # First in cleanup_ctx, so closed last: the background tasks below stop before it.
    app.cleanup_ctx.append(_close_store)
    app.add_routes([web.get("/health", health)])
    app.add_routes(ingest.routes())
    app.add_routes(rpc.routes())
    app.add_routes(artifact_api.routes())
    app.add_routes(rest.routes())
    app.add_routes(artifact_proxy.routes())
    app.add_routes(ui.routes())
    app.add_routes(ui_api.routes())
    run_in_background(app, _idle_watch)
    liveness.setup(app)
    ring_watch.setup(app)
    housekeeping.setup(app)
    return app

"""The ingest endpoint: the agent's msgpack batches, stored before they are acknowledged.

POST /api/flightlog/ingest   one batch (flightlog.core.wire) -> {ok, duplicate, errors}
"""

from __future__ import annotations

from aiohttp import web

from flightlog.collector.batch_checks import check_batch
from flightlog.collector.errors import error_response
from flightlog.collector.state import COLLECTOR, MSGPACK
from flightlog.core.exceptions import Overloaded
from flightlog.core.wire import decode_batch, pack


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
        response = error_response(request, "TEMPORARILY_UNAVAILABLE", str(e), 503)
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


def routes() -> list[web.RouteDef]:
    """The ingest route."""
    return [web.post("/api/flightlog/ingest", ingest)]

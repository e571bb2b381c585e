"""The ingest endpoint: the agent's msgpack batches, stored before they are acknowledged.

POST /api/flightlog/ingest   one batch (flightlog.core.wire) -> {ok, duplicate, errors}
"""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from flightlog.collector.batch_checks import check_batch
from flightlog.collector.batch_slices import slice_batch, slice_id
from flightlog.collector.bodies import hold_more, read_body
from flightlog.collector.state import COLLECTOR, MSGPACK, Collector
from flightlog.collector.store_api import Op, Series
from flightlog.core.ring_format import RECORD
from flightlog.core.wire import RingReader, decode_batch, pack, referenced_records


def _decode(
    data: bytes, rings: RingReader | None
) -> tuple[str | None, list[Op], list[Series], list[dict[str, str]]]:
    batch_id, _agent_id, ops, series = decode_batch(data, rings=rings)
    ops, series, problems = check_batch(ops, series)
    return batch_id, list(ops), list(series), problems


async def ingest(request: web.Request) -> web.Response:
    """Store one msgpack batch; answer only after it is committed.

    Bounded (collector.limits, collector.bodies): 413 for a body over the limit once
    decoded, 503 with Retry-After while the budget is held by others, 408 for a body that
    does not arrive in time. Ops and series that fail the checks (collector.batch_checks)
    are reported in ``errors`` and the rest is stored.
    """
    c = request.app[COLLECTOR]
    data = await read_body(request, c.config.ingest_max_body_bytes, "Ingest batch")
    # A ring reference is a few dozen bytes that make the collector read up to a whole
    # body's worth of records: they count against the budget as an inline batch would
    # (else concurrent references hold memory without bound, never answered 503).
    hold_more(request, referenced_records(data) * RECORD)
    duplicate, errors = await store_batch(c, data)
    return web.Response(
        body=pack({"ok": True, "duplicate": duplicate, "errors": errors}),
        content_type=MSGPACK,
    )


async def store_batch(c: Collector, data: bytes) -> tuple[bool, list[dict[str, str]]]:
    """Decode, check and store one batch (the ingest endpoint's body, or a batch of a
    dead process's ring: ``collector.ring_watch``); returns (duplicate, errors)."""
    # Decoding and checking a big batch takes a while: off the event loop, so other
    # requests are answered meanwhile.
    batch_id, ops, series, problems = await asyncio.to_thread(_decode, data, c.rings)
    started = time.monotonic()
    # Big batches go in slices, each its own job on the writer thread, so other writes
    # queued meanwhile run between them (collector.batch_slices).
    slices = slice_batch(ops, series)
    duplicate = True
    errors: list[dict[str, str]] = list(problems)
    for i, (slice_ops, slice_series) in enumerate(slices):
        dup, slice_errors = await c.write(
            c.store.apply_batch, slice_id(batch_id, i, len(slices)), slice_ops, slice_series
        )
        duplicate = duplicate and dup
        errors += slice_errors
        if not dup:
            c.ingested_points += sum(len(s[2]) for s in slice_series)
    # The bytes written, the records a ring reference names included: the rate learnt
    # sets Retry-After for the budget those records hold (``ingest``).
    size = len(data) + referenced_records(data) * RECORD
    c.limits.record_write(size, time.monotonic() - started)
    return duplicate, errors


def routes() -> list[web.RouteDef]:
    """The ingest route."""
    return [web.post("/api/flightlog/ingest", ingest)]

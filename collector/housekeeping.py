"""Periodic upkeep of the store: forgetting old ingest batch ids.

The ``batches`` table makes retried batches idempotent; without pruning it grows by a
row per batch forever. Ids older than ``FLIGHTLOG_BATCH_ID_RETENTION_DAYS`` (default
30; 0 keeps them all) are deleted once at start and then every hour. Resends happen
within seconds (lost acknowledgements) or come from a spool of batches that were never
acknowledged, so a month is far beyond any window in which a duplicate could arrive.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any

from aiohttp import web

from flightlog.collector.state import COLLECTOR, run_in_background

log = logging.getLogger("flightlog.collector")

PERIOD_S = 3600.0


async def _prune_forever(app: web.Application, days: float) -> None:
    c = app[COLLECTOR]
    while True:
        cutoff = int((time.time() - days * 86400) * 1000)
        try:
            n = await c.write(c.store.prune_batch_ids, cutoff)
            if n:
                log.info("forgot %d ingest batch ids older than %g days", n, days)
        except Exception:
            log.exception("pruning batch ids failed; will retry")
        await asyncio.sleep(PERIOD_S)


def setup(app: web.Application) -> None:
    """Prune old batch ids for as long as the application runs."""

    def start(app: web.Application) -> Coroutine[Any, Any, None] | None:
        days = app[COLLECTOR].config.batch_id_retention_days
        return _prune_forever(app, days) if days > 0 else None

    run_in_background(app, start)

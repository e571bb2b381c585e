"""The node collector adopts the metric rings of dead trainers (SIGKILL, the OOM killer).

A trainer killed without its exit leaves its ring under the spool roots of the store
this collector serves (``CollectorConfig.ring_roots``: the embedded collector's store,
and the URLs a ``flightlog collector`` on a fixed port is reached by). Every
``POLL_SECONDS`` the watch claims each ring whose owner is dead by pid and start time
(``flightlog.core.ring_format``), stores what it holds through the ingest path
(``collector.ingest.store_batch``: same checks, same batch ids as the owner's, so a batch
committed just before the death is deduplicated), ends the runs the owner left open
FAILED (KILLED ones were ended by the owner's SIGTERM handler) and deletes the ring. A
ring left while this collector was down is adopted on the first poll after it starts.
"""

from __future__ import annotations

import logging
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from aiohttp import web

from flightlog.collector.ingest import store_batch
from flightlog.collector.state import COLLECTOR, run_in_background
from flightlog.core.ring_adoption import watch_rings

log = logging.getLogger("flightlog.collector")


def setup(app: web.Application) -> None:
    """Watch the configured rings directories for as long as the application runs."""

    def start(app: web.Application) -> Coroutine[Any, Any, None] | None:
        c = app[COLLECTOR]
        roots = [Path(r) for r in c.config.ring_roots]
        if not roots:
            return None

        async def deliver(body: bytes, points: int) -> bool:
            _duplicate, errors = await store_batch(c, body)
            if errors:
                log.warning("a dead process's ring batch had errors, e.g. %s", errors[0])
            return True

        return watch_rings(roots, deliver, "collector")

    run_in_background(app, start)

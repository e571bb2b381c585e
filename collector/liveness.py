"""Dead-run detection: RUNNING runs whose agent stopped sending heartbeats end FAILED.

Agents send a heartbeat for each run they have open every
``FLIGHTLOG_HEARTBEAT_INTERVAL`` seconds (10 by default). A run whose last heartbeat is
older than the collector's run timeout (``--run-timeout`` / ``FLIGHTLOG_RUN_TIMEOUT``,
60 s by default, 0 turns it off) belonged to a process that was killed or lost its
machine: it is marked FAILED with an end time and the tag
``flightlog.endReason=heartbeat_timeout``, so no run stays RUNNING forever.

Only runs created (or resumed) by an agent are watched: they carry a heartbeat time.
Runs made through the REST API by MLflow clients, which send no heartbeats, are left
alone. After the collector starts, it waits one timeout before judging, so the agents
of a collector that was down get to be heard first; and a run failed by mistake (its
agent was only cut off) is set RUNNING again by its next heartbeat (see the store).
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

DEFAULT_RUN_TIMEOUT = 60.0
END_REASON_TAG = "flightlog.endReason"
HEARTBEAT_TIMEOUT_REASON = "heartbeat_timeout"


async def _watch(app: web.Application, timeout: float) -> None:
    c = app[COLLECTOR]
    started = time.time()
    period = min(max(timeout / 4, 0.05), 5.0)
    while True:
        await asyncio.sleep(period)
        now = time.time()
        if now - started < timeout:
            continue  # the grace period after a start: agents have not been heard yet
        try:
            failed = await c.write(c.store.fail_stale_runs, int((now - timeout) * 1000))
        except Exception:
            log.exception("checking run heartbeats failed; will retry")
            continue
        if failed:
            log.warning(
                "marked %d run(s) FAILED: no heartbeat for %.0f s: %s",
                len(failed),
                timeout,
                ", ".join(failed[:20]) + (" ..." if len(failed) > 20 else ""),
            )


def setup(app: web.Application) -> None:
    """Run the heartbeat watch for as long as the application runs."""

    def start(app: web.Application) -> Coroutine[Any, Any, None] | None:
        timeout = app[COLLECTOR].config.run_timeout
        return _watch(app, timeout) if timeout > 0 else None

    run_in_background(app, start)

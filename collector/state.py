"""The state one running collector shares between its features, under typed app keys.

:class:`Collector` holds the configuration, the store and the threads store work runs
on: one writer thread (SQLite allows one writer; a single thread keeps batches in
arrival order) and a small pool of readers, so reads never queue behind a large ingest.
Feature modules reach it as ``request.app[COLLECTOR]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web

from flightlog.collector import limits
from flightlog.collector.config import CollectorConfig
from flightlog.collector.store_api import Store
from flightlog.core.ring_format import RECORD, rings_root
from flightlog.core.ring_refs import LocalRings

T = TypeVar("T")
MSGPACK = "application/msgpack"


class Collector:
    """Shared state of one running collector."""

    def __init__(self, config: CollectorConfig, store: Store) -> None:
        self.config = config
        self.store = store
        self.writer = ThreadPoolExecutor(1, thread_name_prefix="flightlog-writer")
        self.readers = ThreadPoolExecutor(4, thread_name_prefix="flightlog-reader")
        self.last_activity = time.monotonic()
        self.ingested_points = 0
        # Ring-reference batches of agents on this node (``flightlog.core.ring_refs``): at
        # most as many records as the largest inline batch holds.
        self.rings = LocalRings(
            [rings_root(Path(r)) for r in config.ring_roots],
            config.ingest_max_body_bytes // RECORD,
        )
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

    def close(self) -> None:
        """Finish the store work in flight, then close the store."""
        self.writer.shutdown(wait=True)
        self.readers.shutdown(wait=True)
        self.store.close()


COLLECTOR = web.AppKey("collector", Collector)
#: Set to stop the process (collector.main waits on it; the idle watch sets it).


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

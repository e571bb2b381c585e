"""Upkeep of the store: forgetting old ingest batch ids, removing dead uploads' temp files.

The ``batches`` table makes retried batches idempotent; without pruning it grows by a
row per batch forever. Ids older than ``FLIGHTLOG_BATCH_ID_RETENTION_DAYS`` (default
30; 0 keeps them all) are deleted once at start and then every hour. Resends happen
within seconds (lost acknowledgements) or come from a spool of batches that were never
acknowledged, so a month is far beyond any window in which a duplicate could arrive.

Uploads write to hidden temporary files that are renamed once complete; a collector
killed mid-upload (kill -9, power loss) leaves them behind. At start, the ones under
the collector's own artifact root are removed (no upload is running yet; one collector
serves a store), and under the extra ``--allowed-artifact-root`` directories, which
other collectors may share, those untouched for a day.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Coroutine
from typing import Any

from aiohttp import web

from flightlog.collector.artifact_policy import local_path
from flightlog.collector.state import COLLECTOR, run_in_background
from flightlog.core.artifact_paths import TEMP_PREFIX

log = logging.getLogger("flightlog.collector")

PERIOD_S = 3600.0
SHARED_ROOT_TEMP_AGE_S = 86400.0


def remove_dead_uploads(root: str, older_than: float | None = None) -> int:
    """Remove upload temp files under ``root`` (those older than ``older_than`` s); count them."""
    cutoff = None if older_than is None else time.time() - older_than
    removed = 0
    for directory, _dirs, files in os.walk(root):
        for name in files:
            if not name.startswith(TEMP_PREFIX):
                continue
            path = os.path.join(directory, name)
            try:
                if cutoff is None or os.lstat(path).st_mtime < cutoff:
                    os.unlink(path)
                    removed += 1
            except OSError:
                continue  # gone meanwhile, or not ours to remove
    return removed


async def _clean_uploads(app: web.Application) -> None:
    config = app[COLLECTOR].config
    roots = [(config.artifact_root, None)] + [
        (root, SHARED_ROOT_TEMP_AGE_S) for root in config.allowed_artifact_roots
    ]
    for root, age in roots:
        path = local_path(root)
        if path is None or not os.path.isdir(path):
            continue
        try:
            n = await asyncio.to_thread(remove_dead_uploads, path, age)
        except Exception:
            log.exception("removing interrupted uploads under %s failed", path)
            continue
        if n:
            log.info("removed %d temp files of interrupted uploads under %s", n, path)


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
    """Remove dead uploads' temp files at start; prune old batch ids while running."""

    def start(app: web.Application) -> Coroutine[Any, Any, None] | None:
        days = app[COLLECTOR].config.batch_id_retention_days
        return _prune_forever(app, days) if days > 0 else None

    run_in_background(app, start)
    run_in_background(app, _clean_uploads)

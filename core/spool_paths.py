"""Where the spools and metric rings of the processes that log to one destination live.

FLIGHTLOG_SPOOL_DIR (settings.SPOOL_DIR) is the base directory of spools for collector
URLs (default $XDG_CACHE_HOME/flightlog/spool, i.e. ~/.cache/flightlog/spool); local
stores spool into <store>/spool unless it is set. The agent writes there; the node's
collector and sidecar look there for the metric rings dead processes left
(``flightlog.core.ring_format``), so both sides compute the paths here.
"""

from __future__ import annotations

import hashlib
import os
import urllib.parse
from pathlib import Path

from flightlog.core import settings
from flightlog.core.uris import LOOPBACK_NAMES, LocalStore


def default_spool_root(tracking_uri: str, store_dir: Path | LocalStore | None) -> Path:
    """The spool directory for one collector URL or local store.

    Spools are kept per destination, so a batch is only ever sent where it was meant to
    go: another agent adopts a dead process's spool only for the same destination (for a
    local store, its database file: two ``sqlite:///`` stores in a directory have two).
    """
    if store_dir is not None:
        if isinstance(store_dir, LocalStore):
            own = store_dir.spool_dir
            key = store_dir.directory if store_dir.is_directory_store else store_dir.db_path
        else:
            own, key = store_dir / "spool", store_dir
        if settings.SPOOL_DIR.get() is None:
            return own
        digest = hashlib.sha1(str(key).encode()).hexdigest()[:12]
        return spool_base() / f"store-{key.name}-{digest}"
    base = spool_base()
    parts = urllib.parse.urlsplit(tracking_uri)
    name = f"{parts.scheme}-{parts.hostname}-{parts.port or ''}"
    if parts.path.strip("/"):
        name += "-" + hashlib.sha1(parts.path.encode()).hexdigest()[:8]
    return base / name


def spool_base() -> Path:
    """The base directory of spools: FLIGHTLOG_SPOOL_DIR, else the XDG cache's."""
    configured = settings.SPOOL_DIR.get()
    if configured is not None:
        return Path(configured).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "flightlog" / "spool"


def served_spool_roots(
    store: LocalStore | None, host: str | None = None, port: int | None = None
) -> list[Path]:
    """The spool roots of the agents a collector on this node serves: those of its local
    store, and those of the URLs trainers reach it by (``http://<loopback name or host>:
    <port>``; none for port 0, which is not known before it listens)."""
    roots = [] if store is None else [default_spool_root("", store)]
    if port:
        hosts = dict.fromkeys([*LOOPBACK_NAMES, *([host] if host else [])])
        for h in hosts:
            if h in ("0.0.0.0", "::", ""):
                continue
            name = f"[{h}]" if ":" in h else h
            roots.append(default_spool_root(f"http://{name}:{port}", None))
    return list(dict.fromkeys(roots))

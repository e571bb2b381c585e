"""Tracking URI resolution and the per-URI connection (collector client + agent).

Settings: explicit argument > ``set_tracking_uri()`` > ``FLIGHTLOG_TRACKING_URI`` >
``MLFLOW_TRACKING_URI`` (so existing MLflow setups keep pointing where they did) >
``./flightlog``.

A relative local store path is made absolute when first used and stays so for the
process: a script that changes directory mid-run (Hydra does) keeps logging to, and
reading from, the store it started with.
"""

from __future__ import annotations

import atexit
import os
import threading
from pathlib import Path

from flightlog.agent.embedded import ensure_collector
from flightlog.agent.transport import CollectorClient
from flightlog.agent.worker import Agent
from flightlog.core import settings
from flightlog.core.entities import Experiment
from flightlog.core.exceptions import RESOURCE_DOES_NOT_EXIST, MlflowException
from flightlog.core.spool_paths import default_spool_root
from flightlog.core.uris import LocalStore, absolute_uri, is_collector_uri, local_store

DEFAULT_TRACKING_URI = "./flightlog"
_tracking_uri: str | None = None
_lock = threading.Lock()
_contexts: dict[str, TrackingContext] = {}
# A relative tracking URI -> the absolute one it meant where it was first used.
_pinned: dict[str, str] = {}


def set_tracking_uri(uri: str | os.PathLike[str]) -> None:
    """Set where runs are recorded: ``http://host:port`` or a local store path/URI."""
    global _tracking_uri
    text = os.fspath(uri)
    try:
        # A relative path means relative to where the program is when it sets it.
        _tracking_uri = absolute_uri(text)
    except (ValueError, MlflowException):  # not a local store: get_context says so
        _tracking_uri = text


def get_tracking_uri() -> str:
    """The tracking URI in force; a relative store path as it was first resolved."""
    return _pin(_tracking_uri or settings.TRACKING_URI.get() or DEFAULT_TRACKING_URI)


def _pin(uri: str) -> str:
    """``uri``, a relative local store path made absolute the first time it is seen."""
    pinned = _pinned.get(uri)
    if pinned is None:
        try:
            pinned = absolute_uri(uri)
        except (ValueError, MlflowException):  # not a local store: get_context says so
            return uri
        _pinned[uri] = pinned
    return pinned


def _key(uri: str) -> str:
    if is_collector_uri(uri):
        return uri.rstrip("/")
    return local_store(uri).identity


class TrackingContext:
    """Everything one process holds for one tracking URI."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.local: LocalStore | None = None
        if is_collector_uri(uri):
            base = uri
        else:
            self.local = local_store(uri)
            base = ensure_collector(self.local)
        self.client = CollectorClient(base)
        if self.local is not None:
            # A node-local collector that went idle or died is started again on demand.
            self.client.rediscover = self._rediscover
        # Batches the collector cannot take yet wait in a spool kept per destination
        # (a local store's lives inside the store), where a later process finds them.
        self.agent = Agent(
            self.client,
            spool_root=default_spool_root(uri, self.local),
            tracking_uri=self._destination(),
        )
        # Experiments this process has looked up (id -> Experiment), so start_run needs no
        # round trip after the first, and params it logged (run -> key -> value).
        self.experiments: dict[str, Experiment] = {}
        self.params: dict[str, dict[str, str]] = {}

    def _destination(self) -> str:
        """The tracking URI in absolute form, so that ``flightlog sync`` finds it later."""
        if self.local is None:
            return self.uri
        if self.local.db_path == self.local.directory / "flightlog.db":
            return str(self.local.directory)
        return f"sqlite:///{self.local.db_path}"

    def _rediscover(self) -> str:
        assert self.local is not None
        return ensure_collector(self.local)

    @property
    def store_path(self) -> Path | None:
        """The local store directory, when the URI names one."""
        return self.local.directory if self.local else None


def get_context(uri: str | None = None, create: bool = True) -> TrackingContext:
    """The (cached) context for a tracking URI, started on first use.

    ``create=False`` is for reads: a local store that does not exist yet is not created
    (nor a collector started for it); the read fails saying so.
    """
    uri = _pin(uri) if uri else get_tracking_uri()
    k = _key(uri)
    ctx = _contexts.get(k)
    if ctx is None and not create and not is_collector_uri(uri):
        store = local_store(uri)
        if not store.exists():
            raise MlflowException(
                f"No flightlog store at {store.db_path} (tracking URI {uri!r}): nothing has "
                "been logged there yet, and a read creates nothing. Check the tracking URI "
                "(--tracking-uri, FLIGHTLOG_TRACKING_URI or MLFLOW_TRACKING_URI).",
                RESOURCE_DOES_NOT_EXIST,
            )
    if ctx is None:
        with _lock:
            ctx = _contexts.get(k)
            if ctx is None:
                install_exit_hook()
                ctx = _contexts[k] = TrackingContext(uri)
    return ctx


def flush_all(timeout: float | None = None) -> None:
    """Flush every agent of this process."""
    for ctx in list(_contexts.values()):
        ctx.agent.flush(timeout)


def _at_exit() -> None:
    timeout = settings.EXIT_FLUSH_TIMEOUT.get()
    for ctx in list(_contexts.values()):
        ctx.agent.close(timeout)


_exit_hook_installed = False
_hook_lock = threading.Lock()


def install_exit_hook() -> None:
    """Close (flush) every agent at interpreter exit; installed with the first context.

    Not at import: importing flightlog has no side effects. The fluent API installs its
    own hook (ending runs) after this one, so it runs first (atexit is last-in, first-out).
    """
    global _exit_hook_installed
    with _hook_lock:
        if not _exit_hook_installed:
            atexit.register(_at_exit)
            _exit_hook_installed = True


def reset_for_tests() -> None:
    """Close every agent and forget all per-process state (tests only)."""
    global _tracking_uri
    for ctx in list(_contexts.values()):
        ctx.agent.close(10.0)
    _contexts.clear()
    _pinned.clear()
    _tracking_uri = None

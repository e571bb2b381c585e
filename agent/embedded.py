"""The node-local collector the SDK starts for a local store, and finds again later.

The collector writes ``collector.json`` (pid, host, port, store) into the store
directory once it listens (``<name>.db.collector.json`` for a ``sqlite:///`` store, so
that two stores in one directory never share one). Another process reuses it after
checking that ``/health`` names the same database file; a file lock makes sure
concurrent processes start only one.
The collector exits after ``FLIGHTLOG_EMBEDDED_IDLE_TIMEOUT`` seconds (default 600)
without requests; the SDK starts a fresh one when it next needs it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from flightlog.agent.transport import CollectorClient
from flightlog.core import settings
from flightlog.core.exceptions import INTERNAL_ERROR, MlflowException
from flightlog.core.uris import LocalStore, store_id

START_TIMEOUT = 30.0


def _running_collector(store: LocalStore) -> str | None:
    try:
        info = json.loads(store.collector_file.read_text())
        url = f"http://{info['host']}:{int(info['port'])}"
    except (OSError, ValueError, KeyError, TypeError):
        return None
    health = CollectorClient(url, timeout=2.0).healthy(timeout=2.0)
    if health is None or not serves(health, store):
        return None
    return url


def serves(health: dict[str, object], store: LocalStore) -> bool:
    """True when a collector's /health answer names ``store`` (a digest of its database
    file: /health shows the path itself only to a client with the token)."""
    return health.get("store_id") == store_id(store.identity)


def ensure_collector(store: LocalStore) -> str:
    """The URL of a collector serving ``store``; start one in the background if none is."""
    url = _running_collector(store)
    if url is not None:
        return url
    store.directory.mkdir(parents=True, exist_ok=True)
    with open(store.collector_lock, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            url = _running_collector(store)  # another process may have won the race
            if url is not None:
                return url
            return _spawn(store)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _spawn(store: LocalStore) -> str:
    idle = str(settings.EMBEDDED_IDLE_TIMEOUT.get())
    with contextlib.suppress(FileNotFoundError):
        store.collector_file.unlink()
    log_path = store.collector_log
    cmd = [
        sys.executable,
        "-m",
        "flightlog.collector",
        "--store",
        str(store.directory),
        "--port",
        "0",
        "--idle-timeout",
        idle,
        "--port-file",
        str(store.collector_file),
    ]
    if not store.is_directory_store:
        cmd[4] = f"sqlite:///{store.db_path}"
    with open(log_path, "ab") as log:
        # A session of its own: the collector outlives this process and its signals.
        # cwd is the store directory: ``-m`` puts the cwd first on sys.path, and a
        # directory named like the package there (the default ./flightlog store) must
        # not shadow it.
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            close_fds=True,
            cwd=str(store.directory),
        )
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:]
            raise MlflowException(
                f"The embedded flightlog collector for {store.directory} exited with code "
                f"{proc.returncode} at start. Its log ({log_path}) ends with:\n{tail}",
                INTERNAL_ERROR,
            )
        url = _running_collector(store)
        if url is not None:
            return url
        time.sleep(0.02)  # waiting on another process's file: nothing to wait on but time
    proc.kill()
    raise MlflowException(
        f"The embedded flightlog collector for {store.directory} did not "
        f"start within {START_TIMEOUT:.0f}s; see {log_path}",
        INTERNAL_ERROR,
    )


def stop_collector(store_dir: str | os.PathLike[str] | LocalStore, timeout: float = 10.0) -> bool:
    """Stop the collector serving a store (or store directory), if one runs. For tests and tools."""
    import signal

    f = (
        store_dir.collector_file
        if isinstance(store_dir, LocalStore)
        else Path(store_dir) / "collector.json"
    )
    try:
        pid = int(json.loads(f.read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.02)
    return False

"""Shared fixtures: a real collector process on 127.0.0.1 with a real SQLite store."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import flightlog
from flightlog import context, fluent
from flightlog.agent import system
from flightlog.agent.embedded import stop_collector

# The pg_server fixture (a throwaway PostgreSQL cluster), for any test module.
pytest_plugins = ["tests.pgserver"]


@dataclass
class CollectorProcess:
    """A collector started by a test: its URL, store directory and process."""

    url: str
    store: Path
    proc: subprocess.Popen[bytes]
    port: int

    @property
    def db(self) -> Path:
        return self.store / "flightlog.db"

    def stop(self, sig: int = 15) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            # A SIGTERM waits for requests in flight (aiohttp's 60 s shutdown timeout)
            # and fsyncs the buffers: on a loaded 2-core machine that has passed 30 s.
            self.proc.wait(timeout=90)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_collector(
    store: Path,
    port: int | None = None,
    *extra: str,
    env: dict[str, str] | None = None,
    command: tuple[str, ...] = ("-m", "flightlog.collector"),
) -> CollectorProcess:
    """Start ``python -m flightlog.collector`` and wait until it answers /health."""
    port = port or free_port()
    port_file = store / "test-collector.json"
    store.mkdir(parents=True, exist_ok=True)
    if port_file.exists():
        port_file.unlink()
    log = open(store / "test-collector.log", "ab")
    proc = subprocess.Popen(
        [
            sys.executable,
            *command,
            "--store",
            str(store),
            "--port",
            str(port),
            "--port-file",
            str(port_file),
            *extra,
        ],
        stdout=log,
        stderr=log,
        env={**os.environ, **(env or {})},
    )
    deadline = time.monotonic() + 30
    while not port_file.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"collector exited: {(store / 'test-collector.log').read_text()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("collector did not start")
        time.sleep(0.02)
    info = json.loads(port_file.read_text())
    return CollectorProcess(f"http://127.0.0.1:{info['port']}", store, proc, int(info["port"]))


@pytest.fixture(scope="session", autouse=True)
def _no_collectors_left(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """At the end of the session, stop every collector the tests left running.

    Embedded collectors outlive the processes that start them (for ten idle minutes);
    each writes a discovery file (``collector.json``, ``<db>.collector.json``) into its
    store, and every store of this session lies under the session's base temp directory.
    """
    yield
    for f in tmp_path_factory.getbasetemp().rglob("*collector.json"):
        try:
            pid = int(json.loads(f.read_text())["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if pid != os.getpid():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[CollectorProcess]:
    """A real collector process on loopback serving a fresh store."""
    c = start_collector(tmp_path / "store")
    yield c
    c.stop()


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test starts with no tracking URI, no active run, system metrics off (as set by
    ``enable_system_metrics_logging()``, which the tutorial calls) and its own working
    directory."""
    for var in (
        "FLIGHTLOG_TRACKING_URI",
        "MLFLOW_TRACKING_URI",
        "MLFLOW_EXPERIMENT_NAME",
        "MLFLOW_EXPERIMENT_ID",
        "FLIGHTLOG_EXPERIMENT_NAME",
        "FLIGHTLOG_EXPERIMENT_ID",
        system.ENABLE_ENV,
        system.MLFLOW_ENABLE_ENV,
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(system, "_overrides", system._Overrides())
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    yield
    context.reset_for_tests()
    fluent._reset_for_tests()
    stop_collector(work / "flightlog")


@pytest.fixture
def tracking(collector: CollectorProcess) -> CollectorProcess:
    """flightlog pointed at a real collector process."""
    flightlog.set_tracking_uri(collector.url)
    return collector

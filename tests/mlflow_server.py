"""Start real tracking servers for the MLflow-compatibility tests and the REST benchmark.

``mlflow server`` comes from the ``mlflow-skinny`` distribution plus the server's own
dependencies (Flask, SQLAlchemy, Alembic, Graphene, Huey), all in the ``dev`` extra:
the same server code as the full ``mlflow`` package at a quarter of its install size,
without the UI bundle and the ML libraries (scikit-learn, SciPy, PyArrow, matplotlib)
that tracking does not use.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

# MLflow 3 clients and servers send usage telemetry unless told not to; there is no
# network here, and a test must not wait on one.
QUIET_MLFLOW_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "MLFLOW_ENABLE_ASYNC_LOGGING": "false",
    "GIT_PYTHON_REFRESH": "quiet",
    # MLflow 3's server otherwise starts a job runner and several huey consumer processes
    # (GenAI jobs, not tracking) that crowd a 2-core machine.
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
}


def quiet_mlflow() -> None:
    """Set :data:`QUIET_MLFLOW_ENV` in this process (before ``import mlflow`` uses it)."""
    for name, value in QUIET_MLFLOW_ENV.items():
        os.environ.setdefault(name, value)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServerProcess:
    """A tracking server started by a test or benchmark."""

    name: str
    url: str
    proc: subprocess.Popen[bytes]
    log: Path
    #: The database URI of a flightlog collector on PostgreSQL (None: its SQLite store).
    store: str | None = None

    def stop(self) -> None:
        """Stop the server and everything it started (MLflow runs worker processes)."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, 15)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait(timeout=30)


def wait_healthy(server: ServerProcess, timeout: float) -> None:
    """Wait until ``<url>/health`` answers 200; raise with the server's log otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited:\n{server.log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"{server.url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(
                f"{server.name} did not answer in {timeout}s:\n{server.log.read_text()[-4000:]}"
            )
        time.sleep(0.2)


def start_mlflow_server(
    directory: Path,
    *,
    workers: int = 1,
    timeout: float = 120,
    python: str = sys.executable,
    backend_store_uri: str | None = None,
) -> ServerProcess:
    """``mlflow server`` on 127.0.0.1 with a SQLite store and proxied artifacts in ``directory``.

    ``python`` is the interpreter whose MLflow runs (bench/bench_peers.py uses its own venv).
    ``backend_store_uri`` replaces the SQLite store (bench/bench_team.py gives it a
    PostgreSQL database as ``postgresql+psycopg://``: SQLAlchemy on psycopg 3, which the
    ``postgres`` extra already installs, where plain ``postgresql://`` needs psycopg2).

    Artifacts are proxied (``--artifacts-destination``), as flightlog always does, so that
    both servers answer ``mlflow-artifacts:/`` URIs and clients upload through them.
    """
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = directory / "mlflow-server.log"
    env = {**os.environ, **QUIET_MLFLOW_ENV}
    proc = subprocess.Popen(
        [
            python,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            backend_store_uri or f"sqlite:///{directory / 'mlflow.db'}",
            "--artifacts-destination",
            str(directory / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(workers),
        ],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        env=env,
        cwd=directory,
        start_new_session=True,  # its own process group, so stop() reaches its workers
    )
    server = ServerProcess("mlflow server", f"http://127.0.0.1:{port}", proc, log)
    wait_healthy(server, timeout)
    return server


def start_flightlog_collector(
    directory: Path, *, timeout: float = 60, store: str | None = None
) -> ServerProcess:
    """A flightlog collector process on 127.0.0.1 serving a fresh store in ``directory``
    (or ``store``, e.g. a PostgreSQL URI, with artifacts under ``directory``)."""
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = directory / "collector.log"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flightlog.collector",
            "--store",
            store or str(directory / "store"),
            "--port",
            str(port),
        ],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "FLIGHTLOG_LOG_LEVEL": "WARNING"},
        cwd=directory,
        start_new_session=True,
    )
    server = ServerProcess("flightlog collector", f"http://127.0.0.1:{port}", proc, log, store)
    wait_healthy(server, timeout)
    return server


def start_fasttrackml(fml: str, directory: Path, *, timeout: float = 60) -> ServerProcess:
    """FastTrackML's ``fml server`` on 127.0.0.1 with a SQLite store in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = directory / "fml.log"
    proc = subprocess.Popen(
        [
            fml,
            "server",
            "--listen-address",
            f"127.0.0.1:{port}",
            "--database-uri",
            f"sqlite://{directory / 'fasttrackml.db'}",
            "--default-artifact-root",
            str(directory / "artifacts"),
        ],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        cwd=directory,
        start_new_session=True,
    )
    server = ServerProcess("FastTrackML", f"http://127.0.0.1:{port}", proc, log)
    wait_healthy(server, timeout)
    return server

"""A real PostgreSQL for tests: a throwaway cluster on 127.0.0.1, in a temporary directory.

The binaries come from the system's PostgreSQL (``pg_config --bindir``, or
``$FLIGHTLOG_PG_BINDIR``). ``initdb`` and ``postgres`` refuse to run as root, so when
the tests run as root the cluster is created and run as the ``postgres`` user through
``runuser``, in a data directory owned by that user. The server listens on a free
loopback port only (no Unix socket in a shared directory), with password
authentication, so a client connects exactly as it would to a team's database.
:func:`postgres_cluster` starts it, waits until it accepts connections, yields a
:class:`PgServer`, and stops it (``pg_ctl stop -m immediate``) and removes it at the end.

Tests use it through the session fixture :func:`pg_server`, imported into a test module::

    from pgserver import pg_server  # noqa: F401  (a pytest fixture)

Without PostgreSQL installed the fixture skips, saying what is missing.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

#: Overrides where the PostgreSQL server binaries (initdb, pg_ctl, postgres) are looked for.
ENV_PG_BINDIR = "FLIGHTLOG_PG_BINDIR"
#: The unprivileged user the cluster runs as when the tests run as root.
PG_OS_USER = "postgres"
SUPERUSER = "flightlog"


@dataclass(frozen=True)
class PgServer:
    """A running throwaway PostgreSQL cluster and how to reach it."""

    host: str
    port: int
    user: str
    password: str
    data_dir: Path
    bindir: Path
    log_path: Path
    startup_seconds: float

    def uri(self, database: str = "postgres") -> str:
        """A ``postgresql://`` URI for a database of this cluster."""
        return f"postgresql://{self.user}:{self.password}@{self.host}:{self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL with the cluster's own ``psql`` and return its unaligned output."""
        out = subprocess.run(
            [
                str(self.bindir / "psql"),
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                self.uri(database),
                "-c",
                sql,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if out.returncode != 0:
            raise RuntimeError(f"psql failed: {out.stderr.strip()}")
        return out.stdout.strip()

    def create_database(self, name: str | None = None) -> str:
        """Create a fresh empty database and return its URI."""
        name = name or f"t_{secrets.token_hex(6)}"
        self.psql(f'CREATE DATABASE "{name}"')
        return self.uri(name)

    def restart(self) -> None:
        """Stop the server abruptly (as a crash would) and start it again on the same port."""
        _pg_ctl(self.bindir, self.data_dir, "stop", "-m", "immediate", "-w")
        _start(self.bindir, self.data_dir, self.log_path, self.port)
        _wait_ready(self, time.monotonic() + 60)


def find_bindir() -> Path:
    """The directory of the PostgreSQL server binaries.

    :raises RuntimeError: When PostgreSQL is not installed, saying how to get it.
    """
    explicit = os.environ.get(ENV_PG_BINDIR)
    candidates: list[str] = [explicit] if explicit else []
    pg_config = shutil.which("pg_config")
    if pg_config and not explicit:
        with_config = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
        if with_config.returncode == 0:
            candidates.append(with_config.stdout.strip())
    for directory in candidates:
        if (Path(directory) / "initdb").exists() and (Path(directory) / "pg_ctl").exists():
            return Path(directory)
    raise RuntimeError(
        "PostgreSQL server binaries (initdb, pg_ctl) not found (needed for the PostgreSQL "
        "store tests): install PostgreSQL 15 (Debian: apt-get install postgresql-15), or set "
        f"${ENV_PG_BINDIR} to the directory that holds initdb"
    )


def _as_server_user(argv: Sequence[str]) -> list[str]:
    # PostgreSQL refuses to run as root: run as the postgres user through runuser.
    if os.geteuid() != 0:
        return list(argv)
    runuser = shutil.which("runuser")
    if runuser is None:
        raise RuntimeError("running as root and 'runuser' is missing: cannot start PostgreSQL")
    return [runuser, "-u", PG_OS_USER, "--", *argv]


def _chown_to_server_user(path: Path) -> None:
    if os.geteuid() == 0:
        user = pwd.getpwnam(PG_OS_USER)
        os.chown(path, user.pw_uid, user.pw_gid)


def _pg_ctl(bindir: Path, data_dir: Path, *args: str) -> None:
    subprocess.run(
        _as_server_user([str(bindir / "pg_ctl"), "-D", str(data_dir), *args]),
        check=True,
        capture_output=True,
        timeout=120,
    )


def _start(bindir: Path, data_dir: Path, log_path: Path, port: int) -> None:
    options = (
        f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories='' "
        # A throwaway cluster: durability of the test database itself is not under test,
        # but keep fsync on so that restart tests see what a real server does.
        "-c max_connections=200 -c shared_buffers=128MB"
    )
    _pg_ctl(bindir, data_dir, "start", "-w", "-t", "60", "-l", str(log_path), "-o", options)


def _wait_ready(server: PgServer, deadline: float) -> None:
    while True:
        try:
            server.psql("SELECT 1")
            return
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def postgres_cluster() -> Iterator[PgServer]:
    """Create and start a throwaway PostgreSQL cluster; stop and remove it afterwards."""
    bindir = find_bindir()
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="flightlog-pg-"))
    os.chmod(root, 0o755)  # the server user must reach its data directory inside
    data_dir = root / "data"
    data_dir.mkdir()
    _chown_to_server_user(data_dir)
    log_path = root / "postgres.log"
    log_path.touch()
    _chown_to_server_user(log_path)
    password = secrets.token_hex(12)
    pwfile = root / "pwfile"
    pwfile.write_text(password + "\n")
    _chown_to_server_user(pwfile)
    running = False
    try:
        subprocess.run(
            _as_server_user(
                [
                    str(bindir / "initdb"),
                    "-D",
                    str(data_dir),
                    "-U",
                    SUPERUSER,
                    f"--pwfile={pwfile}",
                    "--auth=scram-sha-256",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-sync",
                ]
            ),
            check=True,
            capture_output=True,
            timeout=120,
        )
        pwfile.unlink()
        port = _free_port()
        _start(bindir, data_dir, log_path, port)
        running = True
        server = PgServer(
            host="127.0.0.1",
            port=port,
            user=SUPERUSER,
            password=password,
            data_dir=data_dir,
            bindir=bindir,
            log_path=log_path,
            startup_seconds=0.0,
        )
        _wait_ready(server, time.monotonic() + 60)
        object.__setattr__(server, "startup_seconds", time.monotonic() - started)
        yield server
    except subprocess.CalledProcessError as e:
        log = log_path.read_text(errors="replace") if log_path.exists() else ""
        raise RuntimeError(
            f"PostgreSQL failed to start: {e.cmd}: {e.stderr!r}\n{log[-2000:]}"
        ) from e
    finally:
        if running:
            try:
                _pg_ctl(bindir, data_dir, "stop", "-m", "immediate", "-w")
            except subprocess.CalledProcessError:
                pass
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One throwaway PostgreSQL cluster for the test session (skips when not installed)."""
    try:
        find_bindir()
    except RuntimeError as e:
        pytest.skip(str(e))
    with postgres_cluster() as server:
        yield server

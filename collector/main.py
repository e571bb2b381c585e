"""Run a collector process: ``flightlog collector`` and ``python -m flightlog.collector``."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from flightlog.collector.app import create_app
from flightlog.collector.config import CollectorConfig
from flightlog.collector.store import SqliteStore
from flightlog.collector.store_api import Store
from flightlog.core import settings
from flightlog.core.serving import check_exposure, run_app, serve_until_stopped
from flightlog.core.spool_paths import served_spool_roots
from flightlog.core.uris import DB_NAME, is_database_uri, local_store, redact_password

log = logging.getLogger("flightlog.collector")


def add_arguments(
    p: argparse.ArgumentParser, *, mlflow_names: bool = False, port: int | None = None
) -> None:
    """The collector's command-line options; defaults from the environment (core.settings).

    With ``mlflow_names`` (``flightlog server``), the store and artifact root options are
    spelled as ``mlflow server`` spells them (the collector's names still work) and the
    port defaults to MLflow's 5000; ``port`` sets another default (``flightlog ui``: 5000).

    :raises SettingError: a FLIGHTLOG_* variable does not parse.
    """
    store_flags = ("--backend-store-uri", "--store") if mlflow_names else ("--store",)
    artifact_flags = (
        ("--default-artifact-root", "--artifacts") if mlflow_names else ("--artifacts",)
    )
    default_port = port if port is not None else 5000 if mlflow_names else 5055
    p.add_argument(
        *store_flags,
        dest="store",
        metavar="URI",
        default=settings.STORE.get(),
        help="store URI: a directory, file: or sqlite:/// URI, or postgresql://user:pass@"
        "host:port/db for a database several collectors share (default ./flightlog)",
    )
    p.add_argument(
        *artifact_flags,
        dest="artifacts",
        metavar="URI",
        default=None,
        help="default artifact root for new experiments, a directory or s3:// URI "
        "(default: <store>/artifacts)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument(
        "--port",
        type=int,
        default=default_port,
        help=f"port; 0 picks a free one (default {default_port})",
    )
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
    p.add_argument(
        "--upstream",
        default=settings.UPSTREAM.get(),
        help="run as a node sidecar: buffer ingest under <store>/forward and forward it to "
        "this central collector URL; other requests pass through (env FLIGHTLOG_UPSTREAM)",
    )
    p.add_argument(
        "--upstream-token",
        default=settings.UPSTREAM_TOKEN.get(),
        help="bearer token sent to the upstream (env FLIGHTLOG_UPSTREAM_TOKEN)",
    )
    p.add_argument(
        "--upstream-buffer-bytes",
        type=int,
        default=settings.UPSTREAM_BUFFER_MAX_BYTES.get(),
        help="disk bytes the forward buffer may hold; beyond, ingest gets 503 "
        "(env FLIGHTLOG_UPSTREAM_BUFFER_MAX_BYTES, default 8 GiB)",
    )


def config_from_args(args: argparse.Namespace) -> CollectorConfig:
    """Validate options into a CollectorConfig."""
    check_exposure(args.host, args.token)
    common = {
        "host": args.host,
        "port": args.port,
        "token": args.token,
        "idle_timeout": args.idle_timeout,
        "run_timeout": args.run_timeout,
        "ingest_max_body_bytes": args.ingest_max_body_bytes,
        "ingest_max_pending_bytes": args.ingest_max_pending_bytes,
        "body_timeout": args.body_timeout,
        "s3_endpoint_url": args.s3_endpoint_url,
        "allowed_artifact_roots": tuple(os.path.abspath(r) for r in args.allowed_artifact_root),
        "port_file": args.port_file,
        "announce_ui": getattr(args, "announce_ui", False),
    }
    if is_database_uri(args.store):
        roots = served_spool_roots(None, args.host, args.port)
        return CollectorConfig(
            store_uri=redact_password(args.store),
            database_uri=args.store,
            # MLflow's server default: ./mlartifacts beside where it runs.
            artifact_root=args.artifacts or Path("mlartifacts").resolve().as_uri(),
            ring_roots=tuple(str(r) for r in roots),
            **common,
        )
    store = local_store(args.store, args.artifacts)
    return CollectorConfig(
        store_uri=str(store.directory),
        artifact_root=store.artifact_root,
        db_path=str(store.db_path),
        ring_roots=tuple(str(r) for r in served_spool_roots(store, args.host, args.port)),
        **common,
    )


async def serve(config: CollectorConfig) -> None:
    """Serve until SIGTERM/SIGINT or the idle timeout."""
    store: Store
    if config.database_uri:
        from flightlog.collector.pgstore import PostgresStore

        store = PostgresStore(config.database_uri, config.artifact_root)
    else:
        db_path = config.db_path or str(Path(config.store_uri) / DB_NAME)
        store = SqliteStore(db_path, config.artifact_root)
    app = create_app(config, store)
    await run_app(
        app,
        config.host,
        config.port,
        config.store_uri,
        config.port_file,
        config.announce_ui,
        # collector.bodies decodes gzip/deflate itself, in bounded steps, counting the
        # inflated bytes against the budget; aiohttp's decoder would inflate unbounded.
        auto_decompress=False,
        # Idle keep-alive connections go after this long (a slow client holds no slot);
        # aiohttp's timer also closes a connection whose request headers are not
        # complete this long after it opened or after its last answer (headers sent a
        # byte at a time; tests/test_hardening_limits.py).
        keepalive_timeout=config.body_timeout,
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m flightlog.collector``."""
    p = argparse.ArgumentParser(prog="flightlog collector", description=__doc__)
    add_arguments(p)
    return run(p.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Serve what the parsed options ask for: a collector, or a node sidecar (--upstream)."""
    logging.basicConfig(
        level=settings.LOG_LEVEL.get(),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    if args.upstream:
        # The sidecar is the agent's (it forwards as agents do): the flightlog CLI runs it.
        raise SystemExit(
            "flightlog collector: --upstream runs a node sidecar; start it with "
            "`flightlog collector --upstream URL ...` (or python -m flightlog collector ...)"
        )
    config = config_from_args(args)
    return serve_until_stopped(serve(config), config.host, config.port)

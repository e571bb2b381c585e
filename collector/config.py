"""CollectorConfig: what one collector serves and how, every field typed.

Defaults come from :mod:`flightlog.core.settings` (the environment, then the declared
default), so a collector built in a test and one started by ``flightlog collector`` read
the same variables the same way. ``collector.main`` fills it from the command line.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from flightlog.core import settings


@dataclass
class CollectorConfig:
    """What a collector serves and how."""

    #: The store directory, as the SDK sees it in /health.
    store_uri: str
    #: Default artifact root for new experiments.
    artifact_root: str
    #: The SQLite file (``<store>/flightlog.db``); None: ``SqliteStore`` is given by the caller.
    db_path: str | None = None
    host: str = "127.0.0.1"
    port: int = 5055
    token: str | None = field(default_factory=settings.TOKEN.get)
    #: Seconds without requests before the process exits; None: never.
    idle_timeout: float | None = None
    #: Largest request body of any endpoint (aiohttp's client_max_size).
    max_body_bytes: int = 256 * 1024 * 1024
    #: Seconds without a heartbeat before a RUNNING run is marked FAILED; 0: never
    #: (flightlog.collector.liveness).
    run_timeout: float = field(default_factory=settings.RUN_TIMEOUT.get)
    #: The largest ingest batch, and ingest bytes in flight at once (collector.limits).
    ingest_max_body_bytes: int = field(default_factory=settings.INGEST_MAX_BODY_BYTES.get)
    ingest_max_pending_bytes: int = field(default_factory=settings.INGEST_MAX_PENDING_BYTES.get)
    #: Seconds a gathered request body may take to arrive, and an upload may pause;
    #: past it, 408 and the connection is closed (collector.bodies).
    body_timeout: float = field(default_factory=settings.BODY_TIMEOUT.get)
    #: The most bytes a gzip/deflate artifact upload may decode to (collector.bodies):
    #: a few hundred KB of a bomb must not become a file of gigabytes.
    upload_max_decoded_bytes: int = field(default_factory=settings.UPLOAD_MAX_DECODED_BYTES.get)
    #: S3-compatible endpoint for s3:// artifact locations; None: AWS itself.
    s3_endpoint_url: str | None = field(default_factory=settings.S3_ENDPOINT_URL.get)
    #: Days ingest batch ids are kept for deduplication; 0: forever (collector.housekeeping).
    batch_id_retention_days: float = field(default_factory=settings.BATCH_ID_RETENTION_DAYS.get)
    #: A PostgreSQL URI when the store is a database (collector/pgstore.py), else None;
    #: ``store_uri`` then shows it without its password.
    database_uri: str | None = None
    #: Directories besides ``artifact_root`` where experiments may keep artifacts
    #: (``--allowed-artifact-root``; collector.artifact_policy).
    allowed_artifact_roots: tuple[str, ...] = ()
    #: Where to write {pid, host, port, store} once listening (collector.main); None: nowhere.
    port_file: str | None = None
    #: Print the web UI's URL on stdout once listening (``flightlog ui``).
    announce_ui: bool = False
    #: Spool roots of the agents on this node that log here: the metric rings dead
    #: processes leave beside them are adopted (collector.ring_watch); empty: none.
    ring_roots: tuple[str, ...] = ()

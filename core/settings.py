"""Every environment variable flightlog reads, declared once: name, type, default, meaning.

Settings follow one rule everywhere: an explicit argument wins, then the environment
variable, then the default. A value that does not parse raises
:class:`~flightlog.core.exceptions.SettingError`, naming the variable and what it takes.
An empty value counts as unset. Some settings also answer to MLflow's variable
(``aliases``), read after flightlog's own.

Read a setting with ``settings.FLUSH_INTERVAL.get()`` (or ``.get(environ)`` with another
mapping), or resolve an argument with ``settings.FLUSH_INTERVAL.resolve(value)``.
:data:`ALL` lists them; the README's table of variables is checked against it by a test.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from flightlog.core.exceptions import SettingError

T = TypeVar("T")

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


@dataclass(frozen=True)
class Setting(Generic[T]):
    """One environment variable: its parser, default and meaning."""

    name: str
    parse: Callable[[str], T]
    default: T
    doc: str
    #: What a valid value looks like, for the error message and the README.
    expects: str
    aliases: tuple[str, ...] = field(default=())
    #: Who reads it: "sdk" (the training process), "collector", or "both".
    side: str = "sdk"

    def get(self, environ: Mapping[str, str] | None = None) -> T:
        """The value from the environment (flightlog's name, then the aliases) or the default.

        :raises SettingError: the variable is set to something that does not parse.
        """
        env = os.environ if environ is None else environ
        for name in (self.name, *self.aliases):
            raw = env.get(name)
            if raw is not None and raw.strip() != "":
                try:
                    return self.parse(raw.strip())
                except (ValueError, OverflowError) as e:
                    why = f" ({e})" if str(e) else ""
                    raise SettingError(
                        f"{name}={raw!r} is not valid: expected {self.expects}{why}"
                    ) from None
        return self.default

    def resolve(self, value: T | None, environ: Mapping[str, str] | None = None) -> T:
        """``value`` when given (an explicit argument wins), else :meth:`get`."""
        return value if value is not None else self.get(environ)


# -- parsers --------------------------------------------------------------------------------


def _number(minimum: float, *, inclusive: bool = True) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        value = float(raw)
        if not math.isfinite(value) or value < minimum or (not inclusive and value == minimum):
            raise ValueError("out of range")
        return value

    return parse


def _integer(minimum: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        value = int(raw)  # accepts 1_000_000 too
        if value < minimum:
            raise ValueError("out of range")
        return value

    return parse


def _boolean(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError("not a boolean")


def _choice(*values: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        upper = raw.upper()
        if upper not in values:
            raise ValueError(f"one of {', '.join(values)}")
        return upper

    return parse


#: A node label: it becomes part of every system metric's name (system/<label>/...).
NODE_LABEL = re.compile(r"^[A-Za-z0-9_.\-]+$")


def _node_label(raw: str) -> str:
    if not NODE_LABEL.match(raw):
        raise ValueError("it becomes part of every system metric's name")
    return raw


def _text(raw: str) -> str:
    return raw


def _optional_text(raw: str) -> str | None:
    return raw


# -- the training process (SDK and agent) ------------------------------------------------------

TRACKING_URI: Setting[str | None] = Setting(
    "FLIGHTLOG_TRACKING_URI",
    _optional_text,
    None,
    "Where runs are logged: http(s)://host:port (a collector), a directory, file: or "
    "sqlite:/// URI (a local store). Default ./flightlog.",
    "a URI or a path",
    aliases=("MLFLOW_TRACKING_URI",),
)
TOKEN: Setting[str | None] = Setting(
    "FLIGHTLOG_TOKEN",
    _optional_text,
    None,
    "Bearer token: the collector requires it (any bind address but loopback needs one); "
    "the SDK sends it (MLflow's MLFLOW_TRACKING_TOKEN also works on the SDK side).",
    "a token string",
    aliases=("MLFLOW_TRACKING_TOKEN",),
    side="both",
)
USER: Setting[str | None] = Setting(
    "FLIGHTLOG_USER",
    _optional_text,
    None,
    "The user recorded on new runs (default: the login name).",
    "a user name",
)
EXPERIMENT_NAME: Setting[str | None] = Setting(
    "FLIGHTLOG_EXPERIMENT_NAME",
    _optional_text,
    None,
    "Experiment for runs started without set_experiment (by name).",
    "an experiment name",
    aliases=("MLFLOW_EXPERIMENT_NAME",),
)
EXPERIMENT_ID: Setting[str | None] = Setting(
    "FLIGHTLOG_EXPERIMENT_ID",
    _optional_text,
    None,
    "Experiment for runs started without set_experiment (by id; default 0, 'Default').",
    "an experiment id",
    aliases=("MLFLOW_EXPERIMENT_ID",),
)
FLUSH_INTERVAL: Setting[float] = Setting(
    "FLIGHTLOG_FLUSH_INTERVAL",
    _number(0.0, inclusive=False),
    1.0,
    "Seconds between batches when the queue is not full.",
    "a number of seconds > 0",
)
BATCH_POINTS: Setting[int] = Setting(
    "FLIGHTLOG_BATCH_POINTS",
    _integer(1),
    100_000,
    "Points per batch, and the queue length that wakes the agent early.",
    "an integer >= 1",
)
MAX_QUEUE: Setting[int] = Setting(
    "FLIGHTLOG_MAX_QUEUE",
    _integer(1),
    1_000_000,
    "Points held in memory at most; past half the logging call spills a batch itself, "
    "at the cap points go to the spool or are dropped (and counted).",
    "an integer >= 1",
)
MAX_PENDING_BYTES: Setting[int] = Setting(
    "FLIGHTLOG_MAX_PENDING_BYTES",
    _integer(1),
    32 * 1024**2,
    "Encoded batch bytes kept in memory awaiting acknowledgement before batches go to "
    "the disk spool.",
    "a number of bytes >= 1",
)
EXIT_FLUSH_TIMEOUT: Setting[float] = Setting(
    "FLIGHTLOG_EXIT_FLUSH_TIMEOUT",
    _number(0.0, inclusive=False),
    30.0,
    "Seconds the interpreter's exit waits for what is left to be acknowledged; the rest "
    "stays in the spool.",
    "a number of seconds > 0",
)
SIGNAL_FLUSH_TIMEOUT: Setting[float] = Setting(
    "FLIGHTLOG_SIGNAL_FLUSH_TIMEOUT",
    _number(0.0, inclusive=False),
    10.0,
    "Seconds a SIGTERM or Ctrl-C waits for the flush before the program's handler runs.",
    "a number of seconds > 0",
)
SIGNAL_HANDLERS: Setting[bool] = Setting(
    "FLIGHTLOG_SIGNAL_HANDLERS",
    _boolean,
    True,
    "Install SIGTERM/SIGINT handlers that end runs KILLED (chained to the program's).",
    "true or false",
)
HEARTBEAT_INTERVAL: Setting[float] = Setting(
    "FLIGHTLOG_HEARTBEAT_INTERVAL",
    _number(0.0, inclusive=False),
    10.0,
    "Seconds between heartbeats of each open run.",
    "a number of seconds > 0",
)
SPOOL_DIR: Setting[str | None] = Setting(
    "FLIGHTLOG_SPOOL_DIR",
    _optional_text,
    None,
    "Directory of the disk spool (default $XDG_CACHE_HOME/flightlog/spool).",
    "a directory path",
)
SPOOL_MAX_BYTES: Setting[int] = Setting(
    "FLIGHTLOG_SPOOL_MAX_BYTES",
    _integer(0),
    2 * 1024**3,
    "Bytes one process may keep in the spool; past it points are dropped and counted.",
    "a number of bytes >= 0",
)
METRIC_RING: Setting[bool] = Setting(
    "FLIGHTLOG_METRIC_RING",
    _boolean,
    True,
    "Keep queued metric points in a memory-mapped file in the spool directory so that a "
    "SIGKILLed or OOM-killed process loses none (the node's collector, or the next flightlog "
    "process on the node, sends them). Off (or with an unwritable spool directory) they "
    "wait in memory.",
    "true or false",
)
RING_REFS: Setting[bool] = Setting(
    "FLIGHTLOG_RING_REFS",
    _boolean,
    True,
    "Send metric batches to a collector on this node (a loopback address) as references to "
    "the metric ring, which the collector reads itself, instead of copying the records "
    "into each request. Falls back to copies when the collector cannot read the ring.",
    "true or false",
)
EMBEDDED_IDLE_TIMEOUT: Setting[float] = Setting(
    "FLIGHTLOG_EMBEDDED_IDLE_TIMEOUT",
    _number(0.0, inclusive=False),
    600.0,
    "Seconds without requests after which a collector the SDK started exits.",
    "a number of seconds > 0",
)
ENABLE_SYSTEM_METRICS_LOGGING: Setting[bool] = Setting(
    "FLIGHTLOG_ENABLE_SYSTEM_METRICS_LOGGING",
    _boolean,
    False,
    "Sample system metrics for every run.",
    "true or false",
    aliases=("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING",),
)
SYSTEM_METRICS_SAMPLING_INTERVAL: Setting[float] = Setting(
    "FLIGHTLOG_SYSTEM_METRICS_SAMPLING_INTERVAL",
    _number(0.1),
    10.0,
    "Seconds between system metric samples.",
    "a number of seconds >= 0.1",
    aliases=("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL",),
)
NODE: Setting[str | None] = Setting(
    "FLIGHTLOG_NODE",
    _node_label,
    None,
    "This node's label in system metric names (system/<node>/...); default: the host name "
    "on multi-node launches, none on one node.",
    "letters, digits and _ . -",
    aliases=("MLFLOW_SYSTEM_METRICS_NODE_ID",),
)
LOG_LEVEL: Setting[str] = Setting(
    "FLIGHTLOG_LOG_LEVEL",
    _choice("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
    "INFO",
    "Log level of the flightlog command line programs.",
    "DEBUG, INFO, WARNING, ERROR or CRITICAL",
    side="both",
)

# -- the collector ---------------------------------------------------------------------------

STORE: Setting[str] = Setting(
    "FLIGHTLOG_STORE",
    _text,
    "./flightlog",
    "The collector's store (--store): a directory or sqlite:/// URI.",
    "a path or URI",
    side="collector",
)
RUN_TIMEOUT: Setting[float] = Setting(
    "FLIGHTLOG_RUN_TIMEOUT",
    _number(0.0),
    60.0,
    "Seconds without a heartbeat before a RUNNING run is marked FAILED (0: never).",
    "a number of seconds >= 0",
    side="collector",
)
BODY_TIMEOUT: Setting[float] = Setting(
    "FLIGHTLOG_BODY_TIMEOUT",
    _number(0.0, inclusive=False),
    60.0,
    "Seconds a request body may take to arrive (an upload: may pause); then 408.",
    "a number of seconds > 0",
    side="collector",
)
UPLOAD_MAX_DECODED_BYTES: Setting[int] = Setting(
    "FLIGHTLOG_UPLOAD_MAX_DECODED_BYTES",
    _integer(1),
    256 * 1024**2,
    "Largest artifact upload sent gzip/deflate-encoded, once decoded (413 past it).",
    "a number of bytes >= 1",
    side="collector",
)
INGEST_MAX_BODY_BYTES: Setting[int] = Setting(
    "FLIGHTLOG_INGEST_MAX_BODY_BYTES",
    _integer(1),
    64 * 1024**2,
    "Largest ingest body accepted (413 past it).",
    "a number of bytes >= 1",
    side="collector",
)
INGEST_MAX_PENDING_BYTES: Setting[int] = Setting(
    "FLIGHTLOG_INGEST_MAX_PENDING_BYTES",
    _integer(1),
    64 * 1024**2,
    "Ingest bytes in flight at most; past it the collector answers 503 + Retry-After.",
    "a number of bytes >= 1",
    side="collector",
)
S3_ENDPOINT_URL: Setting[str | None] = Setting(
    "FLIGHTLOG_S3_ENDPOINT_URL",
    _optional_text,
    None,
    "Endpoint of an S3-compatible store for s3:// artifact locations.",
    "an http(s) URL",
    aliases=("MLFLOW_S3_ENDPOINT_URL",),
    side="collector",
)
BATCH_ID_RETENTION_DAYS: Setting[float] = Setting(
    "FLIGHTLOG_BATCH_ID_RETENTION_DAYS",
    _number(0.0),
    30.0,
    "Days ingest batch ids are kept for deduplicating retries, then pruned hourly.",
    "a number of days >= 0",
    side="collector",
)
SQLITE_SYNCHRONOUS: Setting[str] = Setting(
    "FLIGHTLOG_SQLITE_SYNCHRONOUS",
    _choice("OFF", "NORMAL", "FULL", "EXTRA"),
    "FULL",
    "SQLite's synchronous pragma for the store (WAL mode). FULL: an acknowledged batch "
    "survives a power loss or kernel panic; NORMAL: only a crash of the collector (a "
    "little faster; the agent has deleted its copy by then).",
    "OFF, NORMAL, FULL or EXTRA",
    side="collector",
)

UPSTREAM: Setting[str | None] = Setting(
    "FLIGHTLOG_UPSTREAM",
    _optional_text,
    None,
    "A node sidecar's central collector: ingest is buffered on the node and forwarded there; "
    "other requests pass through.",
    "an http(s)://host:port URL",
    side="collector",
)
UPSTREAM_TOKEN: Setting[str | None] = Setting(
    "FLIGHTLOG_UPSTREAM_TOKEN",
    _optional_text,
    None,
    "Bearer token a node sidecar sends to its upstream collector.",
    "a token string",
    side="collector",
)
UPSTREAM_BUFFER_MAX_BYTES: Setting[int] = Setting(
    "FLIGHTLOG_UPSTREAM_BUFFER_MAX_BYTES",
    _integer(1),
    8 * 1024**3,
    "Disk bytes a node sidecar's forward buffer may hold; beyond, ingest gets 503 with "
    "Retry-After (the trainers' agents spool meanwhile).",
    "an integer >= 1",
    side="collector",
)

#: Every setting, in the order the README lists them.
ALL: tuple[Setting[Any], ...] = tuple(v for v in globals().values() if isinstance(v, Setting))

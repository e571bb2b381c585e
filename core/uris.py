"""Tracking and store URIs: which are collectors, which are local stores, and where files go."""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from flightlog.core.exceptions import INVALID_PARAMETER_VALUE, MlflowException

#: The names of this machine's loopback interface (all of 127.0.0.0/8 is, too).
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine's loopback (all of 127.0.0.0/8): a server
    bound there stays on this machine, a collector reached there runs on it."""
    try:
        return host in LOOPBACK_NAMES or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


DB_NAME = "flightlog.db"


@dataclass(frozen=True)
class LocalStore:
    """A store on this machine: its directory, SQLite file and default artifact root."""

    directory: Path
    db_path: Path
    artifact_root: str

    @property
    def is_directory_store(self) -> bool:
        """True when the store is a directory holding ``flightlog.db`` (not a named file)."""
        return self.db_path == self.directory / DB_NAME

    @property
    def identity(self) -> str:
        """What names this store uniquely: its database file's absolute path.

        Two ``sqlite:///`` stores may share a directory; their files never do.
        """
        return str(self.db_path)

    def _own(self, name: str) -> Path:
        # A directory store's files keep their plain names; a named database file's carry
        # its name, so that two stores in one directory never share a collector or spool.
        if self.is_directory_store:
            return self.directory / name
        return self.directory / f"{self.db_path.name}.{name.lstrip('.')}"

    @property
    def collector_file(self) -> Path:
        """Where the node-local collector serving this store writes its address."""
        return self._own("collector.json")

    @property
    def collector_lock(self) -> Path:
        """The lock that lets only one process start this store's collector."""
        return self._own(".collector.lock")

    @property
    def collector_log(self) -> Path:
        """The embedded collector's log file."""
        return self._own("collector.log")

    @property
    def spool_dir(self) -> Path:
        """Where batches for this store wait while its collector is away."""
        return self._own("spool")

    def exists(self) -> bool:
        """True once the store's database file has been created."""
        return self.db_path.is_file()


SUPPORTED_FORMS = (
    "http(s)://host:port (a flightlog collector), or a local store: a directory path, "
    "file:///path/to/dir, or sqlite:///path/to.db"
)
# A scheme: two characters or more, so that a Windows drive ("C:") stays a path.
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):")
# Tracking URIs MLflow accepts as bare words.
_BARE = frozenset({"databricks", "databricks-uc", "uc"})


def check_tracking_uri(uri: str) -> None:
    """Refuse a tracking URI flightlog cannot serve (``databricks``, ``postgresql://``,
    ...), with an error naming the forms it supports; such a URI must not become a local
    directory of that name."""
    m = _SCHEME.match(uri)
    scheme = m.group(1).lower() if m else (uri.lower() if uri.lower() in _BARE else None)
    if scheme is None or scheme in ("http", "https", "file", "sqlite"):
        return
    raise MlflowException(
        f"Unsupported tracking URI {uri!r}: flightlog does not serve {scheme!r} stores. "
        f"Supported forms: {SUPPORTED_FORMS}.",
        INVALID_PARAMETER_VALUE,
    )


def is_collector_uri(uri: str) -> bool:
    """True for http(s):// URIs, which name a running collector."""
    return uri.startswith(("http://", "https://"))


def local_store(uri: str | os.PathLike[str], artifact_root: str | None = None) -> LocalStore:
    """Resolve a path, ``file:`` or ``sqlite:///`` URI to a local store.

    A directory (``./flightlog``) holds ``flightlog.db`` and ``artifacts/``; a
    ``sqlite:///path/x.db`` URI names the file itself, with artifacts beside it.
    """
    is_db, path = _store_path(os.fspath(uri))
    if is_db:
        db = Path(path).expanduser().resolve()
        directory = db.parent
    else:
        directory = Path(path).expanduser().resolve()
        db = directory / DB_NAME
    root = artifact_root or (directory / "artifacts").as_uri()
    return LocalStore(directory=directory, db_path=db, artifact_root=root)


def absolute_uri(uri: str) -> str:
    """``uri`` with a relative local store path made absolute against the current directory.

    Collector URIs and local stores named by an absolute path come back unchanged, so the
    result no longer depends on where the process is when it is used.

    :raises MlflowException: a scheme flightlog does not serve (:func:`check_tracking_uri`).
    :raises ValueError: ``uri`` is neither a collector URI nor a local store.
    """
    if is_collector_uri(uri):
        return uri
    is_db, path = _store_path(uri)
    if os.path.isabs(os.path.expanduser(path)):
        return uri
    absolute = Path(path).expanduser().resolve()
    return f"sqlite:///{absolute}" if is_db else str(absolute)


def _store_path(text: str) -> tuple[bool, str]:
    """(whether it names the database file itself, its path as written) of a local store URI."""
    check_tracking_uri(text)
    if text.startswith("sqlite:"):
        path = text[len("sqlite:") :]
        # sqlite:///rel.db is relative, sqlite:////abs.db absolute, as SQLAlchemy reads them.
        path = path[3:] if path.startswith("///") else path.lstrip("/")
        if not path:
            raise ValueError(f"{text!r} names no database file")
        return True, path
    path = text
    if text.startswith("file:"):
        path = urllib.parse.unquote(urllib.parse.urlsplit(text).path)
    if is_collector_uri(path) or "://" in path:
        raise ValueError(f"{text!r} is not a local store path")
    return False, path


def is_database_uri(uri: str) -> bool:
    """Whether a store URI names a PostgreSQL database (the collector's shared store)."""
    return uri.startswith(("postgresql://", "postgres://"))


def redact_password(uri: str) -> str:
    """``uri`` with its password, if any, replaced by ``***`` (for logs and /health)."""
    parts = urllib.parse.urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def store_id(identity: str) -> str:
    """A store's identity in ``/health``: a digest of its database file's path.

    The SDK compares it to decide whether a running collector serves its store
    (:attr:`LocalStore.identity`); anyone who can reach ``/health`` without the token
    learns neither the path nor the PID.
    """
    return hashlib.sha256(os.fsencode(identity)).hexdigest()[:32]

"""Tracking and store URIs: which are collectors, which are local stores, and where files go."""

from __future__ import annotations

import hashlib
import os
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

DB_NAME = "flightlog.db"


@dataclass(frozen=True)
class LocalStore:
    """A store on this machine: its directory, SQLite file and default artifact root."""

    directory: Path
    db_path: Path
    artifact_root: str

    @property
    def collector_file(self) -> Path:
        """Where the node-local collector serving this store writes its address."""
        return self.directory / "collector.json"


def is_collector_uri(uri: str) -> bool:
    """True for http(s):// URIs, which name a running collector."""
    return uri.startswith(("http://", "https://"))


def local_store(uri: str | os.PathLike[str], artifact_root: str | None = None) -> LocalStore:
    """Resolve a path, ``file:`` or ``sqlite:///`` URI to a local store.

    A directory (``./flightlog``) holds ``flightlog.db`` and ``artifacts/``; a
    ``sqlite:///path/x.db`` URI names the file itself, with artifacts beside it.
    """
    text = os.fspath(uri)
    if text.startswith("sqlite:"):
        path = text[len("sqlite:") :]
        # sqlite:///rel.db is relative, sqlite:////abs.db absolute, as SQLAlchemy reads them.
        path = path[3:] if path.startswith("///") else path.lstrip("/")
        if not path:
            raise ValueError(f"{text!r} names no database file")
        db = Path(path).expanduser().resolve()
        directory = db.parent
    else:
        if text.startswith("file:"):
            text = urllib.parse.unquote(urllib.parse.urlsplit(text).path)
        if is_collector_uri(text) or "://" in text:
            raise ValueError(f"{text!r} is not a local store path")
        directory = Path(text).expanduser().resolve()
        db = directory / DB_NAME
    root = artifact_root or (directory / "artifacts").as_uri()
    return LocalStore(directory=directory, db_path=db, artifact_root=root)


def store_id(directory: str | os.PathLike[str]) -> str:
    """A store's identity in ``/health``: a digest of its directory, not the path itself.

    The SDK compares it to decide whether a running collector serves its store; anyone
    who can reach ``/health`` without the token learns neither the path nor the PID.
    """
    return hashlib.sha256(os.fsencode(os.path.abspath(directory))).hexdigest()[:32]

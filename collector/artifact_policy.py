"""Where a collector may write artifacts: under its artifact root(s) and to object stores.

A REST or RPC client chooses an experiment's ``artifact_location``, and the collector
(often run as root) then writes there through the artifact proxy. So a location is
accepted only when it is an object store (``s3://``) or a directory under the
collector's artifact root or a root its operator allowed with
``--allowed-artifact-root``; a relative location is taken under the artifact root, never
the collector's working directory. The same check runs again each time a repository is
opened, so experiments stored before (or by another tool) cannot lead writes elsewhere.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

from flightlog.collector.config import CollectorConfig
from flightlog.core.exceptions import INVALID_PARAMETER_VALUE, MlflowException

#: Schemes of object stores the collector writes to (collector.artifacts).
OBJECT_STORE_SCHEMES = ("s3",)


def local_path(uri: str) -> str | None:
    """The local directory a URI or path names, or None for an object store or other scheme."""
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme == "file" and parts.netloc in ("", "localhost"):
        return url2pathname(parts.path)
    if scheme == "" or len(scheme) == 1:  # a plain path, or a Windows drive letter
        return uri
    return None


def allowed_roots(config: CollectorConfig) -> list[str]:
    """The artifact root and the operator's extra roots, as given (URIs or paths)."""
    return [config.artifact_root, *config.allowed_artifact_roots]


def _real_local_roots(config: CollectorConfig) -> list[str]:
    roots = []
    for root in allowed_roots(config):
        path = local_path(root)
        if path is not None:
            roots.append(os.path.realpath(path))
    return roots


def _refuse(location: str, config: CollectorConfig, why: str) -> MlflowException:
    roots = ", ".join(allowed_roots(config))
    return MlflowException(
        f"Invalid artifact_location {location[:300]!r}: {why}. This collector stores "
        f"artifacts under {roots} or in s3:// buckets; its operator can allow more "
        "directories with --allowed-artifact-root.",
        INVALID_PARAMETER_VALUE,
    )


def _under(path: str, roots: list[str]) -> bool:
    real = os.path.realpath(path)
    return any(os.path.commonpath([root, real]) == root for root in roots)


def check_location(config: CollectorConfig, location: str) -> str:
    """The artifact location to store for an experiment a client asked for.

    :return: ``location`` itself (an object store or an allowed directory), or a
        relative location resolved under the artifact root.
    :raises MlflowException: ``INVALID_PARAMETER_VALUE`` naming the allowed roots.
    """
    if "\x00" in location:
        raise _refuse(location, config, "it contains a NUL character")
    parts = urlsplit(location)
    if parts.scheme.lower() in OBJECT_STORE_SCHEMES:
        if not parts.netloc:
            raise _refuse(location, config, "it names no bucket")
        return location
    path = local_path(location)
    if path is None:
        raise _refuse(location, config, f"the scheme {parts.scheme!r} is not supported")
    if parts.scheme.lower() == "file" and parts.netloc not in ("", "localhost"):
        raise _refuse(location, config, "file: URIs must name this machine")
    if not os.path.isabs(path):
        rel = posixpath.normpath(path.replace(os.sep, "/"))
        if rel == ".." or rel.startswith("../"):
            raise _refuse(location, config, "a relative location may not leave the root")
        root = config.artifact_root
        root_path = local_path(root)
        if root_path is None:  # an object-store root: a key prefix below it
            return f"{root.rstrip('/')}/{rel}"
        path = os.path.join(root_path, rel)
        location = Path(os.path.abspath(path)).as_uri()
    if not _under(path, _real_local_roots(config)):
        raise _refuse(location, config, "it is outside the allowed artifact roots")
    return location


def check_artifact_uri(config: CollectorConfig, uri: str) -> None:
    """Refuse to open a repository outside the allowed roots (an experiment stored before)."""
    path = local_path(uri)
    if path is None:
        return  # object stores; other schemes are refused by repository_for
    if not os.path.isabs(path) or not _under(path, _real_local_roots(config)):
        raise MlflowException(
            f"Artifact location {uri[:300]!r} is outside this collector's artifact roots "
            f"({', '.join(allowed_roots(config))}); nothing was read or written there. Start "
            "the collector with --allowed-artifact-root to allow it.",
            INVALID_PARAMETER_VALUE,
        )

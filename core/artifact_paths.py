"""Artifact path safety: the one check every artifact entry point runs first.

Artifact paths come from users (``log_artifact(..., artifact_path=...)``) and from the
network (the collector's upload and download endpoints), and are joined onto a run's
artifact root, a local directory or an object-store prefix. This module turns such a
path into a canonical relative form or refuses it, without touching any file system,
so the SDK can call it for an early error and the collector before any I/O. The local
repository adds a ``realpath`` check on top for symlinks (see ``artifacts.py``).
"""

from __future__ import annotations

import re
from functools import lru_cache

from flightlog.core.exceptions import INVALID_PARAMETER_VALUE, MlflowException

__all__ = ["PROXY_SCHEME", "TEMP_PREFIX", "proxied_artifact_uri", "safe_relative_path"]

#: The scheme of artifact URIs served through a tracking server's artifact proxy.
PROXY_SCHEME = "mlflow-artifacts"

#: Name prefix of the local repository's in-progress uploads. Listings hide such files,
#: so no artifact may carry the name: it would be stored but never listed.
TEMP_PREFIX = ".flightlog-upload-"

# "C:", "c:foo": a Windows drive prefix, absolute or drive-relative; either would leave
# the root if the path ever met a Windows file system.
_DRIVE = re.compile(r"^[A-Za-z]:")


#: File systems' limits (NAME_MAX, and PATH_MAX less room for the artifact root), and a
#: depth that directory creation can reach without deep recursion.
MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 3072
MAX_DEPTH = 256


def _refuse(path: object, why: str) -> MlflowException:
    # "Invalid path" is MLflow's text (its clients and tests match on it); the detail follows.
    shown = repr(path) if len(repr(path)) <= 200 else f"{repr(path)[:200]}..."
    return MlflowException(f"Invalid path {shown}: {why}", INVALID_PARAMETER_VALUE)


def safe_relative_path(path: str, *, allow_root: bool = False) -> str:
    """Return ``path`` as a canonical path relative to an artifact root, or refuse it.

    Backslashes count as separators (a Windows path, or a trick to smuggle ``..\\``
    past a check that only splits on ``/``); empty and ``.`` segments are dropped and
    ``..`` is resolved lexically, so ``a//b/./c`` becomes ``a/b/c`` and ``a/../b``
    becomes ``b``.

    :param path: A relative artifact path such as ``"models/model.pkl"``.
    :param allow_root: Accept a path that names the root itself (``""``, ``"."``,
        ``"a/.."``) and return ``""`` for it; listing accepts the root, writing a file
        does not.
    :return: The path with forward slashes, no empty, ``.`` or ``..`` segments, and no
        leading or trailing slash.
    :raises MlflowException: ``INVALID_PARAMETER_VALUE``, naming the path, when it is not
        a string, holds a NUL byte, has a name reserved for uploads in progress
        (:data:`TEMP_PREFIX`), is absolute (``/x``, ``\\\\server\\share``), starts
        with a drive letter (``C:``), climbs above the root (``..``, ``a/../../b``), or
        names the root while ``allow_root`` is false, or exceeds the file system's
        limits (a name over 255 bytes, a path over 3,072 bytes or 256 levels deep).
    """
    if not isinstance(path, str):
        raise _refuse(path, "must be a string")
    if "\x00" in path:
        raise _refuse(path, "contains a NUL byte")
    normalised = path.replace("\\", "/")
    if normalised.startswith("/"):
        raise _refuse(path, "must be relative, not absolute")
    if _DRIVE.match(normalised):
        raise _refuse(path, "must not start with a drive letter")
    parts: list[str] = []
    for segment in normalised.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if not parts:
                raise _refuse(path, "escapes the artifact root with '..'")
            parts.pop()
            continue
        if segment.startswith(TEMP_PREFIX):
            raise _refuse(path, f"names starting with {TEMP_PREFIX!r} are reserved")
        parts.append(segment)
    if not parts and not allow_root:
        raise _refuse(path, "names no file (empty path)")
    for part in parts:
        if len(part.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
            raise _refuse(path, f"a name is longer than {MAX_NAME_BYTES} bytes")
    if len(parts) > MAX_DEPTH:
        raise _refuse(path, f"it is {len(parts)} levels deep; the limit is {MAX_DEPTH}")
    joined = "/".join(parts)
    if len(joined.encode("utf-8", "surrogateescape")) > MAX_PATH_BYTES:
        raise _refuse(path, f"it is longer than {MAX_PATH_BYTES} bytes")
    return joined


def proxies(real_uri: str) -> bool:
    """Whether a collector serves this artifact location through its proxy (a local
    directory or ``s3://``)."""
    # The scheme is the text before the first colon; cached, since a page of runs shares
    # a handful of them.
    return _scheme_proxied(real_uri[: real_uri.find(":") + 1])


@lru_cache(maxsize=256)
def _scheme_proxied(head: str) -> bool:
    scheme = head[:-1].lower()
    return scheme in ("", "file", "s3") or len(scheme) == 1  # one letter: a Windows drive


def proxied_artifact_uri(experiment_id: str, run_id: str, real_uri: str) -> str:
    """A run's artifact URI as every HTTP client sees it: the collector's proxy
    (``mlflow-artifacts:/<experiment_id>/<run_id>/artifacts``) when it serves the
    location, which is then meaningful on any machine, else the location itself."""
    if proxies(real_uri):
        return f"{PROXY_SCHEME}:/{experiment_id}/{run_id}/artifacts"
    return real_uri

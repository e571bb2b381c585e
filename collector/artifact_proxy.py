"""MLflow's artifact proxy and its UI artifact routes, served from the collector's artifact root.

MLflow's server with ``--serve-artifacts`` serves its whole *artifacts destination*
under ``/api/2.0/mlflow-artifacts/artifacts/<path>`` (and ``/ajax-api/...``):

    PUT    .../artifacts/<path>          upload one file (streamed)
    GET    .../artifacts/<path>          download one file, as an attachment
    DELETE .../artifacts/<path>          delete a file or a directory tree
    GET    .../artifacts?path=<dir>      a directory's children, by base name

Here the destination is the collector's artifact root (``--artifact-root``), so clients
can use experiments whose location is ``mlflow-artifacts:/<prefix>`` and log artifacts
that belong to no run. One exception keeps every run's files where the store says they
are: a path ``<experiment_id>/<run_id>/artifacts/<rel>`` of a run of that experiment maps
to the run's real artifact location (a directory elsewhere, or ``s3://``), since runs
always report ``mlflow-artifacts:/<experiment_id>/<run_id>/artifacts`` (collector.rest).

Paths are made canonical and refused with MLflow's ``Invalid path`` before any I/O
(:func:`flightlog.core.artifact_paths.safe_relative_path`: no ``..`` above the root, no
absolute paths or drive letters, no NUL), and the local repository refuses symlinks out
of its root, so nothing outside the artifact root is read or written.

Downloads carry MLflow's Content-Type for the file's extension
(:mod:`flightlog.collector.content_types`), never one the client asks for (an ``Accept``
header, a ``content_type`` parameter, or the Content-Type it uploaded with), always as an
attachment with ``nosniff``: an uploaded ``.html`` or ``.svg`` cannot run as a page of
the collector's origin.

Also MLflow's UI routes ``GET /get-artifact?run_id=&path=`` and
``POST /ajax-api/2.0/mlflow/upload-artifact?run_uuid=&path=`` (a body of at most 10 MB).
"""

from __future__ import annotations

import posixpath
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from flightlog.collector.artifact_api import CHUNK, repository, send_file, store_body
from flightlog.collector.artifacts import ArtifactRepository
from flightlog.collector.content_types import download_headers
from flightlog.collector.request_args import json_args, run_id_arg, string_arg
from flightlog.collector.state import COLLECTOR, Collector
from flightlog.collector.store_api import Store
from flightlog.core.artifact_paths import PROXY_SCHEME, safe_relative_path
from flightlog.core.exceptions import (
    INVALID_PARAMETER_VALUE,
    RESOURCE_DOES_NOT_EXIST,
    MlflowException,
)

__all__ = ["ARTIFACTS_PREFIXES", "proxy_location", "real_location", "routes"]

ARTIFACTS_PREFIXES = (
    "/api/2.0/mlflow-artifacts/artifacts",
    "/ajax-api/2.0/mlflow-artifacts/artifacts",
)
#: MLflow's bound on one upload through ``upload-artifact`` (its UI's route).
MAX_UI_UPLOAD_BYTES = 10 * 1024 * 1024


# -- experiment locations -------------------------------------------------------------------


def real_location(artifact_root: str, location: str) -> str:
    """The location to store for an ``artifact_location`` a client sent.

    ``mlflow-artifacts:/<prefix>`` names ``<prefix>`` under the artifact root (the proxy's
    destination); any other location is returned as it is, for the caller's own checks.
    """
    scheme, sep, rest = location.partition(":")
    if not sep or scheme.lower() != PROXY_SCHEME:
        return location
    if rest.startswith("//"):
        # mlflow-artifacts://host:port/<prefix>: another server's proxy.
        raise MlflowException(
            f"Invalid artifact_location {location[:300]!r}: a {PROXY_SCHEME} URI names a "
            "path of this collector's artifact root, without a host (mlflow-artifacts:/<path>)",
            INVALID_PARAMETER_VALUE,
        )
    rel = safe_relative_path(rest.lstrip("/"), allow_root=True)
    return f"{artifact_root.rstrip('/')}/{rel}" if rel else artifact_root.rstrip("/")


def proxy_location(artifact_root: str, location: str) -> str:
    """An experiment's location as REST clients see it: ``mlflow-artifacts:/<rel>`` when
    it lies under the artifact root (the proxy serves it), else the location itself."""
    root = artifact_root.rstrip("/")
    if location == root:
        return f"{PROXY_SCHEME}:/"
    if location.startswith(root + "/"):
        return f"{PROXY_SCHEME}:/{location[len(root) + 1 :]}"
    return location


# -- the proxy ------------------------------------------------------------------------------


def _run_location(store: Store, experiment_id: str, run_id: str) -> str | None:
    """The real artifact URI of run ``run_id`` when it is a run of ``experiment_id``."""
    try:
        eid, uri = store.run_artifact_location(run_id)
    except MlflowException as e:
        if e.error_code == RESOURCE_DOES_NOT_EXIST:
            return None
        raise
    return uri if eid == experiment_id else None


async def _proxy_target(
    c: Collector, path: str, *, allow_root: bool
) -> tuple[ArtifactRepository, str]:
    """The repository and relative path a proxy path names.

    Any ``..`` segment is refused (as MLflow's proxy does), and the path is made
    canonical before it is split, so no spelling leads out of the root.
    """
    if ".." in path.replace("\\", "/").split("/"):
        # MLflow's proxy refuses any "..", even one that stays inside the tree.
        raise MlflowException(
            f"Invalid path {path[:200]!r}: '..' segments are not allowed", INVALID_PARAMETER_VALUE
        )
    canonical = safe_relative_path(path, allow_root=True)
    parts = canonical.split("/") if canonical else []
    if len(parts) >= 3 and parts[2] == "artifacts":
        uri = await c.read(_run_location, c.store, parts[0], parts[1])
        if uri is not None:
            rel = "/".join(parts[3:])
            if not rel and not allow_root:
                raise _names_a_directory(path)
            return repository(c, uri), rel
    if not canonical and not allow_root:
        raise _names_a_directory(path)
    return repository(c, c.config.artifact_root), canonical


def _names_a_directory(path: str) -> MlflowException:
    return MlflowException(
        f"Invalid path {path[:200]!r}: it names a directory, not a file", INVALID_PARAMETER_VALUE
    )


def _json(body: dict[str, Any]) -> web.Response:
    return web.json_response(body)


def _file_json(path: str, is_dir: bool, size: int | None) -> dict[str, Any]:
    out: dict[str, Any] = {"path": path, "is_dir": is_dir}
    if size is not None:
        out["file_size"] = size
    return out


async def proxy_download(request: web.Request) -> web.StreamResponse:
    """GET mlflow-artifacts/artifacts/<path>: stream one file, as an attachment."""
    c = request.app[COLLECTOR]
    repo, rel = await _proxy_target(c, request.match_info["path"], allow_root=False)
    # The type is the extension's, whatever the client asked for or uploaded with.
    return await send_file(request, repo, rel, download_headers(rel))


async def proxy_upload(request: web.Request) -> web.Response:
    """PUT mlflow-artifacts/artifacts/<path>: store the body, streamed in bounded memory."""
    c = request.app[COLLECTOR]
    repo, rel = await _proxy_target(c, request.match_info["path"], allow_root=False)
    await store_body(request, repo, rel)
    return web.Response()  # MLflow's proxy answers an empty 200


async def proxy_delete(request: web.Request) -> web.Response:
    """DELETE mlflow-artifacts/artifacts/<path>: a file or a directory tree."""
    c = request.app[COLLECTOR]
    path = request.match_info["path"]
    if not safe_relative_path(path, allow_root=True):
        # The whole destination: one request must not erase every run's files.
        raise MlflowException(
            "Invalid path: the proxy does not delete the root of the artifact store; "
            "delete the files or directories below it",
            INVALID_PARAMETER_VALUE,
        )
    # A run's whole artifact root may go (MLflow's client deletes it that way).
    repo, rel = await _proxy_target(c, path, allow_root=True)
    await repo.delete(rel or None)
    return _json({})


async def proxy_list(request: web.Request) -> web.Response:
    """GET mlflow-artifacts/artifacts?path=<dir>: the directory's children, by base name."""
    c = request.app[COLLECTOR]
    repo, rel = await _proxy_target(c, request.query.get("path", ""), allow_root=True)
    files = await repo.list(rel or None)
    out: dict[str, Any] = {}
    if files:
        out["files"] = [
            _file_json(posixpath.basename(f.path), f.is_dir, f.file_size) for f in files
        ]
    return _json(out)


# -- MLflow's UI routes ---------------------------------------------------------------------


async def get_artifact(request: web.Request) -> web.StreamResponse:
    """GET /get-artifact?run_id=&path=: one file of a run's artifacts (MLflow's UI route)."""
    c = request.app[COLLECTOR]
    a = await json_args(request)
    if "run_id" not in a and "run_uuid" in a:  # MLflow's UI sends either
        a["run_id"] = a["run_uuid"]
    run_id = run_id_arg(a)
    rel = safe_relative_path(string_arg(a, "path", required=True))
    _eid, real_uri = await c.read(c.store.run_artifact_location, run_id)
    return await send_file(request, repository(c, real_uri), rel, download_headers(rel))


def _ui_refusal(message: str) -> MlflowException:
    return MlflowException(message, INVALID_PARAMETER_VALUE)


async def upload_artifact(request: web.Request) -> web.Response:
    """POST /ajax-api/2.0/mlflow/upload-artifact?run_uuid=&path=: the body as one file of
    the run's artifacts (MLflow's UI route), at most 10 MB; answers an empty body."""
    c = request.app[COLLECTOR]
    run_id = request.query.get("run_uuid")
    if not run_id:
        raise _ui_refusal("Request must specify run_uuid.")
    path = request.query.get("path")
    if not path:
        raise _ui_refusal("Request must specify path.")
    rel = safe_relative_path(path)
    too_large = "Artifact size is too large. Max size is 10MB."
    if request.content_length is not None and request.content_length > MAX_UI_UPLOAD_BYTES:
        raise _ui_refusal(too_large)
    data = bytearray()
    async for chunk in request.content.iter_chunked(CHUNK):
        data += chunk
        if len(data) > MAX_UI_UPLOAD_BYTES:
            raise _ui_refusal(too_large)
    if not data:
        raise _ui_refusal("Request must specify data.")
    _eid, real_uri = await c.read(c.store.run_artifact_location, run_id)

    async def body() -> AsyncIterator[bytes]:
        yield bytes(data)

    await repository(c, real_uri).put(rel, body(), expected_size=len(data))
    return web.Response(content_type="application/json")


def ui_routes() -> list[web.RouteDef]:
    """MLflow's UI route under ``/ajax-api/2.0/mlflow`` (added before the API's catch-all)."""
    return [web.post("/ajax-api/2.0/mlflow/upload-artifact", upload_artifact)]


def routes() -> list[web.RouteDef]:
    """The artifact proxy under both prefixes, and ``/get-artifact``."""
    out: list[web.RouteDef] = []
    for prefix in ARTIFACTS_PREFIXES:
        out += [
            web.get(prefix, proxy_list),
            web.get(prefix + "/{path:.+}", proxy_download),
            web.put(prefix + "/{path:.+}", proxy_upload),
            web.delete(prefix + "/{path:.+}", proxy_delete),
        ]
    out.append(web.get("/get-artifact", get_artifact))
    return out

"""Artifact transfers through the collector: the SDK's endpoints, and the streaming both
they and MLflow's artifact proxy (collector.rest) use.

    PUT    /api/flightlog/artifacts/{run_id}/{path}   upload one file (streamed)
    GET    /api/flightlog/artifacts/{run_id}/{path}   download one file (streamed)
    GET    /api/flightlog/artifact-list/{run_id}?path=dir   direct children of a directory
    DELETE /api/flightlog/artifacts/{run_id}/{path}   delete a file or directory

Bytes flow through the collector so that training processes need no object-store
credentials; the repository for a run comes from its ``artifact_uri`` in the store.
Uploads and downloads stream in bounded memory (the request body is read in 1 MiB
chunks and handed to the repository, which writes atomically).
"""

from __future__ import annotations

from aiohttp import web

from flightlog.collector.artifact_policy import check_artifact_uri
from flightlog.collector.artifacts import ArtifactRepository, repository_for
from flightlog.collector.bodies import body_chunks, decoded_size
from flightlog.collector.state import COLLECTOR, MSGPACK, Collector
from flightlog.core.artifact_paths import safe_relative_path
from flightlog.core.validation import validate_run_id
from flightlog.core.wire import pack

CHUNK = 1 << 20


def repository(c: Collector, artifact_uri: str) -> ArtifactRepository:
    """The repository at an artifact URI, with the collector's S3 endpoint.

    :raises MlflowException: the URI is a directory outside the allowed roots.
    """
    check_artifact_uri(c.config, artifact_uri)
    return repository_for(artifact_uri, s3_endpoint=c.config.s3_endpoint_url)


async def run_repository(c: Collector, run_id: str) -> ArtifactRepository:
    """The artifact repository rooted at a run's artifact URI."""
    validate_run_id(run_id)
    _eid, uri = await c.read(c.store.run_artifact_location, run_id)
    return repository(c, uri)


async def store_body(request: web.Request, repo: ArtifactRepository, rel: str) -> int:
    """Stream the request body into ``rel``; return its size.

    A body that ends before its Content-Length is refused before anything becomes visible.
    """

    # The size to check against is the decoded one: a gzip body's Content-Length is
    # its compressed size, and a truncated gzip stream is refused by body_chunks.
    return await repo.put(rel, body_chunks(request), expected_size=decoded_size(request))


async def send_file(
    request: web.Request,
    repo: ArtifactRepository,
    rel: str,
    headers: dict[str, str] | None = None,
) -> web.StreamResponse:
    """Stream the file ``rel`` as the response body (octet-stream unless ``headers`` say)."""
    reader = await repo.open_read(rel, chunk_size=CHUNK)
    response = web.StreamResponse(
        headers={
            "Content-Type": "application/octet-stream",
            **(headers or {}),
            "Content-Length": str(reader.size),
        }
    )
    async with reader:
        await response.prepare(request)
        async for chunk in reader:
            await response.write(chunk)
    await response.write_eof()
    return response


async def upload(request: web.Request) -> web.Response:
    """Store the request body as one artifact file."""
    c = request.app[COLLECTOR]
    rel = safe_relative_path(request.match_info["path"])
    repo = await run_repository(c, request.match_info["run_id"])
    size = await store_body(request, repo, rel)
    return web.Response(body=pack({"path": rel, "file_size": size}), content_type=MSGPACK)


async def download(request: web.Request) -> web.StreamResponse:
    """Stream one artifact file."""
    c = request.app[COLLECTOR]
    rel = safe_relative_path(request.match_info["path"])
    repo = await run_repository(c, request.match_info["run_id"])
    return await send_file(request, repo, rel)


async def list_dir(request: web.Request) -> web.Response:
    """Direct children of a directory of a run's artifacts."""
    c = request.app[COLLECTOR]
    rel = safe_relative_path(request.query.get("path", ""), allow_root=True)
    repo = await run_repository(c, request.match_info["run_id"])
    files = await repo.list(rel or None)
    return web.Response(
        body=pack([[f.path, f.is_dir, f.file_size] for f in files]), content_type=MSGPACK
    )


async def delete(request: web.Request) -> web.Response:
    """Delete a file or directory of a run's artifacts."""
    c = request.app[COLLECTOR]
    rel = safe_relative_path(request.match_info["path"])
    repo = await run_repository(c, request.match_info["run_id"])
    await repo.delete(rel)
    return web.Response(body=pack(None), content_type=MSGPACK)


def routes() -> list[web.RouteDef]:
    """The SDK's artifact endpoints."""
    return [
        web.put("/api/flightlog/artifacts/{run_id}/{path:.+}", upload),
        web.get("/api/flightlog/artifacts/{run_id}/{path:.+}", download),
        web.delete("/api/flightlog/artifacts/{run_id}/{path:.+}", delete),
        web.get("/api/flightlog/artifact-list/{run_id}", list_dir),
    ]

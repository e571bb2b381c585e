"""The collector's own artifact endpoints, used by the flightlog SDK and CLI.

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

from collections.abc import AsyncIterator

from aiohttp import web

from flightlog.collector.app import COLLECTOR, MSGPACK, Collector, extension
from flightlog.collector.artifacts import ArtifactRepository, repository_for
from flightlog.core.artifact_paths import safe_relative_path
from flightlog.core.validation import validate_run_id
from flightlog.core.wire import pack

CHUNK = 1 << 20


async def run_repository(c: Collector, run_id: str) -> ArtifactRepository:
    """The artifact repository rooted at a run's artifact URI."""
    validate_run_id(run_id)
    uri = await c.read(c.store.run_experiment_artifact_uri, run_id)
    return repository_for(uri, s3_endpoint=c.config.extra.get("s3_endpoint_url"))


async def _body_chunks(request: web.Request) -> AsyncIterator[bytes]:
    async for chunk in request.content.iter_chunked(CHUNK):
        yield chunk


async def upload(request: web.Request) -> web.Response:
    """Store the request body as one artifact file."""
    c = request.app[COLLECTOR]
    rel = safe_relative_path(request.match_info["path"])
    repo = await run_repository(c, request.match_info["run_id"])
    # expected_size: a body that ends early is refused before anything becomes visible.
    size = await repo.put(rel, _body_chunks(request), expected_size=request.content_length)
    return web.Response(body=pack({"path": rel, "file_size": size}), content_type=MSGPACK)


async def download(request: web.Request) -> web.StreamResponse:
    """Stream one artifact file."""
    c = request.app[COLLECTOR]
    rel = safe_relative_path(request.match_info["path"])
    repo = await run_repository(c, request.match_info["run_id"])
    reader = await repo.open_read(rel)
    response = web.StreamResponse(
        headers={"Content-Type": "application/octet-stream", "Content-Length": str(reader.size)}
    )
    async with reader:
        await response.prepare(request)
        async for chunk in reader:
            await response.write(chunk)
    await response.write_eof()
    return response


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


@extension
def add_routes(app: web.Application) -> None:
    """Register the artifact endpoints."""
    app.router.add_put("/api/flightlog/artifacts/{run_id}/{path:.+}", upload)
    app.router.add_get("/api/flightlog/artifacts/{run_id}/{path:.+}", download)
    app.router.add_delete("/api/flightlog/artifacts/{run_id}/{path:.+}", delete)
    app.router.add_get("/api/flightlog/artifact-list/{run_id}", list_dir)

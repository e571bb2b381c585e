"""The web UI's page and static files, served by every collector.

    GET /            the single page (index.html); MLflow's links
                     ``/#/experiments/<id>`` and ``/#/experiments/<id>/runs/<run_id>``
                     are routed by the page itself (the part after ``#`` never
                     reaches the server)
    GET /ui/{path}   the page's ES modules, CSS and vendored uPlot
    GET /ui/v/{version}/{path}
                     the same files under the UI's version (a digest of every file):
                     the page links only these, so they are cached for a year
                     ("immutable", no revalidation on reload) and an upgraded collector
                     is a new version, never a stale mix of modules. The page itself is
                     "no-cache" with an ETag, so a reload costs one 304.

These hold no data, so they are served without the token: in token mode the page asks
for the token once, keeps it in the tab's sessionStorage and sends it as
``Authorization: Bearer`` with every JSON call (collector/ui_api.py), which the token
check guards like every other endpoint. Every response carries a strict
Content-Security-Policy: scripts only from this origin, no inline script, no plugins,
no framing.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path, PurePosixPath

from aiohttp import web

from flightlog.core.artifact_paths import safe_relative_path
from flightlog.core.exceptions import RESOURCE_DOES_NOT_EXIST, MlflowException

STATIC_DIR = Path(__file__).parent / "static" / "ui"
PUBLIC_PREFIX = "/ui/"

#: The page's policy: everything from this origin; images also from blob: URLs (artifact
#: previews are fetched with the token and shown as blobs); inline styles are allowed
#: because uPlot positions its cursor and legend with style attributes.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' blob: data:; connect-src 'self'; object-src 'none'; "
    "frame-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)

_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".txt": "text/plain",
    ".png": "image/png",
    ".svg": "image/svg+xml",
}


def security_headers() -> dict[str, str]:
    """Headers every UI response carries."""
    return {
        "Content-Security-Policy": CONTENT_SECURITY_POLICY,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
    }


def is_public_path(path: str) -> bool:
    """Paths served without the token: the page and its code, which hold no data."""
    return path == "/" or path.startswith(PUBLIC_PREFIX)


VERSIONED_PREFIX = PUBLIC_PREFIX + "v/"
#: Versioned files are the same bytes for as long as the version exists.
IMMUTABLE = "public, max-age=31536000, immutable"


@lru_cache(maxsize=1)
def ui_version() -> str:
    """A digest of every file of the UI (names and bytes), computed once per process."""
    digest = hashlib.sha256()
    for path in sorted(p for p in STATIC_DIR.rglob("*") if p.is_file()):
        digest.update(path.relative_to(STATIC_DIR).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


@lru_cache(maxsize=1)
def _index_page() -> bytes:
    """index.html with its links pointing at this version's immutable files."""
    html = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    return html.replace(f'"{PUBLIC_PREFIX}', f'"{VERSIONED_PREFIX}{ui_version()}/').encode()


@lru_cache(maxsize=256)
def _static(rel: str) -> tuple[bytes, str] | None:
    """A UI file's bytes and ETag, read once: the whole UI is ~250 KB, and answering from
    memory skips FileResponse's stat, open and sendfile hops through the thread pool,
    which a cold page load pays for each of its ~15 files."""
    path = STATIC_DIR / rel
    if not path.is_file():
        return None
    body = path.read_bytes()
    return body, '"' + hashlib.sha256(body).hexdigest()[:16] + '"'


def _file_response(request: web.Request, rel: str, cache_control: str = "no-cache") -> web.Response:
    found = _static(rel)
    if found is None:
        raise MlflowException(f"No UI file {rel!r}", RESOURCE_DOES_NOT_EXIST)
    body, etag = found
    headers = security_headers()
    # Unversioned paths revalidate ("no-cache", by ETag) so an upgraded collector never
    # serves a stale mix of modules; versioned ones never change.
    headers["Cache-Control"] = cache_control
    headers["ETag"] = etag
    if etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)
    headers["Content-Type"] = _TYPES.get(PurePosixPath(rel).suffix, "application/octet-stream")
    return web.Response(body=body, headers=headers)


async def index(request: web.Request) -> web.Response:
    """The single page (a 304 when the browser holds this version)."""
    etag = f'"{ui_version()}"'
    headers = security_headers()
    headers["Cache-Control"] = "no-cache"
    headers["ETag"] = etag
    if etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)
    headers["Content-Type"] = "text/html; charset=utf-8"
    return web.Response(body=_index_page(), headers=headers)


async def static_file(request: web.Request) -> web.Response:
    """One of the page's files."""
    return _file_response(request, safe_relative_path(request.match_info["path"]))


async def versioned_file(request: web.Request) -> web.Response:
    """One of the page's files under a version: cached for good when it is this one."""
    rel = safe_relative_path(request.match_info["path"])
    if request.match_info["version"] != ui_version():
        # A page of another version (the collector was upgraded under an open tab): the
        # current file, revalidated, rather than a 404 that breaks the page.
        return _file_response(request, rel)
    return _file_response(request, rel, IMMUTABLE)


def routes() -> list[web.RouteDef]:
    """The web UI's page and files (its JSON endpoints: collector.ui_api)."""
    return [
        web.get("/", index),
        web.get(VERSIONED_PREFIX + "{version}/{path:.+}", versioned_file),
        web.get(PUBLIC_PREFIX + "{path:.+}", static_file),
    ]

"""The web UI's page and static files, served by every collector.

    GET /            the single page (index.html); MLflow's links
                     ``/#/experiments/<id>`` and ``/#/experiments/<id>/runs/<run_id>``
                     are routed by the page itself (the part after ``#`` never
                     reaches the server)
    GET /ui/{path}   the page's ES modules, CSS and vendored uPlot

These hold no data, so they are served without the token: in token mode the page asks
for the token once, keeps it in the tab's sessionStorage and sends it as
``Authorization: Bearer`` with every JSON call (collector/ui_api.py), which the token
check guards like every other endpoint. Every response carries a strict
Content-Security-Policy: scripts only from this origin, no inline script, no plugins,
no framing.
"""

from __future__ import annotations

from pathlib import Path

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


def _file_response(rel: str) -> web.FileResponse:
    path = STATIC_DIR / rel
    if not path.is_file():
        raise MlflowException(f"No UI file {rel!r}", RESOURCE_DOES_NOT_EXIST)
    headers = security_headers()
    headers["Content-Type"] = _TYPES.get(path.suffix, "application/octet-stream")
    # The page is small; "no-cache" revalidates by Last-Modified so an upgraded collector
    # never serves a stale mix of modules.
    headers["Cache-Control"] = "no-cache"
    return web.FileResponse(path, headers=headers)


async def index(request: web.Request) -> web.FileResponse:
    """The single page."""
    return _file_response("index.html")


async def static_file(request: web.Request) -> web.FileResponse:
    """One of the page's files."""
    return _file_response(safe_relative_path(request.match_info["path"]))


def routes() -> list[web.RouteDef]:
    """The web UI's page and files (its JSON endpoints: collector.ui_api)."""
    return [web.get("/", index), web.get(PUBLIC_PREFIX + "{path:.+}", static_file)]

"""How the UI's page and files are cached, on a real collector process: the page links
its files under the UI's version, which are cached for good; the page revalidates by
ETag; every JS module the page loads is preloaded from the page (no import waterfall)."""

from __future__ import annotations

import os
import re
import urllib.error
import urllib.request
from email.message import Message

from flightlog.collector.ui import STATIC_DIR, ui_version
from tests.conftest import CollectorProcess


def get(url: str, **headers: str) -> tuple[int, Message, bytes]:
    """(status, headers (case-insensitive), body) whatever the status."""
    req = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def test_versioned_files_are_immutable_and_the_page_revalidates(
    collector: CollectorProcess,
) -> None:
    version = ui_version()
    status, headers, page = get(collector.url + "/")
    assert status == 200 and headers["Cache-Control"] == "no-cache"
    assert headers["ETag"] == f'"{version}"'
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    links = re.findall(rb'(?:href|src)="(/ui/[^"]+)"', page)
    assert links and all(link.startswith(f"/ui/v/{version}/".encode()) for link in links)
    status, headers, _ = get(collector.url + "/", **{"If-None-Match": f'"{version}"'})
    assert status == 304
    for link in links:
        status, headers, body = get(collector.url + link.decode())
        assert status == 200, link
        assert headers["Cache-Control"] == "public, max-age=31536000, immutable"
        assert body == (STATIC_DIR / link.decode().split("/", 4)[4]).read_bytes()
        assert headers["X-Content-Type-Options"] == "nosniff"
    # Another version (a tab opened before an upgrade) still gets the file, revalidated;
    # a path out of the directory is refused under a version too.
    status, headers, _ = get(collector.url + "/ui/v/0123456789abcdef/js/main.js")
    assert status == 200 and headers["Cache-Control"] == "no-cache"
    status, _, _ = get(collector.url + f"/ui/v/{version}/%2e%2e/%2e%2e/ui.py")
    assert status in (400, 404)
    # Unversioned paths still work and revalidate with the file's ETag.
    status, headers, _ = get(collector.url + "/ui/js/main.js")
    assert status == 200 and headers["Cache-Control"] == "no-cache" and headers["ETag"]
    status, _, _ = get(collector.url + "/ui/js/main.js", **{"If-None-Match": headers["ETag"]})
    assert status == 304


def test_every_module_is_preloaded_by_the_page() -> None:
    """Each module the page imports is named in index.html, so the browser fetches them
    all at once instead of discovering imports level by level."""
    html = (STATIC_DIR / "index.html").read_text()
    named = set(re.findall(r'"/ui/(js/[^"]+\.js|vendor/[^"]+\.js)"', html))
    imported = set()
    for module in (STATIC_DIR / "js").glob("*.js"):
        for spec in re.findall(r'^import .* from "([^"]+)";', module.read_text(), re.M):
            resolved = os.path.normpath(os.path.join("js", spec))
            imported.add(resolved.replace(os.sep, "/"))
    assert imported and imported <= named, imported - named

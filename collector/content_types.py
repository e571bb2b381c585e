"""The Content-Type and Content-Disposition of a downloaded artifact, by MLflow's rules.

MLflow's server (``mlflow/utils/mime_type_utils.py``) sends text files it knows by
extension (and ``MLmodel``, ``MLproject``) as ``text/plain``, anything else by Python's
``mimetypes`` table, and ``application/octet-stream`` when that does not know it; always as
an attachment with ``X-Content-Type-Options: nosniff``, so no artifact renders as a page of
the server's origin.
"""

from __future__ import annotations

import mimetypes
import posixpath
import unicodedata
import urllib.parse

TEXT_EXTENSIONS = frozenset(
    (
        "txt log err cfg conf cnf cf ini properties prop hocon toml yaml yml xml json js py py3"
        " csv tsv md rst ipynb MLmodel MLproject"
    ).split()
)
# RFC 7230 token characters: a filename made only of them needs no quotes.
_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def content_type(path: str) -> str:
    """The Content-Type MLflow's server sends for an artifact at ``path``."""
    name = posixpath.basename(path)
    extension = posixpath.splitext(name)[1].replace(".", "") or name
    if extension in TEXT_EXTENSIONS:
        return "text/plain"
    guessed, _ = mimetypes.guess_type(name)
    return guessed or "application/octet-stream"


def _quote(value: str) -> str:
    if value and all(ch in _TOKEN for ch in value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def attachment(path: str) -> str:
    """``Content-Disposition: attachment`` for the file's name (RFC 6266, as MLflow)."""
    name = posixpath.basename(path)
    try:
        name.encode("ascii")
    except UnicodeEncodeError:
        fallback = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
        quoted = urllib.parse.quote(name, safe="!#$&+-.^_`|~")
        return f"attachment; filename={_quote(fallback or 'download')}; filename*=UTF-8''{quoted}"
    return f"attachment; filename={_quote(name)}"


def download_headers(path: str) -> dict[str, str]:
    """The headers of an artifact download: its type, as an attachment, never sniffed."""
    return {
        "Content-Type": content_type(path),
        "Content-Disposition": attachment(path),
        "X-Content-Type-Options": "nosniff",
    }

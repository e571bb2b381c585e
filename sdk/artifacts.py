"""Artifact uploads and downloads through the collector.

The training process never talks to the artifact store itself: files stream over HTTP
to the collector, which writes them into the run's artifact location (a directory or
``s3://``). Uploads are synchronous, as in MLflow: ``log_artifact`` returns once the
file is stored, so the caller may change or delete it afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from flightlog.agent.progress import progress_bar
from flightlog.agent.transport import CollectorClient, decode_reply
from flightlog.core.artifact_paths import safe_relative_path
from flightlog.core.entities import FileInfo
from flightlog.core.exceptions import INVALID_PARAMETER_VALUE, CollectorUnavailable, MlflowException


def _quote(path: str) -> str:
    return urllib.parse.quote(path, safe="/")


def join_artifact_path(artifact_path: str | None, name: str) -> str:
    """``artifact_path/name``, checked to stay inside the run's artifact root."""
    rel = name if not artifact_path else f"{artifact_path.rstrip('/')}/{name}"
    return safe_relative_path(rel)


def upload_file(client: CollectorClient, run_id: str, local: Path, rel: str) -> int:
    """Stream one local file to ``rel`` under the run's artifact root; return its size."""
    rel = safe_relative_path(rel)
    size = local.stat().st_size
    with open(local, "rb") as f:
        try:
            status, _, data = client.request(
                "PUT",
                f"/api/flightlog/artifacts/{run_id}/{_quote(rel)}",
                body=f,
                content_type="application/octet-stream",
                headers={"Content-Length": str(size)},
                timeout=max(60.0, size / 20e6),
            )
        except CollectorUnavailable as e:
            raise MlflowException(f"Could not upload {local}: {e}") from e
    decode_reply(status, data)
    return size


def files_to_upload(local_dir: Path) -> list[tuple[Path, str]]:
    """Every file under ``local_dir`` with its path relative to it.

    Symlinks are followed only while they stay inside ``local_dir``; one that points
    out of it is refused, naming the link, so a logged directory cannot leak files
    from elsewhere on the machine. A directory link that stays inside is not walked
    again: its files are logged once, under their real path (and a link to an
    ancestor cannot loop).
    """
    root = local_dir.resolve()

    def check(link: Path) -> None:
        target = link.resolve()
        if not target.is_relative_to(root):
            raise MlflowException(
                f"Refusing to log {link}: it is a symlink to {target}, outside {local_dir}",
                INVALID_PARAMETER_VALUE,
            )

    out: list[tuple[Path, str]] = []
    for dirpath, dirnames, filenames in os.walk(local_dir, followlinks=False):
        here = Path(dirpath)
        for name in dirnames:
            if (here / name).is_symlink():
                check(here / name)
        for name in filenames:
            path = here / name
            if path.is_symlink():
                check(path)
            out.append((path, path.relative_to(local_dir).as_posix()))
    return out


def list_artifacts(client: CollectorClient, run_id: str, path: str | None) -> list[FileInfo]:
    """Direct children of ``path`` (the root when None) in a run's artifacts."""
    rel = safe_relative_path(path or "", allow_root=True)
    query = urllib.parse.urlencode({"path": rel})
    try:
        status, _, data = client.request("GET", f"/api/flightlog/artifact-list/{run_id}?{query}")
    except CollectorUnavailable as e:
        raise MlflowException(str(e)) from e
    return [FileInfo(p, bool(d), s) for p, d, s in decode_reply(status, data)]


Progress = Callable[[str, int, int], None]  # (path, bytes done, bytes total)


def download_file(
    client: CollectorClient, run_id: str, rel: str, dest: Path, progress: Progress | None = None
) -> None:
    """Stream one artifact to ``dest`` (written to a temporary name, then renamed)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    done = 0
    total = -1  # until the answer's Content-Length is known
    try:
        with os.fdopen(fd, "wb") as out:

            def headers_seen(headers: dict[str, str]) -> None:
                nonlocal total
                total = int(headers.get("content-length") or -1)

            def sink(block: bytes) -> None:
                nonlocal done
                out.write(block)
                done += len(block)
                if progress is not None:
                    progress(rel, done, max(total, done))

            status, headers, data = client.request(
                "GET",
                f"/api/flightlog/artifacts/{run_id}/{_quote(rel)}",
                sink=sink,
                on_headers=headers_seen,
                timeout=300.0,
            )
            decode_reply(status, data)
            if total < 0:
                total = int(headers.get("content-length") or done)
        if done != total:
            raise MlflowException(f"Download of {rel!r} ended after {done} of {total} bytes")
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def download(
    client: CollectorClient,
    run_id: str,
    path: str,
    dst_path: str | None,
    progress: Progress | None = None,
) -> str:
    """Download a file or a directory tree of a run's artifacts; return the local path."""
    rel = safe_relative_path(path or "", allow_root=True)
    base = Path(dst_path) if dst_path else Path(tempfile.mkdtemp(prefix="flightlog-artifacts-"))
    # Is it a directory? Listing a file's path answers with nothing or an error.
    parent = rel.rsplit("/", 1)[0] if "/" in rel else ""
    siblings = {f.path: f for f in list_artifacts(client, run_id, parent)} if rel else {}
    entry = siblings.get(rel)
    if rel and entry is None:
        raise MlflowException(f"No artifact {rel!r} in run {run_id}", "RESOURCE_DOES_NOT_EXIST")
    if entry is not None and not entry.is_dir:
        dest = base / rel
        download_file(client, run_id, rel, dest, progress)
        return str(dest)
    stack = [rel]
    while stack:
        d = stack.pop()
        for f in list_artifacts(client, run_id, d or None):
            if f.is_dir:
                stack.append(f.path)
            else:
                download_file(client, run_id, f.path, base / f.path, progress)
    (base / rel).mkdir(parents=True, exist_ok=True)
    return str(base / rel) if rel else str(base)


class ProgressBar:
    """Download progress, one bar per file (``flightlog.agent.progress``: tqdm on stderr,
    drawn only when it is a terminal). A :data:`Progress` callback."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream
        self.path: str | None = None
        self.bar: Any = None

    def __call__(self, path: str, done: int, total: int) -> None:
        if self.bar is None or path != self.path:
            self.close()
            self.path = path
            self.bar = progress_bar(total, path[-40:], file=self.stream)
        self.bar.update(done - self.bar.n)
        if done >= total:
            self.close()

    def close(self) -> None:
        """End the current file's bar."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None


# -- mlflow.artifacts: the public functions, by run id or by artifact URI -----------------

# ".../<run_id>/artifacts[/<path>]": the layout of every run's artifact URI, whether the
# proxy's (mlflow-artifacts:/<exp>/<run>/artifacts), a directory's or an object store's.
_RUN_ARTIFACTS = re.compile(r"/([0-9a-f]{32})/artifacts(?:/(.*))?$")


def parse_artifact_uri(artifact_uri: str) -> tuple[str, str]:
    """``(run_id, path)`` named by an artifact URI: ``runs:/<run_id>/<path>``, a proxy
    URI (``mlflow-artifacts:/<exp>/<run_id>/artifacts/<path>``) or a run's location."""
    if artifact_uri.startswith("runs:/"):
        run_id, _, path = artifact_uri[len("runs:/") :].partition("/")
        if run_id:
            return run_id, path.strip("/")
    else:
        m = _RUN_ARTIFACTS.search(urllib.parse.urlsplit(artifact_uri).path.rstrip("/"))
        if m:
            return m.group(1), (m.group(2) or "").strip("/")
    raise MlflowException(
        f"Cannot tell which run's artifacts {artifact_uri!r} names: expected "
        "runs:/<run_id>/<path>, mlflow-artifacts:/<experiment_id>/<run_id>/artifacts/<path> "
        "or a run's artifact URI",
        INVALID_PARAMETER_VALUE,
    )


def download_artifacts(
    artifact_uri: str | None = None,
    run_id: str | None = None,
    artifact_path: str | None = None,
    dst_path: str | None = None,
    tracking_uri: str | None = None,
) -> str:
    """Download an artifact file or directory and return its local path.

    As ``mlflow.artifacts.download_artifacts``: either ``artifact_uri`` (any URI a run
    reports, ``runs:/``, or ``mlflow-artifacts:/``) or ``run_id`` with ``artifact_path``.
    The bytes come through the collector of ``tracking_uri`` (default: the one in force).
    """
    if (artifact_uri is None) == (run_id is None):
        raise MlflowException(
            "Give either artifact_uri, or run_id (with artifact_path), not both",
            INVALID_PARAMETER_VALUE,
        )
    if artifact_uri is not None:
        if artifact_path is not None:
            raise MlflowException(
                "artifact_path goes with run_id, not artifact_uri", INVALID_PARAMETER_VALUE
            )
        run_id, artifact_path = parse_artifact_uri(artifact_uri)
    from flightlog.client import MlflowClient

    assert run_id is not None
    return MlflowClient(tracking_uri).download_artifacts(run_id, artifact_path or "", dst_path)


def load_text(artifact_uri: str) -> str:
    """The text of an artifact file, as ``mlflow.artifacts.load_text``."""
    with tempfile.TemporaryDirectory() as tmp:
        return Path(download_artifacts(artifact_uri, dst_path=tmp)).read_text()


def load_dict(artifact_uri: str) -> Any:
    """A JSON or YAML artifact file as a dict, as ``mlflow.artifacts.load_dict``."""
    text = load_text(artifact_uri)
    if artifact_uri.endswith((".yaml", ".yml")):
        import yaml  # the yaml extra

        return yaml.safe_load(text)
    return json.loads(text)

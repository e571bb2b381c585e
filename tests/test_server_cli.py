"""``flightlog server``: the collector under ``mlflow server``'s flag names.

The real ``flightlog`` console script is started the way an MLflow user would start
``mlflow server``, with an S3 (SeaweedFS) artifact root and a token, and the official
MLflow client talks to it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import free_port
from s3server import TEST_BUCKET, S3Server, s3_server  # noqa: F401  (s3_server: a fixture)

from flightlog.cli import build_parser
from tests.mlflow_server import quiet_mlflow

quiet_mlflow()

import mlflow  # noqa: E402
from mlflow import MlflowClient  # noqa: E402

TOKEN = "team-token"


def flightlog_script() -> str:
    """The installed ``flightlog`` console script beside this interpreter."""
    return str(Path(sys.executable).with_name("flightlog"))


def wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"server did not answer /health: {log.read_text()}")
        time.sleep(0.05)


@pytest.fixture
def server(
    tmp_path: Path,
    s3_server: S3Server,  # noqa: F811
) -> Iterator[tuple[str, Path]]:
    port = free_port()
    db = tmp_path / "team" / "tracking.db"
    db.parent.mkdir()
    log = tmp_path / "server.log"
    proc = subprocess.Popen(
        [
            flightlog_script(),
            "server",
            "--backend-store-uri",
            f"sqlite:///{db}",
            "--default-artifact-root",
            f"s3://{TEST_BUCKET}/team-root",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--token",
            TOKEN,
        ],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env={**os.environ, **s3_server.environ()},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, log)
        yield url, db
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_mlflow_server_flags_with_s3_artifact_root_and_token(
    server: tuple[str, Path],
    s3_server: S3Server,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, db = server
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", TOKEN)
    mlflow.set_tracking_uri(url)
    client = MlflowClient(url)
    exp_id = client.create_experiment("team-exp")
    # Served artifacts, as mlflow server does by default: clients see mlflow-artifacts:/.
    assert client.get_experiment(exp_id).artifact_location == f"mlflow-artifacts:/{exp_id}"
    (tmp_path / "weights.bin").write_bytes(os.urandom(1 << 20))
    with mlflow.start_run(experiment_id=exp_id) as run:
        mlflow.log_param("lr", "0.1")
        mlflow.log_metric("loss", 0.5, step=1)
        mlflow.log_artifact(str(tmp_path / "weights.bin"))
    # --default-artifact-root: the bytes are objects under it, one prefix per experiment.
    key = f"team-root/{exp_id}/{run.info.run_id}/artifacts/weights.bin"
    assert s3_server.client.head_object(Bucket=TEST_BUCKET, Key=key)["ContentLength"] == 1 << 20
    got = client.get_run(run.info.run_id)
    assert got.data.params == {"lr": "0.1"} and got.data.metrics == {"loss": 0.5}
    # --backend-store-uri sqlite:///...: the database is that file.
    assert db.exists() and db.stat().st_size > 0
    # --token: every endpoint but /health needs it.
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"{url}/api/2.0/mlflow/experiments/get?experiment_id={exp_id}")
    assert e.value.code == 401


def test_server_flags_parse_like_mlflow_and_default_to_port_5000() -> None:
    args = build_parser().parse_args(
        ["server", "--backend-store-uri", "sqlite:///x.db", "--default-artifact-root", "s3://b/p"]
    )
    assert (args.store, args.artifacts, args.host, args.port) == (
        "sqlite:///x.db",
        "s3://b/p",
        "127.0.0.1",
        5000,
    )
    # The collector's own spellings are accepted too.
    args = build_parser().parse_args(["server", "--store", "d", "--artifacts", "a"])
    assert (args.store, args.artifacts) == ("d", "a")


def test_server_refuses_a_public_address_without_a_token(tmp_path: Path) -> None:
    out = subprocess.run(
        [flightlog_script(), "server", "--backend-store-uri", str(tmp_path), "--host", "0.0.0.0"],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "FLIGHTLOG_TOKEN"},
    )
    assert out.returncode != 0 and "--token" in out.stderr

"""Artifacts on an S3-compatible store (a real SeaweedFS server started by the suite),
through the collector, as the tutorial's ``artifact_location="s3://..."`` asks."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from s3server import TEST_BUCKET, S3Server, s3_server  # noqa: F401  (s3_server: a fixture)

import flightlog as mlflow
from flightlog import MlflowClient
from tests.conftest import start_collector


def test_tutorial_experiment_on_s3(s3_server: S3Server, tmp_path: Path) -> None:  # noqa: F811
    # Only the collector gets the endpoint and credentials; the training process has none.
    c = start_collector(tmp_path / "store", None, env=s3_server.environ())
    try:
        mlflow.set_tracking_uri(c.url)
        exp_id = mlflow.create_experiment(
            name="my-experiment",
            artifact_location=f"s3://{TEST_BUCKET}/experiments",
            tags={"project": "customer-churn", "team": "data-science"},
        )
        os.chdir(tmp_path)
        Path("config.yaml").write_text("lr: 0.01\n")
        blob = os.urandom((12 << 20) + 12345)  # more than one multipart part
        Path("model.pkl").write_bytes(blob)
        out = tmp_path / "outputs"
        (out / "sub").mkdir(parents=True)
        (out / "preds.csv").write_text("a,b\n1,2\n")
        (out / "sub" / "notes.txt").write_text("hello")
        with mlflow.start_run(experiment_id=exp_id) as run:
            mlflow.log_artifact("config.yaml")
            mlflow.log_artifact("model.pkl", artifact_path="model")
            mlflow.log_artifacts("./outputs", artifact_path="outputs")
            mlflow.log_dict({"accuracy": 0.95}, "results.json")
        info = mlflow.get_run(run.info.run_id).info
        # The collector serves the bucket: over HTTP the run reports its proxy URI.
        assert info.artifact_uri == f"mlflow-artifacts:/{exp_id}/{run.info.run_id}/artifacts"
        assert mlflow.get_experiment(exp_id).artifact_location == f"s3://{TEST_BUCKET}/experiments"
        client = MlflowClient()
        listed = {(f.path, f.is_dir, f.file_size) for f in client.list_artifacts(run.info.run_id)}
        assert listed == {
            ("config.yaml", False, 9),
            ("model", True, None),
            ("outputs", True, None),
            ("results.json", False, 22),
        }
        inner = {(f.path, f.is_dir) for f in client.list_artifacts(run.info.run_id, "outputs")}
        assert inner == {("outputs/preds.csv", False), ("outputs/sub", True)}
        # The bytes are objects in the bucket, under the run's prefix.
        key = f"experiments/{run.info.run_id}/artifacts/model/model.pkl"
        head = s3_server.client.head_object(Bucket=TEST_BUCKET, Key=key)
        assert head["ContentLength"] == len(blob)
        got = client.download_artifacts(run.info.run_id, "model/model.pkl", str(tmp_path / "d"))
        assert hashlib.sha256(Path(got).read_bytes()).digest() == hashlib.sha256(blob).digest()
        tree = client.download_artifacts(run.info.run_id, "outputs", str(tmp_path / "t"))
        assert Path(tree, "sub", "notes.txt").read_text() == "hello"
    finally:
        c.stop()


def test_proxy_tree_on_an_s3_artifact_root(s3_server: S3Server, tmp_path: Path) -> None:  # noqa: F811
    """With an s3:// artifact root, the proxy's whole tree is the bucket's prefix."""
    import requests

    c = start_collector(
        tmp_path / "store", None, "--artifacts", f"s3://{TEST_BUCKET}/tree", env=s3_server.environ()
    )
    try:
        proxy = f"{c.url}/api/2.0/mlflow-artifacts/artifacts"
        r = requests.put(f"{proxy}/loose/dir/a.csv", data=b"a,b\n", timeout=30)
        assert r.status_code == 200, r.text
        head = s3_server.client.head_object(Bucket=TEST_BUCKET, Key="tree/loose/dir/a.csv")
        assert head["ContentLength"] == 4
        r = requests.get(f"{proxy}/loose/dir/a.csv", timeout=30)
        assert r.content == b"a,b\n" and r.headers["Content-Type"].startswith("text/plain")
        r = requests.get(proxy, params={"path": "loose"}, timeout=30)
        assert r.json() == {"files": [{"path": "dir", "is_dir": True}]}
        assert requests.delete(f"{proxy}/loose/dir", timeout=30).status_code == 200
        assert requests.get(proxy, params={"path": "loose"}, timeout=30).json() == {}
    finally:
        c.stop()

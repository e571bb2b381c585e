"""The rough edges a newcomer hits first: version, ``python -m flightlog``, help with
defaults, a port in use, a spool that does not exist, unsupported tracking URIs, MLflow's
token variable, collectors left behind by the test suite, and the missing-NVML line."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import flightlog
from flightlog.collector.limits import DEFAULT_MAX_BODY_BYTES
from flightlog.core.version import __version__
from tests.conftest import CollectorProcess, start_collector
from tests.helpers import run_script


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flightlog", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=cwd,
    )


def test_version_python_m_and_help_with_defaults(tmp_path: Path) -> None:
    v = _cli("--version", cwd=tmp_path)
    assert v.returncode == 0 and v.stdout.strip() == f"flightlog {__version__}"
    collector_help = _cli("collector", "--help", cwd=tmp_path).stdout
    assert "5055" in collector_help and "127.0.0.1" in collector_help
    # Options whose text did not give their default now show it.
    assert f"(default: {DEFAULT_MAX_BODY_BYTES})" in " ".join(collector_help.split())
    sync_help = _cli("sync", "--help", cwd=tmp_path).stdout
    assert "(default 60)" in sync_help
    list_help = _cli("artifacts", "download", "--help", cwd=tmp_path).stdout
    assert "(default: .)" in list_help


def test_a_port_in_use_is_one_line(collector: CollectorProcess, tmp_path: Path) -> None:
    proc = _cli(
        "collector", "--store", str(tmp_path / "other"), "--port", str(collector.port), cwd=tmp_path
    )
    assert proc.returncode == 1
    lines = [x for x in proc.stderr.splitlines() if "flightlog collector:" in x or "Trace" in x]
    assert len(lines) == 1 and "already in use" in lines[0] and "--port" in lines[0]
    assert "Traceback" not in proc.stderr


def test_sync_of_a_spool_that_does_not_exist_fails(tmp_path: Path) -> None:
    proc = _cli("sync", "--spool", str(tmp_path / "no" / "such" / "dir"), cwd=tmp_path)
    assert proc.returncode == 2
    assert "no spool directory" in proc.stderr and "nothing to send" not in proc.stderr


@pytest.mark.parametrize(
    "uri", ["databricks", "databricks://profile", "postgresql://u@db/x", "mysql+pymysql://h/d"]
)
def test_unsupported_tracking_uris_are_refused_by_name(uri: str) -> None:
    flightlog.set_tracking_uri(uri)
    with pytest.raises(flightlog.MlflowException, match="Unsupported tracking URI") as e:
        flightlog.start_run()
    assert "sqlite:///" in e.value.message and "http(s)://host:port" in e.value.message
    assert list(Path.cwd().iterdir()) == []  # no directory named after the URI


def test_mlflow_tracking_token_is_sent_and_401_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = start_collector(tmp_path / "secure", None, "--token", "s3cret")
    try:
        monkeypatch.delenv("FLIGHTLOG_TOKEN", raising=False)
        monkeypatch.delenv("MLFLOW_TRACKING_TOKEN", raising=False)
        with pytest.raises(flightlog.MlflowException) as e:
            flightlog.MlflowClient(c.url).get_experiment("0")
        assert "MLFLOW_TRACKING_TOKEN" in e.value.message and "FLIGHTLOG_TOKEN" in e.value.message
        flightlog.context.reset_for_tests()
        monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "s3cret")
        assert flightlog.MlflowClient(c.url).get_experiment("0").name == "Default"
    finally:
        c.stop()


def test_the_suite_leaves_no_collector_running(tmp_path: Path) -> None:
    # An inner pytest session with this suite's conftest starts an embedded collector and
    # ends without stopping it; the session's cleanup must.
    inner = tmp_path / "inner"
    inner.mkdir()
    pid_file = tmp_path / "pid"
    (inner / "test_leak.py").write_text(
        textwrap.dedent(
            f"""
            import json
            import flightlog

            def test_leaves_one(tmp_path):
                store = tmp_path / "leaky"
                flightlog.set_tracking_uri(str(store))
                with flightlog.start_run():
                    flightlog.log_metric("m", 1.0)
                pid = json.loads((store / "collector.json").read_text())["pid"]
                open({str(pid_file)!r}, "w").write(str(pid))
                flightlog.context._contexts.clear()  # forget it: nothing here stops it
            """
        )
    )
    repo = Path(__file__).resolve().parent.parent
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "tests.conftest",
            f"--basetemp={tmp_path / 'base'}",
            str(inner / "test_leak.py"),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        cwd=repo,
        env={**os.environ, "PYTHONPATH": str(repo)},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)  # waiting on another process to finish its shutdown
    else:
        raise AssertionError(f"collector {pid} still runs after the session ended")


def test_missing_nvml_prints_its_one_line(tmp_path: Path) -> None:
    code = """
    import types
    from flightlog.agent.gpu import load_gpu_reader

    def broken():
        raise OSError("libnvidia-ml.so.1: cannot open shared object file")

    nvml = types.SimpleNamespace(nvmlInit=broken)
    assert load_gpu_reader(nvml=nvml) is None
    assert load_gpu_reader(nvml=nvml) is None  # the second time stays quiet
    """
    proc = run_script(tmp_path, code)
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "no GPU metrics" in lines[0] and "NVML" in lines[0]

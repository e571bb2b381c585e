"""The agent reads its FLIGHTLOG_* variables through flightlog.core.settings:
explicit argument > environment > default, and a bad value names its variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from flightlog.agent import signals, system
from flightlog.agent.sender import MemorySender
from flightlog.agent.transport import CollectorClient
from flightlog.agent.worker import Agent
from flightlog.core import settings, spool_paths
from flightlog.core.exceptions import SettingError


def make_agent(tmp_path: Path, **kwargs: float) -> Agent:
    return Agent(
        CollectorClient("http://127.0.0.1:9"),
        sender=MemorySender(),
        spool_root=tmp_path,
        **kwargs,  # type: ignore[arg-type]
    )


def test_argument_beats_environment_beats_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = make_agent(tmp_path)
    assert agent.flush_interval == settings.FLUSH_INTERVAL.default
    assert agent.batch_points == settings.BATCH_POINTS.default
    agent.close(timeout=5)
    monkeypatch.setenv("FLIGHTLOG_FLUSH_INTERVAL", "0.25")
    monkeypatch.setenv("FLIGHTLOG_BATCH_POINTS", "500")
    agent = make_agent(tmp_path)
    assert (agent.flush_interval, agent.batch_points) == (0.25, 500)
    agent.close(timeout=5)
    agent = make_agent(tmp_path, flush_interval=0.5, batch_points=7)
    assert (agent.flush_interval, agent.batch_points) == (0.5, 7)
    agent.close(timeout=5)


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("FLIGHTLOG_FLUSH_INTERVAL", "soon"),
        ("FLIGHTLOG_FLUSH_INTERVAL", "0"),
        ("FLIGHTLOG_BATCH_POINTS", "1.5"),
        ("FLIGHTLOG_MAX_QUEUE", "-1"),
        ("FLIGHTLOG_MAX_PENDING_BYTES", "lots"),
        ("FLIGHTLOG_HEARTBEAT_INTERVAL", "nan"),
        ("FLIGHTLOG_SPOOL_MAX_BYTES", "2GB"),
    ],
)
def test_a_bad_value_names_its_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, raw: str
) -> None:
    monkeypatch.setenv(name, raw)
    with pytest.raises(SettingError, match=f"{name}='{raw}' is not valid"):
        make_agent(tmp_path)


def test_other_agent_settings_name_their_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLIGHTLOG_SIGNAL_HANDLERS", "maybe")
    with pytest.raises(SettingError, match="FLIGHTLOG_SIGNAL_HANDLERS"):
        signals.enabled()
    monkeypatch.setenv("FLIGHTLOG_SIGNAL_HANDLERS", "off")
    assert signals.enabled() is False
    with pytest.raises(SettingError, match="MLFLOW_SYSTEM_METRICS_NODE_ID"):
        system.system_metrics_node_name({"MLFLOW_SYSTEM_METRICS_NODE_ID": "a b"})
    monkeypatch.setenv("FLIGHTLOG_TOKEN", "from-env")
    assert CollectorClient("http://127.0.0.1:9").token == "from-env"
    assert CollectorClient("http://127.0.0.1:9", token="given").token == "given"


def test_spool_base_follows_flightlog_spool_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLIGHTLOG_SPOOL_DIR", str(tmp_path / "s"))
    assert spool_paths.spool_base() == tmp_path / "s"
    root = spool_paths.default_spool_root("http://host:5055", None)
    assert root.parent == tmp_path / "s"
    monkeypatch.delenv("FLIGHTLOG_SPOOL_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert spool_paths.spool_base() == tmp_path / "cache" / "flightlog" / "spool"
    assert spool_paths.default_spool_root("x", tmp_path / "store") == tmp_path / "store" / "spool"

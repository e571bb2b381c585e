"""The README's parity table tells the truth: what it marks supported exists in flightlog
(and in MLflow), what it marks missing exists in MLflow only, and every public name of
flightlog is in it."""

from __future__ import annotations

import re
from pathlib import Path

from tests.mlflow_server import quiet_mlflow

quiet_mlflow()

import mlflow  # noqa: E402

import flightlog  # noqa: E402

README = Path(__file__).resolve().parent.parent / "README.md"


def _table(header: str) -> dict[str, list[str]]:
    """``{status: [names]}`` from the README table whose first column is ``header``."""
    lines = README.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {header} |"))
    out: dict[str, list[str]] = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        out.setdefault(cells[1], []).extend(re.findall(r"`([A-Za-z_]\w*)`", cells[0]))
    return out


def test_the_fluent_table_matches_flightlog_and_mlflow() -> None:
    table = _table("name")
    assert set(table) == {"yes", "no", "flightlog adds"}
    public = set(flightlog.__all__) - {"__version__"}
    for name in table["yes"]:
        assert name in public and getattr(flightlog, name) is not None, name
        assert hasattr(mlflow, name), f"{name} is marked as MLflow's but MLflow has no such name"
    for name in table["flightlog adds"]:
        assert name in public, name
        assert name not in mlflow.__all__, f"{name} is MLflow's too"
    for name in table["no"]:
        assert name not in public and not hasattr(flightlog, name), name
    listed = set(table["yes"]) | set(table["flightlog adds"])
    assert public - listed == set(), "public names missing from the README's table"


def test_the_client_table_matches_both_clients() -> None:
    table = _table("MlflowClient method")
    for name in table["yes"]:
        assert callable(getattr(flightlog.MlflowClient, name, None)), name
        assert hasattr(mlflow.MlflowClient, name), name
    for name in table["flightlog adds"]:
        assert callable(getattr(flightlog.MlflowClient, name, None)), name
        assert not hasattr(mlflow.MlflowClient, name), name
    for name in table["no"]:
        assert not hasattr(flightlog.MlflowClient, name), name
        assert hasattr(mlflow.MlflowClient, name), name

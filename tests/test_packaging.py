"""The distribution installs exactly one top-level package, flightlog."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_pip_install_gives_one_namespace(tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--target",
            str(target),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    top = {p.name for p in target.iterdir() if not p.name.endswith((".dist-info", ".egg-info"))}
    assert "flightlog" in top
    assert not top & {"sdk", "agent", "collector", "tests", "bench"}, top
    pkg = target / "flightlog"
    assert (pkg / "__init__.py").exists() and (pkg / "py.typed").exists()
    assert (pkg / "agent" / "worker.py").exists()
    assert (pkg / "collector" / "store.py").exists() and (pkg / "collector" / "schema.sql").exists()
    # The whole web UI ships in the package: no Node.js, no CDN.
    ui = pkg / "collector" / "static" / "ui"
    assert (ui / "index.html").exists() and (ui / "app.css").exists()
    assert {p.name for p in (ui / "js").iterdir()} >= {"main.js", "charts.js", "runs.js"}
    assert (ui / "vendor" / "uplot" / "uPlot.esm.js").exists()
    # The installed copy imports and finds its schema (package data) on its own.
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import flightlog, flightlog.agent.worker, "
            "flightlog.collector.store as s; print(flightlog.__file__); "
            "print(len(s._schema_sql('schema.sql')))",
        ],
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    first, size = out.stdout.split()
    assert first.startswith(str(target)) and int(size) > 1000

"""The README's main job, examples/quickstart.py, runs on the embedded default store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from flightlog.agent.embedded import stop_collector
from tests.helpers import stored_points

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "quickstart.py"


def test_quickstart_logs_into_the_default_store(tmp_path: Path) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("FLIGHTLOG_TRACKING_URI", "MLFLOW_TRACKING_URI")
    }
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    try:
        assert proc.returncode == 0, proc.stderr
        out = {}
        for line in proc.stdout.splitlines():
            name, _, value = line.partition(" : ")
            out[name.strip()] = value.strip()
        assert out["tracking URI"] == str((tmp_path / "flightlog").resolve())
        assert out["store"] == str(tmp_path / "flightlog")
        assert out["run"].endswith("status=FINISHED")
        assert out["experiment"] == "quickstart/toy-regression"
        assert out["train_loss"].startswith("10000 points stored")
        run_id = out["run"].split("(")[1].split(")")[0]
        db = tmp_path / "flightlog" / "flightlog.db"
        assert stored_points(db, run_id, "train_loss") == 10000
    finally:
        stop_collector(tmp_path / "flightlog")

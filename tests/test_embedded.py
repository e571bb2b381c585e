"""The embedded default: a node-local collector the SDK starts, reuses and lets go idle."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers import run_script, run_status, stored_points

LOG_SOME = """
import json, sys
import flightlog as mlflow
with mlflow.start_run() as run:
    mlflow.log_param("lr", 0.1)
    for i in range(1000):
        mlflow.log_metric("loss", 1.0 / (i + 1), step=i)
info = json.load(open("flightlog/collector.json"))
print(json.dumps({"run_id": run.info.run_id, "pid": info["pid"],
                  "uri": mlflow.get_tracking_uri()}))
"""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_default_store_is_started_and_reused(tmp_path: Path) -> None:
    work = tmp_path / "project"
    work.mkdir()
    first = json.loads(run_script(tmp_path, LOG_SOME, cwd=work).stdout)
    assert first["uri"] == str((work / "flightlog").resolve())
    db = work / "flightlog" / "flightlog.db"
    assert db.exists()
    assert stored_points(db, first["run_id"], "loss") == 1000
    assert run_status(db, first["run_id"]) == "FINISHED"
    # The collector outlives the process that started it, and the next process reuses it.
    assert _pid_alive(first["pid"])
    second = json.loads(run_script(tmp_path, LOG_SOME, cwd=work).stdout)
    assert second["pid"] == first["pid"]
    assert stored_points(db, second["run_id"], "loss") == 1000
    os.kill(first["pid"], signal.SIGTERM)


def test_idle_collector_exits_and_is_started_again(tmp_path: Path) -> None:
    work = tmp_path / "project"
    work.mkdir()
    env = {"FLIGHTLOG_EMBEDDED_IDLE_TIMEOUT": "1"}
    first = json.loads(run_script(tmp_path, LOG_SOME, cwd=work, env=env).stdout)
    deadline = time.monotonic() + 30
    while _pid_alive(first["pid"]) and time.monotonic() < deadline:
        time.sleep(0.1)  # waiting on another process to exit on its own timer
    assert not _pid_alive(first["pid"]), "the idle collector did not exit"
    assert not (work / "flightlog" / "collector.json").exists()
    second = json.loads(run_script(tmp_path, LOG_SOME, cwd=work, env=env).stdout)
    assert second["pid"] != first["pid"]
    db = work / "flightlog" / "flightlog.db"
    assert stored_points(db, first["run_id"]) == stored_points(db, second["run_id"]) == 1000


def test_concurrent_processes_start_one_collector(tmp_path: Path) -> None:
    work = tmp_path / "project"
    work.mkdir()
    script = tmp_path / "concurrent.py"
    script.write_text(LOG_SOME)
    procs = [
        subprocess.Popen([sys.executable, str(script)], cwd=work, stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    outs = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert len({o["pid"] for o in outs}) == 1
    db = work / "flightlog" / "flightlog.db"
    for o in outs:
        assert stored_points(db, o["run_id"], "loss") == 1000
    os.kill(outs[0]["pid"], signal.SIGTERM)


def test_sqlite_uri_and_env_tracking_uri(tmp_path: Path) -> None:
    db = tmp_path / "elsewhere" / "runs.db"
    code = LOG_SOME.replace(
        'open("flightlog/collector.json")', f"open({str(db.parent / 'runs.db.collector.json')!r})"
    )
    out = json.loads(
        run_script(tmp_path, code, env={"FLIGHTLOG_TRACKING_URI": f"sqlite:///{db}"}).stdout
    )
    assert stored_points(db, out["run_id"], "loss") == 1000
    os.kill(out["pid"], signal.SIGTERM)


def test_interpreter_exit_flushes_and_ends_run(tmp_path: Path) -> None:
    work = tmp_path / "project"
    work.mkdir()
    # No flush, no end_run, no context manager: the atexit hook must ship and end it.
    code = """
    import json
    import flightlog as mlflow
    run = mlflow.start_run()
    for i in range(300_000):
        mlflow.log_metric("loss", i, step=i)
    mlflow.log_param("p", 1)
    print(json.dumps({"run_id": run.info.run_id}))
    """
    out = json.loads(run_script(tmp_path, code, cwd=work).stdout)
    db = work / "flightlog" / "flightlog.db"
    assert stored_points(db, out["run_id"], "loss") == 300_000
    assert run_status(db, out["run_id"]) == "FINISHED"


def test_uncaught_exception_without_context_manager_ends_failed(tmp_path: Path) -> None:
    work = tmp_path / "project"
    work.mkdir()
    code = """
    import json, sys
    import flightlog as mlflow
    run = mlflow.start_run()
    mlflow.log_metric("x", 1.0)
    print(json.dumps({"run_id": run.info.run_id}), flush=True)
    raise RuntimeError("training blew up")
    """
    proc = run_script(tmp_path, code, cwd=work, check=False)
    assert proc.returncode == 1 and "training blew up" in proc.stderr
    out = json.loads(proc.stdout)
    db = work / "flightlog" / "flightlog.db"
    assert run_status(db, out["run_id"]) == "FAILED"
    assert stored_points(db, out["run_id"], "x") == 1

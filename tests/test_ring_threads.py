"""Eight threads logging into one run through the metric ring: every point stored once.

The ring's slots are reserved by one ``next()`` on C iterators, atomic under the GIL; a
free-threaded build (PEP 703, ``python3.13t``) has no GIL, so the ring runs ``locked``
there (``Ring.lock`` around reservation, write and the reader's take). The same script
runs three ways, each in a real process against a real collector, and the test reads
every stored step back from the SQLite file:

- on this interpreter, the ring as it runs here (unlocked under the GIL, locked without);
- on this interpreter with the ring forced into its locked mode, so the free-threaded
  build's code path runs in every CI run;
- on a free-threaded interpreter named by ``TEST_FREETHREADED_PYTHON`` (with
  flightlog installed in it), under ``PYTHON_GIL=0``; skipped with a reason without one.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from array import array
from collections import Counter
from pathlib import Path

import pytest
from conftest import CollectorProcess
from helpers import run_status
from test_reliability import query

from flightlog.agent import ring as ring_module
from flightlog.agent.sender import MemorySender
from flightlog.agent.transport import CollectorClient
from flightlog.agent.worker import Agent
from flightlog.core.ring_format import HEADER, LAP_AT, RECORD

THREADS = 8
PER_THREAD = 100_000  # half with log_metric, half with log_metrics (two keys a call)
# Not a FLIGHTLOG_* variable: those are flightlog's settings (core/settings.py).
FREETHREADED_ENV = "TEST_FREETHREADED_PYTHON"

STRESS = r"""
import sys, threading
import flightlog as mlflow
from flightlog.agent import ring as ring_module

url, threads, per_thread, mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
if mode == "locked":
    ring_module.GIL = False  # the free-threaded build's mode, under the GIL
gil = getattr(sys, "_is_gil_enabled", lambda: True)()
if mode == "freethreaded" and gil:
    sys.exit(f"{sys.executable} runs with the GIL enabled")
mlflow.set_tracking_uri(url)
half = per_thread // 2
start = threading.Barrier(threads)

def work(t):
    start.wait()
    for i in range(half):
        mlflow.log_metric(f"a{t}", i * 0.5, step=i)
    for i in range(half // 2):
        mlflow.log_metrics({f"b{t}": float(i), f"c{t}": -float(i)}, step=i)

with mlflow.start_run() as run:
    ts = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    ring = mlflow.MlflowClient().ctx.agent.metric_ring()
    print(run.info.run_id, ring is not None and ring.locked, gil, flush=True)
mlflow.flush()
"""


def _stress(python: str, url: str, mode: str, tmp_path: Path) -> tuple[str, bool, bool]:
    env = {
        **os.environ,
        "FLIGHTLOG_SPOOL_DIR": str(tmp_path / "spool"),
        "FLIGHTLOG_METRIC_RING": "1",
    }
    if mode == "freethreaded":
        env["PYTHON_GIL"] = "0"  # an extension that asks for the GIL must not get it
    proc = subprocess.run(
        [python, "-c", STRESS, url, str(THREADS), str(PER_THREAD), mode],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run_id, locked, gil = proc.stdout.split()
    return run_id, locked == "True", gil == "True"


def _series_faults(db: Path, run_id: str, key: str, n: int) -> tuple[int, list[int], list[int]]:
    """(points stored, first steps missing, first steps stored twice) of a series whose
    steps were 0 .. n-1, each logged once."""
    steps: array[int] = array("q")
    for (blob,) in query(
        db, "SELECT steps FROM metric_chunks WHERE run_uuid = ? AND key = ?", run_id, key
    ):
        steps.frombytes(blob)
    seen = Counter(steps)
    missing = [s for s in range(n) if s not in seen][:5]
    twice = sorted(s for s, k in seen.items() if k > 1)[:5]
    return len(steps), missing, twice


def _check_every_point_once(c: CollectorProcess, run_id: str) -> None:
    half = PER_THREAD // 2
    for t in range(THREADS):
        for key, n in ((f"a{t}", half), (f"b{t}", half // 2), (f"c{t}", half // 2)):
            assert _series_faults(c.db, run_id, key, n) == (n, [], []), key
    assert run_status(c.db, run_id) == "FINISHED"


@pytest.mark.parametrize("mode", ["native", "locked"])
def test_eight_threads_store_every_point_once(
    collector: CollectorProcess, tmp_path: Path, mode: str
) -> None:
    run_id, locked, gil = _stress(sys.executable, collector.url, mode, tmp_path)
    assert locked == (mode == "locked" or not gil)
    _check_every_point_once(collector, run_id)


def test_eight_threads_on_a_free_threaded_build(
    collector: CollectorProcess, tmp_path: Path
) -> None:
    python = os.environ.get(FREETHREADED_ENV)
    if not python:
        pytest.skip(f"{FREETHREADED_ENV} names no free-threaded python (e.g. python3.13t)")
    check = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_config_var('Py_GIL_DISABLED'))"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert check.stdout.strip() == "1", f"{python} is not a free-threaded build"
    run_id, locked, gil = _stress(python, collector.url, "freethreaded", tmp_path)
    assert locked and not gil
    _check_every_point_once(collector, run_id)


def test_a_locked_ring_writes_past_its_limit_under_its_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A point reserved at or past the ring's limit is written by Agent.ring_full; in the
    # locked mode (no GIL) that write must hold Ring.lock as the packer's take does, or
    # the take may find the record half written.
    monkeypatch.setattr(ring_module, "GIL", False)
    agent = Agent(
        CollectorClient("http://127.0.0.1:9"),
        sender=MemorySender(),
        spool_root=tmp_path,
        batch_points=10,
        max_queue=100,
    )
    try:
        ring = agent.metric_ring()
        assert ring is not None and ring.locked
        sid = ring.series_index("a" * 32, "loss")
        with ring.lock:  # the packer's take, say
            seq = ring.reserve()
            ring.limit = seq  # this position takes ring_full's path
            writer = threading.Thread(target=agent.ring_full, args=(seq, sid, 7, 0.5, 1e9))
            writer.start()
            writer.join(0.5)
            lap = memoryview(ring.mm)[HEADER + seq * RECORD :].cast("I")[LAP_AT]
            assert writer.is_alive() and lap == 0  # waits for the lock, writes nothing
        writer.join(10)
        lap = memoryview(ring.mm)[HEADER + seq * RECORD :].cast("I")[LAP_AT]
        assert not writer.is_alive() and lap == 1
    finally:
        agent.close(timeout=5)


BORROWER = r"""
import sys, threading
import flightlog as mlflow
mlflow.set_tracking_uri(sys.argv[1])
go, step_done = threading.Event(), threading.Event()
stop = False
logged = {}

def loader():  # a thread with no run of its own logs into the process's newest run
    i = 0
    while True:
        go.wait()
        if stop:
            return
        mlflow.log_metric("loader", 1.0, step=i)
        logged.setdefault(mlflow.fluent._tls.top[0], []).append(i)
        i += 1
        if i % 1000 == 0:
            go.clear()
            step_done.set()

t = threading.Thread(target=loader)
t.start()
ids = []
for n in range(3):
    with mlflow.start_run() as run:
        ids.append(run.info.run_id)
        step_done.clear()
        go.set()
        step_done.wait(60)
stop = True
go.set()
t.join()
mlflow.flush()
print(" ".join(ids))
print(" ".join(str(len(logged.get(r, []))) for r in ids))
"""


def test_a_thread_without_a_run_keeps_the_route_until_the_process_runs_change(
    collector: CollectorProcess, tmp_path: Path
) -> None:
    """A loader thread logging into the main thread's run keeps that route between calls
    (no lookup per call), and follows each new run: 1,000 points in each of 3 runs."""
    env = {**os.environ, "FLIGHTLOG_SPOOL_DIR": str(tmp_path / "spool")}
    proc = subprocess.run(
        [sys.executable, "-c", BORROWER, collector.url],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    ids, counts = (line.split() for line in proc.stdout.splitlines()[-2:])
    assert counts == ["1000", "1000", "1000"]  # the route it kept named the run in force
    for run_id in ids:
        sql = "SELECT SUM(n) FROM metric_chunks WHERE run_uuid = ?"
        assert query(collector.db, sql, run_id) == [(1000,)]

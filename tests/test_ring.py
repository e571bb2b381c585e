"""The metric ring: a process killed without its exit loses nothing it logged.

Real processes throughout: a trainer logs, then is SIGKILLed (as the OOM killer would)
with no flush; the next flightlog process on the node for the same collector adopts its
ring, sends every point exactly once and ends the run FAILED.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import CollectorProcess, start_collector
from helpers import run_status, stored_points

import flightlog
from flightlog import MlflowClient
from flightlog.agent import ring as ring_module
from flightlog.agent.ring import RECORD, Ring
from flightlog.core.wire import decode_batch, encode_raw_batch

TRAINER = r"""
import os, signal, sys, threading
import flightlog as mlflow
mlflow.set_tracking_uri(sys.argv[1])
threads = int(sys.argv[2])
with mlflow.start_run() as r:
    print(r.info.run_id, flush=True)
    def work(t):
        for i in range(100_000 // threads):
            mlflow.log_metric(f"loss{t}", i * 0.5, step=i)
    ts = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for t in ts: t.start()
    for t in ts: t.join()
    os.kill(os.getpid(), signal.SIGKILL)
"""

NEXT_AGENT = r"""
import sys, time
import flightlog as mlflow
mlflow.set_tracking_uri(sys.argv[1])
agent = mlflow.MlflowClient().ctx.agent
agent._adopter.join(30)
"""


def _env(spool: Path) -> dict[str, str]:
    return {**os.environ, "FLIGHTLOG_SPOOL_DIR": str(spool), "FLIGHTLOG_METRIC_RING": "1"}


def _kill_trainer(url: str, spool: Path, threads: int = 1) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", TRAINER, url, str(threads)],
        capture_output=True,
        text=True,
        env=_env(spool),
        timeout=120,
    )
    assert proc.returncode == -9, proc.stderr
    return proc.stdout.split()[0]


def _adopt(url: str, spool: Path) -> float:
    began = time.monotonic()
    subprocess.run(
        [sys.executable, "-c", NEXT_AGENT, url],
        check=True,
        env=_env(spool),
        timeout=60,
        capture_output=True,
    )
    return time.monotonic() - began


def _check(c: CollectorProcess, run_id: str, spool: Path, points: int = 100_000) -> None:
    assert stored_points(c.db, run_id) == points
    assert run_status(c.db, run_id) == "FAILED"
    assert not list(spool.glob("*-rings/*/ring"))


def test_sigkill_after_100k_calls_loses_nothing(
    collector: CollectorProcess, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    run_id = _kill_trainer(collector.url, spool)
    took = _adopt(collector.url, spool)
    _check(collector, run_id, spool)
    assert took < 10


def test_sigkill_with_four_threads_logging(collector: CollectorProcess, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    run_id = _kill_trainer(collector.url, spool, threads=4)
    _adopt(collector.url, spool)
    _check(collector, run_id, spool)


def test_sigkill_with_the_collector_down(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    store = tmp_path / "store"
    c = start_collector(store)
    port = c.port
    c.stop()
    run_id = _kill_trainer(c.url, spool)
    rings = list(spool.glob("*-rings/*/ring"))
    assert rings  # left for whoever comes next
    c = start_collector(store, port)
    try:
        _adopt(c.url, spool)
        _check(c, run_id, spool)
    finally:
        c.stop()


FORKED = r"""
import os, signal, sys
import flightlog as mlflow
mlflow.set_tracking_uri(sys.argv[1])
with mlflow.start_run() as r:
    print(r.info.run_id, flush=True)
    mlflow.log_metric("parent", 1.0)
    pid = os.fork()
    if pid == 0:  # the child logs into the parent's run, then dies unflushed
        for i in range(100_000):
            mlflow.log_metric("child", 0.5, step=i)
        os.kill(os.getpid(), signal.SIGKILL)
    os.waitpid(pid, 0)
    os.kill(os.getpid(), signal.SIGKILL)
"""

WORKERS = r"""
import multiprocessing as mp, os, signal, sys
import flightlog as mlflow

def work(args):
    run_id, w = args
    for i in range(1000):
        mlflow.log_metric(f"w{w}", 0.5, step=i, run_id=run_id)
    return w

if __name__ == "__main__":
    url, method, kind = sys.argv[1:4]
    os.environ["FLIGHTLOG_TRACKING_URI"] = url
    mlflow.set_tracking_uri(url)
    ctx = mp.get_context(method)
    with mlflow.start_run() as r:
        print(r.info.run_id, flush=True)
        jobs = [(r.info.run_id, w) for w in range(4)]
        if kind == "process":
            ps = [ctx.Process(target=work, args=(j,)) for j in jobs]
            for p in ps: p.start()
            for p in ps: p.join()
        else:
            pool = ctx.Pool(4)
            pool.map(work, jobs)
            pool.close()
            pool.join()
        os.kill(os.getpid(), signal.SIGKILL)
"""


def _script(script: str, *args: str, spool: Path) -> str:
    # From a file: spawn-context children import the worker function from __main__.
    path = spool.parent / "script.py"
    path.write_text(script)
    proc = subprocess.run(
        [sys.executable, str(path), *args],
        capture_output=True,
        text=True,
        env=_env(spool),
        timeout=180,
    )
    assert proc.returncode == -9, proc.stderr
    return proc.stdout.split()[0]


def test_sigkill_of_a_forked_child_and_its_parent(
    collector: CollectorProcess, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    run_id = _script(FORKED, collector.url, spool=spool)
    _adopt(collector.url, spool)
    assert stored_points(collector.db, run_id, "child") == 100_000
    assert stored_points(collector.db, run_id, "parent") == 1
    assert run_status(collector.db, run_id) == "FAILED"


@pytest.mark.parametrize("method", ["fork", "spawn"])
@pytest.mark.parametrize("kind", ["process", "pool"])
def test_multiprocessing_workers_that_never_flush_then_the_parent_is_killed(
    collector: CollectorProcess, tmp_path: Path, method: str, kind: str
) -> None:
    spool = tmp_path / "spool"
    run_id = _script(WORKERS, collector.url, method, kind, spool=spool)
    _adopt(collector.url, spool)
    assert stored_points(collector.db, run_id) == 4000
    assert run_status(collector.db, run_id) == "FAILED"


KILLED = r"""
import os, signal, sys
import flightlog as mlflow
mlflow.set_tracking_uri(sys.argv[1])
with mlflow.start_run():
    for i in range(1000):
        mlflow.log_metric("loss", 0.5, step=i)
    os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("setting", ["0", "1", None])
def test_a_ring_by_default_and_none_when_turned_off(
    collector: CollectorProcess, tmp_path: Path, setting: str | None
) -> None:
    spool = tmp_path / "spool"
    env = _env(spool)
    del env["FLIGHTLOG_METRIC_RING"]
    if setting is not None:
        env["FLIGHTLOG_METRIC_RING"] = setting
    proc = subprocess.run(
        [sys.executable, "-c", KILLED, collector.url], env=env, timeout=60, capture_output=True
    )
    assert proc.returncode == -9, proc.stderr
    # Killed, so a ring it made is left behind; turned off it made none.
    assert bool(list(spool.glob("*-rings/*/ring"))) == (setting != "0")


# -- the ring file itself (no process killed) ------------------------------------------


def _write(ring: Ring, sid: int, step: int) -> int:
    seq, offset, lap = next(ring.slots)
    ring.pack_into(ring.mm, offset, step, step * 0.5, 1e9 + step, sid, lap)
    return int(seq)


def test_only_published_records_of_the_current_lap_are_taken(tmp_path: Path) -> None:
    ring = Ring(tmp_path, "r1", 4)
    sid = ring.series_index("a" * 32, "loss")
    for step in range(4):
        _write(ring, sid, step)
    taken, chunks, _ = ring.take(0, 4)
    assert taken == 4 and len(b"".join(chunks)) == 4 * RECORD
    ring.set_acked(4, 0)
    _write(ring, sid, 4)  # slot 0, second lap
    next(ring.slots)  # slot 1 reserved, not written yet (another thread's write)
    _write(ring, sid, 6)  # slot 2
    # Slot 1 still holds the first lap's record: the take stops there.
    assert ring.take(4, 7)[0] == 5
    ring.overflow[5] = None  # a dropped point: the reader passes it
    taken, chunks, extra = ring.take(5, 8)
    assert (taken, extra) == (7, [None])  # slot 3 holds the first lap's record
    _, _, _, series = decode_batch(
        encode_raw_batch("b", "a", [], None, b"".join(chunks), ring.ids_for(chunks))
    )
    assert [list(s[2]) for s in series] == [[6]]


def test_a_big_ids_table_ships_only_the_series_a_batch_uses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ring_module, "IDS_WHOLE", 64)
    ring = Ring(tmp_path, "r1", 100)
    for k in range(50):
        ring.series_index("a" * 32, f"k{k}")
    for step, k in enumerate([3, 7, 3]):
        _write(ring, k, step)
    _, chunks, _ = ring.take(0, 3)
    ids = ring.ids_for(chunks)
    assert len(ids) < len(ring.ids_blob)
    _, _, _, series = decode_batch(encode_raw_batch("b", "a", [], None, b"".join(chunks), ids))
    assert sorted((s[1], list(s[2])) for s in series) == [("k3", [0, 2]), ("k7", [1])]


VALUES = r"""
import decimal, fractions, sys
import numpy as np
import torch
import flightlog as mlflow
from flightlog.core.exceptions import MlflowException
mlflow.set_tracking_uri(sys.argv[1])
with mlflow.start_run() as r:
    print(r.info.run_id, flush=True)
    mlflow.log_metric("v", 0.0, step=0)  # the key is interned: later calls take the hot path
    good = [1, True, np.float32(2.5), np.int64(3), torch.tensor(4.5), decimal.Decimal("5.5"),
            fractions.Fraction(13, 2), float("nan")]
    for i, value in enumerate(good, start=1):
        mlflow.log_metric("v", value, step=i)
    for bad in ["7", None, b"8", 1j, torch.tensor([1.0, 2.0])]:
        try:
            mlflow.log_metric("v", bad, step=99)
        except (MlflowException, ValueError, RuntimeError) as e:
            print("refused:", type(e).__name__, str(e)[:60], flush=True)
        try:
            mlflow.log_metrics({"v": bad, "w": 1.0}, step=99)
        except (MlflowException, ValueError, RuntimeError) as e:
            print("refused:", type(e).__name__, str(e)[:60], flush=True)
    for step in [2**63, -(2**63) - 1]:
        try:
            mlflow.log_metric("v", 1.0, step=step)
        except MlflowException as e:
            print("refused:", type(e).__name__, str(e)[:60], flush=True)
    mlflow.log_metrics({"v": 9.0, "w": 2.0}, step=9)
"""


def test_the_hot_path_takes_what_converts_to_float_and_names_what_does_not(
    collector: CollectorProcess, tmp_path: Path
) -> None:
    """pack_into checks values on the ring's hot path: what MLflow takes (numpy and 0-d
    torch numbers, bools, Decimals) is stored; what it refuses raises the error naming
    the key, the slot is passed over, and later points still arrive."""
    proc = subprocess.run(
        [sys.executable, "-c", VALUES, collector.url],
        capture_output=True,
        text=True,
        env=_env(tmp_path / "spool"),
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    run_id, *lines = proc.stdout.splitlines()
    refused = [line for line in lines if line.startswith("refused:")]
    # 5 bad values x (log_metric, log_metrics) + 2 steps out of the int64 range.
    assert len(refused) == 12, lines
    assert all("'v'" in line for line in refused if "MlflowException" in line)
    flightlog.set_tracking_uri(collector.url)
    history = MlflowClient().get_metric_history(run_id, "v")
    got = sorted((m.step, m.value) for m in history if m.value == m.value)
    assert got == [
        (0, 0.0),
        (1, 1.0),
        (2, 1.0),
        (3, 2.5),
        (4, 3.0),
        (5, 4.5),
        (6, 5.5),
        (7, 6.5),
        (9, 9.0),
    ]
    assert [m.step for m in history if m.value != m.value] == [8]
    w = sorted(m.step for m in MlflowClient().get_metric_history(run_id, "w"))
    assert w == [9]  # the call stopped at the refused point, before "w"

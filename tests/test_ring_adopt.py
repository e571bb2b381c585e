"""The node's collector adopts a dead trainer's metric ring: no other agent needed.

Real processes throughout: a trainer logs, then dies without its exit (SIGKILL, as the
OOM killer would) and no flightlog process is started after it. The collector that
serves the node (the embedded one the SDK started, or the sidecar) sees that the owner
is gone (pid and start time, ``flightlog.core.ring_format``), stores every point of the
ring exactly once and ends the run within seconds instead of after the run timeout.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import CollectorProcess, start_collector
from helpers import run_status, stored_points
from test_reliability import Child, wait_until
from test_sidecar import start_sidecar

from flightlog import MlflowClient
from flightlog.agent.embedded import stop_collector
from flightlog.agent.ring import Ring
from flightlog.core.ring_adoption import POLL_SECONDS, adopt_dead_rings
from flightlog.core.ring_format import (
    HEADER_FORMAT,
    DeadRing,
    own_start,
    owner_alive,
    process_start,
    rings_root,
)
from flightlog.core.spool_paths import default_spool_root
from flightlog.core.uris import local_store

#: The run of a dead trainer ends (and its points are stored) within this many seconds.
ENDED_WITHIN = 10.0

TRAINER = r"""
import os, signal, sys
import flightlog as mlflow
mlflow.set_tracking_uri(sys.argv[1])
n, how = int(sys.argv[2]), sys.argv[3]
with mlflow.start_run() as r:
    print("run", r.info.run_id, flush=True)
    for i in range(n):
        mlflow.log_metric("loss", i * 0.5, step=i)
    if how == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    print("logged", flush=True)
    sys.stdin.readline()  # the test kills it while it waits here
"""


@pytest.fixture(autouse=True)
def _ring_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ring on, spools (and rings) under the test's directory, for every process."""
    monkeypatch.setenv("FLIGHTLOG_METRIC_RING", "1")
    monkeypatch.setenv("FLIGHTLOG_SPOOL_DIR", str(tmp_path / "spool"))
    for var in ("FLIGHTLOG_TOKEN", "FLIGHTLOG_UPSTREAM", "FLIGHTLOG_UPSTREAM_TOKEN"):
        monkeypatch.delenv(var, raising=False)


def _killed_trainer(uri: str, n: int = 100_000) -> str:
    """Run a trainer that logs ``n`` points and SIGKILLs itself; its run id."""
    proc = subprocess.run(
        [sys.executable, "-c", TRAINER, uri, str(n), "kill"],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    return proc.stdout.split()[1]


def _rings(root: Path) -> list[Path]:
    return list(rings_root(root).glob("*/ring"))


def _spools(root: Path) -> list[Path]:
    """The per-process spool directories left under a spool root."""
    return [p for p in root.iterdir() if p.is_dir()] if root.is_dir() else []


def _ended(db: Path, run_id: str, status: str, points: int) -> bool:
    try:
        return run_status(db, run_id) == status and stored_points(db, run_id) == points
    except (TypeError, Exception):  # the run is not stored yet
        return False


def test_sigkill_after_100k_calls_the_embedded_collector_adopts_the_ring(
    tmp_path: Path,
) -> None:
    """No agent after the trainer: its own embedded collector stores all and ends the run."""
    store = tmp_path / "store"
    try:
        run_id = _killed_trainer(str(store))
        died = time.monotonic()
        db = store / "flightlog.db"
        wait_until(
            lambda: _ended(db, run_id, "FAILED", 100_000), ENDED_WITHIN, "the run to end FAILED"
        )
        took = time.monotonic() - died
        root = default_spool_root(str(store), local_store(str(store)))
        # Adopted, then deleted (just after the last batch is stored).
        wait_until(lambda: not _rings(root), 5, "the adopted ring to be deleted")
        # A fresh client sees it all (through the same collector).
        client = MlflowClient(tracking_uri=str(store))
        run = client.get_run(run_id)
        assert run.info.status == "FAILED"
        assert run.data.tags["flightlog.endReason"] == "process_died"
        history = client.get_metric_history(run_id, "loss")
        assert len(history) == 100_000
        assert sorted(m.step for m in history) == list(range(100_000))
        assert took < ENDED_WITHIN
    finally:
        stop_collector(local_store(str(store)))


def test_sigkill_after_100k_calls_the_sidecar_adopts_the_ring(tmp_path: Path) -> None:
    central = start_collector(tmp_path / "central")
    sidecar = start_sidecar(tmp_path / "node", central.url, token=None)
    try:
        run_id = _killed_trainer(sidecar.url)
        wait_until(
            lambda: _ended(central.db, run_id, "FAILED", 100_000),
            ENDED_WITHIN,
            "the sidecar to forward the ring and end the run",
        )
        root = tmp_path / "spool" / f"http-127.0.0.1-{sidecar.port}"
        wait_until(lambda: not _rings(root), 5, "the adopted ring to be deleted")
        run = MlflowClient(tracking_uri=central.url).get_run(run_id)
        assert run.info.status == "FAILED"
    finally:
        sidecar.stop()
        central.stop()


def _trainer_past_a_dead_collector(tmp_path: Path, how: int) -> tuple[CollectorProcess, str]:
    """A trainer logs 100,000 points, its collector is SIGKILLed, then the trainer gets
    ``how``; the collector starts again (same store and port). Returns it and the run id."""
    c = start_collector(tmp_path / "store")
    trainer = Child(
        tmp_path,
        TRAINER.replace("sys.argv[1]", repr(c.url)).replace(
            "int(sys.argv[2]), sys.argv[3]", "100_000, 'wait'"
        ),
        stdin=True,
    )
    try:
        run_id = trainer.expect("run")
        trainer.expect("logged")
        c.stop(signal.SIGKILL)
        trainer.proc.send_signal(how)
        assert trainer.wait() == -how
    finally:
        trainer.kill()
    assert _rings(tmp_path / "spool" / f"http-127.0.0.1-{c.port}")  # left behind
    return start_collector(tmp_path / "store", c.port), run_id


def test_the_collector_down_at_the_death_adopts_the_ring_when_it_is_back(
    tmp_path: Path,
) -> None:
    c, run_id = _trainer_past_a_dead_collector(tmp_path, signal.SIGKILL)
    try:
        wait_until(
            lambda: _ended(c.db, run_id, "FAILED", 100_000),
            ENDED_WITHIN,
            "the restarted collector to adopt the ring",
        )
        root = tmp_path / "spool" / f"http-127.0.0.1-{c.port}"
        wait_until(lambda: not _rings(root), 5, "the adopted ring to be deleted")
        assert not _spools(root)  # nor a spool, if it had to make one
    finally:
        c.stop()


def test_sigterm_with_the_collector_down_ends_the_run_killed(tmp_path: Path) -> None:
    c, run_id = _trainer_past_a_dead_collector(tmp_path, signal.SIGTERM)
    try:
        wait_until(
            lambda: _ended(c.db, run_id, "KILLED", 100_000),
            ENDED_WITHIN,
            "the restarted collector to store the run, KILLED",
        )
    finally:
        c.stop()


def _set_owner(ring_dir: Path, pid: int, start: int) -> None:
    with open(ring_dir / "ring", "r+b") as f:
        head = bytearray(f.read(HEADER_FORMAT.size))
        fields = list(HEADER_FORMAT.unpack(head))
        fields[4:6] = [pid, start]
        f.seek(0)
        f.write(HEADER_FORMAT.pack(*fields))


def test_a_live_owner_is_never_adopted_and_a_reused_pid_does_not_keep_a_ring(
    tmp_path: Path,
) -> None:
    """The ring a killed trainer left is given to a live process (this one) by its header:
    with that process's start time it is left alone; with another start time (the pid
    was reused) it is adopted."""
    store = tmp_path / "store"
    c = start_collector(store)
    port = c.port
    c.stop()
    run_id = _killed_trainer(c.url, n=1000)
    root = tmp_path / "spool" / f"http-127.0.0.1-{port}"
    [ring] = _rings(root)
    _set_owner(ring.parent, os.getpid(), own_start())  # alive, and its flock is free
    c = start_collector(store, port)
    try:
        # The trainer's spool (its batches went to disk: the collector was down) is
        # adopted on the first poll; the ring, whose owner looks alive, is not.
        wait_until(
            lambda: not _spools(root),
            ENDED_WITHIN,
            "the dead trainer's spool to be adopted",
        )
        time.sleep(4 * POLL_SECONDS)  # proving a negative: several more polls
        assert ring.exists()
        assert run_status(c.db, run_id) == "RUNNING"
        _set_owner(ring.parent, os.getpid(), own_start() + 1)  # the pid was reused
        wait_until(
            lambda: _ended(c.db, run_id, "FAILED", 1000), ENDED_WITHIN, "the ring's adoption"
        )
        wait_until(lambda: not ring.parent.exists(), 5, "the adopted ring to be deleted")
    finally:
        c.stop()


def test_a_live_ring_is_never_claimed_even_without_its_lock(tmp_path: Path) -> None:
    """An owner alive by pid and start time keeps its ring even when its flock is free
    (closed, or never taken on a file system without locks); a dead one (here: a start
    time that is not this process's) is claimed, once."""
    ring = Ring(tmp_path / "r-rings", "live", 16)
    ring.write_at(ring.reserve(), ring.series_index("run", "k"), 0, 1.0, 1.0)
    ring.close(remove=False)  # the lock is released; this process still lives
    assert DeadRing.claim(ring.directory) is None

    delivered: list[int] = []

    async def deliver(body: bytes, points: int) -> bool:
        delivered.append(points)
        return True

    assert asyncio.run(adopt_dead_rings([tmp_path / "r"], deliver, "t")) == 0
    assert delivered == [] and ring.directory.exists()
    _set_owner(ring.directory, os.getpid(), own_start() + 1)
    claimed = DeadRing.claim(ring.directory)
    assert claimed is not None
    assert DeadRing.claim(ring.directory) is None  # one adopter at a time
    claimed.release()
    assert asyncio.run(adopt_dead_rings([tmp_path / "r"], deliver, "t")) == 1
    assert delivered == [1]
    assert not ring.directory.exists()


def test_a_zombie_owner_is_dead(tmp_path: Path) -> None:
    """A child killed and not yet reaped is a zombie: its pid still has a /proc entry."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        start = process_start(child.pid)
        assert start is not None and owner_alive(child.pid, start)
        child.kill()
        wait_until(lambda: process_start(child.pid) is None, 10, "the child to be a zombie")
        assert os.path.exists(f"/proc/{child.pid}")  # not reaped yet
        assert owner_alive(child.pid, start) is False
    finally:
        child.wait()


def test_the_journal_is_synced_before_a_send_once_per_new_cut(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ids, ops and cuts reach the disk (fdatasync) before a batch whose cut they hold is
    sent, once for any number of cuts, each file only when it changed, and not at all
    when nothing was appended since."""
    synced: list[int] = []
    monkeypatch.setattr(os, "fdatasync", synced.append)
    ring = Ring(tmp_path / "r-rings", "sync", 16)
    ids, ops, cuts = ring._ids_fd, ring._ops_fd, ring._cuts_fd
    try:
        ring.series_index("run", "k")
        ring.cut(0, 0)
        ring.cut(0, 0)
        assert synced == []  # cutting (the packer) never syncs
        ring.sync_journal()
        assert synced == [ids, cuts]  # ops unchanged
        ring.sync_journal()
        assert synced == [ids, cuts]
        ring.cut(1, 0)
        ring.sync_journal()
        assert synced == [ids, cuts, cuts]
        with ring.ops_lock:
            ring.journal_op("set_tags", {"run_id": "run", "tags": {}})
        ring.series_index("run", "k2")
        ring.cut(2, 1)
        ring.sync_journal()
        assert synced == [ids, cuts, cuts, ids, ops, cuts]  # in the order a reader needs
    finally:
        ring.close(remove=True)

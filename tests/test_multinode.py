"""Eight nodes, sixteen trainers, one run, through a central outage and a database restart.

Each node is a sidecar collector (``flightlog collector --store DIR --upstream URL``) on its
own loopback address (127.0.0.10-17) with its own temp directory and spool, as separate
machines would have, and two trainer processes launched as ranks of one 16-process job
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``). Nodes 0-3 are named by
``FLIGHTLOG_NODE``; nodes 4-7 by their own host name (each trainer in a UTS namespace of
its own, the automatic label of a multi-node launch) where the tests run as root, and by
``FLIGHTLOG_NODE`` elsewhere. Every trainer logs into ONE run, created once by the test,
through its node's sidecar, with system metrics on at a short interval and a fake NVML
(tests/fake_nvml.py, installed as ``pynvml`` in each trainer: the name
``flightlog.agent.gpu.load_gpu_reader`` imports) showing 8 GPUs per node. Mid-run the
central collector is killed -9 and restarted, then PostgreSQL is crash-restarted under
the live collector. At the end each node's sampling trainer ends the run first, so the
other trainer on the node takes the node's sampling over. Afterwards the central
database holds every training point exactly once, every node's 8 GPUs' series under
that node's label with that node's values, each sample once, and exactly one sampler
per node at any time (two in turn, their spans apart, the second going on with the
node's steps where the first stopped).

Which process sampled a node is read from the stored values themselves: the fake NVML of
local rank ``r`` on node ``i`` reports GPU ``g``'s SM clock as ``1000 + 100 i + 10 g + r``
(every other reading is the node's and the GPU's only).
"""

from __future__ import annotations

import functools
import signal
import subprocess
import sys
import time
from array import array
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import psycopg
import pytest
from conftest import CollectorProcess
from pgserver import PgServer
from test_postgres_team import TOKEN, run_exists, start_central
from test_reliability import Child, wait_until
from test_sidecar import backlog, health, start_sidecar, stop_all

from flightlog import MlflowClient
from flightlog.agent.gpu import GPU_READINGS

NODES = 8
TRAINERS_PER_NODE = 2
GPUS = 8
#: Points each trainer logs to its own key and to the key all trainers share.
POINTS = 600
INTERVAL = 0.25  # seconds between system metric samples
TESTS = Path(__file__).resolve().parent

# A UTS namespace of the process's own, with its own host name (needs root).
HOST_NAME_CODE = """
import ctypes, socket
def set_host_name(name):
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(0x04000000) != 0:  # CLONE_NEWUTS
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWUTS) failed")
    socket.sethostname(name)
"""

TRAINER = """
import sys
{host_name_code}
if {host_name!r}:
    set_host_name({host_name!r})  # before flightlog looks at the host name
sys.path.insert(0, {tests!r})
from fake_nvml import FakeDevice, fake_nvml

node, local_rank, rank = {node}, {local_rank}, {rank}
# This node's 8 GPUs; load_gpu_reader imports "pynvml" by name, so this is what it gets.
sys.modules["pynvml"] = fake_nvml(
    [
        FakeDevice(
            uuid=f"GPU-n{{node}}-g{{g}}",
            util=10 * node + g,
            mem=((node + 1) * 10**9 + g * 10**8, 80 * 10**9),
            power_mw=(100 + 10 * node + g) * 1000,
            temp=30 + node,
            sm_mhz=1000 + 100 * node + 10 * g + local_rank,  # who sampled
        )
        for g in range({gpus})
    ]
)

import flightlog as mlflow

mlflow.set_tracking_uri({url!r})
n = {n}
with mlflow.start_run(run_id={run_id!r}):
    for phase in range(3):
        for i in range(phase * n // 3, (phase + 1) * n // 3):
            mlflow.log_metric(f"loss/rank{{rank}}", i * 0.5, step=i)
            mlflow.log_metric("shared/throughput", float(rank), step=rank * n + i)
        print("phase", phase, flush=True)
        sys.stdin.readline()  # the test breaks the central tier meanwhile
    agent = mlflow.MlflowClient().ctx.agent
    print("flushed", agent.flush(timeout=120, through_outage=True), flush=True)
print("done", flush=True)
"""


@dataclass(frozen=True)
class Series:
    """One stored metric series, its chunks' arrays joined in storage order."""

    steps: array[int]
    values: array[float]
    timestamps: array[float]

    def points(self) -> list[tuple[int, float, float]]:
        """``(step, timestamp, value)`` for every stored point, sorted."""
        return sorted(zip(self.steps, self.timestamps, self.values, strict=True))


def stored_series(uri: str, run_id: str) -> dict[str, Series]:
    """Every series of the run as the central database holds it (all chunks, raw)."""
    out: dict[str, Series] = {}
    with psycopg.connect(uri) as conn, conn.cursor(binary=True) as cur:
        rows = cur.execute(
            "SELECT key, steps, vals, ts FROM metric_chunks WHERE run_uuid = %s"
            " ORDER BY key, chunk_id",
            (run_id,),
        )
        for key, steps, vals, ts in rows:
            series = out.setdefault(key, Series(array("q"), array("d"), array("d")))
            series.steps.frombytes(steps)
            series.values.frombytes(vals)
            series.timestamps.frombytes(ts)
    return out


@functools.cache
def own_host_names() -> bool:
    """Whether a process here can have a host name of its own (root, UTS namespaces)."""
    probe = HOST_NAME_CODE + "set_host_name('probe')"
    return subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode == 0


def named_by_host(node: int) -> bool:
    """Half the nodes get their label from their own host name, where that can be had
    (what a real launch relies on: WORLD_SIZE > LOCAL_WORLD_SIZE means "use the host
    name"), the others from FLIGHTLOG_NODE."""
    return node >= NODES // 2 and own_host_names()


def node_env(tmp_path: Path, node: int, local_rank: int) -> dict[str, str]:
    """A trainer's environment: its node's label, temp dir and spool; its ranks."""
    home = tmp_path / f"node{node}"
    (home / "tmp").mkdir(parents=True, exist_ok=True)
    label = {} if named_by_host(node) else {"FLIGHTLOG_NODE": f"node{node}"}
    return {
        **label,
        "TMPDIR": str(home / "tmp"),  # where the node's sampler election takes its lock
        "FLIGHTLOG_SPOOL_DIR": str(home / "spool"),
        "FLIGHTLOG_ENABLE_SYSTEM_METRICS_LOGGING": "true",
        "FLIGHTLOG_SYSTEM_METRICS_SAMPLING_INTERVAL": str(INTERVAL),
        "FLIGHTLOG_FLUSH_INTERVAL": "0.2",
        "RANK": str(node * TRAINERS_PER_NODE + local_rank),
        "WORLD_SIZE": str(NODES * TRAINERS_PER_NODE),
        "LOCAL_RANK": str(local_rank),
        "LOCAL_WORLD_SIZE": str(TRAINERS_PER_NODE),
    }


def forwarded(sidecar: CollectorProcess) -> int:
    return int(health(sidecar.url)["forwarded_batches"])


def wait_until_all_forward(sidecars: list[CollectorProcess]) -> None:
    """Wait until every node has forwarded a batch more than it had now."""
    before = [forwarded(s) for s in sidecars]
    for s, n in zip(sidecars, before, strict=True):
        wait_until(lambda s=s, n=n: forwarded(s) > n, 60, "every node to forward again")


def outlast(since: float) -> None:
    """Let a few sampling intervals pass since ``since``, so every node samples in them."""
    wait_until(lambda: time.time() - since >= 4 * INTERVAL, 10, "a few sampling intervals")


def next_phase(trainers: list[Child], phase: str) -> None:
    """Let every trainer go on, and wait until each has logged its next third."""
    for t in trainers:
        t.send("go")
    for t in trainers:
        assert t.expect("phase", timeout=60) == phase


def finish(trainers: list[Child]) -> None:
    """Let the trainers end their runs (flushing through any outage) and exit."""
    for t in trainers:
        t.send("go")
    for t in trainers:
        assert t.expect("flushed", timeout=120) == "True"
        t.expect("done")
        assert t.wait() == 0


def sampled_by(node: int, gpu: int, sm_clock: float) -> int:
    """The local rank whose fake NVML gave this SM clock reading (see TRAINER)."""
    return int(sm_clock) - (1000 + 100 * node + 10 * gpu)


def latest_sampler(uri: str, run_id: str, node: int) -> int:
    """The local rank that took the node's latest sample the central store holds."""
    clock = stored_series(uri, run_id)[f"system/node{node}/gpu_0_sm_clock_mhz"]
    last = max(range(len(clock.timestamps)), key=clock.timestamps.__getitem__)
    return sampled_by(node, 0, clock.values[last])


@pytest.fixture(autouse=True)
def _own_spool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLIGHTLOG_SPOOL_DIR", str(tmp_path / "spool"))
    for var in (
        "FLIGHTLOG_TOKEN",
        "FLIGHTLOG_UPSTREAM",
        "FLIGHTLOG_UPSTREAM_TOKEN",
        "FLIGHTLOG_NODE",
        "MLFLOW_SYSTEM_METRICS_NODE_ID",
    ):
        monkeypatch.delenv(var, raising=False)


def test_eight_nodes_sixteen_trainers_one_run_through_central_kill_and_postgres_restart(
    tmp_path: Path, pg_server: PgServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = pg_server.create_database()
    central = start_central(tmp_path, "central", uri)
    with ThreadPoolExecutor(NODES) as pool:
        sidecars = list(
            pool.map(
                lambda i: start_sidecar(
                    tmp_path / f"node{i}" / "buffer", central.url, host=f"127.0.0.{10 + i}"
                ),
                range(NODES),
            )
        )
    monkeypatch.setenv("FLIGHTLOG_TOKEN", TOKEN)
    run_id = MlflowClient(central.url).create_run("0").info.run_id
    wait_until(lambda: run_exists(uri, run_id), 30, "the run in the central store")
    monkeypatch.delenv("FLIGHTLOG_TOKEN")  # trainers talk to their node, not to the center
    trainers = [
        Child(
            tmp_path,
            TRAINER.format(
                host_name_code=HOST_NAME_CODE,
                host_name=f"node{i}" if named_by_host(i) else "",
                tests=str(TESTS),
                node=i,
                local_rank=j,
                rank=i * TRAINERS_PER_NODE + j,
                gpus=GPUS,
                url=sidecars[i].url,
                run_id=run_id,
                n=POINTS,
            ),
            env=node_env(tmp_path, i, j),
            name=f"node{i}-rank{i * TRAINERS_PER_NODE + j}",
            stdin=True,
        )
        for i in range(NODES)
        for j in range(TRAINERS_PER_NODE)
    ]
    try:
        for t in trainers:
            assert t.expect("phase", timeout=120) == "0"
        # The central collector dies with batches in flight; every node holds its own
        # batches (the trainers' second third and a few samples of every sampler).
        central.stop(signal.SIGKILL)
        killed_at = time.time()
        next_phase(trainers, "1")
        for s in sidecars:
            wait_until(lambda s=s: backlog(s) > 0, 30, "batches held on every node")
        outlast(killed_at)
        back_at = time.time()
        central = start_central(tmp_path, "central", uri, central.port)
        wait_until_all_forward(sidecars)
        # The database crash-restarts under the live collector while every node's
        # sampler keeps sending; the trainers log their last third on the restarted one.
        pg_down_at = time.time()
        pg_server.restart()
        next_phase(trainers, "2")
        wait_until_all_forward(sidecars)
        outlast(pg_down_at)
        pg_seen_at = time.time()
        # Each node's sampling trainer ends the run first; the other one on its node
        # takes the node over, once, and ends after it.
        holders = [latest_sampler(uri, run_id, i) for i in range(NODES)]
        finish([trainers[i * TRAINERS_PER_NODE + holders[i]] for i in range(NODES)])
        wait_until(
            lambda: all(latest_sampler(uri, run_id, i) != holders[i] for i in range(NODES)),
            60,
            "the other trainer on every node to take the node over",
        )
        finish([t for t in trainers if t.proc.poll() is None])
        for s in sidecars:
            wait_until(lambda s=s: backlog(s) == 0, 60, "every node to forward everything")
    finally:
        stop_all(trainers, sidecars, central)

    stored = stored_series(uri, run_id)
    ranks = NODES * TRAINERS_PER_NODE

    # Training points: every one stored exactly once, own keys and the shared key alike.
    for rank in range(ranks):
        own = stored[f"loss/rank{rank}"].points()
        assert [(step, value) for step, _, value in own] == [(i, i * 0.5) for i in range(POINTS)]
    shared = stored["shared/throughput"].points()
    assert [step for step, _, _ in shared] == list(range(ranks * POINTS))
    assert all(value == step // POINTS for step, _, value in shared)

    # System metrics: named per node, and only for the nodes there are.
    system_keys = [k for k in stored if k.startswith("system/")]
    labels = {f"node{i}" for i in range(NODES)}
    assert {k.split("/")[1] for k in system_keys} == labels, "a series without a node label"

    for i in range(NODES):
        prefix = f"system/node{i}/"
        # Every rank reports its own process each tick: steps 0, 1, 2, ... once each.
        for j in range(TRAINERS_PER_NODE):
            rss = stored[f"{prefix}rank_{i * TRAINERS_PER_NODE + j}/process_rss_megabytes"]
            assert sorted(rss.steps) == list(range(len(rss.steps))), (i, j)

        # Who sampled the node, point by point, from GPU 0's SM clock.
        clock = stored[f"{prefix}gpu_0_sm_clock_mhz"].points()
        assert len(clock) >= 8, f"node {i}: too few samples to judge"
        samplers: dict[int, list[tuple[int, float]]] = {}
        for step, ts, value in clock:
            samplers.setdefault(sampled_by(i, 0, value), []).append((step, ts))
        # One sampler at a time: the second took over only when the first had stopped,
        # so their time spans do not overlap, and it went on with the node's steps:
        # the node's series has steps 0, 1, 2, ... in time order, each stored once.
        assert set(samplers) == set(range(TRAINERS_PER_NODE)), (i, set(samplers))
        spans = sorted((min(ts for _, ts in p), max(ts for _, ts in p)) for p in samplers.values())
        for (_, first_end), (second_start, _) in pairwise(spans):
            assert first_end < second_start, f"node {i}: two samplers at once: {spans}"
        assert spans[0][0] == min(ts for _, ts in samplers[holders[i]]), i
        in_time_order = [step for step, _, _ in sorted(clock, key=lambda point: point[1])]
        assert in_time_order == list(range(len(clock))), f"node {i}: steps {in_time_order}"

        # Every GPU's every reading, and the node's memory, comes from those same samples,
        # each once, with this node's values for this GPU.
        reference = [(step, ts) for step, ts, _ in clock]
        for g in range(GPUS):
            for reading in GPU_READINGS:
                series = stored[f"{prefix}gpu_{g}_{reading}"].points()
                assert [(step, ts) for step, ts, _ in series] == reference, (i, g, reading)
            clock_g = stored[f"{prefix}gpu_{g}_sm_clock_mhz"].points()
            assert [sampled_by(i, g, v) for _, _, v in clock_g] == [
                sampled_by(i, 0, v) for _, _, v in clock
            ], (i, g)
            util = {v for _, _, v in stored[f"{prefix}gpu_{g}_utilization_percentage"].points()}
            assert util == {10.0 * i + g}
            memory = {v for _, _, v in stored[f"{prefix}gpu_{g}_memory_usage_megabytes"].points()}
            assert memory == {(i + 1) * 1000.0 + g * 100.0}
        memory_points = stored[f"{prefix}system_memory_usage_megabytes"].points()
        assert [(step, ts) for step, ts, _ in memory_points] == reference, i
        # The node was sampled through both outages, and those samples arrived.
        assert any(killed_at < ts < back_at for _, ts in reference), f"node {i}: central"
        assert any(pg_down_at < ts < pg_seen_at for _, ts in reference), f"node {i}: database"

    with psycopg.connect(uri) as conn:
        status = conn.execute("SELECT status FROM runs WHERE run_uuid = %s", (run_id,)).fetchone()
    assert status == ("FINISHED",)

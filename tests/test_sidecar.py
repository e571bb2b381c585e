"""Node sidecars (agent/forward.py): trainer -> sidecar -> central collector, real processes.

A sidecar is ``flightlog collector --store DIR --upstream URL``: it acknowledges a batch
once it is fsync'ed in its buffer, forwards batches upstream in order with their batch
ids, rides out upstream outages and its own restarts, and passes every other request
(run reads, REST, artifacts) through.
"""

from __future__ import annotations

import dataclasses
import signal
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import CollectorProcess, free_port, start_collector
from helpers import run_status, stored_points
from test_reliability import Child, query, steps_stored, wait_until

import flightlog
from flightlog import MlflowClient
from flightlog.agent.transport import CollectorClient
from flightlog.core.wire import encode_batch

TOKEN = "central-secret"
#: The flightlog CLI runs the sidecar (``flightlog collector --upstream``).
SIDECAR_COMMAND = ("-m", "flightlog", "collector")


@pytest.fixture(autouse=True)
def _own_spool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Agent spools go under the test's directory; no token leaks in from outside."""
    monkeypatch.setenv("FLIGHTLOG_SPOOL_DIR", str(tmp_path / "spool"))
    for var in ("FLIGHTLOG_TOKEN", "FLIGHTLOG_UPSTREAM", "FLIGHTLOG_UPSTREAM_TOKEN"):
        monkeypatch.delenv(var, raising=False)


def start_sidecar(
    buffer: Path,
    upstream: str,
    port: int | None = None,
    *extra: str,
    token: str | None = TOKEN,
    host: str | None = None,
) -> CollectorProcess:
    """A sidecar process forwarding to ``upstream`` with the upstream token in its env.

    ``host`` puts it on another loopback address (127.0.0.2, ...), as a separate node's
    sidecar would be; its ``url`` then names that address.
    """
    env = {"FLIGHTLOG_UPSTREAM_TOKEN": token} if token else {}
    where = ("--host", host) if host else ()
    sidecar = start_collector(
        buffer, port, "--upstream", upstream, *where, *extra, env=env, command=SIDECAR_COMMAND
    )
    if host:
        sidecar = dataclasses.replace(sidecar, url=sidecar.url.replace("127.0.0.1", host))
    return sidecar


def stop_all(
    children: list[Child], sidecars: list[CollectorProcess], central: CollectorProcess
) -> None:
    """Kill the trainers left running, then stop the nodes and the central collector."""
    for child in children:
        child.kill()
    for sidecar in sidecars:
        sidecar.stop()
    central.stop()


def health(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + "/health", timeout=10) as r:
        body: dict[str, Any] = orjson.loads(r.read())
        return body


def backlog(sidecar: CollectorProcess) -> int:
    return int(health(sidecar.url)["backlog_batches"])


def one_point_batch(run_id: str) -> bytes:
    """A batch creating a run in experiment 0 and logging one point to it."""
    create = ["create_run", {"run_id": run_id, "experiment_id": "0", "start_time": 1}]
    return encode_batch("c" * 32, "agent", [create], ([run_id], ["m"], [1.0], [0], [1.0]))


TRAINER = """
import sys
import flightlog as mlflow
mlflow.set_tracking_uri("{url}")
with mlflow.start_run() as run:
    print("run", run.info.run_id, flush=True)
    for i in range({n}):
        mlflow.log_metric("loss", i * 0.001, step=i)
        if (i + 1) % {every} == 0:
            print("at", i + 1, flush=True)
            if i + 1 in {pauses}:
                sys.stdin.readline()  # the test breaks something meanwhile
    agent = mlflow.MlflowClient().ctx.agent
    print("flushed", agent.flush(timeout=180, through_outage=True), flush=True)
print("done", flush=True)
"""


def start_trainer(tmp_path: Path, url: str, n: int, pauses: tuple[int, ...]) -> tuple[Child, str]:
    """A trainer process logging ``n`` points through ``url`` that waits for a line on
    its stdin at each step of ``pauses``; returned with its run id."""
    child = Child(
        tmp_path,
        TRAINER.format(url=url, n=n, every=50_000, pauses=pauses),
        env={"FLIGHTLOG_FLUSH_INTERVAL": "0.2"},
        stdin=True,
    )
    return child, child.expect("run")


def test_trainer_through_sidecar_with_central_killed_and_restarted_stores_every_point_once(
    tmp_path: Path,
) -> None:
    central_store = tmp_path / "central"
    central = start_collector(central_store, None, "--token", TOKEN)
    sidecar = start_sidecar(tmp_path / "node", central.url)
    n, pauses = 600_000, (200_000, 400_000)
    child, run_id = start_trainer(tmp_path, sidecar.url, n, pauses)
    try:
        for at in pauses:
            while int(child.expect("at")) < at:
                pass
            central.stop(signal.SIGKILL)  # mid-run, batches in flight, no goodbye
            child.send("go")
            child.expect("at")  # the trainer logs on: the sidecar acknowledges
            wait_until(lambda: backlog(sidecar) > 0, 30, "batches to wait in the buffer")
            assert health(sidecar.url)["upstream_error"]
            central = start_collector(central_store, central.port, "--token", TOKEN)
        assert child.expect("flushed", timeout=240) == "True"
        child.expect("done")
        assert child.wait() == 0
        wait_until(lambda: backlog(sidecar) == 0, 120, "the sidecar to drain its buffer")
    finally:
        child.kill()
        sidecar.stop()
        central.stop()
    steps = steps_stored(central.db, run_id, "loss")
    assert len(steps) == n and len(set(steps)) == n  # every point once: none lost, none twice
    assert run_status(central.db, run_id) == "FINISHED"
    # Nothing is left in the node's buffer once everything was forwarded.
    assert not list((tmp_path / "node" / "forward").rglob("*.seg"))


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_sidecar_restarted_mid_run_resumes_forwarding_where_it_stopped(
    tmp_path: Path, how: signal.Signals
) -> None:
    central = start_collector(tmp_path / "central", None, "--token", TOKEN)
    sidecar = start_sidecar(tmp_path / "node", central.url)
    port = sidecar.port
    n, pauses = 400_000, (100_000,)
    child, run_id = start_trainer(tmp_path, sidecar.url, n, pauses)
    try:
        while int(child.expect("at")) < pauses[0]:
            pass
        # The upstream goes away too, so the buffer holds batches when the sidecar dies.
        central.stop(signal.SIGKILL)
        child.send("go")
        child.expect("at")
        wait_until(lambda: backlog(sidecar) > 0, 30, "acknowledged batches in the buffer")
        sidecar.stop(how)
        assert list((tmp_path / "node" / "forward").rglob("*.seg"))
        # (the trainer's agent spools while the sidecar is away)
        central = start_collector(tmp_path / "central", central.port, "--token", TOKEN)
        sidecar = start_sidecar(tmp_path / "node", central.url, port)
        assert child.expect("flushed", timeout=240) == "True"
        child.expect("done")
        assert child.wait() == 0
        wait_until(lambda: backlog(sidecar) == 0, 120, "the restarted sidecar to drain")
    finally:
        child.kill()
        sidecar.stop()
        central.stop()
    steps = steps_stored(central.db, run_id, "loss")
    assert len(steps) == n and len(set(steps)) == n
    assert run_status(central.db, run_id) == "FINISHED"
    # The dead sidecar's buffer directory was adopted, forwarded and removed.
    assert not list((tmp_path / "node" / "forward").rglob("*.seg"))


def test_reads_rest_and_artifacts_pass_through_and_see_the_runs_own_writes(
    tmp_path: Path,
) -> None:
    central = start_collector(tmp_path / "central", None, "--token", TOKEN)
    sidecar = start_sidecar(tmp_path / "node", central.url)
    try:
        flightlog.set_tracking_uri(sidecar.url)
        exp = flightlog.set_experiment("team")  # an RPC: passed through
        with flightlog.start_run() as run:
            flightlog.log_param("lr", "0.01")
            for i in range(1000):
                flightlog.log_metric("loss", 1.0 / (i + 1), step=i)
            artifact = tmp_path / "notes.txt"
            artifact.write_bytes(b"x" * (3 << 20))  # several stream blocks
            flightlog.log_artifact(str(artifact))
        client = MlflowClient()
        # Read-your-writes: the reads wait for the batches acknowledged before them.
        got = client.get_run(run.info.run_id)
        assert got.data.params == {"lr": "0.01"}
        assert got.info.status == "FINISHED"
        assert len(client.get_metric_history(run.info.run_id, "loss")) == 1000
        found = client.search_runs([exp.experiment_id], "metrics.loss < 0.01")
        assert [r.info.run_id for r in found] == [run.info.run_id]
        back = Path(client.download_artifacts(run.info.run_id, "notes.txt", str(tmp_path / "d")))
        assert back.read_bytes() == artifact.read_bytes()
        # MLflow's REST API through the sidecar, with no token on the node side.
        req = urllib.request.Request(
            sidecar.url + "/api/2.0/mlflow/runs/get?run_id=" + run.info.run_id
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            assert orjson.loads(r.read())["run"]["info"]["run_id"] == run.info.run_id
        # The data is in the central store, not in the sidecar's directory.
        assert stored_points(central.db, run.info.run_id, "loss") == 1000
        assert not (tmp_path / "node" / "flightlog.db").exists()
    finally:
        sidecar.stop()
        central.stop()


def test_a_wrong_upstream_token_keeps_batches_and_the_error_is_visible(tmp_path: Path) -> None:
    central = start_collector(tmp_path / "central", None, "--token", TOKEN)
    sidecar = start_sidecar(tmp_path / "node", central.url, None, token="wrong")
    try:
        run_id = "a" * 32
        status, _, _ = CollectorClient(sidecar.url).request(
            "POST", "/api/flightlog/ingest", one_point_batch(run_id)
        )
        assert status == 200  # acknowledged: durable on the node
        wait_until(lambda: health(sidecar.url)["upstream_error"], 30, "the 401 to show")
        assert "401" in health(sidecar.url)["upstream_error"]
        assert backlog(sidecar) >= 1
        # Passed-through requests get the upstream's answer, not a 5xx of the sidecar's.
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(sidecar.url + "/api/2.0/mlflow/experiments/get?experiment_id=0")
        assert e.value.code in (401, 503)
    finally:
        sidecar.stop()
        central.stop()
    # Fixed token: the same batches go through, nothing was dropped.
    central = start_collector(tmp_path / "central", central.port, "--token", TOKEN)
    sidecar = start_sidecar(tmp_path / "node", central.url)
    try:
        wait_until(lambda: backlog(sidecar) == 0, 60, "the buffer to drain")
        assert stored_points(central.db, run_id, "m") == 1
    finally:
        sidecar.stop()
        central.stop()


def test_full_buffer_answers_503_with_retry_after_and_bad_batches_400(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    sidecar = start_sidecar(tmp_path / "node", dead, None, "--upstream-buffer-bytes", "20000")
    try:
        client = CollectorClient(sidecar.url)
        m = 500
        columns = (["r" * 32] * m, ["k"] * m, [0.5] * m, list(range(m)), [1.0] * m)
        body = encode_batch("b" * 32, "agent", [], columns)
        statuses = []
        for _ in range(10):
            status, headers, _ = client.request("POST", "/api/flightlog/ingest", body)
            statuses.append((status, headers.get("retry-after")))
        assert statuses[0] == (200, None)
        assert statuses[-1][0] == 503 and statuses[-1][1] is not None
        status, _, data = client.request("POST", "/api/flightlog/ingest", b"not msgpack")
        assert status == 400 and b"msgpack" in data
        # An unreachable upstream: passed-through requests get 503, the sidecar stays up.
        status, headers, _ = client.request("GET", "/api/2.0/mlflow/experiments/get")
        assert status == 503 and "retry-after" in headers
        assert health(sidecar.url)["status"] == "OK"
    finally:
        sidecar.stop()


def test_sidecar_refuses_a_bad_upstream_url(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="not an http"):
        start_collector(tmp_path / "node", None, "--upstream", "ftp://x", command=SIDECAR_COMMAND)
    # The collector module alone points to the CLI for a sidecar.
    with pytest.raises(RuntimeError, match="flightlog collector --upstream"):
        start_collector(tmp_path / "node2", None, "--upstream", "http://127.0.0.1:1")


def test_many_runs_from_two_trainers_are_forwarded_in_order(tmp_path: Path) -> None:
    central = start_collector(tmp_path / "central", None, "--token", TOKEN)
    sidecar = start_sidecar(tmp_path / "node", central.url)
    script = """
    import flightlog as mlflow
    mlflow.set_tracking_uri("{url}")
    with mlflow.start_run() as run:
        for i in range(20000):
            mlflow.log_metric("x", float(i), step=i)
        mlflow.set_tag("last", "yes")
    print("run", run.info.run_id, flush=True)
    """
    children = [Child(tmp_path, script.format(url=sidecar.url), name=f"t{i}") for i in range(2)]
    try:
        run_ids = [c.expect("run") for c in children]
        assert [c.wait() for c in children] == [0, 0]
        wait_until(lambda: backlog(sidecar) == 0, 60, "the buffer to drain")
    finally:
        for c in children:
            c.kill()
        sidecar.stop()
        central.stop()
    for rid in run_ids:
        assert sorted(steps_stored(central.db, rid, "x")) == list(range(20000))
        assert run_status(central.db, rid) == "FINISHED"
        assert query(central.db, "SELECT value FROM tags WHERE run_uuid=? AND key='last'", rid)

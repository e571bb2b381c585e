"""Ring references across a slow collector: a batch whose reference is out while the
collector lags goes to the disk spool (its ring slots are freed, the ring having filled
past half), so the collector refuses the reference when it finally reads it. The batch
is resent from the spool, every point is stored once, and later batches still name their
records: the refusal said nothing about the collector reading the ring."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import start_collector
from helpers import stored_points

# The transport is wrapped (the seam): one reference, once 20,000 steps are logged, is
# held back until its slots are freed (the training loop logs on, so the ring spills), as
# if the collector took that long to read it.
TRAINER = r"""
import json, sys, threading, time
import msgpack
import flightlog as mlflow
mlflow.set_tracking_uri(sys.argv[1])
n = int(sys.argv[2])
logged = 0
held = threading.Event()
answered = threading.Event()
with mlflow.start_run() as run:
    print(run.info.run_id, flush=True)
    agent = mlflow.MlflowClient().ctx.agent
    versions = []
    inner = agent.delivery.sender.send
    def send(body, timeout=None):
        batch = msgpack.unpackb(body, raw=False)
        ref = batch.get("r", {}).get("ref")
        if ref and logged > 20_000 and not held.is_set():
            held.set()
            deadline = time.monotonic() + 60
            while agent.ring.acked < ref[4] and time.monotonic() < deadline:
                time.sleep(0.01)  # the training loop fills the ring meanwhile: it spills
            ack = inner(body, timeout)
            versions.append([batch["v"], ack.status])
            answered.set()
            return ack
        ack = inner(body, timeout)
        if batch.get("r"):
            versions.append([batch["v"], ack.status])
        return ack
    agent.delivery.sender.send = send
    i = 0
    while i < n and not answered.is_set():  # until the held reference is answered
        mlflow.log_metrics({"loss": i * 0.5, "acc": i * 0.25}, step=i)
        logged = i = i + 1
    for i in range(i, i + 5_000):  # then more, at the collector's pace: references?
        mlflow.log_metrics({"loss": i * 0.5, "acc": i * 0.25}, step=i)
        if i % 1_000 == 0:
            mlflow.flush()
    mlflow.flush()
    print(json.dumps({"steps": i + 1, "versions": versions, "refs": agent.ring_refs,
                      "dropped": dict(agent.dropped)}), flush=True)
"""


def test_a_reference_spilled_while_out_does_not_turn_references_off(tmp_path: Path) -> None:
    steps = 3_000_000  # at most: the trainer logs until the held reference is answered
    env = {
        **os.environ,
        "FLIGHTLOG_SPOOL_DIR": str(tmp_path / "spool"),
        "FLIGHTLOG_MAX_QUEUE": "100000",  # a ring of 100,000: past 50,000 held it spills
    }
    c = start_collector(tmp_path / "store", env=env)
    try:
        proc = subprocess.run(
            [sys.executable, "-c", TRAINER, c.url, str(steps)],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.splitlines()
        run_id, result = lines[0].strip(), json.loads(lines[-1])
        versions = [tuple(v) for v in result["versions"]]
        assert versions.count((3, 400)) == 1, versions  # the reference held back
        refused = versions.index((3, 400))
        assert versions[refused + 1] == (2, 200)  # resent with its records, from the spool
        assert (3, 200) in versions[refused + 1 :], versions  # references again after it
        assert result["refs"] is True and result["dropped"] == {}
        for key in ("loss", "acc"):
            assert stored_points(c.db, run_id, key) == result["steps"]
    finally:
        c.stop()

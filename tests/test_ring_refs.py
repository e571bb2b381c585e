"""Ring references: a collector on the node reads a batch's records from the ring file.

End to end with a real collector process and trainer: batches to a collector that
watches the trainer's rings directory are a few dozen bytes (wire version 3) and every
point arrives once; a collector that cannot read the ring refuses the reference and the
agent sends the records inline, losing and reporting nothing. Then the reader itself
(``core.ring_refs.LocalRings``) against references that must be refused, and the
outbox writing a reference's records to the disk spool.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import msgpack
import pytest
from conftest import start_collector
from helpers import stored_points

from flightlog.agent.outbox import Outbox
from flightlog.agent.ring import RECORD, Ring
from flightlog.agent.spool import Spool
from flightlog.core.exceptions import WireError
from flightlog.core.ring_format import ACKED, ACKED_AT
from flightlog.core.ring_refs import LocalRings
from flightlog.core.wire import decode_batch, encode_raw_batch

TRAINER = r"""
import json, sys
import msgpack
import flightlog as mlflow
mlflow.set_tracking_uri(sys.argv[1])
n = int(sys.argv[2])
with mlflow.start_run() as run:
    agent = mlflow.MlflowClient().ctx.agent
    sent = []
    inner = agent.delivery.sender.send
    def send(body, timeout=None):
        batch = msgpack.unpackb(body, raw=False)
        ack = inner(body, timeout)
        if batch.get("r"):
            sent.append([batch["v"], len(body), ack.status])
        return ack
    agent.delivery.sender.send = send
    for i in range(n):
        mlflow.log_metrics({"loss": i * 0.5, "acc": i * 0.25, "lr": 0.1}, step=i)
    mlflow.flush()
    print(json.dumps({"run_id": run.info.run_id, "sent": sent, "refs": agent.ring_refs,
                      "dropped": dict(agent.dropped)}))
"""


def _train(url: str, spool: Path, steps: int) -> dict[str, object]:
    env = {**os.environ, "FLIGHTLOG_SPOOL_DIR": str(spool), "FLIGHTLOG_BATCH_POINTS": "20000"}
    proc = subprocess.run(
        [sys.executable, "-c", TRAINER, url, str(steps)],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    out: dict[str, object] = json.loads(proc.stdout.splitlines()[-1])
    return out


def test_batches_to_the_node_collector_name_their_records_and_all_arrive(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    c = start_collector(tmp_path / "store", env={**os.environ, "FLIGHTLOG_SPOOL_DIR": str(spool)})
    try:
        out = _train(c.url, spool, 100_000)
        sent = out["sent"]
        assert isinstance(sent, list) and len(sent) >= 5  # batches of at most 20,000 points
        # Every batch of points named its records: version 3, a few dozen bytes each
        # (inline, 20,000 records would be 640,000 bytes), all accepted.
        assert {v for v, _, _ in sent} == {3}
        assert max(size for _, size, _ in sent) < 1_000
        assert {status for _, _, status in sent} == {200}
        assert out["refs"] is True and out["dropped"] == {}
        assert stored_points(c.db, str(out["run_id"])) == 300_000
        for key in ("loss", "acc", "lr"):
            assert stored_points(c.db, str(out["run_id"]), key) == 100_000
    finally:
        c.stop()


def test_a_collector_that_cannot_read_the_ring_gets_the_records_inline(tmp_path: Path) -> None:
    """The collector watches another spool directory than the trainer's: it refuses the
    first reference (400), the agent resends that batch with its records and sends every
    later one so; nothing is lost, dropped or raised."""
    c = start_collector(
        tmp_path / "store", env={**os.environ, "FLIGHTLOG_SPOOL_DIR": str(tmp_path / "other")}
    )
    try:
        out = _train(c.url, tmp_path / "spool", 30_000)
        sent = out["sent"]
        assert isinstance(sent, list)
        # Each reference (those cut before the first refusal came back) is refused and
        # then sent with its records; once refused, batches are cut with their records.
        assert sent[0][0] == 3
        assert all(status == (400 if v == 3 else 200) for v, _, status in sent), sent
        assert all(sent[i + 1][0] == 2 for i, (v, _, _) in enumerate(sent) if v == 3)
        assert sent[-1][0] == 2 and len(sent) > 2
        assert out["refs"] is False and out["dropped"] == {}
        assert stored_points(c.db, str(out["run_id"])) == 90_000
    finally:
        c.stop()


# -- the reader, with a real ring file ---------------------------------------------------


RING_ID = "ab" * 16


@pytest.fixture
def ring(tmp_path: Path) -> Ring:
    r = Ring(tmp_path / "spool-rings", RING_ID, 8)
    sid = r.series_index("c" * 32, "loss")
    for step in range(5):
        _seq, offset, lap = next(r.slots)
        r.pack_into(r.mm, offset, step, step * 0.5, 1e9 + step, sid, lap)
    return r


def _read(ring: Ring, start: int, end: int) -> tuple[bytes, dict[int, tuple[str, str]]]:
    return LocalRings([ring.directory.parent], 100)(ring.ref(start, end))


def test_the_reader_takes_published_records_and_the_ids_they_use(ring: Ring) -> None:
    records, table = _read(ring, 1, 5)
    assert len(records) == 4 * RECORD and table == {0: ("c" * 32, "loss")}
    body = encode_raw_batch("b", "a", [], None, ref=ring.ref(1, 5))
    reader = LocalRings([ring.directory.parent], 100)
    _, _, _, series = decode_batch(body, rings=reader)
    assert [(s[1], list(s[2]), list(s[3])) for s in series] == [
        ("loss", [1, 2, 3, 4], [0.5, 1.0, 1.5, 2.0])
    ]
    with pytest.raises(WireError, match="does not read ring records by reference"):
        decode_batch(body)  # a sidecar, or any endpoint without a reader


@pytest.mark.parametrize(
    ("ring_id", "pid", "end", "message"),
    [
        ("../../etc", None, 5, "not a ring id"),
        ("cd" * 16, None, 5, "not under a rings directory this collector reads"),
        (RING_ID, 1, 5, "belongs to another process"),
        (RING_ID, None, 6, "holds no published record at position 5"),  # unwritten
        (RING_ID, None, 9, "not in ring .* window \\[0, 8\\)"),
    ],
)
def test_the_reader_refuses_what_the_ring_does_not_hold(
    ring: Ring, ring_id: str, pid: int | None, end: int, message: str
) -> None:
    next(ring.slots)  # slot 5 reserved by a writer that has not written it yet
    reader = LocalRings([ring.directory.parent], 100)
    with pytest.raises(WireError, match=message):
        reader((ring_id, ring.pid if pid is None else pid, ring.started, 0, end))


def test_a_reference_must_be_a_range() -> None:
    body = msgpack.packb({"v": 3, "ops": [], "r": {"ref": [RING_ID, 1, 1, 3, 2]}})
    with pytest.raises(WireError, match="not a range"):
        decode_batch(body, rings=LocalRings([], 100))
    body = msgpack.packb({"v": 3, "ops": [], "r": {"ref": [RING_ID, True, 1, 0, 2]}})
    with pytest.raises(WireError, match="must be \\[ring id, pid"):
        decode_batch(body, rings=LocalRings([], 100))


def test_the_reader_refuses_freed_slots_too_many_records_and_odd_files(
    ring: Ring, tmp_path: Path
) -> None:
    ACKED.pack_into(ring.mm, ACKED_AT, 3, 0)  # the agent freed slots 0..2 (spooled)
    with pytest.raises(WireError, match="window \\[3, 11\\)"):
        _read(ring, 0, 5)
    ACKED.pack_into(ring.mm, ACKED_AT, 0, 0)
    with pytest.raises(WireError, match="names 200 records, over 100"):
        _read(ring, 0, 200)
    target = tmp_path / "elsewhere"
    os.replace(ring.directory / "ring", target)
    (ring.directory / "ring").symlink_to(target)
    with pytest.raises(WireError, match="cannot open"):
        _read(ring, 0, 5)
    (ring.directory / "ring").unlink()
    os.mkfifo(ring.directory / "ring")
    with pytest.raises(WireError, match="not a regular file"):
        _read(ring, 0, 5)
    # A link named like a ring, to a ring directory elsewhere, is not followed.
    (ring.directory / "ring").unlink()
    os.replace(target, ring.directory / "ring")
    elsewhere = tmp_path / "elsewhere-rings"
    elsewhere.mkdir()
    os.replace(ring.directory, elsewhere / RING_ID)
    ring.directory.symlink_to(elsewhere / RING_ID)
    with pytest.raises(WireError, match="not under a rings directory"):
        _read(ring, 0, 5)


def test_the_ids_table_is_read_as_it_grows_and_a_torn_entry_waits(ring: Ring) -> None:
    reader = LocalRings([ring.directory.parent], 100)
    ref = ring.ref(0, 5)
    assert reader(ref)[1] == {0: ("c" * 32, "loss")}
    entry = msgpack.packb([2, 1, "c" * 32, "acc"])
    with open(ring.directory / "ids", "ab") as f:
        f.write(entry[:5])  # the owner is writing it
        f.flush()
        assert set(reader(ref)[1]) == {0}
        f.write(entry[5:])
    assert reader(ref)[1] == {0: ("c" * 32, "loss"), 1: ("c" * 32, "acc")}


def test_a_spilled_reference_goes_to_the_spool_with_its_records(ring: Ring, tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", owner="x" * 8, tracking_uri="http://127.0.0.1:1")
    outbox = Outbox(spool, 1 << 20)
    outbox.materialize = ring.materialize
    body = encode_raw_batch("b1", "a", [], None, ref=ring.ref(0, 5))
    entry = outbox.add(5, body, ref=True)
    assert outbox.body(outbox.entries[0]) == (body, True)
    outbox.spill()
    spooled, is_ref = outbox.body(outbox.entries[0])
    assert not is_ref and entry == outbox.entries[0].seq
    _, _, _, series = decode_batch(spooled)  # no reader needed: the records are in it
    assert [list(s[2]) for s in series] == [[0, 1, 2, 3, 4]]
    # The slots may now be written over: the spool's copy stays what was cut.
    for step in range(10, 18):
        _seq, offset, lap = next(ring.slots)
        ring.pack_into(ring.mm, offset, step, 0.0, 0.0, 0, lap)
    assert ring.materialize(body) is None  # the ring no longer holds them
    assert decode_batch(outbox.body(outbox.entries[0])[0])[3][0][2].tolist() == [0, 1, 2, 3, 4]


def test_a_node_sidecar_reads_the_references_and_forwards_the_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Trainer -> sidecar on the node -> central collector: the trainer's batches name
    their records (accepted by the sidecar), the sidecar buffers and forwards them with
    the records (the central collector, another node's, could not read the ring)."""
    from test_reliability import wait_until
    from test_sidecar import start_sidecar

    spool = tmp_path / "spool"
    central = start_collector(
        tmp_path / "central", env={**os.environ, "FLIGHTLOG_SPOOL_DIR": str(tmp_path / "x")}
    )
    monkeypatch.setenv("FLIGHTLOG_SPOOL_DIR", str(spool))  # the sidecar's, as the trainer's
    sidecar = start_sidecar(tmp_path / "node", central.url, token=None)
    try:
        out = _train(sidecar.url, spool, 40_000)
        sent = out["sent"]
        assert isinstance(sent, list) and {(v, s) for v, _, s in sent} == {(3, 200)}
        assert out["refs"] is True and out["dropped"] == {}
        run_id = str(out["run_id"])
        wait_until(lambda: stored_points(central.db, run_id) == 120_000, 60, "forwarding")
    finally:
        sidecar.stop()
        central.stop()

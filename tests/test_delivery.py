"""Delivery logic at the network seam: backoff, Retry-After, outages, lost
acknowledgements, slow sends, with :class:`MemorySender` in place of a collector.

These run in milliseconds; tests/test_reliability*.py check the same guarantees with
real collector processes.
"""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from flightlog.agent.delivery import BACKOFF_MAX, BACKOFF_START, Backoff, DeliveryLoop, send_claim
from flightlog.agent.heartbeats import Heartbeats
from flightlog.agent.sender import OK, REJECTED, RETRY, Ack, MemorySender
from flightlog.agent.spool import ClaimedSpool, RecordRef, Spool
from flightlog.agent.transport import CollectorClient, HttpSender, parse_retry_after
from flightlog.agent.worker import Agent
from flightlog.core.exceptions import CollectorUnavailable, MlflowException
from flightlog.core.wire import encode_batch, pack, unpack

RUN = "r" * 32


def batch(n: int = 3, batch_id: str | None = None) -> bytes:
    """An encoded batch of ``n`` points of one run."""
    columns: list[list[Any]] = [
        [RUN] * n,
        ["loss"] * n,
        [float(i) for i in range(n)],
        list(range(n)),
        [1.0] * n,
    ]
    return encode_batch(batch_id or f"b{n}-{time.monotonic_ns()}", "agent", [], columns)


class Waits:
    """A ``wait`` for DeliveryLoop that records the pauses instead of sleeping."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.pauses: list[float] = []
        self.stop_after = stop_after

    def __call__(self, seconds: float) -> bool:
        self.pauses.append(seconds)
        return self.stop_after is None or len(self.pauses) < self.stop_after


# -- backoff --------------------------------------------------------------------------------


def test_backoff_doubles_from_the_start_to_the_cap_with_jitter() -> None:
    b = Backoff(rng=lambda: 0.5)  # no jitter: x1.0
    waits = [b.next() for _ in range(12)]
    assert waits[0] == pytest.approx(BACKOFF_START)
    assert waits[1] == pytest.approx(2 * BACKOFF_START)
    assert waits[-1] == pytest.approx(BACKOFF_MAX)
    assert all(a <= z for a, z in itertools.pairwise(waits))
    low, high = Backoff(rng=lambda: 0.0), Backoff(rng=lambda: 0.999)
    assert low.next() == pytest.approx(0.5 * BACKOFF_START)
    assert high.next() == pytest.approx(1.499 * BACKOFF_START)
    b.reset()
    assert b.next() == pytest.approx(BACKOFF_START)


def test_backoff_honours_retry_after_as_the_least_wait() -> None:
    b = Backoff(rng=lambda: 0.5)
    assert b.next(retry_after=3.0) == 3.0
    assert b.next(retry_after=0.0) == pytest.approx(2 * BACKOFF_START)


# -- the loop ---------------------------------------------------------------------------------


def test_outage_is_counted_once_and_delivery_resumes_when_the_collector_is_back() -> None:
    sender = MemorySender(["down", "down", "down"])
    failures: list[bool] = []
    successes: list[bool] = []
    waits = Waits()
    loop = DeliveryLoop(
        sender,
        wait=waits,
        on_failure=lambda: failures.append(True),
        on_success=lambda: successes.append(True),
        backoff=Backoff(rng=lambda: 0.5),
    )
    ack = loop.deliver(batch(5))
    assert ack is not None and ack.outcome == OK
    assert len(sender.attempts) == 4
    assert waits.pauses == pytest.approx([0.05, 0.1, 0.2])
    assert len(failures) == 3 and successes == [True]
    assert loop.outages == 1 and loop.reachable
    assert sender.points() == 5
    # A second outage counts again; the backoff starts afresh after the success.
    sender.script.extend(["down"])
    loop.deliver(batch(2))
    assert loop.outages == 2
    assert waits.pauses[-1] == pytest.approx(0.05)


def test_503_with_retry_after_waits_as_asked_and_stores_nothing_until_accepted() -> None:
    sender = MemorySender([503, 429], retry_after=7.0)
    waits = Waits()
    loop = DeliveryLoop(sender, wait=waits)
    ack = loop.deliver(batch(4))
    assert ack is not None and ack.outcome == OK
    assert waits.pauses == [7.0, 7.0]
    assert len(sender.attempts) == 3
    assert sender.points() == 4 and sender.duplicates == 0


def test_lost_acknowledgement_resends_the_same_batch_which_is_stored_once() -> None:
    sender = MemorySender(["lost", "lost"])
    loop = DeliveryLoop(sender, wait=Waits())
    body = batch(6, batch_id="same-id")
    ack = loop.deliver(body)
    assert ack is not None and ack.outcome == OK
    assert len(sender.attempts) == 3
    assert list(sender.batches) == ["same-id"]
    assert sender.duplicates == 2
    assert sender.points() == 6


def test_a_rejected_batch_is_not_retried() -> None:
    rejection = Ack(REJECTED, 400, [{"op": "batch", "message": "bad"}], 0.0, "HTTP 400")
    sender = MemorySender([rejection])
    answers: list[Ack] = []
    waits = Waits()
    loop = DeliveryLoop(sender, wait=waits, on_answer=answers.append)
    assert loop.deliver(batch()) == rejection
    assert waits.pauses == [] and answers == [rejection]
    assert sender.points() == 0


def test_a_stopped_wait_ends_delivery_without_an_answer() -> None:
    sender = MemorySender()
    sender.down = True
    loop = DeliveryLoop(sender, wait=Waits(stop_after=3))
    assert loop.deliver(batch()) is None
    assert len(sender.attempts) == 3 and not loop.reachable


def test_give_up_after_ends_a_delivery_that_makes_no_progress() -> None:
    now = [0.0]

    def wait(seconds: float) -> bool:
        now[0] += seconds
        return True

    sender = MemorySender()
    sender.down = True
    loop = DeliveryLoop(sender, wait=wait, give_up_after=10.0, clock=lambda: now[0])
    assert loop.deliver(batch()) is None
    assert 10.0 < now[0] < 10.0 + 2 * BACKOFF_MAX
    assert loop.last is not None and loop.last.message == "connection refused"


def test_a_send_waiting_past_slow_send_counts_as_an_outage() -> None:
    now = [100.0]
    failures: list[bool] = []
    loop = DeliveryLoop(
        MemorySender(), on_failure=lambda: failures.append(True), clock=lambda: now[0]
    )
    assert not loop.check_stalled()  # nothing in flight
    loop.sending_since = now[0]
    now[0] += loop.slow_send - 0.1
    assert not loop.check_stalled() and loop.reachable
    now[0] += 0.2
    assert loop.check_stalled()
    assert not loop.reachable and failures == [True] and loop.outages == 1


def test_send_claim_delivers_a_dead_process_spool_oldest_first(tmp_path: Path) -> None:
    spool = Spool(tmp_path, owner="deadbeef" * 4, tracking_uri="http://127.0.0.1:1")
    bodies = [batch(i + 1, batch_id=f"id{i}") for i in range(5)]
    for seq, body in enumerate(bodies, 1):
        spool.append(seq, seq, body)
    spool.close()
    claim = ClaimedSpool.claim(spool.directory)
    assert claim is not None and len(claim.records) == 5
    sender = MemorySender(["lost", 503, "down"])
    sent: list[tuple[int, str | None]] = []

    def on_sent(ref: RecordRef, ack: Ack | None) -> None:
        sent.append((ref.seq, None if ack is None else ack.outcome))

    assert send_claim(claim, DeliveryLoop(sender, wait=Waits()), on_sent) == 0
    claim.finish()
    assert sent == [(i, OK) for i in range(1, 6)]
    assert list(sender.batches) == [f"id{i}" for i in range(5)]
    assert sender.points() == 15
    assert not spool.directory.exists()


def test_send_claim_stops_with_the_batches_left(tmp_path: Path) -> None:
    spool = Spool(tmp_path, owner="cafebabe" * 4, tracking_uri="http://127.0.0.1:1")
    for seq in range(1, 4):
        spool.append(seq, 1, batch(1, batch_id=f"id{seq}"))
    spool.close()
    claim = ClaimedSpool.claim(spool.directory)
    assert claim is not None
    sender = MemorySender([OK, *["down"] * 100])
    left = send_claim(claim, DeliveryLoop(sender, wait=Waits(stop_after=2)), lambda r, a: None)
    claim.finish()
    assert left == 2
    assert list(sender.batches) == ["id1"]
    # The rest stays for the next agent (a segment goes once all its records are done,
    # so the delivered one may be resent with it: the collector stores a batch id once).
    again = ClaimedSpool.claim(spool.directory)
    assert again is not None and {2, 3} <= {r.seq for r in again.records}
    again.finish()


# -- the HTTP sender's classification ---------------------------------------------------------


class _Client:
    """Stands in for CollectorClient.request: one scripted answer, or no answer."""

    base_url = "http://127.0.0.1:1"

    def __init__(self, status: int, headers: dict[str, str] | None = None, data: Any = b"") -> None:
        self.answer = (status, headers or {}, data)

    def request(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, str], bytes]:
        if self.answer[0] == 0:
            raise CollectorUnavailable("connection refused")
        return self.answer


@pytest.mark.parametrize(
    ("status", "headers", "outcome", "retry_after"),
    [
        (200, {}, OK, 0.0),
        (503, {"retry-after": "2"}, RETRY, 2.0),
        (429, {"retry-after": "1e9"}, RETRY, 60.0),
        (500, {}, RETRY, 0.0),
        (408, {}, RETRY, 0.0),
        (401, {}, RETRY, 5.0),
        (403, {}, RETRY, 5.0),
        (400, {}, REJECTED, 0.0),
        (413, {}, REJECTED, 0.0),
        (0, {}, RETRY, 0.0),
    ],
)
def test_http_sender_classifies_answers(
    status: int, headers: dict[str, str], outcome: str, retry_after: float
) -> None:
    data = pack({"errors": [{"op": "x", "message": "m"}]} if status == 200 else {"message": "no"})
    ack = HttpSender(_Client(status, headers, data)).send(b"body")  # type: ignore[arg-type]
    assert (ack.outcome, ack.status, ack.retry_after) == (outcome, status, retry_after)
    if status == 200:
        assert ack.errors == [{"op": "x", "message": "m"}]
    if outcome == REJECTED:
        assert "no" in ack.errors[0]["message"]


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [(None, 0.0), ("", 0.0), ("3", 3.0), ("-1", 0.0), ("nan", 0.0), ("1000", 60.0)],
)
def test_retry_after_parsing(raw: str | None, seconds: float) -> None:
    assert parse_retry_after(raw) == seconds
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


# -- the agent on a memory sender -------------------------------------------------------------


def make_agent(tmp_path: Path, sender: MemorySender) -> Agent:
    return Agent(
        CollectorClient("http://127.0.0.1:9"),  # never used: the sender stands in
        sender=sender,
        flush_interval=0.02,
        heartbeat_interval=3600,
        spool_root=tmp_path / "spool",
    )


def log_points(agent: Agent, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        agent.submit_metric((RUN, "loss", float(i), i, 1.0))


def test_agent_spools_during_an_outage_and_delivers_everything_once_back(tmp_path: Path) -> None:
    sender = MemorySender()
    sender.down = True
    agent = make_agent(tmp_path, sender)
    try:
        agent.submit_op("create_run", {"run_id": RUN, "experiment_id": "0"})
        log_points(agent, 1000)
        t0 = time.monotonic()
        assert agent.flush(timeout=10) is False  # returns once on disk, not after 10 s
        assert time.monotonic() - t0 < 5
        assert not agent.reachable and agent.outages == 1
        assert list((tmp_path / "spool").glob("*/*.seg"))
        log_points(agent, 500, start=1000)
        sender.down = False
        assert agent.flush(timeout=20, through_outage=True) is True
        assert agent.reachable and agent.outages == 1
        assert sender.points() == 1500
        assert [name for name, _ in sender.ops()] == ["create_run"]
    finally:
        agent.close(timeout=5)
    assert not list((tmp_path / "spool").glob("*/*.seg"))


def test_agent_survives_lost_acknowledgements_without_duplicates(tmp_path: Path) -> None:
    sender = MemorySender(["lost", "lost", "lost"])
    agent = make_agent(tmp_path, sender)
    try:
        log_points(agent, 300)
        assert agent.flush(timeout=20, through_outage=True) is True
        assert sender.points() == 300 and sender.duplicates >= 1
    finally:
        agent.close(timeout=5)


def test_agent_honours_retry_after(tmp_path: Path) -> None:
    sender = MemorySender([503], retry_after=0.5)
    agent = make_agent(tmp_path, sender)
    try:
        log_points(agent, 10)
        assert agent.flush(timeout=20, through_outage=True) is True
        first, second = sender.attempts[:2]
        assert second - first >= 0.5
        assert sender.points() == 10
    finally:
        agent.close(timeout=5)


def test_agent_flush_ends_early_when_a_send_hangs(tmp_path: Path) -> None:
    sender = MemorySender()
    sender.gate = threading.Event()  # the collector accepts but does not answer
    agent = make_agent(tmp_path, sender)
    agent.delivery.slow_send = 0.3
    try:
        log_points(agent, 100)
        t0 = time.monotonic()
        assert agent.flush(timeout=30) is False
        assert time.monotonic() - t0 < 5
        assert not agent.reachable
        sender.gate.set()
        assert agent.flush(timeout=20, through_outage=True) is True
        assert sender.points() == 100
    finally:
        agent.close(timeout=5)


def test_agent_reports_a_refused_token_at_flush(tmp_path: Path) -> None:
    refused = Ack(RETRY, 401, [], 0.05, "HTTP 401: bad token")
    sender = MemorySender([refused, refused])
    agent = make_agent(tmp_path, sender)
    try:
        log_points(agent, 10)
        with pytest.raises(MlflowException, match="FLIGHTLOG_TOKEN"):
            agent.flush(timeout=20, through_outage=True)
        assert sender.points() == 10  # kept and sent once the collector took it
    finally:
        agent.close(timeout=5)


def test_agent_counts_a_rejected_batch(tmp_path: Path) -> None:
    rejection = Ack(REJECTED, 400, [{"op": "batch", "message": "bad batch"}], 0.0, "HTTP 400")
    agent = make_agent(tmp_path, MemorySender([rejection]))
    try:
        log_points(agent, 10)
        with pytest.raises(MlflowException, match="bad batch"):
            agent.flush(timeout=20)
        assert agent.dropped["rejected_http_400"] == 1
    finally:
        agent.close(timeout=5)


def test_heartbeats_cover_the_open_runs_once_per_interval() -> None:
    now = [0.0]
    hb = Heartbeats(10.0, clock=lambda: now[0])
    assert hb.track("create_run", {"run_id": "a"}) == {"run_id": "a", "heartbeat": True}
    assert hb.track("update_run", {"run_id": "b", "status": "RUNNING"})["heartbeat"] is True
    assert hb.due("agent") is None and hb.until_due() == 10.0
    now[0] = 10.0
    due = hb.due("agent")
    assert due is not None and due[0] == 2
    sender = MemorySender()
    assert sender.send(due[1]).outcome == OK and sender.heartbeats == 1
    assert unpack(due[1])["ops"] == [["heartbeat", {"run_id": "a"}], ["heartbeat", {"run_id": "b"}]]
    assert "batch_id" not in unpack(due[1])  # not kept in the collector's table of batch ids
    assert hb.due("agent") is None  # the next one is 10 s later
    assert hb.track("update_run", {"run_id": "a", "status": "FINISHED"}) == {
        "run_id": "a",
        "status": "FINISHED",
    }
    now[0] = 20.0
    due = hb.due("agent")
    assert due is not None and due[0] == 1

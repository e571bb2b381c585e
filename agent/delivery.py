"""Delivery: send a batch through a :class:`~flightlog.agent.sender.Sender` until the
collector acknowledges (or rejects) it. One loop serves the agent's sender thread, the
adopter of dead processes' spools and ``flightlog sync``.

- Backoff: 0.05 s doubling to 5 s, with jitter (x0.5 to x1.5), so that many processes
  that lost the same collector do not knock again in step; a Retry-After the collector
  sent (429/503 when it is swamped) is honoured as the least wait.
- Lost acknowledgements: a batch whose answer did not come back is sent again, the
  same bytes with the same batch id; the collector stores a batch id once.
- Outages: the first failed send after a success (or at the start) is an outage; the
  owner hears of every failure (``on_failure``: the agent moves its outbox to disk) and
  of every success (``on_success``). A send that has been waiting ``slow_send`` seconds
  for an answer can be counted as an outage too (:meth:`DeliveryLoop.check_stalled`): a
  hung collector must not stall ``flush()`` for the client's whole timeout.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from flightlog.agent.sender import RETRY, Ack, Sender
from flightlog.agent.spool import ClaimedSpool, RecordRef

BACKOFF_START = 0.05  # seconds before the first retry
BACKOFF_MAX = 5.0  # the cap of the exponential backoff
SLOW_SEND = 5.0  # seconds a send may take before it counts as an outage


class Backoff:
    """Exponential backoff with jitter; a Retry-After is the least wait."""

    def __init__(
        self,
        start: float = BACKOFF_START,
        cap: float = BACKOFF_MAX,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.start = start
        self.cap = cap
        self.rng = rng
        self.delay = start

    def next(self, retry_after: float = 0.0) -> float:
        """Seconds to wait before the next attempt; doubles the delay for the one after."""
        wait = max(self.delay * (0.5 + self.rng()), retry_after)
        self.delay = min(self.delay * 2, self.cap)
        return wait

    def reset(self) -> None:
        """A send succeeded: the next failure starts from the first delay again."""
        self.delay = self.start


def _sleep(seconds: float) -> bool:
    time.sleep(seconds)
    return True


class DeliveryLoop:
    """Sends bodies one at a time through ``sender`` until each is acknowledged.

    ``wait(seconds)`` sleeps between attempts and returns False to stop (the agent
    waits on its stop event and sends heartbeats meanwhile). ``give_up_after`` ends a
    delivery that has not succeeded for that many seconds (``flightlog sync``).
    ``on_answer`` sees every answer (the agent notes a refused token there).
    """

    def __init__(
        self,
        sender: Sender,
        *,
        wait: Callable[[float], bool] = _sleep,
        on_failure: Callable[[], None] | None = None,
        on_success: Callable[[], None] | None = None,
        on_answer: Callable[[Ack], None] | None = None,
        give_up_after: float | None = None,
        slow_send: float = SLOW_SEND,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sender = sender
        self.wait = wait
        self.on_failure = on_failure
        self.on_success = on_success
        self.on_answer = on_answer
        self.give_up_after = give_up_after
        self.slow_send = slow_send
        self.backoff = backoff or Backoff()
        self.clock = clock
        self.reachable = True  # did the last exchange with the collector succeed?
        self.outages = 0  # times a send failed after one had succeeded (or at the start)
        self.sending_since: float | None = None  # when the current attempt began
        self.last: Ack | None = None  # the last answer

    def attempt(self, body: bytes, timeout: float | None = None) -> Ack:
        """One send, no retry and no change of the outage state (heartbeats)."""
        ack = self.sender.send(body, timeout)
        self.last = ack
        if self.on_answer is not None:
            self.on_answer(ack)
        return ack

    def deliver(self, body: bytes) -> Ack | None:
        """Send ``body`` until it is acknowledged or rejected; None if stopped or given up."""
        began = self.clock()
        while True:
            self.sending_since = self.clock()
            try:
                ack = self.attempt(body)
            finally:
                self.sending_since = None
            if ack.outcome != RETRY:
                self.backoff.reset()
                self.reachable = True
                if self.on_success is not None:
                    self.on_success()
                return ack
            self.failed()
            pause = self.backoff.next(ack.retry_after)
            if self.give_up_after is not None and self.clock() - began > self.give_up_after:
                return None
            if not self.wait(pause):
                return None

    def failed(self) -> None:
        """A send failed (or stalled): count a new outage, tell the owner."""
        if self.reachable:
            self.outages += 1
        self.reachable = False
        if self.on_failure is not None:
            self.on_failure()

    def check_stalled(self) -> bool:
        """Count the send in progress as failed once it has waited ``slow_send`` seconds."""
        since = self.sending_since
        if since is None or self.clock() - since < self.slow_send:
            return False
        self.failed()
        return True


def send_claim(
    claim: ClaimedSpool,
    loop: DeliveryLoop,
    on_sent: Callable[[RecordRef, Ack | None], None],
) -> int:
    """Send a claimed spool's batches oldest first, each until the collector answers.

    Each record is marked done once acknowledged or rejected, or when it is damaged
    (``on_sent`` gets None for it). Returns the number of batches left unsent because
    the loop stopped or gave up.
    """
    left = len(claim.records)
    for ref in list(claim.records):
        body = claim.read(ref)
        ack = None if body is None else loop.deliver(body)
        if body is not None and ack is None:
            return left
        on_sent(ref, ack)
        claim.done(ref)
        left -= 1
    return 0

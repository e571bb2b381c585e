"""The adopter: a thread that sends the spools dead processes left for the same collector.

A process that ended while its collector was away leaves its batches in a spool
directory under the same root. The next agent for that collector claims each directory
whose owner is gone (``flightlog.agent.spool.claim_orphans``) and delivers it, oldest
first, with its own delivery loop on the agent's sender.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from flightlog.agent.delivery import DeliveryLoop, send_claim
from flightlog.agent.drops import DropLedger
from flightlog.agent.ring_adopter import send_dead_ring
from flightlog.agent.sender import Ack, Sender
from flightlog.agent.signals import keep_off_this_thread
from flightlog.agent.spool import ClaimedSpool, RecordRef, claim_orphans
from flightlog.core.ring_format import claim_dead_rings, rings_root

log = logging.getLogger("flightlog.agent")


class Adopter:
    """Claims and sends the orphaned spools under ``root`` (except ``exclude``, our own)."""

    def __init__(
        self,
        root: Path,
        exclude: Path,
        sender: Sender,
        stop: threading.Event,
        drops: DropLedger,
    ) -> None:
        self.root = root
        self.exclude = exclude
        self.sender = sender
        self.stop = stop
        self.drops = drops
        self.claims: list[ClaimedSpool] = []
        self.thread = threading.Thread(target=self._run, name="flightlog-adopter", daemon=True)

    def start(self) -> None:
        """Start the thread."""
        self.thread.start()

    def join(self, timeout: float | None) -> None:
        """Wait up to ``timeout`` seconds for every claimed spool to be sent."""
        self.thread.join(timeout)

    def finish(self) -> None:
        """Let go of the claims: sent directories go, the rest stay for the next agent."""
        for claim in self.claims:
            claim.finish()

    def forget_after_fork(self) -> None:
        """In a forked child: the claims (their locks) stay the parent's."""
        for claim in self.claims:
            claim.forget_after_fork()
        self.claims = []

    def _run(self) -> None:
        keep_off_this_thread()  # SIGTERM goes to the main thread
        try:
            self.claims = claim_orphans(self.root, exclude=self.exclude)
            for claim in self.claims:
                self._send(claim)
                if self.stop.is_set():
                    return
                claim.finish()
        except Exception:
            log.exception("flightlog agent: sending a dead process's spool failed")
        self.send_rings()

    def send_rings(self) -> None:
        """Send the metric rings of dead processes (``flightlog.agent.ring_adopter``)."""
        try:
            for ring in claim_dead_rings(rings_root(self.root)):
                loop = DeliveryLoop(self.sender, wait=lambda s: not self.stop.wait(s))
                if send_dead_ring(ring, loop, f"adopter-{ring.ring_id}"[:64]):
                    ring.finish()
                else:
                    ring.release()
                if self.stop.is_set():
                    return
        except Exception:
            log.exception("flightlog agent: sending a dead process's ring failed")

    def _send(self, claim: ClaimedSpool) -> None:
        log.info(
            "flightlog: sending %d batch(es) (%d points) left in %s by a process that ended",
            len(claim.records),
            claim.points,
            claim.directory,
        )
        # Its own loop (backoff, outage state) on the same sender: the agent's outbox
        # is not concerned by these batches.
        loop = DeliveryLoop(self.sender, wait=lambda s: not self.stop.wait(s))
        send_claim(claim, loop, self._sent)

    def _sent(self, ref: RecordRef, ack: Ack | None) -> None:
        if ack is None:
            self.drops.count("spool_damaged", ref.points)
            log.error("flightlog: a damaged record in %s was skipped", ref.path)
        elif ack.errors:
            log.warning(
                "flightlog: the collector reported %d error(s) for a spooled "
                "batch of an ended process, e.g. %s",
                len(ack.errors),
                ack.errors[0].get("message"),
            )

"""Sending the rings that dead processes left (``flightlog.core.ring_format``), exactly once.

The batches come from :meth:`DeadRing.bodies`, the one recipe every adopter follows (the
next agent here, the node's collector and the sidecar): the owner's cuts re-made with the
same batch ids, the rest in cuts whose ids come from ring positions, then the runs the
owner never ended, ended FAILED.
"""

from __future__ import annotations

import logging

from flightlog.agent.delivery import DeliveryLoop
from flightlog.agent.sender import REJECTED
from flightlog.core.ring_format import DeadRing, RingClaims

log = logging.getLogger("flightlog.agent")


def send_dead_ring(ring: DeadRing, loop: DeliveryLoop, agent_id: str, claims: RingClaims) -> bool:
    """Send what ``ring`` holds, end its open runs and let it go (deleted, kept for the
    next adopter, or moved aside as the collector's watch does: ``RingClaims``); False
    when the collector is away (stop: the ring stays)."""
    points = 0
    refused: list[str] = []
    bodies = ring.bodies(agent_id)
    while True:
        try:
            item = next(bodies, None)
        except Exception as e:  # damage the checks on reading missed
            ring.quarantine(f"reading it failed: {type(e).__name__}: {e}")
            return True
        if item is None:
            break
        body, n = item
        ack = loop.deliver(body)
        if ack is None:
            ring.release()
            return False  # stopped or gave up: the ring stays for the next adopter
        if ack.outcome == REJECTED:
            refused.append(ack.message)  # the other batches may still be stored
            continue
        if ack.errors:
            log.warning("flightlog: a dead process's ring batch had errors: %s", ack.errors[0])
        points += n
    claims.sent(ring, refused)
    log.info(
        "flightlog: sent %d point(s) left in %s by process %d, which died",
        points,
        ring.directory,
        ring.pid,
    )
    return True

"""Sending the rings that dead processes left (``flightlog.core.ring_format``), exactly once.

The batches come from :meth:`DeadRing.bodies`, the one recipe every adopter follows (the
next agent here, the node's collector and the sidecar): the owner's cuts re-made with the
same batch ids, the rest in cuts whose ids come from ring positions, then the runs the
owner never ended, ended FAILED.
"""

from __future__ import annotations

import logging

from flightlog.agent.delivery import DeliveryLoop
from flightlog.core.ring_format import DeadRing

log = logging.getLogger("flightlog.agent")


def send_dead_ring(ring: DeadRing, loop: DeliveryLoop, agent_id: str) -> bool:
    """Send what ``ring`` holds and end its open runs; True once all was acknowledged."""
    points = 0
    for body, n in ring.bodies(agent_id):
        ack = loop.deliver(body)
        if ack is None:
            return False  # stopped or gave up: the ring stays for the next adopter
        if ack.errors:
            log.warning("flightlog: a dead process's ring batch had errors: %s", ack.errors[0])
        points += n
    log.info(
        "flightlog: sent %d point(s) left in %s by process %d, which died",
        points,
        ring.directory,
        ring.pid,
    )
    return True

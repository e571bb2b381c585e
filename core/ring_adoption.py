"""Adopting the metric rings of dead processes from a node's collector or sidecar.

A trainer SIGKILLed (the OOM killer) leaves its ring behind (``flightlog.core.ring_format``).
The collector serving the node watches the rings directories of the destinations it
serves and, within a poll interval of the owner's death, sends what the ring holds
through ``deliver`` (the collector stores a batch, the sidecar buffers it) and ends
the runs the owner left open. A collector that was down when the owner died finds the
ring at its next start, on its first poll.

``deliver(body, points)`` returns True once the batch is stored (or was a duplicate) and
False to stop (the store is failing): the ring is then released, untouched, for the
next poll or another adopter.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from flightlog.core.ring_format import DeadRing, claim_dead_rings, rings_root

log = logging.getLogger("flightlog.rings")

Deliver = Callable[[bytes, int], Awaitable[bool]]
#: Seconds between looks at the rings directories (the run of a dead trainer ends
#: within about this long plus the time to store what its ring held).
POLL_SECONDS = 0.5


def _claim(roots: Sequence[Path]) -> list[DeadRing]:
    claimed: list[DeadRing] = []
    for root in roots:
        claimed += claim_dead_rings(rings_root(root))
    return claimed


async def adopt_dead_rings(roots: Sequence[Path], deliver: Deliver, adopter: str) -> int:
    """Send the rings dead processes left under the spool ``roots``; returns how many
    were sent in full (and deleted)."""
    claimed = await asyncio.to_thread(_claim, roots)  # reads whole ring files: off the loop
    sent = 0
    for i, ring in enumerate(claimed):
        try:
            ok = await _send(ring, deliver, f"{adopter}-{ring.ring_id}"[:64])
        except BaseException:
            for rest in claimed[i:]:
                rest.release()
            raise
        if ok:
            ring.finish()
            sent += 1
        else:
            ring.release()
            for rest in claimed[i + 1 :]:
                rest.release()
            break
    return sent


async def _send(ring: DeadRing, deliver: Deliver, agent_id: str) -> bool:
    points = 0
    bodies = ring.bodies(agent_id)
    while True:
        # Encoding a batch of 100,000 points takes milliseconds: off the loop.
        item = await asyncio.to_thread(next, bodies, None)
        if item is None:
            break
        body, n = item
        if not await deliver(body, n):
            return False
        points += n
    log.warning(
        "stored %d point(s) left unsent in %s by process %d, which died; its open runs "
        "are ended FAILED",
        points,
        ring.directory,
        ring.pid,
    )
    return True


async def watch_rings(
    roots: Sequence[Path], deliver: Deliver, adopter: str, poll: float = POLL_SECONDS
) -> None:
    """Adopt dead processes' rings under ``roots`` every ``poll`` seconds, until cancelled."""
    while True:
        try:
            await adopt_dead_rings(roots, deliver, adopter)
        except Exception:
            log.exception("adopting a dead process's metric ring failed; will retry")
        await asyncio.sleep(poll)

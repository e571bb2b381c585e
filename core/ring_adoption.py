"""Adopting what dead processes left, from a node's collector or sidecar.

A trainer SIGKILLed (the OOM killer) leaves its metric ring behind
(``flightlog.core.ring_format``), and, if the collector was away for a while before,
a spool directory with the batches it moved to disk (``flightlog.core.spool_format``).
The collector serving the node watches the spool roots of the destinations it serves
and, within a poll interval of the owner's death, sends the spool (older) and then what
the ring holds through ``deliver`` (the collector stores a batch, the sidecar buffers
it), and ends the runs the owner left open. A collector that was down when the owner
died finds them at its next start, on its first poll.

A spool directory is taken only when the pid in its name (``<pid>-<agent>``) is not a
live process and its flock is free: an agent makes its directory a moment before it
locks it, and a poller must not take it in between.

``deliver(body, points)`` returns True once the batch is stored (or was a duplicate) and
False to stop (the store is failing): the ring is then released, untouched, for the
next poll or another adopter.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from flightlog.core.ring_format import DeadRing, claim_dead_rings, process_start, rings_root
from flightlog.core.spool_format import ClaimedSpool, agent_dirs

log = logging.getLogger("flightlog.rings")

Deliver = Callable[[bytes, int], Awaitable[bool]]
#: Seconds between looks at the rings directories (the run of a dead trainer ends
#: within about this long plus the time to store what its ring held).
POLL_SECONDS = 0.5


def _owner_gone(spool_dir: Path) -> bool:
    pid = spool_dir.name.split("-", 1)[0]
    return pid.isdigit() and process_start(int(pid)) is None


def _claim(roots: Sequence[Path]) -> tuple[list[ClaimedSpool], list[DeadRing]]:
    spools: list[ClaimedSpool] = []
    rings: list[DeadRing] = []
    for root in roots:
        for d in agent_dirs(root):
            if not _owner_gone(d):
                continue
            claim = ClaimedSpool.claim(d)
            if claim is None:
                continue
            if claim.records:
                spools.append(claim)
            else:
                claim.finish()  # an empty leftover: tidy it away
        rings += claim_dead_rings(rings_root(root))
    return spools, rings


async def adopt_dead_rings(roots: Sequence[Path], deliver: Deliver, adopter: str) -> int:
    """Send the spools and the metric rings dead processes left under the spool ``roots``
    (spools first: they hold the older batches); returns how many were sent in full (and
    deleted). What cannot be sent now (``deliver`` said stop) is left for the next call."""
    # Reading whole ring files and scanning segments: off the event loop.
    spools, rings = await asyncio.to_thread(_claim, roots)
    pending: list[ClaimedSpool | DeadRing] = [*spools, *rings]
    sent = 0
    try:
        while pending:
            item = pending[0]
            if isinstance(item, ClaimedSpool):
                ok = await _send_spool(item, deliver)
            else:
                ok = await _send(item, deliver, f"{adopter}-{item.ring_id}"[:64])
            pending.pop(0)
            if isinstance(item, ClaimedSpool):
                item.finish()  # sent records are gone; the rest stay for the next call
            elif ok:
                item.finish()
            else:
                item.release()
            if not ok:
                break
            sent += 1
    finally:
        for item in pending:
            if isinstance(item, ClaimedSpool):
                item.finish()
            else:
                item.release()
    return sent


async def _send_spool(claim: ClaimedSpool, deliver: Deliver) -> bool:
    points = 0
    for ref in list(claim.records):
        body = await asyncio.to_thread(claim.read, ref)
        if body is None:
            log.error("a damaged record in %s was skipped", ref.path)
        elif not await deliver(body, ref.points):
            return False
        else:
            points += ref.points
        claim.done(ref)
    log.warning(
        "stored %d point(s) left in the spool %s by a process that ended", points, claim.directory
    )
    return True


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
        "stored %d point(s) left unsent in %s by process %d, which died; the runs it "
        "left open are ended FAILED",
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

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

from flightlog.core.ring_format import DeadRing, RingClaims, process_start, rings_root
from flightlog.core.spool_format import ClaimedSpool, agent_dirs

log = logging.getLogger("flightlog.rings")

Deliver = Callable[[bytes, int], Awaitable[bool]]
#: Seconds between looks at the rings directories (the run of a dead trainer ends
#: within about this long plus the time to store what its ring held).
POLL_SECONDS = 0.5


class Refused(Exception):
    """What ``deliver`` raises for a batch the destination refuses for what it holds (a
    400: resending it cannot help); the ring is then moved aside once the rest is sent."""


def _owner_gone(spool_dir: Path) -> bool:
    pid = spool_dir.name.split("-", 1)[0]
    return pid.isdigit() and process_start(int(pid)) is None


def _next_spool(root: Path, after: set[Path]) -> ClaimedSpool | None:
    for d in agent_dirs(root):
        if d in after or not _owner_gone(d):
            continue
        after.add(d)
        claim = ClaimedSpool.claim(d)
        if claim is None:
            continue
        if claim.records:
            return claim
        claim.finish()  # an empty leftover: tidy it away
    return None


async def adopt_dead_rings(
    roots: Sequence[Path], deliver: Deliver, adopter: str, claims: RingClaims | None = None
) -> int:
    """Send the spools and the metric rings dead processes left under the spool ``roots``
    (spools first: they hold the older batches); returns how many were sent in full (and
    deleted). What cannot be sent now (``deliver`` said stop) is left for the next call.

    One at a time (claim, read, send, let go), so memory holds one ring; a damaged ring,
    or one the destination refuses, is moved aside (``RingClaims``) and affects no other.
    ``claims`` remembers, from one call to the next, the rings not to read again yet."""
    claims = claims or RingClaims()
    sent = 0
    for root in roots:
        seen: set[Path] = set()
        while (spool := await asyncio.to_thread(_next_spool, root, seen)) is not None:
            try:
                ok = await _send_spool(spool, deliver)
            finally:
                spool.finish()  # sent records are gone; the rest stay for the next call
            if not ok:
                return sent
            sent += 1
    for root in roots:
        for d in claims.candidates(rings_root(root)):
            # Reading a whole ring file: off the event loop.
            ring = await asyncio.to_thread(claims.claim, d)
            if ring is None:
                continue
            try:
                ok = await _send(ring, deliver, f"{adopter}-{ring.ring_id}"[:64], claims)
            except Exception as e:  # this ring only: the next is adopted
                claims.failed(ring, e)
                continue
            except BaseException:
                ring.release()
                raise
            if not ok:
                return sent  # the destination is failing: the next poll tries again
            sent += 1
    return sent


async def _send_spool(claim: ClaimedSpool, deliver: Deliver) -> bool:
    points = 0
    for ref in list(claim.records):
        body = await asyncio.to_thread(claim.read, ref)
        try:
            if body is None:
                log.error("a damaged record in %s was skipped", ref.path)
            elif not await deliver(body, ref.points):
                return False
            else:
                points += ref.points
        except Refused as e:  # resending cannot help: as the agent's adopter does
            log.error("a record in %s was refused and skipped: %s", ref.path, e)
        claim.done(ref)
    log.warning(
        "stored %d point(s) left in the spool %s by a process that ended", points, claim.directory
    )
    return True


async def _send(ring: DeadRing, deliver: Deliver, agent_id: str, claims: RingClaims) -> bool:
    """Send ``ring`` and end it (finished, released, or moved aside); False: stop."""
    points = 0
    refused: list[str] = []
    bodies = ring.bodies(agent_id)
    while True:
        # Encoding a batch of 100,000 points takes milliseconds: off the loop.
        try:
            item = await asyncio.to_thread(next, bodies, None)
        except Exception as e:  # damage the checks on reading missed
            ring.quarantine(f"reading it failed: {type(e).__name__}: {e}")
            return True
        if item is None:
            break
        body, n = item
        try:
            ok = await deliver(body, n)
        except Refused as e:
            refused.append(str(e))  # the other batches may still be stored
            continue
        if not ok:
            ring.release()
            return False
        points += n
    log.warning(
        "stored %d point(s) left unsent in %s by process %d, which died; the runs it "
        "left open are ended FAILED",
        points,
        ring.directory,
        ring.pid,
    )
    claims.sent(ring, refused)
    return True


async def watch_rings(
    roots: Sequence[Path], deliver: Deliver, adopter: str, poll: float = POLL_SECONDS
) -> None:
    """Adopt dead processes' rings under ``roots`` every ``poll`` seconds, until cancelled."""
    claims = RingClaims()
    while True:
        try:
            await adopt_dead_rings(roots, deliver, adopter, claims)
        except Exception:
            log.exception("adopting a dead process's metric ring failed; will retry")
        await asyncio.sleep(poll)

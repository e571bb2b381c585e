"""Sending the rings that dead processes left (``flightlog.agent.ring``), exactly once.

The owner's cuts are re-made with the same batch ids, so a batch the collector committed
just before the owner died is deduplicated by its id; what follows the last cut goes in
new batches whose ids also come from ring positions (a second adopter, after a crash of
the first, makes the same ones). Runs the owner created and never ended are then ended
FAILED: a process that left its ring died without running its exit (a SIGTERM or Ctrl-C
ends its runs KILLED itself, and that update is in the ops journal).
"""

from __future__ import annotations

import logging

from flightlog.agent.delivery import DeliveryLoop
from flightlog.agent.ring import DeadRing, now_ms
from flightlog.core.wire import encode_raw_batch

log = logging.getLogger("flightlog.agent")
BATCH_POINTS = 100_000


def send_dead_ring(ring: DeadRing, loop: DeliveryLoop, agent_id: str) -> bool:
    """Send what ``ring`` holds and end its open runs; True once all was acknowledged."""
    points = 0
    for bid, r0, r1, o0, o1 in ring.batches(BATCH_POINTS):
        ops = [[name, args] for _, name, args in ring.ops[o0:o1]]
        records = b"".join(ring.records(r0, r1))
        ack = loop.deliver(encode_raw_batch(bid, agent_id, ops, None, records, ring.ids_blob))
        if ack is None:
            return False  # stopped or gave up: the ring stays for the next adopter
        if ack.errors:
            log.warning("flightlog: a dead process's ring batch had errors: %s", ack.errors[0])
        points += r1 - r0
    end = now_ms()
    ends = [
        ["update_run", {"run_id": rid, "status": "FAILED", "end_time": end}]
        for rid in ring.open_runs()
    ]
    if ends:
        ack = loop.deliver(encode_raw_batch(f"ring-{ring.ring_id}-end", agent_id, ends, None))
        if ack is None:
            return False
    log.info(
        "flightlog: sent %d point(s) left in %s by process %d, which died; %d run(s) ended FAILED",
        points,
        ring.directory,
        ring.pid,
        len(ends),
    )
    return True

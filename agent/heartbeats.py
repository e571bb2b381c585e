"""Heartbeats: the runs this process has open, and when each next heartbeat is due.

Runs this process creates or resumes get heartbeats until they end; the create_run or
update_run op carries a flag that tells the collector to watch them (runs created by
other clients, which send no heartbeats, are never timed out).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from flightlog.core.entities import RunStatus
from flightlog.core.wire import WIRE_VERSION, pack


class Heartbeats:
    """Open runs and the heartbeat schedule (one body for all of them per interval)."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        # run id -> None: insertion-ordered, and copied with one C-level call.
        self.open_runs: dict[str, None] = {}
        self.next_due = clock() + interval

    def track(self, name: str, args: dict[str, Any]) -> dict[str, Any]:
        """Note a create_run or update_run op; return its args (flagged when watched)."""
        run_id = args.get("run_id")
        if not isinstance(run_id, str):
            return args
        status = args.get("status")
        if name == "create_run" or status == "RUNNING":
            self.open_runs[run_id] = None
            return {**args, "heartbeat": True}
        if status in RunStatus.TERMINATED:
            self.open_runs.pop(run_id, None)
        return args

    def until_due(self) -> float:
        """Seconds until the next heartbeat (at least 10 ms)."""
        return max(0.01, self.next_due - self.clock())

    def due(self, agent_id: str) -> tuple[int, bytes] | None:
        """(runs, body) of the heartbeat if one is due now, and schedule the next."""
        now = self.clock()
        if now < self.next_due:
            return None
        self.next_due = now + self.interval
        runs = list(self.open_runs)  # one C-level copy: safe beside other threads
        if not runs:
            return None
        # Heartbeats travel on their own, ahead of any backlog, so a run whose data is
        # still in the spool is not taken for dead. They carry no batch id: applying one
        # twice is harmless, and they must not fill the collector's table of batch ids.
        body = pack(
            {
                "v": WIRE_VERSION,
                "agent_id": agent_id,
                "ops": [["heartbeat", {"run_id": r}] for r in runs],
            }
        )
        return len(runs), body

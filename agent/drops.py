"""What the agent had to drop: counted per reason and run, warned once per interval,
and recorded on each run as ``flightlog.dropped.<reason>`` tags."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

log = logging.getLogger("flightlog.agent")

REPORT_INTERVAL = 30.0  # at most one drop warning (and tag update) per interval
REASONS = {
    "queue_full": "the in-memory queue was full: FLIGHTLOG_MAX_QUEUE",
    "spool_full": "the collector was not taking batches and the spool was full or "
    "unwritable: FLIGHTLOG_SPOOL_MAX_BYTES",
    "invalid_point": "points the wire format cannot carry",
    "closed": "logged after the agent was closed",
}


class DropLedger:
    """Drop counts: ``dropped`` per reason, and per (run, reason) for the run's tags."""

    def __init__(self) -> None:
        self.dropped: dict[str, int] = {}  # points (or batches) dropped, per reason
        self.forget_runs()

    def forget_runs(self) -> None:
        """Start the per-run counts afresh (a forked child reports its own runs only)."""
        self.by_run: dict[tuple[str, str], int] = {}  # (run, reason) -> points, cumulative
        self._reported: dict[tuple[str, str], int] = {}
        self._warned: dict[str, int] = {}
        self._last_report = -REPORT_INTERVAL
        self._last_warning = -REPORT_INTERVAL

    def count(self, reason: str, n: int = 1) -> None:
        """Count ``n`` things dropped for ``reason`` (not tied to a run)."""
        self.dropped[reason] = self.dropped.get(reason, 0) + n

    def count_point(self, run_id: Any, reason: str) -> None:
        """Count one point of ``run_id`` dropped (the hot path's queue cap)."""
        if isinstance(run_id, str):
            key = (run_id, reason)
            self.by_run[key] = self.by_run.get(key, 0) + 1
        self.count(reason)

    def count_points(self, run_ids: Sequence[Any], reason: str) -> None:
        """Count the points whose run ids are ``run_ids`` dropped for ``reason``."""
        for run_id, n in Counter(run_ids).items():
            if isinstance(run_id, str):
                key = (run_id, reason)
                self.by_run[key] = self.by_run.get(key, 0) + n
        self.count(reason, len(run_ids))

    def warn_if_due(self) -> None:
        """Log what was dropped since the last warning, at most once per interval."""
        if self.dropped == self._warned:
            return
        now = time.monotonic()
        if now - self._last_warning < REPORT_INTERVAL:
            return
        counts = dict(self.dropped)
        new = {r: n - self._warned.get(r, 0) for r, n in counts.items()}
        new = {r: n for r, n in new.items() if n}
        self._warned = counts
        if not new:
            return
        self._last_warning = now
        log.warning(
            "flightlog: dropped %s since the last warning (%s); counts are recorded on the "
            "run as flightlog.dropped.<reason> tags",
            ", ".join(f"{n} ({r})" for r, n in sorted(new.items())),
            "; ".join(REASONS.get(r, r) for r in sorted(new)),
        )

    def tag_ops(self, *, force: bool) -> list[list[Any]]:
        """set_tags ops recording each run's drop counts, when they changed.

        At most once per interval unless ``force`` (a flush wants them now).
        """
        if not self.by_run:
            return []
        now = time.monotonic()
        if not force and now - self._last_report < REPORT_INTERVAL:
            return []
        counts = self.by_run.copy()  # the hot path may add to it meanwhile
        changed: dict[str, dict[str, str]] = {}
        for (run_id, reason), n in counts.items():
            if self._reported.get((run_id, reason)) != n:
                changed.setdefault(run_id, {})[f"flightlog.dropped.{reason}"] = str(n)
        if not changed:
            return []
        self._reported = counts
        self._last_report = now
        return [["set_tags", {"run_id": r, "tags": tags}] for r, tags in changed.items()]

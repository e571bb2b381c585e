"""Downsampled metric reads for charts: at most N points per series, spikes kept.

A series is cut into buckets of equal step width; each bucket contributes its
minimum, its maximum and its last point (largest step), so a single spike survives
any amount of downsampling, unlike every-k-th-point sampling.

Long series are read from block summaries written at ingest: for every block of
``BLOCK`` consecutive points a chunk stores that block's min, max and last point, so a
10M-point series is read as ~40k blocks rather than 10M points. Bucketing by the
summaries' points is exact for min and max; "last" assumes steps do not decrease within
a block, which holds for training loops (a block whose steps go back reports its last
logged point).
"""

from __future__ import annotations

import math
from array import array
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flightlog.collector.store import SqliteStore

BLOCK = 256
_FIELDS = 10  # min v, min step, min ts, max v, max step, max ts, last v, last step, last ts, n
# Below this many points a series is bucketed from its raw points.
RAW_LIMIT = 200_000


def block_summary(steps: array[int], vals: array[float], ts: array[float]) -> array[float]:
    """The per-block summary stored beside a chunk (see the module docstring)."""
    out = array("d")
    n = len(vals)
    for b in range(0, n, BLOCK):
        vs = vals[b : b + BLOCK]
        m = len(vs)
        if math.isfinite(math.fsum(vs)):
            lo, hi = min(vs), max(vs)
            i_lo, i_hi = b + vs.index(lo), b + vs.index(hi)
        else:
            # NaN (or inf) present: min()/max() are unreliable with NaN; pick by hand,
            # and keep the block's first NaN as its "min" so NaN points stay visible.
            finite = [i for i in range(b, b + m) if not math.isnan(vals[i])]
            if finite:
                i_lo = min(finite, key=vals.__getitem__)
                i_hi = max(finite, key=vals.__getitem__)
                nans = [i for i in range(b, b + m) if math.isnan(vals[i])]
                if nans:
                    i_lo = nans[0]
            else:
                i_lo = i_hi = b
        last = b + m - 1
        out.extend(
            (
                vals[i_lo],
                steps[i_lo],
                ts[i_lo],
                vals[i_hi],
                steps[i_hi],
                ts[i_hi],
                vals[last],
                steps[last],
                ts[last],
                m,
            )
        )
    return out


Points = tuple["array[int]", "array[float]", "array[float]"]


def bucketed(
    steps: array[int] | list[int],
    vals: array[float] | list[float],
    ts: array[float] | list[float],
    lo: int,
    hi: int,
    buckets: int,
) -> Points:
    """Keep the min, max and last point of each of ``buckets`` equal step ranges."""
    width = max(1, (hi - lo + buckets) // buckets)
    best: dict[int, list[int]] = {}  # bucket -> [i_min, i_max, i_last]
    for i, s in enumerate(steps):
        b = (s - lo) // width
        slot = best.get(b)
        if slot is None:
            best[b] = [i, i, i]
            continue
        v = vals[i]
        if v < vals[slot[0]] or (v != v and vals[slot[0]] == vals[slot[0]]):
            slot[0] = i
        if v > vals[slot[1]]:
            slot[1] = i
        j = slot[2]
        if s > steps[j] or (s == steps[j] and ts[i] >= ts[j]):
            slot[2] = i
    # Summaries can offer the same point twice (a block's max that is also its last).
    unique = {(steps[i], ts[i], vals[i]): i for slot in best.values() for i in slot}
    keep = sorted(unique.values(), key=lambda i: (steps[i], ts[i]))
    return (
        array("q", (steps[i] for i in keep)),
        array("d", (vals[i] for i in keep)),
        array("d", (ts[i] for i in keep)),
    )


def sampled_series(store: SqliteStore, run_id: str, key: str, max_points: int) -> Points:
    """At most ``max_points`` points of one series (all of them when it is short enough)."""
    conn = store.reader()
    row = conn.execute(
        "SELECT COALESCE(SUM(n), 0), MIN(min_step), MAX(max_step) FROM metric_chunks"
        " WHERE run_uuid = ? AND key = ?",
        (run_id, key),
    ).fetchone()
    total, lo, hi = int(row[0]), row[1], row[2]
    if total <= max_points:
        return store.metric_history(run_id, key)
    buckets = max(1, max_points // 3)
    if total <= RAW_LIMIT:
        steps, vals, ts = store.metric_history(run_id, key)
        return bucketed(steps, vals, ts, lo, hi, buckets)
    cand_s: list[int] = []
    cand_v: list[float] = []
    cand_t: list[float] = []
    for (blob,) in conn.execute(
        "SELECT summary FROM metric_chunks WHERE run_uuid = ? AND key = ? ORDER BY chunk_id",
        (run_id, key),
    ):
        summary = array("d")
        summary.frombytes(blob)
        for f in (0, 3, 6):
            cand_v.extend(summary[f::_FIELDS])
            cand_s.extend(int(x) for x in summary[f + 1 :: _FIELDS])
            cand_t.extend(summary[f + 2 :: _FIELDS])
    return bucketed(cand_s, cand_v, cand_t, lo, hi, buckets)

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
from bisect import bisect_left
from collections.abc import Sequence
from itertools import pairwise
from typing import Protocol


class SeriesSource(Protocol):
    """The store queries downsampling needs (collector.store_api.Store has them)."""

    def series_extent(self, run_id: str, key: str) -> tuple[int, int, int]:
        """(points, smallest step, largest step) of a series; (0, 0, 0) when it is empty."""
        ...

    def metric_history(
        self, run_id: str, key: str
    ) -> tuple[array[int], array[float], array[float]]:
        """The whole series."""
        ...

    def block_summaries(self, run_id: str, key: str) -> array[float]:
        """The series' block summaries (:func:`block_summary`), concatenated in order."""
        ...


BLOCK = 256
_FIELDS = 10  # min v, min step, min ts, max v, max step, max ts, last v, last step, last ts, n
# Below this many points a series is bucketed from its raw points.
RAW_LIMIT = 100_000


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


def bucketed_sorted(
    order: Sequence[float],
    lo_v: Sequence[float],
    lo_s: Sequence[float],
    lo_t: Sequence[float],
    hi_v: Sequence[float],
    hi_s: Sequence[float],
    hi_t: Sequence[float],
    la_v: Sequence[float],
    la_s: Sequence[float],
    la_t: Sequence[float],
    lo: int,
    hi: int,
    buckets: int,
) -> Points | None:
    """Bucket units (points or blocks) whose ``order`` (last step) never decreases.

    Each unit offers a min point, a max point and a last point. Bucket edges are found
    by bisection and each bucket's min and max by C-level ``min``/``max`` over slices,
    so the Python work is per bucket, not per point. Returns None when a bucket holds
    NaN or infinities (the caller falls back to :func:`bucketed`).
    """
    width = max(1, (hi - lo + buckets) // buckets)
    out_s: list[int] = []
    out_v: list[float] = []
    out_t: list[float] = []
    start = 0
    n = len(order)
    edge = lo + width
    while start < n:
        end = bisect_left(order, edge, start)
        if end == start:  # an empty bucket: jump to the one holding the next unit
            edge = lo + ((int(order[start]) - lo) // width + 1) * width
            continue
        mins = lo_v[start:end]
        maxs = hi_v[start:end]
        if not (math.isfinite(math.fsum(mins)) and math.isfinite(math.fsum(maxs))):
            return None
        i_lo = start + mins.index(min(mins))
        i_hi = start + maxs.index(max(maxs))
        i_la = end - 1
        picked = {
            (lo_s[i_lo], lo_t[i_lo], lo_v[i_lo]),
            (hi_s[i_hi], hi_t[i_hi], hi_v[i_hi]),
            (la_s[i_la], la_t[i_la], la_v[i_la]),
        }
        for st, t, v in sorted(picked):
            out_s.append(int(st))
            out_v.append(v)
            out_t.append(t)
        start = end
        edge += width
    return array("q", out_s), array("d", out_v), array("d", out_t)


def _non_decreasing(values: Sequence[float]) -> bool:
    return all(a <= b for a, b in pairwise(values))


def sampled_series(store: SeriesSource, run_id: str, key: str, max_points: int) -> Points:
    """At most ``max_points`` points of one series (all of them when it is short enough)."""
    total, lo, hi = store.series_extent(run_id, key)
    if total <= max_points:
        return store.metric_history(run_id, key)
    buckets = max(1, max_points // 3)
    # Blocks resolve buckets well once there are several blocks per bucket.
    if total <= 4 * BLOCK * buckets or total <= RAW_LIMIT:
        steps, vals, ts = store.metric_history(run_id, key)
        if _non_decreasing(steps):
            fast = bucketed_sorted(
                steps, vals, steps, ts, vals, steps, ts, vals, steps, ts, lo, hi, buckets
            )
            if fast is not None:
                return fast
        return bucketed(steps, vals, ts, lo, hi, buckets)
    summary = store.block_summaries(run_id, key)
    f = [summary[i::_FIELDS] for i in range(_FIELDS)]
    if _non_decreasing(f[7]):
        fast = bucketed_sorted(
            f[7], f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8], lo, hi, buckets
        )
        if fast is not None:
            return fast
    cand_s = [int(x) for x in (*f[1], *f[4], *f[7])]
    cand_v = [*f[0], *f[3], *f[6]]
    cand_t = [*f[2], *f[5], *f[8]]
    return bucketed(cand_s, cand_v, cand_t, lo, hi, buckets)

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
import operator
from array import array
from bisect import bisect_left
from collections.abc import Sequence
from itertools import islice
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

    def metric_chunk_spans(
        self, run_id: str, key: str, min_step: int | None, max_step: int | None
    ) -> list[tuple[int, int, int, int]]:
        """(chunk_id, points, min_step, max_step) of the chunks overlapping a step range."""
        ...

    def metric_chunk_data(
        self, chunk_ids: Sequence[int], *, summaries: bool
    ) -> dict[int, tuple[bytes, ...]]:
        """Chunks by id: their block summary, or their packed steps, values, timestamps."""
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
        # A plain sum never raises: an overflow or inf - inf gives inf or NaN, which only
        # sends the block to the careful path (math.fsum raised and lost the batch).
        if math.isfinite(sum(vs)):
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


def summary_extremes(summary: bytes) -> tuple[float, float] | None:
    """The smallest and largest value of a chunk from its block summary, or None when a
    block holds NaN (its summary then records NaN as the block's minimum, so the caller
    reads the chunk's values instead: see :func:`extremes`)."""
    block = array("d")
    block.frombytes(summary)
    mins = block[0::_FIELDS]
    if not math.isfinite(sum(mins)) and any(v != v for v in mins):
        return None
    return min(mins), max(block[3::_FIELDS])


def extremes(values: Sequence[float]) -> tuple[float, float]:
    """The smallest and largest value, NaN ignored (NaN, NaN when all are NaN)."""
    real = [v for v in values if v == v]
    return (min(real), max(real)) if real else (math.nan, math.nan)


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
        # sum() is NaN or infinite when a value is (or, rarely, when it overflows, which
        # only costs the slower fallback); fsum's exactness is not needed for the test.
        if not (math.isfinite(sum(mins)) and math.isfinite(sum(maxs))):
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
    # map() with a C comparison: about 4x faster than a generator over pairwise().
    return all(map(operator.le, values, islice(values, 1, None)))


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


def _in_range(
    steps: array[int], vals: array[float], ts: array[float], lo: int, hi: int
) -> tuple[array[int], array[float], array[float]]:
    """The points of a chunk whose step lies in [lo, hi]."""
    if _non_decreasing(steps):
        a, b = bisect_left(steps, lo), bisect_left(steps, hi + 1)
        return steps[a:b], vals[a:b], ts[a:b]
    keep = [i for i, s in enumerate(steps) if lo <= s <= hi]
    return (
        array("q", (steps[i] for i in keep)),
        array("d", (vals[i] for i in keep)),
        array("d", (ts[i] for i in keep)),
    )


def sampled_range(
    store: SeriesSource,
    run_id: str,
    key: str,
    max_points: int,
    min_step: int | None = None,
    max_step: int | None = None,
) -> tuple[Points, bool]:
    """The points of one series with ``min_step <= step <= max_step`` (None: unbounded),
    bucketed to at most about ``max_points`` as :func:`sampled_series` does.

    This is the chart read behind zooming (a narrower range gives finer buckets, down to
    raw points once they fit) and live updates (``min_step`` past the last step shown).
    Chunks that lie wholly inside the range are read from their block summaries when the
    range holds at least half a block per bucket (a bucket is then at most two blocks
    wide); chunks that straddle an edge are always read raw and cut at the edge, so the
    result is exact at both ends. Returns the points (sorted by step) and whether they
    were bucketed.
    """
    spans = store.metric_chunk_spans(run_id, key, min_step, max_step)
    if not spans:
        return (array("q"), array("d"), array("d")), False
    lo = min_step if min_step is not None else min(s[2] for s in spans)
    hi = max_step if max_step is not None else max(s[3] for s in spans)
    buckets = max(1, max_points // 3)
    # Summaries once there are at least half as many blocks as buckets: each block still
    # gives its min, max and last point, so spikes stay, and reading 10 numbers per 256
    # points beats bucketing every point in Python (100k points: ~2 ms instead of ~40).
    total = sum(s[1] for s in spans)
    use_summaries = total > max_points and 2 * total >= BLOCK * buckets
    summary_ids = [
        cid for cid, _n, c_lo, c_hi in spans if use_summaries and lo <= c_lo and c_hi <= hi
    ]
    summaries = store.metric_chunk_data(summary_ids, summaries=True)
    raw = store.metric_chunk_data([s[0] for s in spans if s[0] not in summaries], summaries=False)
    # Raw points, concatenated at C level, cut to the range chunk by chunk.
    steps, vals, ts = array("q"), array("d"), array("d")
    raw_counts: dict[int, int] = {}
    for cid, _n, c_lo, c_hi in spans:
        if cid in raw:
            cs, cv, ct = array("q"), array("d"), array("d")
            cs.frombytes(raw[cid][0])
            cv.frombytes(raw[cid][1])
            ct.frombytes(raw[cid][2])
            if c_lo < lo or c_hi > hi:
                cs, cv, ct = _in_range(cs, cv, ct, lo, hi)
            raw_counts[cid] = len(cs)
            steps.extend(cs)
            vals.extend(cv)
            ts.extend(ct)
    if not summaries:
        if len(steps) <= max_points:
            if not _non_decreasing(steps):
                order = sorted(range(len(steps)), key=lambda i: (steps[i], ts[i]))
                steps = array("q", (steps[i] for i in order))
                vals = array("d", (vals[i] for i in order))
                ts = array("d", (ts[i] for i in order))
            return (steps, vals, ts), False
        if _non_decreasing(steps):
            fast = _bucketed_points(steps, vals, ts, lo, hi, buckets) or bucketed_sorted(
                steps, vals, steps, ts, vals, steps, ts, vals, steps, ts, lo, hi, buckets
            )
            if fast is not None:
                return fast, True
        return bucketed(steps, vals, ts, lo, hi, buckets), True
    return _bucketed_mixed(spans, summaries, raw_counts, (steps, vals, ts), lo, hi, buckets), True


def _bucketed_points(
    steps: array[int], vals: array[float], ts: array[float], lo: int, hi: int, buckets: int
) -> Points | None:
    """:func:`bucketed_sorted` for raw points whose steps never decrease: each bucket's
    min, max and last point, picked by index. One finiteness test for the whole series
    instead of one per bucket makes it about twice as fast, which counts when a chart
    holds hundreds of short series. None when a value is NaN or infinite."""
    if not math.isfinite(sum(vals)):
        return None
    width = max(1, (hi - lo + buckets) // buckets)
    keep: list[int] = []
    n = len(steps)
    start = 0
    edge = lo + width
    while start < n:
        end = bisect_left(steps, edge, start)
        if end == start:  # an empty bucket: jump to the one holding the next point
            edge = lo + ((steps[start] - lo) // width + 1) * width
            continue
        seg = vals[start:end]
        keep.extend(sorted({start + seg.index(min(seg)), start + seg.index(max(seg)), end - 1}))
        start = end
        edge += width
    return (
        array("q", [steps[i] for i in keep]),
        array("d", [vals[i] for i in keep]),
        array("d", [ts[i] for i in keep]),
    )


def _bucketed_mixed(
    spans: list[tuple[int, int, int, int]],
    summaries: dict[int, tuple[bytes, ...]],
    raw_counts: dict[int, int],
    raw_points: Points,
    lo: int,
    hi: int,
    buckets: int,
) -> Points:
    """Bucket a range read from block summaries (inner chunks) and raw edge points.

    Units for :func:`bucketed_sorted`: per summary block its min, max and last point; a
    raw point is a unit whose min, max and last are itself. Units follow chunk order;
    ``raw_points`` holds the edge chunks' points in that order, ``raw_counts`` how many
    each chunk contributed.
    """
    cols: list[array[float]] = [array("d") for _ in range(9)]
    r_steps, r_vals, r_ts = raw_points
    r_at = 0
    for cid, *_ in spans:
        if cid in summaries:
            block = array("d")
            block.frombytes(summaries[cid][0])
            for i, col in enumerate(cols):
                col.extend(block[i::_FIELDS])
            continue
        count = raw_counts[cid]  # this chunk's share of the raw points
        part_s = array("d", r_steps[r_at : r_at + count])
        part_v, part_t = r_vals[r_at : r_at + count], r_ts[r_at : r_at + count]
        r_at += count
        for base in (0, 3, 6):
            cols[base].extend(part_v)
            cols[base + 1].extend(part_s)
            cols[base + 2].extend(part_t)
    lo_v, lo_s, lo_t, hi_v, hi_s, hi_t, la_v, la_s, la_t = cols
    if _non_decreasing(la_s):
        fast = bucketed_sorted(
            la_s, lo_v, lo_s, lo_t, hi_v, hi_s, hi_t, la_v, la_s, la_t, lo, hi, buckets
        )
        if fast is not None:
            return fast
    cand_s = [int(x) for x in (*lo_s, *hi_s, *la_s)]
    return bucketed(cand_s, [*lo_v, *hi_v, *la_v], [*lo_t, *hi_t, *la_t], lo, hi, buckets)

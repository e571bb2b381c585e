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
from collections.abc import Callable, Iterator, Sequence
from functools import lru_cache
from itertools import compress, islice, repeat
from typing import Any, Protocol

from flightlog.collector.float_bounds import below_power_of_two


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
SUMMABLE_POWER = 1000  # BLOCK values below 2**1000 sum to a finite float
# Below this many points a series is bucketed from its raw points.
RAW_LIMIT = 100_000


def block_summary(steps: array[int], vals: array[float], ts: array[float]) -> array[float]:
    """The per-block summary stored beside a chunk (see the module docstring)."""
    out = array("d")
    n = len(vals)
    # No NaN, no infinity and no sum of a block that overflows, in one C-level look at
    # the whole chunk (the common case): then no block needs its sum.
    clean = below_power_of_two(vals, SUMMABLE_POWER)
    for b in range(0, n, BLOCK):
        vs = vals[b : b + BLOCK]
        m = len(vs)
        # A plain sum never raises: an overflow or inf - inf gives inf or NaN, which only
        # sends the block to the careful path (math.fsum raised and lost the batch).
        if clean or math.isfinite(sum(vs)):
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


def _bucket_spans(
    order: Sequence[float], lo: int, hi: int, buckets: int
) -> tuple[list[int], list[int]]:
    """(starts, ends) of the non-empty buckets of units whose ``order`` never decreases:
    bucket j holds the units with ``lo + j*width <= order < lo + (j+1)*width``. The edges
    are found by C-level bisection (map over bisect_left), not a Python loop."""
    width = max(1, (hi - lo + buckets) // buckets)
    n = len(order)
    cuts = list(map(bisect_left, repeat(order), range(lo + width, lo + buckets * width, width)))
    cuts.append(n)
    starts = [0, *cuts[:-1]]
    full = list(map(operator.lt, starts, cuts))
    return list(compress(starts, full)), list(compress(cuts, full))


def _extreme_indices(
    values: Sequence[float], starts: list[int], ends: list[int]
) -> tuple[list[int], list[int]]:
    """The index of each bucket's (first) smallest and largest value. Every step runs in C
    (map over slices, min, max, index), so a bucket costs a few C calls, not bytecode:
    about 5x faster than a Python loop when buckets are small (1,000 runs on a chart)."""
    segs = list(map(values.__getitem__, map(slice, starts, ends)))
    index: Callable[[Any, float], int] = type(segs[0]).index if segs else list.index
    i_min = list(map(operator.add, starts, map(index, segs, map(min, segs))))
    i_max = list(map(operator.add, starts, map(index, segs, map(max, segs))))
    return i_min, i_max


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

    Each unit offers a min point, a max point and a last point; each bucket keeps the
    smallest of its units' minima, the largest of their maxima and its last unit's last
    point (a point picked twice is kept once). Returns None when a value is NaN or
    infinite (the caller falls back to :func:`bucketed`).
    """
    # sum() is NaN or infinite when a value is (or, rarely, when it overflows, which only
    # costs the slower fallback); one test for the whole series, not one per bucket.
    if not (math.isfinite(sum(lo_v)) and math.isfinite(sum(hi_v))):
        return None
    starts, ends = _bucket_spans(order, lo, hi, buckets)
    i_lo, _ = _extreme_indices(lo_v, starts, ends)
    _, i_hi = _extreme_indices(hi_v, starts, ends)
    i_la = [e - 1 for e in ends]
    picked: set[tuple[float, float, float]] = set()
    for idx, s, t, v in (
        (i_lo, lo_s, lo_t, lo_v),
        (i_hi, hi_s, hi_t, hi_v),
        (i_la, la_s, la_t, la_v),
    ):
        picked.update(
            zip(
                map(s.__getitem__, idx),
                map(t.__getitem__, idx),
                map(v.__getitem__, idx),
                strict=True,
            )
        )
    keep = sorted(picked)
    return (
        array("q", map(int, map(operator.itemgetter(0), keep))),
        array("d", map(operator.itemgetter(2), keep)),
        array("d", map(operator.itemgetter(1), keep)),
    )


def _non_decreasing(values: Sequence[float]) -> bool:
    # map() with a C comparison: about 4x faster than a generator over pairwise().
    return all(map(operator.le, values, islice(values, 1, None)))


#: Series up to this long compare their steps with a cached arange (see _sorted_steps).
_ARANGE_CACHED = 16_384


@lru_cache(maxsize=16)
def _arange(first: int, last: int, stride: int) -> array[int]:
    return array("q", range(first, last + 1, stride))


def _sorted_steps(steps: array[int]) -> bool:
    """Whether steps never decrease. Training loops log steps 0, 1, 2, ... (or every
    k-th): those compare equal to a cached ``array('q', range(...))``, which an int64
    array does at memcmp speed (~0.3 us for 1,000 steps, against ~25 us for the pairwise
    test that boxes every step); other series take the pairwise test."""
    n = len(steps)
    if n > 2:
        first, last = steps[0], steps[-1]
        stride = steps[1] - first
        if stride > 0 and last - first == stride * (n - 1):
            regular = _arange(first, last, stride) if n <= _ARANGE_CACHED else None
            if regular is not None and steps == regular:
                return True
    return _non_decreasing(steps)


def sampled_series(store: SeriesSource, run_id: str, key: str, max_points: int) -> Points:
    """At most ``max_points`` points of one series (all of them when it is short enough)."""
    total, lo, hi = store.series_extent(run_id, key)
    if total <= max_points:
        return store.metric_history(run_id, key)
    buckets = max(1, max_points // 3)
    # Blocks resolve buckets well once there are several blocks per bucket.
    if total <= 4 * BLOCK * buckets or total <= RAW_LIMIT:
        steps, vals, ts = store.metric_history(run_id, key)
        if _sorted_steps(steps):
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
    if _sorted_steps(steps):
        a, b = bisect_left(steps, lo), bisect_left(steps, hi + 1)
        return steps[a:b], vals[a:b], ts[a:b]
    keep = [i for i, s in enumerate(steps) if lo <= s <= hi]
    return (
        array("q", (steps[i] for i in keep)),
        array("d", (vals[i] for i in keep)),
        array("d", (ts[i] for i in keep)),
    )


Span = tuple[int, int, int, int]  # (chunk_id, points, min_step, max_step)
#: A multi-series read fetches the chunks of several series at once, up to about this
#: many raw points (24 bytes each) before it buckets them and reads on: the memory of one
#: request stays bounded whatever its runs and keys.
READ_BATCH_POINTS = 2_000_000


class RangePlan:
    """How one series' range is read: which chunks from their block summaries, which
    raw (see :func:`sampled_range`)."""

    __slots__ = ("buckets", "hi", "lo", "max_points", "raw_ids", "spans", "summary_ids")

    def __init__(
        self, spans: list[Span], max_points: int, min_step: int | None, max_step: int | None
    ) -> None:
        self.spans = spans
        self.max_points = max_points
        self.lo = min_step if min_step is not None else min((s[2] for s in spans), default=0)
        self.hi = max_step if max_step is not None else max((s[3] for s in spans), default=0)
        self.buckets = max(1, max_points // 3)
        # Summaries once there are at least half as many blocks as buckets: each block
        # still gives its min, max and last point, so spikes stay, and reading 10 numbers
        # per 256 points beats bucketing every point (100k points: ~2 ms instead of ~40).
        total = sum(s[1] for s in spans)
        use_summaries = total > max_points and 2 * total >= BLOCK * self.buckets
        lo, hi = self.lo, self.hi
        self.summary_ids = [
            cid for cid, _n, c_lo, c_hi in spans if use_summaries and lo <= c_lo and c_hi <= hi
        ]
        inner = set(self.summary_ids)
        self.raw_ids = [s[0] for s in spans if s[0] not in inner]

    def signature(self) -> tuple[object, ...]:
        """What the plan's answer depends on: chunks are never changed once written and
        their ids never reused, so equal signatures give equal points."""
        return (tuple(s[0] for s in self.spans), self.lo, self.hi, self.max_points)

    def cost(self) -> int:
        """What this plan's read holds in memory, in raw points (24 bytes each): its raw
        chunks' points, plus 80 bytes of summary per block of its other chunks."""
        inner = set(self.summary_ids)
        raw = sum(s[1] for s in self.spans if s[0] not in inner)
        summarised = sum(s[1] for s in self.spans if s[0] in inner)
        return raw + summarised * 10 // (BLOCK * 3)


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
    plan = RangePlan(
        store.metric_chunk_spans(run_id, key, min_step, max_step), max_points, min_step, max_step
    )
    summaries = store.metric_chunk_data(plan.summary_ids, summaries=True)
    raw = store.metric_chunk_data(plan.raw_ids, summaries=False)
    return bucket_plan(plan, summaries, raw)


class ManySource(SeriesSource, Protocol):
    """A store that also finds the chunks of many series in one query."""

    def metric_chunk_spans_many(
        self,
        run_ids: Sequence[str],
        keys: Sequence[str],
        min_step: int | None,
        max_step: int | None,
    ) -> dict[tuple[str, str], list[Span]]:
        """(run_id, key) -> its chunks' spans that overlap a step range, in logged order."""
        ...


def sampled_many(
    store: ManySource,
    run_ids: Sequence[str],
    keys: Sequence[str],
    max_points: int,
    min_step: int | None = None,
    max_step: int | None = None,
) -> Iterator[tuple[str, str, Points, bool]]:
    """:func:`sampled_range` for every (run, key) pair, run by run and key by key.

    One query finds every series' chunks (:func:`plan_many`) and one reads the data of a
    whole batch of series (:func:`bucket_many`): 1,000 runs on a chart cost three
    queries, not 2,000. Yields (run_id, key, points, sampled), an empty series for a
    pair with no points in the range.
    """
    return bucket_many(store, plan_many(store, run_ids, keys, max_points, min_step, max_step))


def plan_many(
    store: ManySource,
    run_ids: Sequence[str],
    keys: Sequence[str],
    max_points: int,
    min_step: int | None = None,
    max_step: int | None = None,
) -> list[tuple[str, str, RangePlan]]:
    """The read plan of every (run, key) pair, from one query for all their chunks."""
    spans = store.metric_chunk_spans_many(run_ids, keys, min_step, max_step)
    return [
        (run_id, key, RangePlan(spans.get((run_id, key), []), max_points, min_step, max_step))
        for run_id in run_ids
        for key in keys
    ]


def bucket_many(
    store: SeriesSource, plans: Sequence[tuple[str, str, RangePlan]]
) -> Iterator[tuple[str, str, Points, bool]]:
    """Read and bucket planned series in order, a batch of series per query; batches are
    cut at :data:`READ_BATCH_POINTS` raw points, so memory stays bounded."""
    batch: list[tuple[str, str, RangePlan]] = []
    weight = 0

    def flush() -> Iterator[tuple[str, str, Points, bool]]:
        summaries = store.metric_chunk_data(
            [c for *_, p in batch for c in p.summary_ids], summaries=True
        )
        raw = store.metric_chunk_data([c for *_, p in batch for c in p.raw_ids], summaries=False)
        for run_id, key, plan in batch:
            yield (run_id, key, *bucket_plan(plan, summaries, raw))

    for run_id, key, plan in plans:
        cost = plan.cost()
        if batch and weight + cost > READ_BATCH_POINTS:
            yield from flush()
            batch, weight = [], 0
        batch.append((run_id, key, plan))
        weight += cost
    if batch:
        yield from flush()


def bucket_plan(
    plan: RangePlan,
    summaries: dict[int, tuple[bytes, ...]],
    raw: dict[int, tuple[bytes, ...]],
) -> tuple[Points, bool]:
    """Bucket the chunks a plan read (``summaries`` and ``raw`` may hold other series'
    chunks too); returns the points and whether they were bucketed."""
    spans, lo, hi, buckets, max_points = plan.spans, plan.lo, plan.hi, plan.buckets, plan.max_points
    if not spans:
        return (array("q"), array("d"), array("d")), False
    inner = set(plan.summary_ids)
    # Raw points, concatenated at C level, cut to the range chunk by chunk.
    steps, vals, ts = array("q"), array("d"), array("d")
    raw_counts: dict[int, int] = {}
    for cid, _n, c_lo, c_hi in spans:
        if cid not in inner:
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
    if not inner:
        if len(steps) <= max_points:
            if not _sorted_steps(steps):
                order = sorted(range(len(steps)), key=lambda i: (steps[i], ts[i]))
                steps = array("q", (steps[i] for i in order))
                vals = array("d", (vals[i] for i in order))
                ts = array("d", (ts[i] for i in order))
            return (steps, vals, ts), False
        if _sorted_steps(steps):
            fast = _bucketed_points(steps, vals, ts, lo, hi, buckets)
            if fast is not None:
                return fast, True
        return bucketed(steps, vals, ts, lo, hi, buckets), True
    chosen = {cid: summaries[cid] for cid in inner}
    return _bucketed_mixed(spans, chosen, raw_counts, (steps, vals, ts), lo, hi, buckets), True


def _bucketed_points(
    steps: array[int], vals: array[float], ts: array[float], lo: int, hi: int, buckets: int
) -> Points | None:
    """:func:`bucketed_sorted` for raw points whose steps never decrease: each bucket's
    min, max and last point, picked by index (no tuples to compare), which counts when a
    chart holds hundreds of short series. None when a value is NaN or infinite."""
    if not math.isfinite(sum(vals)):
        return None
    starts, ends = _bucket_spans(steps, lo, hi, buckets)
    i_min, i_max = _extreme_indices(vals, starts, ends)
    keep = sorted({*i_min, *i_max, *(e - 1 for e in ends)})
    return (
        array("q", map(steps.__getitem__, keep)),
        array("d", map(vals.__getitem__, keep)),
        array("d", map(ts.__getitem__, keep)),
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

"""Downsampling's fast paths against its reference, and the memory bound of a
multi-series read, on a real SQLite store."""

from __future__ import annotations

import math
from array import array
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from flightlog.collector import downsample
from flightlog.collector.store import SqliteStore

_values = st.one_of(st.floats(-1e6, 1e6, allow_nan=False), st.sampled_from([0.0, 1.0, -1.0, 1e6]))


@settings(max_examples=200, deadline=None)
@given(
    points=st.lists(st.tuples(st.integers(0, 40), _values), min_size=1, max_size=600),
    buckets=st.integers(1, 200),
)
def test_fast_bucketing_equals_the_reference(points: list[tuple[int, float]], buckets: int) -> None:
    """For steps that never decrease (gaps of 0 repeat a step), the C-level pickers keep
    exactly the points the one-point-at-a-time reference keeps: each bucket's min, max and
    last point."""
    steps = array("q")
    s = 0
    for gap, _ in points:
        s += gap
        steps.append(s)
    vals = array("d", (v for _, v in points))
    ts = array("d", (1000.0 + i for i in range(len(steps))))
    lo, hi = steps[0], steps[-1]
    ref = downsample.bucketed(steps, vals, ts, lo, hi, buckets)
    assert downsample._bucketed_points(steps, vals, ts, lo, hi, buckets) == ref
    fast = downsample.bucketed_sorted(
        steps, vals, steps, ts, vals, steps, ts, vals, steps, ts, lo, hi, buckets
    )
    assert fast == ref


def test_sorted_steps_sees_regular_irregular_and_decreasing_steps() -> None:
    assert downsample._sorted_steps(array("q", range(1000)))
    assert downsample._sorted_steps(array("q", range(5, 50_000, 10)))  # past the cache
    assert downsample._sorted_steps(array("q", [0, 0, 2]))  # same endpoints as 0, 1, 2
    assert not downsample._sorted_steps(array("q", [0, 2, 1, 3]))
    assert not downsample._sorted_steps(array("q", [*range(500), 10, *range(501, 1000)]))


def _store(tmp_path: Path, runs: int, points: int) -> tuple[SqliteStore, list[str]]:
    store = SqliteStore(tmp_path / "flightlog.db", (tmp_path / "artifacts").as_uri())
    exp = store.create_experiment("e", None, {})
    ids = [f"{i:032x}" for i in range(runs)]
    ops: list[Any] = [("create_run", {"run_id": r, "experiment_id": exp}) for r in ids]
    store.apply_batch(None, ops, [])
    for i, rid in enumerate(ids):
        for start in range(0, points, 10_000):  # several chunks per series
            end = min(points, start + 10_000)
            vals = array("d", ((s * 7919 + i) % 1000 / 1000 for s in range(start, end)))
            if start <= points // 2 < end:
                vals[points // 2 - start] = math.inf if i % 2 else 50.0  # a spike
            series = (
                rid,
                "loss",
                array("q", range(start, end)),
                vals,
                array("d", range(start, end)),
            )
            store.apply_batch(None, [], [series])
    return store, ids


def test_many_series_read_equals_one_by_one_and_stays_in_batches(
    tmp_path: Path, monkeypatch: Any
) -> None:
    store, ids = _store(tmp_path, runs=6, points=30_000)
    reads: list[int] = []
    real = store.metric_chunk_data

    def counting(chunk_ids: Any, *, summaries: bool) -> Any:
        got = real(chunk_ids, summaries=summaries)
        if not summaries:
            reads.append(sum(len(v[0]) // 8 for v in got.values()))
        return got

    monkeypatch.setattr(store, "metric_chunk_data", counting)
    monkeypatch.setattr(downsample, "READ_BATCH_POINTS", 50_000)
    for points, lo, hi in ((300, None, None), (3000, 5_000, 24_000), (50_000, 100, 200)):
        reads.clear()
        many = list(
            downsample.sampled_many(store, [*ids, "f" * 32], ["loss", "nope"], points, lo, hi)
        )
        # A batch holds at most one series past the bound (a series is never split).
        assert reads and max(reads) <= 50_000 + 30_000
        assert [(r, k) for r, k, *_ in many] == [
            (r, k) for r in [*ids, "f" * 32] for k in ("loss", "nope")
        ]
        for run_id, key, pts, sampled in many:
            assert (pts, sampled) == downsample.sampled_range(store, run_id, key, points, lo, hi)
            if key == "loss" and run_id != "f" * 32 and lo is None:
                assert 50.0 in pts[1] or math.inf in pts[1]  # the spike survives
    store.close()

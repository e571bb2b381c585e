"""The UI's metrics endpoint under abuse and at scale, on a real collector process:
repeated runs and keys count once, a call's size is capped with a 400 that names the
limit, many runs are read in one call (GET and POST), infinities are sent faithfully,
and the runs endpoint refuses MLflow's out-of-range page sizes."""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import flightlog as mlflow
from flightlog.collector.ui_api import MAX_REQUEST_POINTS, MAX_SERIES
from tests.conftest import CollectorProcess

UI = "/api/flightlog/ui"


def call(url: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    """GET (or POST ``body`` as JSON); (status, decoded JSON)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _runs_with_curves(n_runs: int, points: int) -> list[str]:
    ids = []
    for i in range(n_runs):
        with mlflow.start_run(run_name=f"r{i}") as run:
            for s in range(points):
                mlflow.log_metric("loss", (s % 13) / 13 + i, step=s)
            mlflow.log_metric("acc", i / 10, step=0)
        ids.append(run.info.run_id)
    mlflow.flush()
    return ids


def test_repeated_runs_and_keys_count_once_and_big_calls_are_refused(
    tracking: CollectorProcess,
) -> None:
    (rid,) = _runs_with_curves(1, 2000)
    # 200 repeats of one run (the attack that took a collector to 3 GB): one series.
    q = urllib.parse.urlencode([("run", rid)] * 200 + [("key", "loss")] * 3 + [("points", 300)])
    status, got = call(f"{tracking.url}{UI}/metrics?{q}")
    assert status == 200
    assert [(s["run_id"], s["key"]) for s in got["series"]] == [(rid, "loss")]
    assert len(got["series"][0]["steps"]) <= 300
    # Distinct runs x keys x points past the limit: a 400 naming the limit and the sizes.
    many = [f"{i:032x}" for i in range(100)]
    points = MAX_REQUEST_POINTS // 100 + 1
    status, got = call(
        f"{tracking.url}{UI}/metrics", {"run": many, "key": ["loss"], "points": points}
    )
    assert status == 400 and got["error_code"] == "INVALID_PARAMETER_VALUE"
    assert f"{MAX_REQUEST_POINTS:,} points per call" in got["message"]
    assert f"100 x 1 x {points}" in got["message"]
    # More series than allowed, counted after removing repeats.
    keys = [f"k{i}" for i in range(MAX_SERIES // 100 + 1)]
    status, got = call(f"{tracking.url}{UI}/metrics", {"run": many, "key": keys, "points": 3})
    assert status == 400 and f"At most {MAX_SERIES} (run, key) series" in got["message"]
    status, got = call(
        f"{tracking.url}{UI}/metrics", {"run": [rid] * 5000, "key": ["loss"] * 5000, "points": 3}
    )
    assert status == 200 and len(got["series"]) == 1
    # Bad shapes are 400s that say what was wrong, never 500s.
    for body, words in (
        ({"run": rid, "key": ["loss"]}, "parameter 'run'"),
        ({"run": [rid], "key": ["loss"], "points": "many"}, "'points' must be an integer"),
        ({"run": [rid], "key": ["loss"], "min_step": 1.5}, "'min_step' must be an integer"),
        ({"run": ["../etc"], "key": ["loss"]}, "run"),
        ({"key": ["loss"]}, "at least one run"),
    ):
        status, got = call(f"{tracking.url}{UI}/metrics", body)
        assert status == 400 and words in got["message"], (body, got)


def test_many_runs_in_one_post_match_one_get_each(tracking: CollectorProcess) -> None:
    ids = _runs_with_curves(12, 1500)
    body = {"run": ids, "key": ["loss", "acc"], "points": 150, "min_step": 100, "max_step": 1400}
    status, got = call(f"{tracking.url}{UI}/metrics", body)
    assert status == 200
    assert [(s["run_id"], s["key"]) for s in got["series"]] == [
        (r, k) for r in ids for k in ("loss", "acc")
    ]
    for i, s in enumerate(got["series"][::2]):
        q = urllib.parse.urlencode(
            {"run": ids[i], "key": "loss", "points": 150, "min_step": 100, "max_step": 1400}
        )
        status, one = call(f"{tracking.url}{UI}/metrics?{q}")
        assert status == 200 and one["series"][0] == s
        # Bucketed: each bucket's min and max survive; nothing outside the range, a point
        # in its first bucket (27 steps wide) and its last point.
        assert s["sampled"] and len(s["steps"]) <= 150
        assert 100 <= s["steps"][0] < 127 and s["steps"][-1] == 1400
        assert min(s["values"]) == i and max(s["values"]) == i + 12 / 13
    # acc was logged at step 0 only, outside the range: an empty series, not an error.
    assert got["series"][1]["steps"] == [] and not got["series"][1]["sampled"]


def test_infinities_are_sent_as_strings_and_nan_as_null(tracking: CollectorProcess) -> None:
    values = [1.0, math.inf, -math.inf, 0.5, 0.7, math.nan, 2.0]
    with mlflow.start_run() as run:
        for s, v in enumerate(values):
            mlflow.log_metric("wild", v, step=s)
        mlflow.log_metric("up", math.inf, step=0)
        mlflow.log_metric("down", -math.inf, step=0)
    mlflow.flush()
    rid, eid = run.info.run_id, run.info.experiment_id
    q = urllib.parse.urlencode({"run": rid, "key": "wild"})
    status, got = call(f"{tracking.url}{UI}/metrics?{q}")
    assert status == 200
    assert got["series"][0]["values"] == [1.0, "Infinity", "-Infinity", 0.5, 0.7, None, 2.0]
    # Bucketed reads keep them too (a bucket's min and max; NaN takes the min's place in
    # a bucket that holds one, so the NaN-free stretch is asked for alone).
    body = {"run": [rid], "key": ["wild"], "points": 3, "max_step": 4}
    status, got = call(f"{tracking.url}{UI}/metrics", body)
    assert status == 200 and got["series"][0]["sampled"]
    assert got["series"][0]["values"] == ["Infinity", "-Infinity", 0.7]
    # Latest values in the run, the runs table and the table's min/max cells.
    status, got = call(f"{tracking.url}{UI}/runs/{rid}")
    assert got["run"]["data"]["metrics"] == {"wild": 2.0, "up": "Infinity", "down": "-Infinity"}
    status, got = call(f"{tracking.url}{UI}/experiments/{eid}/runs")
    assert got["runs"][0]["data"]["metrics"]["up"] == "Infinity"
    status, got = call(f"{tracking.url}{UI}/experiments/{eid}/metric-extremes?key=wild")
    assert got["extremes"][rid] == ["-Infinity", "Infinity"]


def test_runs_page_size_is_capped_like_mlflow_search(tracking: CollectorProcess) -> None:
    with mlflow.start_run() as run:
        pass
    eid = run.info.experiment_id
    for bad in (100_000, 50_001, 0, -5):
        status, got = call(f"{tracking.url}{UI}/experiments/{eid}/runs?max_results={bad}")
        assert status == 400 and "max_results must be between 1 and 50000" in got["message"]
        assert str(bad) in got["message"]
    status, got = call(f"{tracking.url}{UI}/experiments/{eid}/runs?max_results=50000")
    assert status == 200 and len(got["runs"]) == 1


def test_a_cached_series_is_replaced_when_new_points_arrive(tracking: CollectorProcess) -> None:
    """Answers are cached by the chunks they were read from: asking again gives the same
    series, and points logged since (new chunks) show at once."""
    with mlflow.start_run() as run:
        for s in range(1000):
            mlflow.log_metric("loss", s % 7, step=s)
        mlflow.flush()
        body = {"run": [run.info.run_id], "key": ["loss"], "points": 30}
        first = call(f"{tracking.url}{UI}/metrics", body)[1]["series"][0]
        assert call(f"{tracking.url}{UI}/metrics", body)[1]["series"][0] == first
        assert first["steps"][-1] == 999 and max(first["values"]) == 6
        mlflow.log_metric("loss", 100.0, step=1000)
        mlflow.flush()
        now = call(f"{tracking.url}{UI}/metrics", body)[1]["series"][0]
        assert now["steps"][-1] == 1000 and max(now["values"]) == 100.0


def test_series_cache_stays_within_its_bytes() -> None:
    from flightlog.collector.series_cache import SeriesCache, cache_for

    cache = SeriesCache(max_bytes=1000)
    for i in range(50):
        cache.put(("run", "k", i), b"x" * 100)
    assert cache.size <= 1000 and len(cache) == 10
    assert cache.get(("run", "k", 49)) == b"x" * 100 and cache.get(("run", "k", 0)) is None
    cache.put("big", b"x" * 300)  # over a quarter of the cache: not kept
    assert cache.get("big") is None

    class Store:
        pass

    a, b = Store(), Store()
    assert cache_for(a) is cache_for(a) and cache_for(a) is not cache_for(b)


def test_step_arguments_past_int64_are_refused_and_the_last_step_has_nothing_after(
    tracking: CollectorProcess,
) -> None:
    (rid,) = _runs_with_curves(1, 50)
    url = f"{tracking.url}{UI}/metrics"
    big = 99999999999999999999999
    for name, value in (
        ("min_step", big),
        ("min_step", -big),
        ("max_step", big),
        ("after_step", big),
        ("after_step", 2**63),
    ):
        for body in ({"run": [rid], "key": ["loss"], name: value}, None):
            q = urllib.parse.urlencode({"run": rid, "key": "loss", name: value})
            status, got = call(url if body else f"{url}?{q}", body)
            assert status == 400, (name, value, got)
            assert got["error_code"] == "INVALID_PARAMETER_VALUE"
            assert f"'{name}' must be a 64-bit integer" in got["message"]
    # The largest int64 step: valid, and nothing can come after it.
    last = 2**63 - 1
    q = urllib.parse.urlencode({"run": rid, "key": "loss", "after_step": last})
    status, got = call(f"{url}?{q}")
    assert status == 200 and got["series"][0]["steps"] == [], got
    status, got = call(url, {"run": [rid], "key": ["loss"], "after_step": [last]})
    assert status == 200 and got["series"][0]["steps"] == [], got
    # The extremes as a range are fine: every point.
    q = urllib.parse.urlencode({"run": rid, "key": "loss", "min_step": -(2**63), "max_step": last})
    status, got = call(f"{url}?{q}")
    assert status == 200 and got["series"][0]["steps"] == list(range(50)), got

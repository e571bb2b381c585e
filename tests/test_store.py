"""The Store interface (collector/store_api.py), run against every backend.

The ``store`` fixture is parametrised over the backends; today there is SQLite. A second
backend (PostgreSQL) adds its factory to ``BACKENDS`` and runs the same tests. Tests use
only the interface's methods, never SQL, so they hold for any backend.
"""

from __future__ import annotations

import math
import time
import uuid
from array import array
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from flightlog.collector.batch_checks import CHECKS
from flightlog.collector.store import _APPLY, SqliteStore
from flightlog.collector.store_api import DEFAULT_EXPERIMENT_ID, Store
from flightlog.core import ops
from flightlog.core.entities import ViewType
from flightlog.core.exceptions import MlflowException


def _sqlite(tmp: Path, request: pytest.FixtureRequest) -> Store:
    return SqliteStore(tmp / "flightlog.db", (tmp / "artifacts").as_uri())


def _postgresql(tmp: Path, request: pytest.FixtureRequest) -> Store:
    # A fresh database of the session's throwaway cluster (tests/pgserver.py) per test.
    from flightlog.collector.pgstore import PostgresStore

    server = request.getfixturevalue("pg_server")
    return PostgresStore(server.create_database(), (tmp / "artifacts").as_uri())


BACKENDS: dict[str, Callable[[Path, pytest.FixtureRequest], Store]] = {
    "sqlite": _sqlite,
    "postgresql": _postgresql,
}


@pytest.fixture(params=sorted(BACKENDS))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    s = BACKENDS[request.param](tmp_path, request)
    try:
        yield s
    finally:
        s.close()


def _run(store: Store, experiment_id: str = "0", **extra: object) -> str:
    run_id = uuid.uuid4().hex
    dup, errors = store.apply_batch(
        uuid.uuid4().hex,
        [(ops.CREATE_RUN, {"run_id": run_id, "experiment_id": experiment_id, **extra})],
        [],
    )
    assert (dup, errors) == (False, [])
    return run_id


def _series(n: int, start: int = 0) -> tuple[array[int], array[float], array[float]]:
    steps = array("q", range(start, start + n))
    return steps, array("d", (float(s) * 0.5 for s in steps)), array("d", (1e9 + s for s in steps))


def test_op_tables_cover_every_op_name() -> None:
    assert set(CHECKS) == set(ops.ALL)
    assert set(_APPLY) == set(ops.ALL)


def test_experiments_lifecycle(store: Store) -> None:
    assert store.get_experiment(str(DEFAULT_EXPERIMENT_ID))["name"] == "Default"
    eid = store.create_experiment("exp", None, {"team": "a"})
    exp = store.get_experiment(eid)
    assert exp["name"] == "exp" and exp["tags"] == {"team": "a"}
    assert exp["artifact_location"] == f"{store.artifact_root}/{eid}"
    with pytest.raises(MlflowException, match="already exists"):
        store.create_experiment("exp")
    store.rename_experiment(eid, "renamed")
    assert store.get_experiment_by_name("renamed")["experiment_id"] == eid  # type: ignore[index]
    assert store.get_experiment_by_name("exp") is None
    store.set_experiment_tag(eid, "k", "v")
    store.delete_experiment_tag(eid, "team")
    assert store.get_experiment(eid)["tags"] == {"k": "v"}
    with pytest.raises(MlflowException) as e:
        store.delete_experiment_tag(eid, "team")
    assert e.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    run_id = _run(store, eid)
    store.delete_experiment(eid)
    assert store.get_experiment(eid)["lifecycle_stage"] == "deleted"
    assert store.get_run(run_id)["info"]["lifecycle_stage"] == "deleted"  # runs follow
    with pytest.raises(MlflowException) as e:
        store.delete_experiment(eid)
    assert e.value.error_code == "INVALID_STATE"
    store.restore_experiment(eid)
    assert store.get_run(run_id)["info"]["lifecycle_stage"] == "active"
    with pytest.raises(MlflowException, match="default experiment"):
        store.delete_experiment("0")
    assert [x["experiment_id"] for x in store.list_experiments([eid, "999", "0"])] == [eid, "0"]


def test_apply_batch_stores_what_it_can_and_dedupes(store: Store) -> None:
    run_id = _run(store, tags={"t": "1"})
    steps, vals, ts = _series(10)
    batch: list[tuple[str, dict[str, Any]]] = [
        (ops.LOG_PARAMS, {"run_id": run_id, "params": {"lr": "0.1"}}),
        (ops.LOG_PARAMS, {"run_id": run_id, "params": {"lr": "0.2"}}),  # refused
        (ops.SET_TAGS, {"run_id": run_id, "tags": {"mlflow.runName": "named"}}),
        (ops.SET_TAGS, {"run_id": "f" * 32, "tags": {"a": "b"}}),  # unknown run
        (
            ops.LOG_METRIC,
            {"run_id": run_id, "key": "single", "value": 2.0, "step": 3, "timestamp": 1000},
        ),
        ("no_such_op", {"run_id": run_id}),
    ]
    dup, errors = store.apply_batch("b1", batch, [(run_id, "loss", steps, vals, ts)])
    assert dup is False
    assert [(e["op"], e["error_code"]) for e in errors] == [
        ("log_params", "INVALID_PARAMETER_VALUE"),
        ("set_tags", "RESOURCE_DOES_NOT_EXIST"),
        ("no_such_op", "INVALID_PARAMETER_VALUE"),
    ]
    run = store.get_run(run_id)
    assert run["data"]["params"] == {"lr": "0.1"}
    assert run["info"]["run_name"] == "named"
    assert run["data"]["metrics"] == {"loss": 4.5, "single": 2.0}
    # The same batch id again is acknowledged and not applied twice.
    assert store.apply_batch("b1", [], [(run_id, "loss", steps, vals, ts)]) == (True, [])
    got_steps, got_vals, _ = store.metric_history(run_id, "loss")
    assert list(got_steps) == list(steps) and list(got_vals) == list(vals)
    # Points of an unknown run are reported, not stored.
    _, errors = store.apply_batch("b2", [], [("e" * 32, "loss", steps, vals, ts)])
    assert errors and errors[0]["error_code"] == "RESOURCE_DOES_NOT_EXIST"


def test_write_run_is_all_or_nothing(store: Store) -> None:
    run_id = _run(store)
    store.write_run(run_id, [(ops.LOG_PARAMS, {"params": {"a": "1"}})])
    with pytest.raises(MlflowException, match="Changing param values"):
        store.write_run(
            run_id,
            [(ops.SET_TAGS, {"tags": {"x": "y"}}), (ops.LOG_PARAMS, {"params": {"a": "2"}})],
        )
    assert "x" not in store.get_run(run_id)["data"]["tags"]  # the tag was rolled back
    store.delete_run(run_id)
    with pytest.raises(MlflowException, match="must be in the 'active' state"):
        store.write_run(run_id, [(ops.SET_TAGS, {"tags": {"x": "y"}})])
    store.restore_run(run_id)
    store.log_inputs(run_id, [("ds", "d1", '{"name": "ds"}', "[]")])
    store.log_inputs(run_id, [("ds", "d1", '{"name": "other"}', "[]")])  # kept as it was
    (text,) = store.runs_json([run_id], lambda eid, rid, uri: "proxied")
    assert '"artifact_uri":"proxied"' in text and '"dataset_inputs"' in text


def test_runs_reads(store: Store) -> None:
    a, b = _run(store), _run(store)
    assert [r["info"]["run_id"] for r in store.get_runs([b, "0" * 32, a])] == [b, a]
    assert store.run_exists(a) and not store.run_exists("0" * 32)
    eid, uri = store.run_artifact_location(a)
    assert eid == "0" and uri.endswith(f"/{a}/artifacts")
    with pytest.raises(MlflowException) as e:
        store.run_artifact_location("0" * 32)
    assert e.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    with pytest.raises(MlflowException):
        store.get_run("0" * 32)
    texts = store.runs_json([b, a], lambda eid, rid, uri: uri)
    assert [orjson.loads(t)["info"]["run_id"] for t in texts] == [b, a]


def test_metric_reads_and_downsampling(store: Store) -> None:
    run_id = _run(store)
    steps, vals, ts = _series(5000)
    vals[10] = math.nan
    store.apply_batch("m", [], [(run_id, "loss", steps, vals, ts)])
    assert store.series_extent(run_id, "loss") == (5000, 0, 4999)
    assert store.series_extent(run_id, "none") == (0, 0, 0)
    chunks = store.metric_chunks(run_id, "loss")
    assert len(chunks) == 1
    s, v, _ = store.sampled_series(run_id, "loss", 300)
    assert 3 <= len(s) <= 300 and s[-1] == 4999 and list(s) == sorted(s)
    assert max(x for x in v if x == x) == vals[-1]  # the extreme survives
    assert any(x != x for x in v)  # and so does the NaN
    s, _, _ = store.sampled_series(run_id, "loss", 10_000)
    assert len(s) == 5000  # short enough: every point


def test_search(store: Store) -> None:
    eid = store.create_experiment("search")
    ids = [_run(store, eid, run_name=f"r{i}") for i in range(5)]
    for i, run_id in enumerate(ids):
        store.apply_batch(None, [(ops.LOG_PARAMS, {"run_id": run_id, "params": {"i": str(i)}})], [])
    page, token = store.search_run_ids(
        [eid], "params.i IN ('3', '4')", ViewType.ACTIVE_ONLY, 1, None, None
    )
    assert len(page) == 1 and token
    page2, token2 = store.search_run_ids(
        [eid], "params.i IN ('3', '4')", ViewType.ACTIVE_ONLY, 1, None, token
    )
    assert token2 is None and {*page, *page2} == {ids[3], ids[4]}
    page, _ = store.search_run_ids([eid], None, ViewType.ACTIVE_ONLY, 10, ["params.i DESC"], None)
    assert page == ids[::-1]
    exps, _ = store.search_experiments(ViewType.ALL, 10, "name = 'search'", None, None)
    assert [x["experiment_id"] for x in exps] == [eid]


def test_upkeep(store: Store) -> None:
    watched = _run(store, heartbeat=True)
    unwatched = _run(store)
    assert store.fail_stale_runs(0) == []
    later = int(time.time() * 1000) + 60_000
    assert store.fail_stale_runs(later) == [watched]
    assert store.get_run(watched)["info"]["status"] == "FAILED"
    assert store.get_run(unwatched)["info"]["status"] == "RUNNING"
    # Its next heartbeat brings it back.
    store.apply_batch(None, [(ops.HEARTBEAT, {"run_id": watched})], [])
    assert store.get_run(watched)["info"]["status"] == "RUNNING"
    store.apply_batch("old", [], [])
    assert store.prune_batch_ids(later) >= 1
    assert store.apply_batch("old", [], []) == (False, [])  # forgotten: applied again


def test_chunk_spans_of_many_series_in_one_query(store: Store) -> None:
    """The chart read of many runs (collector.downsample.sampled_many) finds every
    series' chunks at once and answers as one read per series would."""
    from flightlog.collector.downsample import sampled_many, sampled_range

    runs = [_run(store) for _ in range(3)]
    for i, rid in enumerate(runs):
        for start in (0, 500):  # two chunks per series
            store.apply_batch(uuid.uuid4().hex, [], [(rid, "loss", *_series(500, start))])
        if i:
            store.apply_batch(uuid.uuid4().hex, [], [(rid, "acc", *_series(10))])
    spans = store.metric_chunk_spans_many([*runs, runs[0]], ["loss", "acc", "nope"], 400, None)
    # acc ends at step 9, before the range: no spans; "nope" was never logged.
    assert set(spans) == {(r, "loss") for r in runs}
    assert spans[(runs[0], "loss")] == store.metric_chunk_spans(runs[0], "loss", 400, None)
    assert len(spans[(runs[0], "loss")]) == 2
    every = store.metric_chunk_spans_many(runs, ["acc"], None, None)
    assert set(every) == {(r, "acc") for r in runs[1:]}
    many = list(sampled_many(store, runs, ["loss", "acc"], 60, 100, 900))
    assert [(r, k) for r, k, *_ in many] == [(r, k) for r in runs for k in ("loss", "acc")]
    for rid, key, points, sampled in many:
        assert (points, sampled) == sampled_range(store, rid, key, 60, 100, 900)

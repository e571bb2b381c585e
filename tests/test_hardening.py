"""The collector under hostile input (issue 11): each defect reproduced on a real process.

Every request here once got a 500 or did something it should not (wrote outside the
artifact root, replaced a stored file with a broken one, accepted values MLflow refuses);
now each gets a 400 ``INVALID_PARAMETER_VALUE`` naming what was wrong, and nothing is
left behind.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from tests.conftest import CollectorProcess, start_collector

API = "/api/2.0/mlflow/"
PROXY = "/api/2.0/mlflow-artifacts/artifacts"


def call(
    c: CollectorProcess,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """One request on a fresh connection: (status, decoded JSON or msgpack or raw bytes)."""
    headers = dict(headers or {})
    if isinstance(body, dict):
        body = json.dumps(body).encode()
        headers.setdefault("Content-Type", "application/json")
    conn = http.client.HTTPConnection("127.0.0.1", c.port, timeout=60)
    try:
        conn.request(method, path, body, headers)
        resp = conn.getresponse()
        data = resp.read()
    finally:
        conn.close()
    if resp.getheader("Content-Type", "").startswith("application/json"):
        return resp.status, json.loads(data)
    if resp.getheader("Content-Type", "").startswith("application/msgpack"):
        return resp.status, msgpack.unpackb(data, raw=False)
    return resp.status, data


def rpc(c: CollectorProcess, method: str, args: dict[str, Any]) -> tuple[int, Any]:
    """A native RPC call."""
    return call(
        c,
        "POST",
        f"/api/flightlog/rpc/{method}",
        msgpack.packb(args, use_bin_type=True),
        {"Content-Type": "application/msgpack"},
    )


def assert_invalid(answer: tuple[int, Any], *words: str) -> None:
    """A 400 INVALID_PARAMETER_VALUE whose message names ``words``."""
    status, body = answer
    assert status == 400, answer
    assert body["error_code"] == "INVALID_PARAMETER_VALUE", body
    for word in words:
        assert word in body["message"], (word, body["message"][:300])


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CollectorProcess]:
    """One collector for the requests that change nothing."""
    c = start_collector(tmp_path_factory.mktemp("hardening") / "store")
    yield c
    c.stop()


def new_run(c: CollectorProcess) -> str:
    status, body = call(c, "POST", API + "runs/create", {"experiment_id": "0"})
    assert status == 200, body
    return str(body["run"]["info"]["run_id"])


# -- 6: malformed input answered 400, not 500 ------------------------------------------------

BIG = str(2**63)


@pytest.mark.parametrize(
    ("method", "endpoint", "body"),
    [
        ("GET", f"experiments/get?experiment_id={BIG}", None),
        ("POST", "experiments/delete", {"experiment_id": BIG}),
        ("POST", "experiments/restore", {"experiment_id": str(2**64)}),
        ("POST", "experiments/update", {"experiment_id": BIG, "new_name": "x"}),
        (
            "POST",
            "experiments/set-experiment-tag",
            {"experiment_id": BIG, "key": "k", "value": "v"},
        ),
        ("POST", "experiments/delete-experiment-tag", {"experiment_id": BIG, "key": "k"}),
        ("POST", "runs/create", {"experiment_id": BIG}),
        ("POST", "runs/search", {"experiment_ids": [BIG]}),
    ],
)
def test_experiment_ids_beyond_int64_are_invalid(
    shared: CollectorProcess, method: str, endpoint: str, body: Any
) -> None:
    assert_invalid(call(shared, method, API + endpoint, body), "experiment id")


@pytest.mark.parametrize("eid", ["1_0", "+0", " 0", "0 ", "٠", "²", "0x0", "-1", "1.0", ""])
def test_experiment_ids_are_parsed_strictly(shared: CollectorProcess, eid: str) -> None:
    # int() takes "1_0", "+0", " 0" and Arabic-Indic digits; MLflow's server takes none.
    answer = call(shared, "POST", API + "experiments/delete", {"experiment_id": eid})
    if eid == "":
        assert_invalid(answer, "experiment_id")
    else:
        assert_invalid(answer, "experiment id")
    assert_invalid(rpc(shared, "get_experiment", {"experiment_id": eid}))


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"filter": "metrics.x > 99999999999999999999999"}, ["64-bit"]),
        ({"filter": "metrics.x > " + "9" * 5000}, ["64-bit"]),
        ({"filter": "attributes.start_time < -9223372036854775809"}, ["64-bit"]),
        ({"filter": "tags.a LIKE '" + "%a" * 30_000 + "'"}, ["LIKE pattern"]),
        ({"run_view_type": "²"}, ["run_view_type"]),
        ({"run_view_type": "٣"}, ["run_view_type"]),
        # Each order_by key is a join; past SQLite's 64 tables it was a 500.
        ({"order_by": [f"metrics.m{i} DESC" for i in range(64)]}, ["order_by"]),
        ({"order_by": [f"params.p{i}" for i in range(200)]}, ["order_by"]),
    ],
)
def test_search_arguments_out_of_range_are_invalid(
    shared: CollectorProcess, body: dict[str, Any], words: list[str]
) -> None:
    # A run to match against: SQLite only complains about a pattern when it runs it.
    run_id = new_run(shared)
    call(shared, "POST", API + "runs/set-tag", {"run_id": run_id, "key": "a", "value": "ab"})
    assert_invalid(
        call(shared, "POST", API + "runs/search", {"experiment_ids": ["0"], **body}), *words
    )


def test_view_type_and_forged_page_token_are_invalid(shared: CollectorProcess) -> None:
    assert_invalid(
        call(shared, "POST", API + "experiments/search", {"view_type": "²"}), "view_type"
    )
    for _ in range(3):
        new_run(shared)
    status, page = call(
        shared, "POST", API + "runs/search", {"experiment_ids": ["0"], "max_results": 1}
    )
    assert status == 200 and page["next_page_token"]
    token = json.loads(base64.urlsafe_b64decode(page["next_page_token"]))
    token["after"] = [10**30 if isinstance(x, int) else x for x in token["after"]]
    forged = base64.urlsafe_b64encode(json.dumps(token).encode()).decode()
    body = {"experiment_ids": ["0"], "max_results": 1, "page_token": forged}
    assert_invalid(call(shared, "POST", API + "runs/search", body), "page_token")


@pytest.mark.parametrize(
    ("method", "args"),
    [
        ("search_runs", {"experiment_ids": [BIG]}),
        ("search_runs", {"experiment_ids": ["0"], "filter_string": "metrics.a > " + "1" * 30}),
        ("search_runs", {"experiment_ids": ["0"], "run_view_type": "²"}),
        ("search_runs", {"experiment_ids": ["0"], "max_results": "x"}),
        ("search_runs", {"experiment_ids": ["0"], "order_by": 5}),
        ("search_experiments", {"view_type": "²"}),
        ("create_experiment", {"name": "x", "tags": [1, 2, 3]}),
        ("create_experiment", {"name": "x", "artifact_location": "ftp://x/y"}),
        ("create_experiment", {"name": "x", "artifact_location": 5}),
        ("create_experiment", {"name": "   "}),
        ("create_experiment", {"name": "n" * 100_000}),
        ("rename_experiment", {"experiment_id": "0", "new_name": "n" * 100_000}),
        ("set_experiment_tag", {"experiment_id": "0", "key": "k", "value": "v" * 100_000}),
        ("get_experiment", {"experiment_id": 2**63}),
    ],
)
def test_rpc_arguments_of_the_wrong_type_or_size_are_invalid(
    shared: CollectorProcess, method: str, args: dict[str, Any]
) -> None:
    status, body = rpc(shared, method, args)
    assert status == 400 and body["error_code"] == "INVALID_PARAMETER_VALUE", (status, body)


# -- 8: MLflow's limits ------------------------------------------------------------------------


def test_mlflow_limits_on_run_names_tags_users_and_inputs(shared: CollectorProcess) -> None:
    run_id = new_run(shared)
    assert_invalid(
        call(shared, "POST", API + "runs/update", {"run_id": run_id, "run_name": "x" * 1_000_000}),
        "Run name",
        "250",
    )
    _status, body = call(shared, "GET", API + f"runs/get?run_id={run_id}")
    # Neither the name nor its mlflow.runName tag took the oversized value.
    assert len(body["run"]["info"]["run_name"]) <= 250
    assert all(len(t["value"]) <= 8000 for t in body["run"]["data"].get("tags", []))
    ok = call(shared, "POST", API + "runs/update", {"run_id": run_id, "run_name": "r" * 250})
    assert ok[0] == 200 and ok[1]["run_info"]["run_name"] == "r" * 250
    tag = {"experiment_id": "0", "key": "k", "value": "x" * 20_001}
    assert_invalid(call(shared, "POST", API + "experiments/set-experiment-tag", tag), "20000")
    tag["value"] = "x" * 20_000
    assert call(shared, "POST", API + "experiments/set-experiment-tag", tag)[0] == 200
    create = {"name": "tagged", "tags": [{"key": "k", "value": "x" * 20_001}]}
    assert_invalid(call(shared, "POST", API + "experiments/create", create), "20000")
    user = {"experiment_id": "0", "user_id": "u" * 257}
    assert_invalid(call(shared, "POST", API + "runs/create", user), "user_id")
    dataset = {"name": "d", "digest": "x", "source_type": "local", "source": "s" * 65_536}
    big_source = {"run_id": run_id, "datasets": [{"dataset": dataset}]}
    assert_invalid(call(shared, "POST", API + "runs/log-inputs", big_source), "source")
    dataset["source"] = "s"
    big_tag = {
        "run_id": run_id,
        "datasets": [{"dataset": dataset, "tags": [{"key": "k", "value": "v" * 501}]}],
    }
    assert_invalid(call(shared, "POST", API + "runs/log-inputs", big_tag), "tags value")


# -- 5: artifacts only under the artifact root(s) and in object stores ----------------------


def test_artifact_locations_outside_the_roots_are_refused(tmp_path: Path) -> None:
    extra = tmp_path / "extra-root"
    c = start_collector(tmp_path / "store", None, "--allowed-artifact-root", str(extra))
    outside = tmp_path / "elsewhere"
    try:
        for location in [str(outside), outside.as_uri(), "ftp://x/y", "/etc", "../../up"]:
            answer = call(
                c, "POST", API + "experiments/create", {"name": "e", "artifact_location": location}
            )
            assert_invalid(answer, "artifact_location", "--allowed-artifact-root")
            assert str(tmp_path / "store") in answer[1]["message"]  # names the allowed root
            assert_invalid(
                rpc(c, "create_experiment", {"name": "e", "artifact_location": location})
            )
        assert not outside.exists()
        # Object stores, the artifact root, an allowed root and relative locations work.
        created = {}
        for location in [
            "s3://my-bucket/experiments",
            str(extra / "team"),
            (tmp_path / "store" / "artifacts" / "mine").as_uri(),
            "relative/dir",
        ]:
            status, body = call(
                c,
                "POST",
                API + "experiments/create",
                {"name": location, "artifact_location": location},
            )
            assert status == 200, body
            created[location] = body["experiment_id"]
        status, body = call(
            c, "GET", API + f"experiments/get?experiment_id={created['relative/dir']}"
        )
        # A relative location lands under the artifact root, not the collector's cwd:
        # REST clients see it as the proxy's path, the store keeps the real directory.
        assert body["experiment"]["artifact_location"] == "mlflow-artifacts:/relative/dir"
        with sqlite3.connect(c.db) as db:
            (stored,) = db.execute(
                "SELECT artifact_location FROM experiments WHERE experiment_id = ?",
                (int(created["relative/dir"]),),
            ).fetchone()
        assert stored == (tmp_path / "store" / "artifacts" / "relative" / "dir").as_uri()
        status, body = call(
            c, "POST", API + "runs/create", {"experiment_id": created[str(extra / "team")]}
        )
        run_id = body["run"]["info"]["run_id"]
        eid = created[str(extra / "team")]
        assert call(c, "PUT", f"{PROXY}/{eid}/{run_id}/artifacts/f.txt", b"hi")[0] == 200
        assert (extra / "team" / run_id / "artifacts" / "f.txt").read_bytes() == b"hi"
    finally:
        c.stop()


def test_stored_locations_outside_the_roots_are_not_written(tmp_path: Path) -> None:
    # An experiment stored before this check (or by another tool) keeps its location, but
    # the collector does not write there.
    c = start_collector(tmp_path / "store")
    outside = tmp_path / "elsewhere"
    try:
        _, body = call(c, "POST", API + "experiments/create", {"name": "old"})
        eid = body["experiment_id"]
        with sqlite3.connect(c.db) as db:
            db.execute(
                "UPDATE experiments SET artifact_location = ? WHERE experiment_id = ?",
                (str(outside), int(eid)),
            )
        _status, body = call(c, "POST", API + "runs/create", {"experiment_id": eid})
        run_id = body["run"]["info"]["run_id"]
        answer = call(c, "PUT", f"{PROXY}/{eid}/{run_id}/artifacts/f.txt", b"x")
        assert_invalid(answer, "outside")
        answer = call(c, "PUT", f"/api/flightlog/artifacts/{run_id}/f.txt", b"x")
        assert answer[0] == 400
        assert not outside.exists()
    finally:
        c.stop()


# -- 7: artifact file system edge cases --------------------------------------------------------


def test_artifact_path_edge_cases_answer_400_and_leave_nothing(tmp_path: Path) -> None:
    c = start_collector(tmp_path / "store")
    try:
        run_id = new_run(c)
        base = f"{PROXY}/0/{run_id}/artifacts"
        root = tmp_path / "store" / "artifacts" / "0" / run_id / "artifacts"
        assert call(c, "PUT", f"{base}/f", b"x")[0] == 200
        for path in ["a" * 300, "a/" * 2100 + "f", "d/" * 900 + "f", "%C3%A9" * 128]:
            assert_invalid(call(c, "PUT", f"{base}/{path}", b"x"), "Invalid path")
        assert_invalid(call(c, "PUT", f"/api/flightlog/artifacts/{run_id}/{'a/' * 2100}f", b"x"))
        # Below a file: nothing to delete (as for a missing path), nothing to write.
        assert call(c, "DELETE", f"{base}/f/g")[0] == 200
        assert_invalid(call(c, "PUT", f"{base}/f/g", b"x"), "parent")
        assert sorted(os.listdir(root)) == ["f"]  # no directories left behind
        # A name that is not UTF-8, put there by something else, does not break listings.
        os.mkdir(os.path.join(os.fsencode(root), b"bad-\xff-name"))
        (root / "g").write_bytes(b"yy")
        status, body = call(c, "GET", f"{PROXY}?path=0/{run_id}/artifacts")
        assert status == 200 and [f["path"] for f in body["files"]] == ["f", "g"]
        status, body = call(c, "GET", f"/api/flightlog/artifact-list/{run_id}")
        assert status == 200 and [f[0] for f in body] == ["f", "g"]
        status, body = call(c, "GET", API + f"artifacts/list?run_id={run_id}")
        assert status == 200 and [f["path"] for f in body["files"]] == ["f", "g"]
    finally:
        c.stop()


# -- 9: /health ---------------------------------------------------------------------------------


def test_health_shows_path_and_pid_only_with_the_token(tmp_path: Path) -> None:
    c = start_collector(tmp_path / "store", None, "--token", "s3cret")
    try:
        status, body = call(c, "GET", "/health")
        assert status == 200 and body["status"] == "OK"
        assert "pid" not in body and "store" not in body
        assert str(tmp_path) not in json.dumps(body) and str(c.proc.pid) not in json.dumps(body)
        status, body = call(c, "GET", "/health", headers={"Authorization": "Bearer s3cret"})
        assert body["pid"] == c.proc.pid and body["store"] == str(tmp_path / "store")
    finally:
        c.stop()
    c = start_collector(tmp_path / "open")
    try:
        status, body = call(c, "GET", "/health")
        assert "pid" not in body and "store" not in body and body["store_id"]
    finally:
        c.stop()

"""Fuzzing every REST route, RPC method, UI route and artifact endpoint (issue 11).

Each endpoint is sent maps of *its own* argument names (so the fuzzer gets past "missing
argument" into every argument's parsing and on into the store) with values that are
often nearly right (a real run id, experiment "0", a parseable filter) and often hostile
(huge and negative numbers, non-ASCII digits, long strings, wrong types, nesting).
Every answer must be a success or a clear client error, never a 5xx; no request may
hang; afterwards the collector still serves. The routes come from the collector's own
tables (``rest._ROUTES``, ``rpc.METHODS``, ``ui_api.routes()``): a new endpoint is fuzzed
without edits here.
"""

from __future__ import annotations

import http.client
import json
import urllib.parse
from pathlib import Path
from typing import Any

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flightlog.collector import rest, rpc, ui_api
from tests.conftest import CollectorProcess, start_collector
from tests.test_hardening import new_run

#: Every argument name a REST handler or RPC method reads (request_args calls).
ARG_NAMES = [
    "artifact_location",
    "datasets",
    "end_step",
    "end_time",
    "experiment_id",
    "experiment_ids",
    "experiment_name",
    "filter",
    "filter_string",
    "key",
    "keys",
    "max_points",
    "max_results",
    "metric_key",
    "metrics",
    "models",
    "name",
    "new_name",
    "order_by",
    "page_token",
    "params",
    "path",
    "run_id",
    "run_ids",
    "run_name",
    "run_uuid",
    "run_view_type",
    "start_step",
    "start_time",
    "status",
    "step",
    "tags",
    "timestamp",
    "user_id",
    "value",
    "view_type",
]

RUN = "0" * 32  # replaced by a real run id per collector
hostile_ints = st.sampled_from(
    [0, 1, -1, 2**31, 2**63 - 1, 2**63, -(2**63) - 1, 2**64, 10**30]
) | st.integers(-(2**70), 2**70)
hostile_text = st.text(max_size=30) | st.sampled_from(
    [
        "0",
        "1_0",
        "+1",
        " 1",
        "٣",
        "²",
        "1e400",
        "NaN",
        "-Infinity",
        "a" * 300,
        "../x",
        "%",
        "x" * 9000,
        "\x00",
        "ACTIVE_ONLY",
        "ALL",
        "RUNNING",
        str(2**63),
    ]
)
scalars = st.none() | st.booleans() | hostile_ints | st.floats() | hostile_text
filters = st.sampled_from(
    [
        "metrics.loss > 0.5",
        "params.lr = '0.1'",
        "tags.t LIKE '%a%'",
        "attributes.status = 'RUNNING'",
        "metrics.x > 99999999999999999999999",
        "metrics.x > " + "9" * 5000,
        "tags.a LIKE '" + "%a" * 30_000 + "'",
        "attributes.run_name ILIKE 'É%'",
        "name = 'Default'",
        "metrics.",
        "tags.`a b` IN ('x', 'y')",
        "attributes.start_time < -9223372036854775809",
    ]
) | st.text(max_size=60)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(["key", "value", "dataset", "name"]) | st.text(max_size=8),
            inner,
            max_size=4,
        )
    ),
    max_leaves=12,
)
NEAR: dict[str, st.SearchStrategy[Any]] = {
    "run_id": st.just(RUN),
    "run_uuid": st.just(RUN),
    "run_ids": st.lists(st.just(RUN) | hostile_text, max_size=3),
    "experiment_id": st.sampled_from(["0", 0, "1"]),
    "experiment_ids": st.lists(st.sampled_from(["0", "1"]) | hostile_text, max_size=3),
    "filter": filters,
    "filter_string": filters,
    "order_by": st.lists(
        st.sampled_from(["metrics.loss DESC", "attributes.start_time", "name"]) | hostile_text,
        max_size=3,
    ),
    "key": st.sampled_from(["loss", "t", "a/b"]),
    "keys": st.lists(st.sampled_from(["loss", "t"]), max_size=3),
    "metric_key": st.just("loss"),
    "value": st.sampled_from(["v", "1.5", "NaN"]),
    "metrics": st.lists(
        st.fixed_dictionaries(
            {
                "key": st.just("loss"),
                "value": st.floats(),
                "timestamp": hostile_ints,
                "step": hostile_ints,
            }
        ),
        max_size=3,
    ),
    "params": st.lists(
        st.fixed_dictionaries({"key": hostile_text, "value": hostile_text}), max_size=3
    ),
    "tags": st.lists(
        st.fixed_dictionaries({"key": hostile_text, "value": hostile_text}), max_size=3
    ),
    "datasets": st.lists(
        st.fixed_dictionaries(
            {
                "dataset": st.dictionaries(
                    st.sampled_from(
                        ["name", "digest", "source_type", "source", "schema", "profile"]
                    ),
                    hostile_text,
                )
            }
        ),
        max_size=2,
    ),
    "name": hostile_text,
    "path": st.sampled_from(["", "f.txt", "a/b", "../x", "a/" * 300]),
}


def args_for(names: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Maps of these argument names: all nearly right (to reach the store), or anything."""
    near = st.fixed_dictionaries(
        {name: NEAR[name] for name in names if name in NEAR},
        optional={name: scalars for name in names if name not in NEAR},
    )
    hostile = st.fixed_dictionaries(
        {}, optional={name: NEAR.get(name, scalars) | scalars | values for name in names}
    )
    return near | hostile


rest_routes = [(method, path) for method, path, _handler in rest._ROUTES]
rest_requests = st.tuples(
    st.sampled_from(rest_routes),
    args_for(ARG_NAMES),
    st.sampled_from(["/api/2.0/mlflow", "/ajax-api/2.0/mlflow"]),
)
rpc_requests = st.tuples(st.sampled_from(sorted(rpc.METHODS)), args_for(ARG_NAMES))
artifact_paths = st.sampled_from(
    [
        "f.txt",
        "a/b/c.bin",
        "../x",
        "a/" * 200 + "f",
        "a" * 300,
        "%00",
        "d/..",
        "f.txt/g",
        "%C3%A9.txt",
    ]
) | st.text(alphabet="ab/._-%0", min_size=1, max_size=40)
artifact_requests = st.tuples(
    st.sampled_from(["GET", "PUT", "DELETE"]),
    st.sampled_from(["proxy", "native", "list", "get-artifact", "native-list"]),
    artifact_paths,
    st.binary(max_size=200),
    st.sampled_from(
        [
            {},
            {"Content-Encoding": "gzip"},
            {"Content-Encoding": "deflate"},
            {"Content-Encoding": "br"},
        ]
    ),
)


#: The web UI's JSON routes (GET) and the query parameters they read.
ui_routes = [r.path for r in ui_api.routes()]
UI_QUERY = ["view", "max_results", "filter", "order_by", "page_token", "key", "run"]
UI_QUERY += ["min_step", "max_step", "after_step", "points", "path", "download"]
ui_requests = st.tuples(
    st.sampled_from(ui_routes),
    st.sampled_from(["0", "1", "1_0", str(2**63), "x", "٣", "%20"]),
    st.lists(st.tuples(st.sampled_from(UI_QUERY), hostile_text | filters), max_size=5),
)


class Client:
    """One keep-alive connection, reopened when the collector closes it."""

    def __init__(self, c: CollectorProcess) -> None:
        self.c = c
        self.conn = http.client.HTTPConnection("127.0.0.1", c.port, timeout=60)
        self.seen: dict[tuple[str, int], int] = {}
        self.last: dict[str, bytes] = {}  # the last answer per label, for failure messages

    def send(
        self, label: str, method: str, path: str, body: bytes | None, headers: dict[str, str]
    ) -> tuple[int, bytes]:
        for attempt in range(2):
            try:
                self.conn.request(method, path, body, headers)
                resp = self.conn.getresponse()
                data = resp.read()
                if resp.getheader("Connection", "").lower() == "close":
                    self.conn.close()
                break
            except (http.client.HTTPException, ConnectionError):
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.c.port, timeout=60)
                if attempt:
                    raise
        self.seen[(label, resp.status)] = self.seen.get((label, resp.status), 0) + 1
        self.last[label] = data[:300]
        assert resp.status < 500, (
            method,
            path[:200],
            body[:200] if body else None,
            resp.status,
            data[:300],
        )
        if resp.status >= 400:
            error = (
                msgpack.unpackb(data)
                if resp.getheader("Content-Type") == "application/msgpack"
                else json.loads(data)
            )
            assert error["error_code"] and error["message"], error
        return resp.status, data


def _real(value: Any, run_id: str, *, msgpack_ints: bool = False) -> Any:
    """The value with the real run id in, and (for msgpack) ints it cannot carry as text."""
    if value == RUN:
        return run_id
    if msgpack_ints and isinstance(value, int) and not -(2**63) <= value < 2**64:
        return str(value)
    if isinstance(value, list):
        return [_real(v, run_id, msgpack_ints=msgpack_ints) for v in value]
    if isinstance(value, dict):
        return {k: _real(v, run_id, msgpack_ints=msgpack_ints) for k, v in value.items()}
    return value


FUZZ = settings(
    max_examples=800,
    deadline=None,
    database=None,
    derandomize=True,  # the same examples every run: reaching each route is not luck
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def test_every_rest_route_rpc_method_and_artifact_endpoint_fuzzed(tmp_path: Path) -> None:
    c = start_collector(tmp_path / "store", None, "--body-timeout", "10")
    client = Client(c)
    run_id = new_run(c)

    def restore() -> None:
        # Keep the fuzzed run and its experiment active, so later requests reach past
        # "run is deleted" (deleting an experiment deletes its runs).
        headers = {"Content-Type": "application/json"}
        for what, body in [("experiments", {"experiment_id": "0"}), ("runs", {"run_id": run_id})]:
            url = f"/api/2.0/mlflow/{what}/restore"
            client.send("restore", "POST", url, json.dumps(body).encode(), headers)

    @FUZZ
    @given(rest_requests)
    def fuzz_rest(request: tuple[tuple[str, str], dict[str, Any], str]) -> None:
        (method, path), args, prefix = request
        args = {k: _real(v, run_id) for k, v in args.items()}
        if method == "GET":
            query = urllib.parse.urlencode(
                [(k, json.dumps(v) if not isinstance(v, str) else v) for k, v in args.items()]
            )
            client.send(path, "GET", f"{prefix}{path}?{query}", None, {})
        else:
            body = json.dumps(args, default=str).encode()
            client.send(path, "POST", prefix + path, body, {"Content-Type": "application/json"})
        if "delete" in path:
            restore()

    @FUZZ
    @given(rpc_requests)
    def fuzz_rpc(request: tuple[str, dict[str, Any]]) -> None:
        method, args = request
        args = {k: _real(v, run_id, msgpack_ints=True) for k, v in args.items()}
        body = msgpack.packb(args, use_bin_type=True)
        client.send(
            method,
            "POST",
            f"/api/flightlog/rpc/{method}",
            body,
            {"Content-Type": "application/msgpack"},
        )
        if method.startswith("delete"):
            restore()

    @settings(FUZZ, max_examples=300)
    @given(artifact_requests)
    def fuzz_artifacts(request: tuple[str, str, str, bytes, dict[str, str]]) -> None:
        method, kind, path, body, headers = request
        q = urllib.parse.quote
        if kind == "proxy":
            url = f"/api/2.0/mlflow-artifacts/artifacts/0/{run_id}/artifacts/{path}"
        elif kind == "native":
            url = f"/api/flightlog/artifacts/{run_id}/{path}"
        elif kind == "list":
            method, url = (
                "GET",
                f"/api/2.0/mlflow-artifacts/artifacts?path=0/{run_id}/artifacts/{q(path)}",
            )
        elif kind == "native-list":
            method, url = "GET", f"/api/flightlog/artifact-list/{run_id}?path={q(path)}"
        else:
            method, url = "GET", f"/get-artifact?run_id={run_id}&path={q(path)}"
        client.send(
            kind, method, url, body if method == "PUT" else None, headers if method == "PUT" else {}
        )

    @FUZZ
    @given(ui_requests)
    def fuzz_ui(request: tuple[str, str, list[tuple[str, str]]]) -> None:
        route, eid, query = request
        path = route.replace("{experiment_id}", urllib.parse.quote(eid)).replace("{run_id}", run_id)
        query = [(k, run_id if v == RUN else v) for k, v in query]
        client.send(route, "GET", f"{path}?{urllib.parse.urlencode(query)}", None, {})

    try:
        fuzz_ui()
        fuzz_rest()
        fuzz_rpc()
        fuzz_artifacts()
        # Still serving, and the fuzzing reached past argument parsing on the main routes.
        assert (
            client.send("after", "GET", f"/api/2.0/mlflow/runs/get?run_id={run_id}", None, {})[0]
            == 200
        )
        assert c.proc.poll() is None
        ok = {label for (label, status), _n in client.seen.items() if status == 200}
        reached = ["/runs/search", "/experiments/search", "/runs/set-tag", "/runs/log-batch"]
        reached += ["search_runs", "search_experiments", "get_run", "proxy", "native"]
        for label in reached:
            statuses = {s: n for (x, s), n in client.seen.items() if x == label}
            assert label in ok, (label, statuses, client.last.get(label))
    finally:
        client.conn.close()
        c.stop()

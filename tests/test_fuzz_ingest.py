"""Fuzzing the collector's ingest and RPC endpoints with hypothesis (issue 6).

Random bytes, random msgpack, batch-shaped maps with wrong types and values, and
mutations of valid batches (bit flips, cuts, splices) go to a real collector process
while a well-behaved training process logs into it. Every answer must be a clear
error (or a success), never a server fault; afterwards the collector still serves and
the well-behaved run is complete.
"""

from __future__ import annotations

import gzip
import http.client
import uuid
import zlib
from pathlib import Path
from typing import Any

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flightlog.core.wire import encode_batch, unpack
from tests.conftest import start_collector
from tests.helpers import run_status, stored_points
from tests.test_reliability import Child, steps_stored

OP_NAMES = [
    "create_run",
    "log_params",
    "set_tags",
    "delete_tag",
    "update_run",
    "log_metric",
    "heartbeat",
]
RPC_METHODS = [
    "create_experiment",
    "get_experiment",
    "get_experiment_by_name",
    "get_run",
    "get_metric_history",
    "delete_run",
    "set_experiment_tag",
    "search_runs",
    "no_such_method",
]
ARG_NAMES = [
    "run_id",
    "experiment_id",
    "key",
    "value",
    "step",
    "timestamp",
    "tags",
    "params",
    "status",
    "end_time",
    "run_name",
    "start_time",
    "name",
    "heartbeat",
]

# Every integer msgpack can carry, edges included.
ints = st.integers(min_value=-(2**63), max_value=2**64 - 1)
scalars = (
    st.none()
    | st.booleans()
    | ints
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
    | st.binary(max_size=40)
    | st.sampled_from(["0", "a" * 32, "x" * 300, "../up", "bad key!", "RUNNING", "FINISHED"])
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(st.text(max_size=10) | st.sampled_from(ARG_NAMES), inner, max_size=5)
    ),
    max_leaves=20,
)
run_ids = st.sampled_from(["a" * 32, "b" * 32]) | st.text(max_size=70) | ints
args = st.dictionaries(st.sampled_from(ARG_NAMES), values, max_size=6) | st.fixed_dictionaries(
    {"run_id": run_ids}, optional={k: values for k in ARG_NAMES[1:]}
)
ops = st.lists(
    st.tuples(st.sampled_from(OP_NAMES) | st.text(max_size=12), args).map(list) | values,
    max_size=6,
)
metric_blocks = st.fixed_dictionaries(
    {},
    optional={
        "runs": st.lists(st.text(max_size=40), max_size=3) | values,
        "keys": st.lists(st.sampled_from(["loss", "a/b", "../x", ""]), max_size=3) | values,
        "ri": st.none() | st.binary(max_size=64),
        "ki": st.none() | st.binary(max_size=64),
        "steps": st.binary(max_size=64),
        "vals": st.binary(max_size=64),
        "ts": st.binary(max_size=64),
    },
)
batches = st.fixed_dictionaries(
    {},
    optional={
        "v": st.sampled_from([1, 1, 1, 2, "1", None]),
        "batch_id": st.none() | st.text(max_size=80) | ints,
        "agent_id": st.text(max_size=10) | ints,
        "ops": ops | values,
        "m": metric_blocks | values,
    },
).map(lambda b: msgpack.packb(b, use_bin_type=True))


FUZZ_RUNS = ["a" * 32, "b" * 32, "c" * 32]


@st.composite
def wire_batches(draw: st.DrawFn) -> bytes:
    """Frames that pass the wire checks, carrying adversarial ops, keys and numbers."""
    good_args = st.fixed_dictionaries(
        {"run_id": st.sampled_from(FUZZ_RUNS) | run_ids},
        optional={
            "experiment_id": st.sampled_from(["0", 0, "999", "x"]) | values,
            "key": st.sampled_from(["loss", "a/b", "../x", "", "k" * 300]) | values,
            "value": st.floats() | ints | values,
            "step": ints | values,
            "timestamp": ints | st.floats() | values,
            "tags": st.dictionaries(st.text(max_size=20), st.text(max_size=20) | values),
            "params": st.dictionaries(st.text(max_size=20), st.text(max_size=20) | values),
            "status": st.sampled_from(["RUNNING", "FINISHED", "KILLED", "nope"]) | values,
            "end_time": ints | values,
            "run_name": st.text(max_size=300) | values,
            "start_time": ints | values,
            "heartbeat": st.booleans() | values,
        },
    )
    ops_ = draw(st.lists(st.tuples(st.sampled_from(OP_NAMES), good_args).map(list), max_size=6))
    n = draw(st.integers(min_value=0, max_value=30))
    runs = draw(st.lists(st.sampled_from(FUZZ_RUNS) | st.text(max_size=70), min_size=1, max_size=3))
    keys = draw(
        st.lists(st.sampled_from(["loss", "a/b", "../x", "", "bad key!"]), min_size=1, max_size=3)
    )
    int64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
    columns = [
        [draw(st.sampled_from(runs)) for _ in range(n)],
        [draw(st.sampled_from(keys)) for _ in range(n)],
        draw(st.lists(st.floats(), min_size=n, max_size=n)),
        draw(st.lists(int64, min_size=n, max_size=n)),
        draw(st.lists(st.floats() | st.just(1.7e9), min_size=n, max_size=n)),
    ]
    batch_id = draw(st.none() | st.text(min_size=1, max_size=64))
    return encode_batch(batch_id or uuid.uuid4().hex, "fuzzer", ops_, columns)


def _valid_batch(seed: int) -> bytes:
    """A well-formed batch for a run of its own: create, params, tags, points."""
    run_id = uuid.UUID(int=seed).hex
    n = 50
    ops_ = [
        ["create_run", {"run_id": run_id, "experiment_id": "0", "heartbeat": True}],
        ["log_params", {"run_id": run_id, "params": {"lr": "0.1"}}],
        ["set_tags", {"run_id": run_id, "tags": {"t": "v"}}],
    ]
    columns = [
        [run_id] * n,
        ["loss", "acc"] * (n // 2),
        [float(i) for i in range(n)],
        list(range(n)),
        [1.7e9 + i for i in range(n)],
    ]
    return encode_batch(f"fuzz-{seed}", "fuzzer", ops_, columns)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(_valid_batch(draw(st.integers(min_value=1, max_value=2**32))))
    for _ in range(draw(st.integers(min_value=1, max_value=6))):
        kind = draw(st.sampled_from(["flip", "cut", "insert", "delete", "splice"]))
        if not data:
            break
        at = draw(st.integers(min_value=0, max_value=len(data) - 1))
        if kind == "flip":
            data[at] ^= 1 << draw(st.integers(min_value=0, max_value=7))
        elif kind == "cut":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del data[at : at + draw(st.integers(min_value=1, max_value=16))]
        else:
            other = _valid_batch(draw(st.integers(min_value=1, max_value=2**32)))
            data[at:] = other[draw(st.integers(min_value=0, max_value=len(other) - 1)) :]
    return bytes(data)


FILTER_WORDS = [
    "metrics.loss", "metrics.acc", "params.lr", "tags.t", "attributes.status", "run_name",
    "attributes.start_time", "metrics.`a b`", "datasets.name", "=", "!=", "<", ">=", "LIKE",
    "ILIKE", "IN", "NOT IN", "AND", "OR", "(", ")", ",", "0.5", "-1", "1e400", "NaN", "'0.1'",
    "'%v%'", "'RUNNING'", "'", '"', "IS", "NULL",
]  # fmt: skip
ORDER_WORDS = [
    "metrics.loss", "params.lr DESC", "attributes.start_time ASC", "start_time", "run_name",
    "tags.t", "metrics.", "metrics.loss SIDEWAYS", "x y z", "",
]  # fmt: skip


def search_runs_args(tokens: list[str]) -> st.SearchStrategy[bytes]:
    """search_runs' own arguments, well-formed to adversarial, so the filter parser, the
    ordering, the view types, max_results and page tokens are reached, not only the
    argument checks. ``tokens`` are real page tokens, which the fuzzer also cuts."""
    filters = (
        st.lists(st.sampled_from(FILTER_WORDS), max_size=10).map(" ".join)
        | st.text(max_size=60)
        | values
    )
    page_tokens = (
        st.sampled_from(tokens)
        | st.sampled_from(tokens).map(lambda t: t[: len(t) // 2])
        | st.sampled_from(tokens).map(lambda t: t + "A")
        | st.text(max_size=40)
        | values
    )
    return st.fixed_dictionaries(
        {"experiment_ids": st.lists(st.sampled_from(["0", "1", "999", "x"]), max_size=3)},
        optional={
            "filter_string": filters,
            "run_view_type": st.sampled_from([1, 2, 3, 0, 4, -1, "1", "ALL"]) | values,
            "max_results": st.sampled_from([1, 2, 1000, 50_000, 50_001, 0, -1]) | ints | values,
            "order_by": st.lists(st.sampled_from(ORDER_WORDS) | st.text(max_size=20), max_size=3)
            | values,
            "page_token": page_tokens,
        },
    ).map(lambda a: msgpack.packb(a, use_bin_type=True))


frames = (
    st.binary(max_size=2048)
    | values.map(lambda v: msgpack.packb(v, use_bin_type=True))
    | batches
    | mutated()
    | wire_batches()
    | wire_batches()
    | wire_batches()
)


def test_fuzzed_frames_get_clear_errors_and_do_not_disturb_other_clients(
    tmp_path: Path,
) -> None:
    c = start_collector(tmp_path / "store")
    n = 300_000
    # A well-behaved run logging throughout the fuzzing.
    good = Child(
        tmp_path,
        f"""
        import flightlog as mlflow
        mlflow.set_tracking_uri("{c.url}")
        with mlflow.start_run() as run:
            print("run", run.info.run_id, flush=True)
            mlflow.log_param("lr", 0.01)
            for i in range({n}):
                mlflow.log_metric("loss", i * 0.5, step=i)
                if i % 20_000 == 0:
                    mlflow.flush()  # keep batches flowing while the fuzzer runs
        print("done", flush=True)
        """,
    )
    seen: dict[int, int] = {}
    conn = http.client.HTTPConnection("127.0.0.1", c.port, timeout=60)

    def post(path: str, body: bytes, encoding: str | None = None) -> tuple[int, Any]:
        nonlocal conn
        headers = {"Content-Type": "application/msgpack"}
        if encoding is not None:
            headers["Content-Encoding"] = encoding
        for attempt in range(2):
            try:
                conn.request("POST", path, body, headers)
                resp = conn.getresponse()
                return resp.status, resp.read()
            except (http.client.HTTPException, OSError):
                # The collector may close a connection after a bad request; the next
                # connection must work (it is still up), so retry once.
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", c.port, timeout=60)
                if attempt:
                    raise
        raise AssertionError("unreachable")

    searched: dict[int, int] = {}
    # Compressed frames too (issue 11): whole, cut short, or in an unknown encoding.
    encodings = st.sampled_from([None, None, None, "gzip", "deflate", "gzip-cut", "br"])

    def requests(tokens: list[str]) -> st.SearchStrategy[tuple[str, bytes, str | None]]:
        return st.tuples(
            st.sampled_from(["ingest"] * 3 + RPC_METHODS), frames, encodings
        ) | st.tuples(st.just("search_runs"), search_runs_args(tokens), encodings)

    def fuzz(request: tuple[str, bytes, str | None]) -> None:
        target, frame, encoding = request
        path = "/api/flightlog/ingest" if target == "ingest" else f"/api/flightlog/rpc/{target}"
        if encoding in ("gzip", "gzip-cut"):
            packed = gzip.compress(frame)
            frame, encoding = (
                (packed[: len(packed) // 2], "gzip")
                if encoding == "gzip-cut"
                else (packed, encoding)
            )
        elif encoding == "deflate":
            frame = zlib.compress(frame)
        status, data = post(path, frame, encoding)
        seen[status] = seen.get(status, 0) + 1
        if target == "search_runs":
            searched[status] = searched.get(status, 0) + 1
        # A clear answer: success, or a client error naming what is wrong; no server fault.
        assert status < 500, (status, data[:300], frame[:200])
        body = unpack(data)
        if target == "ingest" and status == 200:
            assert body["ok"] is True and isinstance(body["errors"], list)
            for e in body["errors"]:
                assert e["error_code"] and e["message"]
        elif status >= 400:
            assert isinstance(body, dict) and body["error_code"] and body["message"], body

    try:
        run_id = good.expect("run")
        # Runs to page through, and real page tokens for the fuzzer to start from.
        for seed in (1, 2, 3):
            assert post("/api/flightlog/ingest", _valid_batch(seed))[0] == 200
        tokens = []
        for order in ([], ["metrics.loss DESC"], ["params.lr", "attributes.run_name ASC"]):
            args = {"experiment_ids": ["0"], "max_results": 1, "order_by": order}
            status, data = post("/api/flightlog/rpc/search_runs", msgpack.packb(args))
            assert status == 200, data
            tokens.append(unpack(data)["next_page_token"])
        settings(
            max_examples=600,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )(given(request=requests(tokens))(fuzz))()
        good.expect("done", timeout=120)
        assert good.wait() == 0
        # The collector is up and serving, and the other client lost nothing.
        health_status, _ = post("/api/flightlog/rpc/get_run", msgpack.packb({"run_id": run_id}))
        assert health_status == 200
        assert stored_points(c.db, run_id, "loss") == n
        assert len(set(steps_stored(c.db, run_id, "loss"))) == n
        assert run_status(c.db, run_id) == "FINISHED"
        assert c.proc.poll() is None
    finally:
        conn.close()
        good.kill()
        c.stop()
    # The fuzzer reached past the frame checks into the store, not only the decoder.
    assert seen.get(200, 0) >= 20 and seen.get(400, 0) >= 20, seen
    # search_runs was reached with arguments it accepts and with ones it must refuse.
    assert searched.get(200, 0) >= 10 and searched.get(400, 0) >= 10, searched

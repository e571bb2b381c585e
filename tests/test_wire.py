"""The ingest wire format: what the agent encodes, the collector decodes and groups."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flightlog.agent.ring import RECORD_FORMAT, SERIES
from flightlog.core.exceptions import WireError
from flightlog.core.wire import decode_batch, encode_batch, encode_raw_batch


def _reference(points: list[tuple[str, str, float, int, float]]) -> dict[tuple[str, str], list]:
    out: dict[tuple[str, str], list] = {}
    for rid, key, value, step, ts in points:
        out.setdefault((rid, key), []).append((step, value, ts))
    return out


point = st.tuples(
    st.sampled_from(["a" * 32, "b" * 32]),
    st.sampled_from(["loss", "acc", "lr", "x/y"]),
    st.floats(allow_nan=False),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(0, 2e9, allow_nan=False),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(point, min_size=1, max_size=60), st.integers(1, 5))
def test_grouping_matches_reference(points: list, repeat: int) -> None:
    # Repeating a list makes periodic batches (the strided fast path); random ones take
    # the general path. Both must give every series its points in logged order.
    points = points * repeat
    columns = [list(c) for c in zip(*points, strict=True)]
    _, _, ops, series = decode_batch(encode_batch("b1", "agent", [], columns))
    got = {
        (rid, key): list(zip(steps, vals, ts, strict=True)) for rid, key, steps, vals, ts in series
    }
    assert got == _reference(points)
    assert ops == []


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (b"\xc1", "not valid msgpack"),
        (msgpack.packb([1, 2]), "top level must be a map"),
        (msgpack.packb({"v": 4}), "unsupported version 4"),
        (msgpack.packb({"v": 1, "ops": [["x"]]}), "op 0 must be"),
        (
            msgpack.packb(
                {
                    "v": 1,
                    "m": {
                        "runs": ["r"],
                        "keys": ["k"],
                        "steps": b"\x00" * 8,
                        "vals": b"\x00" * 16,
                        "ts": b"\x00" * 8,
                    },
                }
            ),
            "differ in length",
        ),
        (
            msgpack.packb(
                {
                    "v": 1,
                    "m": {
                        "runs": ["r"],
                        "keys": ["k", "j"],
                        "ki": b"\x05\x00\x00\x00",
                        "steps": b"\x00" * 8,
                        "vals": b"\x00" * 8,
                        "ts": b"\x00" * 8,
                    },
                }
            ),
            "index out of range",
        ),
    ],
)
def test_malformed_frames_are_named(frame: bytes, message: str) -> None:
    with pytest.raises(WireError, match=message):
        decode_batch(frame)


def _ring_batch(points: list[tuple[str, str, float, int, float]]) -> bytes:
    # Records as the agent's metric ring holds them, named by its ids stream.
    index: dict[tuple[str, str], int] = {}
    ids = b""
    rec = b""
    for lap, (rid, key, value, step, ts) in enumerate(points):
        sid = index.get((rid, key))
        if sid is None:
            sid = index[(rid, key)] = len(index)
            ids += msgpack.packb([SERIES, sid, rid, key])
        rec += RECORD_FORMAT.pack(step, value, ts, sid, lap % 7 + 1)
    return encode_raw_batch("b1", "agent", [], None, rec, ids)


@settings(max_examples=300, deadline=None)
@given(st.lists(point, min_size=1, max_size=60), st.integers(1, 5))
def test_ring_records_group_as_the_reference(points: list, repeat: int) -> None:
    # The ring's raw form: periodic batches take the strided path, others the general one.
    points = points * repeat
    _, _, _, series = decode_batch(_ring_batch(points))
    got = {
        (rid, key): list(zip(steps, vals, ts, strict=True)) for rid, key, steps, vals, ts in series
    }
    assert got == _reference(points)


def test_ring_records_of_one_metric_are_one_series() -> None:
    points = [("a" * 32, "loss", i * 0.5, i, 1e9 + i) for i in range(5000)]
    _, _, _, series = decode_batch(_ring_batch(points))
    assert len(series) == 1
    rid, key, steps, vals, ts = series[0]
    assert (rid, key) == ("a" * 32, "loss")
    assert list(steps) == list(range(5000)) and vals[-1] == 4999 * 0.5 and ts[0] == 1e9


@pytest.mark.parametrize(
    ("r", "message"),
    [
        ({"rec": b"x" * 33, "ids": b""}, "multiple of 32"),
        ({"rec": b"\0" * 32, "ids": b""}, "does not hold"),
        ({"rec": b"\0" * 32, "ids": msgpack.packb([2, 0, "r"])}, "entries must be"),
        ({"rec": b"\0" * 32, "ids": b"\xc1"}, "not a msgpack stream"),
        ({"rec": b"\0" * 32, "ids": "text"}, "'r.ids' must be bytes"),
        ([1, 2], "'r' must be a map"),
    ],
)
def test_malformed_ring_records_are_named(r: object, message: str) -> None:
    body = msgpack.packb({"v": 2, "batch_id": "b", "ops": [], "r": r}, use_bin_type=True)
    with pytest.raises(WireError, match=message):
        decode_batch(body)


def test_ring_records_need_version_2() -> None:
    # A collector from before the ring form would ignore "r"; this one refuses the mix.
    body = msgpack.packb(
        {"v": 1, "batch_id": "b", "ops": [], "r": {"rec": b"", "ids": b""}}, use_bin_type=True
    )
    with pytest.raises(WireError, match="needs version 2"):
        decode_batch(body)

"""The ingest wire format: what the agent encodes, the collector decodes and groups."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flightlog.core.exceptions import WireError
from flightlog.core.wire import decode_batch, encode_batch


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
        (msgpack.packb({"v": 2}), "unsupported version 2"),
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

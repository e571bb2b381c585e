"""The ingest wire format: what the agent encodes, the collector decodes and groups."""

from __future__ import annotations

import random
from array import array

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flightlog.agent.ring import RECORD_FORMAT, SERIES
from flightlog.core.exceptions import WireError
from flightlog.core.wire import _by_code, _segments, decode_batch, encode_batch, encode_raw_batch


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


# Batches as the ring's records come in practice: the same metrics every step (periodic
# segments, a key appearing or a run starting mid-batch changes the pattern), threads
# logging in bursts (runs of one code) and anything else (random codes).
periodic_segment = st.tuples(
    st.just("periodic"),
    st.lists(st.integers(0, 40), min_size=1, max_size=12, unique=True),
    st.integers(1, 80),  # repeats
    st.integers(0, 11),  # points of one more, partial, repeat
)
burst = st.tuples(st.just("burst"), st.integers(0, 40), st.integers(1, 120), st.just(0))
scatter = st.tuples(
    st.just("random"),
    st.lists(st.integers(0, 40), min_size=1, max_size=400),
    st.just(0),
    st.just(0),
)


def _codes(segments: list) -> list[int]:
    codes: list[int] = []
    for kind, what, count, extra in segments:
        if kind == "periodic":
            codes += what * count + what[: extra % len(what)]
        elif kind == "burst":
            codes += [what] * count
        else:
            codes += what
    return codes


def _reference_series(codes: list[int]) -> list[tuple[str, str, list, list, list]]:
    # Series in order of first use, points in record order: point i is (i, i / 2, i / 4).
    out: dict[int, tuple[str, str, list, list, list]] = {}
    for i, c in enumerate(codes):
        s = out.setdefault(c, ("r" * 32, f"k{c}", [], [], []))
        s[2].append(i)
        s[3].append(i / 2)
        s[4].append(i / 4)
    return list(out.values())


def _grouped(codes: list[int], typecode: str = "I") -> list[tuple[str, str, list, list, list]]:
    n = len(codes)
    series = _by_code(
        lambda c: ("r" * 32, f"k{c}"),
        array(typecode, codes),
        array("q", range(n)),
        array("d", (i / 2 for i in range(n))),
        array("d", (i / 4 for i in range(n))),
    )
    return [(rid, key, list(s), list(v), list(t)) for rid, key, s, v, t in series]


mixed_batch = st.lists(st.one_of(periodic_segment, burst, scatter), min_size=1, max_size=12)


@settings(max_examples=300, deadline=None)
@given(mixed_batch, st.sampled_from("IQ"))
def test_irregular_batches_group_as_the_reference(segments: list, typecode: str) -> None:
    # One entry per series, in order of first use, each with its points in record order,
    # whatever mix of segments, bursts and random codes (ring codes are uint32, the "m"
    # form's combined codes uint64).
    codes = _codes(segments)
    assert _grouped(codes, typecode) == _reference_series(codes)


@settings(max_examples=50, deadline=None)
@given(mixed_batch)
def test_irregular_ring_batches_decode_as_the_reference(segments: list) -> None:
    codes = _codes(segments)
    points = [("a" * 32, f"k{c}", i / 2, i, i / 4) for i, c in enumerate(codes)]
    _, _, _, series = decode_batch(_ring_batch(points))
    assert [(k, list(s), list(v), list(t)) for _, k, s, v, t in series] == [
        (k, s, v, t) for _, k, s, v, t in _reference_series(codes)
    ]


def test_common_irregular_shapes_are_cut_into_slices() -> None:
    # A key appearing mid-batch, an eval metric every 50 steps, threads in bursts: every
    # point is in a strided slice, none grouped one by one.
    mid = [i % 9 for i in range(4500)] + [i % 10 for i in range(5000)]
    evals = ([*range(10)] * 50 + [10, 11]) * 20
    bursts = [
        t for t, n in zip([0, 1, 2, 3] * 100, range(1, 401), strict=True) for _ in range(n % 50 + 1)
    ]
    for codes in (mid, evals, bursts):
        parts = _segments(array("I", codes))
        assert all(isinstance(s, slice) for p in parts.values() for s in p)
    # Random codes are grouped point by point (index lists), but for the few points
    # tried as segments between windows.
    rng = random.Random(1)
    parts = _segments(array("I", [rng.randrange(10) for _ in range(5000)]))
    assert sorted(parts) == list(range(10))
    assert sum(len(s) for p in parts.values() for s in p if isinstance(s, list)) > 4900


def test_unknown_series_in_an_irregular_batch_is_named() -> None:
    points = [("a" * 32, f"k{i % 3 if i < 300 else i % 4}", 0.5, i, 1.0) for i in range(600)]
    body = msgpack.unpackb(_ring_batch(points))
    ids = msgpack.Unpacker()
    ids.feed(body["r"]["ids"])
    body["r"]["ids"] = b"".join(msgpack.packb(e) for e in ids if e[1] != 3)  # drop "k3"
    with pytest.raises(WireError, match=r"names series 3, which 'r\.ids' does not hold"):
        decode_batch(msgpack.packb(body, use_bin_type=True))

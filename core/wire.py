"""The ingest wire format shared by the agent (encoder) and the collector (decoder).

A batch is one msgpack map::

    {"v": 1 (2 with "r"), "batch_id": str, "agent_id": str,
     "ops": [[name, {args}], ...],                   # ordered: create_run, log_params, ...
     "m": {"runs": [run_id, ...], "keys": [key, ...], # dictionaries of the columns below
           "ri": bytes | None, "ki": bytes | None,     # uint32 indexes; None: all index 0
           "steps": bytes, "vals": bytes, "ts": bytes},  # int64, float64, float64 seconds
     "r": {"rec": bytes, "ids": bytes}}                # records, as the metric ring holds them
         | {"ref": [ring id, pid, start ticks, start, end]}  # v 3: records left in the ring

Metric points travel as columns so that both ends convert them with C-level array
operations instead of a Python loop per point. Arrays are little-endian on the wire.

``r`` is the form the agent's metric ring ships (``flightlog.agent.ring``): its records
exactly as they sit in the ring file, 32 bytes each (int64 step, float64 value, float64
timestamp in seconds, uint32 series index, uint32 lap, which the collector ignores), and
``ids``, the msgpack stream ``[2, index, run_id, key]`` that names every series index
used. Each batch is self-contained (no table kept between batches), so a batch can be
resent, spooled, synced later or sent to another collector as it is. The collector cuts
the columns with memoryview casts and strided slices: no Python object per point when
the records repeat a pattern of series (one metric, or the same metrics every step), nor
when they do so in segments (a key added or a run started mid-batch, eval metrics every
N steps, threads logging in bursts); only random interleavings are grouped point by
point. A batch may hold both ``m`` and ``r``.

``ref`` (version 3) is the form for a collector on the same node: the records stay in
the ring file, and the batch names the ring (its id and its owner's pid and start time,
as in the ring's header) and the positions [start, end). The collector reads them, and
the series names, from the ring's files (``flightlog.core.ring_refs``): the batch
is a few dozen bytes whatever the number of points, and the ids table travels as the
file's new entries only. The records stay in place until the batch is acknowledged (the
agent frees ring slots only then), so the collector reads what the agent cut; a batch
that goes to the disk spool is first rewritten with its records (``rec``), since the
spool outlives the ring's slots. A collector that cannot read the ring answers 400
(an older one refuses version 3), and the agent sends the records inline from then on.
"""

from __future__ import annotations

import io
import re
import sys
from array import array
from collections import defaultdict
from collections.abc import Callable, Sequence
from operator import itemgetter
from typing import Any, TypeAlias

import msgpack

from flightlog.core.exceptions import WireError

WIRE_VERSION = 1
# A batch that holds ring records says 2, so that a collector from before the ``r`` form
# refuses it (400, counted and reported by the agent) instead of storing its ops and
# silently ignoring its points.
RING_WIRE_VERSION = 2
RING_REF_WIRE_VERSION = 3  # "r" names records in a ring file on the collector's node
VERSIONS = (WIRE_VERSION, RING_WIRE_VERSION, RING_REF_WIRE_VERSION)
_SWAP = sys.byteorder != "little"

MetricTuple = tuple[str, str, float, int, float]  # run_id, key, value, step, ts (seconds)
Series = tuple[str, str, "array[int]", "array[float]", "array[float]"]
#: A batch's reference to ring records: (ring id, owner pid, owner start ticks, start, end).
RingRef = tuple[str, int, int, int, int]
#: What reads a reference: its raw records and the ids table naming their series.
RingReader = Callable[[RingRef], tuple[bytes, dict[int, tuple[str, str]]]]


def _le(a: array[Any]) -> bytes:
    if _SWAP:
        a.byteswap()
    return a.tobytes()


def _dictionary(column: Sequence[str]) -> tuple[list[str], bytes | None]:
    values = list(dict.fromkeys(column))
    if len(values) == 1:
        return values, None
    index = {v: i for i, v in enumerate(values)}
    return values, _le(array("I", map(index.__getitem__, column)))


def encode_batch(
    batch_id: str, agent_id: str, ops: list[list[Any]], columns: Sequence[Sequence[Any]]
) -> bytes:
    """Pack ops and metric columns (run_ids, keys, values, steps, ts_seconds) into a batch."""
    if not columns or not len(columns[0]):
        return encode_raw_batch(batch_id, agent_id, ops, None)
    run_ids, keys, vals, steps, ts = columns
    runs, ri = _dictionary(run_ids)
    key_names, ki = _dictionary(keys)
    m = {
        "runs": runs,
        "keys": key_names,
        "ri": ri,
        "ki": ki,
        "vals": _le(array("d", vals)),
        "steps": _le(array("q", steps)),
        "ts": _le(array("d", ts)),
    }
    return encode_raw_batch(batch_id, agent_id, ops, m)


def encode_raw_batch(
    batch_id: str,
    agent_id: str,
    ops: list[list[Any]],
    m: dict[str, Any] | None,
    records: bytes | memoryview | None = None,
    ids: bytes = b"",
    ref: RingRef | None = None,
) -> bytes:
    """Pack ops, an already columnar ``m`` map (little-endian array bytes, as in the
    module docstring) and ring ``records`` named by the ``ids`` stream into a batch; or,
    with ``ref``, the ring positions whose records the collector reads itself."""
    version = RING_REF_WIRE_VERSION if ref else RING_WIRE_VERSION if records else WIRE_VERSION
    body: dict[str, Any] = {
        "v": version,
        "batch_id": batch_id,
        "agent_id": agent_id,
        "ops": ops,
    }
    if m is not None:
        body["m"] = m
    if ref:
        body["r"] = {"ref": list(ref)}
    elif records:
        body["r"] = {"rec": records, "ids": ids}
    packed: bytes = msgpack.packb(body, use_bin_type=True)
    return packed


def _array(typecode: str, raw: Any, name: str) -> array[Any]:
    if not isinstance(raw, bytes):
        raise WireError(f"'{name}' must be bytes")
    a = array(typecode)
    if len(raw) % a.itemsize:
        raise WireError(f"'{name}' is {len(raw)} bytes, not a multiple of {a.itemsize}")
    a.frombytes(raw)
    if _SWAP:
        a.byteswap()
    return a


def _str_list(raw: Any, name: str) -> list[str]:
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw) or not raw:
        raise WireError(f"'{name}' must be a non-empty list of strings")
    return raw


def decode_batch(
    data: bytes, *, max_ops: int = 100_000, rings: RingReader | None = None
) -> tuple[str | None, str, list[tuple[str, dict[str, Any]]], list[Series]]:
    """Unpack and check a batch: (batch_id, agent_id, ops, series grouped by run and key).

    ``rings`` reads the records of a ``ref`` batch (a collector on the agent's node);
    without it such a batch is refused (``WireError``)."""
    try:
        body = msgpack.unpackb(data, raw=False, strict_map_key=True, max_bin_len=1 << 30)
    except Exception as e:  # msgpack raises a handful of types for bad frames
        raise WireError(f"not valid msgpack ({type(e).__name__}: {e})") from None
    if not isinstance(body, dict):
        raise WireError("the top level must be a map")
    version = body.get("v")
    if version not in VERSIONS or version is True:
        raise WireError(f"unsupported version {version!r} (this collector speaks 1, 2 and 3)")
    batch_id = body.get("batch_id")
    if batch_id is not None and (not isinstance(batch_id, str) or not 0 < len(batch_id) <= 64):
        raise WireError("'batch_id' must be a string of 1 to 64 characters")
    agent_id = body.get("agent_id") or ""
    if not isinstance(agent_id, str):
        raise WireError("'agent_id' must be a string")
    raw_ops = body.get("ops") or []
    if not isinstance(raw_ops, list) or len(raw_ops) > max_ops:
        raise WireError(f"'ops' must be a list of at most {max_ops} items")
    ops: list[tuple[str, dict[str, Any]]] = []
    for i, op in enumerate(raw_ops):
        if (
            not isinstance(op, list)
            or len(op) != 2
            or not isinstance(op[0], str)
            or not isinstance(op[1], dict)
        ):
            raise WireError(f"op {i} must be [name, {{args}}]")
        ops.append((op[0], op[1]))
    series: list[Series] = []
    m = body.get("m")
    if m is not None:
        if not isinstance(m, dict):
            raise WireError("'m' must be a map")
        runs = _str_list(m.get("runs"), "m.runs")
        keys = _str_list(m.get("keys"), "m.keys")
        steps = _array("q", m.get("steps"), "m.steps")
        vals = _array("d", m.get("vals"), "m.vals")
        ts = _array("d", m.get("ts"), "m.ts")
        n = len(steps)
        if len(vals) != n or len(ts) != n:
            raise WireError("m.steps, m.vals and m.ts differ in length")
        ri = None if m.get("ri") is None else _array("I", m.get("ri"), "m.ri")
        ki = None if m.get("ki") is None else _array("I", m.get("ki"), "m.ki")
        for idx, names, label in ((ri, runs, "m.ri"), (ki, keys, "m.ki")):
            if idx is None:
                if len(names) != 1:
                    raise WireError(f"{label} is missing but there are {len(names)} names")
            elif len(idx) != n or (n and max(idx) >= len(names)):
                raise WireError(f"{label} has the wrong length or an index out of range")
        series = _group(runs, keys, ri, ki, steps, vals, ts)
    r = body.get("r")
    if r is not None:
        if version == WIRE_VERSION:
            raise WireError(f"'r' (ring records) needs version {RING_WIRE_VERSION}")
        series += _ring_series(r, rings if version == RING_REF_WIRE_VERSION else None)
    return batch_id, agent_id, ops, series


RECORD_SIZE = 32  # int64 step, float64 value, float64 ts, uint32 series index, uint32 lap


def _ids_table(raw: Any) -> dict[int, tuple[str, str]]:
    if not isinstance(raw, bytes):
        raise WireError("'r.ids' must be bytes")
    table: dict[int, tuple[str, str]] = {}
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=True, max_buffer_size=len(raw) + 1)
    unpacker.feed(raw)
    try:
        for e in unpacker:
            if (
                not isinstance(e, list)
                or len(e) != 4
                or e[0] != 2
                or not isinstance(e[1], int)
                or not isinstance(e[2], str)
                or not isinstance(e[3], str)
            ):
                raise WireError("'r.ids' entries must be [2, index, run_id, key]")
            table[e[1]] = (e[2], e[3])
    except WireError:
        raise
    except Exception as e:
        raise WireError(f"'r.ids' is not a msgpack stream ({type(e).__name__}: {e})") from None
    return table


def _ring_ref(raw: Any) -> RingRef:
    if (
        not isinstance(raw, list)
        or len(raw) != 5
        or not isinstance(raw[0], str)
        or not all(type(x) is int for x in raw[1:])
    ):
        raise WireError("'r.ref' must be [ring id, pid, start ticks, start, end]")
    ring_id, pid, started, start, end = raw
    if not 0 <= start <= end:
        raise WireError(f"'r.ref' positions [{start}, {end}) are not a range")
    return ring_id, pid, started, start, end


def _ring_series(r: Any, rings: RingReader | None = None) -> list[Series]:
    """The series of ring records (inline, or read by ``rings`` for a version 3
    reference): columns cut with memoryview casts and strides."""
    if not isinstance(r, dict):
        raise WireError("'r' must be a map")
    if rings is not None:
        rec, table = rings(_ring_ref(r.get("ref")))
    elif "ref" in r:
        raise WireError("this endpoint does not read ring records by reference ('r.ref')")
    else:
        raw = r.get("rec")
        if not isinstance(raw, bytes) or len(raw) % RECORD_SIZE:
            raise WireError(f"'r.rec' must be bytes, a multiple of {RECORD_SIZE} long")
        rec, table = raw, _ids_table(r.get("ids"))
    if not rec:
        return []
    view = memoryview(rec)
    q, d, u = view.cast("q"), view.cast("d"), view.cast("I")
    stride = RECORD_SIZE // 8
    steps = array("q", q[0::stride].tobytes())
    vals = array("d", d[1::stride].tobytes())
    ts = array("d", d[2::stride].tobytes())
    codes = array("I", u[6 :: RECORD_SIZE // 4].tobytes())
    if _SWAP:
        for a in (steps, vals, ts, codes):
            a.byteswap()

    def name(code: int) -> tuple[str, str]:
        found = table.get(code)
        if found is None:
            raise WireError(f"r.rec names series {code}, which 'r.ids' does not hold")
        return found

    return _by_code(name, codes, steps, vals, ts)


def _periodic_series(
    name: Callable[[int], tuple[str, str]],
    codes: array[int],
    steps: array[int],
    vals: array[float],
    ts: array[float],
) -> list[Series] | None:
    """Cut a batch into series with strided slices when its codes repeat with a period.

    A training loop that logs the same p metrics every step produces codes c0..c(p-1),
    c0..c(p-1), ...; then point i belongs to the series of i mod p, and each series is
    ``column[j::p]``, a C-level copy, instead of a Python loop over every point.
    """
    n = len(codes)
    p = len(set(codes[: min(n, 4096)]))
    if len(set(codes[:p])) != p:
        return None
    raw = memoryview(codes.tobytes())
    width = codes.itemsize * p
    if raw[width:] != raw[: len(raw) - width]:
        return None
    return [(*name(codes[j]), steps[j::p], vals[j::p], ts[j::p]) for j in range(p)]


def _by_code(
    name: Callable[[int], tuple[str, str]],
    codes: array[int],
    steps: array[int],
    vals: array[float],
    ts: array[float],
) -> list[Series]:
    """Group points by series code, each series in record order, in order of first use.

    Strided slices of the whole batch when its codes repeat with one period
    (``_periodic_series``); else the batch is cut into periodic segments and runs
    (``_segments``) whose slices are joined per series as bytes; stretches of codes too
    irregular for that (random interleavings) are grouped point by point, each series'
    points then fetched by one itemgetter."""
    periodic = _periodic_series(name, codes, steps, vals, ts)
    if periodic is not None:
        return periodic
    parts = _segments(codes)
    out: list[Series] = []
    for c, pieces in parts.items():
        if len(pieces) == 1:  # the commonest case, spelt out: one slice or one index list
            one = pieces[0]
            f = one if isinstance(one, slice) else _gather(one)
            if isinstance(f, slice):
                out.append((*name(c), steps[f], vals[f], ts[f]))
            else:
                out.append((*name(c), array("q", f(steps)), array("d", f(vals)), array("d", f(ts))))
            continue
        fetch = [p if isinstance(p, slice) else _gather(p) for p in pieces]
        out.append((*name(c), _cut(steps, fetch), _cut(vals, fetch), _cut(ts, fetch)))
    return out


def _gather(idx: list[int]) -> slice | itemgetter[Any]:
    """What fetches the points at indexes idx of a column in one C call: for several, an
    itemgetter (it returns a tuple), for one a slice."""
    return itemgetter(*idx) if len(idx) > 1 else slice(idx[0], idx[0] + 1)


def _cut(col: array[Any], fetch: list[slice | itemgetter[Any]]) -> array[Any]:
    """The points of col that several pieces fetch, in order, joined as one array."""
    tc = col.typecode
    if all(isinstance(f, slice) for f in fetch):
        return array(tc, b"".join(map(col.__getitem__, fetch)))  # type: ignore[arg-type]
    return array(
        tc, b"".join([col[f] if isinstance(f, slice) else array(tc, f(col)) for f in fetch])
    )


# Costs in points grouped one by one (about 0.2 us each), measured with
# bench/bench_decode.py: a run of one code, or one point where no pattern was found,
# about 5; a pattern of p codes about 16 + 5 p (the search, then a slice per series);
# searching codes for a pattern about 1 per _SCAN codes searched.
# Where segments cost more than the points they cover, by more than _DEBT (random
# interleavings: a segment per point), the next _WINDOW points are grouped one by one,
# twice as many after each such window that was not followed by segments worth their cost.
_RUN_COST, _SEGMENT_COST, _SLICE_COST, _SCAN, _DEBT, _WINDOW = 5, 16, 5, 4, 64, 256


# A slice of the columns, or the indexes of a series' points grouped point by point.
_Piece: TypeAlias = "slice | list[int]"


def _segments(codes: array[int]) -> dict[int, list[_Piece]]:
    """Cut the codes into maximal segments that each repeat one pattern of distinct codes.

    Segment by segment from the start: a run of one code (a thread logging a burst of
    one metric) as far as it goes; else the period p is the distance to the next use of
    the segment's first code (p metrics logged each step) and the segment extends as
    long as the codes repeat with it, ending mid-pattern if it must (``_extent``: the
    codes' bytes compared in C). Each series gets one strided slice per segment, in record
    order; where segments cost more than they save (random interleavings), a list of
    indexes per series for the points of windows grouped one by one. Returns the pieces
    by code, in order of first use.
    """
    n = len(codes)
    w = codes.itemsize
    raw = codes.tobytes()
    view = memoryview(raw)
    parts: dict[int, list[_Piece]] = {}
    # Indexes by series of the points grouped one by one since the series' last slice:
    # one list, one piece to fetch, however many windows it spans.
    where: defaultdict[int, list[int]] = defaultdict(list)
    run = _periods(w)
    seen = len(set(codes[:512]))
    debt = 0
    window = _WINDOW
    grouped = False
    i = 0
    while i < n:
        end = run(raw, i * w).end() // w  # type: ignore[union-attr]  # .{w} always matches
        if end - i > _REPEATS:  # a long run: as in _extent, spelt out for the short ones
            end += _common(raw, view, end - 1, end, n - end, w)
        p, cost = 1, _RUN_COST
        if end == i + 1:
            # A pattern longer than twice the codes seen yet is not looked for: where
            # an eval metric comes every N steps, its next use is far.
            stop = min(n, i + 2 * max(seen, len(parts), len(where)) + 17)
            p = _next_use(raw, view, i, w, stop) - i
            # The search and the set cost about a point per _SCAN codes: counted, so
            # that codes built to make every search long cannot make it quadratic.
            cost += (p if p > 0 else stop - i) // _SCAN
            if p > 0 and len(set(codes[i : i + p])) == p:
                end = _extent(raw, view, i, p, n, w)
                cost += _SEGMENT_COST + _SLICE_COST * p
            else:
                p = 1  # the code's last use, or no pattern: one point
        debt = max(0, debt + cost - (end - i))
        if debt > _DEBT:
            end = min(n, i + window)
            grouped = True
            for j, c in enumerate(codes[i:end], i):
                where[c].append(j)
            # What the window grouped pays for the search that led to it; then the next
            # segment decides: worth its cost, or a longer window.
            debt = max(_DEBT // 2, debt - (end - i))
            window *= 2
        else:
            if debt == 0:
                window = _WINDOW
            for j in range(i, i + p):
                c = codes[j]
                pieces = parts.setdefault(c, [])
                if c in where:  # its points grouped one by one come before this slice
                    pieces.append(where.pop(c))
                pieces.append(slice(j, end, p))
        i = end
    if not grouped:
        return parts  # only slices: already in order of first use
    for c, idx in where.items():
        parts.setdefault(c, []).append(idx)
    # Series first used in a window were added when their list ended: put all in order
    # of first use again.
    first = {c: p[0].start if isinstance(p[0], slice) else p[0][0] for c, p in parts.items()}
    return {c: parts[c] for c in sorted(parts, key=first.__getitem__)}


def _extent(raw: bytes, view: memoryview, i: int, p: int, n: int, w: int) -> int:
    """The end of the segment from index i that repeats its first p codes, the last
    repeat maybe cut short. Up to _REPEATS repeats by one regular expression match (short
    segments: one C call); longer ones go on with ``_common``'s doubling windows (memcmp;
    a logarithmic number of calls)."""
    end = _periods(p * w)(raw, i * w).end() // w  # type: ignore[union-attr]  # .{w} matches
    left = n - end if end - i > _REPEATS * p else min(p - 1, n - end)
    return end + _common(raw, view, end - p, end, left, w) if left > 0 else end


# Up to about this many repeats, the regular expression's ~30 ns a repeat costs less than
# the ~10 calls of _common's search (measured with bench/bench_decode.py).
_REPEATS = 64
_PERIODS: dict[int, Callable[[bytes, int], re.Match[bytes] | None]] = {}


def _periods(width: int) -> Callable[[bytes, int], re.Match[bytes] | None]:
    """The match of a pattern of width bytes and of up to _REPEATS repeats of it."""
    found = _PERIODS.get(width)
    if found is None:
        if len(_PERIODS) > 1024:
            _PERIODS.clear()
        pattern = b"(?s)(.{%d})\\1{0,%d}" % (width, _REPEATS)
        found = _PERIODS[width] = re.compile(pattern).match
    return found


def _next_use(raw: bytes, view: memoryview, j: int, w: int, stop: int) -> int:
    """The index of the next use of code j before index stop, or -1."""
    first = view[j * w : (j + 1) * w]
    at = raw.find(first, (j + 1) * w, stop * w)
    while at > 0 and at % w:  # a match across two codes' bytes is not a use
        at = raw.find(first, at + 1, stop * w)
    return at // w if at > 0 else -1


def _common(raw: bytes, view: memoryview, a: int, b: int, limit: int, w: int) -> int:
    """How many codes from index a on equal those from index b on (at most limit), found
    by comparing ever larger windows, then halving the one that differs: C memcmp."""
    ok, size = 0, 8
    while ok < limit:
        size = min(size, limit - ok)
        if raw.startswith(view[(b + ok) * w : (b + ok + size) * w], (a + ok) * w):
            ok += size
            size *= 2
        else:
            break
    else:
        return ok
    while size > 1:  # the window [ok, ok + size) holds the first difference
        half = size // 2
        if raw.startswith(view[(b + ok) * w : (b + ok + half) * w], (a + ok) * w):
            ok += half
            size -= half
        else:
            size = half
    return ok


def _group(
    runs: list[str],
    keys: list[str],
    ri: array[int] | None,
    ki: array[int] | None,
    steps: array[int],
    vals: array[float],
    ts: array[float],
) -> list[Series]:
    if ri is None and ki is None:
        return [(runs[0], keys[0], steps, vals, ts)]
    # One combined code per point, then one index list per series.
    width = len(keys)
    if ri is None:
        codes: array[int] = ki  # type: ignore[assignment]
    elif ki is None:
        codes = array("Q", (r * width for r in ri))
    else:
        codes = array("Q", (r * width + k for r, k in zip(ri, ki, strict=True)))
    return _by_code(lambda c: (runs[c // width], keys[c % width]), codes, steps, vals, ts)


def referenced_records(data: bytes) -> int:
    """How many ring records a version 3 batch names (``r.ref``), for the collector to
    count them against its memory budget before it reads them; 0 for any other batch
    and for one whose reference is malformed (``decode_batch`` says why). Reads the
    ``r`` map only, as the agent puts ``v`` first, a batch of another version costs a
    few bytes read: nothing of a big inline batch is copied."""
    unpacker = msgpack.Unpacker(
        io.BytesIO(data), raw=False, read_size=256, max_buffer_size=max(256, len(data) + 1)
    )
    try:
        for _ in range(unpacker.read_map_header()):
            key = unpacker.unpack()
            if key == "v" and unpacker.unpack() != RING_REF_WIRE_VERSION:
                return 0
            if key != "r":
                if key != "v":
                    unpacker.skip()
                continue
            for _ in range(unpacker.read_map_header()):
                if unpacker.unpack() != "ref":
                    unpacker.skip()
                    continue
                ref = _ring_ref(unpacker.unpack())
                return ref[4] - ref[3]
            return 0
    except Exception:  # not msgpack, not maps, not a reference: the decoder refuses it
        return 0
    return 0


def ids_stream(
    chunks: Sequence[bytes | memoryview], name: Callable[[int], tuple[str, str]]
) -> bytes:
    """The ``r.ids`` stream naming the series that blocks of ring records use (``name``:
    index -> (run id, key))."""
    used: set[int] = set()
    for chunk in chunks:
        used.update(memoryview(chunk).cast("I")[RECORD_SIZE // 4 - 2 :: RECORD_SIZE // 4])
    return b"".join(msgpack.packb([2, i, *name(i)]) for i in sorted(used))


def with_records(data: bytes, rings: RingReader) -> bytes:
    """A version 3 batch (``r.ref``) rewritten in version 2 form, with the records and
    names read through ``rings``, for a store-and-forward hop (the node sidecar) whose
    next hop cannot read the ring; any other batch as it is. Raises ``WireError``."""
    try:
        body = msgpack.unpackb(data, raw=False, strict_map_key=True, max_bin_len=1 << 30)
    except Exception as e:
        raise WireError(f"not valid msgpack ({type(e).__name__}: {e})") from None
    if not isinstance(body, dict) or body.get("v") != RING_REF_WIRE_VERSION:
        return data
    r = body.get("r")
    if not isinstance(r, dict):
        raise WireError("'r' must be a map")
    records, table = rings(_ring_ref(r.get("ref")))

    def name(code: int) -> tuple[str, str]:
        found = table.get(code)
        if found is None:
            raise WireError(f"r.rec names series {code}, which the ring's ids do not hold")
        return found

    body["v"] = RING_WIRE_VERSION
    body["r"] = {"rec": records, "ids": ids_stream([records], name)}
    return pack(body)


def pack(obj: Any) -> bytes:
    """msgpack with binary types, for RPC bodies."""
    packed: bytes = msgpack.packb(obj, use_bin_type=True)
    return packed


def unpack(data: bytes) -> Any:
    """The inverse of pack()."""
    return msgpack.unpackb(data, raw=False, strict_map_key=False)

"""The agent's queue format: flat 5-slot records, and how a slice of them becomes a batch.

The queue is one flat list of 5-slot records: (run_id, key, value, step, ts_seconds)
for a metric point, (OP, Op | FlushMarker, None, None, None) for anything else. A
producer adds a record with one ``list += tuple``, which is atomic under the GIL, so
records never interleave; the packer then cuts columns with C-level slices
(``items[2::5]``) instead of a Python loop per point, and no per-point tuple outlives
the call (so it never reaches the garbage collector's generations).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import compress
from typing import Any

from flightlog.agent.outbox import FlushMarker

RECORD = 5
OP = object()


class Op:
    """A non-metric operation (create_run, log_params, set_tags, update_run, ...)."""

    __slots__ = ("args", "name")

    def __init__(self, name: str, args: dict[str, Any]) -> None:
        self.name = name
        self.args = args


def split_records(
    items: list[Any], may_hold_ops: bool
) -> tuple[list[list[Any]], list[list[Any]], list[FlushMarker], int]:
    """Cut queue records into metric columns, ops and flush markers.

    Returns (columns, ops as ``[name, args]``, markers, how many non-metric records
    were taken). ``may_hold_ops`` False skips the search for ops: the common case.
    """
    columns = [items[i::RECORD] for i in range(RECORD)]
    if not may_hold_ops or OP not in columns[0]:
        return columns, [], [], 0
    mask = [r is not OP for r in columns[0]]
    objs = [o for keep, o in zip(mask, columns[1], strict=True) if not keep]
    ops = [[o.name, o.args] for o in objs if o.__class__ is Op]
    markers = [o for o in objs if o.__class__ is FlushMarker]
    return [list(compress(c, mask)) for c in columns], ops, markers, len(objs)


def clean_points(columns: Sequence[Sequence[Any]]) -> tuple[list[list[Any]], int]:
    """The points of ``columns`` that the wire format can carry, and how many were not."""
    keep: list[bool] = []
    for rid, key, value, step, ts in zip(*columns, strict=True):
        keep.append(
            isinstance(rid, str)
            and isinstance(key, str)
            and isinstance(value, (float, int))
            and isinstance(step, int)
            and -(2**63) <= step < 2**63
            and isinstance(ts, (float, int))
        )
    clean = [list(compress(c, keep)) for c in columns]
    return clean, len(keep) - sum(keep)

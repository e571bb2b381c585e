"""Big ingest batches applied in slices, so the single writer stays fair to everyone else.

SQLite has one writer, and the collector runs every write on one writer thread in
arrival order. A batch of 200,000 distinct series applied in one transaction held that
thread for seconds, and every REST write from other clients waited behind it. So a
batch over :data:`MAX_SLICE_SERIES` series, :data:`MAX_SLICE_POINTS` points or
:data:`MAX_SLICE_OPS` ops is cut, deterministically, into slices, each applied in a
transaction of its own as a separate job on the writer thread: writes queued meanwhile
run between two slices, so they wait for at most about one slice.

Idempotency stays per batch: each slice commits together with its own id
(``<batch id>#<slice>/<slices>``) in the ``batches`` table, so a batch resent after a
crash or a lost acknowledgement skips the slices already committed and applies the rest
(the same bytes slice the same way): however often it is sent, every op and point is
stored exactly once, and the answer says ``duplicate`` only when every slice was. A
reader may see a sliced batch half applied while it is being written.
"""

from __future__ import annotations

from collections.abc import Sequence

from flightlog.collector.store_api import Op, Series

#: Bounds of one slice; each takes the writer for well under 0.1 s on a quiet machine.
MAX_SLICE_SERIES = 2000
MAX_SLICE_POINTS = 100_000
MAX_SLICE_OPS = 2000


def slice_batch(ops: Sequence[Op], series: Sequence[Series]) -> list[tuple[list[Op], list[Series]]]:
    """The batch as slices of (ops, series), ops first and in order; one slice if small."""
    slices: list[tuple[list[Op], list[Series]]] = []
    for start in range(0, len(ops), MAX_SLICE_OPS):
        slices.append((list(ops[start : start + MAX_SLICE_OPS]), []))
    current: list[Series] = []
    points = 0
    for s in series:
        n = len(s[2])
        if current and (len(current) >= MAX_SLICE_SERIES or points + n > MAX_SLICE_POINTS):
            slices.append(([], current))
            current, points = [], 0
        current.append(s)
        points += n
    if current:
        if len(slices) == 1 and not slices[0][1]:
            # The common small batch: its ops and its series in one transaction. (Only
            # into a slice of ops alone: a batch without ops whose series were cut once
            # has its first series slice there, which must not be replaced.)
            slices[0] = (slices[0][0], current)
        else:
            slices.append(([], current))
    return slices or [([], [])]


def slice_id(batch_id: str | None, index: int, count: int) -> str | None:
    """The id a slice is deduplicated by: the batch id itself when it is not sliced."""
    if batch_id is None or count == 1:
        return batch_id
    return f"{batch_id}#{index}/{count}"

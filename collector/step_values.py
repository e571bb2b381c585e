"""The value each run's metric had at a chosen step (the runs table's "at step" cells).

A run's value at step ``S`` is its point with the largest step ``<= S`` (so a metric
logged every 100 steps still has a value at step 250: the one from step 200), the
latest by timestamp, then by logging order, when several points share that step, as
MLflow picks a metric's latest value. The answer names the step it came from.

Both stores hand this module the same thing: every chunk of the key in the experiment
that starts at or before ``S`` (chunk id, run, smallest and largest step). Chunks are
read, at most one per run per round and all of a round in one store call, in order of
the best step they could hold (``min(max_step, S)``): a run is settled as soon as its
next chunk cannot beat the step already found. Steps usually grow with logging order,
so one round reads one chunk per run, whatever the length of the series.
"""

from __future__ import annotations

import operator
from array import array
from bisect import bisect_right
from collections.abc import Callable, Iterable, Sequence
from itertools import islice

#: (chunk_id, run_id, min_step, max_step) of a chunk.
ChunkSpan = tuple[int, str, int, int]
#: Packed (steps, values, timestamps) of chunks, by chunk id (Store.metric_chunk_data).
ReadChunks = Callable[[Sequence[int]], dict[int, tuple[bytes, ...]]]
#: (step, timestamp, chunk_id, position) orders the candidates; the largest wins.
_Rank = tuple[int, float, int, int]


def _best_in_chunk(
    chunk_id: int, steps: array[int], ts: array[float], step: int, max_step: int
) -> tuple[_Rank, int] | None:
    """The chunk's best point at or before ``step`` as (rank, position), or None.

    Scans run in C (array.index, map): a chunk that ends at or before the step needs no
    look at its steps beyond finding where its largest one is.
    """
    if max_step <= step:
        found = max_step
    elif all(map(operator.le, steps, islice(steps, 1, None))):  # steps in order
        end = bisect_right(steps, step)
        if not end:
            return None
        found = steps[end - 1]
    else:
        below = [s for s in steps if s <= step]
        if not below:
            return None
        found = max(below)
    first = steps.index(found)
    best = first
    if steps.count(found) > 1:  # several points logged at that step: the latest wins
        positions = [i for i in range(first, len(steps)) if steps[i] == found]
        best = max(positions, key=lambda i: (ts[i], i))
    return (found, ts[best], chunk_id, best), best


def values_at_step(
    spans: Iterable[ChunkSpan], read_chunks: ReadChunks, step: int
) -> dict[str, tuple[int, float]]:
    """Per run: (step, value) of its point with the largest step ``<= step``.

    ``spans`` are the key's chunks in the experiment with ``min_step <= step``;
    ``read_chunks`` reads chunks' packed arrays by id. Runs with no such point are
    absent from the answer.
    """
    queues: dict[str, list[tuple[int, int, int]]] = {}
    for chunk_id, run_id, _lo, hi in spans:
        queues.setdefault(run_id, []).append((min(hi, step), chunk_id, hi))
    for q in queues.values():
        q.sort()  # popped from the end: the highest bound (then the latest chunk) first
    best: dict[str, tuple[_Rank, float]] = {}
    while queues:
        wanted: dict[int, tuple[str, int]] = {}  # chunk -> (run, its largest step)
        for run_id, q in list(queues.items()):
            found = best.get(run_id)
            if not q or (found is not None and q[-1][0] < found[0][0]):
                del queues[run_id]  # no chunk left could hold a later step
                continue
            _bound, chunk_id, hi = q.pop()
            wanted[chunk_id] = (run_id, hi)
        if not wanted:
            break
        for chunk_id, (raw_steps, raw_vals, raw_ts) in read_chunks(list(wanted)).items():
            steps, vals, ts = array("q"), array("d"), array("d")
            steps.frombytes(raw_steps)
            ts.frombytes(raw_ts)
            run_id, hi = wanted[chunk_id]
            got = _best_in_chunk(chunk_id, steps, ts, step, hi)
            if got is None:
                continue
            rank, pos = got
            if run_id not in best or rank > best[run_id][0]:
                vals.frombytes(raw_vals)
                best[run_id] = (rank, vals[pos])
    return {run_id: (rank[0], value) for run_id, (rank, value) in best.items()}

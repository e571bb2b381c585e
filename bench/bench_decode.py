"""Benchmark of the collector's grouping of metric-ring records by series (issue 15).

``flightlog.core.wire._by_code`` cuts the columns of a ring batch into one series per
(run, key). Prints ns per point, the old code (a copy of the grouping before irregular
batches were cut into segments: strided slices only when the whole batch repeats one
period, else an index list per series and a Python object per point) against this
checkout's, for batch shapes:

  one series                      one metric, every record
  10 periodic                     10 metrics logged every step
  key mid-batch                   9 metrics every step, a 10th from mid-batch on
  eval every 50                   10 metrics every step, 2 eval metrics every 50 steps
  4 threads x 1 metric, bursts    4 threads, one metric each, taking turns in bursts
                                  of 1..50 records
  4 threads x 10 metrics, bursts  the same with 10 metrics per thread (a burst ends
                                  mid-step, so a segment is 2.5 steps on average)
  random                          codes drawn at random from 10 series
  random, 30,000 series           the same from 30,000 series (most with a point or two)

Each figure is the median of --rounds timings of one grouping of a batch of --points
points (the agent ships up to FLIGHTLOG_BATCH_POINTS, 100,000 by default). The columns
are cut beforehand, as ``_ring_series`` does, so only the grouping is timed; both sides
are checked to give the same series first. The machine may be shared: the load average
is printed with the figures.

Run: python bench/bench_decode.py [--points 20000] [--rounds 21]
"""

from __future__ import annotations

import argparse
import os
import random
import time
from array import array
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from flightlog.core.wire import Series, _by_code, _periodic_series


def old_by_code(
    name: Callable[[int], tuple[str, str]],
    codes: array[int],
    steps: array[int],
    vals: array[float],
    ts: array[float],
) -> list[Series]:
    """``_by_code`` as it was before segments (commit f4f88ed), for comparison."""
    periodic = _periodic_series(name, codes, steps, vals, ts)
    if periodic is not None:
        return periodic
    where: defaultdict[int, list[int]] = defaultdict(list)
    for i, c in enumerate(codes):
        where[c].append(i)
    out: list[Series] = []
    get_s, get_v, get_t = steps.__getitem__, vals.__getitem__, ts.__getitem__
    for c, idx in where.items():
        out.append(
            (
                *name(c),
                array("q", map(get_s, idx)),
                array("d", map(get_v, idx)),
                array("d", map(get_t, idx)),
            )
        )
    return out


def shapes(n: int, rng: random.Random) -> dict[str, list[int]]:
    """Series codes of one batch of n records, per shape."""
    out: dict[str, list[int]] = {"one series": [0] * n}
    out["10 periodic"] = [i % 10 for i in range(n)]
    half = n // 2 - (n // 2) % 9
    out["key mid-batch"] = [i % 9 for i in range(half)] + [i % 10 for i in range(n - half)]
    evals: list[int] = []
    step = 0
    while len(evals) < n:
        evals += range(10)
        step += 1
        if step % 50 == 0:
            evals += (10, 11)
    out["eval every 50"] = evals[:n]
    for metrics in (1, 10):
        bursts: list[int] = []
        steps_of = [0] * 4
        while len(bursts) < n:
            t = rng.randrange(4)
            for _ in range(rng.randint(1, 50)):
                bursts.append(t * metrics + steps_of[t] % metrics)
                steps_of[t] += 1
        out[f"4 threads x {metrics} metric{'s' * (metrics > 1)}, bursts"] = bursts[:n]
    out["random"] = [rng.randrange(10) for _ in range(n)]
    out["random, 30,000 series"] = [rng.randrange(30_000) for _ in range(n)]
    return out


def timed(fn: Any, codes: array[int], columns: tuple[Any, ...], rounds: int) -> float:
    """Median ns per point of fn over rounds decodes."""
    names = {c: ("r" * 32, f"k{c}") for c in set(codes)}
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter_ns()
        fn(names.__getitem__, codes, *columns)
        samples.append((time.perf_counter_ns() - t0) / len(codes))
    samples.sort()
    return samples[len(samples) // 2]


def main() -> None:
    """Print the table of old and new ns per point, per shape."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--points", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=21)
    args = parser.parse_args()
    rng = random.Random(15)
    n = args.points
    columns = (array("q", range(n)), array("d", range(n)), array("d", range(n)))
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{n:,} points per batch, median of {args.rounds} rounds, ns per point")
    print("| shape | old | new | old/new |\n|---|---:|---:|---:|")
    for shape, codes_list in shapes(n, rng).items():
        codes = array("I", codes_list)
        # Same result, series by series, before anything is timed.
        names = {c: ("r" * 32, f"k{c}") for c in set(codes)}
        assert old_by_code(names.__getitem__, codes, *columns) == _by_code(
            names.__getitem__, codes, *columns
        ), shape
        old = timed(old_by_code, codes, columns, args.rounds)
        new = timed(_by_code, codes, columns, args.rounds)
        print(f"| {shape} | {old:.1f} | {new:.1f} | {old / new:.1f}x |")
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()

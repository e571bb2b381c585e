"""The official MLflow client against flightlog, ``mlflow server`` and FastTrackML.

Each server runs on 127.0.0.1 with a SQLite store in a temporary directory, started,
populated and stopped by this script on the same machine. All of them are populated
first; then each measurement alternates between the servers round by round (in a
rotating order), so that a busy spell of a shared machine is spread over all of them
rather than landing on whichever server was being measured. The same client code
times, against each:

- ``log_metric``: one synchronous ``MlflowClient.log_metric`` round trip (median, p95);
- ``log_batch``: one ``MlflowClient.log_batch`` of 1,000 metrics;
- ``search_runs``: over an experiment of 10,000 runs (5 params, 5 metrics, 3 tags each),
  a filtered and ordered search returning up to 1,000 runs, and a listing of all
  10,000 runs in pages of 1,000.

FastTrackML is the ``fml`` binary of the ``fasttrackml`` PyPI package. It pins an old
mlflow, so it lives in a virtualenv of its own: pass ``--fml PATH`` or set
``FASTTRACKML_BIN``; otherwise this script makes one under ``~/.cache/flightlog-bench``
with ``pip install --no-deps fasttrackml``.

    python bench/bench_rest.py [--runs 10000] [--metric-calls 300] [--skip fasttrackml]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.mlflow_server import (
    ServerProcess,
    quiet_mlflow,
    start_fasttrackml,
    start_flightlog_collector,
    start_mlflow_server,
)

quiet_mlflow()

from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import Metric, Param, RunTag  # noqa: E402

SERVERS = ("flightlog", "mlflow server", "FastTrackML")


def fasttrackml_binary(given: str | None) -> str:
    """The ``fml`` binary: given, from FASTTRACKML_BIN, or installed into a cached venv."""
    if given:
        return given
    if os.environ.get("FASTTRACKML_BIN"):
        return os.environ["FASTTRACKML_BIN"]
    venv = Path.home() / ".cache" / "flightlog-bench" / "fasttrackml-venv"
    fml = venv / "bin" / "fml"
    if not fml.exists():
        print(f"installing fasttrackml into {venv} ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(venv / "bin" / "pip"), "install", "--quiet", "--no-deps", "fasttrackml"],
            check=True,
        )
    return str(fml)


def p95(xs: list[float]) -> float:
    return sorted(xs)[max(0, round(len(xs) * 0.95) - 1)]


def populate(client: MlflowClient, experiment_id: str, runs: int, threads: int) -> float:
    """``runs`` runs with 5 params, 5 metrics and 3 tags each; returns seconds taken."""
    rng = random.Random(7)
    specs = [
        (
            i,
            [Param(f"p{j}", rng.choice("abcd")) for j in range(5)],
            [Metric(f"m{j}", rng.random(), 1_700_000_000_000 + i, 0) for j in range(5)],
            [RunTag("team", rng.choice(["ml", "ds"])), RunTag("i", str(i)), RunTag("k", "v")],
        )
        for i in range(runs)
    ]

    def one(spec: tuple[int, list[Param], list[Metric], list[RunTag]]) -> None:
        i, params, metrics, tags = spec
        run = client.create_run(experiment_id, start_time=1_700_000_000_000 + i, run_name=f"r{i}")
        client.log_batch(run.info.run_id, metrics=metrics, params=params, tags=tags)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, specs))
    return time.perf_counter() - t0


@dataclass
class Target:
    """One started server, its populated experiments and the calls timed against it."""

    server: ServerProcess
    calls: dict[str, Callable[[], object]] = field(default_factory=dict)
    found: list[int] = field(default_factory=list)


def prepare(server: ServerProcess, args: argparse.Namespace) -> Target:
    """Populate ``server`` and build the client calls that the rounds time."""
    client = MlflowClient(server.url)
    target = Target(server)
    exp = client.create_experiment(f"bench-{time.time_ns()}")
    run_id = client.create_run(exp, run_name="latency").info.run_id
    step = iter(range(10**9))
    now = int(time.time() * 1000)

    def batch() -> None:
        s = next(step)
        metrics = [Metric(f"k{i % 10}", random.random(), now, s * 1000 + i) for i in range(1000)]
        client.log_batch(run_id, metrics=metrics)

    search_exp = client.create_experiment(f"bench-search-{time.time_ns()}")
    seconds = populate(client, search_exp, args.runs, args.threads)
    print(f"  {server.name}: populated {args.runs} runs in {seconds:.1f}s", file=sys.stderr)

    def search_filtered() -> None:
        runs = client.search_runs(
            [search_exp],
            "metrics.m0 > 0.2 and params.p0 != 'a' and tags.team = 'ml'",
            order_by=["metrics.m1 DESC"],
            max_results=1000,
        )
        target.found.append(len(runs))

    def search_all() -> None:
        token = None
        total = 0
        while True:
            page = client.search_runs([search_exp], max_results=1000, page_token=token)
            total += len(page)
            token = page.token
            # FastTrackML 0.6.0 hands out a token after the last full page that it then
            # refuses ("invalid page_token"); every run has been read at that point.
            if not token or total >= args.runs:
                break
        target.found.append(total)

    target.calls = {
        "log_metric": lambda: client.log_metric(run_id, "loss", random.random(), step=next(step)),
        "log_batch": batch,
        "search_filtered": search_filtered,
        "search_all": search_all,
    }
    return target


def interleaved(
    targets: dict[str, Target], call: str, repeat: int, warmup: int
) -> dict[str, list[float]]:
    """Milliseconds of ``repeat`` rounds of ``call``, one call per server per round.

    Rounds alternate the servers (in a rotating order), so a slow spell of a shared
    machine falls on all of them alike instead of on whichever server ran then.
    """
    names = list(targets)
    for name in names:
        for _ in range(warmup):
            targets[name].calls[call]()
    out: dict[str, list[float]] = {name: [] for name in names}
    for i in range(repeat):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            fn = targets[name].calls[call]
            t0 = time.perf_counter()
            fn()
            out[name].append((time.perf_counter() - t0) * 1000)
    return out


def bench(targets: dict[str, Target], args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """The table's rows for each server: medians (and log_metric's p95) of interleaved rounds."""
    table: dict[str, dict[str, float]] = {name: {} for name in targets}
    metric = interleaved(targets, "log_metric", args.metric_calls, warmup=20)
    batch = interleaved(targets, "log_batch", args.batch_calls, warmup=3)
    filtered = interleaved(targets, "search_filtered", args.search_calls, warmup=1)
    listing = interleaved(targets, "search_all", args.search_calls, warmup=1)
    for name in targets:
        table[name]["log_metric median"] = statistics.median(metric[name])
        table[name]["log_metric p95"] = p95(metric[name])
        table[name]["log_batch(1000) median"] = statistics.median(batch[name])
        table[name]["search_runs filter+order (1000 of 10k)"] = statistics.median(filtered[name])
        table[name]["search_runs all 10k (pages of 1000)"] = statistics.median(listing[name])
        sizes = sorted(set(targets[name].found))
        print(f"  {name}: search sizes {sizes}", file=sys.stderr)
    return table


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs", type=int, default=10_000)
    p.add_argument("--metric-calls", type=int, default=300)
    p.add_argument("--batch-calls", type=int, default=20)
    p.add_argument("--search-calls", type=int, default=5)
    p.add_argument("--threads", type=int, default=8, help="client threads that populate runs")
    p.add_argument("--fml", default=None, help="path of FastTrackML's fml binary")
    p.add_argument("--skip", action="append", default=[], choices=["mlflow", "fasttrackml"])
    args = p.parse_args()

    starters: dict[str, Callable[[Path], ServerProcess]] = {"flightlog": start_flightlog_collector}
    if "mlflow" not in args.skip:
        # MLflow's default of 4 workers, so populating with several client threads is fair.
        starters["mlflow server"] = lambda d: start_mlflow_server(d, workers=4)
    if "fasttrackml" not in args.skip:
        fml = fasttrackml_binary(args.fml)
        starters["FastTrackML"] = lambda d: start_fasttrackml(fml, d)

    # All servers are started and populated first; then every measurement alternates
    # between them (see interleaved), and they are stopped at the end.
    servers: list[ServerProcess] = []
    with tempfile.TemporaryDirectory(prefix="bench-rest-") as tmp:
        try:
            targets: dict[str, Target] = {}
            for name, start in starters.items():
                print(f"{name} ...", file=sys.stderr)
                servers.append(start(Path(tmp) / name.replace(" ", "-")))
                targets[name] = prepare(servers[-1], args)
            table = bench(targets, args)
        finally:
            for server in servers:
                server.stop()

    rows = list(next(iter(table.values())))
    names = list(table)
    print()
    print(f"| {'ms (lower is better)':<40} | " + " | ".join(f"{n:>13}" for n in names) + " |")
    print(f"|{'-' * 42}|" + "|".join("-" * 15 for _ in names) + "|")
    for row in rows:
        cells = " | ".join(f"{table[n][row]:>13.2f}" for n in names)
        print(f"| {row:<40} | {cells} |")
    slower = [
        f"{row} ({n})"
        for row in rows
        for n in names
        if n != "flightlog" and table["flightlog"][row] >= table[n][row]
    ]
    print()
    print("flightlog fastest on every row" if not slower else f"flightlog NOT faster: {slower}")
    return 0 if not slower else 1


if __name__ == "__main__":
    raise SystemExit(main())

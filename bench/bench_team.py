"""Benchmark of the team deployment (issue 14): PostgreSQL store and forwarding nodes.

Prints, all in one run on this machine (a throwaway PostgreSQL 15 cluster from
tests/pgserver.py, collectors and sidecars on 127.0.0.x):
  (a) one trainer -> central collector, durable end-to-end points/s (first log_metric
      until flush() returns, every point then counted in the store), on PostgreSQL and,
      for reference, on SQLite;
  (b) N forwarding nodes (a sidecar on 127.0.0.<i> and one trainer each) into one
      central collector on PostgreSQL: aggregate points/s until the central store holds
      every point;
  (c) search over 100,000 runs on PostgreSQL (5 params, 5 metrics, 3 tags each):
      store-level search_run_ids and the MLflow REST search through the collector, and
      log_batch of 1,000 metrics; beside it ``mlflow server`` on the same PostgreSQL
      cluster (a database of its own, the same runs written into its schema), its REST
      calls alternating with flightlog's (--skip-mlflow leaves it out);
  (d) reading a 1,000,000-point history on PostgreSQL: the store's metric_history and the
      collector's RPC (packed chunks) as the SDK fetches it;
  (e) forwarding delay at steady load (a trainer logging at a fixed rate through a
      sidecar): p50/p99 seconds from the sidecar's acknowledgement to the upstream's.

Run: python bench/bench_team.py [--points 2000000] [--nodes 8] [--runs 100000]
     [--only trainer|nodes|steady|search ...] [--skip-mlflow]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from pgserver import PgServer, postgres_cluster  # noqa: E402

from flightlog.agent.transport import CollectorClient  # noqa: E402

TOKEN = "bench-token"

TRAINER = r"""
import sys, time
import flightlog as mlflow
mlflow.set_tracking_uri(sys.argv[1])
n, rate = int(sys.argv[2]), float(sys.argv[3])
with mlflow.start_run() as run:
    print("run", run.info.run_id, flush=True)
    log = mlflow.log_metric
    t0 = time.perf_counter()
    if rate:
        # Steady load: blocks of 1000 points, paced to `rate` points/s.
        for i in range(n):
            log("loss", i * 0.001, step=i)
            if i % 1000 == 999:
                ahead = (i + 1) / rate - (time.perf_counter() - t0)
                if ahead > 0:
                    time.sleep(ahead)
    else:
        for i in range(n):
            log("loss", i * 0.001, step=i)
    # Durable: through a passing outage too (a node busy on this 2-core machine).
    assert mlflow.MlflowClient().ctx.agent.flush(timeout=600, through_outage=True)
    print("seconds", time.perf_counter() - t0, flush=True)
"""


def start(
    argv: list[str], work: Path, name: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """A collector or sidecar process; its URL once it listens."""
    port_file = work / f"{name}.port.json"
    log = (work / f"{name}.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "flightlog", "collector", *argv, "--port-file", str(port_file)],
        stdout=log,
        stderr=log,
        env={**os.environ, **(env or {})},
    )
    deadline = time.monotonic() + 60
    while not port_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError((work / f"{name}.log").read_text())
        time.sleep(0.02)
    info = json.loads(port_file.read_text())
    return proc, f"http://{info['host']}:{info['port']}"


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait(timeout=60)


def trainer(url: str, n: int, work: Path, rate: float = 0.0) -> subprocess.Popen[str]:
    script = work / "trainer.py"
    if not script.exists():  # rewriting it while another trainer starts would cut it short
        script.write_text(TRAINER)
    env = {**os.environ, "FLIGHTLOG_TOKEN": TOKEN, "FLIGHTLOG_SPOOL_DIR": str(work / "spool")}
    log = (work / f"trainer-{uuid.uuid4().hex[:8]}.stderr").open("w")
    return subprocess.Popen(
        [sys.executable, str(script), url, str(n), str(rate)],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env=env,
        cwd=work,
    )


def read_lines(p: subprocess.Popen[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    assert p.stdout is not None
    for line in p.stdout:
        key, _, value = line.strip().partition(" ")
        out[key] = value
    if p.wait() != 0 or "seconds" not in out:
        assert p.stderr is None
        raise RuntimeError(f"a trainer failed (exit {p.returncode}); see its .stderr file")
    return out


def stored_points(uri: str) -> int:
    with psycopg.connect(uri) as conn:
        row = conn.execute("SELECT COALESCE(SUM(n), 0) FROM metric_chunks").fetchone()
    return int(row[0]) if row else 0


def health(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + "/health", timeout=10) as r:
        body: dict[str, Any] = json.loads(r.read())
        return body


# -- (a) one trainer ----------------------------------------------------------------------


def one_trainer(pg: PgServer, work: Path, n: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for backend in ("postgresql", "sqlite"):
        store = pg.create_database() if backend == "postgresql" else str(work / "sqlite-store")
        proc, url = start(["--store", store, "--port", "0", "--token", TOKEN], work, backend)
        try:
            t = trainer(url, n, work)
            out = read_lines(t)
            seconds = float(out["seconds"])
            results[backend] = {"points_per_s": n / seconds, "run_id": out["run"], "store": store}
            if backend == "postgresql":
                assert stored_points(store) == n, "every point stored"
        finally:
            stop([proc])
    return results


# -- (b) forwarding nodes -----------------------------------------------------------------


def forwarding_nodes(pg: PgServer, work: Path, nodes: int, n: int) -> dict[str, Any]:
    uri = pg.create_database()
    central, central_url = start(
        ["--store", uri, "--host", "127.0.0.1", "--port", "0", "--token", TOKEN], work, "central"
    )
    sidecars = []
    urls = []
    try:
        for i in range(nodes):
            host = f"127.0.0.{i + 2}"
            proc, url = start(
                [
                    "--store",
                    str(work / f"node{i}"),
                    "--host",
                    host,
                    "--port",
                    "0",
                    "--upstream",
                    central_url,
                ],
                work,
                f"node{i}",
                env={"FLIGHTLOG_UPSTREAM_TOKEN": TOKEN},
            )
            sidecars.append(proc)
            urls.append(url)
        t0 = time.perf_counter()
        trainers = [trainer(u, n, work) for u in urls]
        for t in trainers:
            read_lines(t)
        acked = time.perf_counter() - t0
        while stored_points(uri) < n * nodes:
            time.sleep(0.05)
        total = time.perf_counter() - t0
        delays = [health(u)["forward_delay_seconds"]["p99"] for u in urls]
        return {
            "nodes": nodes,
            "points": n * nodes,
            "aggregate_points_per_s": n * nodes / total,
            "acknowledged_points_per_s": n * nodes / acked,
            "worst_node_delay_p99_s": max(d for d in delays if d is not None),
        }
    finally:
        stop([*sidecars, central])


# -- (c) search over many runs --------------------------------------------------------------


def search_rows(runs: int) -> list[dict[str, Any]]:
    """The runs of the search figure: 5 params, 5 latest metrics, 3 tags each (the same
    rows for flightlog and for ``mlflow server``)."""
    out = []
    for i in range(runs):
        rid = uuid.uuid4().hex
        out.append(
            {
                "run_id": rid,
                "name": f"run-{i}",
                "start": 1_700_000_000_000 + i,
                "end": 1_700_000_100_000 + i,
                "params": [(f"p{k}", f"v{(i * (k + 3)) % 10}") for k in range(5)],
                "tags": [(f"t{k}", f"team-{(i + k) % 7}") for k in range(3)],
                "metrics": [
                    (f"m{k}", ((i * 7919 + k * 104729) % 10007) / 10007.0) for k in range(5)
                ],
            }
        )
    return out


def populate_runs(uri: str, rows: list[dict[str, Any]]) -> str:
    """The runs in flightlog's schema, written with COPY (set-up, not what is measured);
    then VACUUM ANALYZE, the state autovacuum keeps a table in."""
    from flightlog.collector.pgstore import PostgresStore

    store = PostgresStore(uri, "s3://bench/artifacts")
    exp = store.create_experiment("bench-search")
    store.close()
    with psycopg.connect(uri) as conn, conn.cursor() as cur:
        with cur.copy(
            "COPY runs (run_uuid, experiment_id, run_name, user_id, status, start_time,"
            " end_time, artifact_uri, lifecycle_stage) FROM STDIN"
        ) as copy:
            for r in rows:
                rid = r["run_id"]
                copy.write_row(
                    (rid, int(exp), r["name"], "bench", "FINISHED", r["start"], r["end"],
                     f"s3://bench/{rid}", "active")
                )  # fmt: skip
        for table in ("params", "tags"):
            with cur.copy(f"COPY {table} (run_uuid, key, value) FROM STDIN") as copy:
                for r in rows:
                    for key, value in r[table]:
                        copy.write_row((r["run_id"], key, value))
        with cur.copy(
            "COPY latest_metrics (run_uuid, key, value, timestamp, step, is_nan) FROM STDIN"
        ) as copy:
            for r in rows:
                for key, value in r["metrics"]:
                    copy.write_row((r["run_id"], key, value, r["end"], 0, 0))
        conn.commit()
    _vacuum(uri)
    return exp


def populate_mlflow_runs(uri: str, url: str, rows: list[dict[str, Any]]) -> str:
    """The same runs in ``mlflow server``'s own schema (its database, made by its
    migrations when it started), written with COPY; the experiment made through its API."""
    from mlflow import MlflowClient

    exp = MlflowClient(url).create_experiment("bench-search")
    with psycopg.connect(uri) as conn, conn.cursor() as cur:
        with cur.copy(
            "COPY runs (run_uuid, name, source_type, source_name, entry_point_name, user_id,"
            " status, start_time, end_time, source_version, lifecycle_stage, artifact_uri,"
            " experiment_id) FROM STDIN"
        ) as copy:
            for r in rows:
                rid = r["run_id"]
                copy.write_row(
                    (rid, r["name"], "LOCAL", "", "", "bench", "FINISHED", r["start"], r["end"],
                     "", "active", f"mlflow-artifacts:/{exp}/{rid}/artifacts", int(exp))
                )  # fmt: skip
        for table in ("params", "tags"):
            with cur.copy(f"COPY {table} (key, value, run_uuid) FROM STDIN") as copy:
                for r in rows:
                    for key, value in r[table]:
                        copy.write_row((key, value, r["run_id"]))
        for table in ("latest_metrics", "metrics"):
            with cur.copy(
                f"COPY {table} (key, value, timestamp, step, is_nan, run_uuid) FROM STDIN"
            ) as copy:
                for r in rows:
                    for key, value in r["metrics"]:
                        copy.write_row((key, value, r["end"], 0, False, r["run_id"]))
        conn.commit()
    _vacuum(uri)
    return exp


def _vacuum(uri: str) -> None:
    with psycopg.connect(uri, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")


def timed(fn: Any, repeat: int = 7) -> float:
    """Median wall milliseconds of ``fn()`` after one warm-up call."""
    fn()
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000)
    return statistics.median(samples)


SEARCH_FILTER = "metrics.m0 < 0.5 and params.p1 = 'v4' and tags.t0 != 'team-3'"
SEARCH_ORDER = ["metrics.m1 DESC"]


def rest_call(url: str, path: str, args: dict[str, Any]) -> dict[str, Any]:
    """One MLflow REST call (POST JSON), the same bytes to flightlog and ``mlflow server``."""
    req = urllib.request.Request(
        f"{url}/api/2.0/mlflow/{path}",
        data=json.dumps(args).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"},
    )
    with urllib.request.urlopen(req, timeout=120) as r:
        body: dict[str, Any] = json.loads(r.read())
        return body


def rest_calls(url: str, exp: str) -> dict[str, Any]:
    """The REST calls timed against each server: the filtered search page, the first
    unfiltered page, and log_batch of 1,000 metrics into a run of its own."""
    run_id = rest_call(url, "runs/create", {"experiment_id": exp, "start_time": 1})["run"]["info"][
        "run_id"
    ]
    steps = iter(range(10**9))

    def log_batch() -> None:
        s = next(steps) * 1000
        metrics = [
            {"key": f"k{i % 10}", "value": i * 0.5, "timestamp": 1_700_000_000_000, "step": s + i}
            for i in range(1000)
        ]
        rest_call(url, "runs/log-batch", {"run_id": run_id, "metrics": metrics})

    def filtered() -> int:
        args = {
            "experiment_ids": [exp],
            "filter": SEARCH_FILTER,
            "order_by": SEARCH_ORDER,
            "max_results": 1000,
        }
        return len(rest_call(url, "runs/search", args).get("runs", []))

    def first_page() -> int:
        args = {"experiment_ids": [exp], "max_results": 1000}
        return len(rest_call(url, "runs/search", args).get("runs", []))

    return {"search_filtered": filtered, "search_first_page": first_page, "log_batch": log_batch}


def interleaved_medians(servers: dict[str, dict[str, Any]], repeat: int = 7) -> dict[str, float]:
    """Median ms of each server's calls, the servers taking turns call by call so a slow
    spell of this shared machine falls on both alike."""
    samples: dict[str, list[float]] = {}
    for name, calls in servers.items():
        for call, fn in calls.items():
            fn()  # warm-up
            samples[f"{name} {call}"] = []
    for _ in range(repeat):
        for name, calls in servers.items():
            for call, fn in calls.items():
                t0 = time.perf_counter()
                fn()
                samples[f"{name} {call}"].append((time.perf_counter() - t0) * 1000)
    return {k: statistics.median(v) for k, v in samples.items()}


def search(pg: PgServer, work: Path, runs: int, with_mlflow: bool) -> dict[str, Any]:
    """Search over ``runs`` runs and log_batch on flightlog and (beside it, on the same
    PostgreSQL, its own database) ``mlflow server``."""
    from flightlog.collector.pgstore import PostgresStore

    rows = search_rows(runs)
    uri = pg.create_database()
    t0 = time.perf_counter()
    exp = populate_runs(uri, rows)
    out: dict[str, Any] = {"populate_s": time.perf_counter() - t0}
    store = PostgresStore(uri, "s3://bench/artifacts")
    try:
        out["store_filtered_page_ms"] = timed(
            lambda: store.search_run_ids([exp], SEARCH_FILTER, 1, 1000, SEARCH_ORDER, None)
        )
        out["store_first_page_1000_ms"] = timed(
            lambda: store.search_run_ids([exp], None, 1, 1000, None, None)
        )
        ids, _ = store.search_run_ids([exp], SEARCH_FILTER, 1, 1000, SEARCH_ORDER, None)
        out["matching_runs_in_page"] = len(ids)
    finally:
        store.close()
    proc, url = start(["--store", uri, "--port", "0", "--token", TOKEN], work, "search")
    mlflow_server: Any = None
    try:
        servers = {"flightlog": rest_calls(url, exp)}
        if with_mlflow:
            from mlflow_server import quiet_mlflow, start_mlflow_server

            quiet_mlflow()
            ml_uri = pg.create_database()
            # SQLAlchemy on psycopg 3 (the postgres extra), not psycopg2.
            mlflow_server = start_mlflow_server(
                work / "mlflow",
                workers=2,
                backend_store_uri=ml_uri.replace("postgresql://", "postgresql+psycopg://", 1),
            )
            ml_exp = populate_mlflow_runs(ml_uri, mlflow_server.url, rows)
            servers["mlflow server"] = rest_calls(mlflow_server.url, ml_exp)
            out["mlflow_page_runs"] = servers["mlflow server"]["search_filtered"]()
            out["flightlog_page_runs"] = servers["flightlog"]["search_filtered"]()
        out["rest"] = interleaved_medians(servers)
    finally:
        stop([proc])
        if mlflow_server is not None:
            mlflow_server.stop()
    return out


# -- (d) a long history --------------------------------------------------------------------


def history(uri: str, run_id: str, work: Path) -> dict[str, float]:
    from flightlog.collector.pgstore import PostgresStore

    store = PostgresStore(uri, "s3://bench/artifacts")
    try:
        points = len(store.metric_history(run_id, "loss")[0])
        store_ms = timed(lambda: store.metric_history(run_id, "loss"))
    finally:
        store.close()
    proc, url = start(["--store", uri, "--port", "0", "--token", TOKEN], work, "history")
    try:
        client = CollectorClient(url, token=TOKEN)
        rpc_ms = timed(lambda: client.call("get_metric_history", run_id=run_id, key="loss"))
    finally:
        stop([proc])
    return {"points": points, "store_ms": store_ms, "collector_rpc_ms": rpc_ms}


# -- (e) steady forwarding delay ----------------------------------------------------------


def steady_delay(pg: PgServer, work: Path, rate: float, seconds: float) -> dict[str, Any]:
    uri = pg.create_database()
    central, central_url = start(["--store", uri, "--port", "0", "--token", TOKEN], work, "steady")
    node, node_url = start(
        ["--store", str(work / "steady-node"), "--port", "0", "--upstream", central_url],
        work,
        "steady-node",
        env={"FLIGHTLOG_UPSTREAM_TOKEN": TOKEN},
    )
    try:
        read_lines(trainer(node_url, int(rate * seconds), work, rate))
        delays = health(node_url)["forward_delay_seconds"]
        return {"rate_points_per_s": rate, "seconds": seconds, **delays}
    finally:
        stop([node, central])


def _keep(work: Path) -> None:
    # On failure, keep the logs of the processes for a look.
    kept = Path(tempfile.mkdtemp(prefix="bench-team-logs-"))
    for f in work.glob("*.std*"):
        (kept / f.name).write_bytes(f.read_bytes())
    for f in work.glob("*.log"):
        (kept / f.name).write_bytes(f.read_bytes())
    print(f"logs kept in {kept}", file=sys.stderr)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--points", type=int, default=1_000_000, help="points of the one-trainer run")
    p.add_argument("--nodes", type=int, default=8)
    p.add_argument("--node-points", type=int, default=125_000, help="points per node's trainer")
    p.add_argument("--runs", type=int, default=100_000, help="runs for the search figure")
    p.add_argument("--steady-rate", type=float, default=20_000.0)
    p.add_argument("--steady-seconds", type=float, default=20.0)
    p.add_argument(
        "--only",
        action="append",
        choices=["trainer", "nodes", "steady", "search"],
        help="measure only these figures (repeatable; default all)",
    )
    p.add_argument("--skip-mlflow", action="store_true", help="no mlflow server beside flightlog")
    args = p.parse_args()
    print(f"machine: {os.cpu_count()} CPUs (shared and noisy); PostgreSQL 15 on 127.0.0.1")
    with tempfile.TemporaryDirectory() as tmp, postgres_cluster() as pg:
        work = Path(tmp)
        try:
            run_all(args, pg, work)
        except Exception:
            _keep(work)
            raise


def run_all(args: argparse.Namespace, pg: PgServer, work: Path) -> None:
    """Every figure, printed as it is measured."""
    only = set(args.only or ["trainer", "nodes", "steady", "search"])
    if "trainer" in only:
        a = one_trainer(pg, work, args.points)
        for backend in ("postgresql", "sqlite"):
            print(
                f"(a) one trainer, {args.points:,} points, {backend}: "
                f"{a[backend]['points_per_s']:,.0f} points/s durable end to end"
            )
        d = history(a["postgresql"]["store"], a["postgresql"]["run_id"], work)
        print(
            f"(d) {d['points']:,}-point history on PostgreSQL: store {d['store_ms']:.0f} ms, "
            f"through the collector (RPC chunks) {d['collector_rpc_ms']:.0f} ms (median of 7)"
        )
    if "nodes" in only:
        b = forwarding_nodes(pg, work, args.nodes, args.node_points)
        print(
            f"(b) {b['nodes']} forwarding nodes x 1 trainer, {b['points']:,} points: "
            f"{b['aggregate_points_per_s']:,.0f} points/s into the central PostgreSQL "
            f"(acknowledged on the nodes at {b['acknowledged_points_per_s']:,.0f}/s); "
            f"worst node forwarding delay p99 {b['worst_node_delay_p99_s']:.2f} s"
        )
    if "steady" in only:
        e = steady_delay(pg, work, args.steady_rate, args.steady_seconds)
        print(
            f"(e) steady {e['rate_points_per_s']:,.0f} points/s for {e['seconds']:.0f} s "
            f"through a sidecar: forwarding delay p50 {e['p50']:.3f} s, p99 {e['p99']:.3f} s"
        )
    if "search" in only:
        c = search(pg, work, args.runs, not args.skip_mlflow)
        rest = c["rest"]
        print(
            f"(c) search over {args.runs:,} runs on PostgreSQL (populated by COPY in "
            f"{c['populate_s']:.0f} s): filtered+ordered page "
            f"({c['matching_runs_in_page']} runs) store {c['store_filtered_page_ms']:.0f} ms, "
            f"MLflow REST {rest['flightlog search_filtered']:.0f} ms; first 1,000 runs "
            f"unfiltered store {c['store_first_page_1000_ms']:.0f} ms, REST "
            f"{rest['flightlog search_first_page']:.0f} ms (medians of 7)"
        )
        print(
            f"(c) log_batch of 1,000 metrics, flightlog REST: {rest['flightlog log_batch']:.0f} ms"
        )
        if "mlflow server search_filtered" in rest:
            print(
                f"(c) mlflow server on the same PostgreSQL (own database, same runs): "
                f"filtered+ordered page ({c['mlflow_page_runs']} runs; flightlog "
                f"{c['flightlog_page_runs']}) {rest['mlflow server search_filtered']:.0f} ms, "
                f"first 1,000 unfiltered {rest['mlflow server search_first_page']:.0f} ms, "
                f"log_batch of 1,000 metrics {rest['mlflow server log_batch']:.0f} ms "
                "(medians of 7, interleaved with flightlog's)"
            )


if __name__ == "__main__":
    main()

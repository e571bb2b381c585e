"""SIGKILL and training-loop cost: flightlog beside W&B offline and MLflow async, in one run.

    python bench/bench_kill_peers.py [--points 100000] [--seconds 3] [--only flightlog,wandb]

Trackers (each in its own process, from its own virtualenv as in bench/bench_peers.py,
whose machinery installs them under ``--cache``):

- ``flightlog``: this checkout with its default settings (embedded local store);
- ``flightlog-ring``: the same with ``FLIGHTLOG_METRIC_RING=1``;
- ``wandb``: W&B offline (``WANDB_MODE=offline``);
- ``mlflow``: MLflow's client with asynchronous logging (``MLFLOW_ENABLE_ASYNC_LOGGING=true``
  and ``synchronous=False``) against a local ``mlflow server`` (SQLite store).

(a) SIGKILL: a child logs ``--points`` points of one key (steps 0..N-1, one call per point)
    and SIGKILLs itself with no flush, as the OOM killer would. Then the points stored are
    counted, each tool by its own means:
    - flightlog: first through the collector's REST API alone for ``--collector-wait``
      seconds (does the collector adopt the dead process's ring by itself?); if points are
      missing or the run is still RUNNING, the next flightlog process on the node starts
      (a fresh ``MlflowClient`` reading the run: its agent adopts what dead processes left
      for that collector, and its read waits for that); the run's status is then watched
      until ``--watch`` seconds after the kill. Stored = points that
      ``metrics/get-history`` returns at the end (distinct steps too: exactly once?).
    - MLflow: ``metrics/get-history`` from the server after ``--collector-wait`` seconds of
      watching the run's status.
    - W&B offline: its records sit in the ``wandb-core`` service process, which outlives
      the training process; once that process has exited (at most ``--watch`` seconds),
      the run's ``.wandb`` file is read as W&B's own transaction log (LevelDB log
      framing, every chunk's CRC checked, records parsed with W&B's protobuf ``Record``)
      and the distinct steps of the key's history rows are counted. Offline runs have no
      server-side status: the table gives the time until the service process exited.
(b) Training loop: pure-Python steps calibrated to ``--step-us`` (54) microseconds on this
    interpreter, logging 10 metrics per step (one dict call), for ``--seconds`` without a
    tracker and then ``--seconds`` with it, in one process per round; ``--rounds`` rounds,
    the trackers in turn, each round in another order. Per step: time / steps of a whole
    loop (every stall the tracker causes counts), the best round of each kind, the one
    least disturbed by other jobs; each round's own slowdown (against the same process's
    no-tracker loop) shows the spread. After the loop the tool's durability call runs
    (``flush()``, ``wandb.finish()``; MLflow's ``flush_async_logging()`` is not awaited:
    its backlog drains at the server's speed, minutes) with a 60 s cap.

The machine is shared: the load average is printed at the start and the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_peers import CASES, PEERS, ROOT, Case, _stop_embedded, ensure_venv

from tests.mlflow_server import ServerProcess

# Runs in the tool's virtualenv: argv = tool, points, workdir. Prints the run's id, logs,
# prints when it is about to die, and SIGKILLs itself (no flush, no atexit, no finally).
KILL_CHILD = r"""
import json, os, signal, sys, time
tool, n, work = sys.argv[1], int(sys.argv[2]), sys.argv[3]
if tool == "wandb":
    import wandb
    run = wandb.init(project="bench", dir=work, mode="offline")
    run_id, put = run.id, run.log
    print(json.dumps({"run_id": run_id, "dir": run.dir}), flush=True)
    t0 = time.time()
    for i in range(n):
        put({"m0": i * 0.001}, step=i)
else:
    if tool == "flightlog":
        import flightlog as mlflow
    else:
        import mlflow
    run_id = mlflow.start_run().info.run_id
    log = mlflow.log_metric
    print(json.dumps({"run_id": run_id}), flush=True)
    t0 = time.time()
    if tool == "flightlog":
        for i in range(n):
            log("m0", i * 0.001, step=i)
    else:
        for i in range(n):
            log("m0", i * 0.001, step=i, synchronous=False)
t1 = time.time()
print(json.dumps({"log_s": t1 - t0, "killed_at": t1}), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""

# The next flightlog process on the node: a fresh client reading the dead run (its agent
# adopts what dead processes left for this collector, and a read waits for that).
NEXT_FLIGHTLOG = r"""
import json, sys
import flightlog
client = flightlog.MlflowClient()
points = client.get_metric_history(sys.argv[1], "m0")
status = client.get_run(sys.argv[1]).info.status
print(json.dumps({"points": len(points), "steps": len({m.step for m in points}), "status": status}))
"""

# Runs in the tool's virtualenv: argv = tool, iterations per step, seconds, workdir.
LOOP_CHILD = r"""
import json, os, sys, threading, time
tool, k, seconds, work = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
row = {f"m{j}": 0.5 for j in range(10)}
clock, cpu = time.perf_counter, time.process_time

def step():
    x = 0
    for j in range(k):
        x += j
    return x

def loop(log):
    # Wall time per step, and CPU time of the whole process (every thread) per step: the
    # CPU figure does not count the time other jobs on the machine hold the cores.
    i = 0
    t0, c0 = clock(), cpu()
    end = t0 + seconds
    while True:
        for _ in range(50):
            step()
            if log is not None:
                log(i)
            i += 1
        if clock() >= end:
            return (clock() - t0) / i * 1e6, (cpu() - c0) / i * 1e6, i

if tool == "wandb":
    import wandb
elif tool == "flightlog":
    import flightlog as mlflow
else:
    import mlflow
base_us, base_cpu_us, base_steps = loop(None)
if tool == "wandb":
    run = wandb.init(project="bench", dir=work, mode="offline")
    put = run.log
    log = lambda i: put(row, step=i)
    durable = run.finish
else:
    mlflow.start_run()
    many = mlflow.log_metrics
    if tool == "flightlog":
        log = lambda i: many(row, step=i)
        durable = mlflow.flush
    else:
        log = lambda i: many(row, step=i, synchronous=False)
        durable = None
with_us, with_cpu_us, with_steps = loop(log)
out = {"base_us": base_us, "base_cpu_us": base_cpu_us, "base_steps": base_steps,
       "with_us": with_us, "with_cpu_us": with_cpu_us, "with_steps": with_steps,
       "durable_s": None}
def wait_durable():
    try:
        durable()
        out["durable_s"] = clock() - t0
    except Exception as e:
        out["durable_error"] = repr(e)[:200]
if durable is not None:
    t0 = clock()
    waiter = threading.Thread(target=wait_durable, daemon=True)
    waiter.start()
    waiter.join(60)
print(json.dumps(out), flush=True)
os._exit(0)  # MLflow's backlog would take minutes; nothing after this is measured
"""


@dataclass
class Tracker:
    """One column of the tables: a tool, how its processes are set up, and its peer's venv."""

    key: str
    label: str
    peer: str  # the bench_peers virtualenv its processes run from
    driver: str  # the tool name KILL_CHILD and LOOP_CHILD know
    env: Callable[[Path, str | None], dict[str, str]] = field(default=lambda d, url: {})
    server: Callable[[Path, Path], ServerProcess] | None = None


def _peer_case(name: str) -> Case:
    """A case of bench/bench_peers.py, whose environment and server this bench reuses."""
    return next(c for c in CASES if c.name == name)


def _flightlog_env(ring: str | None) -> Callable[[Path, str | None], dict[str, str]]:
    def env(d: Path, url: str | None) -> dict[str, str]:
        out = {
            "FLIGHTLOG_TRACKING_URI": str(d / "flightlog"),
            "FLIGHTLOG_SPOOL_DIR": str(d / "spool"),
        }
        if ring is not None:
            out["FLIGHTLOG_METRIC_RING"] = ring
        return out

    return env


KEYS = ("flightlog", "flightlog-ring-flip", "wandb", "mlflow")


def make_trackers(ring_default: bool) -> list[Tracker]:
    """The trackers, flightlog's second one with ``FLIGHTLOG_METRIC_RING`` set to the
    opposite of this checkout's default (the ring on while it is opt-in, off once it is the
    default: the in-memory queue it falls back to)."""
    mlflow_async = _peer_case("MLflow, mlflow server, async")
    flip = "0" if ring_default else "1"
    return [
        Tracker(
            "flightlog",
            f"flightlog, default settings (ring {'on' if ring_default else 'off'})",
            "flightlog",
            "flightlog",
            _flightlog_env(None),
        ),
        Tracker(
            "flightlog-ring-flip",
            f"flightlog, FLIGHTLOG_METRIC_RING={flip}",
            "flightlog",
            "flightlog",
            _flightlog_env(flip),
        ),
        Tracker("wandb", "W&B offline", "wandb", "wandb", _peer_case("W&B offline").env),
        Tracker(
            "mlflow",
            "MLflow async, mlflow server",
            "mlflow",
            "mlflow",
            mlflow_async.env,
            mlflow_async.server,
        ),
    ]


def _ring_default(python: Path) -> bool:
    """Whether the metric ring is on by default in the flightlog that ``python`` runs."""
    code = "from flightlog.core.settings import METRIC_RING; print(METRIC_RING.default)"
    return subprocess.check_output([str(python), "-c", code], text=True).strip() == "True"


def _python(cache: Path, tracker: Tracker | str) -> Path:
    """The interpreter a tracker's processes run with.

    flightlog: this interpreter when it imports this checkout (an editable install), which
    spares bench_peers' reinstall of the checkout into its own virtualenv (minutes here).
    """
    peer = tracker if isinstance(tracker, str) else tracker.peer
    if peer == "flightlog" and _runs_this_checkout():
        return Path(sys.executable)
    return PEERS[peer].python(cache)


def _runs_this_checkout() -> bool:
    try:
        import flightlog
    except ImportError:
        return False
    return ROOT in Path(flightlog.__file__).resolve().parents


def _child_env(tracker: Tracker, d: Path, url: str | None) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("FLIGHTLOG_TRACKING_URI", "MLFLOW_TRACKING_URI", "FLIGHTLOG_METRIC_RING")
        and not k.startswith("WANDB_")
    }
    env.update(tracker.env(d, url))
    return env


# -- REST reads (MLflow's API, answered by both mlflow server and flightlog's collector) ----


def _get(url: str, path: str, **params: str) -> dict[str, Any]:
    query = urllib.parse.urlencode(params)
    with urllib.request.urlopen(f"{url}/api/2.0/mlflow/{path}?{query}", timeout=60) as r:
        result: dict[str, Any] = json.loads(r.read())
        return result


def _status(url: str, run_id: str) -> str:
    return str(_get(url, "runs/get", run_id=run_id)["run"]["info"]["status"])


def _history(url: str, run_id: str) -> Iterator[dict[str, Any]]:
    token: str | None = None
    while True:
        extra = {"page_token": token} if token else {}
        page = _get(url, "metrics/get-history", run_id=run_id, metric_key="m0", **extra)
        yield from page.get("metrics", [])
        token = page.get("next_page_token")
        if not token:
            return


def _count(url: str, run_id: str) -> tuple[int, int]:
    """Points stored for the key, and distinct steps among them."""
    points = list(_history(url, run_id))
    return len(points), len({int(p.get("step", 0)) for p in points})


def _watch(url: str, run_id: str, until: float) -> tuple[str, float | None]:
    """Poll the run's status until it leaves RUNNING or the clock passes ``until``."""
    while True:
        status = _status(url, run_id)
        if status != "RUNNING":
            return status, time.time()
        if time.time() >= until:
            return status, None
        time.sleep(0.25)


# -- W&B's transaction log -------------------------------------------------------------------


def count_wandb_points(python: Path, run_dir: Path) -> dict[str, Any]:
    """Read a run's ``.wandb`` file with W&B's own protobuf ``Record`` (in its venv)."""
    done = subprocess.run(
        [str(python), "-c", WANDB_READER, str(run_dir)], capture_output=True, text=True, timeout=300
    )
    if done.returncode != 0:
        raise RuntimeError(f"reading the .wandb file failed: {done.stderr.strip()[-300:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


# The .wandb file: a 7-byte header (":W&B", magic 0xBEE1, version), then LevelDB-log framing
# in 32 KiB blocks: chunks of (crc32 seeded with the chunk type, uint16 length, type 1 full,
# 2 first, 3 middle, 4 last). Reading stops at the first chunk that is cut or fails its CRC.
WANDB_READER = r"""
import glob, json, os, struct, sys, zlib
from wandb.proto import wandb_internal_pb2 as pb
(path,) = glob.glob(os.path.join(sys.argv[1], "*.wandb"))
data = open(path, "rb").read()
if data[:4] != b":W&B":
    raise SystemExit(f"{path}: not a W&B transaction log")
block, pos, part, records, torn = 32768, 7, b"", [], False
seed = {t: zlib.crc32(bytes([t])) for t in (1, 2, 3, 4)}
while pos + 7 <= len(data):
    left = block - pos % block
    if left < 7:
        pos += left
        continue
    crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
    if kind == 0 and length == 0:  # block padding
        pos += left
        continue
    chunk = data[pos + 7:pos + 7 + length]
    if len(chunk) < length or kind not in seed or zlib.crc32(chunk, seed[kind]) != crc:
        torn = True
        break
    pos += 7 + length
    if kind == 1:
        records.append(chunk)
    elif kind == 2:
        part = chunk
    elif kind == 3:
        part += chunk
    else:
        records.append(part + chunk)
        part = b""
steps, rows, has_exit = set(), 0, False
for raw in records:
    r = pb.Record()
    r.ParseFromString(raw)
    kind = r.WhichOneof("record_type")
    has_exit = has_exit or kind == "exit"
    items = r.history.item if kind == "history" else ()
    if any(i.key == "m0" or list(i.nested_key) == ["m0"] for i in items):
        rows += 1
        steps.add(r.history.step.num)
print(json.dumps({"points": rows, "steps": len(steps), "records": len(records),
                  "torn_tail": torn or pos < len(data), "exit_record": has_exit,
                  "bytes": len(data)}))
"""


# -- (a) SIGKILL -----------------------------------------------------------------------------


def sigkill_case(
    tracker: Tracker, cache: Path, d: Path, url: str | None, args: argparse.Namespace
) -> dict[str, Any]:
    """Log ``args.points`` points, SIGKILL, count what was stored; the figures or an error."""
    python = _python(cache, tracker)
    env = _child_env(tracker, d, url)
    with (d / "kill-child.log").open("w") as errors:
        proc = subprocess.Popen(
            [str(python), "-c", KILL_CHILD, tracker.driver, str(args.points), str(d)],
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
            env=env,
            cwd=d,
        )
        assert proc.stdout is not None
        first = proc.stdout.readline()
        # The processes the tool started beside the trainer (W&B's service), seen alive.
        helpers = [p for p in psutil.Process(proc.pid).children(recursive=True)]
        rest, _ = proc.communicate(timeout=args.points / 100 + 600)
    lines = [json.loads(x) for x in (first + rest).splitlines() if x.startswith("{")]
    if proc.returncode != -signal.SIGKILL or len(lines) < 2:
        tail = (d / "kill-child.log").read_text().strip().splitlines()[-1:] or ["?"]
        return {
            "error": f"the child did not log and die by SIGKILL (exit {proc.returncode}): "
            + tail[0][:200]
        }
    run_id, killed_at = lines[0]["run_id"], lines[1]["killed_at"]
    r: dict[str, Any] = {"log_s": lines[1]["log_s"], "run_id": run_id}
    if tracker.driver == "wandb":
        _, alive = psutil.wait_procs(helpers, timeout=args.watch)
        r["helpers_exited_s"] = None if alive or not helpers else time.time() - killed_at
        for p in alive:  # a service still running after the watch: stop it, say so
            p.kill()
        r.update(count_wandb_points(python, Path(lines[0]["dir"]).parent))
        r["counted_by"] = "the run's .wandb file, read after the wandb-core service exited"
        return r
    if tracker.driver == "mlflow":
        assert url is not None
        status, ended = _watch(url, run_id, killed_at + args.collector_wait)
        r["points"], r["steps"] = _count(url, run_id)
        r.update(status=status, ended_s=None if ended is None else ended - killed_at)
        r["watched_s"] = time.time() - killed_at
        r["counted_by"] = "mlflow server, metrics/get-history"
        return r
    store = d / "flightlog"
    info = json.loads((store / "collector.json").read_text())
    collector = f"http://{info['host']}:{int(info['port'])}"
    status, ended = _watch(collector, run_id, killed_at + args.collector_wait)
    r["by_collector"], _ = _count(collector, run_id)
    # Who could have ended it: the collector alone, or (later) anything, the next process
    # or the collector's run timeout among them.
    r["ended_by"] = "with the collector alone" if ended is not None else None
    if r["by_collector"] < args.points or ended is None:
        r["next_started_s"] = time.time() - killed_at
        done = subprocess.run(
            [str(python), "-c", NEXT_FLIGHTLOG, run_id],
            capture_output=True,
            text=True,
            env=env,
            cwd=d,
            timeout=300,
        )
        if done.returncode != 0:
            return {"error": f"the next process failed: {done.stderr.strip()[-300:]}"}
        r["by_next"] = json.loads(done.stdout.strip().splitlines()[-1])["points"]
        if ended is None:
            status, ended = _watch(collector, run_id, killed_at + args.watch)
            r["ended_by"] = "after the next process started" if ended is not None else None
    r["points"], r["steps"] = _count(collector, run_id)
    r.update(status=status, ended_s=None if ended is None else ended - killed_at)
    r["watched_s"] = time.time() - killed_at
    r["counted_by"] = "collector REST metrics/get-history"
    return r


# -- (b) the training loop ------------------------------------------------------------------


def _busy_step(k: int) -> int:
    """The loop's pure-Python step (LOOP_CHILD has the same body)."""
    x = 0
    for j in range(k):
        x += j
    return x


def calibrate(step_us: float) -> int:
    """Iterations of the busy step that take ``step_us`` on this interpreter (every peer's
    virtualenv is made from it): the best of 60 short trials, so that other jobs on the
    machine, which stretch some trials, do not shorten the step."""
    k = 1000
    for _ in range(3):  # the cost per iteration is nearly constant: two refinements suffice
        best = float("inf")
        for _ in range(60):
            t0 = time.perf_counter()
            for _ in range(100):
                _busy_step(k)
            best = min(best, (time.perf_counter() - t0) / 100)
        k = max(1, round(k * step_us / (best * 1e6)))
    return k


def loop_case(
    tracker: Tracker, cache: Path, d: Path, url: str | None, k: int, args: argparse.Namespace
) -> dict[str, Any]:
    """The 10-metric loop without and with the tracker in one process; its figures."""
    env = _child_env(tracker, d, url)
    cmd = [str(_python(cache, tracker)), "-c", LOOP_CHILD, tracker.driver, str(k)]
    done = subprocess.run(
        [*cmd, str(args.seconds), str(d)],
        capture_output=True,
        text=True,
        env=env,
        cwd=d,
        timeout=2 * args.seconds + 300,
    )
    if done.returncode != 0:
        tail = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:] or ["?"]
        return {"error": f"exit {done.returncode}: {tail[0][:200]}"}
    r: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    r["slowdown"] = r["with_us"] / r["base_us"] - 1
    r["cpu_slowdown"] = r["with_cpu_us"] / r["base_cpu_us"] - 1
    r["awaited"] = tracker.driver != "mlflow"
    return r


# -- the run ---------------------------------------------------------------------------------


def _kill_cells(tracker: Tracker, r: dict[str, Any], n: int) -> list[str]:
    if "error" in r:
        return [r["error"], "", ""]
    stored = f"{r['points']:,} ({r['points'] / n:.2%})"
    if r["steps"] != r["points"]:
        stored += f", {r['steps']:,} distinct steps"
    how = r["counted_by"]
    if tracker.driver == "flightlog":
        wait = r["collector_wait"]
        how += f"; by the collector alone {wait:.0f} s after the kill: {r['by_collector']:,}"
        if "by_next" in r:
            how += (
                f"; then the next process (started {r['next_started_s']:.1f} s after the kill; "
                f"its first read showed {r['by_next']:,})"
            )
    if tracker.driver == "wandb":
        how += (
            f" ({r['records']:,} records, exit record: {'yes' if r['exit_record'] else 'no'}"
            f"{', torn tail' if r['torn_tail'] else ''})"
        )
        ended = (
            f"n/a offline; wandb-core exited {r['helpers_exited_s']:.1f} s after the kill"
            if r["helpers_exited_s"] is not None
            else "n/a offline; wandb-core still running at the end of the watch"
        )
    elif r["ended_s"] is not None:
        ended = f"{r['status']} {r['ended_s']:.1f} s after the kill"
        if r.get("ended_by"):
            ended += f" ({r['ended_by']})"
    else:
        ended = f"still RUNNING {r['watched_s']:.0f} s after the kill"
    return [stored, ended, how]


def _loop_summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The best round of each kind (least disturbed by the machine's other jobs), and every
    round's own slowdown (a failed round's error if none ran)."""
    ok = [r for r in rounds if "error" not in r]
    if not ok:
        return rounds[-1] if rounds else {"error": "not run"}
    durable = [r["durable_s"] for r in ok if r.get("durable_s") is not None]
    base, with_it = min(r["base_us"] for r in ok), min(r["with_us"] for r in ok)
    base_cpu, with_cpu = min(r["base_cpu_us"] for r in ok), min(r["with_cpu_us"] for r in ok)
    return {
        "base_us": base,
        "with_us": with_it,
        "slowdown": with_it / base - 1,
        "slowdowns": [r["slowdown"] for r in ok],
        "base_cpu_us": base_cpu,
        "with_cpu_us": with_cpu,
        "cpu_slowdown": with_cpu / base_cpu - 1,
        "durable_s": max(durable) if durable else None,
        "durable_error": next((r["durable_error"] for r in ok if "durable_error" in r), None),
        "awaited": ok[0]["awaited"],
    }


def _loop_cells(r: dict[str, Any]) -> list[str]:
    if "error" in r:
        return [r["error"], "", "", "", "", ""]
    if r["durable_s"] is not None:
        durable = f"{r['durable_s']:.2f} s"
    elif r.get("durable_error"):
        durable = f"failed: {r['durable_error']}"
    else:
        durable = "not awaited" if not r["awaited"] else "not within 60 s"
    return [
        f"{r['base_us']:.1f} us",
        f"{r['with_us']:.1f} us ({r['with_us'] - r['base_us']:+.1f})",
        f"{r['slowdown']:+.1%}",
        ", ".join(f"{x:+.0%}" for x in r.get("slowdowns", [r["slowdown"]])),
        f"{r['base_cpu_us']:.1f} -> {r['with_cpu_us']:.1f} us ({r['cpu_slowdown']:+.1%})",
        durable,
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "flightlog-bench")
    p.add_argument("--only", default="", help="comma-separated: " + ",".join(KEYS))
    p.add_argument("--points", type=int, default=100_000, help="points logged before the SIGKILL")
    p.add_argument(
        "--seconds", type=float, default=2.0, help="loop time, without and with a tracker"
    )
    p.add_argument("--rounds", type=int, default=3, help="loop rounds (trackers in turn; medians)")
    p.add_argument("--step-us", type=float, default=54.0, help="the loop's step, microseconds")
    p.add_argument(
        "--collector-wait", type=float, default=10.0, help="seconds the server alone gets"
    )
    p.add_argument("--watch", type=float, default=20.0, help="seconds a killed run is watched")
    p.add_argument("--skip", default="", help="'kill' or 'loop': leave that part out")
    p.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = p.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    only = {x for x in args.only.split(",") if x}
    if only - set(KEYS):
        p.error(f"--only: unknown {', '.join(sorted(only - set(KEYS)))} (known: {', '.join(KEYS)})")
    started = time.time()
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    peers = {"flightlog" if k.startswith("flightlog") else k for k in (only or KEYS)}
    for peer in sorted(peers):
        if peer == "flightlog" and _runs_this_checkout():
            continue  # this interpreter runs this checkout
        ensure_venv(args.cache, PEERS[peer])
        if PEERS[peer].why_not:
            print(f"{peer}: not measured: {PEERS[peer].why_not}", flush=True)
    ring = not PEERS["flightlog"].why_not and _ring_default(_python(args.cache, "flightlog"))
    trackers = [t for t in make_trackers(ring) if not only or t.key in only]
    k = calibrate(args.step_us)
    print(f"busy step: {k} loop iterations = {args.step_us:.0f} us on this interpreter", flush=True)
    kills: dict[str, dict[str, Any]] = {}
    loops: dict[str, list[dict[str, Any]]] = {t.key: [] for t in trackers}
    with contextlib.ExitStack() as stack:
        places: dict[str, tuple[Path, str | None]] = {}  # a workspace and server per tracker
        for t in trackers:
            why_not = PEERS[t.peer].why_not
            if why_not:
                kills[t.key] = {"error": f"not measured: {why_not}"}
                loops[t.key].append(kills[t.key])
                continue
            d = Path(
                stack.enter_context(
                    tempfile.TemporaryDirectory(prefix="kill-peer-", dir=args.cache)
                )
            )
            try:
                server = t.server(args.cache, d) if t.server is not None else None
            except Exception as e:  # a server that would not start: say why, go on
                why = f"{type(e).__name__}: {str(e).strip().splitlines()[-1][:200]}"
                kills[t.key] = {"error": f"not measured: {why}"}
                loops[t.key].append(kills[t.key])
                print(f"{t.label}: not measured: {why}", flush=True)
                continue
            if server is not None:
                stack.callback(server.stop)
            places[t.key] = (d, server.url if server else None)

        def one(t: Tracker, part: str, sub: Path) -> dict[str, Any]:
            sub.mkdir()
            url = places[t.key][1]
            try:
                if part == "loop":
                    return loop_case(t, args.cache, sub, url, k, args)
                return {
                    **sigkill_case(t, args.cache, sub, url, args),
                    "collector_wait": args.collector_wait,
                }
            except Exception as e:  # one tool's failure is reported; the others go on
                return {"error": f"{type(e).__name__}: {str(e).strip()[-200:]}"}
            finally:
                if t.peer == "flightlog":
                    _stop_embedded(sub / "flightlog")

        ready = [t for t in trackers if t.key in places]
        for n in range(args.rounds if args.skip != "loop" else 0):
            # Each round in another order, so that no tracker always follows the same one.
            for t in ready[n % len(ready) :] + ready[: n % len(ready)] if ready else []:
                r = one(t, "loop", places[t.key][0] / f"loop-{n}")
                loops[t.key].append(r)
                print(f"{t.label}, loop round {n + 1}: {' | '.join(_loop_cells(r))}", flush=True)
        for t in ready if args.skip != "kill" else []:
            r = kills[t.key] = one(t, "kill", places[t.key][0] / "kill")
            print(
                f"{t.label}, SIGKILL: {' | '.join(c for c in _kill_cells(t, r, args.points) if c)}",
                flush=True,
            )
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"load average at end: {load}; {time.time() - started:.0f} s in all\n")
    if args.skip != "kill":
        print(f"(a) SIGKILL right after {args.points:,} log calls of one key (no flush)\n")
        print("| tracker | points stored | run no longer RUNNING | how counted |")
        print("|---|---:|---|---|")
        for t in trackers:
            print(f"| {t.label} | {' | '.join(_kill_cells(t, kills[t.key], args.points))} |")
        print()
    summary = {key: _loop_summary(rounds) for key, rounds in loops.items()}
    if args.skip != "loop":
        print(
            f"(b) {args.step_us:.0f} us pure-Python steps, 10 metrics per step (one call), "
            f"{args.seconds:.0f} s without then {args.seconds:.0f} s with the tracker in one "
            f"process, {args.rounds} rounds; per step: the best round of each\n"
        )
        print(
            "| tracker | per step, no tracker | per step, with it | slowdown | each round's "
            "slowdown | process CPU per step, without -> with | durable after the loop |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|")
        for t in trackers:
            print(f"| {t.label} | {' | '.join(_loop_cells(summary[t.key]))} |")
    if args.json:
        print(json.dumps({"kill": kills, "loop": loops, "step_iterations": k}))


if __name__ == "__main__":
    main()

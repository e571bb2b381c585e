"""The same training loop through flightlog and its peers, each in its own virtualenv and process.

    python bench/bench_peers.py [--seconds 8] [--only flightlog,wandb] [--cache DIR]

The loop logs 1 metric per step (``log_metric``) and 10 metrics per step (one
``log_metrics``/dict call per step) for at most ``--steps`` steps or ``--seconds`` of
logging, whichever comes first (slow peers stop on the clock; the table says how many
steps each did). Each case is a fresh process in a fresh directory, started from the
peer's own virtualenv under ``--cache`` (default ~/.cache/flightlog-bench/), which this
script creates and fills with pip from PyPI on first use. A peer that cannot be
installed or started here is reported with the reason, and the others go on.

Cases:
- flightlog: the embedded default (a local store served by the node-local collector).
- MLflow, local store: ``file:`` (the FileStore) and ``sqlite:///`` (SQLAlchemy store).
- MLflow through ``mlflow server`` (SQLite backend, its GenAI job runner off), synchronous
  logging, and asynchronous logging (``MLFLOW_ENABLE_ASYNC_LOGGING``; durable after
  ``flush_async_logging``; capped at 4,000 steps, as its backlog drains at server speed).
- W&B offline (``WANDB_MODE=offline``; durable when ``wandb.finish`` returns).
- Aim (a local repo; durable when ``Run.close`` returns).
- FastTrackML (``fml server``, SQLite) through MLflow's client, synchronous.

Figures per case: the logging call's mean cost (logging time / calls, measured from the
first call, after imports and run creation), and end-to-end points per second until
durable: points / (time from the first call until the durability call returned). What
"durable" means is each tool's own promise, listed above: for flightlog and MLflow's
server and local stores it is committed by the store; for W&B offline and Aim it is
written to local files.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.mlflow_server import (  # noqa: E402
    QUIET_MLFLOW_ENV,
    ServerProcess,
    start_fasttrackml,
    start_mlflow_server,
)

# Runs in the peer's own virtualenv: argv = peer, n_metrics, max_steps, max_seconds, workdir.
DRIVER = r"""
import json, os, sys, time
peer, work = sys.argv[1], sys.argv[5]
n, max_steps, max_s = int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
keys = [f"m{k}" for k in range(n)]
row = {k: 0.5 for k in keys}
if peer == "flightlog":
    import flightlog as mlflow
    mlflow.set_tracking_uri(os.path.join(work, "flightlog"))
elif peer in ("mlflow", "fasttrackml"):
    import mlflow
if peer in ("flightlog", "mlflow", "fasttrackml"):
    mlflow.start_run()
    one, many = mlflow.log_metric, mlflow.log_metrics
    def durable():
        if peer == "flightlog":
            mlflow.flush()
        elif os.environ.get("MLFLOW_ENABLE_ASYNC_LOGGING") == "true":
            mlflow.flush_async_logging()
        mlflow.end_run()
    log = (lambda i: one("m0", i * 0.001, step=i)) if n == 1 else (lambda i: many(row, step=i))
elif peer == "wandb":
    import wandb
    run = wandb.init(project="bench", dir=work, mode="offline")
    put = run.log
    log = (lambda i: put({"m0": i * 0.001}, step=i)) if n == 1 else (lambda i: put(row, step=i))
    durable = run.finish
elif peer == "aim":
    from aim import Run
    run = Run(repo=work, experiment="bench")
    track = run.track
    log = (lambda i: track(i * 0.001, name="m0", step=i)) if n == 1 else (
        lambda i: track(row, step=i))
    durable = run.close
else:
    raise SystemExit(f"unknown peer {peer}")
clock = time.perf_counter
t0 = clock()
end = t0 + max_s
steps = 0
block = 1000 if peer == "flightlog" else 10
while steps < max_steps and clock() < end:
    for i in range(steps, min(steps + block, max_steps)):
        log(i)
    steps = min(steps + block, max_steps)
t_log = clock() - t0
print(json.dumps({"steps": steps, "log_s": t_log}), flush=True)  # in case durable() hangs
durable()
t_durable = clock() - t0
print(json.dumps({"steps": steps, "points": steps * n, "log_s": t_log, "durable_s": t_durable}))
"""


@dataclass
class Peer:
    """A peer's virtualenv: what it installs, and the name the driver knows it by."""

    venv: str
    requirements: list[str]
    driver: str
    why_not: str | None = None  # set when it could not be installed

    def python(self, cache: Path) -> Path:
        return cache / self.venv / "bin" / "python"


MLFLOW_SERVER_REQUIREMENTS = [
    # As in the dev extra: the server's code without the UI bundle and ML libraries.
    "mlflow-skinny>=3.0",
    "flask",
    "flask-cors",
    "sqlalchemy>=2",
    "alembic",
    "graphene>=3",
    "huey",
    # The server's job runner imports MLflow's GenAI modules, which need these.
    "pandas",
    "aiohttp",
]
PEERS = {
    "flightlog": Peer("flightlog", [str(ROOT)], "flightlog"),
    "mlflow": Peer("mlflow", MLFLOW_SERVER_REQUIREMENTS, "mlflow"),
    "wandb": Peer("wandb", ["wandb"], "wandb"),
    "aim": Peer("aim", ["aim"], "aim"),
    "fasttrackml": Peer("fasttrackml", ["fasttrackml", "mlflow-skinny>=3.0"], "fasttrackml"),
}


@dataclass
class Case:
    """One configuration of one peer: its environment and the server it needs, if any."""

    name: str
    peer: str
    env: Callable[[Path, str | None], dict[str, str]] = field(default=lambda d, url: {})
    server: Callable[[Path, Path], ServerProcess] | None = None
    # A step cap of its own (1 metric; a tenth for 10), for a case whose backlog would
    # otherwise take many minutes to become durable.
    max_steps: int | None = None


def _mlflow_env(uri: Callable[[Path, str | None], str], asynchronous: bool = False) -> Any:
    return lambda d, url: {
        **QUIET_MLFLOW_ENV,
        # MLflow 3 refuses its FileStore ("maintenance mode") unless this is set.
        "MLFLOW_ALLOW_FILE_STORE": "true",
        "MLFLOW_TRACKING_URI": uri(d, url),
        "MLFLOW_ENABLE_ASYNC_LOGGING": "true" if asynchronous else "false",
    }


def _mlflow_server(cache: Path, d: Path) -> ServerProcess:
    return start_mlflow_server(d / "server", python=str(PEERS["mlflow"].python(cache)))


def _fml_server(cache: Path, d: Path) -> ServerProcess:
    return start_fasttrackml(str(cache / "fasttrackml" / "bin" / "fml"), d / "server")


CASES = [
    Case("flightlog (embedded local store)", "flightlog"),
    Case("MLflow, local file store", "mlflow", _mlflow_env(lambda d, u: (d / "mlruns").as_uri())),
    Case("MLflow, local sqlite store", "mlflow", _mlflow_env(lambda d, u: f"sqlite:///{d}/m.db")),
    Case(
        "MLflow, mlflow server, sync",
        "mlflow",
        _mlflow_env(lambda d, u: str(u)),
        _mlflow_server,
    ),
    Case(
        "MLflow, mlflow server, async",
        "mlflow",
        _mlflow_env(lambda d, u: str(u), asynchronous=True),
        _mlflow_server,
        # 8 s of async logging queued 20,570 calls that were not durable 4 minutes later.
        max_steps=4000,
    ),
    Case("W&B offline", "wandb", lambda d, u: {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}),
    Case("Aim (local repo)", "aim"),
    Case(
        "FastTrackML (fml server), MLflow client sync",
        "fasttrackml",
        _mlflow_env(lambda d, u: str(u)),
        _fml_server,
    ),
]


def ensure_venv(cache: Path, peer: Peer) -> None:
    """Create the peer's virtualenv and pip install its requirements (once)."""
    venv = cache / peer.venv
    marker = venv / ".flightlog-bench-installed"
    wanted = "\n".join(peer.requirements)
    if peer.venv == "flightlog" or not (marker.exists() and marker.read_text() == wanted):
        if not peer.python(cache).exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        print(f"installing {peer.venv}: pip install {' '.join(peer.requirements)}", flush=True)
        # flightlog is reinstalled every time: the bench measures this checkout.
        pip = [str(peer.python(cache)), "-m", "pip", "install", "-q", *peer.requirements]
        done = subprocess.run(pip, capture_output=True, text=True)
        if done.returncode != 0:
            peer.why_not = "pip install failed: " + done.stderr.strip().splitlines()[-1]
            return
        marker.write_text(wanted)


def run_case(case: Case, cache: Path, n: int, steps: int, seconds: float) -> dict[str, Any]:
    """One case in a fresh directory and process; its figures, or why there are none."""
    peer = PEERS[case.peer]
    if peer.why_not:
        return {"error": peer.why_not}
    with tempfile.TemporaryDirectory(prefix="peer-", dir=cache) as tmp:
        d = Path(tmp)
        server = None
        try:
            if case.server is not None:
                server = case.server(cache, d)
            env = {
                k: v
                for k, v in os.environ.items()
                if k not in ("FLIGHTLOG_TRACKING_URI", "MLFLOW_TRACKING_URI")
            }
            env.update(case.env(d, server.url if server else None))
            cmd = [str(peer.python(cache)), "-c", DRIVER, peer.driver, str(n), str(steps)]
            done = subprocess.run(
                [*cmd, str(seconds), str(d)],
                capture_output=True,
                text=True,
                env=env,
                cwd=d,
                timeout=seconds + 120,
            )
        except subprocess.TimeoutExpired as e:
            out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
            logged = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
            why = f"not durable {seconds + 120:.0f} s after the first call"
            if not logged:
                return {"error": why}
            per_call = logged[0]["log_s"] / max(logged[0]["steps"], 1) * 1e6
            return {"error": why, "per_call_us": per_call, "steps": logged[0]["steps"]}
        except Exception as e:  # a server that would not start: say why, go on
            return {"error": f"{type(e).__name__}: {str(e).strip().splitlines()[-1][:200]}"}
        finally:
            if server is not None:
                server.stop()
            if case.peer == "flightlog":
                _stop_embedded(d / "flightlog")
        if done.returncode != 0:
            tail = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:] or ["?"]
            return {"error": f"exit {done.returncode}: {tail[0][:200]}"}
        r: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        r["per_call_us"] = r["log_s"] / r["steps"] * 1e6
        r["load"] = os.getloadavg()[0]  # the machine is shared: say how busy it was
        r["points_per_s"] = r["points"] / r["durable_s"]
        return r


def _stop_embedded(store: Path) -> None:
    """Stop the node-local collector the flightlog case started (it would idle for 10 min)."""
    try:
        info = json.loads((store / "collector.json").read_text())
        os.kill(int(info["pid"]), 15)
    except (OSError, ValueError, KeyError):
        pass


def _cell(r: dict[str, Any]) -> tuple[str, str]:
    if "error" in r:
        call = f"{r['per_call_us']:,.1f} us" if "per_call_us" in r else "n/a"
        steps = f" ({r['steps']:,} steps logged)" if "steps" in r else ""
        return (call, r["error"] + steps)
    return (
        f"{r['per_call_us']:,.1f} us",
        f"{r['points_per_s']:,.0f} ({r['steps']:,} steps, durable {r['durable_s']:.1f} s, "
        f"load {r['load']:.0f})",
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "flightlog-bench")
    p.add_argument("--seconds", type=float, default=8.0, help="logging time cap per case")
    p.add_argument("--steps", type=int, default=1_000_000, help="step cap per case (1 metric)")
    p.add_argument("--only", default="", help="comma-separated peers (flightlog,mlflow,...)")
    p.add_argument("--case", default="", help="only the cases whose name contains this")
    p.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = p.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    only = {x for x in args.only.split(",") if x}
    cases = [c for c in CASES if (not only or c.peer in only) and args.case in c.name]
    for name in sorted({c.peer for c in cases}):
        ensure_venv(args.cache, PEERS[name])
        if PEERS[name].why_not:
            print(f"{name}: not measured: {PEERS[name].why_not}", flush=True)
    results: dict[str, dict[int, dict[str, Any]]] = {}
    for case in cases:
        for n in (1, 10):
            cap = min(args.steps, case.max_steps or args.steps)
            steps = cap if n == 1 else cap // 10
            r = run_case(case, args.cache, n, steps, args.seconds)
            results.setdefault(case.name, {})[n] = r
            print(f"{case.name}, {n} metric(s)/step: {' / '.join(_cell(r))}", flush=True)
    print()
    print(
        "| case | per call, 1 metric | points/s durable, 1 metric | per call, 10 metrics |"
        " points/s durable, 10 metrics |"
    )
    print("|---|---|---|---|---|")
    for name, by_n in results.items():
        c1, c10 = _cell(by_n[1]), _cell(by_n[10])
        print(f"| {name} | {c1[0]} | {c1[1]} | {c10[0]} | {c10[1]} |")
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()

"""multiprocessing children that log and never call flush() lose nothing.

A child started with the fork context (``Process``, ``Pool`` workers) ends through
``os._exit()``, so no atexit handler runs; the agent registers a multiprocessing
finalizer in each forked child that delivers what it logged. Children started with
the spawn context are fresh interpreters that exit normally (atexit delivers; they
read the tracking URI from the environment like any new process). Each
case runs in a real process against a real collector.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import CollectorProcess
from tests.helpers import run_script, run_status, stored_points
from tests.test_reliability import wait_until

N = 1000
SCRIPT = """
import multiprocessing as mp
import sys

import flightlog as mlflow

N = {n}


def child_fluent(i):
    # fork only: the child inherits the parent's active run.
    for s in range(N):
        mlflow.log_metric(f"child{{i}}", float(s), step=s)
    return i


def child_client(args):
    run_id, i = args
    client = mlflow.MlflowClient()
    for s in range(N):
        client.log_metric(run_id, f"child{{i}}", float(s), step=s)
    return i


if __name__ == "__main__":
    method, kind = sys.argv[1], sys.argv[2]
    mlflow.set_tracking_uri("{url}")
    ctx = mp.get_context(method)
    with mlflow.start_run() as run:
        print("run", run.info.run_id, flush=True)
        if method == "fork":
            target, args = child_fluent, list(range(4))
        else:
            target, args = child_client, [(run.info.run_id, i) for i in range(4)]
        if kind == "process":
            procs = [ctx.Process(target=target, args=(a,)) for a in args]
            for p in procs:
                p.start()
            for p in procs:
                p.join()
            assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
        elif kind == "pool":
            with ctx.Pool(2) as pool:
                assert pool.map(target, args) == [0, 1, 2, 3]
                pool.close()  # workers exit on their own: their exit delivers
                pool.join()
        else:  # leaving the with block terminates the workers (SIGTERM)
            with ctx.Pool(2) as pool:
                assert pool.map(target, args) == [0, 1, 2, 3]
"""


@pytest.mark.parametrize(
    ("method", "kind"),
    [
        ("fork", "process"),
        ("fork", "pool"),
        # Forked workers inherit the SDK's SIGTERM handler, which flushes; a worker that
        # gets the signal just before it blocks on the pool's queue lock is woken by the
        # watchdog of flightlog.agent.signals.
        ("fork", "pool-terminate"),
        ("spawn", "process"),
        ("spawn", "pool"),
    ],
)
def test_children_that_never_flush_lose_nothing(
    collector: CollectorProcess, tmp_path: Path, method: str, kind: str
) -> None:
    code = SCRIPT.format(n=N, url=collector.url)
    d = tmp_path / "scripts"
    d.mkdir(exist_ok=True)
    script = d / "mp_children.py"
    script.write_text(code)
    proc = run_script(
        tmp_path,
        f"import runpy, sys\nsys.argv = ['mp', {method!r}, {kind!r}]\n"
        f"runpy.run_path({str(script)!r}, run_name='__main__')\n",
        # A spawned child is a fresh interpreter: it finds the collector through the
        # environment, not through the parent's set_tracking_uri().
        env={"FLIGHTLOG_TRACKING_URI": collector.url},
        timeout=180,
    )
    run_id = proc.stdout.split("run ", 1)[1].split()[0]

    def stored() -> list[int]:
        return [stored_points(collector.db, run_id, f"child{i}") for i in range(4)]

    if kind == "pool-terminate":
        # A terminated worker's handler delivers what it logged; one whose handler could
        # not (the signal interrupted it holding a lock the delivery needs) leaves its
        # metric ring, which the node's collector adopts within a second or so.
        wait_until(lambda: stored() == [N] * 4, 15, "every worker's points")
    assert stored() == [N] * 4
    assert run_status(collector.db, run_id) == "FINISHED"


STUCK = """
import multiprocessing as mp, os, signal, sys, threading, time
import flightlog as mlflow

mlflow.set_tracking_uri("{url}")
with mlflow.start_run() as run:
    print("run", run.info.run_id, flush=True)
    sem = mp.get_context("fork").Semaphore(0)  # nobody ever releases it
    pid = os.fork()
    if pid == 0:
        for s in range({n}):
            mlflow.log_metric("child", float(s), step=s)
        # The SIGTERM is caught by Python's C-level handler on another thread, so the
        # main thread, blocked on the semaphore (as a Pool worker on its queue's lock),
        # is not interrupted: the state a SIGTERM that lands just before the wait leaves.
        def trip():
            time.sleep(0.3)
            signal.pthread_kill(threading.get_ident(), signal.SIGTERM)
        threading.Thread(target=trip).start()
        sem.acquire()
        os._exit(3)  # not reached: the handler ends the process (SIGTERM)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            print("child", os.waitstatus_to_exitcode(status), flush=True)
            break
        time.sleep(0.05)
    else:
        os.kill(pid, signal.SIGKILL)
        print("child stuck", flush=True)
"""


def test_a_forked_child_blocked_when_its_sigterm_came_still_ends(
    collector: CollectorProcess, tmp_path: Path
) -> None:
    """The watchdog of ``flightlog.agent.signals`` wakes the main thread of a forked child
    whose SIGTERM was caught while it blocked in a wait no signal of its own interrupts;
    the handler then delivers what the child logged and the child dies of SIGTERM."""
    proc = run_script(tmp_path, STUCK.format(url=collector.url, n=N), timeout=120)
    assert "child -15" in proc.stdout, proc.stdout + proc.stderr
    run_id = proc.stdout.split("run ", 1)[1].split()[0]
    assert stored_points(collector.db, run_id, "child") == N


STUCK_SPAWNED = """
import multiprocessing as mp, os, signal, sys, threading, time
import flightlog as mlflow


def worker(sem, n):
    # A spawned worker that logs into a run of its own (as a Pool task would), then
    # blocks on a semaphore with its SIGTERM already caught by the C-level handler.
    with mlflow.start_run() as run:
        print("run", run.info.run_id, flush=True)
        for s in range(n):
            mlflow.log_metric("child", float(s), step=s)

        def trip():
            # Delivered to this thread, not the main one: the main thread's wait is not
            # interrupted, as when the signal lands just before it blocks.
            time.sleep(0.3)
            signal.pthread_kill(threading.get_ident(), signal.SIGTERM)

        threading.Thread(target=trip).start()
        sem.acquire()
    os._exit(3)  # not reached: the handler ends the process (SIGTERM)


if __name__ == "__main__":
    ctx = mp.get_context("spawn")
    sem = ctx.Semaphore(0)  # nobody ever releases it
    p = ctx.Process(target=worker, args=(sem, {n}))
    p.start()
    p.join(60)
    if p.exitcode is None:
        p.kill()
        print("child stuck", flush=True)
    else:
        print("child", p.exitcode, flush=True)
"""


def test_a_spawned_child_blocked_when_its_sigterm_came_still_ends(
    collector: CollectorProcess, tmp_path: Path
) -> None:
    """The same watchdog in a spawned child: it is set up when the child's first run
    installs the handlers (a spawned Pool worker that logs is such a child)."""
    d = tmp_path / "scripts"
    d.mkdir(exist_ok=True)
    script = d / "stuck_spawned.py"
    script.write_text(STUCK_SPAWNED.format(n=N))
    proc = run_script(
        tmp_path,
        f"import runpy\nrunpy.run_path({str(script)!r}, run_name='__main__')\n",
        env={"FLIGHTLOG_TRACKING_URI": collector.url},
        timeout=120,
    )
    assert "child -15" in proc.stdout, proc.stdout + proc.stderr
    run_id = proc.stdout.split("run ", 1)[1].split()[0]
    wait_until(lambda: stored_points(collector.db, run_id, "child") == N, 15, "the points")
    assert run_status(collector.db, run_id) == "KILLED"

"""A signal that lands while the program holds a lock the SDK's handler needs.

The SIGTERM handler runs on the main thread between two bytecodes of whatever it
interrupted. It once ended the runs and closed the agents right there, so a signal
that landed inside ``Event.set()`` of the agent (a ``flush()`` or the ``close()`` of
a forked Pool worker's exit, when ``Pool.terminate()`` signals it) waited for the
Event's lock held by the frame it interrupted: the process never died, and
``Pool.terminate()`` in the parent waited for it for ever. Each case runs in a real
process against a real collector; before the fix each one hung until its timeout.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import pytest

from flightlog.agent.transport import CollectorClient
from flightlog.agent.worker import Agent
from tests.conftest import CollectorProcess
from tests.helpers import run_script, run_status, stored_points

# The handler waits for its helper for the flush timeout and a second more.
ENV = {"FLIGHTLOG_SIGNAL_FLUSH_TIMEOUT": "1"}
HUNG = 60  # seconds: far past that wait; reaching it means the handler hung

LOCKED_SIGTERM = """
import os, signal, sys
import flightlog as mlflow
mlflow.set_tracking_uri("{url}")
{prelude}
run = mlflow.start_run()
print("run", run.info.run_id, flush=True)
mlflow.log_metric("loss", 0.5, step=0)
mlflow.flush()
agent = run._client.ctx.agent
# Hold the lock inside the agent's wake Event, as a frame interrupted in Event.set()
# does: ending the run (its flush) needs that lock. The handler runs before the
# next line.
with agent._wake._cond:
    os.kill(os.getpid(), signal.SIGTERM)
    print("after the signal", flush=True)
print("went on", flush=True)
"""


def test_sigterm_while_the_main_thread_holds_an_agent_lock_still_kills(
    tmp_path: Path, collector: CollectorProcess
) -> None:
    t0 = time.monotonic()
    proc = run_script(
        tmp_path,
        LOCKED_SIGTERM.format(url=collector.url, prelude=""),
        env=ENV,
        timeout=HUNG,
        check=False,
    )
    elapsed = time.monotonic() - t0
    assert proc.returncode == -signal.SIGTERM, (proc.returncode, proc.stderr)
    assert "after the signal" not in proc.stdout
    # It says why the run could not be ended, and what became of the data.
    assert "did not finish within 2s" in proc.stderr, proc.stderr
    run_id = proc.stdout.split("run ", 1)[1].split()[0]
    assert stored_points(collector.db, run_id, "loss") == 1  # flushed before the signal
    assert elapsed < HUNG


def test_sigterm_while_the_main_thread_holds_an_agent_lock_runs_the_programs_handler(
    tmp_path: Path, collector: CollectorProcess
) -> None:
    marker = tmp_path / "handler-ran"
    prelude = f"""
def on_term(signum, frame):
    open({str(marker)!r}, "w").write(str(signum))
    sys.exit(3)
signal.signal(signal.SIGTERM, on_term)
"""
    proc = run_script(
        tmp_path,
        LOCKED_SIGTERM.format(url=collector.url, prelude=prelude),
        env=ENV,
        timeout=HUNG,
        check=False,
    )
    assert proc.returncode == 3, (proc.returncode, proc.stderr)
    assert marker.read_text() == str(int(signal.SIGTERM))
    run_id = proc.stdout.split("run ", 1)[1].split()[0]
    # Once the program's handler let go of the lock, the helper ended the run KILLED
    # and the exit delivered it.
    assert run_status(collector.db, run_id) == "KILLED"
    assert stored_points(collector.db, run_id, "loss") == 1


FORKED_CHILD_SIGTERM = """
import multiprocessing as mp
import os, signal, time
import flightlog as mlflow
mlflow.set_tracking_uri("{url}")


def child(ready):
    mlflow.log_metric("child", 1.0, step=0)
    ready.set()
    time.sleep(120)


if __name__ == "__main__":
    ctx = mp.get_context("fork")
    with mlflow.start_run() as run:
        print("run", run.info.run_id, flush=True)
        ready = ctx.Event()
        p = ctx.Process(target=child, args=(ready,))
        p.start()
        assert ready.wait(60)
        p.terminate()  # SIGTERM: the child's handler delivers what it logged, then dies
        p.join(60)
        print("exitcode", p.exitcode, flush=True)
        # The run is the parent's: the child's signal must not have ended it.
        print("status", mlflow.get_run(run.info.run_id).info.status, flush=True)
        mlflow.log_metric("parent", 2.0, step=0)
"""


def test_sigterm_to_a_forked_child_leaves_the_parents_run_alone(
    tmp_path: Path, collector: CollectorProcess
) -> None:
    proc = run_script(
        tmp_path, FORKED_CHILD_SIGTERM.format(url=collector.url), env=ENV, timeout=HUNG
    )
    assert f"exitcode {-signal.SIGTERM}" in proc.stdout, proc.stdout
    assert "status RUNNING" in proc.stdout, proc.stdout
    run_id = proc.stdout.split("run ", 1)[1].split()[0]
    assert stored_points(collector.db, run_id, "child") == 1
    assert stored_points(collector.db, run_id, "parent") == 1
    assert run_status(collector.db, run_id) == "FINISHED"


def _blocked_signals(native_id: int) -> int:
    status = Path(f"/proc/self/task/{native_id}/status").read_text()
    line = next(x for x in status.splitlines() if x.startswith("SigBlk:"))
    return int(line.split()[1], 16)


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_the_agents_threads_leave_sigterm_and_sigint_to_the_main_thread(
    collector: CollectorProcess, tmp_path: Path
) -> None:
    # A process-directed SIGTERM that landed on the packer only set Python's flag: the
    # main thread of a Pool worker, blocked on its task queue's lock (which the parent
    # holds while it terminates the pool), never ran the handler and never died.
    agent = Agent(CollectorClient(collector.url), spool_root=tmp_path / "spool")
    try:
        deadline = time.monotonic() + 30
        threads = [agent._packer, agent._sender]
        while any(t.native_id is None for t in threads) and time.monotonic() < deadline:
            time.sleep(0.01)
        wanted = (1 << (signal.SIGTERM - 1)) | (1 << (signal.SIGINT - 1))
        while time.monotonic() < deadline:
            masks = [_blocked_signals(t.native_id or 0) for t in threads]
            if all(m & wanted == wanted for m in masks):
                break
            time.sleep(0.01)
        assert all(m & wanted == wanted for m in masks), [hex(m) for m in masks]
        # ... while the thread that made the agent still takes them.
        assert _blocked_signals(threading.get_native_id()) & wanted == 0
    finally:
        agent.close(10.0)

"""Nothing lost (issue 6): outages, collector crashes, training crashes, signals, drops.

Every test runs real processes: collectors started with ``python -m
flightlog.collector`` on loopback, training scripts in fresh interpreters, real SQLite
files and spool directories. Tests synchronise on what the processes print, on
flush(), and on polling real state (the SQLite file, the spool directory) with
deadlines, never on bare sleeps.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from array import array
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import flightlog as mlflow
from flightlog.agent.transport import CollectorClient
from flightlog.agent.worker import Agent
from flightlog.core.wire import encode_batch, unpack
from tests.conftest import CollectorProcess, free_port, start_collector
from tests.helpers import run_script, run_status, stored_points

# -- helpers shared with the other test_reliability* modules ------------------------------


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Child:
    """A training script in its own interpreter, whose stdout lines the test can await."""

    def __init__(
        self,
        tmp_path: Path,
        code: str,
        env: dict[str, str] | None = None,
        name: str = "child",
        *,
        stdin: bool = False,
    ) -> None:
        d = tmp_path / "scripts"
        d.mkdir(exist_ok=True)
        script = d / f"{name}.py"
        script.write_text(textwrap.dedent(code))
        self.stderr_path = d / f"{name}.stderr"
        work = tmp_path / "work"
        work.mkdir(exist_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, str(script)],
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self.stderr_path.open("w"),
            text=True,
            cwd=str(work),
            # A test runner started as a background job inherits SIGINT ignored, and
            # Python keeps an ignored SIGINT ignored: give the child a normal start.
            preexec_fn=_default_sigint,
            env={**os.environ, **(env or {})},
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def expect(self, prefix: str, timeout: float = 60.0) -> str:
        """The next stdout line starting with ``prefix`` (earlier lines are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no line {prefix!r} within {timeout}s; {self.stderr()}")
            try:
                line = self.lines.get(timeout=min(left, 0.5))
            except queue.Empty:
                if self.proc.poll() is not None and self.lines.empty():
                    raise AssertionError(
                        f"child exited ({self.proc.returncode}) before {prefix!r}: {self.stderr()}"
                    ) from None
                continue
            if line.startswith(prefix):
                return line[len(prefix) :].strip()

    def send(self, line: str) -> None:
        """Write a line to the child's stdin (made with ``stdin=True``)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")[-3000:]

    def wait(self, timeout: float = 120.0) -> int:
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


def elsewhere(tmp_path: Path) -> dict[str, str]:
    """The environment of a collector on another node: its spool directory is not ours."""
    return {"FLIGHTLOG_SPOOL_DIR": str(tmp_path / "another-node-spool")}


def wait_until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll real state until ``check()`` is truthy; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)  # polling another process's state: nothing to wait on but time


def query(db: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db, timeout=30)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def steps_stored(db: Path, run_id: str, key: str) -> array[int]:
    """Every stored step of a series, in chunk order."""
    steps: array[int] = array("q")
    for (blob,) in query(
        db, "SELECT steps FROM metric_chunks WHERE run_uuid = ? AND key = ?", run_id, key
    ):
        steps.frombytes(blob)
    return steps


def run_tags(db: Path, run_id: str) -> dict[str, str]:
    return dict(query(db, "SELECT key, value FROM tags WHERE run_uuid = ?", run_id))  # type: ignore[arg-type]


def spool_files(spool: Path) -> list[Path]:
    return sorted(spool.rglob("*.seg")) if spool.exists() else []


@pytest.fixture(autouse=True)
def _own_spool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Spools go under the test's directory, never the user's ~/.cache."""
    spool = tmp_path / "spool"
    monkeypatch.setenv("FLIGHTLOG_SPOOL_DIR", str(spool))
    for var in ("FLIGHTLOG_TOKEN", "FLIGHTLOG_RUN_TIMEOUT", "FLIGHTLOG_FLUSH_INTERVAL"):
        monkeypatch.delenv(var, raising=False)
    return spool


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    return tmp_path / "spool"


# -- 1. delivery: at-least-once, idempotent, backoff ----------------------------------------


def test_a_resent_batch_is_stored_once(collector: CollectorProcess) -> None:
    client = CollectorClient(collector.url)
    run_id = "a" * 32
    ops = [["create_run", {"run_id": run_id, "experiment_id": "0", "heartbeat": True}]]
    n = 1000
    columns = [[run_id] * n, ["loss"] * n, [float(i) for i in range(n)], list(range(n)), [1.0] * n]
    body = encode_batch("batch-0001", "agent", ops, columns)
    replies = []
    for _ in range(3):  # the same bytes, as a retry after a lost acknowledgement sends them
        status, _, data = client.request("POST", "/api/flightlog/ingest", body)
        assert status == 200
        replies.append(unpack(data))
    assert [r["duplicate"] for r in replies] == [False, True, True]
    assert all(r["errors"] == [] for r in replies)
    assert stored_points(collector.db, run_id, "loss") == n
    assert sorted(steps_stored(collector.db, run_id, "loss")) == list(range(n))


class _AckLosingProxy:
    """A TCP proxy in front of a collector that loses every ``nth`` answer.

    It forwards each request and reads the collector's full answer (so the batch is
    committed), then, every ``nth`` time, closes the client's connection instead of
    passing the answer on: an acknowledgement lost on the way, as when a collector dies
    between its commit and its reply.
    """

    def __init__(self, upstream_port: int, nth: int) -> None:
        import socket

        self.upstream_port = upstream_port
        self.nth = nth
        self.count = 0
        self.lost = 0
        self._lock = threading.Lock()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    @staticmethod
    def _read_message(f: Any) -> bytes | None:
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            line = f.readline()
            if not line:
                return None
            head += line
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return head + f.read(length)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: Any) -> None:
        import socket

        with conn, conn.makefile("rb") as f:
            while True:
                request = self._read_message(f)
                if request is None:
                    return
                with socket.create_connection(("127.0.0.1", self.upstream_port)) as up:
                    up.sendall(request)
                    with up.makefile("rb") as uf:
                        response = self._read_message(uf)
                if response is None:
                    return
                with self._lock:
                    self.count += 1
                    lose = self.count % self.nth == 0
                    self.lost += lose
                if lose:
                    return  # the answer never arrives; the connection just closes
                conn.sendall(response)

    def close(self) -> None:
        self.sock.close()


def test_lost_acknowledgements_are_retried_and_stored_once(
    collector: CollectorProcess, spool: Path
) -> None:
    proxy = _AckLosingProxy(collector.port, nth=3)
    try:
        agent = Agent(
            CollectorClient(proxy.url),
            flush_interval=0.05,
            batch_points=10_000,
            heartbeat_interval=3600,
            spool_root=spool / "p",
        )
        run_id = "2" * 32
        agent.submit_op("create_run", {"run_id": run_id, "experiment_id": "0"})
        n = 200_000
        for i in range(n):
            agent.submit_metric((run_id, "loss", float(i), i, 1.0))
        assert agent.flush(timeout=120, through_outage=True)
        agent.close(10)
    finally:
        proxy.close()
    assert proxy.lost >= 5  # answers were lost, batches were sent again ...
    steps = steps_stored(collector.db, run_id, "loss")
    assert len(steps) == n and len(set(steps)) == n  # ... and each point is stored once


class _Refusing:
    """A stand-in collector that answers every request 503 with a given Retry-After."""

    def __init__(self, retry_after: str) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.times: list[float] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.times.append(time.monotonic())
                self.send_response(503)
                self.send_header("Retry-After", retry_after)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_retry_after_is_honoured_and_close_interrupts_the_backoff(spool: Path) -> None:
    server = _Refusing("30")
    try:
        agent = Agent(
            CollectorClient(server.url),
            flush_interval=0.05,
            heartbeat_interval=3600,
            spool_root=spool / "x",
        )
        agent.submit_op("create_run", {"run_id": "b" * 32, "experiment_id": "0"})
        for i in range(1000):
            agent.submit_metric(("b" * 32, "loss", 1.0, i, 1.0))
        # Not acknowledged: flush returns once the batches are on disk, not after 30 s.
        t0 = time.monotonic()
        assert agent.flush(timeout=20) is False
        assert time.monotonic() - t0 < 10
        assert not agent.reachable
        wait_until(lambda: spool_files(spool), 10, "the batches to be spooled")
        # The collector asked for 30 s: within the next second nobody knocks again.
        first = len(server.times)
        assert agent.flush(timeout=1.0, through_outage=True) is False
        assert len(server.times) == first
        # close() cuts the backoff short for one last try, then leaves the batches on
        # disk instead of waiting out the Retry-After.
        t0 = time.monotonic()
        assert agent.close(timeout=1.5) is False
        assert time.monotonic() - t0 < 5
        assert len(server.times) == first + 1
    finally:
        server.close()
    files = spool_files(spool)
    assert files and sum(f.stat().st_size for f in files) > 1000 * 24


# -- 2. outages: the run goes on, the spool delivers it ---------------------------------

OFFLINE_RUN = """
import json, sys, time
import flightlog as mlflow
mlflow.set_tracking_uri(sys.argv[1] if len(sys.argv) > 1 else "{url}")
N = {n}
with mlflow.start_run() as run:
    print("run", run.info.run_id, flush=True)
    mlflow.log_param("lr", 0.01)
    mlflow.set_tag("phase", "offline")
    t0 = time.perf_counter()
    for i in range(N):
        mlflow.log_metric("loss", i * 0.5, step=i)
    print("log_seconds", time.perf_counter() - t0, flush=True)
    agent = mlflow.MlflowClient().ctx.agent
    # Durable on this machine: returns once the collector was found away and the
    # batches are in the spool.
    print("spooled", agent.flush(), flush=True)
    {after}
"""


def test_outage_for_the_whole_run_then_the_collector_comes(tmp_path: Path, spool: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    n = 300_000
    after = """
    print("waiting", flush=True)
    print("delivered", agent.flush(timeout=120, through_outage=True), flush=True)
    """
    child = Child(
        tmp_path,
        OFFLINE_RUN.format(url=url, n=n, after=textwrap.indent(textwrap.dedent(after), "    ")),
        env={"FLIGHTLOG_FLUSH_INTERVAL": "0.2", "FLIGHTLOG_HEARTBEAT_INTERVAL": "0.5"},
    )
    run_id = child.expect("run")
    # Log calls stay fast with nobody to send to: the loop is appends, not network waits.
    assert float(child.expect("log_seconds")) < 15
    assert child.expect("spooled") == "False"
    child.expect("waiting")
    assert spool_files(spool), "nothing was spooled"
    # The collector comes: the live process drains its spool, oldest first.
    c = start_collector(tmp_path / "store", port, "--run-timeout", "2")
    try:
        assert child.expect("delivered") == "True"
        assert child.wait() == 0
        assert stored_points(c.db, run_id, "loss") == n
        assert sorted(steps_stored(c.db, run_id, "loss")) == list(range(n))
        run = query(c.db, "SELECT status, last_heartbeat FROM runs WHERE run_uuid = ?", run_id)
        assert run[0][0] == "FINISHED" and run[0][1] is not None
        assert dict(query(c.db, "SELECT key, value FROM params WHERE run_uuid = ?", run_id)) == {
            "lr": "0.01"
        }
        assert run_tags(c.db, run_id)["phase"] == "offline"
        assert spool_files(spool) == []
    finally:
        child.kill()
        c.stop()


def test_a_spool_left_at_exit_is_sent_by_the_next_process(tmp_path: Path, spool: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    n = 100_000
    first = run_script(
        tmp_path,
        OFFLINE_RUN.format(url=url, n=n, after="pass"),
        env={"FLIGHTLOG_EXIT_FLUSH_TIMEOUT": "1"},
    )
    run_id = first.stdout.split("run", 1)[1].split()[0]
    # The exit said where the batches are and how to send them.
    assert "not sent" in first.stderr and "flightlog sync" in first.stderr
    assert spool_files(spool)
    c = start_collector(tmp_path / "store", port)
    try:
        # Any later process for the same collector sends them, and waits for that at exit.
        second = run_script(
            tmp_path,
            f"""
            import flightlog as mlflow
            mlflow.set_tracking_uri("{url}")
            with mlflow.start_run():
                mlflow.log_metric("other", 1.0)
            """,
        )
        assert "not sent" not in second.stderr
        assert stored_points(c.db, run_id, "loss") == n
        assert sorted(steps_stored(c.db, run_id, "loss")) == list(range(n))
        assert run_status(c.db, run_id) == "FINISHED"
        assert spool_files(spool) == []
        assert [p for p in (spool / f"http-127.0.0.1-{port}").iterdir() if p.is_dir()] == []
    finally:
        c.stop()


def test_killed_offline_run_is_uploaded_by_flightlog_sync(tmp_path: Path, spool: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    n = 200_000
    after = """
    print("ready", flush=True)
    while True:
        time.sleep(1)  # until the test kills us
    """
    child = Child(
        tmp_path,
        OFFLINE_RUN.format(url=url, n=n, after=textwrap.indent(textwrap.dedent(after), "    ")),
    )
    run_id = child.expect("run")
    assert child.expect("spooled") == "False"
    child.expect("ready")
    child.proc.send_signal(signal.SIGKILL)
    child.wait()
    assert spool_files(spool)
    # A collector on another node (it does not see this node's spools: one on the same
    # node would adopt the dead process's spool and ring itself, test_ring_adopt.py).
    c = start_collector(tmp_path / "store", port, "--run-timeout", "1", env=elsewhere(tmp_path))
    try:
        sync = subprocess.run(
            [sys.executable, "-m", "flightlog.cli", "sync", "--tracking-uri", url],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
        )
        assert sync.returncode == 0, sync.stderr
        assert f"{n:,}/{n:,} points" in sync.stderr
        assert "%|" not in sync.stderr  # stderr is not a terminal: no bar is drawn
        assert stored_points(c.db, run_id, "loss") == n
        assert sorted(steps_stored(c.db, run_id, "loss")) == list(range(n))
        assert spool_files(spool) == []
        # Its process is gone: no heartbeat, so the run ends FAILED rather than RUNNING.
        wait_until(lambda: run_status(c.db, run_id) == "FAILED", 20, "the run to be failed")
        assert run_tags(c.db, run_id)["flightlog.endReason"] == "heartbeat_timeout"
        again = subprocess.run(
            [sys.executable, "-m", "flightlog.cli", "sync", "--tracking-uri", url],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
        )
        assert again.returncode == 0 and "nothing to send" in again.stderr
    finally:
        c.stop()


def test_a_hung_collector_does_not_stall_the_run(tracking: CollectorProcess) -> None:
    with mlflow.start_run() as run:
        for i in range(100_000):
            mlflow.log_metric("loss", 1.0, step=i)
        mlflow.flush()
        tracking.proc.send_signal(signal.SIGSTOP)  # accepts connections, answers nothing
        try:
            t0 = time.perf_counter()
            for i in range(100_000, 200_000):
                mlflow.log_metric("loss", 1.0, step=i)
            assert time.perf_counter() - t0 < 10  # the log calls never wait
            t0 = time.monotonic()
            mlflow.end_run()  # returns once the batches are on disk, not after 60 s
            assert time.monotonic() - t0 < 20
        finally:
            tracking.proc.send_signal(signal.SIGCONT)
    agent = mlflow.MlflowClient().ctx.agent
    assert agent.flush(timeout=60, through_outage=True)
    assert run_status(tracking.db, run.info.run_id) == "FINISHED"
    steps = steps_stored(tracking.db, run.info.run_id, "loss")
    assert len(steps) == len(set(steps)) == 200_000


def test_spool_files_torn_or_damaged_records_and_live_owners(tmp_path: Path) -> None:
    from flightlog.agent.spool import ClaimedSpool, Spool

    root = tmp_path / "spool"
    spool = Spool(root, owner="a" * 32, tracking_uri="http://x:1", segment_bytes=1 << 20)
    bodies = [bytes([i]) * 1000 for i in range(4)]
    for i, body in enumerate(bodies):
        spool.append(i + 1, 10, body)
    # Its owner lives (holds the lock): nobody else may take it.
    assert ClaimedSpool.claim(spool.directory) is None
    spool.sync()
    [segment] = list(spool.directory.glob("*.seg"))
    spool.forget_after_fork()  # let go of the descriptors, as a dead process would
    # A crash in the middle of the last record, and a bit flipped in the second one.
    data = bytearray(segment.read_bytes())
    del data[-500:]
    data[24 + 1000 + 24 + 10] ^= 0xFF
    segment.write_bytes(bytes(data))
    claim = ClaimedSpool.claim(spool.directory)
    assert claim is not None
    assert [r.seq for r in claim.records] == [1, 2, 3]  # the torn tail is not a record
    assert [claim.read(r) for r in claim.records] == [bodies[0], None, bodies[2]]
    for r in claim.records:
        claim.done(r)
    claim.finish()
    assert not spool.directory.exists()


def test_flightlog_sync_into_a_local_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from flightlog.agent.embedded import stop_collector
    from flightlog.agent.spool import Spool
    from flightlog.core.spool_paths import default_spool_root

    monkeypatch.delenv("FLIGHTLOG_SPOOL_DIR")  # a local store's spool lives inside it
    store = tmp_path / "store"
    assert default_spool_root(str(store), store) == store / "spool"
    run_id = "3" * 32
    n = 1000
    ops = [["create_run", {"run_id": run_id, "experiment_id": "0"}]]
    columns = [[run_id] * n, ["loss"] * n, [0.5] * n, list(range(n)), [1.7e9] * n]
    # What a process killed before its store's collector took its batches leaves behind.
    spool = Spool(store / "spool", owner="b" * 32, tracking_uri=str(store))
    spool.append(1, n, encode_batch("local-1", "agent", ops, columns))
    spool.forget_after_fork()
    try:
        sync = subprocess.run(
            [sys.executable, "-m", "flightlog.cli", "sync", "--tracking-uri", str(store)],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
        )
        assert sync.returncode == 0, sync.stderr
        assert stored_points(store / "flightlog.db", run_id, "loss") == n
        assert list((store / "spool").iterdir()) == [store / "spool" / "target.json"]
    finally:
        stop_collector(store)


# -- collector crashes ----------------------------------------------------------------------


def test_collector_killed_three_times_during_a_run_stores_every_point_once(
    tmp_path: Path,
) -> None:
    store = tmp_path / "store"
    c = start_collector(store)
    port, n = c.port, 2_000_000
    kills = (400_000, 900_000, 1_400_000)
    child = Child(
        tmp_path,
        f"""
        import sys
        import flightlog as mlflow
        mlflow.set_tracking_uri("{c.url}")
        with mlflow.start_run() as run:
            print("run", run.info.run_id, flush=True)
            for i in range({n}):
                mlflow.log_metric("loss", i * 0.001, step=i)
                if (i + 1) % 100_000 == 0:
                    print("at", i + 1, flush=True)
                    if i + 1 in {kills}:
                        sys.stdin.readline()  # the test kills the collector meanwhile
            agent = mlflow.MlflowClient().ctx.agent
            print("flushed", agent.flush(timeout=180, through_outage=True), flush=True)
            print("outages", agent.outages, flush=True)
        print("done", flush=True)
        """,
        env={"FLIGHTLOG_FLUSH_INTERVAL": "0.2"},
        stdin=True,
    )
    run_id = child.expect("run")
    try:
        for at in kills:
            while int(child.expect("at")) < at:
                pass
            # Batches are in flight (the block's tail is still queued or being sent):
            # no chance to finish what it was writing or to acknowledge it.
            c.stop(signal.SIGKILL)
            child.send("go")
            child.expect("at")  # the run logs on during the outage
            before = stored_points(c.db, run_id)
            c = start_collector(store, port)  # same port, same store
            wait_until(
                lambda: stored_points(c.db, run_id) > before,  # noqa: B023 -- this round's c
                60,
                "the agent to deliver to the restarted collector",
            )
        assert child.expect("flushed", timeout=240) == "True"
        # The agent noticed the kills (a send failed, it spooled and retried); on a loaded
        # machine a restart can come before the agent's next send, so not always all 3.
        assert 1 <= int(child.expect("outages")) <= 3
        child.expect("done")
        assert child.wait() == 0
    finally:
        child.kill()
        c.stop()
    steps = steps_stored(c.db, run_id, "loss")
    assert query(c.db, "SELECT SUM(n) FROM metric_chunks WHERE run_uuid = ?", run_id)[0][0] == n
    assert len(steps) == n and len(set(steps)) == n  # every point once: none lost, none twice
    assert run_status(c.db, run_id) == "FINISHED"


# -- training crashes -----------------------------------------------------------------------

TICKING_RUN = """
import signal, sys, time
import flightlog as mlflow
mlflow.set_tracking_uri("{url}")
{prelude}
run = mlflow.start_run()
print("run", run.info.run_id, flush=True)
for i in range({points}):
    mlflow.log_metric("loss", i * 0.5, step=i)
mlflow.log_param("lr", 0.01)
print("logged", {points}, flush=True)
t0 = time.monotonic()
step = {points}
while True:
    # Training goes on, one point per tick; each line says which step was logged when.
    mlflow.log_metric("loss", step * 0.5, step=step)
    print("tick", step, time.monotonic() - t0, flush=True)
    step += 1
    time.sleep(0.02)
"""


def test_sigkill_run_ends_failed_and_points_older_than_a_flush_interval_are_stored(
    tmp_path: Path,
) -> None:
    # A collector on another node, which cannot see the process's ring: the heartbeat
    # watch ends the run (on the same node the ring's adoption does: test_ring_adopt.py).
    c = start_collector(tmp_path / "store", None, "--run-timeout", "2", env=elsewhere(tmp_path))
    env = {"FLIGHTLOG_FLUSH_INTERVAL": "0.2", "FLIGHTLOG_HEARTBEAT_INTERVAL": "0.3"}
    child = Child(tmp_path, TICKING_RUN.format(url=c.url, prelude="", points=50_000), env=env)
    try:
        run_id = child.expect("run")
        # Alive for longer than the run timeout: its heartbeats keep it RUNNING.
        step0 = int(child.expect("tick").split()[0])
        while float(child.expect("tick").split()[1]) < 3.0:
            pass
        assert run_status(c.db, run_id) == "RUNNING"
        # Note a step, let one flush interval (0.2 s) and some delivery time pass in the
        # child's own clock, then kill it without warning.
        step0, t0 = (float(x) for x in child.expect("tick").split())
        while float(child.expect("tick").split()[1]) < t0 + 0.8:
            pass
        child.proc.send_signal(signal.SIGKILL)
        child.wait()
        killed_at = time.monotonic()
        wait_until(lambda: run_status(c.db, run_id) == "FAILED", 20, "the run to be failed")
        # Within the timeout (2 s) plus the watch's period and the write.
        assert time.monotonic() - killed_at < 8
        steps = set(steps_stored(c.db, run_id, "loss"))
        assert set(range(int(step0) + 1)) <= steps
        tags = run_tags(c.db, run_id)
        assert tags["flightlog.endReason"] == "heartbeat_timeout"
        assert query(c.db, "SELECT end_time FROM runs WHERE run_uuid = ?", run_id)[0][0]
    finally:
        child.kill()
        c.stop()


def test_sigterm_ends_the_run_killed_and_still_runs_the_programs_handler(
    tmp_path: Path, collector: CollectorProcess
) -> None:
    marker = tmp_path / "handler-ran"
    prelude = f"""
def on_term(signum, frame):
    # The program's own handler, installed before flightlog's: it must still run.
    open({str(marker)!r}, "w").write(str(signum))
    sys.exit(3)
signal.signal(signal.SIGTERM, on_term)
"""
    child = Child(tmp_path, TICKING_RUN.format(url=collector.url, prelude=prelude, points=200_000))
    run_id = child.expect("run")
    child.expect("logged")
    last = int(child.expect("tick").split()[0])
    child.proc.send_signal(signal.SIGTERM)
    assert child.wait() == 3, child.stderr()
    assert marker.read_text() == str(int(signal.SIGTERM))
    assert run_status(collector.db, run_id) == "KILLED"
    steps = set(steps_stored(collector.db, run_id, "loss"))
    assert set(range(last + 1)) <= steps  # flushed: everything logged before the signal
    assert dict(query(collector.db, "SELECT key, value FROM params WHERE run_uuid = ?", run_id))


def test_sigterm_without_a_handler_ends_killed_and_dies_of_sigterm(
    tmp_path: Path, collector: CollectorProcess
) -> None:
    child = Child(tmp_path, TICKING_RUN.format(url=collector.url, prelude="", points=200_000))
    run_id = child.expect("run")
    child.expect("logged")
    last = int(child.expect("tick").split()[0])
    child.proc.send_signal(signal.SIGTERM)
    # The default action still happens: a scheduler sees a process killed by SIGTERM.
    assert child.wait() == -signal.SIGTERM
    assert run_status(collector.db, run_id) == "KILLED"
    assert set(range(last + 1)) <= set(steps_stored(collector.db, run_id, "loss"))


def test_ctrl_c_ends_the_run_killed_unless_the_program_catches_it(
    tmp_path: Path, collector: CollectorProcess
) -> None:
    uncaught = Child(
        tmp_path,
        TICKING_RUN.format(url=collector.url, prelude="", points=1000),
        name="uncaught",
    )
    caught = Child(
        tmp_path,
        f"""
        import sys, time
        import flightlog as mlflow
        mlflow.set_tracking_uri("{collector.url}")
        with mlflow.start_run() as run:
            print("run", run.info.run_id, flush=True)
            try:
                step = 0
                while True:  # "press Ctrl-C to stop training early"
                    mlflow.log_metric("loss", 1.0, step=step)
                    print("tick", step, flush=True)
                    step += 1
                    time.sleep(0.02)
            except KeyboardInterrupt:
                mlflow.log_metric("test_accuracy", 0.9)  # ... then evaluate
        print("done", flush=True)
        """,
        name="caught",
    )
    uncaught_id, caught_id = uncaught.expect("run"), caught.expect("run")
    uncaught.expect("tick")
    caught.expect("tick")
    uncaught.proc.send_signal(signal.SIGINT)
    caught.proc.send_signal(signal.SIGINT)
    # Python ends on an uncaught KeyboardInterrupt by dying of SIGINT.
    assert uncaught.wait() in (1, -signal.SIGINT) and "KeyboardInterrupt" in uncaught.stderr()
    assert caught.wait() == 0
    assert run_status(collector.db, uncaught_id) == "KILLED"
    assert stored_points(collector.db, uncaught_id, "loss") >= 1001
    assert run_status(collector.db, caught_id) == "FINISHED"
    assert stored_points(collector.db, caught_id, "test_accuracy") == 1


# -- heartbeats in the store ----------------------------------------------------------------


def test_heartbeat_watch_fails_only_silent_agent_runs_and_a_heartbeat_revives(
    tmp_path: Path,
) -> None:
    from flightlog.collector.store import SqliteStore

    store = SqliteStore(tmp_path / "s.db", (tmp_path / "a").as_uri())
    agent_run, rest_run = "c" * 32, "d" * 32
    store.apply_batch(
        None,
        [
            ("create_run", {"run_id": agent_run, "experiment_id": "0", "heartbeat": True}),
            ("create_run", {"run_id": rest_run, "experiment_id": "0"}),  # no heartbeats
        ],
        [],
    )
    # A run that reaches the collector late (spooled, created an hour ago) is judged from
    # its arrival, not from its start.
    late_run = "e" * 32
    hour_ago = int(time.time() * 1000) - 3_600_000
    store.apply_batch(
        None,
        [
            (
                "create_run",
                {
                    "run_id": late_run,
                    "experiment_id": "0",
                    "start_time": hour_ago,
                    "heartbeat": True,
                },
            )
        ],
        [],
    )
    assert store.fail_stale_runs(int(time.time() * 1000) - 60_000) == []
    assert store.get_run(late_run)["info"]["start_time"] == hour_ago
    store.apply_batch(None, [("update_run", {"run_id": late_run, "status": "FINISHED"})], [])
    future = int(time.time() * 1000) + 60_000
    assert store.fail_stale_runs(future) == [agent_run]
    got = store.get_run(agent_run)
    assert got["info"]["status"] == "FAILED" and got["info"]["end_time"]
    assert got["data"]["tags"]["flightlog.endReason"] == "heartbeat_timeout"
    assert store.get_run(rest_run)["info"]["status"] == "RUNNING"
    # Its agent was only cut off: the next heartbeat sets it running again.
    store.apply_batch(None, [("heartbeat", {"run_id": agent_run})], [])
    got = store.get_run(agent_run)
    assert got["info"]["status"] == "RUNNING" and got["info"]["end_time"] is None
    assert "flightlog.endReason" not in got["data"]["tags"]
    # A run the client ended is never revived.
    store.apply_batch(None, [("update_run", {"run_id": agent_run, "status": "FINISHED"})], [])
    store.apply_batch(None, [("heartbeat", {"run_id": agent_run})], [])
    assert store.get_run(agent_run)["info"]["status"] == "FINISHED"
    assert store.fail_stale_runs(future) == []
    store.close()


# -- 4. overload: bounded memory, drops counted and recorded on the run -------------------


def test_full_spool_drops_points_keeps_the_run_and_records_the_count(
    tmp_path: Path, spool: Path
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    mlflow.set_tracking_uri(url)
    ctx = mlflow.MlflowClient().ctx
    ctx.agent.close(1)
    # An agent whose spool holds about 100,000 points, the collector away.
    ctx.agent = agent = Agent(
        ctx.client,
        flush_interval=0.05,
        batch_points=10_000,
        spool_root=spool / "small",
        spool_max_bytes=2_500_000,
        max_pending_bytes=1,
        tracking_uri=url,
    )
    run = mlflow.start_run()
    run_id = run.info.run_id
    n = 300_000
    for i in range(n):
        mlflow.log_metric("loss", 1.0, step=i)
    assert agent.flush() is False  # away: settled once in the outbox
    dropped = agent.dropped.get("spool_full", 0)
    assert 100_000 <= dropped <= n - 50_000
    c = start_collector(tmp_path / "store", port)
    try:
        mlflow.set_tag("after", "outage")
        assert agent.flush(timeout=60, through_outage=True)
        mlflow.end_run()
        # The run and its ops survived; what was dropped is on the run for all to see.
        assert run_status(c.db, run_id) == "FINISHED"
        assert stored_points(c.db, run_id, "loss") == n - dropped
        tags = run_tags(c.db, run_id)
        assert tags["flightlog.dropped.spool_full"] == str(dropped)
        assert tags["after"] == "outage"
    finally:
        c.stop()


@pytest.mark.parametrize("ring", ["1", "0"])  # the metric ring (default), the queue
def test_a_starved_packer_makes_the_logging_call_spill_then_drop_never_block(
    tracking: CollectorProcess, monkeypatch: pytest.MonkeyPatch, ring: str
) -> None:
    monkeypatch.setenv("FLIGHTLOG_METRIC_RING", ring)
    ctx = mlflow.MlflowClient().ctx
    ctx.agent.close(5)
    ctx.agent = agent = Agent(ctx.client, batch_points=1000, max_queue=20_000)
    run = mlflow.start_run()
    # The packer cannot get its lock (as if stuck on a slow disk): the queue must not
    # grow without bound, and log_metric must not wait for it.
    agent._pack_lock.acquire()
    try:
        t0 = time.perf_counter()
        for i in range(100_000):
            mlflow.log_metric("loss", 1.0, step=i)
        assert time.perf_counter() - t0 < 10
        assert len(agent.queue) <= (20_000 + 1) * 5
        assert (agent.ring is None) == (ring == "0")
        dropped = agent.dropped["queue_full"]
        assert dropped >= 100_000 - 20_000 - 1
    finally:
        agent._pack_lock.release()
    mlflow.flush()
    dropped = agent.dropped["queue_full"]
    # Unstuck: at the cap the logging call waits briefly for the lock and spills a batch
    # itself, rather than drop while the packer merely waits for the GIL.
    for i in range(100_000, 200_000):
        mlflow.log_metric("loss", 1.0, step=i)
    mlflow.end_run()
    assert agent.dropped["queue_full"] == dropped
    stored = stored_points(tracking.db, run.info.run_id, "loss")
    assert stored == 200_000 - dropped
    assert run_tags(tracking.db, run.info.run_id)["flightlog.dropped.queue_full"] == str(dropped)


# -- 5. bad input -------------------------------------------------------------------------


def test_bad_points_at_the_sdk_are_refused_or_reported_and_the_agent_lives(
    tracking: CollectorProcess,
) -> None:
    from flightlog import MlflowException

    with mlflow.start_run() as run:
        with pytest.raises(MlflowException, match="Invalid run id 123"):
            mlflow.log_metric("x", 1.0, run_id=123)  # type: ignore[arg-type]
        agent = mlflow.MlflowClient().ctx.agent
        # Past every call-site check (a plug-in feeding the queue directly): the agent
        # drops that point, keeps the rest of the batch, and says so at the next flush.
        agent.submit_metric((run.info.run_id, "x", "not a number", 0, 1.0))  # type: ignore[arg-type]
        mlflow.log_metric("x", 2.0, step=1)
        with pytest.raises(MlflowException, match="invalid run id, key, value"):
            mlflow.flush()
        mlflow.log_metric("x", 3.0, step=2)
        # What only the collector can know (an unknown run) comes back at flush too.
        mlflow.log_metric("x", 4.0, run_id="e" * 32)
        with pytest.raises(MlflowException, match="not found"):
            mlflow.flush()
        assert agent._packer.is_alive() and agent._sender.is_alive()
    assert sorted(steps_stored(tracking.db, run.info.run_id, "x")) == [1, 2]
    assert agent.dropped["invalid_point"] == 1


@pytest.fixture
def raw(collector: CollectorProcess) -> Iterator[Callable[..., tuple[int, dict[str, str], Any]]]:
    import http.client

    def post(
        path: str, body: bytes, content_type: str = "application/msgpack", **headers: str
    ) -> tuple[int, dict[str, str], Any]:
        conn = http.client.HTTPConnection("127.0.0.1", collector.port, timeout=30)
        try:
            conn.request("POST", path, body, {"Content-Type": content_type, **headers})
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        hdrs = {k.lower(): v for k, v in resp.getheaders()}
        if hdrs.get("content-type", "").startswith("application/json"):
            return resp.status, hdrs, json.loads(data)
        return resp.status, hdrs, unpack(data) if data else None

    yield post


def test_bad_batches_get_clear_errors_and_the_rest_is_stored(
    raw: Callable[..., tuple[int, dict[str, str], Any]], collector: CollectorProcess
) -> None:
    ingest = "/api/flightlog/ingest"
    # Not msgpack at all; a client that is not the SDK gets JSON.
    status, hdrs, body = raw(ingest, b"\xc1garbage", "application/octet-stream")
    assert status == 400 and hdrs["content-type"].startswith("application/json")
    assert body["error_code"] == "BAD_REQUEST" and "not valid msgpack" in body["message"]
    # The wrong shape.
    status, _, body = raw(ingest, b"\x93\x01\x02\x03")
    assert status == 400 and "top level must be a map" in body["message"]
    # Valid frame, bad contents: each bad op or series is refused and named, the rest kept.
    good = "f" * 32
    huge = "v" * 100_000
    ops = [
        ["create_run", {"run_id": good, "experiment_id": "0"}],
        ["create_run", {"run_id": "not-hex", "experiment_id": "0"}],
        ["set_tags", {"run_id": good, "tags": {"ok": "yes", "bad key!": "x"}}],
        ["set_tags", {"run_id": good, "tags": {"big": huge}}],
        ["log_params", {"run_id": good, "params": {"p": 1}}],
        ["log_metric", {"run_id": good, "key": "m", "value": 1.0, "step": 0, "timestamp": "x"}],
        ["explode", {}],
        ["update_run", {"run_id": "0" * 32, "status": "FINISHED"}],
    ]
    n = 10
    runs = [good] * n + [good] * n + ["9" * 32] * n
    keys = ["loss"] * n + ["../escape"] * n + ["loss"] * n
    columns = [runs, keys, [float("nan")] * (3 * n), list(range(3 * n)), [1.0] * (3 * n)]
    status, _, body = raw(ingest, encode_batch("mixed-1", "fuzz", ops, columns))
    assert status == 200
    messages = " | ".join(e["message"] for e in body["errors"])
    for expected in (
        "Invalid run id 'not-hex'",
        "Invalid tag name: 'bad key!'",
        "Tag value for 'big' is 100000 characters",
        "must be a string, not int",
        "Invalid timestamp 'x'",
        "Unknown operation 'explode'",
        "Run '00000000000000000000000000000000' not found",
        "Invalid metric name: '../escape'",
        f"Run '{'9' * 32}' not found",
    ):
        assert expected in messages, (expected, messages)
    assert len(body["errors"]) == 9
    assert stored_points(collector.db, good, "loss") == n  # NaN values are legal
    assert run_tags(collector.db, good).get("ok") is None  # its op was refused as a whole
    # Timestamps that are not finite are refused per series.
    bad_ts = [[good] * 2, ["t"] * 2, [1.0, 2.0], [0, 1], [float("inf"), 1.0]]
    status, _, body = raw(ingest, encode_batch("ts-1", "fuzz", [], bad_ts))
    assert status == 200 and "must be finite" in body["errors"][0]["message"]
    # An oversized body is refused before a byte of it is read: 413 with a JSON error.
    import socket

    with socket.create_connection(("127.0.0.1", collector.port)) as s:
        s.sendall(
            b"POST /api/flightlog/ingest HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Content-Type: application/octet-stream\r\nContent-Length: 100000000\r\n\r\n"
        )
        reply = b""
        while b"}" not in reply:
            chunk = s.recv(65536)
            if not chunk:
                break
            reply += chunk
    head, _, payload = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413") and b"application/json" in head
    body = json.loads(payload)
    assert body["error_code"] == "BAD_REQUEST"
    assert "larger than the collector's limit" in body["message"]
    # Still serving.
    assert CollectorClient(collector.url).healthy() is not None


def test_collector_answers_503_with_retry_after_when_its_budget_is_spent(
    tmp_path: Path,
) -> None:
    import socket

    c = start_collector(tmp_path / "store", None, "--ingest-max-pending-bytes", "100000")
    try:
        # A client that announced 90 kB and sends it slowly holds that much of the budget.
        slow = socket.create_connection(("127.0.0.1", c.port))
        slow.sendall(
            b"POST /api/flightlog/ingest HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/msgpack\r\nContent-Length: 90000\r\n\r\n" + b"\x80" * 10
        )
        client = CollectorClient(c.url)
        body = encode_batch("b-1", "a", [], [])
        big = encode_batch("b-2", "a", [["heartbeat", {"run_id": "x" * 32}]] * 2000, [])

        def ingest(b: bytes) -> tuple[int, dict[str, str]]:
            status, hdrs, _ = client.request("POST", "/api/flightlog/ingest", b)
            return status, hdrs

        # A small batch still fits; one that would pass the budget is told to come back.
        wait_until(lambda: ingest(big)[0] == 503, 10, "the budget to be taken")
        status, hdrs = ingest(big)
        assert status == 503 and int(hdrs["retry-after"]) >= 1
        assert ingest(body)[0] == 200
        slow.close()  # its reservation is given back when the request ends
        wait_until(lambda: ingest(big)[0] == 200, 10, "the budget to be given back")
    finally:
        c.stop()


# -- 6. security --------------------------------------------------------------------------


def test_token_is_required_everywhere_but_health_and_the_sdk_sends_it(
    tmp_path: Path, spool: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import http.client

    token = "s3cret-token"
    c = start_collector(tmp_path / "store", None, "--host", "0.0.0.0", "--token", token)
    try:

        def status(method: str, path: str, auth: bytes | None) -> int:
            conn = http.client.HTTPConnection("127.0.0.1", c.port, timeout=30)
            conn.putrequest(method, path)
            if auth is not None:
                conn.putheader("Authorization", auth)
            conn.putheader("Content-Length", "0")
            conn.endheaders()
            code = conn.getresponse().status
            conn.close()
            return code

        paths = [
            ("POST", "/api/flightlog/ingest"),
            ("POST", "/api/flightlog/rpc/get_experiment"),
            ("GET", "/api/2.0/mlflow/experiments/search"),
            ("GET", "/no/such/page"),
        ]
        for method, path in paths:
            for auth in (None, b"Bearer wrong", b"Bearer " + token.encode() + b"x", b"\xff\xfe"):
                assert status(method, path, auth) == 401, (method, path, auth)
        assert status("GET", "/health", None) == 200
        ok = f"Bearer {token}".encode()
        assert status("POST", "/api/flightlog/rpc/get_experiment", ok) != 401
        # The SDK sends FLIGHTLOG_TOKEN.
        monkeypatch.setenv("FLIGHTLOG_TOKEN", token)
        mlflow.set_tracking_uri(c.url)
        with mlflow.start_run() as run:
            mlflow.log_metric("m", 1.0)
        assert run_status(c.db, run.info.run_id) == "FINISHED"
        # A wrong token loses nothing: the batches wait in the spool, the error is raised
        # at flush, and `flightlog sync` with the right token delivers them.
        agent = Agent(CollectorClient(c.url, token="wrong"), spool_root=spool / "auth")
        agent.submit_op("create_run", {"run_id": "1" * 32, "experiment_id": "0"})
        agent.submit_metric(("1" * 32, "m", 1.0, 0, 1.0))
        from flightlog import MlflowException

        with pytest.raises(MlflowException, match="refused this client") as e:
            agent.flush(timeout=30)
        assert e.value.error_code == "UNAUTHENTICATED"
        agent.close(0.5)
        assert spool_files(spool / "auth")
        sync = subprocess.run(
            [sys.executable, "-m", "flightlog.cli", "sync", "--spool", str(spool / "auth")],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "FLIGHTLOG_TOKEN": token},
        )
        assert sync.returncode == 0, sync.stderr
        assert stored_points(c.db, "1" * 32, "m") == 1
    finally:
        c.stop()

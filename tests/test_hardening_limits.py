"""Bounds on what one client can make the collector hold, against a real collector.

A metric history is answered in pages of at most 25,000 points whatever ``max_results``
asks (MLflow's client follows the page token); a gzip/deflate artifact upload inflates
to at most FLIGHTLOG_UPLOAD_MAX_DECODED_BYTES; a body that stalls while holding the
budget others are refused is dropped after a few seconds; request headers that trickle
in are cut off like an idle connection.
"""

from __future__ import annotations

import gzip
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from flightlog.core.wire import encode_batch
from tests.conftest import CollectorProcess, start_collector
from tests.mlflow_server import quiet_mlflow
from tests.test_hardening import API, PROXY, call, new_run
from tests.test_hardening_bodies import batch, ingest

MiB = 1024 * 1024


def long_series(c: CollectorProcess, run_id: str, n: int) -> None:
    """Log ``n`` points of "loss" for ``run_id`` through the ingest endpoint."""
    for start in range(0, n, 100_000):
        stop = min(n, start + 100_000)
        columns = [
            [run_id] * (stop - start),
            ["loss"] * (stop - start),
            [float(i) / 7 for i in range(start, stop)],
            list(range(start, stop)),
            [1.7e9 + i / 1000 for i in range(start, stop)],
        ]
        body = encode_batch(uuid.uuid4().hex, "agent", [], columns)
        assert ingest(c, body) == 200


# -- 1: metric history in bounded pages ------------------------------------------------------


def test_metric_history_is_paged_and_the_official_client_gets_it_whole(tmp_path: Path) -> None:
    c = start_collector(tmp_path / "store")
    try:
        run_id = new_run(c)
        n = 60_123
        long_series(c, run_id, n)
        base = f"{API}metrics/get-history?run_id={run_id}&metric_key=loss"
        for query in ("", "&max_results=1000000000"):
            status, page = call(c, "GET", base + query)
            assert status == 200, page
            assert len(page["metrics"]) == 25_000 and page["next_page_token"]
            assert [m["step"] for m in page["metrics"][:3]] == [0, 1, 2]
        # A small max_results is still honoured, and the token carries on from it.
        status, page = call(c, "GET", base + "&max_results=10")
        assert [m["step"] for m in page["metrics"]] == list(range(10))
        status, rest = call(c, "GET", base + f"&page_token={page['next_page_token']}")
        assert [m["step"] for m in rest["metrics"]] == list(range(10, 25_010))
        # Concurrent reads asking for everything get (and hold) a page each.
        with ThreadPoolExecutor(6) as pool:
            answers = list(
                pool.map(lambda _: call(c, "GET", base + "&max_results=1000000000"), range(6))
            )
        assert {len(body["metrics"]) for _, body in answers} == {25_000}

        quiet_mlflow()
        from mlflow import MlflowClient

        history = MlflowClient(tracking_uri=c.url).get_metric_history(run_id, "loss")
        assert [m.step for m in history] == list(range(n))
        assert history[-1].value == (n - 1) / 7
    finally:
        c.stop()


# -- 2: a compressed upload inflates only so far ---------------------------------------------


def test_a_gzip_upload_inflating_past_the_limit_is_refused_413(tmp_path: Path) -> None:
    limit = 8 * MiB
    c = start_collector(tmp_path / "store", env={"FLIGHTLOG_UPLOAD_MAX_DECODED_BYTES": str(limit)})
    try:
        run_id = new_run(c)
        stored = tmp_path / "store" / "artifacts" / "0" / run_id / "artifacts"
        bomb = gzip.compress(b"\0" * (64 * MiB), compresslevel=9)
        assert len(bomb) < 100_000
        for path in (
            f"{PROXY}/0/{run_id}/artifacts/bomb.bin",
            f"/api/flightlog/artifacts/{run_id}/bomb.bin",
        ):
            status, body = call(c, "PUT", path, bomb, {"Content-Encoding": "gzip"})
            assert status == 413, (status, body)
            assert str(limit) in body["message"], body
            assert "FLIGHTLOG_UPLOAD_MAX_DECODED_BYTES" in body["message"], body
            assert not (stored / "bomb.bin").exists()
        assert not any(p.is_file() for p in stored.rglob("*")) if stored.exists() else True
        # Within the limit a compressed upload is stored decoded; an identity upload
        # larger than the limit is stored as sent (the limit is on inflation only).
        ok = gzip.compress(b"x" * (limit - 1))
        path = f"{PROXY}/0/{run_id}/artifacts/ok.bin"
        assert call(c, "PUT", path, ok, {"Content-Encoding": "gzip"})[0] == 200
        assert (stored / "ok.bin").stat().st_size == limit - 1
        big = b"y" * (limit + 1)
        assert call(c, "PUT", f"{PROXY}/0/{run_id}/artifacts/big.bin", big)[0] == 200
        assert (stored / "big.bin").stat().st_size == limit + 1
    finally:
        c.stop()


# -- 3: a body that stalls holding the budget is dropped while others wait -------------------


def test_a_nearly_complete_stalled_body_does_not_hold_the_budget(tmp_path: Path) -> None:
    c = start_collector(tmp_path / "store", None, "--body-timeout", "60")
    try:
        declared = 64 * MiB
        hog = socket.create_connection(("127.0.0.1", c.port))
        hog.sendall(
            b"POST /api/flightlog/ingest HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/msgpack\r\n"
            + f"Content-Length: {declared}\r\n\r\n".encode()
        )
        hog.sendall(b"\x85" + b"\0" * (declared - 18))  # 17 bytes short: then it stalls
        time.sleep(1.0)
        started = time.monotonic()
        statuses: list[int] = []
        seed = 0
        # Other writers are refused at first (the budget is held), then get through
        # after a few seconds: well before the 60 s body timeout.
        while time.monotonic() - started < 30:
            seed += 1
            statuses.append(ingest(c, batch(1000 + seed)))
            if statuses[-1] == 200:
                break
            time.sleep(0.5)
        waited = time.monotonic() - started
        assert statuses[-1] == 200, statuses
        assert set(statuses) <= {200, 503}, statuses
        assert waited < 20, waited
        with ThreadPoolExecutor(8) as pool:
            after = list(pool.map(lambda i: ingest(c, batch(5000 + i)), range(40)))
        assert after == [200] * 40
        # The hog was answered 408, and its connection is closed.
        hog.settimeout(10)
        answer = b""
        while b"closed." not in answer and (chunk := hog.recv(65536)):
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b"Connection: close" in answer, answer[:500]
        assert b"budget" in answer, answer[:500]
        hog.close()
    finally:
        c.stop()


# -- 4: headers that trickle in are cut off --------------------------------------------------


def test_slow_request_headers_are_cut_off(tmp_path: Path) -> None:
    c = start_collector(tmp_path / "store", None, "--body-timeout", "2")
    try:
        closed_after: list[float] = []

        def trickle(first_request: bool) -> None:
            s = socket.create_connection(("127.0.0.1", c.port))
            s.settimeout(0.5)
            if not first_request:
                # One whole request first: the next headers get no more time than the first.
                s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                time.sleep(0.3)
                s.recv(65536)
            started = time.monotonic()
            header = b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 400
            try:
                for byte in header:
                    s.sendall(bytes([byte]))
                    try:
                        if s.recv(1) == b"":
                            break
                    except TimeoutError:
                        pass
                    if time.monotonic() - started > 20:
                        break
            except (BrokenPipeError, ConnectionResetError):
                pass
            closed_after.append(time.monotonic() - started)
            s.close()

        threads = [threading.Thread(target=trickle, args=(i % 2 == 0,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(closed_after) == 4
        # Closed about --body-timeout after the headers began, not held while they trickle.
        assert max(closed_after) < 10, closed_after
        assert call(c, "GET", "/health")[0] == 200
    finally:
        c.stop()

"""CollectorClient: synchronous HTTP to a collector, one keep-alive connection per thread.

The SDK's reads and the agent's shipping thread both use it. It is stdlib http.client
on purpose: a request on loopback costs a few hundred microseconds and pulls in no
event loop in the training process.
"""

from __future__ import annotations

import http.client
import logging
import threading
import urllib.parse
from collections.abc import Callable
from typing import Any, BinaryIO

from flightlog.agent.sender import OK, REJECTED, RETRY, Ack, no_answer
from flightlog.core import settings
from flightlog.core.exceptions import INTERNAL_ERROR, CollectorUnavailable, RestException
from flightlog.core.wire import pack, unpack

log = logging.getLogger("flightlog.agent")

MSGPACK = "application/msgpack"
#: What to do about a 401, said wherever the SDK reports one.
TOKEN_HINT = (
    "Set FLIGHTLOG_TOKEN (or MLFLOW_TRACKING_TOKEN) to the collector's token in the "
    "environment of this process."
)
STREAM_BLOCK = 1 << 20
INGEST = "/api/flightlog/ingest"
RETRY_AFTER_MAX = 60.0  # the longest Retry-After we honour
AUTH_RETRY_AFTER = 5.0  # a refused token is retried this slowly until it is fixed


class CollectorClient:
    """Talks to one collector at ``base_url`` (``http://host:port``)."""

    def __init__(self, base_url: str, *, token: str | None = None, timeout: float = 60.0) -> None:
        parsed = urllib.parse.urlsplit(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"Not a collector URL: {base_url!r} (expected http://host:port)")
        self.base_url = base_url.rstrip("/")
        self.scheme = parsed.scheme
        self.host = parsed.hostname
        self.port = parsed.port or (443 if parsed.scheme == "https" else 80)
        self.prefix = parsed.path.rstrip("/")
        self.token = settings.TOKEN.resolve(token)
        self.timeout = timeout
        self._local = threading.local()
        # Called when the collector cannot be reached; returns a new base URL (the SDK
        # restarts a node-local collector that went idle or died).
        self.rediscover: Callable[[], str] | None = None

    def _retarget(self, base_url: str) -> None:
        parsed = urllib.parse.urlsplit(base_url)
        self.base_url = base_url.rstrip("/")
        self.host = parsed.hostname or self.host
        self.port = parsed.port or self.port
        self.reset()

    def reset(self) -> None:
        """Forget connections (after a fork the parent's socket must not be shared)."""
        self._local = threading.local()

    def _conn(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            cls = (
                http.client.HTTPSConnection
                if self.scheme == "https"
                else http.client.HTTPConnection
            )
            # 1 MiB blocks: file bodies (artifact uploads) stream in bounded memory.
            conn = cls(self.host, self.port, timeout=self.timeout, blocksize=STREAM_BLOCK)
            self._local.conn = conn
        return conn

    def request(
        self,
        method: str,
        path: str,
        body: bytes | BinaryIO | None = None,
        content_type: str = MSGPACK,
        timeout: float | None = None,
        headers: dict[str, str] | None = None,
        sink: Callable[[bytes], object] | None = None,
        on_headers: Callable[[dict[str, str]], object] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        """One HTTP exchange; raises CollectorUnavailable when no answer came back.

        ``body`` may be an open binary file (sent in 1 MiB blocks; give Content-Length in
        ``headers``). With ``sink``, a 200 answer's body is passed to it block by block
        instead of being returned, so large downloads use bounded memory; ``on_headers``
        gets its headers first (a progress bar's total is the Content-Length).
        """
        # Accept: the collector answers errors in msgpack to us, JSON to everyone else.
        hdrs = {"Content-Type": content_type, "Accept": MSGPACK, **(headers or {})}
        if self.token:
            hdrs["Authorization"] = f"Bearer {self.token}"
        start = body.tell() if body is not None and not isinstance(body, bytes) else 0
        sunk = False  # once part of a body went to the sink, a retry would duplicate it
        # One retry on a stale keep-alive connection and, independently, one restart of a
        # node-local collector that went away: a read after an idle-out meets both in turn
        # (the old connection is reset, then the port refuses).
        retried_stale = rediscovered = False
        while True:
            conn = self._conn()
            conn.timeout = timeout if timeout is not None else self.timeout
            try:
                if conn.sock is not None:
                    conn.sock.settimeout(conn.timeout)
                if body is not None and not isinstance(body, bytes):
                    body.seek(start)  # a retry resends the file from its start
                conn.request(method, self.prefix + path, body=body, headers=hdrs)
                resp = conn.getresponse()
                resp_headers = {k.lower(): v for k, v in resp.getheaders()}
                if sink is not None and resp.status == 200:
                    if on_headers is not None:
                        on_headers(resp_headers)
                    while block := resp.read(STREAM_BLOCK):
                        sunk = True
                        sink(block)
                    return resp.status, resp_headers, b""
                data = resp.read()
                return resp.status, resp_headers, data
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                self._local.conn = None
                # A keep-alive connection the server closed meanwhile: retry once on a new one.
                stale = isinstance(
                    e, (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)
                )
                if stale and not retried_stale and not sunk:
                    retried_stale = True
                    continue
                if (
                    not rediscovered
                    and self.rediscover is not None
                    and isinstance(e, ConnectionRefusedError)
                ):
                    rediscovered = True
                    try:
                        self._retarget(self.rediscover())
                    except Exception as re:
                        raise CollectorUnavailable(
                            f"collector at {self.base_url} unreachable: {e}; "
                            f"restarting it failed: {re}"
                        ) from e
                    continue
                raise CollectorUnavailable(f"collector at {self.base_url} unreachable: {e}") from e

    def call(self, method: str, timeout: float | None = None, **args: Any) -> Any:
        """Call an RPC method of the collector; raise its error as RestException."""
        try:
            status, _, data = self.request(
                "POST", f"/api/flightlog/rpc/{method}", pack(args), timeout=timeout
            )
        except CollectorUnavailable as e:
            raise RestException(str(e), INTERNAL_ERROR, 503) from e
        return decode_reply(status, data)

    def healthy(self, timeout: float = 2.0) -> dict[str, Any] | None:
        """The collector's /health answer, or None when it does not answer."""
        try:
            status, _, data = self.request("GET", "/health", timeout=timeout)
        except (TimeoutError, CollectorUnavailable):
            return None
        if status != 200:
            return None
        try:
            import orjson

            body = orjson.loads(data)
        except ValueError:
            return None
        return body if isinstance(body, dict) else None


def decode_reply(status: int, data: bytes) -> Any:
    """Unpack an RPC answer or raise the error it carries."""
    try:
        body = unpack(data) if data else None
    except Exception:
        body = None
        if status < 400:
            raise RestException(
                f"Collector sent an unreadable answer ({len(data)} bytes)", INTERNAL_ERROR, status
            ) from None
    if status >= 400:
        if isinstance(body, dict) and "message" in body:
            message = str(body["message"])
            if status == 401:
                message += f" {TOKEN_HINT}"
            raise RestException(message, str(body.get("error_code", INTERNAL_ERROR)), status)
        text = data[:300].decode("utf-8", "replace") if data else ""
        raise RestException(f"Collector answered HTTP {status}: {text}", INTERNAL_ERROR, status)
    return body


class HttpSender:
    """The :class:`~flightlog.agent.sender.Sender` that POSTs batches to a collector."""

    def __init__(self, client: CollectorClient) -> None:
        self.client = client

    def send(self, body: bytes, timeout: float | None = None) -> Ack:
        """POST one encoded batch to the ingest endpoint, once, and classify the answer.

        401/403 (a wrong or missing token) count as RETRY: the batch is kept, since the
        same bytes go through once the token is fixed. 408, 429 and 5xx are RETRY, with
        the Retry-After the collector sent; any other 4xx is REJECTED.
        """
        try:
            status, headers, data = self.client.request("POST", INGEST, body, timeout=timeout)
        except CollectorUnavailable as e:
            log.debug("flightlog agent: %s", e)
            return no_answer(str(e))
        if status == 200:
            try:
                reply = unpack(data) if data else {}
            except Exception:
                reply = {}
            errors = reply.get("errors") if isinstance(reply, dict) else None
            return Ack(OK, 200, list(errors) if isinstance(errors, list) else [], 0.0, "")
        message = f"HTTP {status}: {_reply_message(data)}"
        if status in (401, 403):
            return Ack(RETRY, status, [], AUTH_RETRY_AFTER, message)
        if status in (408, 429) or status >= 500:
            return Ack(RETRY, status, [], parse_retry_after(headers.get("retry-after")), message)
        error = {
            "op": "batch",
            "error_code": "BAD_REQUEST",
            "message": f"Collector rejected a batch ({message})",
        }
        return Ack(REJECTED, status, [error], 0.0, message)


def parse_retry_after(raw: str | None) -> float:
    """Seconds from a Retry-After header, capped; 0 when absent or an HTTP date."""
    if not raw:
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        return 0.0  # an HTTP date: rare from our collector; the backoff still applies
    return min(max(value, 0.0), RETRY_AFTER_MAX) if value == value else 0.0


def _reply_message(data: bytes) -> str:
    try:
        reply = unpack(data)
        if isinstance(reply, dict) and "message" in reply:
            return str(reply["message"])
    except Exception:
        pass
    return data[:500].decode("utf-8", "replace")

"""Serving an aiohttp application as a process: signals, the port file, a port in use.

The collector (``flightlog collector``) and the node sidecar (``flightlog collector
--upstream``, :mod:`flightlog.agent.forward`) run their applications the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from aiohttp import web

from flightlog.core.uris import is_loopback

log = logging.getLogger("flightlog.collector")
#: Set it to stop the application (SIGTERM/SIGINT do; so does the collector's idle watch).
STOP = web.AppKey("stop", asyncio.Event)
MAX_REQUEST_LINE = 1024 * 1024  # bytes of a request line or header; past it aiohttp answers 400


def check_exposure(host: str, token: str | None) -> None:
    """Refuse to serve beyond this machine without a token."""
    if not is_loopback(host) and not token:
        raise SystemExit(
            f"flightlog collector: binding {host} exposes the store beyond this "
            "machine; pass --token or set FLIGHTLOG_TOKEN."
        )


def write_port_file(path: str, payload: dict[str, object]) -> None:
    """Write ``payload`` as JSON to ``path`` atomically."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload))
    os.replace(tmp, target)


async def run_app(
    app: web.Application,
    host: str,
    port: int,
    label: str,
    port_file: str | None,
    announce_ui: bool = False,
    **runner_options: Any,
) -> None:
    """Serve ``app`` on host:port until SIGTERM/SIGINT (or the app sets STOP).

    ``runner_options`` go to aiohttp's ``AppRunner`` (the collector turns off aiohttp's
    body decompression and bounds keep-alive idling).
    """
    stop = asyncio.Event()
    app[STOP] = stop
    # Long request lines: MLflow's UI and clients send GETs with hundreds of repeated
    # run_id parameters (1,000 run ids are about 40 kB); aiohttp's default is 8,190 bytes.
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        max_line_size=MAX_REQUEST_LINE,
        max_field_size=MAX_REQUEST_LINE,
        **runner_options,
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    server = getattr(site, "_server", None)
    if server is not None and server.sockets:
        port = server.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    if port_file:
        payload = {"pid": os.getpid(), "host": host, "port": port, "store": label}
        write_port_file(port_file, payload)
    log.info("flightlog collector serving %s on http://%s:%s", label, host, port)
    print(
        f"flightlog collector: serving {label} on http://{host}:{port}",
        file=sys.stderr,
        flush=True,
    )
    if announce_ui:  # `flightlog ui`: the page's URL on stdout
        shown = f"[{host}]" if ":" in host else host
        print(f"flightlog UI: http://{shown}:{port}/", flush=True)
    try:
        await stop.wait()
    finally:
        if port_file:
            with contextlib.suppress(FileNotFoundError, ValueError, OSError):
                current = json.loads(Path(port_file).read_text())
                if current.get("pid") == os.getpid():
                    Path(port_file).unlink()
        await runner.cleanup()


def serve_until_stopped(serving: Coroutine[Any, Any, None], host: str, port: int) -> int:
    """Run a serving coroutine; a port already in use is one line on stderr and status 1."""
    try:
        asyncio.run(serving)
    except OSError as e:
        if e.errno != errno.EADDRINUSE:
            raise
        print(
            f"flightlog collector: port {port} on {host} is already in use "
            "(another collector?); choose another with --port, or --port 0 for a free one",
            file=sys.stderr,
        )
        return 1
    return 0

"""What the UI's browser tests, screenshots and benchmark share: Debian's chromium
launched through Playwright, and a collector process on a store directory.

Playwright's own browser download cannot work on these machines, so the browser is
the ``chromium`` package found on PATH (``apt-get install chromium``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

#: Flags for a headless chromium in a container: no sandbox (root), no GPU, nothing that
#: reaches the network on its own.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def chromium_path() -> str | None:
    """Debian's chromium, or None when it is not installed."""
    return shutil.which("chromium")


def launch_chromium(playwright: Any) -> Any:
    """A headless chromium browser from a started ``sync_playwright()``."""
    path = chromium_path()
    if path is None:
        raise SystemExit("chromium is not on PATH: apt-get install chromium")
    return playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)


@contextmanager
def collector(store_dir: Path, *extra: str) -> Iterator[str]:
    """A collector process serving ``store_dir`` on a free loopback port; yields its URL."""
    store_dir.mkdir(parents=True, exist_ok=True)
    port_file = store_dir / "ui-harness-port.json"
    port_file.unlink(missing_ok=True)
    args = ["--store", str(store_dir), "--port", "0", "--port-file", str(port_file), *extra]
    proc = subprocess.Popen(
        [sys.executable, "-m", "flightlog.collector", *args],
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not port_file.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the collector did not start")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{json.loads(port_file.read_text())['port']}"
    finally:
        proc.terminate()
        proc.wait(timeout=60)

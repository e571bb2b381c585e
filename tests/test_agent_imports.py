"""The training process does not import the collector's server stack.

The agent asks whether its collector is on a loopback address (ring references) from
``core.loopback``, not ``core.serving``, which imports asyncio and aiohttp's server:
~210 ms more at the first start_run, measured here, and a script named like a stdlib
package asyncio needs (``concurrent.py``) broke (tests/test_embedded.py)."""

from __future__ import annotations

import subprocess
import sys


def test_the_agent_imports_neither_asyncio_nor_aiohttp() -> None:
    code = (
        "import sys, flightlog.agent.worker, flightlog.fluent; "
        "print(sorted(m for m in ('asyncio', 'aiohttp') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

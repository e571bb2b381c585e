"""Loopback hosts: what keeps a server, or the collector an agent talks to, on this machine.

Apart from ``core.serving`` (which imports asyncio and aiohttp's server) so that the
training process can ask it without importing either: the agent decides from it whether
its collector can read the metric ring by reference.
"""

from __future__ import annotations

import ipaddress

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine (a loopback name, or any of 127.0.0.0/8 and ::1)."""
    try:
        return host in LOOPBACK or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False

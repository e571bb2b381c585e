"""The process's exit budget: one deadline that every flush and close shares.

The excepthook, atexit and signal paths start the exit with :func:`begin_exit`; from
then on every wait of every agent is cut to what is left of one budget, so that ending
runs and closing agents can never hang the exit, whatever state the collector is in.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

_exit_deadline: float | None = None


def begin_exit(budget: float) -> None:
    """Start the process's exit: from now on every flush shares one time budget.

    A second call can only shorten the deadline, never extend it.
    """
    global _exit_deadline
    deadline = time.monotonic() + budget
    if _exit_deadline is None or deadline < _exit_deadline:
        _exit_deadline = deadline


@contextlib.contextmanager
def time_budget(seconds: float) -> Iterator[None]:
    """Bound every flush made in the block by ``seconds`` in all, then lift the bound.

    For a signal whose handler may let the program go on: ending runs must not hang,
    but what comes after is not the exit.
    """
    global _exit_deadline
    saved = _exit_deadline
    begin_exit(seconds)
    try:
        yield
    finally:
        _exit_deadline = saved


def bounded(timeout: float | None) -> float | None:
    """``timeout`` cut to what is left of the exit budget (unchanged outside an exit)."""
    if _exit_deadline is None:
        return timeout
    left = max(0.0, _exit_deadline - time.monotonic())
    return left if timeout is None else min(timeout, left)

"""SIGTERM and Ctrl-C: end the process's runs KILLED, then do what the signal would have done.

The SDK installs these handlers on the first ``start_run`` in the main thread (signal
handlers can only be set there), in front of whatever handler the program had:

- SIGTERM (and SIGINT set to the default action), no handler of the program's: every
  active run ends KILLED, what the collector has not acknowledged within
  ``FLIGHTLOG_SIGNAL_FLUSH_TIMEOUT`` seconds (default 10) is left in the spool, and
  the signal is raised again with its default action, so the process still dies of
  SIGTERM (exit status -15 to its parent), as a scheduler expects.
- the program's own handler (a Python function): the runs end KILLED within the same
  bounded time, then that handler runs, and whatever it does (exit, checkpoint and go
  on) goes; a run that carries on after it is no longer the active run.
- Ctrl-C under Python's own handler: KeyboardInterrupt is raised as usual. The runs end
  KILLED on its way out (the ``with start_run()`` block, or the excepthook when it is
  uncaught), within the exit budget, while a program that catches KeyboardInterrupt to
  stop training early keeps its run, as it would without flightlog.
- a signal the program ignores (SIG_IGN), or one handled outside Python: left alone.

A second signal while the first is being handled gets the default action at once.
``FLIGHTLOG_SIGNAL_HANDLERS=0`` leaves signals entirely to the program.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from flightlog.agent.exit_budget import begin_exit, time_budget
from flightlog.core import settings

SIGNALS = (signal.SIGTERM, signal.SIGINT)
KILLED = "KILLED"

_previous: dict[int, Any] = {}  # signal -> the handler we stand in front of
_handling = False
_end_runs: Callable[[str], None] | None = None
_close_agents: Callable[[], None] | None = None


def enabled() -> bool:
    """Whether the SDK may install its handlers (FLIGHTLOG_SIGNAL_HANDLERS, default on)."""
    return settings.SIGNAL_HANDLERS.get()


def install(end_runs: Callable[[str], None], close_agents: Callable[[], None]) -> bool:
    """Put flightlog's handlers in front of the program's; idempotent.

    ``end_runs(status)`` ends every active run; ``close_agents()`` delivers or spools
    what is queued before the process dies. Returns whether anything is installed;
    outside the main thread nothing can be, and the next call tries again.
    """
    global _end_runs, _close_agents
    if not enabled() or threading.current_thread() is not threading.main_thread():
        return bool(_previous)
    _end_runs, _close_agents = end_runs, close_agents
    for sig in SIGNALS:
        if sig in _previous:
            continue
        current = signal.getsignal(sig)
        if current is None or current == signal.SIG_IGN:
            continue  # set outside Python, or ignored on purpose: not ours to change
        signal.signal(sig, _handle)
        _previous[sig] = current
    return bool(_previous)


def uninstall() -> None:
    """Put the program's handlers back (tests; a program that wants its signals back)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig, previous in list(_previous.items()):
        if signal.getsignal(sig) is _handle:
            signal.signal(sig, previous)
        del _previous[sig]


def _die_of(signum: int) -> None:
    """Take the signal's default action: for SIGTERM and SIGINT, end the process."""
    signal.signal(signum, signal.SIG_DFL)
    sys.stderr.flush()
    os.kill(os.getpid(), signum)
    # Delivered on the way back from kill(); if it was blocked, exit as the shell would.
    os._exit(128 + signum)


def _handle(signum: int, frame: FrameType | None) -> None:
    global _handling
    previous = _previous.get(signum, signal.SIG_DFL)
    if signum == signal.SIGINT and previous is signal.default_int_handler:
        # KeyboardInterrupt: runs end KILLED as it unwinds, unless the program catches it.
        previous(signum, frame)
        return
    if _handling:
        _die_of(signum)  # a second signal: the user means it
    _handling = True
    try:
        timeout = settings.SIGNAL_FLUSH_TIMEOUT.get()
        name = signal.Signals(signum).name
        if callable(previous):
            # The program's handler decides what happens next (it may go on), so the
            # budget is only for ending the runs, not the start of the process's exit.
            with time_budget(timeout):
                _run(_end_runs, KILLED, name)
        else:
            begin_exit(timeout)
            _run(_end_runs, KILLED, name)
            _run(_close_agents, None, name)
    finally:
        _handling = False
    if callable(previous):
        previous(signum, frame)
    else:
        _die_of(signum)


def _run(fn: Callable[..., None] | None, arg: str | None, name: str) -> None:
    if fn is None:
        return
    try:
        fn(arg) if arg is not None else fn()
    except Exception as e:  # the signal must take its course whatever happens here
        with contextlib.suppress(Exception):
            print(f"flightlog: on {name}: {e}", file=sys.stderr)

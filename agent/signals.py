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

The handler runs on the main thread between two bytecodes of whatever it interrupted,
which may hold a lock that is not reentrant (an ``Event``'s, the outbox's, one of
the program's). Ending runs and closing agents take such locks, so the handler does
not do that work itself: a helper thread does it, and the handler waits for it on a
lock of its own, for the flush timeout and a second more. If the helper is stuck
behind the interrupted frame, the signal still takes its course when that wait ends
(batches already in the outbox stay in the spool; points still in the queue are lost):
the handler can never hang the process.

A ``multiprocessing`` child (a Pool worker, forked or spawned) has one more hole: a
signal that lands just before the main thread blocks in a call that no signal of its
own interrupts (the pool's queue lock, ``sem_wait``) is caught by Python's C-level
handler, which only marks it pending; the main thread then blocks, never reaches the
next bytecode that would run the handler, and the process lives on
(``Pool.terminate()`` waits for it forever; seen about once in 300 terminations under
load). So in such a child (set up after a fork, or when a spawned child installs the
handlers) the C-level handler also writes the signal's number to a pipe
(``signal.set_wakeup_fd``), and a watchdog thread that reads it sends the signal again
to the main thread when the handler has not started within ``NUDGE_AFTER`` seconds:
the blocked call is interrupted and the handler runs. That nudge never counts as the
"second signal" that means die at once. Where the program has a wakeup fd of its own
(asyncio), it is left alone and there is no watchdog.
"""

from __future__ import annotations

import _thread
import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from flightlog.agent.exit_budget import begin_exit, time_budget
from flightlog.core import settings

SIGNALS = (signal.SIGTERM, signal.SIGINT)
KILLED = "KILLED"
# Seconds the handler waits for its helper beyond the flush timeout: every wait the
# helper makes is already cut to that budget, so past it the helper is stuck.
HELPER_GRACE = 1.0

# Seconds a forked child's watchdog gives the handler to start before it sends the
# signal again to the main thread (see the module docstring).
NUDGE_AFTER = 0.5

_previous: dict[int, Any] = {}  # signal -> the handler we stand in front of
_handling = False
_entered = 0  # times the handler was entered (the watchdog compares)
_nudged = False  # the watchdog sent the signal again; the next delivery is that one
_nudge_mark = 0  # ``_entered`` when it did
_wakeup_w = -1  # our wakeup pipe's write end (a forked child's), or -1
_fork_hook = False
_end_runs: Callable[[str], None] | None = None
_close_agents: Callable[[], None] | None = None
_forget_ended: Callable[[], None] | None = None


def enabled() -> bool:
    """Whether the SDK may install its handlers (FLIGHTLOG_SIGNAL_HANDLERS, default on)."""
    return settings.SIGNAL_HANDLERS.get()


def install(
    end_runs: Callable[[str], None],
    close_agents: Callable[[], None],
    forget_ended: Callable[[], None] | None = None,
) -> bool:
    """Put flightlog's handlers in front of the program's; idempotent.

    ``end_runs(status)`` ends every active run and ``close_agents()`` delivers or
    spools what is queued before the process dies; both run on a helper thread.
    ``forget_ended()`` runs on the main thread before the program's own handler, to
    drop what that thread still holds of the runs the helper ended; it must take no
    lock. Returns whether anything is installed; outside the main thread nothing can
    be, and the next call tries again.
    """
    global _end_runs, _close_agents, _forget_ended
    if not enabled() or threading.current_thread() is not threading.main_thread():
        return bool(_previous)
    _end_runs, _close_agents, _forget_ended = end_runs, close_agents, forget_ended
    for sig in SIGNALS:
        if sig in _previous:
            continue
        current = signal.getsignal(sig)
        if current is None or current == signal.SIG_IGN:
            continue  # set outside Python, or ignored on purpose: not ours to change
        signal.signal(sig, _handle)
        _previous[sig] = current
    global _fork_hook
    if _previous and not _fork_hook and hasattr(os, "register_at_fork"):
        _fork_hook = True
        os.register_at_fork(after_in_child=_watch_in_child)
    if _previous and _wakeup_w == -1 and _multiprocessing_child():
        # A spawn or forkserver worker (or a forked one whose parent never installed
        # us) blocks on the pool's queue lock just the same: it gets the watchdog too.
        _watch_in_child()
    return bool(_previous)


def _multiprocessing_child() -> bool:
    """Whether this process is a ``multiprocessing`` child (a Pool worker, say).

    Only looked up when multiprocessing is already imported: a child has it, and the
    SDK must not import it for a plain script."""
    mp = sys.modules.get("multiprocessing")
    return mp is not None and mp.parent_process() is not None


def _watch_in_child() -> None:
    """In a multiprocessing child: a wakeup pipe and the watchdog that reads it."""
    global _wakeup_w, _handling, _nudged
    _handling = _nudged = False  # the parent's state is not this process's
    if not _previous or threading.current_thread() is not threading.main_thread():
        return
    try:
        r, w = os.pipe()
    except OSError:
        return
    try:
        os.set_blocking(w, False)  # the C-level handler must never block on it
        old = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    except (OSError, ValueError):
        os.close(r)
        os.close(w)
        return
    if old not in (-1, _wakeup_w):  # the program's own (an asyncio loop's): leave it
        signal.set_wakeup_fd(old)
        os.close(r)
        os.close(w)
        return
    if _wakeup_w != -1:  # the parent's pipe (its watchdog reads it): not ours to write
        with contextlib.suppress(OSError):
            os.close(_wakeup_w)
    _wakeup_w = w
    try:
        _thread.start_new_thread(_watchdog, (r, _thread.get_ident()))
    except RuntimeError:
        signal.set_wakeup_fd(-1)


def _watchdog(r: int, main: int) -> None:
    keep_off_this_thread()
    watched = {int(s) for s in _previous}
    while True:
        try:
            data = os.read(r, 64)
        except InterruptedError:
            continue
        except OSError:
            return
        if not data:
            return
        mark = _entered
        for signum in dict.fromkeys(b for b in data if b in watched):
            _nudge_if_stuck(signum, mark, main)


def _nudge_if_stuck(signum: int, mark: int, main: int) -> None:
    """Send ``signum`` again to the main thread if its handler has not started."""
    global _nudged, _nudge_mark
    deadline = time.monotonic() + NUDGE_AFTER
    while time.monotonic() < deadline:
        if _handling or _entered != mark:
            return
        time.sleep(0.02)  # another thread's progress: nothing to wait on but time
    if _handling or _entered != mark:
        return
    _nudge_mark, _nudged = mark, True
    with contextlib.suppress(OSError, ValueError):
        signal.pthread_kill(main, signum)


def keep_off_this_thread() -> None:
    """Block SIGTERM and SIGINT in the calling thread (one flightlog started).

    A process-directed signal goes to any thread that does not block it. One that
    lands on a background thread only sets Python's flag: the main thread, blocked in
    a call no signal of its own interrupts (a Pool worker waiting for its queue's
    lock), never runs the handler, and the process, which the default action would
    have killed, lives on. Blocked here, the signal goes to the main thread, whose
    blocking call it interrupts.
    """
    with contextlib.suppress(AttributeError, OSError, ValueError):  # no pthread_sigmask
        signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)


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
    # Not fatal if the interrupted frame was writing to stderr (a reentrant call).
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    os.kill(os.getpid(), signum)
    # Delivered on the way back from kill(); if it was blocked, exit as the shell would.
    os._exit(128 + signum)


def _handle(signum: int, frame: FrameType | None) -> None:
    global _handling, _entered, _nudged
    if _nudged:
        _nudged = False
        if _handling or _entered != _nudge_mark:
            return  # the watchdog's nudge for a signal the handler already took
    _entered += 1
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
                _run_off_frame([(_end_runs, KILLED)], timeout + HELPER_GRACE, name)
        else:
            begin_exit(timeout)
            steps = [(_end_runs, KILLED), (_close_agents, None)]
            _run_off_frame(steps, timeout + HELPER_GRACE, name)
        if callable(previous):
            _run(_forget_ended, None, name)
    finally:
        _handling = False
    if callable(previous):
        previous(signum, frame)
    else:
        _die_of(signum)


Step = tuple[Callable[..., None] | None, str | None]


def _run_off_frame(steps: list[Step], wait: float, name: str) -> bool:
    """Run ``steps`` in order on a helper thread; wait at most ``wait`` seconds for them.

    Only primitives made here are waited on (a raw ``_thread`` lock and thread, not
    ``threading.Thread``, whose start takes a module lock the interrupted frame may
    hold), so this returns in bounded time whatever the interrupted frame holds.
    Returns whether the steps finished; if not, the helper is left behind (it ends
    with the process, or finishes its steps late if the program goes on).
    """
    done = _thread.allocate_lock()
    done.acquire()

    def work() -> None:
        keep_off_this_thread()  # a second signal goes to the main thread: it dies then
        try:
            for fn, arg in steps:
                _run(fn, arg, name)
        finally:
            done.release()

    try:
        _thread.start_new_thread(work, ())
    except RuntimeError as e:  # no thread to be had (interpreter shutting down)
        _say(f"flightlog: on {name}: runs not ended: {e}")
        return False
    if done.acquire(timeout=wait):
        return True
    _say(
        f"flightlog: on {name}: ending runs and delivering what was logged did not finish "
        f"within {wait:g}s (the code the signal interrupted holds a lock this needs); "
        "batches not acknowledged stay in the spool, points not yet batched are lost"
    )
    return False


def _say(message: str) -> None:
    # Writing may fail too (stderr closed, or the interrupted frame was writing to it).
    with contextlib.suppress(Exception):
        print(message, file=sys.stderr, flush=True)


def _run(fn: Callable[..., None] | None, arg: str | None, name: str) -> None:
    if fn is None:
        return
    try:
        fn(arg) if arg is not None else fn()
    except Exception as e:  # the signal must take its course whatever happens here
        _say(f"flightlog: on {name}: {e}")

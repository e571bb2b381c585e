"""The fluent API: module functions that act on the active run.

The active-run stack is thread-local, as in MLflow: a run started in one thread is
the active run of that thread. A thread with no run of its own (a data-loader or
callback thread) logs into the run most recently started in the process, rather than
silently starting a new one.

``log_metric`` is the hot path: a thread-local lookup (the run's route into the
agent's metric ring), a dict lookup for the key's series index, a clock read, one
``next()`` that reserves a slot and one ``pack_into`` of the record. Everything else
happens in the agent's thread (``flightlog.agent.ring``, ``flightlog.agent.worker``).
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import time
from types import TracebackType
from typing import Any

from flightlog import context as _context
from flightlog import media, search
from flightlog.agent import signals as _signals
from flightlog.agent.exit_budget import begin_exit
from flightlog.agent.ring import RECORD_FORMAT as _RECORD_FORMAT
from flightlog.client import MlflowClient
from flightlog.context import flush_all
from flightlog.core import settings
from flightlog.core import validation as v
from flightlog.core.entities import Experiment, Metric, Param, Run, RunStatus, RunTag, ViewType
from flightlog.core.exceptions import INVALID_PARAMETER_VALUE, MlflowException

log = logging.getLogger("flightlog")

_tls = threading.local()  # .stack: list[ActiveRun]; .top: the stack top's route (_route)
_process_top: list[ActiveRun] = []  # runs started in any thread, newest last
# Reentrant: the SIGTERM handler ends runs on the main thread, which it may have
# interrupted inside one of these blocks.
_state_lock = threading.RLock()
_active_experiment_id: str | None = None
_last_active_run_id: str | None = None
_seen_keys = v._seen_metric_keys
_pack_into = _RECORD_FORMAT.pack_into
_time = time.time
START_RUN_SYNC_TIMEOUT = 10.0


class ActiveRun(Run):
    """The run start_run() returns; a context manager that ends the run on exit.

    Leaving the block normally ends it FINISHED; an exception ends it FAILED and
    propagates (KeyboardInterrupt ends it KILLED).
    """

    def __init__(self, run: Run, client: MlflowClient) -> None:
        super().__init__(run.info, run.data, run.inputs)
        self._client = client
        self._samplers: list[Any] = []
        # A forked child logs to the run it inherited, but the run stays the parent's:
        # the child's exit or a signal to it (Pool.terminate) must not end it.
        self._pid = os.getpid()
        self._ended = False

    def __enter__(self) -> ActiveRun:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            status = RunStatus.FINISHED
        elif issubclass(exc_type, KeyboardInterrupt):
            status = RunStatus.KILLED
        else:
            status = RunStatus.FAILED
        if exc_type is None:
            end_run(status, _run=self)
        else:
            # Do not let a reporting error hide the user's exception.
            try:
                end_run(status, _run=self)
            except MlflowException:
                pass


def _stack() -> list[ActiveRun]:
    stack: list[ActiveRun] | None = getattr(_tls, "stack", None)
    if stack is None:
        stack = _tls.stack = []
    return stack


def _sync_top() -> None:
    stack = _stack()
    if stack:
        top = stack[-1]
        _tls.top = _route(top.info.run_id, top._client.ctx.agent)
    elif hasattr(_tls, "top"):
        del _tls.top


# A route: (run id, agent, key -> series index of the run in the agent's ring, the
# ring's slot reservation, its map, the ring). Without a ring (turned off, an unwritable
# spool, a free-threaded build's locked ring) the key table is this empty one, never
# filled, so every point takes the general path (``_log_general``).
class _NoKeys(dict[str, int]):
    """The key table of a route without a ring: every key is missing, without the cost
    of raising KeyError on each call."""

    def __missing__(self, key: str) -> None:
        return None


_NO_KEYS: dict[str, int] = _NoKeys()
Route = tuple[str, Any, dict[str, int], Any, Any, Any]


def _route(run_id: str, agent: Any) -> Route:
    ring = agent.metric_ring()
    if ring is None or ring.locked:
        # (A locked ring stays in the route, so _refresh_route sees it is current.)
        return (run_id, agent, _NO_KEYS, None, None, ring)
    return (run_id, agent, ring.keys_of(run_id), ring.slots, ring.mm, ring)


# The thread-local dicts of threads that log into another thread's run (a data loader,
# a callback thread) and keep its route (``_top_route``): dropped whenever the process's
# runs change, so such a thread pays the route lookup once per change, not per call.
_borrowers: list[dict[str, Any]] = []


def _top_route() -> Route:
    route = _route(*_top_or_autostart())
    if not getattr(_tls, "stack", None):
        with _state_lock:
            # Kept only if it is still the process's newest run (one may have ended
            # since it was looked up); under the lock that changes drop it.
            if _process_top and _process_top[-1].info.run_id == route[0]:
                _tls.top = route
                _borrowers.append(_tls.__dict__)
    return route


def _process_runs_changed() -> None:
    """The process's newest run changed: threads that borrowed a route look it up again
    (called with ``_state_lock`` held)."""
    for d in _borrowers:
        d.pop("top", None)
    _borrowers.clear()


def _current() -> ActiveRun | None:
    stack = _stack()
    if stack:
        return stack[-1]
    with _state_lock:
        return _process_top[-1] if _process_top else None


def _top_or_autostart() -> tuple[str, Any]:
    run = _current()
    if run is None:
        run = start_run()
    return run.info.run_id, run._client.ctx.agent


# -- experiments -------------------------------------------------------------------------


def create_experiment(
    name: str, artifact_location: str | None = None, tags: dict[str, Any] | None = None
) -> str:
    """Create an experiment and return its id."""
    return MlflowClient().create_experiment(name, artifact_location, tags)


def set_experiment(
    experiment_name: str | None = None, experiment_id: str | None = None
) -> Experiment:
    """Make an experiment active, creating it by name if it does not exist."""
    global _active_experiment_id
    if (experiment_name is None) == (experiment_id is None):
        raise MlflowException(
            "Pass exactly one of experiment_name and experiment_id.", INVALID_PARAMETER_VALUE
        )
    client = MlflowClient()
    if experiment_id is not None:
        exp = client.get_experiment(str(experiment_id))
    else:
        assert experiment_name is not None
        found = client.get_experiment_by_name(experiment_name)
        if found is None:
            try:
                client.create_experiment(experiment_name)
            except MlflowException as e:  # another process created it meanwhile
                if e.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
            found = client.get_experiment_by_name(experiment_name)
            assert found is not None
        exp = found
    if exp.lifecycle_stage != "active":
        raise MlflowException(
            f"Cannot set a deleted experiment {exp.name!r} as the active experiment. "
            "Restore it with restore_experiment() or use another name.",
            "INVALID_PARAMETER_VALUE",
        )
    _active_experiment_id = exp.experiment_id
    return exp


def get_experiment(experiment_id: str) -> Experiment:
    """An experiment by id."""
    return MlflowClient().get_experiment(experiment_id)


def get_experiment_by_name(name: str) -> Experiment | None:
    """An experiment by name, or None."""
    return MlflowClient().get_experiment_by_name(name)


def set_experiment_tag(key: str, value: Any) -> None:
    """Set a tag on the current experiment."""
    client = MlflowClient()
    client.set_experiment_tag(_resolve_experiment_id(), key, value)


def set_experiment_tags(tags: dict[str, Any]) -> None:
    """Set several tags on the current experiment."""
    client = MlflowClient()
    client.set_experiment_tags(_resolve_experiment_id(), tags)


def delete_experiment_tag(key: str) -> None:
    """Delete a tag of the current experiment."""
    client = MlflowClient()
    client.delete_experiment_tag(_resolve_experiment_id(), key)


def restore_experiment(experiment_id: str) -> None:
    """Restore a deleted experiment (and its runs)."""
    MlflowClient().restore_experiment(experiment_id)


def restore_run(run_id: str) -> None:
    """Restore a deleted run."""
    MlflowClient().restore_run(run_id)


def is_tracking_uri_set() -> bool:
    """True when a tracking URI was set (``set_tracking_uri`` or the environment)."""
    from flightlog.core import settings

    return _context._tracking_uri is not None or settings.TRACKING_URI.get() is not None


def get_parent_run(run_id: str) -> Run | None:
    """The parent run of a nested run, or None."""
    return MlflowClient().get_parent_run(run_id)


def delete_experiment(experiment_id: str) -> None:
    """Mark an experiment deleted."""
    MlflowClient().delete_experiment(experiment_id)


def _resolve_experiment_id() -> str:
    """The experiment for a run started without one: set_experiment's, else the environment's."""
    if _active_experiment_id is not None:
        return _active_experiment_id
    name = settings.EXPERIMENT_NAME.get()
    if name:
        return set_experiment(name).experiment_id
    return settings.EXPERIMENT_ID.get() or "0"


# -- runs --------------------------------------------------------------------------------


def start_run(
    run_id: str | None = None,
    experiment_id: str | None = None,
    run_name: str | None = None,
    nested: bool = False,
    parent_run_id: str | None = None,
    tags: dict[str, Any] | None = None,
    description: str | None = None,
    log_system_metrics: bool | None = None,
) -> ActiveRun:
    """Start a run (or resume ``run_id``) and make it this thread's active run.

    Use as a context manager: the run ends FINISHED, or FAILED if the block raises.
    With an active run, pass ``nested=True`` to start a child run; it records the
    parent in the ``mlflow.parentRunId`` tag.
    """
    global _last_active_run_id
    _install_process_hooks()
    # SIGTERM and Ctrl-C end the runs KILLED (flightlog.agent.signals); main thread only.
    _signals.install(_end_runs_at_exit, _context._at_exit, _forget_ended_runs)
    stack = _stack()
    if stack and not nested:
        raise MlflowException(
            f"Run with UUID {stack[-1].info.run_id} is already active. To start a nested run, "
            "call start_run with nested=True",
            INVALID_PARAMETER_VALUE,
        )
    client = MlflowClient()
    parent = parent_run_id or (stack[-1].info.run_id if stack and nested else None)
    if run_id is not None:
        v.validate_run_id(run_id)
        run = client.get_run(run_id)
        if run.info.lifecycle_stage != "active":
            raise MlflowException(
                f"Cannot start run with ID {run_id} because it is in the deleted state.",
                INVALID_PARAMETER_VALUE,
            )
        client.update_run(run_id, RunStatus.RUNNING, run_name)
        if tags:
            client.log_batch(run_id, tags=[RunTag(k, val) for k, val in tags.items()])
        run.info.status = RunStatus.RUNNING
    else:
        exp_id = str(experiment_id) if experiment_id is not None else _resolve_experiment_id()
        all_tags = dict(tags or {})
        if parent:
            all_tags["mlflow.parentRunId"] = parent
        if description:
            all_tags["mlflow.note.content"] = description
        run = client.create_run(exp_id, tags=all_tags, run_name=run_name)
        # As with MLflow, the run exists in the store when start_run returns (a forked
        # worker or another process may log to it at once), unless the collector is away,
        # in which case the create waits in the queue with everything else.
        agent = client.ctx.agent
        if agent.reachable:
            agent.flush(START_RUN_SYNC_TIMEOUT, tell_outage=False)
    active = ActiveRun(run, client)
    stack.append(active)
    with _state_lock:
        _process_top.append(active)
        _process_runs_changed()
    _sync_top()
    _last_active_run_id = active.info.run_id
    _start_system_metrics(active, log_system_metrics)
    return active


def _start_system_metrics(run: ActiveRun, wanted: bool | None) -> None:
    try:
        from flightlog.agent import system
    except ImportError:
        return
    starter = getattr(system, "start_for_run", None)
    if starter is None:
        return
    sampler = starter(run.info.run_id, run._client.ctx.agent, wanted)
    if sampler is not None:
        run._samplers.append(sampler)


def end_run(status: str = RunStatus.FINISHED, *, _run: ActiveRun | None = None) -> None:
    """End the active run (or the given one) and wait until all it logged is durable."""
    stack = _stack()
    run = _run or (stack[-1] if stack else None)
    if run is None:
        return
    if run in stack:
        # Children left open end with their parent.
        while stack and stack[-1] is not run:
            end_run(status, _run=stack[-1])
        stack.pop()
    run._ended = True
    with _state_lock:
        if run in _process_top:
            _process_top.remove(run)
            _process_runs_changed()
    _sync_top()
    for sampler in run._samplers:
        sampler.stop()
    run._samplers.clear()
    try:
        media.flush()  # the run's background uploads land before it ends
    except Exception as e:
        log.error("flightlog: an artifact upload in the background failed: %s", e)
    run._client.set_terminated(run.info.run_id, status)


def active_run() -> ActiveRun | None:
    """This thread's active run, or None."""
    stack = _stack()
    return stack[-1] if stack else None


def last_active_run() -> Run | None:
    """The active run, or else the run most recently started in this process."""
    run = active_run()
    if run is not None:
        return MlflowClient().get_run(run.info.run_id)
    if _last_active_run_id is None:
        return None
    return MlflowClient().get_run(_last_active_run_id)


def get_run(run_id: str) -> Run:
    """A run by id, with params, tags and latest metrics."""
    return MlflowClient().get_run(run_id)


def delete_run(run_id: str) -> None:
    """Mark a run deleted."""
    MlflowClient().delete_run(run_id)


# -- logging -----------------------------------------------------------------------------


def log_metric(
    key: str,
    value: float,
    step: int | None = None,
    timestamp: int | None = None,
    run_id: str | None = None,
    synchronous: bool | None = None,
) -> None:
    """Log a metric point to the active run (or ``run_id``). Returns after one record
    is written to the agent's memory-mapped metric ring (see the module docstring)."""
    try:
        rid, agent, kd, slots, mm, ring = _tls.top
    except AttributeError:
        rid, agent, kd, slots, mm, ring = _top_route()
    try:
        sid = kd[key]
    except KeyError:  # a key new to this run's ring (then checked), or no ring
        sid = None
    if sid is None or run_id is not None or timestamp is not None:
        _log_general(rid, agent, key, value, step, timestamp, run_id)
    else:
        if step is None:
            step = 0
        elif step.__class__ is not int:
            step = v.metric_step(key, step)
        seq, offset, lap = next(slots)
        if seq < ring.limit:
            # pack_into checks the value itself (a float, or what converts to one):
            # no check in Python on the way.
            try:
                _pack_into(mm, offset, step, value, _time(), sid, lap)
            except Exception:
                _write_checked(ring, seq, key, sid, step, value, _time())
        else:
            _ring_full(agent, ring, seq, rid, key, sid, step, value, _time())
    if synchronous:
        agent.flush()


def _log_general(
    rid: str,
    agent: Any,
    key: str,
    value: Any,
    step: Any,
    timestamp: Any,
    run_id: str | None,
    ts: float | None = None,
) -> None:
    """The checked path: a key new to the run, an explicit run id or timestamp, no ring."""
    if run_id is not None:
        if run_id.__class__ is not str:
            v.validate_run_id(run_id)  # raises: a run id that is not a string
        rid = run_id
    if key not in _seen_keys:
        v.validate_metric_key(key)
    if value.__class__ is not float:
        value = v.metric_value(key, value)
    if step is None:
        step = 0
    elif step.__class__ is not int:
        step = v.metric_step(key, step)
    if ts is None:
        ts = _time() if timestamp is None else v.metric_timestamp(key, timestamp)
    if agent.ring is None and not agent.ring_wanted:
        # No ring (turned off, or an unwritable spool): the in-memory queue's record.
        q = agent.queue
        q += (rid, key, value, step, ts)
        if len(q) >= agent.wake_len:
            agent.on_pressure()
        return
    _refresh_route(agent)
    agent.submit_metric((rid, key, value, step, ts))


def _refresh_route(agent: Any) -> None:
    # A route made before the agent had its ring, or in a forked child a copy of the
    # parent's route (whose ring is the parent's): this thread's next call takes the
    # agent's ring as it is now.
    top = getattr(_tls, "top", None)
    if top is not None and top[1] is agent and top[5] is not agent.ring:
        _sync_top()


def _write_checked(
    ring: Any, seq: int, key: str, sid: int, step: int, value: Any, ts: float
) -> None:
    """The slot ``seq`` after ``pack_into`` refused the point: write it with the value
    converted as MLflow would (a 0-d tensor, a numpy number), or raise the error that
    names what was wrong (a string, None, a step out of the int64 range); the reader
    then passes the slot."""
    try:
        ring.write_at(seq, sid, v.metric_step(key, step), v.metric_value(key, value), ts)
    except BaseException:
        ring.overflow[seq] = None
        raise


def _ring_full(
    agent: Any,
    ring: Any,
    seq: int,
    rid: str,
    key: str,
    sid: int,
    step: int,
    value: float,
    ts: float,
) -> None:
    if value.__class__ is not float:
        try:
            value = v.metric_value(key, value)
        except MlflowException:
            if ring is agent.ring:
                ring.overflow[seq] = None  # the reader passes this slot
            raise
    if ring is agent.ring:
        agent.ring_full(seq, sid, step, value, ts)
    else:  # a stale route (see _refresh_route): the position reserved is not used
        _refresh_route(agent)
        agent.submit_metric((rid, key, value, step, ts))


def log_metrics(
    metrics: dict[str, float],
    step: int | None = None,
    synchronous: bool | None = None,
    run_id: str | None = None,
    timestamp: int | None = None,
) -> None:
    """Log several metrics at one step and time (one route lookup and clock read for
    all of them; each point is then one record, as in ``log_metric``)."""
    try:
        rid, agent, kd, slots, mm, ring = _tls.top
    except AttributeError:
        rid, agent, kd, slots, mm, ring = _top_route()
    if run_id is not None or timestamp is not None or kd is _NO_KEYS:
        ts_ms = int(_time() * 1000) if timestamp is None else timestamp
        for key, value in metrics.items():
            log_metric(key, value, step, ts_ms, run_id)
    else:
        if step is None:
            step = 0
        elif step.__class__ is not int:
            step = v.metric_step(next(iter(metrics), "step"), step)
        ts = _time()
        for key, value in metrics.items():
            try:
                sid = kd[key]
            except KeyError:  # a key new to this run's ring: checked and interned
                _log_general(rid, agent, key, value, step, None, None, ts)
                continue
            seq, offset, lap = next(slots)
            if seq < ring.limit:
                try:
                    _pack_into(mm, offset, step, value, ts, sid, lap)
                except Exception:
                    _write_checked(ring, seq, key, sid, step, value, ts)
            else:
                _ring_full(agent, ring, seq, rid, key, sid, step, value, ts)
    if synchronous:
        flush()


def _run_id_for_write(run_id: str | None) -> tuple[str, MlflowClient]:
    if run_id is not None:
        return run_id, MlflowClient()
    run = _current()
    if run is None:
        run = start_run()
    return run.info.run_id, run._client


def log_param(key: str, value: Any, synchronous: bool | None = None) -> Any:
    """Log a param of the active run; params cannot change once logged."""
    rid, client = _run_id_for_write(None)
    return client.log_param(rid, key, value, synchronous)


def log_params(
    params: dict[str, Any], synchronous: bool | None = None, run_id: str | None = None
) -> None:
    """Log several params of the active run."""
    rid, client = _run_id_for_write(run_id)
    client.log_batch(
        rid, params=[Param(k, val) for k, val in params.items()], synchronous=synchronous
    )


def set_tag(key: str, value: Any, synchronous: bool | None = None) -> None:
    """Set a tag on the active run."""
    rid, client = _run_id_for_write(None)
    client.set_tag(rid, key, value, synchronous)


def set_tags(tags: dict[str, Any], synchronous: bool | None = None) -> None:
    """Set several tags on the active run."""
    rid, client = _run_id_for_write(None)
    client.log_batch(rid, tags=[RunTag(k, val) for k, val in tags.items()], synchronous=synchronous)


def delete_tag(key: str) -> None:
    """Delete a tag of the active run."""
    rid, client = _run_id_for_write(None)
    client.delete_tag(rid, key)


def flush(timeout: float | None = None) -> None:
    """Wait until everything this process logged is durable (acknowledged after commit)."""
    flush_all(timeout)


flush_async_logging = flush


def get_metric_history(run_id: str, key: str) -> list[Metric]:
    """Every point of one metric of a run."""
    return MlflowClient().get_metric_history(run_id, key)


def _end_runs_at_exit(status: str) -> None:
    """End every run still active in the process, newest first."""
    with _state_lock:
        runs = [run for run in reversed(_process_top) if run._pid == os.getpid()]
    for run in runs:
        try:
            end_run(status, _run=run)
        except Exception as e:  # exiting: report, never raise
            print(f"flightlog: could not end run {run.info.run_id}: {e}", file=sys.stderr)


def _forget_ended_runs() -> None:
    """Drop from this thread's stack the runs another thread ended (a signal's helper).

    Takes no lock: it runs in a signal handler, on the thread the signal interrupted.
    """
    stack = _stack()
    if any(run._ended for run in stack):
        stack[:] = [run for run in stack if not run._ended]
        _sync_top()


_uncaught = False
_previous_excepthook = sys.excepthook


def _excepthook(
    exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None
) -> None:
    # An uncaught exception ends open runs FAILED (KILLED for Ctrl-C), then the
    # program's own hook reports it as usual.
    global _uncaught
    _uncaught = True
    begin_exit(settings.EXIT_FLUSH_TIMEOUT.get())
    _end_runs_at_exit(
        RunStatus.KILLED if issubclass(exc_type, KeyboardInterrupt) else RunStatus.FAILED
    )
    _previous_excepthook(exc_type, exc, tb)


def _at_exit() -> None:
    # Ending runs and closing agents share one budget: the exit never hangs.
    begin_exit(settings.EXIT_FLUSH_TIMEOUT.get())
    if _uncaught:
        return
    # A program that replaced sys.excepthook after importing flightlog still leaves the
    # uncaught exception in sys.last_value.
    last = getattr(sys, "last_value", None)
    if last is None:
        _end_runs_at_exit(RunStatus.FINISHED)
    else:
        _end_runs_at_exit(
            RunStatus.KILLED if isinstance(last, KeyboardInterrupt) else RunStatus.FAILED
        )


_process_hooks_installed = False


def _install_process_hooks() -> None:
    """The excepthook and exit hook that end runs; installed by the first start_run.

    Not at import, so importing flightlog changes nothing in the process. The agents'
    exit hook goes first so that this one, registered after it, runs before it.
    """
    global _process_hooks_installed, _previous_excepthook
    with _state_lock:
        if _process_hooks_installed:
            return
        _process_hooks_installed = True
    _context.install_exit_hook()
    _previous_excepthook = sys.excepthook
    sys.excepthook = _excepthook
    atexit.register(_at_exit)


def _reset_for_tests() -> None:
    """Forget active runs and the active experiment (tests only)."""
    global _active_experiment_id, _last_active_run_id
    _tls.__dict__.clear()
    with _state_lock:
        _process_top.clear()
        _process_runs_changed()
    _active_experiment_id = None
    _last_active_run_id = None


# -- artifacts ---------------------------------------------------------------------------


def log_artifact(
    local_path: str | os.PathLike[str], artifact_path: str | None = None, run_id: str | None = None
) -> None:
    """Upload a local file into the active run's artifacts."""
    rid, client = _run_id_for_write(run_id)
    client.log_artifact(rid, local_path, artifact_path)


def log_artifacts(
    local_dir: str | os.PathLike[str], artifact_path: str | None = None, run_id: str | None = None
) -> None:
    """Upload a local directory tree into the active run's artifacts."""
    rid, client = _run_id_for_write(run_id)
    client.log_artifacts(rid, local_dir, artifact_path)


def log_text(text: str, artifact_file: str, run_id: str | None = None) -> None:
    """Store text as an artifact file of the active run."""
    rid, client = _run_id_for_write(run_id)
    client.log_text(rid, text, artifact_file)


def log_dict(dictionary: Any, artifact_file: str, run_id: str | None = None) -> None:
    """Store a dict as a JSON (or .yml/.yaml YAML) artifact file of the active run."""
    rid, client = _run_id_for_write(run_id)
    client.log_dict(rid, dictionary, artifact_file)


def log_figure(
    figure: Any,
    artifact_file: str,
    *,
    save_kwargs: dict[str, Any] | None = None,
    run_id: str | None = None,
) -> None:
    """Store a matplotlib or plotly figure as an image artifact of the active run."""
    rid, client = _run_id_for_write(run_id)
    client.log_figure(rid, figure, artifact_file, save_kwargs=save_kwargs)


def log_image(
    image: Any,
    artifact_file: str | None = None,
    key: str | None = None,
    step: int | None = None,
    timestamp: int | None = None,
    synchronous: bool | None = None,
    run_id: str | None = None,
) -> None:
    """Store a numpy array or PIL image of the active run: as the file ``artifact_file``,
    or, with ``key`` and ``step``, as one point of an image history (MLflow 2.x)."""
    rid, client = _run_id_for_write(run_id)
    client.log_image(rid, image, artifact_file, key, step, timestamp, synchronous)


def flush_artifact_async_logging() -> None:
    """Wait for the artifacts uploading in the background (image histories)."""
    media.flush()


def get_artifact_uri(artifact_path: str | None = None) -> str:
    """The active run's artifact URI, or the URI of ``artifact_path`` under it."""
    run = _current()
    if run is None:
        run = start_run()
    uri = run.info.artifact_uri
    if artifact_path:
        from flightlog.core.artifact_paths import safe_relative_path

        uri = f"{uri}/{safe_relative_path(artifact_path)}"
    return uri


# -- search ------------------------------------------------------------------------------


def search_runs(
    experiment_ids: list[str] | None = None,
    filter_string: str = "",
    run_view_type: int | str = ViewType.ACTIVE_ONLY,
    max_results: int = 100_000,
    order_by: list[str] | None = None,
    output_format: str = "pandas",
    search_all_experiments: bool = False,
    experiment_names: list[str] | None = None,
) -> Any:
    """Runs matching ``filter_string``, as a pandas DataFrame (or Run objects with
    ``output_format="list"``).

    With neither ``experiment_ids`` nor ``experiment_names``, searches the active
    experiment, or every experiment with ``search_all_experiments=True``. The filter
    language is MLflow's plus OR and parentheses.
    """
    if output_format not in ("pandas", "list"):
        raise MlflowException(
            f"Unsupported output_format {output_format!r}: use 'pandas' or 'list'",
            INVALID_PARAMETER_VALUE,
        )
    client = MlflowClient()
    ids = [str(i) for i in experiment_ids or []]
    for name in experiment_names or []:
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            ids.append(exp.experiment_id)
    if not experiment_ids and not experiment_names:
        if search_all_experiments:
            ids = [
                e.experiment_id
                for e in search.all_experiments(client, ViewType.ALL, None, None, None)
            ]
        else:
            ids = [_resolve_experiment_id()]
    runs = search.all_runs(
        client, ids, filter_string, search.view(run_view_type), max_results, order_by
    )
    return runs if output_format == "list" else search.runs_to_pandas(runs)


def search_experiments(
    view_type: int | str = ViewType.ACTIVE_ONLY,
    max_results: int | None = None,
    filter_string: str | None = None,
    order_by: list[str] | None = None,
) -> list[Experiment]:
    """Experiments matching ``filter_string`` (name, attributes, ``tags.<key>``)."""
    return search.all_experiments(
        MlflowClient(), search.view(view_type), max_results, filter_string, order_by
    )

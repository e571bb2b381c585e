"""System metrics: one sampler thread per run, one sampling process per node.

``SystemSampler`` runs on its own thread and wakes on a ``threading.Event`` with the
sampling interval as timeout, so ``stop()`` ends it at once instead of after a sleep.
Every tick it hands a ``{name: value}`` dict to ``submit(run_id, metrics, step)``: the
SDK passes the same enqueue function its user metrics go through, so system metrics
ride the agent's queue, batching, spool and retries like everything else. ``step``
counts samples from 0: a process's own series count its ticks, the node's series count
the node's samples, carried over when another process takes the node over (below), so
a node's series never has two points at one step.

Metric names
------------
MLflow's names, so dashboards built for MLflow keep working (megabytes are 10**6
bytes, as in MLflow)::

    system/cpu_utilization_percentage        system/system_memory_usage_megabytes
    system/system_memory_usage_percentage    system/disk_usage_percentage
    system/disk_usage_megabytes              system/disk_available_megabytes
    system/network_receive_megabytes         system/network_transmit_megabytes
    system/gpu_<i>_utilization_percentage    system/gpu_<i>_memory_usage_megabytes
    system/gpu_<i>_memory_usage_percentage   system/gpu_<i>_power_usage_watts

(network megabytes count from the start of sampling, as MLflow's do), and flightlog's
additions::

    system/disk_read_megabytes_per_second        system/disk_write_megabytes_per_second
    system/network_receive_megabytes_per_second  system/network_transmit_megabytes_per_second
    system/gpu_<i>_temperature_celsius           system/gpu_<i>_sm_clock_mhz
    system/process_rss_megabytes                 system/process_cpu_utilization_percentage

``<i>`` is the GPU's NVML index (``flightlog.agent.gpu``). Metrics measured over the
interval (CPU %, the per-second rates) are left out of a sample whose window is
shorter than 50 ms, where they would be noise. The process CPU % is of one core, so a
process busy on four cores reads 400.

Node label
----------
Multi-node runs need each node's series apart, so when a node label is set every node
metric is named ``system/<node>/<name>`` (MLflow's own ``node_id`` scheme): a run on
two nodes has ``system/node-a/gpu_0_utilization_percentage`` and
``system/node-b/gpu_0_utilization_percentage``. Without a label the names are exactly
MLflow's. The label is, first found: ``SystemSampler(node=...)`` (``""`` forces none),
``set_system_metrics_node_name()``, ``FLIGHTLOG_NODE``, MLflow's
``MLFLOW_SYSTEM_METRICS_NODE_ID``, and otherwise the host name when the launch looks
multi-node (WORLD_SIZE > 1, NODE_RANK or GROUP_RANK set, SLURM_NNODES > 1), unless
LOCAL_WORLD_SIZE == WORLD_SIZE says every rank is on this one node (torchrun sets
GROUP_RANK even on a single node, and a single node keeps MLflow's names).

Process metrics are not node metrics: every process measures itself. In a run of
several ranks (RANK set and WORLD_SIZE > 1) they are named
``system/[<node>/]rank_<RANK>/process_rss_megabytes`` so the ranks do not overwrite one
another; without a rank only the node's elected process reports its own.

One node, many processes
------------------------
When the eight processes of a data-parallel job on one node log into one run, the
node's CPU, memory, disk, network and GPUs must be sampled once, not eight times. Each
sampler tries an exclusive, non-blocking ``flock`` on a file named after (run_id, node)
in a node-local directory (``<tempdir>/flightlog-sampler/``); the one that gets it
samples the node, and holds it until it stops. The kernel drops the lock when its
holder dies, however it dies, and the others try again every interval, so a surviving
process takes over at its next tick (the network baseline and the node's next step are
kept in the lock file, so ``network_*_megabytes`` and the step carry on from where the
previous holder left them).

Why the election lives here, in the agent, and not in the collector: the collector may
be a remote or central server that cannot see this node's CPUs or GPUs, and a laptop
runs no node-local sidecar at all, so the only code sure to be on the node is the
training process itself. And why a lock rather than ``LOCAL_RANK == 0``: launchers do
not all set LOCAL_RANK (plain ``python`` per GPU, some MPI and SLURM setups, several
scripts logging into one run), and when the rank-0 process dies nobody would take over;
a lock held by a live process is right in every one of those cases. ``LOCAL_RANK`` is
only the fallback where no lock can be taken (no ``fcntl``, no writable temp dir).

GPUs: only those the job can see (``CUDA_VISIBLE_DEVICES``) are read, under their real
NVML indices. The elected process reads the GPUs *it* can see; a launcher that gives
each rank a different ``CUDA_VISIBLE_DEVICES`` therefore gets only the elected rank's
GPUs (see ``flightlog.agent.gpu``).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import socket
import stat
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Literal, Protocol

import psutil

from flightlog.agent.gpu import GpuReader, load_gpu_reader
from flightlog.agent.signals import keep_off_this_thread
from flightlog.core import settings

try:  # POSIX only; elsewhere the election falls back to LOCAL_RANK
    import fcntl
except ImportError:  # pragma: no cover - not on the platforms CI runs
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "DEFAULT_SAMPLING_INTERVAL",
    "ENABLE_ENV",
    "INTERVAL_ENV",
    "MIN_SAMPLING_INTERVAL",
    "NODE_ENV",
    "MetricSink",
    "NodeSamplerLock",
    "SubmitMetrics",
    "SystemSampler",
    "disable_system_metrics_logging",
    "enable_system_metrics_logging",
    "set_system_metrics_node_name",
    "set_system_metrics_sampling_interval",
    "start_for_run",
    "system_metrics_enabled",
    "system_metrics_node_name",
    "system_metrics_sampling_interval",
]

logger = logging.getLogger("flightlog.system")

SubmitMetrics = Callable[[str, dict[str, float], int], None]
"""``submit(run_id, metrics, step)``: how a sampler hands a sample to the agent."""

# ---------------------------------------------------------------------------------------
# Settings. Precedence everywhere: an explicit argument, then the setter functions
# below (what the SDK re-exports), then the environment, then the default.
# ---------------------------------------------------------------------------------------

# The variables, their aliases (MLflow's names) and parsers are in flightlog.core.settings.
ENABLE_ENV = settings.ENABLE_SYSTEM_METRICS_LOGGING.name
MLFLOW_ENABLE_ENV = settings.ENABLE_SYSTEM_METRICS_LOGGING.aliases[0]
INTERVAL_ENV = settings.SYSTEM_METRICS_SAMPLING_INTERVAL.name
MLFLOW_INTERVAL_ENV = settings.SYSTEM_METRICS_SAMPLING_INTERVAL.aliases[0]
NODE_ENV = settings.NODE.name
MLFLOW_NODE_ENV = settings.NODE.aliases[0]

DEFAULT_SAMPLING_INTERVAL = settings.SYSTEM_METRICS_SAMPLING_INTERVAL.default
MIN_SAMPLING_INTERVAL = 0.1

# Rates and CPU percentages measured over less than this are noise; they are left out.
_MIN_WINDOW = 0.05
_MB = 1e6


@dataclass
class _Overrides:
    """What the setter functions chose; None means "not set, ask the environment"."""

    enabled: bool | None = None
    interval: float | None = None
    node: str | None = None


_overrides = _Overrides()


def enable_system_metrics_logging() -> None:
    """Log system metrics for every run started from now on in this process.

    ``start_run(log_system_metrics=False)`` still turns it off for one run.
    """
    _overrides.enabled = True


def disable_system_metrics_logging() -> None:
    """Stop logging system metrics for runs started from now on in this process.

    Overrides ``FLIGHTLOG_ENABLE_SYSTEM_METRICS_LOGGING``; runs already sampling go on
    until they end.
    """
    _overrides.enabled = False


def system_metrics_enabled(environ: Mapping[str, str] | None = None) -> bool:
    """Whether a run that does not pass ``log_system_metrics`` gets system metrics.

    Raises:
        SettingError: (a ValueError) the environment variable is not a boolean.
    """
    if _overrides.enabled is not None:
        return _overrides.enabled
    return settings.ENABLE_SYSTEM_METRICS_LOGGING.get(environ)


def set_system_metrics_sampling_interval(seconds: float | None) -> None:
    """Set the seconds between samples for runs started from now on.

    ``None`` goes back to ``FLIGHTLOG_SYSTEM_METRICS_SAMPLING_INTERVAL`` or the default
    of 10 seconds.

    Raises:
        ValueError: ``seconds`` is below 0.1 or not a finite number.
    """
    _overrides.interval = None if seconds is None else _check_interval(seconds, "interval")


def system_metrics_sampling_interval(environ: Mapping[str, str] | None = None) -> float:
    """The sampling interval in seconds a new sampler uses when given none.

    Raises:
        SettingError: (a ValueError) the environment variable is not a number >= 0.1.
    """
    if _overrides.interval is not None:
        return _overrides.interval
    return settings.SYSTEM_METRICS_SAMPLING_INTERVAL.get(environ)


def set_system_metrics_node_name(name: str | None) -> None:
    """Label this node's system metrics ``system/<name>/...`` for runs started from now.

    ``None`` goes back to ``FLIGHTLOG_NODE`` or the automatic choice (none on one node,
    the host name on a multi-node launch).

    Raises:
        ValueError: ``name`` is empty or has characters other than letters, digits
            and ``_ . -``.
    """
    _overrides.node = None if name is None else _check_node_name(name, "node name")


def system_metrics_node_name(environ: Mapping[str, str] | None = None) -> str | None:
    """The node label a new sampler uses when given none; None for MLflow's plain names.

    Raises:
        SettingError: (a ValueError) ``FLIGHTLOG_NODE`` holds characters a metric name
            cannot have.
    """
    if _overrides.node is not None:
        return _overrides.node
    env = os.environ if environ is None else environ
    return settings.NODE.get(env) or _automatic_node_name(env)


def _check_interval(seconds: float, what: str) -> float:
    try:
        value = float(seconds)
    except (TypeError, ValueError):
        raise ValueError(f"system metrics {what} must be a number, got {seconds!r}") from None
    # `not >=` also rejects NaN.
    if not value >= MIN_SAMPLING_INTERVAL or value == float("inf"):
        raise ValueError(
            f"system metrics {what} must be at least {MIN_SAMPLING_INTERVAL} seconds, "
            f"got {seconds!r}"
        )
    return value


def _check_node_name(name: str, what: str) -> str:
    if not settings.NODE_LABEL.match(name):
        raise ValueError(
            f"{what} {name!r} must be letters, digits, '_', '.' or '-' "
            "(it becomes part of every system metric's name)"
        )
    return name


def _int_env(env: Mapping[str, str], name: str) -> int | None:
    try:
        return int(env[name])
    except (KeyError, ValueError):
        return None


def _automatic_node_name(env: Mapping[str, str]) -> str | None:
    world = _int_env(env, "WORLD_SIZE")
    local_world = _int_env(env, "LOCAL_WORLD_SIZE")
    if world is not None and world == local_world:
        return None  # every rank on this node: a single-node run keeps MLflow's names
    multi_node = (
        (world or 1) > 1
        or "NODE_RANK" in env
        or "GROUP_RANK" in env
        or (_int_env(env, "SLURM_NNODES") or 1) > 1
    )
    return _host_label() if multi_node else None


def _host_label() -> str:
    # Host names are nearly always valid labels already; anything else becomes "_".
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", socket.gethostname()) or "localhost"


def _distributed_rank(env: Mapping[str, str]) -> int | None:
    rank, world = _int_env(env, "RANK"), _int_env(env, "WORLD_SIZE")
    return rank if rank is not None and world is not None and world > 1 else None


# ---------------------------------------------------------------------------------------
# Election: one sampling process per (run, node).
# ---------------------------------------------------------------------------------------

# Locks inherited by a forked child (a DataLoader worker, say) are closed there, so a
# child that outlives the holder cannot keep the node's sampling hostage. Only close:
# flock(LOCK_UN) from the child would unlock the parent's lock too.
_open_locks: weakref.WeakSet[NodeSamplerLock] = weakref.WeakSet()


_fork_hook_installed = False


def _forget_locks_in_child() -> None:
    for lock in list(_open_locks):
        lock._forget_after_fork()


def _track_for_fork(lock: NodeSamplerLock) -> None:
    # Installed with the first lock, not at import: importing flightlog has no side effects.
    global _fork_hook_installed
    if not _fork_hook_installed:
        os.register_at_fork(after_in_child=_forget_locks_in_child)
        _fork_hook_installed = True
    _open_locks.add(lock)


_fallback_announced = False


class NodeSamplerLock:
    """An exclusive, non-blocking ``flock`` on one file per (run, node).

    ``try_acquire()`` returns True in exactly one process per (run_id, node) at a time;
    the kernel releases the lock when its holder closes it or dies. The lock files are
    left in place on purpose: unlinking a lock file while another process has it open
    would let two processes hold "the" lock at once.

    Where no lock can be taken (no ``fcntl``, or a temp directory that cannot be
    written), the process with LOCAL_RANK 0 (or no LOCAL_RANK) is elected instead.

    Args:
        run_id: the run being sampled.
        node: the node label, or the host name when metrics carry no label.
        directory: where lock files live; default ``<tempdir>/flightlog-sampler``.
        environ: where LOCAL_RANK is read for the fallback; default ``os.environ``.
    """

    def __init__(
        self,
        run_id: str,
        node: str,
        *,
        directory: str | os.PathLike[str] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        base = Path(directory) if directory is not None else _default_lock_dir()
        digest = hashlib.sha256(f"{run_id}\0{node}".encode()).hexdigest()[:12]
        self.path = base / f"{_file_safe(run_id)}-{_file_safe(node)}-{digest}.lock"
        self._env = dict(os.environ if environ is None else environ)
        self._fd: int | None = None
        self._fallback_held = False
        self._mutex = threading.Lock()
        _track_for_fork(self)

    @property
    def held(self) -> bool:
        """Whether this object holds the lock now."""
        return self._fd is not None or self._fallback_held

    def try_acquire(self) -> bool:
        """Take the lock if no other process holds it; never blocks. True if held."""
        with self._mutex:
            if self.held:
                return True
            if fcntl is None:
                return self._fallback("fcntl is not available on this platform")
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                _share_directory(self.path.parent)
                fd = _open_lock_file(self.path)
            except OSError as exc:
                return self._fallback(f"cannot use {self.path.parent}: {exc}")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    return False  # another live process samples this node
                return self._fallback(f"flock on {self.path} failed: {exc}")
            self._fd = fd
            return True

    def release(self) -> None:
        """Give the lock up (idempotent); another process may take it at its next try."""
        with self._mutex:
            self._fallback_held = False
            fd, self._fd = self._fd, None
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)  # closing the last descriptor releases the flock

    def read_state(self) -> dict[str, Any]:
        """What the previous holder left in the lock file ({} if nothing readable)."""
        fd = self._fd
        if fd is None:
            return {}
        try:
            data = json.loads(os.pread(fd, 4096, 0) or b"{}")
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def write_state(self, state: Mapping[str, Any]) -> None:
        """Leave a small JSON document in the lock file for a successor (best effort)."""
        fd = self._fd
        if fd is None:
            return
        payload = json.dumps(dict(state), separators=(",", ":")).encode()
        with contextlib.suppress(OSError):  # a read-only lock file: nothing to share
            os.ftruncate(fd, 0)
            os.pwrite(fd, payload, 0)

    def _fallback(self, why: str) -> bool:
        global _fallback_announced
        elected = self._env.get("LOCAL_RANK", "0").strip() in ("", "0")
        if not _fallback_announced:
            _fallback_announced = True
            logger.info(
                "flightlog: system metrics: no node lock (%s); the process with "
                "LOCAL_RANK 0 samples the node",
                why,
            )
        self._fallback_held = elected
        return elected

    def _forget_after_fork(self) -> None:
        fd, self._fd = self._fd, None
        self._fallback_held = False
        self._mutex = threading.Lock()  # may have been held by a thread that is gone
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)


def _next_step(state: Mapping[str, Any]) -> int:
    """The node step a new holder starts at: where the previous one stopped, or 0."""
    step = state.get("next_step")
    return step if isinstance(step, int) and not isinstance(step, bool) and step >= 0 else 0


def _default_lock_dir() -> Path:
    return Path(tempfile.gettempdir()) / "flightlog-sampler"


def _file_safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", text)[:64] or "_"


def _share_directory(path: Path) -> None:
    # Sticky and world-writable like /tmp itself, so one user's leftover directory does
    # not lock every other user out of system metrics on a shared node.
    with contextlib.suppress(OSError):
        if path.stat().st_uid == os.getuid() and path.stat().st_mode & 0o7777 != 0o1777:
            path.chmod(0o1777)


def _open_lock_file(path: Path) -> int:
    # The directory is world-writable: never follow a symlink planted under our name
    # (write_state truncates the file), and lock only a regular file.
    nofollow = getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | nofollow, 0o666)
    except PermissionError:
        # Another user's file: flock works on a read-only descriptor too.
        fd = os.open(path, os.O_RDONLY | nofollow)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, f"{path} is not a regular file")
    return fd


# ---------------------------------------------------------------------------------------
# Probes: what one sample reads. Counters are kept between samples for the rates.
# ---------------------------------------------------------------------------------------


def _cpu_busy_total(times: Any) -> tuple[float, float]:
    # psutil's own formula, kept here because psutil.cpu_percent() holds module-global
    # state that user code calling it (the tutorial does) would share with us.
    fields = times._asdict()
    total = sum(fields.values())
    # On Linux guest time is already counted in user and nice.
    total -= fields.get("guest", 0.0) + fields.get("guest_nice", 0.0)
    idle = fields.get("idle", 0.0) + fields.get("iowait", 0.0)
    return total - idle, total


class _ProcessProbe:
    """This process's RSS and CPU."""

    def __init__(self, ps: ModuleType, clock: Callable[[], float]) -> None:
        self._process = ps.Process()
        self._clock = clock
        self._last: tuple[float, float] | None = None

    def prime(self) -> None:
        self._last = (self._clock(), self._cpu_seconds())

    def _cpu_seconds(self) -> float:
        times = self._process.cpu_times()
        return float(times.user + times.system)

    def read(self) -> dict[str, float]:
        now, cpu = self._clock(), self._cpu_seconds()
        out = {"process_rss_megabytes": self._process.memory_info().rss / _MB}
        if self._last is not None and now - self._last[0] >= _MIN_WINDOW:
            out["process_cpu_utilization_percentage"] = max(
                0.0, (cpu - self._last[1]) / (now - self._last[0]) * 100.0
            )
        if self._last is None or now - self._last[0] >= _MIN_WINDOW:
            self._last = (now, cpu)
        return out


class _NodeProbe:
    """The node's CPU, memory, disk and network (psutil) and GPUs (a GpuReader)."""

    def __init__(
        self,
        ps: ModuleType,
        clock: Callable[[], float],
        gpu: GpuReader | None,
        baseline: Mapping[str, Any],
    ) -> None:
        self._ps = ps
        self._clock = clock
        self.gpu = gpu
        self._gpu_failed = False
        self._disk_path = os.path.abspath(os.sep)
        self._last_time = clock()
        self._last_cpu = _cpu_busy_total(ps.cpu_times())
        self._last_disk = self._disk_bytes()
        self._last_net = self._net_bytes()
        self.net_baseline = self._net_baseline(baseline)

    def _disk_bytes(self) -> tuple[float, float] | None:
        try:
            io = self._ps.disk_io_counters()
        except Exception:  # no /proc/diskstats in some containers
            return None
        return None if io is None else (float(io.read_bytes), float(io.write_bytes))

    def _net_bytes(self) -> tuple[float, float] | None:
        try:
            net = self._ps.net_io_counters()
        except Exception:
            return None
        return None if net is None else (float(net.bytes_recv), float(net.bytes_sent))

    def _net_baseline(self, previous: Mapping[str, Any]) -> tuple[float, float] | None:
        # Carry a dead holder's baseline over, so network_*_megabytes keeps counting
        # from the start of sampling; not across a reboot (counters start again).
        current = self._last_net
        if current is None:
            return None
        try:
            boot = float(self._ps.boot_time())
            if float(previous["boot_time"]) == boot:
                rx, tx = float(previous["net_rx_bytes"]), float(previous["net_tx_bytes"])
                if rx <= current[0] and tx <= current[1]:
                    return rx, tx
        except (KeyError, TypeError, ValueError, OSError):
            pass
        return current

    def state(self) -> dict[str, Any]:
        """The baseline a successor needs, for the lock file."""
        if self.net_baseline is None:
            return {"pid": os.getpid()}
        try:
            boot = float(self._ps.boot_time())
        except Exception:
            return {"pid": os.getpid()}
        rx, tx = self.net_baseline
        return {"pid": os.getpid(), "boot_time": boot, "net_rx_bytes": rx, "net_tx_bytes": tx}

    def read(self) -> dict[str, float]:
        ps = self._ps
        now = self._clock()
        window = now - self._last_time
        windowed = window >= _MIN_WINDOW
        out: dict[str, float] = {}

        cpu = _cpu_busy_total(ps.cpu_times())
        total_delta = cpu[1] - self._last_cpu[1]
        if windowed and total_delta > 0:
            busy = (cpu[0] - self._last_cpu[0]) / total_delta * 100.0
            out["cpu_utilization_percentage"] = min(100.0, max(0.0, busy))

        memory = ps.virtual_memory()
        out["system_memory_usage_megabytes"] = memory.used / _MB
        out["system_memory_usage_percentage"] = float(memory.percent)

        try:
            disk = ps.disk_usage(self._disk_path)
        except OSError:
            disk = None
        if disk is not None:
            out["disk_usage_percentage"] = float(disk.percent)
            out["disk_usage_megabytes"] = disk.used / _MB
            out["disk_available_megabytes"] = disk.free / _MB

        disk_io = self._disk_bytes()
        if windowed and disk_io is not None and self._last_disk is not None:
            out["disk_read_megabytes_per_second"] = _rate(disk_io[0], self._last_disk[0], window)
            out["disk_write_megabytes_per_second"] = _rate(disk_io[1], self._last_disk[1], window)

        net = self._net_bytes()
        if net is not None and self.net_baseline is not None:
            out["network_receive_megabytes"] = max(0.0, net[0] - self.net_baseline[0]) / _MB
            out["network_transmit_megabytes"] = max(0.0, net[1] - self.net_baseline[1]) / _MB
        if windowed and net is not None and self._last_net is not None:
            out["network_receive_megabytes_per_second"] = _rate(net[0], self._last_net[0], window)
            out["network_transmit_megabytes_per_second"] = _rate(net[1], self._last_net[1], window)

        if self.gpu is not None:
            out.update(self._read_gpu(self.gpu))

        # Too short a window leaves the old counters in place, so the next sample's
        # window is long enough again.
        if windowed:
            self._last_time, self._last_cpu = now, cpu
            self._last_disk, self._last_net = disk_io, net
        return out

    def _read_gpu(self, gpu: GpuReader) -> dict[str, float]:
        # A broken GPU backend costs the GPU metrics of this sample, not the host's.
        try:
            return {
                f"gpu_{label}_{reading}": float(value)
                for label, readings in gpu.read().items()
                for reading, value in readings.items()
            }
        except Exception as exc:
            level = logging.DEBUG if self._gpu_failed else logging.WARNING
            self._gpu_failed = True
            logger.log(level, "flightlog: system metrics: GPU read failed: %r", exc)
            return {}


def _rate(current: float, previous: float, seconds: float) -> float:
    # Counters can go backwards (a disk removed, a counter wrap psutil missed): no rate
    # is better than a negative one, so such a window reads 0.
    return max(0.0, current - previous) / _MB / seconds


# ---------------------------------------------------------------------------------------
# The sampler.
# ---------------------------------------------------------------------------------------


class SystemSampler:
    """Samples system metrics for one run on a background thread.

    The SDK starts one in ``start_run`` (when system metrics are on for the run) and
    stops it in ``end_run``::

        sampler = SystemSampler(run_id, submit)
        sampler.start()
        ...
        sampler.stop()

    Every interval the thread tries to become this node's sampler for the run (one
    process per node wins, see the module docstring); the winner submits the node's
    metrics and every process submits its own process metrics where they can be named
    apart. ``stop()`` wakes the thread at once, takes one last sample and releases the
    node. Nothing here raises into the training thread after construction: failures
    in a sample are logged once and the thread carries on.

    Args:
        run_id: the run the metrics belong to.
        submit: ``submit(run_id, metrics, step)``, called on the sampler thread; the SDK
            passes the agent's enqueue function. ``step`` counts ticks from 0.
        interval: seconds between samples, >= 0.1; default from
            ``system_metrics_sampling_interval()`` (10 unless set).
        node: node label for ``system/<node>/...`` names; ``""`` for none; default from
            ``system_metrics_node_name()``.
        gpu: a ``GpuReader``, None for no GPU metrics, or ``"auto"`` to open NVML
            (``load_gpu_reader``) when this process is first elected. A reader passed in
            stays open; one opened here is closed by ``stop()``.
        environ: where RANK, WORLD_SIZE, LOCAL_RANK, CUDA_VISIBLE_DEVICES and the
            settings are read; default ``os.environ`` (copied now).
        lock_dir: directory for the election's lock files (a test seam).
        clock: monotonic seconds, for the rates (a test seam).
        psutil_module: a psutil stand-in (a test seam).

    Raises:
        ValueError: an interval below 0.1 s, a bad node label, or a malformed settings
            environment variable.
    """

    def __init__(
        self,
        run_id: str,
        submit: SubmitMetrics,
        *,
        interval: float | None = None,
        node: str | None = None,
        gpu: GpuReader | Literal["auto"] | None = "auto",
        environ: Mapping[str, str] | None = None,
        lock_dir: str | os.PathLike[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        psutil_module: ModuleType | None = None,
    ) -> None:
        env = dict(os.environ if environ is None else environ)
        self.run_id = run_id
        self.interval = (
            system_metrics_sampling_interval(env)
            if interval is None
            else _check_interval(interval, "interval")
        )
        if node is None:
            self.node: str | None = system_metrics_node_name(env)
        else:
            self.node = _check_node_name(node, "node name") if node else None
        self._submit = submit
        self._env = env
        self._gpu_choice = gpu
        self._gpu_owned: GpuReader | None = None
        self._gpu_loaded = False
        self._clock = clock
        self._ps: ModuleType = psutil if psutil_module is None else psutil_module

        prefix = "system/" + (f"{self.node}/" if self.node else "")
        rank = _distributed_rank(env)
        self._node_prefix = prefix
        self._process_prefix = prefix + (f"rank_{rank}/" if rank is not None else "")
        self._process_named_apart = rank is not None

        self._lock = NodeSamplerLock(
            run_id, self.node or _host_label(), directory=lock_dir, environ=env
        )
        self._process = _ProcessProbe(self._ps, clock)
        self._node_probe: _NodeProbe | None = None
        self._step = 0  # this process's ticks
        self._node_step = 0  # the node's samples, continued from the previous holder
        self._stop_event = threading.Event()
        self._thread: threading.Thread | None = None
        self._owner_pid = os.getpid()
        self._complaints: set[str] = set()

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        """Start the sampler thread (a daemon: it never holds the interpreter open).

        Raises:
            RuntimeError: the sampler was started before (a sampler runs once).
        """
        if self._thread is not None:
            raise RuntimeError("SystemSampler.start() called twice; make a new sampler")
        self._thread = threading.Thread(
            target=self._run, name=f"flightlog-system-{self.run_id[:8]}", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> bool:
        """Wake the thread, let it take a last sample, and wait up to ``timeout`` s.

        Idempotent. Returns True when the thread has ended (or never started). In a
        forked child, where the thread does not exist, it only lets go of the lock.
        """
        self._stop_event.set()
        thread = self._thread
        if os.getpid() != self._owner_pid:
            # A forked child: the thread and the lock stayed with the parent (the fork
            # hook closed the inherited descriptor), and NVML is the parent's to close.
            self._lock.release()
            return True
        if thread is None:
            self._finish()
            return True
        if thread is not threading.current_thread():
            thread.join(timeout)
        return not thread.is_alive()

    @property
    def is_alive(self) -> bool:
        """Whether the sampler thread is running."""
        return (
            self._thread is not None and os.getpid() == self._owner_pid and self._thread.is_alive()
        )

    @property
    def is_node_sampler(self) -> bool:
        """Whether this process is the one sampling this node for the run right now."""
        return self._lock.held

    # -- one sample ---------------------------------------------------------------------

    def elect(self) -> bool:
        """Try to become this node's sampler for the run (non-blocking); True if it is.

        On winning, GPU access is opened (for ``gpu="auto"``) and the node's counters are
        read as the baseline for the first window.
        """
        if self._node_probe is not None:
            return True
        if not self._lock.try_acquire():
            return False
        try:
            previous = self._lock.read_state()
            self._node_probe = _NodeProbe(self._ps, self._clock, self._open_gpu(), previous)
            self._node_step = _next_step(previous)
            self._save_state()
        except Exception:
            self._lock.release()  # let a process that can sample the node take it
            raise
        return True

    def collect(self) -> dict[str, float]:
        """Take one sample now and return it, with full metric names.

        This process's metrics always (where they can be named apart from other ranks'),
        the node's when this process is elected (``elect()``). Advances the counters
        that the next sample's rates are measured from.
        """
        own, node = self._sample()
        return {**own, **node}

    def _sample(self) -> tuple[dict[str, float], dict[str, float]]:
        # (this process's series, the node's series). Process metrics without a rank
        # are named as the node's and only the elected process reports them: they
        # belong to the node's series.
        own: dict[str, float] = {}
        node: dict[str, float] = {}
        if self._node_probe is not None or self._process_named_apart:
            target = own if self._process_named_apart else node
            for name, value in self._process.read().items():
                target[self._process_prefix + name] = value
        if self._node_probe is not None:
            for name, value in self._node_probe.read().items():
                node[self._node_prefix + name] = value
        return own, node

    # -- the thread ---------------------------------------------------------------------

    def _run(self) -> None:
        keep_off_this_thread()  # SIGTERM goes to the main thread
        try:
            self._guarded("start", self._begin)
            due = time.monotonic() + self.interval
            while not self._stop_event.wait(max(0.0, due - time.monotonic())):
                self._guarded("sample", self._tick)
                due += self.interval
                now = time.monotonic()
                if due <= now:
                    # Fell behind (a suspended process, a slow NVML call): skip the
                    # missed ticks rather than firing them back to back.
                    due = now + self.interval
            self._guarded("sample", lambda: self._tick(final=True))
        finally:
            self._finish()

    def _begin(self) -> None:
        self._process.prime()
        self.elect()

    def _tick(self, final: bool = False) -> None:
        step = self._step
        self._step += 1
        # A non-holder keeps asking, so a survivor takes over from a holder that died;
        # not on the final tick, though: a run that is ending needs no new sampler.
        if not final and self._node_probe is None:
            self.elect()
        own, node = self._sample()
        by_step: dict[int, dict[str, float]] = {}
        if own:
            by_step[step] = own
        if node:
            by_step.setdefault(self._take_node_step(), {}).update(node)
        for at, metrics in by_step.items():
            self._submit(self.run_id, metrics, at)

    def _take_node_step(self) -> int:
        # The next holder starts after this step: written before the sample is handed
        # on, so a holder dying in between leaves a gap, never a step taken twice.
        step = self._node_step
        self._node_step += 1
        self._save_state()
        return step

    def _save_state(self) -> None:
        # What a successor carries on from: the network baseline and the next step.
        if self._node_probe is not None:
            self._lock.write_state({**self._node_probe.state(), "next_step": self._node_step})

    def _guarded(self, what: str, action: Callable[[], None]) -> None:
        # The thread must outlive any one failure; each kind is reported once, not
        # every interval.
        try:
            action()
        except Exception as exc:
            key = f"{what}:{type(exc).__name__}"
            level = logging.DEBUG if key in self._complaints else logging.WARNING
            self._complaints.add(key)
            logger.log(level, "flightlog: system metrics: %s failed: %r", what, exc, exc_info=True)

    def _open_gpu(self) -> GpuReader | None:
        if self._gpu_choice != "auto":
            return self._gpu_choice
        if not self._gpu_loaded:
            self._gpu_loaded = True
            self._gpu_owned = load_gpu_reader(self._env)
        return self._gpu_owned

    def _finish(self) -> None:
        self._lock.release()
        self._node_probe = None
        owned, self._gpu_owned = self._gpu_owned, None
        if owned is not None:
            owned.close()


# ---------------------------------------------------------------------------------------
# The SDK's entry point.
# ---------------------------------------------------------------------------------------


class MetricSink(Protocol):
    """The part of the agent a sampler feeds: one point per call, appended, never sent."""

    def submit_metric(self, item: tuple[str, str, float, int, float]) -> None:
        """Append ``(run_id, key, value, step, timestamp_seconds)`` to the queue."""
        ...


def start_for_run(run_id: str, sink: MetricSink, wanted: bool | None) -> SystemSampler | None:
    """Start sampling system metrics for a run, if they are on for it; the SDK's hook.

    ``start_run(log_system_metrics=wanted)`` calls this; ``end_run`` calls ``stop()`` on
    what it returns. ``wanted=None`` follows ``system_metrics_enabled()``. Points go to
    ``sink.submit_metric`` (the agent's queue) with the sample's wall-clock time.

    Never raises into ``start_run``: a malformed settings variable is reported as a
    warning naming it, and the run goes on without system metrics.
    """
    try:
        if not (system_metrics_enabled() if wanted is None else wanted):
            return None

        def submit(run: str, metrics: dict[str, float], step: int) -> None:
            now = time.time()
            for key, value in metrics.items():
                sink.submit_metric((run, key, value, step, now))

        sampler = SystemSampler(run_id, submit)
        sampler.start()
    except Exception as exc:
        logger.warning("flightlog: system metrics are off for run %s: %s", run_id, exc)
        return None
    return sampler

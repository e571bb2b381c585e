"""GPU readings through NVML, behind a small seam.

The system sampler (``flightlog.agent.system``) talks to GPUs only through the
``GpuReader`` protocol below, so tests can hand it a fake and machines without NVIDIA
hardware never import NVML at all. ``NvmlGpuReader`` is the real implementation on top
of the ``nvidia-ml-py`` package (import name ``pynvml``; the optional extra
``flightlog[gpu]``), imported lazily by ``load_gpu_reader()``.

Readings per visible device, each independent of the others (NVML refuses some on some
devices: power on many consumer cards, utilization and power on MIG slices; a refusal
drops that one reading and nothing else):

    utilization_percentage   memory_usage_megabytes   memory_usage_percentage
    power_usage_watts        temperature_celsius      sm_clock_mhz

Megabytes are 10**6 bytes, as in MLflow's own GPU monitor.

Device labels are NVML indices as decimal strings ("0", "3"), so a job that sees only
physical GPUs 2 and 3 reports "2" and "3", never "0" and "1". A visible MIG slice is
labelled ``"<parent index>_mig_<slot>"``.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Protocol

__all__ = [
    "GPU_READINGS",
    "GpuReader",
    "NvmlDevice",
    "NvmlGpuReader",
    "load_gpu_reader",
    "parse_cuda_visible_devices",
]

logger = logging.getLogger("flightlog.system")

# Reading names, in the order they are read. The sampler turns "<label>", "<reading>"
# into the metric name "system/gpu_<label>_<reading>".
GPU_READINGS: tuple[str, ...] = (
    "utilization_percentage",
    "memory_usage_megabytes",
    "memory_usage_percentage",
    "power_usage_watts",
    "temperature_celsius",
    "sm_clock_mhz",
)

_MB = 1e6


class GpuReader(Protocol):
    """What the system sampler needs from a GPU backend."""

    def read(self) -> dict[str, dict[str, float]]:
        """Return ``{device label: {reading name: value}}`` for every visible device.

        A reading the backend cannot take is absent from its device's dict; a device
        with no reading at all may be absent. Must not raise for a refused reading.
        """
        ...

    def close(self) -> None:
        """Release the backend (for NVML: ``nvmlShutdown``). Idempotent."""
        ...


@dataclass(frozen=True)
class NvmlDevice:
    """One device an ``NvmlGpuReader`` reports: its label and its NVML handle."""

    label: str
    handle: Any  # an opaque NVML handle (a ctypes pointer)


def parse_cuda_visible_devices(value: str | None) -> list[str] | None:
    """Split ``CUDA_VISIBLE_DEVICES`` into its entries.

    Returns None when the variable is unset (every GPU is visible), and ``[]`` when it
    is set but empty (none is). Entries are stripped; resolving them to devices needs
    NVML and happens in ``NvmlGpuReader``.
    """
    if value is None:
        return None
    return [entry.strip() for entry in value.split(",") if entry.strip()]


def _text(value: str | bytes) -> str:
    # nvidia-ml-py returns str since 11.515; older releases and the deprecated `pynvml`
    # package return bytes.
    return value.decode() if isinstance(value, bytes) else value


class NvmlGpuReader:
    """Reads the devices this process may use, through an initialised NVML module.

    Use ``load_gpu_reader()`` rather than constructing this directly: it imports and
    initialises NVML and turns every failure into "no GPU metrics".

    Args:
        nvml: the ``pynvml`` module, already initialised with ``nvmlInit()``.
        visible: the entries of ``CUDA_VISIBLE_DEVICES`` (see
            ``parse_cuda_visible_devices``), or None for every device.
    """

    def __init__(self, nvml: ModuleType, visible: list[str] | None) -> None:
        self._nvml = nvml
        self._closed = False
        # (label, reading) pairs that NVML answered NOT_SUPPORTED: permanent for that
        # device, so they are not asked again every tick.
        self._unsupported: set[tuple[str, str]] = set()
        # (label, reading, error code) already logged, so a failing reading logs once.
        self._logged: set[tuple[str, str, int]] = set()
        self.devices: list[NvmlDevice] = self._resolve(visible)

    # -- which devices ----------------------------------------------------------------

    def _resolve(self, visible: list[str] | None) -> list[NvmlDevice]:
        nvml = self._nvml
        count = int(nvml.nvmlDeviceGetCount())
        gpus = [NvmlDevice(str(i), nvml.nvmlDeviceGetHandleByIndex(i)) for i in range(count)]
        if visible is None:
            return gpus
        chosen: list[NvmlDevice] = []
        for entry in visible:
            device = self._resolve_entry(entry, gpus)
            if device is None:
                # CUDA ignores the first entry it cannot resolve and every entry after
                # it; report exactly the devices CUDA would let the job use.
                logger.debug("CUDA_VISIBLE_DEVICES entry %r matches no device; stop", entry)
                break
            if all(device.label != seen.label for seen in chosen):
                chosen.append(device)
        return chosen

    def _resolve_entry(self, entry: str, gpus: list[NvmlDevice]) -> NvmlDevice | None:
        if entry.isdigit():
            # An integer is a CUDA ordinal. It equals the NVML index when CUDA enumerates
            # in PCI bus order (CUDA_DEVICE_ORDER=PCI_BUS_ID, and on nodes of identical
            # GPUs); CUDA's default FASTEST_FIRST may reorder mixed-model nodes.
            index = int(entry)
            return gpus[index] if index < len(gpus) else None
        if entry.startswith("MIG-"):
            return self._resolve_mig(entry, gpus)
        if entry.startswith("GPU-"):
            # CUDA accepts any unambiguous prefix of a UUID.
            matches = [gpu for gpu in gpus if self._uuid(gpu.handle).startswith(entry)]
            return matches[0] if len(matches) == 1 else None
        return None

    def _resolve_mig(self, entry: str, gpus: list[NvmlDevice]) -> NvmlDevice | None:
        nvml = self._nvml
        legacy: tuple[str, int, int] | None = None
        if entry.startswith("MIG-GPU-"):
            # Pre-R470 form: MIG-GPU-<parent uuid>/<gpu instance>/<compute instance>.
            parts = entry[len("MIG-") :].split("/")
            if len(parts) != 3 or not (parts[1].isdigit() and parts[2].isdigit()):
                return None
            legacy = (parts[0], int(parts[1]), int(parts[2]))
        for gpu in gpus:
            if legacy is not None and self._uuid(gpu.handle) != legacy[0]:
                continue
            for slot, handle in self._mig_slices(gpu.handle):
                if legacy is None:
                    matched = self._uuid(handle).startswith(entry)
                else:
                    matched = (
                        int(nvml.nvmlDeviceGetGpuInstanceId(handle)) == legacy[1]
                        and int(nvml.nvmlDeviceGetComputeInstanceId(handle)) == legacy[2]
                    )
                if matched:
                    return NvmlDevice(f"{gpu.label}_mig_{slot}", handle)
        return None

    def _mig_slices(self, handle: Any) -> list[tuple[int, Any]]:
        nvml = self._nvml
        try:
            current, _pending = nvml.nvmlDeviceGetMigMode(handle)
            if current != getattr(nvml, "NVML_DEVICE_MIG_ENABLE", 1):
                return []
            slots = int(nvml.nvmlDeviceGetMaxMigDeviceCount(handle))
        except nvml.NVMLError:
            return []  # this GPU has no MIG mode
        slices: list[tuple[int, Any]] = []
        for slot in range(slots):
            try:
                slices.append((slot, nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)))
            except nvml.NVMLError:
                continue  # an empty slot
        return slices

    def _uuid(self, handle: Any) -> str:
        try:
            return _text(self._nvml.nvmlDeviceGetUUID(handle))
        except self._nvml.NVMLError:
            return ""

    # -- readings ---------------------------------------------------------------------

    def read(self) -> dict[str, dict[str, float]]:
        """Take every reading of every visible device; see ``GpuReader.read``."""
        if self._closed:
            return {}
        out: dict[str, dict[str, float]] = {}
        for device in self.devices:
            values: dict[str, float] = {}
            for name, take in _NVML_READINGS:
                values.update(self._take(device, name, take))
            if values:
                out[device.label] = values
        return out

    def _take(self, device: NvmlDevice, name: str, take: _Reading) -> dict[str, float]:
        key = (device.label, name)
        if key in self._unsupported:
            return {}
        nvml = self._nvml
        try:
            return take(nvml, device.handle)
        except nvml.NVMLError as exc:
            code = int(getattr(exc, "value", -1))
            if code == getattr(nvml, "NVML_ERROR_NOT_SUPPORTED", 3):
                self._unsupported.add(key)
            if (*key, code) not in self._logged:
                self._logged.add((*key, code))
                logger.debug("GPU %s: NVML refused the %s reading: %s", device.label, name, exc)
            return {}

    def close(self) -> None:
        """Shut NVML down for this reader (NVML counts inits, so others keep theirs)."""
        if self._closed:
            return
        self._closed = True
        _shutdown_quietly(self._nvml)


# One NVML call each; a call that NVML refuses drops only the readings it would give.
_Reading = Callable[[ModuleType, Any], dict[str, float]]


def _utilization(nvml: ModuleType, handle: Any) -> dict[str, float]:
    return {"utilization_percentage": float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)}


def _memory(nvml: ModuleType, handle: Any) -> dict[str, float]:
    info = nvml.nvmlDeviceGetMemoryInfo(handle)
    used, total = float(info.used), float(info.total)
    readings = {"memory_usage_megabytes": used / _MB}
    if total > 0:
        readings["memory_usage_percentage"] = used / total * 100.0
    return readings


def _power(nvml: ModuleType, handle: Any) -> dict[str, float]:
    # NVML reports milliwatts.
    return {"power_usage_watts": float(nvml.nvmlDeviceGetPowerUsage(handle)) / 1000.0}


def _temperature(nvml: ModuleType, handle: Any) -> dict[str, float]:
    celsius = nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)
    return {"temperature_celsius": float(celsius)}


def _sm_clock(nvml: ModuleType, handle: Any) -> dict[str, float]:
    return {"sm_clock_mhz": float(nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_SM))}


_NVML_READINGS: tuple[tuple[str, _Reading], ...] = (
    ("utilization", _utilization),
    ("memory", _memory),
    ("power", _power),
    ("temperature", _temperature),
    ("sm_clock", _sm_clock),
)


# The "no GPU metrics" line is worth saying once per process, not once per run.
_announced = False


def _announce(message: str, *args: object) -> None:
    global _announced
    level = logging.DEBUG if _announced else logging.INFO
    _announced = True
    if level == logging.INFO and not logger.hasHandlers():
        # Logging is not configured (a plain script): an INFO record would go nowhere,
        # and this line is meant to be seen once.
        print(message % args, file=sys.stderr, flush=True)
        return
    logger.log(level, message, *args)


def load_gpu_reader(
    environ: Mapping[str, str] | None = None,
    *,
    nvml: ModuleType | None = None,
) -> NvmlGpuReader | None:
    """Open NVML for the GPUs this process can see, or return None.

    Never raises: a missing ``nvidia-ml-py`` package, a missing NVML library or driver,
    no NVIDIA GPU, or a ``CUDA_VISIBLE_DEVICES`` that hides every GPU each yield None and
    one info line on the ``flightlog.system`` logger (the first time in a process; later
    times at debug level).

    Args:
        environ: where to read ``CUDA_VISIBLE_DEVICES``; defaults to ``os.environ``.
        nvml: an NVML module to use instead of importing ``pynvml`` (a test seam).
    """
    env = os.environ if environ is None else environ
    if nvml is None:
        try:
            nvml = importlib.import_module("pynvml")
        except ImportError:
            _announce(
                "flightlog: no GPU metrics: the nvidia-ml-py package is not installed "
                "(pip install 'flightlog[gpu]')"
            )
            return None
    try:
        nvml.nvmlInit()
    except Exception as exc:  # NVMLError, or OSError from a broken driver install
        _announce("flightlog: no GPU metrics: NVML is not available (%s)", exc)
        return None
    try:
        reader = NvmlGpuReader(nvml, parse_cuda_visible_devices(env.get("CUDA_VISIBLE_DEVICES")))
    except Exception as exc:
        _shutdown_quietly(nvml)
        _announce("flightlog: no GPU metrics: NVML could not list the GPUs (%s)", exc)
        return None
    if not reader.devices:
        reader.close()
        if "CUDA_VISIBLE_DEVICES" in env:
            _announce(
                "flightlog: no GPU metrics: CUDA_VISIBLE_DEVICES=%r leaves no GPU visible",
                env["CUDA_VISIBLE_DEVICES"],
            )
        else:
            _announce("flightlog: no GPU metrics: NVML found no NVIDIA GPU")
        return None
    return reader


def _shutdown_quietly(nvml: ModuleType) -> None:
    try:
        nvml.nvmlShutdown()
    except Exception:
        logger.debug("nvmlShutdown failed", exc_info=True)

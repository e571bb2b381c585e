"""A fake ``pynvml``: the slice of NVML's Python API that ``NvmlGpuReader`` uses.

Deterministic values per device, any reading refusable with an NVML error code. Used
in-process by tests/test_system_metrics.py and installed as ``sys.modules["pynvml"]``
inside the trainer processes of tests/test_multinode.py (``load_gpu_reader`` imports
``pynvml`` by name, so that is the whole seam). No pytest import: trainer processes
load this module.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from types import ModuleType, SimpleNamespace
from typing import Any

NOT_SUPPORTED = 3
NOT_FOUND = 6


@dataclass(frozen=True)
class Refuse:
    """A reading NVML answers with this error code."""

    code: int


@dataclass(eq=False)
class FakeDevice:
    uuid: str
    util: int | Refuse = 50
    mem: tuple[int, int] | Refuse = (4_000_000_000, 16_000_000_000)
    power_mw: int | Refuse = 100_000
    temp: int | Refuse = 60
    sm_mhz: int | Refuse = 1500
    migs: dict[int, FakeDevice] = field(default_factory=dict)
    instance: tuple[int, int] = (0, 0)  # (gpu instance, compute instance) for a MIG slice


def fake_nvml(devices: list[FakeDevice], *, init_error: int | None = None) -> ModuleType:
    """A module with the slice of pynvml's API that NvmlGpuReader uses."""
    m = ModuleType("pynvml")

    class NVMLError(Exception):
        def __init__(self, value: int) -> None:
            super().__init__(f"NVML error {value}")
            self.value = value

    calls: Counter[tuple[str, str]] = Counter()
    state = {"inits": 0, "shutdowns": 0}

    def answer(device: FakeDevice, what: str, value: Any) -> Any:
        calls[(device.uuid, what)] += 1
        if isinstance(value, Refuse):
            raise NVMLError(value.code)
        return value

    def init() -> None:
        if init_error is not None:
            raise NVMLError(init_error)
        state["inits"] += 1

    def shutdown() -> None:
        state["shutdowns"] += 1

    def mig_mode(d: FakeDevice) -> tuple[int, int]:
        if not d.migs:
            raise NVMLError(NOT_SUPPORTED)
        return (1, 1)

    def mig_handle(d: FakeDevice, slot: int) -> FakeDevice:
        if slot not in d.migs:
            raise NVMLError(NOT_FOUND)
        return d.migs[slot]

    def memory(d: FakeDevice) -> SimpleNamespace:
        used, total = answer(d, "memory", d.mem)
        return SimpleNamespace(used=used, total=total, free=total - used)

    def temperature(d: FakeDevice, sensor: int) -> int:
        assert sensor == m.NVML_TEMPERATURE_GPU
        return int(answer(d, "temperature", d.temp))

    def clock(d: FakeDevice, kind: int) -> int:
        assert kind == m.NVML_CLOCK_SM
        return int(answer(d, "sm_clock", d.sm_mhz))

    attrs: dict[str, Any] = {
        "NVMLError": NVMLError,
        "NVML_ERROR_NOT_SUPPORTED": NOT_SUPPORTED,
        "NVML_TEMPERATURE_GPU": 0,
        "NVML_CLOCK_SM": 1,
        "NVML_DEVICE_MIG_ENABLE": 1,
        "calls": calls,
        "state": state,
        "nvmlInit": init,
        "nvmlShutdown": shutdown,
        "nvmlDeviceGetCount": lambda: len(devices),
        "nvmlDeviceGetHandleByIndex": lambda i: devices[i],
        # Old bindings return bytes; the reader must accept both.
        "nvmlDeviceGetUUID": lambda d: d.uuid.encode() if d.uuid.endswith("b") else d.uuid,
        "nvmlDeviceGetUtilizationRates": lambda d: SimpleNamespace(
            gpu=answer(d, "utilization", d.util), memory=0
        ),
        "nvmlDeviceGetMemoryInfo": memory,
        "nvmlDeviceGetPowerUsage": lambda d: answer(d, "power", d.power_mw),
        "nvmlDeviceGetTemperature": temperature,
        "nvmlDeviceGetClockInfo": clock,
        "nvmlDeviceGetMigMode": mig_mode,
        "nvmlDeviceGetMaxMigDeviceCount": lambda d: 7,
        "nvmlDeviceGetMigDeviceHandleByIndex": mig_handle,
        "nvmlDeviceGetGpuInstanceId": lambda d: d.instance[0],
        "nvmlDeviceGetComputeInstanceId": lambda d: d.instance[1],
    }
    for name, value in attrs.items():
        setattr(m, name, value)
    return m

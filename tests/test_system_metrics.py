"""System metrics: the NVML seam, the sampler thread, the settings, the node election.

GPUs are faked at the seam (a fake ``pynvml`` module with deterministic values, some
readings refused); the election is exercised with real processes and real flocks.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import namedtuple
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

from flightlog.agent import gpu as gpu_module
from flightlog.agent import system
from flightlog.agent.gpu import load_gpu_reader, parse_cuda_visible_devices
from flightlog.agent.system import NodeSamplerLock, SystemSampler
from tests.fake_nvml import NOT_SUPPORTED, FakeDevice, Refuse, fake_nvml

GPU_IS_LOST = 15


def four_gpus() -> list[FakeDevice]:
    return [
        FakeDevice(
            uuid=f"GPU-{i}{i}{i}{i}-0000",
            util=10 * (i + 1),
            mem=(1_000_000_000 * (i + 1), 10_000_000_000),
            power_mw=100_000 + i * 1000,
            temp=40 + i,
            sm_mhz=1000 + i,
        )
        for i in range(4)
    ]


@pytest.fixture(autouse=True)
def fresh_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    # Setters and "say it once" flags are process-wide; every test starts clean.
    monkeypatch.setattr(system, "_overrides", system._Overrides())
    monkeypatch.setattr(gpu_module, "_announced", False)
    for name in (
        system.ENABLE_ENV,
        system.MLFLOW_ENABLE_ENV,
        system.INTERVAL_ENV,
        system.MLFLOW_INTERVAL_ENV,
        system.NODE_ENV,
        system.MLFLOW_NODE_ENV,
    ):
        monkeypatch.delenv(name, raising=False)


def info_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "flightlog.system" and r.levelno == logging.INFO
    ]


# --------------------------------------------------------------------------------------
# The NVML reader
# --------------------------------------------------------------------------------------


def test_nvml_reader_reports_every_reading_and_drops_only_the_refused_one() -> None:
    devices = four_gpus()[:2]
    devices[1].power_mw = Refuse(NOT_SUPPORTED)  # as on many consumer cards
    nvml = fake_nvml(devices)
    reader = load_gpu_reader({}, nvml=nvml)
    assert reader is not None

    readings = reader.read()

    assert readings["0"] == {
        "utilization_percentage": 10.0,
        "memory_usage_megabytes": 1000.0,
        "memory_usage_percentage": 10.0,
        "power_usage_watts": 100.0,
        "temperature_celsius": 40.0,
        "sm_clock_mhz": 1000.0,
    }
    assert readings["1"] == {
        "utilization_percentage": 20.0,
        "memory_usage_megabytes": 2000.0,
        "memory_usage_percentage": 20.0,
        "temperature_celsius": 41.0,
        "sm_clock_mhz": 1001.0,
    }
    # NOT_SUPPORTED is permanent: the reading is not asked for again every tick.
    reader.read()
    assert nvml.calls[(devices[1].uuid, "power")] == 1
    assert nvml.calls[(devices[0].uuid, "power")] == 2


def test_a_transient_nvml_error_drops_the_reading_for_that_tick_only() -> None:
    devices = four_gpus()[:1]
    devices[0].util = Refuse(GPU_IS_LOST)
    reader = load_gpu_reader({}, nvml=fake_nvml(devices))
    assert reader is not None

    first = reader.read()["0"]
    devices[0].util = 77
    second = reader.read()["0"]

    assert "utilization_percentage" not in first
    assert first["memory_usage_megabytes"] == 1000.0
    assert second["utilization_percentage"] == 77.0


def test_close_shuts_nvml_down_once() -> None:
    nvml = fake_nvml(four_gpus())
    reader = load_gpu_reader({}, nvml=nvml)
    assert reader is not None
    reader.close()
    reader.close()
    assert nvml.state == {"inits": 1, "shutdowns": 1}
    assert reader.read() == {}


# --------------------------------------------------------------------------------------
# CUDA_VISIBLE_DEVICES
# --------------------------------------------------------------------------------------


def test_parse_cuda_visible_devices() -> None:
    assert parse_cuda_visible_devices(None) is None
    assert parse_cuda_visible_devices("") == []
    assert parse_cuda_visible_devices(" 0, 2 ,") == ["0", "2"]


def visible_labels(cvd: str | None, devices: list[FakeDevice] | None = None) -> list[str]:
    environ = {} if cvd is None else {"CUDA_VISIBLE_DEVICES": cvd}
    reader = load_gpu_reader(environ, nvml=fake_nvml(devices or four_gpus()))
    return [] if reader is None else sorted(reader.read())


def test_visible_devices_are_reported_under_their_real_nvml_indices() -> None:
    assert visible_labels(None) == ["0", "1", "2", "3"]
    assert visible_labels("2,3") == ["2", "3"]
    assert visible_labels("3") == ["3"]
    assert visible_labels("1,1") == ["1"]


def test_visible_device_values_are_those_of_the_physical_device() -> None:
    reader = load_gpu_reader({"CUDA_VISIBLE_DEVICES": "2"}, nvml=fake_nvml(four_gpus()))
    assert reader is not None
    assert reader.read() == {
        "2": {
            "utilization_percentage": 30.0,
            "memory_usage_megabytes": 3000.0,
            "memory_usage_percentage": 30.0,
            "power_usage_watts": 102.0,
            "temperature_celsius": 42.0,
            "sm_clock_mhz": 1002.0,
        }
    }


def test_visible_devices_by_uuid_and_unique_uuid_prefix() -> None:
    assert visible_labels("GPU-2222-0000,GPU-0000-0000") == ["0", "2"]
    assert visible_labels("GPU-1111") == ["1"]
    # Old bindings hand UUIDs back as bytes.
    assert visible_labels("GPU-abcb", [FakeDevice(uuid="GPU-abcb")]) == ["0"]
    # Ambiguous prefix: CUDA rejects it, and everything after it.
    assert visible_labels("GPU-3333,GPU-,GPU-1111") == ["3"]


def test_an_unresolvable_entry_hides_it_and_every_later_entry_as_cuda_does() -> None:
    assert visible_labels("3,7,1") == ["3"]
    assert visible_labels("-1,0") == []


def test_mig_slices_by_uuid_and_legacy_form_report_what_nvml_allows() -> None:
    devices = four_gpus()[:2]
    # MIG slices refuse utilization and power, as real ones do.
    mig = {
        slot: FakeDevice(
            uuid=f"MIG-aaaa-{slot}",
            util=Refuse(NOT_SUPPORTED),
            power_mw=Refuse(NOT_SUPPORTED),
            temp=Refuse(NOT_SUPPORTED),
            sm_mhz=Refuse(NOT_SUPPORTED),
            mem=(500_000_000, 5_000_000_000),
            instance=(slot + 1, 0),
        )
        for slot in (0, 2)
    }
    devices[1].migs = mig
    reader = load_gpu_reader({"CUDA_VISIBLE_DEVICES": "MIG-aaaa-2"}, nvml=fake_nvml(devices))
    assert reader is not None
    assert reader.read() == {
        "1_mig_2": {"memory_usage_megabytes": 500.0, "memory_usage_percentage": 10.0}
    }
    legacy = "MIG-GPU-1111-0000/1/0"
    assert visible_labels(legacy, devices) == ["1_mig_0"]
    assert visible_labels("MIG-GPU-1111-0000/9/0", devices) == []


# --------------------------------------------------------------------------------------
# No NVML, no GPU: no GPU metrics, one info line, no crash
# --------------------------------------------------------------------------------------


def test_no_nvml_package_means_none_and_one_info_line(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` fail
    caplog.set_level(logging.DEBUG, logger="flightlog.system")

    assert load_gpu_reader({}) is None
    assert load_gpu_reader({}) is None

    lines = info_lines(caplog)
    assert len(lines) == 1
    assert "nvidia-ml-py" in lines[0]


@pytest.mark.parametrize(
    ("nvml", "environ", "says"),
    [
        (fake_nvml([], init_error=12), {}, "NVML is not available"),  # no driver library
        (fake_nvml([]), {}, "no NVIDIA GPU"),
        (fake_nvml(four_gpus()), {"CUDA_VISIBLE_DEVICES": ""}, "CUDA_VISIBLE_DEVICES"),
    ],
)
def test_no_usable_gpu_means_none_and_one_info_line(
    nvml: ModuleType,
    environ: dict[str, str],
    says: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="flightlog.system")
    assert load_gpu_reader(environ, nvml=nvml) is None
    lines = info_lines(caplog)
    assert len(lines) == 1
    assert says in lines[0]


def test_sampler_without_nvml_logs_host_metrics_and_no_gpu_metrics(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)
    caplog.set_level(logging.INFO, logger="flightlog.system")
    sampler = SystemSampler("run-nonvml", _discard, interval=1.0, lock_dir=tmp_path, environ={})

    assert sampler.elect()
    metrics = sampler.collect()

    assert "system/system_memory_usage_megabytes" in metrics
    assert "system/process_rss_megabytes" in metrics
    assert not [name for name in metrics if "gpu" in name]
    assert len(info_lines(caplog)) == 1


def test_sampler_opens_pynvml_lazily_and_names_gpu_metrics_by_nvml_index(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    devices = four_gpus()
    devices[3].power_mw = Refuse(NOT_SUPPORTED)
    nvml = fake_nvml(devices)
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    sampler = SystemSampler(
        "run-gpu",
        _discard,
        interval=1.0,
        lock_dir=tmp_path,
        environ={"CUDA_VISIBLE_DEVICES": "1,3"},
    )
    assert nvml.state["inits"] == 0  # nothing touches NVML before the sampler is elected

    assert sampler.elect()
    gpu_metrics = {k: v for k, v in sampler.collect().items() if "gpu" in k}
    sampler.stop()

    assert gpu_metrics == {
        "system/gpu_1_utilization_percentage": 20.0,
        "system/gpu_1_memory_usage_megabytes": 2000.0,
        "system/gpu_1_memory_usage_percentage": 20.0,
        "system/gpu_1_power_usage_watts": 101.0,
        "system/gpu_1_temperature_celsius": 41.0,
        "system/gpu_1_sm_clock_mhz": 1001.0,
        "system/gpu_3_utilization_percentage": 40.0,
        "system/gpu_3_memory_usage_megabytes": 4000.0,
        "system/gpu_3_memory_usage_percentage": 40.0,
        "system/gpu_3_temperature_celsius": 43.0,
        "system/gpu_3_sm_clock_mhz": 1003.0,
    }
    assert nvml.state == {"inits": 1, "shutdowns": 1}  # stop() closed what it opened


# --------------------------------------------------------------------------------------
# Host metrics, rates and names, with psutil and the clock faked
# --------------------------------------------------------------------------------------

CpuTimes = namedtuple("CpuTimes", "user nice system idle iowait guest guest_nice")


class FakeHost:
    """Counters a test moves forward by hand, behind a psutil-shaped module."""

    def __init__(self) -> None:
        self.now = 100.0
        self.cpu = CpuTimes(100.0, 0.0, 50.0, 800.0, 50.0, 10.0, 0.0)
        self.net = [1_000_000_000, 500_000_000]
        self.disk_io = [3_000_000_000, 1_000_000_000]
        self.proc_cpu = [1.0, 0.5]
        self.module = ModuleType("fake_psutil")
        process = SimpleNamespace(
            cpu_times=lambda: SimpleNamespace(user=self.proc_cpu[0], system=self.proc_cpu[1]),
            memory_info=lambda: SimpleNamespace(rss=200_000_000),
        )
        attrs: dict[str, Any] = {
            "cpu_times": lambda: self.cpu,
            "virtual_memory": lambda: SimpleNamespace(used=8_000_000_000, percent=25.0),
            "disk_usage": lambda path: SimpleNamespace(
                percent=50.0, used=100_000_000_000, free=100_000_000_000
            ),
            "disk_io_counters": lambda: SimpleNamespace(
                read_bytes=self.disk_io[0], write_bytes=self.disk_io[1]
            ),
            "net_io_counters": lambda: SimpleNamespace(
                bytes_recv=self.net[0], bytes_sent=self.net[1]
            ),
            "boot_time": lambda: 1000.0,
            "Process": lambda: process,
        }
        for name, value in attrs.items():
            setattr(self.module, name, value)

    def clock(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
        # 40 of 100 cpu ticks busy (the 10 guest ticks stay inside user).
        self.cpu = CpuTimes(130.0, 0.0, 60.0, 850.0, 60.0, 10.0, 0.0)
        self.net = [self.net[0] + 40_000_000, self.net[1] + 10_000_000]
        self.disk_io = [self.disk_io[0] + 8_000_000, self.disk_io[1] + 2_000_000]
        self.proc_cpu = [self.proc_cpu[0] + 0.8, self.proc_cpu[1] + 0.2]


class FakeGpuReader:
    def __init__(self) -> None:
        self.closed = False

    def read(self) -> dict[str, dict[str, float]]:
        return {"5": {"utilization_percentage": 99.0, "temperature_celsius": 70.0}}

    def close(self) -> None:
        self.closed = True


def host_sampler(
    host: FakeHost,
    tmp_path: Path,
    *,
    node: str | None = None,
    environ: dict[str, str] | None = None,
) -> SystemSampler:
    return SystemSampler(
        "run-host",
        _discard,
        interval=2.0,
        node=node,
        gpu=FakeGpuReader(),
        environ=environ or {},
        lock_dir=tmp_path,
        clock=host.clock,
        psutil_module=host.module,
    )


def test_host_metrics_and_rates_have_mlflow_names_and_exact_values(tmp_path: Path) -> None:
    host = FakeHost()
    sampler = host_sampler(host, tmp_path)
    assert sampler.elect()
    first = sampler.collect()
    host.advance(2.0)
    second = sampler.collect()

    # A zero-length window has no rates yet, only gauges.
    assert "system/cpu_utilization_percentage" not in first
    assert "system/network_receive_megabytes_per_second" not in first
    assert first["system/network_receive_megabytes"] == 0.0
    assert second == pytest.approx(
        {
            "system/cpu_utilization_percentage": 40.0,
            "system/system_memory_usage_megabytes": 8000.0,
            "system/system_memory_usage_percentage": 25.0,
            "system/disk_usage_percentage": 50.0,
            "system/disk_usage_megabytes": 100_000.0,
            "system/disk_available_megabytes": 100_000.0,
            "system/disk_read_megabytes_per_second": 4.0,
            "system/disk_write_megabytes_per_second": 1.0,
            "system/network_receive_megabytes": 40.0,
            "system/network_transmit_megabytes": 10.0,
            "system/network_receive_megabytes_per_second": 20.0,
            "system/network_transmit_megabytes_per_second": 5.0,
            "system/process_rss_megabytes": 200.0,
            "system/process_cpu_utilization_percentage": 50.0,
            "system/gpu_5_utilization_percentage": 99.0,
            "system/gpu_5_temperature_celsius": 70.0,
        }
    )


def test_a_window_under_50ms_leaves_rates_out_and_keeps_the_old_baseline(
    tmp_path: Path,
) -> None:
    host = FakeHost()
    sampler = host_sampler(host, tmp_path)
    assert sampler.elect()
    sampler.collect()
    host.now += 0.01
    short = sampler.collect()
    host.advance(1.99)
    full = sampler.collect()

    assert "system/cpu_utilization_percentage" not in short
    assert "system/disk_read_megabytes_per_second" not in short
    assert short["system/system_memory_usage_percentage"] == 25.0
    # Measured over the whole 2 s since the baseline, not the last 1.99 s.
    assert full["system/network_receive_megabytes_per_second"] == pytest.approx(20.0)


def test_node_label_prefixes_every_name(tmp_path: Path) -> None:
    host = FakeHost()
    sampler = host_sampler(host, tmp_path, node="node-a")
    assert sampler.elect()
    names = set(sampler.collect())
    assert "system/node-a/gpu_5_utilization_percentage" in names
    assert "system/node-a/system_memory_usage_megabytes" in names
    assert "system/node-a/process_rss_megabytes" in names
    assert all(name.startswith("system/node-a/") for name in names)


def test_ranked_processes_name_their_own_process_metrics_apart(tmp_path: Path) -> None:
    ranks = {"WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "8"}
    holder = host_sampler(FakeHost(), tmp_path, environ={**ranks, "RANK": "0"})
    follower = host_sampler(FakeHost(), tmp_path, environ={**ranks, "RANK": "3"})
    unranked = host_sampler(FakeHost(), tmp_path)

    assert holder.elect()
    assert not follower.elect()
    assert not unranked.elect()

    assert set(follower.collect()) == {"system/rank_3/process_rss_megabytes"}
    # Without a rank a follower's own numbers could not be told from the holder's.
    assert unranked.collect() == {}
    holder_names = set(holder.collect())
    assert "system/rank_0/process_rss_megabytes" in holder_names
    assert "system/system_memory_usage_megabytes" in holder_names
    holder.stop()
    assert follower.elect()  # the node is free once the holder stops


# --------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------


def test_enable_disable_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert system.system_metrics_enabled({}) is False
    assert system.system_metrics_enabled({system.ENABLE_ENV: "true"}) is True
    assert system.system_metrics_enabled({system.MLFLOW_ENABLE_ENV: "1"}) is True
    assert (
        system.system_metrics_enabled({system.ENABLE_ENV: "false", system.MLFLOW_ENABLE_ENV: "1"})
        is False
    )
    with pytest.raises(ValueError, match=system.ENABLE_ENV):
        system.system_metrics_enabled({system.ENABLE_ENV: "sometimes"})

    system.enable_system_metrics_logging()
    assert system.system_metrics_enabled({system.ENABLE_ENV: "false"}) is True
    system.disable_system_metrics_logging()
    assert system.system_metrics_enabled({system.ENABLE_ENV: "true"}) is False


def test_sampling_interval_settings_and_validation() -> None:
    assert system.system_metrics_sampling_interval({}) == 10.0
    assert system.system_metrics_sampling_interval({system.INTERVAL_ENV: "0.5"}) == 0.5
    assert system.system_metrics_sampling_interval({system.MLFLOW_INTERVAL_ENV: "2"}) == 2.0
    with pytest.raises(ValueError, match=r"FLIGHTLOG_SYSTEM_METRICS_SAMPLING_INTERVAL.*0\.1"):
        system.system_metrics_sampling_interval({system.INTERVAL_ENV: "0.01"})
    with pytest.raises(ValueError, match=r"INTERVAL=.fast. is not valid: expected a number"):
        system.system_metrics_sampling_interval({system.INTERVAL_ENV: "fast"})
    for bad in (0.05, 0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"at least 0\.1"):
            system.set_system_metrics_sampling_interval(bad)
    with pytest.raises(ValueError, match=r"at least 0\.1"):
        SystemSampler("r", _discard, interval=0.01)

    system.set_system_metrics_sampling_interval(0.1)
    assert system.system_metrics_sampling_interval({system.INTERVAL_ENV: "5"}) == 0.1
    system.set_system_metrics_sampling_interval(None)
    assert system.system_metrics_sampling_interval({system.INTERVAL_ENV: "5"}) == 5.0


@pytest.mark.parametrize(
    ("environ", "labelled"),
    [
        ({}, False),
        ({"WORLD_SIZE": "1"}, False),
        # torchrun on one node: GROUP_RANK is set, but every rank is local.
        ({"WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "8", "GROUP_RANK": "0"}, False),
        ({"WORLD_SIZE": "16", "LOCAL_WORLD_SIZE": "8", "GROUP_RANK": "1"}, True),
        ({"WORLD_SIZE": "2"}, True),
        ({"NODE_RANK": "0"}, True),
        ({"GROUP_RANK": "0"}, True),
        ({"SLURM_NNODES": "4"}, True),
    ],
)
def test_automatic_node_label(environ: dict[str, str], labelled: bool) -> None:
    label = system.system_metrics_node_name(environ)
    assert (label == system._host_label()) if labelled else (label is None)


def test_explicit_node_labels_and_their_validation(tmp_path: Path) -> None:
    assert system.system_metrics_node_name({system.NODE_ENV: "rack1-n07"}) == "rack1-n07"
    assert system.system_metrics_node_name({system.MLFLOW_NODE_ENV: "n2"}) == "n2"
    with pytest.raises(ValueError, match="FLIGHTLOG_NODE"):
        system.system_metrics_node_name({system.NODE_ENV: "a/b"})
    with pytest.raises(ValueError):
        system.set_system_metrics_node_name("")
    system.set_system_metrics_node_name("n9")
    assert system.system_metrics_node_name({system.NODE_ENV: "other"}) == "n9"
    # An explicit "" turns the label off even on a multi-node launch.
    sampler = SystemSampler("r", _discard, node="", environ={"WORLD_SIZE": "16"})
    assert sampler.node is None
    assert SystemSampler("r", _discard, environ={}).node == "n9"


# --------------------------------------------------------------------------------------
# The SDK's hook
# --------------------------------------------------------------------------------------


class ListSink:
    def __init__(self) -> None:
        self.items: list[tuple[str, str, float, int, float]] = []

    def submit_metric(self, item: tuple[str, str, float, int, float]) -> None:
        self.items.append(item)


def test_start_for_run_follows_the_switches_and_feeds_the_agent_queue(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)
    sink = ListSink()
    run_id = f"hook-{os.getpid()}-{time.monotonic_ns()}"
    assert system.start_for_run(run_id, sink, None) is None  # off by default
    assert system.start_for_run(run_id, sink, False) is None
    system.enable_system_metrics_logging()
    assert system.start_for_run(run_id, sink, False) is None  # the run's own choice wins

    before = time.time()
    sampler = system.start_for_run(run_id, sink, None)
    assert sampler is not None and sampler.is_alive
    assert sampler.interval == 10.0
    assert sampler.stop() is True

    keys = {key for _, key, _, _, _ in sink.items}
    assert "system/system_memory_usage_percentage" in keys
    for rid, _key, value, step, ts in sink.items:
        assert (rid, step) == (run_id, 0)
        assert isinstance(value, float)
        assert before <= ts <= time.time()


def test_start_for_run_turns_a_bad_setting_into_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(system.INTERVAL_ENV, "0.001")
    caplog.set_level(logging.WARNING, logger="flightlog.system")
    assert system.start_for_run("r", ListSink(), True) is None
    assert system.INTERVAL_ENV in caplog.text


# --------------------------------------------------------------------------------------
# The thread: stop() wakes it, the final sample, failures do not kill it
# --------------------------------------------------------------------------------------


def _discard(run_id: str, metrics: dict[str, float], step: int) -> None:
    pass


class Recorder:
    def __init__(self, want: int = 1) -> None:
        self.calls: list[tuple[str, dict[str, float], int]] = []
        self.want = want
        self.enough = threading.Event()
        self.threads: set[str] = set()

    def __call__(self, run_id: str, metrics: dict[str, float], step: int) -> None:
        self.calls.append((run_id, metrics, step))
        self.threads.add(threading.current_thread().name)
        if len(self.calls) >= self.want:
            self.enough.set()


def test_stop_wakes_a_sampler_waiting_out_a_long_interval(tmp_path: Path) -> None:
    recorder = Recorder()
    sampler = SystemSampler(
        "run-stop", recorder, interval=30.0, gpu=None, environ={}, lock_dir=tmp_path
    )
    sampler.start()
    assert sampler.is_alive

    # Functional, not a timing claim: a sleeping loop would still be inside its 30 s.
    assert sampler.stop(timeout=2.0) is True
    assert not sampler.is_alive
    # No tick came due; stop() took the one final sample, at step 0, on the thread.
    assert [(run_id, step) for run_id, _, step in recorder.calls] == [("run-stop", 0)]
    assert "system/system_memory_usage_megabytes" in recorder.calls[0][1]
    assert recorder.threads == {"flightlog-system-run-stop"}
    assert sampler.stop() is True  # idempotent
    assert NodeSamplerLock("run-stop", system._host_label(), directory=tmp_path).try_acquire()


def test_steps_count_samples_from_zero(tmp_path: Path) -> None:
    recorder = Recorder(want=3)
    sampler = SystemSampler("run-steps", recorder, interval=0.1, gpu=None, lock_dir=tmp_path)
    sampler.start()
    assert recorder.enough.wait(10)
    sampler.stop()
    steps = [step for _, _, step in recorder.calls]
    assert steps == list(range(len(steps)))
    assert len(steps) >= 3
    with pytest.raises(RuntimeError):
        sampler.start()


def test_a_failing_submit_or_gpu_reader_does_not_kill_the_thread(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[int] = []
    enough = threading.Event()

    def flaky_submit(run_id: str, metrics: dict[str, float], step: int) -> None:
        calls.append(step)
        if len(calls) >= 3:
            enough.set()
        raise RuntimeError("queue closed")

    class BrokenReader(FakeGpuReader):
        def read(self) -> dict[str, dict[str, float]]:
            raise RuntimeError("driver fell over")

    caplog.set_level(logging.WARNING, logger="flightlog.system")
    sampler = SystemSampler(
        "run-flaky", flaky_submit, interval=0.1, gpu=BrokenReader(), environ={}, lock_dir=tmp_path
    )
    sampler.start()
    assert enough.wait(10)
    assert sampler.is_alive
    assert sampler.stop() is True
    # The broken GPU costs only the GPU metrics; each failure is reported once, not
    # every interval.
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert any("GPU read failed" in w and "driver fell over" in w for w in warnings)
    assert any("sample failed" in w and "queue closed" in w for w in warnings)


# --------------------------------------------------------------------------------------
# Election
# --------------------------------------------------------------------------------------


def test_node_lock_is_exclusive_per_run_and_node(tmp_path: Path) -> None:
    a = NodeSamplerLock("run-1", "n", directory=tmp_path)
    b = NodeSamplerLock("run-1", "n", directory=tmp_path)
    other_run = NodeSamplerLock("run-2", "n", directory=tmp_path)
    other_node = NodeSamplerLock("run-1", "m", directory=tmp_path)

    assert a.try_acquire()
    assert a.try_acquire()  # re-asking keeps it
    assert not b.try_acquire()
    assert other_run.try_acquire()
    assert other_node.try_acquire()
    a.release()
    assert b.try_acquire()


def test_a_symlink_planted_as_the_lock_file_is_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    lock = NodeSamplerLock("run-link", "n", directory=tmp_path / "locks", environ={})
    lock.path.parent.mkdir()
    lock.path.symlink_to(victim)

    lock.try_acquire()  # falls back to LOCAL_RANK rather than open the link
    lock.write_state({"pid": 1})

    assert victim.read_text() == "precious"


def test_a_forked_child_does_not_keep_the_parents_lock(tmp_path: Path) -> None:
    holder = NodeSamplerLock("run-fork", "n", directory=tmp_path)
    assert holder.try_acquire()
    child_reads, parent_writes = os.pipe()
    parent_reads, child_writes = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child, e.g. a DataLoader worker, outlives the lock's release
        try:
            os.write(child_writes, b"0" if holder.held else b"1")
            os.read(child_reads, 1)
        finally:
            os._exit(0)
    os.close(child_reads)
    os.close(child_writes)
    try:
        assert os.read(parent_reads, 1) == b"1"  # the child does not think it holds it
        holder.release()
        # The child still has every descriptor it inherited, but not the lock's.
        assert NodeSamplerLock("run-fork", "n", directory=tmp_path).try_acquire()
    finally:
        os.write(parent_writes, b"x")
        os.waitpid(pid, 0)
        os.close(parent_writes)
        os.close(parent_reads)


def test_no_lock_directory_falls_back_to_local_rank_zero(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(system, "_fallback_announced", False)
    caplog.set_level(logging.INFO, logger="flightlog.system")
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")

    rank0 = NodeSamplerLock("r", "n", directory=blocked, environ={"LOCAL_RANK": "0"})
    rank1 = NodeSamplerLock("r", "n", directory=blocked, environ={"LOCAL_RANK": "1"})

    assert rank0.try_acquire()
    assert not rank1.try_acquire()
    assert len(info_lines(caplog)) == 1


def test_a_takeover_continues_the_node_steps_and_keeps_the_ranks_own(tmp_path: Path) -> None:
    def ranked(rank: int) -> dict[str, str]:
        return {"RANK": str(rank), "WORLD_SIZE": "2"}

    first, second = Recorder(want=3), Recorder()
    a = SystemSampler(
        "run-steps", first, interval=0.1, node="n", gpu=None, environ=ranked(0), lock_dir=tmp_path
    )
    b = SystemSampler(
        "run-steps", second, interval=0.1, node="n", gpu=None, environ=ranked(1), lock_dir=tmp_path
    )
    a.start()
    assert first.enough.wait(10)
    b.start()
    assert a.stop() is True  # b takes the node over at its next tick
    node_metric = "system/n/system_memory_usage_megabytes"

    def took_over() -> bool:
        return any(node_metric in metrics for _, metrics, _ in second.calls)

    deadline = time.monotonic() + 10
    while not took_over() and time.monotonic() < deadline:
        time.sleep(0.02)  # b's thread ticks on its own; nothing to wait on but time
    assert b.stop() is True
    assert took_over()

    def steps(recorder: Recorder, name: str) -> list[int]:
        return [step for _, metrics, step in recorder.calls if name in metrics]

    # The node's series goes on where a left it: every step once, none skipped.
    node_steps = steps(first, node_metric) + steps(second, node_metric)
    assert node_steps == list(range(len(node_steps)))
    # Each rank's own series counts its own ticks.
    for rank, recorder in enumerate((first, second)):
        own = steps(recorder, f"system/n/rank_{rank}/process_rss_megabytes")
        assert own == list(range(len(own))) and own
    # b's ticks after the takeover hand its own and the node's samples on apart.
    assert any(node_metric in m and not any("rank_1" in k for k in m) for _, m, _ in second.calls)


def test_a_new_holder_reads_the_next_step_from_the_lock_file(tmp_path: Path) -> None:
    recorder = Recorder()
    lock = NodeSamplerLock("run-next", "n", directory=tmp_path)
    assert lock.try_acquire()
    lock.write_state({"next_step": 41})
    lock.release()
    sampler = SystemSampler(
        "run-next", recorder, interval=30.0, node="n", gpu=None, environ={}, lock_dir=tmp_path
    )
    sampler.start()
    assert sampler.stop() is True
    # Unranked, the elected process's own metrics are the node's: one sample, step 41.
    assert [(step, "system/n/process_rss_megabytes" in m) for _, m, step in recorder.calls] == [
        (41, True)
    ]
    assert system._next_step({"next_step": True}) == 0
    assert system._next_step({"next_step": -3}) == 0
    assert system._next_step({"next_step": "7"}) == 0


# Each child: a SystemSampler on a shared run id; every submit is one JSON line on
# stdout; "stop" on stdin stops it.
CHILD = r"""
import json, sys, threading
from flightlog.agent.system import SystemSampler

run_id, lock_dir, rank, world = sys.argv[1:5]
lock = threading.Lock()

def emit(obj):
    with lock:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

def submit(run, metrics, step):
    emit({"step": step, "names": sorted(metrics)})

environ = {"RANK": rank, "WORLD_SIZE": world, "LOCAL_RANK": rank, "LOCAL_WORLD_SIZE": world}
sampler = SystemSampler(
    run_id, submit, interval=0.1, gpu=None, environ=environ, lock_dir=lock_dir
)
sampler.start()
for line in sys.stdin:
    if line.strip() == "stop":
        emit({"stopped": sampler.stop(5.0)})
        break
"""

NODE_METRIC = "system/system_memory_usage_megabytes"


class Child:
    """One sampler process, its output lines collected by a reader thread."""

    def __init__(self, rank: int, world: int, run_id: str, lock_dir: Path, log: Path) -> None:
        self.rank = rank
        self.stderr = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, run_id, str(lock_dir), str(rank), str(world)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
        )
        self.records: list[dict[str, Any]] = []
        self.lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(json.loads(line))
        self.lines.put(None)

    def next(self, timeout: float = 20.0) -> dict[str, Any] | None:
        record = self.lines.get(timeout=timeout)
        if record is not None:
            self.records.append(record)
        return record

    def wait_for(self, predicate: Any, timeout: float = 20.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            record = self.next(max(0.01, deadline - time.monotonic()))
            assert record is not None, f"rank {self.rank} exited early"
            if predicate(record):
                return record

    def sampled_node(self) -> bool:
        return any(NODE_METRIC in r.get("names", ()) for r in self.records)

    def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("stop\n")
        self.proc.stdin.flush()
        assert self.wait_for(lambda r: "stopped" in r) == {"stopped": True}
        assert self.proc.wait(20) == 0

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.stderr.close()


@pytest.fixture
def children(tmp_path: Path) -> Iterator[list[Child]]:
    spawned: list[Child] = []
    yield spawned
    for child in spawned:
        child.close()


def test_four_processes_of_one_run_sample_the_node_once(
    tmp_path: Path, children: list[Child]
) -> None:
    lock_dir = tmp_path / "locks"
    for rank in range(4):
        children.append(Child(rank, 4, "run-ddp", lock_dir, tmp_path / f"rank{rank}.err"))

    # Every rank reports its own process each tick; wait until all have ticked 3 times,
    # so all four samplers have been competing for the node.
    for child in children:
        child.wait_for(lambda r: r.get("step") == 2)

    holders = [child for child in children if child.sampled_node()]
    assert len(holders) == 1
    holder = holders[0]
    # Stop the others first: once the holder stops, a survivor would rightly take over.
    for child in children:
        if child is not holder:
            child.stop()
    holder.stop()

    for child in children:
        own = f"system/rank_{child.rank}/"
        ticks = [record for record in child.records if "step" in record]
        assert ticks
        for record in ticks:
            names = record["names"]
            node_names = [n for n in names if not n.startswith("system/rank_")]
            assert all(n.startswith(own) for n in names if n.startswith("system/rank_"))
            if child is holder:
                assert NODE_METRIC in node_names
            else:
                assert node_names == [], f"rank {child.rank} sampled the node too"
    node_steps = [r["step"] for r in holder.records if NODE_METRIC in r.get("names", ())]
    assert node_steps == list(range(len(node_steps)))


def test_a_survivor_takes_over_when_the_sampling_process_dies(
    tmp_path: Path, children: list[Child]
) -> None:
    lock_dir = tmp_path / "locks"
    for rank in range(3):
        children.append(Child(rank, 3, "run-takeover", lock_dir, tmp_path / f"rank{rank}.err"))
    for child in children:
        child.wait_for(lambda r: r.get("step") == 1)
    holders = [child for child in children if child.sampled_node()]
    assert len(holders) == 1
    dead = holders[0]

    dead.proc.send_signal(signal.SIGKILL)
    dead.proc.wait(20)
    survivors = [child for child in children if child is not dead]
    for child in survivors:
        child.records.clear()

    # One survivor must start sampling the node within a few of its ticks.
    first_takeover = threading.Event()

    def watch(child: Child) -> None:
        child.wait_for(lambda r: NODE_METRIC in r.get("names", ()) or first_takeover.is_set())
        first_takeover.set()

    watchers = [threading.Thread(target=watch, args=(c,), daemon=True) for c in survivors]
    for watcher in watchers:
        watcher.start()
    assert first_takeover.wait(20)
    for watcher in watchers:
        watcher.join(20)
    # Let both survivors tick a few more times, then check only one took the node.
    for child in survivors:
        last = child.records[-1]["step"]
        child.wait_for(lambda r, last=last: r.get("step", -1) >= last + 3)
    assert sum(child.sampled_node() for child in survivors) == 1
    # The survivor goes on with the node's steps where the dead holder stopped (one
    # step is lost when the kill fell between handing a step out and its sample).
    while dead.next() is not None:
        pass
    dead_last = max(r["step"] for r in dead.records if NODE_METRIC in r.get("names", ()))
    taker = next(child for child in survivors if child.sampled_node())
    taken = [r["step"] for r in taker.records if NODE_METRIC in r.get("names", ())]
    assert dead_last + 1 <= taken[0] <= dead_last + 2, (dead_last, taken)
    assert taken == list(range(taken[0], taken[0] + len(taken)))
    for child in survivors:
        child.stop()

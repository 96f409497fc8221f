"""NVIDIA GPU power through NVML: instant and average power, the total-energy counter, and state."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import pynvml

from tokencarbon.errors import HardwareMismatchError
from tokencarbon.lease import cuda_device_nvml_index
from tokencarbon.power.base import PowerSample

_MILLI = 1e-3  # NVML reports power in mW and energy in mJ

# Union member holding a field value, by nvmlFieldValue_t.valueType.
_VALUE_MEMBER = {
    pynvml.NVML_VALUE_TYPE_DOUBLE: "dVal",
    pynvml.NVML_VALUE_TYPE_UNSIGNED_INT: "uiVal",
    pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG: "ulVal",
    pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG: "ullVal",
    pynvml.NVML_VALUE_TYPE_SIGNED_LONG_LONG: "sllVal",
    pynvml.NVML_VALUE_TYPE_SIGNED_INT: "siVal",
    pynvml.NVML_VALUE_TYPE_UNSIGNED_SHORT: "usVal",
}


def _init(device_index: int) -> None:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        raise HardwareMismatchError(
            f"NVML (the NVIDIA driver's management library) is unavailable, so GPU device_index="
            f"{device_index} cannot be read ({exc}); the nvml power source needs an NVIDIA GPU and "
            f"driver, use kind 'modeled_cpu' on a CPU platform"
        ) from exc


def _handle(device_index: int):
    """The NVML handle of CUDA device `device_index`, honouring CUDA_VISIBLE_DEVICES (parsed by
    tokencarbon.lease, the project's one parser of it)."""
    uuids = [
        pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(i))
        for i in range(pynvml.nvmlDeviceGetCount())
    ]
    return pynvml.nvmlDeviceGetHandleByIndex(cuda_device_nvml_index(device_index, uuids))


def _field_w(field) -> float:
    """A power field value in W, NaN where the driver did not return one."""
    if field.nvmlReturn != pynvml.NVML_SUCCESS:
        return math.nan
    return getattr(field.value, _VALUE_MEMBER[field.valueType]) * _MILLI


class NvmlSource:
    """Samples one GPU; readings the device does not support come back as NaN (-1 for reasons)."""

    source = "nvml"

    def __init__(self, device_index: int) -> None:
        _init(device_index)
        try:
            self.device_index = device_index
            self._handle = h = _handle(device_index)
            # Optional readings, kept only if the device answers them once: an unsupported call
            # fails on every poll and costs as much as a supported one.
            try:
                self._has_instant = not math.isnan(self._read_fields()[0])
                self._has_fields = True
            except pynvml.NVMLError:  # drivers older than the power fields (r520)
                self._has_instant = self._has_fields = False
            candidates: dict[str, Callable[[], float]] = {
                "energy_counter_j": lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(h) * _MILLI,
                "util_pct": lambda: pynvml.nvmlDeviceGetUtilizationRates(h).gpu,
                "mem_used_bytes": lambda: pynvml.nvmlDeviceGetMemoryInfo(h).used,
                "temperature_c": lambda: pynvml.nvmlDeviceGetTemperature(
                    h, pynvml.NVML_TEMPERATURE_GPU
                ),
                "sm_clock_mhz": lambda: pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM),
                "mem_clock_mhz": lambda: pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_MEM),
                "throttle_reasons": lambda: pynvml.nvmlDeviceGetCurrentClocksEventReasons(h),
            }
            self._readers = {}
            for name, reader in candidates.items():
                try:
                    reader()
                except pynvml.NVMLError:
                    continue
                self._readers[name] = reader
            pynvml.nvmlDeviceGetPowerUsage(h)  # the one reading every NVML GPU must give
        except BaseException:
            pynvml.nvmlShutdown()
            raise

    def describe(self) -> str:
        """The GPU's name and UUID, as NVML gives them."""
        return (
            f"{pynvml.nvmlDeviceGetName(self._handle)} "
            f"({pynvml.nvmlDeviceGetUUID(self._handle)}), NVML"
        )

    def _read_fields(self) -> tuple[float, float]:
        instant, average = pynvml.nvmlDeviceGetFieldValues(
            self._handle, [pynvml.NVML_FI_DEV_POWER_INSTANT, pynvml.NVML_FI_DEV_POWER_AVERAGE]
        )
        return _field_w(instant), _field_w(average)

    def read(self) -> PowerSample:
        before_ns = time.time_ns()
        power_w, power_avg_w = self._read_fields() if self._has_fields else (math.nan, math.nan)
        if not self._has_instant:
            # On Ampere and newer this is a 1 s average; older GPUs have nothing better.
            power_w = pynvml.nvmlDeviceGetPowerUsage(self._handle) * _MILLI
        values = {name: reader() for name, reader in self._readers.items()}
        # One poll costs a few ms (the energy counter most); stamp it at its middle.
        t_wall_ns = (before_ns + time.time_ns()) // 2
        return PowerSample(
            t_wall_ns=t_wall_ns,
            source=self.source,
            modeled=False,
            device_index=self.device_index,
            power_w=power_w,
            power_avg_w=power_avg_w,
            **values,
        )

    def close(self) -> None:
        pynvml.nvmlShutdown()


def describe_gpu(device_index: int) -> dict:
    """Name, UUID, driver, power limit, max clocks and memory of one GPU, for meta.json."""
    _init(device_index)
    try:
        h = _handle(device_index)
        return {
            "name": pynvml.nvmlDeviceGetName(h),
            "uuid": pynvml.nvmlDeviceGetUUID(h),
            "driver_version": pynvml.nvmlSystemGetDriverVersion(),
            "power_limit_w": pynvml.nvmlDeviceGetEnforcedPowerLimit(h) * _MILLI,
            "max_sm_clock_mhz": pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_SM),
            "max_mem_clock_mhz": pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_MEM),
            "memory_total_bytes": pynvml.nvmlDeviceGetMemoryInfo(h).total,
        }
    finally:
        pynvml.nvmlShutdown()


def gpu_state(device_index: int) -> dict:
    """The state that decides how fast and how hot one GPU runs, now: enforced power limit (W),
    SM and memory clocks (MHz), temperature (C), performance state, clocks-event (throttle)
    reasons bitmask and its set names; taken at the start and end of a cell's measured window
    (meta.json), so a window that began cold or ended throttled is visible. A reading the device
    does not support is None."""
    _init(device_index)
    try:
        h = _handle(device_index)
        readers = {
            "power_limit_w": lambda: pynvml.nvmlDeviceGetEnforcedPowerLimit(h) * _MILLI,
            "sm_clock_mhz": lambda: pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM),
            "mem_clock_mhz": lambda: pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_MEM),
            "temperature_c": lambda: pynvml.nvmlDeviceGetTemperature(
                h, pynvml.NVML_TEMPERATURE_GPU
            ),
            "pstate": lambda: pynvml.nvmlDeviceGetPerformanceState(h),
            "throttle_reasons": lambda: pynvml.nvmlDeviceGetCurrentClocksEventReasons(h),
        }
        state: dict = {"t_wall_ns": time.time_ns()}
        for name, reader in readers.items():
            try:
                state[name] = reader()
            except pynvml.NVMLError:
                state[name] = None
        state["throttle_reason_names"] = throttle_reason_names(state["throttle_reasons"])
        return state
    finally:
        pynvml.nvmlShutdown()


# NVML's clocks-event reason bits (nvml.h, nvmlClocksEventReason*), by the name nvml.h gives.
_REASONS = {
    "gpu_idle": pynvml.nvmlClocksEventReasonGpuIdle,
    "applications_clocks_setting": pynvml.nvmlClocksEventReasonApplicationsClocksSetting,
    "sw_power_cap": pynvml.nvmlClocksEventReasonSwPowerCap,
    "hw_slowdown": pynvml.nvmlClocksEventReasonHwSlowdown,
    "sync_boost": pynvml.nvmlClocksEventReasonSyncBoost,
    "sw_thermal_slowdown": pynvml.nvmlClocksEventReasonSwThermalSlowdown,
    "hw_thermal_slowdown": pynvml.nvmlClocksEventReasonHwThermalSlowdown,
    "hw_power_brake_slowdown": pynvml.nvmlClocksEventReasonHwPowerBrakeSlowdown,
    "display_clock_setting": pynvml.nvmlClocksEventReasonDisplayClockSetting,
}


def throttle_reason_names(bitmask: int | None) -> list[str] | None:
    """The names of the reason bits set in an NVML clocks-event bitmask; None for None or -1."""
    if bitmask is None or bitmask < 0:
        return None
    return [name for name, bit in _REASONS.items() if bitmask & bit]

"""NVIDIA GPU power through NVML: instant and average power, the total-energy counter, and state."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable

import pynvml

from tokencarbon.errors import HardwareMismatchError
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
    """The NVML handle of CUDA device `device_index`, honouring CUDA_VISIBLE_DEVICES.

    NVML numbers every GPU of the host in PCI order, whatever CUDA_VISIBLE_DEVICES says; CUDA
    numbers only the visible ones, in the listed order. Entries are NVML indices or (prefixes of)
    GPU UUIDs. Without CUDA_DEVICE_ORDER=PCI_BUS_ID, CUDA orders unlisted GPUs fastest first,
    which equals PCI order on the single-model nodes this project measures.
    """
    uuids = [
        pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(i))
        for i in range(pynvml.nvmlDeviceGetCount())
    ]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    entries = [e.strip() for e in visible.split(",")] if visible is not None else uuids
    where = f"CUDA_VISIBLE_DEVICES={visible!r}" if visible is not None else "NVML"
    if not 0 <= device_index < len(entries) or entries[device_index] in ("", "-1"):
        raise HardwareMismatchError(
            f"GPU device_index={device_index} does not exist: {where} lists {len(entries)} "
            f"device(s) {entries}; expected 0 <= device_index < {len(entries)}"
        )
    entry = entries[device_index]
    matches = (
        [i for i, u in enumerate(uuids) if u.startswith(entry)]
        if entry.startswith("GPU-")
        else [int(entry)] if entry.isdigit() and int(entry) < len(uuids) else []
    )
    if len(matches) != 1:
        raise HardwareMismatchError(
            f"GPU device_index={device_index} is {entry!r} in {where}, which names no single GPU "
            f"NVML sees (GPU indices 0..{len(uuids) - 1}, UUIDs {uuids}); MIG instances are "
            f"not supported"
        )
    return pynvml.nvmlDeviceGetHandleByIndex(matches[0])


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

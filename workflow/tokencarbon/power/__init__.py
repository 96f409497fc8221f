"""Power sources behind one interface: a plain spec dict in, PowerSample records out.

Specs are plain (picklable, JSON-able) so a sidecar process can open the source itself:
  {"kind": "nvml", "device_index": 0}        an NVIDIA GPU (tokencarbon.power.nvml)
  {"kind": "rapl"}                           CPU packages + DRAM of this machine, RAPL counters
                                             (tokencarbon.power.rapl)
  {"kind": "zeus_gpu", "device_index": 0}    an AMD GPU through Zeus's device layer
  {"kind": "zeus_soc"}                       Apple silicon through Zeus (tokencarbon.power.zeusdev)
  {"kind": "modeled_cpu", "tdp_w": 65.0}     an ESTIMATE, TDP x CPU utilisation of a process tree,
                                             where nothing can be read (tokencarbon.power.modeled)

Importing this package loads no source library (pynvml, psutil, zeus) nor pandas/pyarrow: the
sidecar process starts on what its one source needs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from tokencarbon.errors import ConfigError
from tokencarbon.power.base import PowerSample

__all__ = [
    "DEFAULT_INTERVAL_S",
    "PowerSample",
    "PowerSource",
    "check_spec",
    "describe_gpu",
    "open_source",
    "read_nvidia_smi_csv",
    "samples_table",
]

# NVML's energy counter moves about every 100 ms on an H100, so 50 ms sees every step; psutil's
# CPU times tick at 10 ms, so 100 ms keeps the modeled utilisation from being mostly quantisation.
# RAPL counters update about every 1 ms, and an Apple SoC's about as often; 100 ms keeps their
# power (a counter step over the interval) well resolved at a few file reads per second.
DEFAULT_INTERVAL_S = {
    "nvml": 0.05, "zeus_gpu": 0.05, "rapl": 0.1, "zeus_soc": 0.1, "modeled_cpu": 0.1
}  # fmt: skip

_KEYS = {
    "nvml": {"kind", "device_index"},
    "zeus_gpu": {"kind", "device_index"},
    "rapl": {"kind"},
    "zeus_soc": {"kind"},
    "modeled_cpu": {"kind", "tdp_w"},
}


class PowerSource(Protocol):
    source: str

    def read(self) -> PowerSample: ...

    def close(self) -> None: ...


def check_spec(spec: Mapping) -> dict:
    """A copy of `spec` if it names a known source with exactly its keys; ConfigError otherwise."""
    kind = spec.get("kind") if isinstance(spec, Mapping) else None
    if kind not in _KEYS:
        raise ConfigError(f"power source spec {spec!r}: 'kind' must be one of {sorted(_KEYS)}")
    if set(spec) != _KEYS[kind]:
        raise ConfigError(
            f"power source spec {dict(spec)!r}: kind {kind!r} takes exactly the keys "
            f"{sorted(_KEYS[kind])}"
        )
    if "device_index" in spec and not (
        isinstance(spec["device_index"], int) and spec["device_index"] >= 0
    ):
        raise ConfigError(f"power source spec {dict(spec)!r}: device_index must be an int >= 0")
    if kind == "modeled_cpu" and not (isinstance(spec["tdp_w"], int | float) and spec["tdp_w"] > 0):
        raise ConfigError(f"power source spec {dict(spec)!r}: tdp_w must be a number of W > 0")
    return dict(spec)


def open_source(spec: Mapping, target_pid: int) -> PowerSource:
    """Open the source `spec` names; `target_pid` is the process a modeled source measures.
    Raises ConfigError for a bad spec, HardwareMismatchError where the device cannot be read."""
    spec = check_spec(spec)
    kind = spec["kind"]
    if kind == "nvml":
        from tokencarbon.power.nvml import NvmlSource

        return NvmlSource(spec["device_index"])
    if kind == "rapl":
        from tokencarbon.power.rapl import RaplSource

        return RaplSource()
    if kind == "zeus_gpu":
        from tokencarbon.power.zeusdev import ZeusGpuSource

        return ZeusGpuSource(spec["device_index"])
    if kind == "zeus_soc":
        from tokencarbon.power.zeusdev import ZeusSocSource

        return ZeusSocSource()
    from tokencarbon.power.modeled import ModeledCpuSource

    return ModeledCpuSource(spec["tdp_w"], target_pid)


def __getattr__(name: str):
    # Kept importable from here (tests, importers) but loaded on first use.
    if name == "samples_table":
        from tokencarbon.power.base import samples_table

        return samples_table
    if name == "describe_gpu":
        from tokencarbon.power.nvml import describe_gpu

        return describe_gpu
    if name == "read_nvidia_smi_csv":
        from tokencarbon.power.nvidia_smi import read_nvidia_smi_csv

        return read_nvidia_smi_csv
    raise AttributeError(f"module 'tokencarbon.power' has no attribute {name!r}")

"""Power sources behind one interface: a plain spec dict in, PowerSample records out.

Specs are plain (picklable, JSON-able) so a sidecar process can open the source itself:
{"kind": "nvml", "device_index": 0} or {"kind": "modeled_cpu", "tdp_w": 65.0}.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from tokencarbon.errors import ConfigError
from tokencarbon.power.base import PowerSample, samples_table
from tokencarbon.power.modeled import ModeledCpuSource
from tokencarbon.power.nvidia_smi import read_nvidia_smi_csv
from tokencarbon.power.nvml import NvmlSource, describe_gpu

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
DEFAULT_INTERVAL_S = {"nvml": 0.05, "modeled_cpu": 0.1}

_KEYS = {"nvml": {"kind", "device_index"}, "modeled_cpu": {"kind", "tdp_w"}}


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
    if kind == "nvml" and not (isinstance(spec["device_index"], int) and spec["device_index"] >= 0):
        raise ConfigError(f"power source spec {dict(spec)!r}: device_index must be an int >= 0")
    if kind == "modeled_cpu" and not (isinstance(spec["tdp_w"], int | float) and spec["tdp_w"] > 0):
        raise ConfigError(f"power source spec {dict(spec)!r}: tdp_w must be a number of W > 0")
    return dict(spec)


def open_source(spec: Mapping, target_pid: int) -> PowerSource:
    """Open the source `spec` names; `target_pid` is the process a modeled source measures."""
    spec = check_spec(spec)
    if spec["kind"] == "nvml":
        return NvmlSource(spec["device_index"])
    return ModeledCpuSource(spec["tdp_w"], target_pid)

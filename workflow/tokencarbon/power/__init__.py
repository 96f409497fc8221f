"""Power sources behind one interface: a plain spec dict in, PowerSample records out.

Specs are plain (picklable, JSON-able) so a sidecar process can open the source itself:
  {"kind": "nvml", "device_index": 0}        an NVIDIA GPU (tokencarbon.power.nvml)
  {"kind": "rapl"}                           CPU packages + DRAM of this machine, RAPL counters
                                             (tokencarbon.power.rapl)
  {"kind": "zeus_gpu", "device_index": 0}    an AMD GPU through Zeus's device layer
  {"kind": "zeus_soc"}                       Apple silicon through Zeus (tokencarbon.power.zeusdev)
  {"kind": "modeled_cpu", "tdp_w": 65.0}     an ESTIMATE, TDP x CPU utilisation of a process tree,
                                             where nothing can be read (tokencarbon.power.modeled)
  {"kind": "auto"}                           the first of these this machine can read
                                             (open_default); a sidecar resolves it in its process

Importing this package loads no source library (pynvml, psutil, zeus) nor pandas/pyarrow: the
sidecar process starts on what its one source needs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from tokencarbon.errors import ConfigError, HardwareMismatchError, InputError
from tokencarbon.power.base import PowerSample

__all__ = [
    "DEFAULT_INTERVAL_S",
    "FIRST_SPAN_S",
    "PowerSample",
    "PowerSource",
    "check_spec",
    "describe_gpu",
    "open_default",
    "open_source",
    "samples_table",
]

# NVML's energy counter moves about every 100 ms on an H100, so 50 ms sees every step; psutil's
# CPU times tick at 10 ms, so 100 ms keeps the modeled utilisation from being mostly quantisation.
# RAPL counters update about every 1 ms, and an Apple SoC's about as often; 100 ms keeps their
# power (a counter step over the interval) well resolved at a few file reads per second.
DEFAULT_INTERVAL_S = {
    "nvml": 0.05, "zeus_gpu": 0.05, "rapl": 0.1, "zeus_soc": 0.1, "modeled_cpu": 0.1
}  # fmt: skip
# A sidecar of kind "auto" takes the interval of the kind it resolves to.

# How long after a source opens its first kept sample may be taken (s), at most one interval:
# a GPU's readings are instant (and its counter absolute), so none; a RAPL or SoC counter needs a
# step to divide (updates about every 1 ms: 20 ms resolves the mean power to about 5 %); modeled
# CPU power needs two 10 ms clock ticks of CPU time (modeled._MIN_SPAN_S: a sooner read repeats
# the last). The first sample precedes any window; waiting a whole interval for it only delayed
# a Monitor's start (0.1 s of `tokencarbon measure`'s overhead).
FIRST_SPAN_S = {
    "nvml": 0.0, "zeus_gpu": 0.0, "rapl": 0.02, "zeus_soc": 0.02, "modeled_cpu": 0.02
}  # fmt: skip

_KEYS = {
    "nvml": {"kind", "device_index"},
    "zeus_gpu": {"kind", "device_index"},
    "rapl": {"kind"},
    "zeus_soc": {"kind"},
    "modeled_cpu": {"kind", "tdp_w"},
    "auto": {"kind"},
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
    if kind == "auto":
        return open_default(target_pid)[0]
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


def open_default(target_pid: int, tdp_w: float | None = None) -> tuple[PowerSource, dict, str]:
    """(the opened source, its spec, a description of the device) for the first source this
    machine can read, unless tdp_w is given (then modeled CPU power at tdp_w, as asked):

    1. NVML GPU 0 (as CUDA_VISIBLE_DEVICES numbers it): an NVIDIA GPU's energy counter and power;
    2. where the `zeus` package is installed, an AMD GPU (0, as HIP numbers it) or Apple silicon
       through Zeus's device layer (tokencarbon.power.zeusdev);
    3. RAPL: CPU package and DRAM energy counters of the whole machine (tokencarbon.power.rapl);
    4. else modeled CPU power, modeled.default_tdp_w() x CPU utilisation of target_pid's process
       tree: an estimate, labelled MODELED, its description saying why nothing could be read.
    """
    from tokencarbon.power import modeled

    if tdp_w is not None:
        return _open_modeled(float(tdp_w), "given", None, target_pid)
    from tokencarbon.power.nvml import NvmlSource

    try:
        source = NvmlSource(0)
    except HardwareMismatchError as exc:  # no driver, no GPU, or none visible
        why_not = [f"NVML: {str(exc).split(';')[0]}"]
    else:
        return source, {"kind": "nvml", "device_index": 0}, source.describe()
    from tokencarbon.power import zeusdev

    if zeusdev.zeus_installed() and (zeusdev.amd_gpu_present() or zeusdev.apple_silicon_here()):
        amd = zeusdev.amd_gpu_present()
        try:
            source = zeusdev.ZeusGpuSource(0) if amd else zeusdev.ZeusSocSource()
        except HardwareMismatchError as exc:
            why_not.append(f"Zeus: {exc}")
        else:
            spec = {"kind": "zeus_gpu", "device_index": 0} if amd else {"kind": "zeus_soc"}
            return source, spec, source.describe()
    from tokencarbon.power.rapl import RaplSource

    try:
        source = RaplSource()
    except (HardwareMismatchError, InputError) as exc:
        why_not.append(f"RAPL: {exc}")
    else:
        whole = f"{source.describe()}: CPU packages and DRAM of the whole machine (every process)"
        return source, {"kind": "rapl"}, whole
    tdp_w, why = modeled.default_tdp_w()
    return _open_modeled(tdp_w, why, why_not, target_pid)


def _open_modeled(
    tdp_w: float, why: str, why_not: list[str] | None, target_pid: int
) -> tuple[PowerSource, dict, str]:
    from tokencarbon.power.modeled import ModeledCpuSource

    source = ModeledCpuSource(tdp_w, target_pid, why)
    description = source.describe() + (
        f" (nothing to read here: {'; '.join(why_not)})" if why_not else ""
    )
    return source, {"kind": "modeled_cpu", "tdp_w": tdp_w}, description


def __getattr__(name: str):
    # Kept importable from here (tests, importers) but loaded on first use.
    if name == "samples_table":
        from tokencarbon.power.base import samples_table

        return samples_table
    if name == "describe_gpu":
        from tokencarbon.power.nvml import describe_gpu

        return describe_gpu
    raise AttributeError(f"module 'tokencarbon.power' has no attribute {name!r}")

"""AMD GPUs and Apple silicon through Zeus's device layer (zeus.device, the `zeus` package of the
ML.ENERGY project), where it is installed: tokencarbon has no code of its own for amdsmi or for
Apple's energy counters.

Zeus is optional. `pip install zeus` brings scikit-learn and SciPy (about 47 MB of wheels on top of
tokencarbon's own dependencies, for Zeus's optimizers); the device layer alone needs
`pip install --no-deps zeus httpx httpcore` plus `amdsmi` (AMD) or `zeus-apple-silicon` (Apple).

  {"kind": "zeus_gpu", "device_index": i}   AMD GPU i as HIP numbers it (HIP_VISIBLE_DEVICES):
      the energy counter where Zeus trusts it, instant power (else the driver's average),
      temperature.
  {"kind": "zeus_soc"}                      Apple silicon: the SoC's cumulative energy (CPU +
      DRAM + GPU + GPU SRAM + ANE, those the chip reports), power from its steps.
"""

from __future__ import annotations

import importlib.util
import math
import os
import platform
import sys
import time

from tokencarbon.errors import HardwareMismatchError
from tokencarbon.power.base import PowerSample

_MILLI = 1e-3  # Zeus reports power in mW and energy in mJ
# The AppleSiliconMeasurement fields that add up to the SoC's energy (the per-core and
# per-cluster lists are parts of cpu_total_mj).
_SOC_PARTS = ("cpu_total_mj", "dram_mj", "gpu_mj", "gpu_sram_mj", "ane_mj")


def zeus_installed() -> bool:
    """Whether the `zeus` package can be imported (checked without importing it)."""
    return importlib.util.find_spec("zeus") is not None


def amd_gpu_present() -> bool:
    """An AMD GPU driver is loaded here (the ROCm kernel driver's /dev/kfd): cheap, imports
    nothing; whether Zeus can read it is ZeusGpuSource's to find out."""
    return os.path.exists("/dev/kfd")


def apple_silicon_here() -> bool:
    """This is macOS on Apple silicon."""
    return sys.platform == "darwin" and platform.machine() == "arm64"


def _require_zeus(what: str) -> None:
    if not zeus_installed():
        raise HardwareMismatchError(
            f"{what} is read through Zeus's device layer, and the `zeus` package is not installed "
            "here: pip install --no-deps zeus httpx httpcore (plus amdsmi for AMD GPUs, "
            "zeus-apple-silicon for Apple silicon)"
        )


class ZeusGpuSource:
    """An AMD GPU through zeus.device.get_gpus() (amdsmi). NVIDIA GPUs are refused here: the
    nvml source reads them. Readings the GPU does not support are NaN. Raises
    HardwareMismatchError when Zeus finds no AMD GPU or no device_index."""

    source = "zeus_gpu"

    def __init__(self, device_index: int) -> None:
        _require_zeus("an AMD GPU")
        from zeus.device.gpu import get_gpus
        from zeus.exception import ZeusBaseError

        self._errors = ZeusBaseError
        try:
            gpus = get_gpus()
        except ZeusBaseError as exc:
            raise HardwareMismatchError(f"Zeus finds no GPU here: {exc}") from exc
        if type(gpus).__name__ != "AMDGPUs":
            raise HardwareMismatchError(
                f"Zeus manages these GPUs with {type(gpus).__name__}, not AMDGPUs: use the nvml "
                "source for NVIDIA GPUs"
            )
        if not 0 <= device_index < len(gpus):
            raise HardwareMismatchError(
                f"zeus_gpu device_index={device_index}: Zeus sees {len(gpus)} AMD GPU(s)"
            )
        self.device_index = device_index
        self._gpus = gpus
        self._has_counter = bool(gpus.supports_get_total_energy_consumption(device_index))
        self._power = self._probe(gpus.get_instant_power_usage)
        self._average = self._probe(gpus.get_average_power_usage)
        self._temperature = self._probe(gpus.get_gpu_temperature)
        if self._power is None and self._average is None:
            raise HardwareMismatchError(
                f"AMD GPU {device_index} ({gpus.get_name(device_index)}): Zeus reads neither its "
                "instant nor its average power"
            )

    def _probe(self, reader):
        """reader if it answers for this GPU once, else None (not supported)."""
        try:
            reader(self.device_index)
        except self._errors:
            return None
        return reader

    def describe(self) -> str:
        return f"{self._gpus.get_name(self.device_index)} (AMD GPU {self.device_index}), Zeus"

    def read(self) -> PowerSample:
        i = self.device_index
        before_ns = time.time_ns()
        power_w = self._power(i) * _MILLI if self._power else math.nan
        power_avg_w = self._average(i) * _MILLI if self._average else math.nan
        counter_j = (
            self._gpus.get_total_energy_consumption(i) * _MILLI if self._has_counter else math.nan
        )
        temperature_c = float(self._temperature(i)) if self._temperature else math.nan
        return PowerSample(
            t_wall_ns=(before_ns + time.time_ns()) // 2,
            source=self.source,
            modeled=False,
            device_index=i,
            power_w=power_w,
            power_avg_w=power_avg_w,
            energy_counter_j=counter_j,
            temperature_c=temperature_c,
        )

    def close(self) -> None:
        pass


class ZeusSocSource:
    """Apple silicon through zeus.device.get_soc(): the sum of the SoC's cumulative energies
    (_SOC_PARTS, those present) as the energy counter, and power_w as the mean power since the
    previous read (no instant reading). Raises HardwareMismatchError when Zeus finds no Apple
    SoC."""

    source = "zeus_soc"

    def __init__(self) -> None:
        _require_zeus("Apple silicon")
        from zeus.device.soc import get_soc
        from zeus.exception import ZeusBaseError

        try:
            self._soc = get_soc()
        except ZeusBaseError as exc:
            raise HardwareMismatchError(f"Zeus finds no SoC to read here: {exc}") from exc
        if type(self._soc).__name__ != "AppleSilicon":
            raise HardwareMismatchError(
                f"Zeus reads this SoC as {type(self._soc).__name__}; tokencarbon sums only Apple "
                "silicon's energies"
            )
        self._last_ns, self._last_j = time.time_ns(), self._total_j()

    def _total_j(self) -> float:
        m = self._soc.get_total_energy_consumption()
        return sum(getattr(m, f) or 0 for f in _SOC_PARTS) * _MILLI

    def describe(self) -> str:
        return f"Apple silicon ({platform.processor() or platform.machine()}), Zeus"

    def read(self) -> PowerSample:
        before_ns = time.time_ns()
        total_j = self._total_j()
        t_wall_ns = (before_ns + time.time_ns()) // 2
        span_s = (t_wall_ns - self._last_ns) / 1e9
        power_w = (total_j - self._last_j) / span_s if span_s > 0 else math.nan
        self._last_ns, self._last_j = t_wall_ns, total_j
        return PowerSample(
            t_wall_ns=t_wall_ns,
            source=self.source,
            modeled=False,
            device_index=-1,
            power_w=power_w,
            energy_counter_j=total_j,
        )

    def close(self) -> None:
        pass

"""CPU package and DRAM energy from RAPL counters (Linux powercap, /sys/class/powercap).

Intel CPUs since Sandy Bridge and AMD CPUs since Zen expose Running Average Power Limit energy
counters through the kernel's powercap framework (Documentation/power/powercap/powercap.rst):
one zone per CPU package, `intel-rapl:<p>` named "package-<p>", with subzones
`intel-rapl:<p>:<s>` named "core", "uncore" or "dram" (AMD has no dram zone), and on laptops a
"psys" (platform) zone. Each zone's `energy_uj` counts microjoules and wraps to 0 after
`max_energy_range_uj`. Since Linux 5.10 (CVE-2020-8694) `energy_uj` is readable by root only.

This source sums the package zones (which include their core and uncore subzones) and the dram
zones; psys is left out (it contains the packages), as are the duplicate `intel-rapl-mmio` zones.
A RAPL reading is of whole packages: every process on the machine, not only the measured one.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from tokencarbon.errors import HardwareMismatchError, InputError
from tokencarbon.power.base import PowerSample

POWERCAP = Path("/sys/class/powercap")
# Where the powercap tree is read from instead, where set: a container that mounts the host's
# /sys elsewhere, or a test's own tree in the kernel's layout (tests/test_meter_rapl.py).
POWERCAP_ENV = "TOKENCARBON_POWERCAP"


def powercap_root() -> Path:
    """The powercap root read when none is given: $TOKENCARBON_POWERCAP where set, else
    /sys/class/powercap."""
    return Path(os.environ.get(POWERCAP_ENV) or POWERCAP)


_UJ_PER_J = 1e6
_NS_PER_S = 1e9


@dataclass(frozen=True)
class RaplZone:
    """One powercap zone: its directory, name ("package-0", "dram") and counter range (µJ)."""

    path: Path
    name: str
    max_energy_range_uj: int

    @property
    def energy_path(self) -> Path:
        return self.path / "energy_uj"


def read_uj(path: Path) -> int:
    """An integer counter file of powercap (energy_uj, max_energy_range_uj), in µJ.

    Raises HardwareMismatchError when it cannot be read (root only since Linux 5.10), InputError
    when it does not hold a whole number >= 0."""
    try:
        text = path.read_text(encoding="ascii")
    except PermissionError as exc:
        raise HardwareMismatchError(
            f"{path}: not readable by this user (RAPL counters are root-only since Linux 5.10, "
            f"CVE-2020-8694); run as root or make them readable (sudo chmod a+r "
            f"{path.parent.parent}/intel-rapl:*/energy_uj), or measure modeled power"
        ) from exc
    except OSError as exc:
        raise HardwareMismatchError(f"{path}: cannot be read ({exc})") from exc
    try:
        value = int(text.strip())
    except ValueError:
        value = -1
    if value < 0:
        raise InputError(f"{path}: {text.strip()!r} is not a counter value (whole µJ >= 0)")
    return value


def counter_step_uj(previous_uj: int, now_uj: int, max_energy_range_uj: int) -> int:
    """Energy (µJ) a RAPL counter counted between two reads, across at most one wrap.

    The counter runs from 0 to max_energy_range_uj and starts again at 0, so a read below the
    previous one means it wrapped once: max_energy_range_uj - previous + now. (The kernel's
    range is the largest value the 32-bit hardware counter reaches, one energy unit, ~61 µJ on
    most CPUs, short of the true period; a wrap is thus counted up to 61 µJ short.) More than one
    wrap between reads cannot be seen: at 0.1 s sampling that would take a draw above
    max_energy_range_uj / 0.1 s, ~2.6 MW on a typical 262,143 J range.
    Raises InputError for reads outside [0, max_energy_range_uj].
    """
    for value in (previous_uj, now_uj):
        if not 0 <= value <= max_energy_range_uj:
            raise InputError(
                f"RAPL counter read {value} µJ lies outside its range [0, {max_energy_range_uj}]"
            )
    if now_uj >= previous_uj:
        return now_uj - previous_uj
    return max_energy_range_uj - previous_uj + now_uj


def rapl_zones(root: str | Path | None = None) -> list[RaplZone]:
    """The package and dram zones under a powercap root (default powercap_root()), sorted by
    directory name.

    Zones are the `intel-rapl:<p>` and `intel-rapl:<p>:<s>` directories of `root` (the kernel
    lists subzones there too); kept: package-level zones named "package-*" and zones named
    "dram". Raises HardwareMismatchError when root holds none, or one of them cannot be read.
    """
    root = powercap_root() if root is None else Path(root)
    zones = []
    for d in sorted(root.glob("intel-rapl:*")):
        try:
            name = (d / "name").read_text(encoding="ascii").strip()
        except OSError:
            continue
        level = d.name.count(":")
        if (level == 1 and name.startswith("package")) or name == "dram":
            zones.append(RaplZone(d, name, read_uj(d / "max_energy_range_uj")))
    if not zones:
        raise HardwareMismatchError(
            f"no RAPL package or dram zone under {root} (no intel-rapl powercap driver: a VM, a "
            "container without /sys/class/powercap, or a CPU without RAPL)"
        )
    for zone in zones:
        read_uj(zone.energy_path)  # readable now, or the reason why not
    return zones


def rapl_state(root: str | Path | None = None) -> str:
    """'readable' where every package and dram zone can be read, else why not (for doctor)."""
    try:
        zones = rapl_zones(root)
    except (HardwareMismatchError, InputError) as exc:
        return f"not readable: {exc}"
    return "readable: " + ", ".join(f"{z.path.name} ({z.name})" for z in zones)


class RaplSource:
    """CPU package + DRAM energy of the whole machine from RAPL (see the module docstring).

    Each read() sums the zones' counters, unwrapped (counter_step_uj), into a counter that starts
    at 0 J when the source opens (energy_counter_j), and gives as power_w the mean power since the
    previous read (counter step / time between reads): a RAPL zone has no instant power reading.
    modeled=False; device_index -1 (every package together). Raises HardwareMismatchError where
    RAPL cannot be read (rapl_zones).
    """

    source = "rapl"

    def __init__(self, root: str | Path | None = None) -> None:
        self.zones = rapl_zones(root)
        self._last_uj = [read_uj(z.energy_path) for z in self.zones]
        self._last_ns = time.time_ns()
        self._total_uj = 0

    def describe(self) -> str:
        return "RAPL " + " + ".join(f"{z.name} ({z.path.name})" for z in self.zones)

    def read(self) -> PowerSample:
        before_ns = time.time_ns()
        now_uj = [read_uj(z.energy_path) for z in self.zones]
        t_wall_ns = (before_ns + time.time_ns()) // 2
        step_uj = sum(
            counter_step_uj(prev, now, z.max_energy_range_uj)
            for prev, now, z in zip(self._last_uj, now_uj, self.zones)
        )
        span_s = (t_wall_ns - self._last_ns) / _NS_PER_S
        self._total_uj += step_uj
        self._last_uj, self._last_ns = now_uj, t_wall_ns
        return PowerSample(
            t_wall_ns=t_wall_ns,
            source=self.source,
            modeled=False,
            device_index=-1,
            power_w=step_uj / _UJ_PER_J / span_s if span_s > 0 else float("nan"),
            energy_counter_j=self._total_uj / _UJ_PER_J,
        )

    def close(self) -> None:
        pass

"""Modeled CPU power: TDP x CPU utilisation of the measured process tree, an estimate."""

from __future__ import annotations

import os
import time

import psutil

from tokencarbon.errors import ConfigError
from tokencarbon.power.base import PowerSample

# CPU times advance in clock ticks (10 ms on Linux); a utilisation over less than two ticks is
# mostly rounding, so a read that soon after the previous one repeats it.
_MIN_SPAN_S = 2.0 / os.sysconf("SC_CLK_TCK")


class ModeledCpuSource:
    """Estimate the CPU power drawn by one process and its children as tdp_w x utilisation.

    This is a model, not a reading: there is no RAPL energy counter to read (no
    /sys/class/powercap in this project's containers and CI, root-only since 2020 where it exists,
    absent on many cloud VMs), so the only signal is how busy the measured process tree keeps
    the CPUs. Utilisation is the tree's psutil cpu_percent
    summed over processes, divided by the logical CPU count and capped at 1; power is that share
    of the package TDP. It ignores idle/uncore power and frequency scaling, so it is 0 W for an
    idle process and TDP only when the tree saturates every logical CPU. Every sample says
    modeled=True and carries no energy counter, so energy downstream is integrated and flagged.
    """

    source = "modeled_cpu"

    def __init__(self, tdp_w: float, target_pid: int, why: str | None = None) -> None:
        try:
            self._root = psutil.Process(target_pid)
        except psutil.Error as exc:
            raise ConfigError(
                f"modeled_cpu power source: target_pid={target_pid} is not a running process "
                f"({exc})"
            ) from exc
        self.tdp_w = float(tdp_w)
        self.why = why  # where tdp_w came from, for describe()
        # Utilisation is relative to the CPUs the measured process may run on (a cpu-platform cell
        # pins itself to the platform's logical CPUs), not to every CPU of the host.
        try:
            self._n_cpus = len(os.sched_getaffinity(target_pid)) or 1
        except (AttributeError, OSError):
            self._n_cpus = psutil.cpu_count(logical=True) or 1
        # psutil measures cpu_percent since the previous call on the same Process object, so the
        # objects persist between samples; the first call on each only sets its baseline.
        self._procs: dict[int, psutil.Process] = {}
        self._tree_cpu_percent()
        self._last = (time.monotonic(), 0.0, 0.0)  # (when, utilisation, rss_bytes)

    def _tree_cpu_percent(self) -> tuple[float, float]:
        """Summed cpu_percent (100 = one logical CPU) and RSS bytes of the root and its children."""
        try:
            current = [self._root, *self._root.children(recursive=True)]
        except psutil.NoSuchProcess:
            current = []
        # The sampler itself (the sidecar, a child of the measured process) is not the workload.
        sampler = os.getpid() if os.getpid() != self._root.pid else None
        alive = {p.pid: self._procs.get(p.pid, p) for p in current if p.pid != sampler}
        self._procs = alive
        cpu_percent, rss_bytes = 0.0, 0.0
        for proc in alive.values():
            try:
                with proc.oneshot():
                    cpu_percent += proc.cpu_percent(interval=None)
                    rss_bytes += proc.memory_info().rss
            except psutil.Error:
                continue  # exited between listing and reading: its last interval is lost
        return cpu_percent, rss_bytes

    def describe(self) -> str:
        from tokencarbon.hardware import cpu_model_name

        return (
            f"{cpu_model_name()}, MODELED: {self.tdp_w:g} W TDP"
            + (f" ({self.why})" if self.why else "")
            + " x CPU utilisation of the measured process tree; an estimate, not a reading"
        )

    def read(self) -> PowerSample:
        now = time.monotonic()
        if now - self._last[0] >= _MIN_SPAN_S:
            cpu_percent, rss_bytes = self._tree_cpu_percent()
            self._last = (now, min(cpu_percent / (100.0 * self._n_cpus), 1.0), rss_bytes)
        _, utilisation, rss_bytes = self._last
        return PowerSample(
            t_wall_ns=time.time_ns(),
            source=self.source,
            modeled=True,
            device_index=-1,
            power_w=self.tdp_w * utilisation,
            util_pct=100.0 * utilisation,
            mem_used_bytes=rss_bytes,
        )

    def close(self) -> None:
        self._procs = {}


def default_tdp_w(n_cpus: int | None = None) -> tuple[float, str]:
    """The TDP the modeled CPU source multiplies utilisation by where none is given, and where it
    came from: resources/platforms.csv's 'cpu' row gives tdp_w for its logical_cpus (a 2-vCPU
    slice of an AMD EPYC 7763: 280 W / 64 cores, the row's source), scaled to n_cpus (default:
    the CPUs this process may run on). A guess for any other CPU: give its TDP instead."""
    from tokencarbon.platforms import get_platform

    row = get_platform("cpu")
    n = len(os.sched_getaffinity(0)) if n_cpus is None else n_cpus
    per_cpu_w = row.tdp_w / row.logical_cpus
    return per_cpu_w * n, (
        f"{per_cpu_w:g} W per logical CPU (resources/platforms.csv row 'cpu': {row.tdp_w:g} W for "
        f"{row.logical_cpus}) x {n} logical CPUs"
    )


def cpu_state(cpus: list[int]) -> dict:
    """Current frequency (MHz) of each of `cpus`, from cpufreq in /sys where the kernel exposes
    it, else psutil's (one value for all on many VMs); taken at the start and end of a cell's
    window (meta.json), beside the modeled power, which does not follow the frequency."""
    freqs: dict[str, float | None] = {}
    fallback = psutil.cpu_freq()
    for cpu in cpus:
        path = f"/sys/devices/system/cpu/cpu{cpu}/cpufreq/scaling_cur_freq"
        try:
            with open(path, encoding="ascii") as f:
                freqs[str(cpu)] = int(f.read().strip()) / 1000.0  # kHz -> MHz
        except (OSError, ValueError):
            freqs[str(cpu)] = None if fallback is None else float(fallback.current)
    return {"t_wall_ns": time.time_ns(), "cpu_freq_mhz": freqs}

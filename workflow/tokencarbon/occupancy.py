"""What else ran on a cell's devices while it measured: other processes' CPU time on its pinned
CPUs, and other processes on its GPU (NVML's process lists). A lease keeps other cells off the
devices; this catches everything else (another user's job, a stray process), so a disturbed
measurement is flagged instead of trusted.

    watch = CpuWatch(cpus); watch.start()  ...  foreign = watch.stop()   # dict for meta.json
    watch = GpuWatch(nvml_index); watch.start()  ...  foreign = watch.stop()
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pynvml

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
# /proc/stat fields after the cpu label: user nice system idle iowait irq softirq steal guest
# guest_nice. Busy = user + nice + system + irq + softirq (guest time is already inside user;
# idle, iowait and steal are not this machine's CPUs working).
_BUSY_FIELDS = (0, 1, 2, 5, 6)
# Steal: time the hypervisor ran something else (another guest) while this virtual CPU had work.
# No process inside this machine accounts for it, so a slow window on a shared host shows here only.
_STEAL_FIELDS = (7,)
# Foreign processes named in meta.json: the largest consumers, above this much CPU time.
TOP_FOREIGN = 10
MIN_NAMED_CPU_S = 0.01


def _per_cpu_seconds(path: str | Path, columns: tuple[int, ...]) -> dict[int, float]:
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return {}
    out = {}
    for line in lines:
        label, *fields = line.split()
        if label.startswith("cpu") and label[3:].isdigit():
            ticks = [int(fields[i]) for i in columns if i < len(fields)]
            out[int(label[3:])] = sum(ticks) / _CLK_TCK
    return out


def read_cpu_busy_s(path: str | Path = "/proc/stat") -> dict[int, float]:
    """Busy seconds since boot of each logical CPU, from /proc/stat (Linux); {} where absent.

    Ticks are USER_HZ (os.sysconf("SC_CLK_TCK"), 100 on Linux), so each value moves in 10 ms steps.
    """
    return _per_cpu_seconds(path, _BUSY_FIELDS)


def read_cpu_steal_s(path: str | Path = "/proc/stat") -> dict[int, float]:
    """Steal seconds since boot of each logical CPU (/proc/stat's eighth field, proc(5)): time a
    hypervisor gave the physical CPU to another guest while this virtual CPU was runnable. 0 on
    bare metal; {} where /proc/stat is absent; a CPU whose line lacks the field (kernels before
    2.6.11) reads 0. Same 10 ms ticks as read_cpu_busy_s."""
    return _per_cpu_seconds(path, _STEAL_FIELDS)


def tree_cpu_s(pid: int | None = None) -> tuple[float, set[int]]:
    """CPU seconds (user + system) used so far by process `pid` (default: this one), its waited-for
    children and every live descendant, and the pids of that tree."""
    root = psutil.Process(pid)
    total, pids = 0.0, {root.pid}
    for proc in [root, *root.children(recursive=True)]:
        try:
            t = proc.cpu_times()
        except psutil.Error:
            continue  # exited meanwhile; its time is in its parent's children_* once waited
        total += t.user + t.system + t.children_user + t.children_system
        pids.add(proc.pid)
    return total, pids


def _process_cpu_s(cpus: set[int], exclude: set[int]) -> dict[tuple[int, float], tuple[str, float]]:
    """(pid, start time) -> (name, estimated CPU seconds on `cpus`) of every process that may run
    there. Linux keeps no per-CPU time per process, so a process's time is weighted by the share of
    its allowed CPUs that are in `cpus`: all of it for a process pinned there, half for one allowed
    on two CPUs of which one is ours."""
    out = {}
    for proc in psutil.process_iter(["name", "cpu_times", "cpu_affinity", "create_time"]):
        info = proc.info
        if proc.pid in exclude or info["cpu_times"] is None:
            continue
        affinity = info["cpu_affinity"] or sorted(cpus)  # unknown affinity: counted as ours
        overlap = len(cpus.intersection(affinity))
        if not overlap:
            continue
        t = info["cpu_times"]
        key = (proc.pid, info["create_time"] or 0.0)
        out[key] = (info["name"] or "?", (t.user + t.system) * overlap / len(affinity))
    return out


@dataclass(frozen=True)
class CpuSnapshot:
    """One reading of the CPUs: monotonic time (ns), per-CPU busy and steal seconds since boot
    (read_cpu_busy_s, read_cpu_steal_s), this process tree's CPU seconds, and other processes'
    (pid, start time) -> (name, CPU seconds on the watched CPUs)."""

    t_ns: int
    busy_s: dict[int, float]
    steal_s: dict[int, float]
    own_s: float
    procs: dict[tuple[int, float], tuple[str, float]]


class CpuWatch:
    """Foreign CPU use of `cpus` (this process's leased, pinned CPUs) between start() and stop().

    foreign CPU seconds = busy seconds of those CPUs (/proc/stat) - CPU seconds of this process's
    own tree (itself, its sidecar, any workers); share = foreign / (window x number of CPUs), so
    0.5 means another process kept one of two CPUs busy all along. Both counts move in ticks of
    10 ms per CPU, so a share below ~0.01 is rounding. Also names the largest other consumers
    among processes allowed on those CPUs (processes of other containers are not visible, but
    their time is in the busy count all the same).

    On a virtual machine a neighbour on the same host slows the cell without any process here
    using its CPUs: that shows as steal time, recorded apart (cpu_steal_s, and cpu_steal_share =
    steal / (window x CPUs)). CI's 2-core VM once measured a rerun 57 % slower than its
    reference with a foreign share of 0.001 (2026-12-01): such a slowdown is not any process's
    here, and steal is where a hypervisor's share of it shows.
    """

    def __init__(self, cpus: Sequence[int], also_own: int | None = None) -> None:
        """also_own: another process whose tree is the cell's own too (an OpenAI-compatible
        server the cell measures: its CPU time is the cell's work, not foreign use)."""
        self.cpus = sorted(cpus)
        self.also_own = also_own
        self._start: CpuSnapshot | None = None

    def _snapshot(self) -> CpuSnapshot:
        own_s, own_pids = tree_cpu_s()
        if self.also_own is not None:
            try:
                other_s, other_pids = tree_cpu_s(self.also_own)
            except psutil.Error:
                other_s, other_pids = 0.0, set()  # it ended: its time is no one's any more
            own_s, own_pids = own_s + other_s, own_pids | other_pids
        procs = _process_cpu_s(set(self.cpus), own_pids)
        busy, steal = read_cpu_busy_s(), read_cpu_steal_s()
        return CpuSnapshot(time.monotonic_ns(), busy, steal, own_s, procs)

    def start(self) -> None:
        self._start = self._snapshot()

    def stop(self) -> dict[str, Any]:
        """The use of the CPUs since start(): cpu_use(start, now, cpus)."""
        return cpu_use(self._start, self._snapshot(), self.cpus)


def cpu_use(start: CpuSnapshot, end: CpuSnapshot, cpus: Sequence[int]) -> dict[str, Any]:
    """{"foreign_cpu_share", "foreign_cpu_s", "cpus_busy_s", "cpu_steal_share", "cpu_steal_s",
    "own_cpu_s", "window_s", "cpus", "foreign_processes": [{"pid", "name", "cpu_s"}...]}
    (cpu_s: that process's estimated CPU seconds on these CPUs, _process_cpu_s); shares and
    seconds NaN where /proc/stat lacks one of the CPUs (a virtualised /proc), with
    "unavailable" saying why."""
    cpus = sorted(cpus)
    window_s = (end.t_ns - start.t_ns) / 1e9
    own_s = end.own_s - start.own_s
    named = []
    for key, (name, cpu_s) in end.procs.items():
        before = start.procs.get(key, (name, 0.0))[1]
        if cpu_s - before >= MIN_NAMED_CPU_S:
            named.append({"pid": key[0], "name": name, "cpu_s": round(cpu_s - before, 3)})
    named.sort(key=lambda p: -p["cpu_s"])
    record: dict[str, Any] = {
        "cpus": cpus,
        "window_s": window_s,
        "own_cpu_s": own_s,
        "foreign_processes": named[:TOP_FOREIGN],
    }
    missing = [c for c in cpus if c not in start.busy_s or c not in end.busy_s]
    if missing or window_s <= 0:
        return record | {
            "foreign_cpu_share": math.nan,
            "foreign_cpu_s": math.nan,
            "cpus_busy_s": math.nan,
            "cpu_steal_share": math.nan,
            "cpu_steal_s": math.nan,
            "unavailable": f"/proc/stat has no line for CPU(s) {missing}"
            if missing
            else "empty window",
        }
    busy_s = sum(end.busy_s[c] - start.busy_s[c] for c in cpus)
    # Per-process times and per-CPU ticks are counted differently; a foreign share a tick
    # below zero is rounding, not a negative neighbour.
    foreign_s = max(busy_s - own_s, 0.0)
    steal_s = sum(end.steal_s.get(c, 0.0) - start.steal_s.get(c, 0.0) for c in cpus)
    return record | {
        "foreign_cpu_share": foreign_s / (window_s * len(cpus)),
        "foreign_cpu_s": foreign_s,
        "cpus_busy_s": busy_s,
        "cpu_steal_share": steal_s / (window_s * len(cpus)),
        "cpu_steal_s": steal_s,
    }


def gpu_process_pids(nvml_index: int) -> dict[int, float]:
    """pid -> used GPU memory in bytes (NaN where NVML withholds it) of every compute or graphics
    process NVML lists on GPU `nvml_index` (NVML must be initialised)."""
    handle = pynvml.nvmlDeviceGetHandleByIndex(nvml_index)
    out: dict[int, float] = {}
    for lister in (
        pynvml.nvmlDeviceGetComputeRunningProcesses,
        pynvml.nvmlDeviceGetGraphicsRunningProcesses,
    ):
        try:
            procs = lister(handle)
        except pynvml.NVMLError:
            continue
        for p in procs:
            memory = p.usedGpuMemory
            out[int(p.pid)] = math.nan if memory is None else float(memory)
    return out


class GpuWatch:
    """Other processes on GPU `nvml_index` between start() and stop(), polled every interval_s
    from a daemon thread (NVML's process lists are snapshots, so a process that comes and goes
    between two polls is missed: 1 s catches any that holds the GPU for a batch or more).

    "Other" = not this process's tree. Inside a container NVML may report the host's pids, which
    match none of ours: then this process itself shows up as one unknown pid, so where this
    process's pid never appears the count leaves one pid out and says so (pids_mapped False).
    """

    def __init__(self, nvml_index: int, interval_s: float = 1.0) -> None:
        self.nvml_index = nvml_index
        self.interval_s = interval_s
        self._seen: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: str | None = None

    def _poll(self) -> None:
        try:
            for pid, memory in gpu_process_pids(self.nvml_index).items():
                self._seen[pid] = max(memory, self._seen.get(pid, -math.inf))
        except pynvml.NVMLError as exc:
            self._error = str(exc)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._poll()

    def start(self) -> None:
        pynvml.nvmlInit()
        self._poll()
        self._thread = threading.Thread(target=self._run, name="gpu-watch", daemon=True)
        self._thread.start()

    def stop(self) -> dict[str, Any]:
        """{"foreign_gpu_processes": count, "processes": [{"pid", "used_gpu_memory_bytes",
        "own"}], "pids_mapped": bool, "error": NVML error text or None}."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._poll()
        pynvml.nvmlShutdown()
        _, own = tree_cpu_s()
        mapped = bool(own & set(self._seen)) or not self._seen
        foreign = [pid for pid in self._seen if pid not in own]
        count = len(foreign) if mapped else max(len(foreign) - 1, 0)
        return {
            "foreign_gpu_processes": count,
            "processes": [
                {"pid": pid, "used_gpu_memory_bytes": memory, "own": pid in own}
                for pid, memory in sorted(self._seen.items())
            ],
            "pids_mapped": mapped,
            "error": self._error,
        }

"""Where a cell job's time goes: named phases on the wall clock, from the job's process start to its
last write, recorded in meta.json (key "timeline") so every cell says what it cost beside what it
measured (issue 19; benchmarks/cell_overhead.py reads it).

    timeline = Timeline(script_start_wall_ns)
    with timeline.phase("engine_build"):
        engine = ...
    meta["timeline"] = timeline.record()

Phases never overlap and never include a measured window's own time except the phase named
"measured" (the repeats' windows with what lies between them): whatever else a phase holds is fixed
cost.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from typing import Any

from tokencarbon.units import NS_PER_S

# The phases a cell records, in order (a cell may skip some: a CPU cell has no CUDA phase, a shared
# idle window has no idle sampling of its own). "process" is Python's start, Snakemake's script
# preamble (it unpickles its job object, which imports snakemake) and the adapter's own imports, up
# to the call of run_cell; "imports" the package modules run_cell imports on its first call.
PHASES = (
    "process",
    "imports",
    "checks",
    "lease",
    "hardware_check",
    "sidecar_start",
    "engine_build",
    "warmup",
    "idle_window",
    "measured",
    "sidecar_stop",
    "finish",
    "write",
)


def process_start_wall_ns(pid: int | None = None) -> int | None:
    """The wall-clock start of process `pid` (default: this one) in ns: now on the wall clock
    minus how long ago it started on the kernel's boot clock (/proc/<pid>/stat's starttime, in
    clock ticks since boot: 10 ms resolution at the usual 100 Hz; /proc/stat's btime would add up
    to a second of rounding). None where /proc cannot tell (not Linux, or the process is gone)."""
    pid = os.getpid() if pid is None else pid
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        boot_ns = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        wall_ns = time.time_ns()
    except (OSError, AttributeError):
        return None
    # field 22 (starttime, clock ticks since boot); the command name (field 2) may hold spaces
    start_ticks = int(stat.rsplit(")", 1)[1].split()[19])
    return wall_ns - (boot_ns - start_ticks * NS_PER_S // os.sysconf("SC_CLK_TCK"))


class Timeline:
    """Named, consecutive phases of one job on the wall clock (time.time_ns).

    script_start_wall_ns: when the job's script began (its first line); with the process start from
    /proc it gives the "process" phase. Raises ValueError for an unknown phase name or a phase
    opened inside another."""

    def __init__(self, script_start_wall_ns: int | None = None):
        self._phases: list[dict[str, Any]] = []
        self._open: str | None = None
        self.process_start_wall_ns = process_start_wall_ns()
        self.script_start_wall_ns = script_start_wall_ns
        now = self._created_ns = time.time_ns()
        if self.process_start_wall_ns is not None:
            self._add("process", self.process_start_wall_ns, script_start_wall_ns or now)
        if script_start_wall_ns is not None:
            self._add("imports", script_start_wall_ns, now)

    def _add(self, name: str, start_ns: int, end_ns: int) -> None:
        if name not in PHASES:
            raise ValueError(f"timeline phase {name!r}; expected one of {PHASES}")
        self._phases.append(
            {"phase": name, "start_wall_ns": int(start_ns), "end_wall_ns": int(end_ns),
             "seconds": (int(end_ns) - int(start_ns)) / NS_PER_S}
        )  # fmt: skip

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the block as phase `name` (recorded also when it raises)."""
        if self._open is not None:
            raise ValueError(f"timeline phase {name!r} opened inside {self._open!r}")
        self._open, start = name, time.time_ns()
        try:
            yield
        finally:
            self._open = None
            self._add(name, start, time.time_ns())

    def since_last(self, name: str) -> None:
        """Record phase `name` from the end of the last phase recorded (or from this timeline's
        creation) to now: for work that is not one block, e.g. checks spread over a function."""
        start = self._phases[-1]["end_wall_ns"] if self._phases else self._created_ns
        self._add(name, start, time.time_ns())

    def seconds(self, name: str) -> float:
        """Total seconds recorded under `name` (0.0 when the phase did not happen)."""
        return sum(p["seconds"] for p in self._phases if p["phase"] == name)

    def record(self) -> dict[str, Any]:
        """What meta.json keeps: {"process_start_wall_ns", "script_start_wall_ns", "phases":
        [{"phase", "start_wall_ns", "end_wall_ns", "seconds"}], "fixed_s": every phase but
        "measured" and "idle_window", "idle_s", "measured_s"}; up to now (the last write follows)."""
        measured = self.seconds("measured")
        idle = self.seconds("idle_window")
        total = sum(p["seconds"] for p in self._phases)
        return {
            "process_start_wall_ns": self.process_start_wall_ns,
            "script_start_wall_ns": self.script_start_wall_ns,
            "phases": list(self._phases),
            "measured_s": measured,
            "idle_s": idle,
            "fixed_s": total - measured - idle,
        }

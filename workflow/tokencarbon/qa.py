"""The two tiers of QA flags (METRICS.qa_flags), defined once: what a figure, a table and the
summary do with each flag tokencarbon.metrics and tokencarbon.energy write.

- STUDY: how the study measures, true of every cell of this kind of machine or source (modeled
  CPU power, windows shorter than the sampling needs, peaks measured beside other work, an
  imported log without first tokens). Said once per study in summary.md, with how many cells
  carry it; never marked on a point, where it would mark them all and hide the rest.
- CELL: something went wrong in this cell's measurement (other processes on its CPUs, a counter
  that froze, a throttled clock, a CV over repeats above the bound). Marked on the figures'
  points (a distinct marker with its legend entry) and listed per cell in the tables.

An idle-window flag (`idle_<flag>`, tokencarbon.metrics) takes its flag's tier; a flag no tier
names is CELL, so a new flag is shown until someone decides otherwise. docs/metrics.md explains
each flag; tests/test_qa.py checks that every flag the code writes has a tier here.
"""

from __future__ import annotations

from collections.abc import Iterable

STUDY = "study"
CELL = "cell"

# flag -> (tier, what it says, for summary.md's study-wide notes and the docs)
FLAGS: dict[str, tuple[str, str]] = {
    # how power and energy were measured
    "modeled": (STUDY, "power is modeled (TDP x the process's CPU utilisation), not a reading"),
    "integrated_from_1s_average": (STUDY, "energy integrates the driver's 1 s power average"),
    "fewer_than_10_samples": (STUDY, "a window holds fewer than 10 power samples (short windows "
                              "for the sampling interval)"),
    "steady_window_short": (STUDY, "less than metrics.min_steady_s (ML.ENERGY's 20 s) of "
                            "steady state"),
    "peaks_measured_under_load": (STUDY, "the platform's peaks were measured while other "
                                  "processes used its CPUs (MFU and MBU read high)"),
    "idle_shared": (STUDY, "the idle window is an earlier cell's (power.idle_share_s)"),
    "idle_power_from_meta": (STUDY, "idle power from meta.json (cells written before idle "
                             "samples were kept)"),
    # what an older or imported record lacks
    "first_token_unknown": (STUDY, "the timing file has no first token: TTFT and TPOT are NaN"),
    "input_tokens_unknown": (STUDY, "the timing file has no input tokens: FLOPs, MFU are NaN"),
    "no_requests_latency_from_windows": (STUDY, "a continuous cell without requests.parquet: "
                                         "latency from its windows"),
    "no_steps_energy_by_tokens": (STUDY, "a continuous cell without steps.parquet: energy per "
                                  "request shared by tokens"),
    "bytes_from_static_schedule": (STUDY, "a continuous cell without steps.parquet: bytes by "
                                   "the static schedule"),
    # this cell's measurement is suspect
    "foreign_cpu_use": (CELL, "other processes used the cell's CPUs"),
    "foreign_gpu_processes": (CELL, "another process ran on the cell's GPU"),
    "cpu_steal": (CELL, "the hypervisor ran other guests on the cell's CPUs"),
    "counter_frozen": (CELL, "the energy counter did not advance: integral used"),
    "counter_decreasing": (CELL, "the energy counter fell: integral used"),
    "counter_jump": (CELL, "the energy counter jumped: integral used"),
    "counter_incomplete": (CELL, "the energy counter does not span the window: integral used"),
    "counter_nonfinite_dropped": (CELL, "a non-finite counter reading was skipped"),
    "counter_vs_integral_gt_5pct": (CELL, "counter and integral differ by more than 5 %"),
    "power_invalid_dropped": (CELL, "a NaN or negative power sample was dropped"),
    "power_gap": (CELL, "a gap in the power samples"),
    "throttled": (CELL, "the GPU slowed its clocks (thermal, power brake)"),
    "j_per_token_cv_high": (CELL, "J/token varies over repeats above metrics.max_j_per_token_cv"),
    "mfu_above_100pct": (CELL, "MFU above 100 %: the peak or the work counted is wrong"),
    "mbu_above_100pct": (CELL, "MBU above 100 %: the peak or the bytes counted are wrong"),
    "intensity_filled": (CELL, "part of the window's carbon intensity was filled"),
}
IDLE_PREFIX = "idle_"


def split(qa_flags: str | None) -> list[str]:
    """The flags of a METRICS qa_flags value (";"-joined; empty, None or NaN: none)."""
    if not isinstance(qa_flags, str):
        return []
    return [f for f in qa_flags.split(";") if f]


def tier(flag: str) -> str:
    """STUDY or CELL for one flag: its FLAGS entry; `idle_<flag>` takes <flag>'s tier where
    `idle_<flag>` is not itself listed (idle_shared is); a flag not listed is CELL."""
    if flag in FLAGS:
        return FLAGS[flag][0]
    if flag.startswith(IDLE_PREFIX) and flag[len(IDLE_PREFIX):] in FLAGS:
        return FLAGS[flag[len(IDLE_PREFIX):]][0]
    return CELL


def meaning(flag: str) -> str:
    """What a flag says, in words (an idle-window flag: of the idle window); "" if not listed."""
    if flag in FLAGS:
        return FLAGS[flag][1]
    base = flag[len(IDLE_PREFIX):] if flag.startswith(IDLE_PREFIX) else ""
    return f"idle window: {FLAGS[base][1]}" if base in FLAGS else ""


def cell_flags(qa_flags: str | None) -> list[str]:
    """The CELL-tier flags of a qa_flags value, in its order: what marks a suspect cell."""
    return [f for f in split(qa_flags) if tier(f) == CELL]


def study_flags(qa_flags: str | None) -> list[str]:
    """The STUDY-tier flags of a qa_flags value, in its order."""
    return [f for f in split(qa_flags) if tier(f) == STUDY]


def study_flag_counts(values: Iterable[str | None]) -> dict[str, int]:
    """STUDY-tier flag -> how many of the given qa_flags values (one per cell) carry it, in the
    order first seen."""
    counts: dict[str, int] = {}
    for value in values:
        for flag in dict.fromkeys(study_flags(value)):
            counts[flag] = counts.get(flag, 0) + 1
    return counts

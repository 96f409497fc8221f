"""Energy of a time window from POWER samples: counter delta, trapezoid integral, idle split, QA.

Times are wall-clock ns (t_wall_ns, BATCHES' *_wall_ns). They are made relative to the window
start in int64 before any float arithmetic: epoch ns as float64 would round to 256 ns.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from tokencarbon.errors import InputError

# Thresholds of the QA flags "counter_vs_integral_gt_5pct" and "fewer_than_10_samples".
MAX_RELATIVE_DIFFERENCE = 0.05
MIN_SAMPLES = 10


@dataclass(frozen=True)
class EnergyRecord:
    """Energy of one window and how it was measured.

    energy_j is the counter delta where the source has a counter, else the integral of power
    (method "integrated", or "modeled" when the power itself is an estimate).
    relative_difference is (integrated - counter) / counter, NaN without a counter.
    """

    window_s: float
    n_samples: int
    energy_counter_j: float
    energy_integrated_j: float
    energy_j: float
    method: str
    relative_difference: float
    qa_flags: tuple[str, ...]
    idle_energy_j: float
    above_idle_energy_j: float


def _series(
    samples: pd.DataFrame, column: str, start_ns: int, end_ns: int
) -> tuple[np.ndarray, np.ndarray]:
    """(t_s relative to start_ns, values) of one device's finite `column`, sorted by time."""
    if end_ns <= start_ns:
        raise InputError(f"energy window [{start_ns}, {end_ns}] ns: end must be after start")
    devices = samples[["source", "device_index"]].drop_duplicates()
    if len(devices) > 1:
        raise InputError(
            f"power samples hold {len(devices)} devices "
            f"{devices.to_records(index=False).tolist()}; "
            f"energy is computed per device, select one (source, device_index) first"
        )
    s = samples[np.isfinite(samples[column])].sort_values("t_wall_ns")
    t_s = (s["t_wall_ns"].to_numpy(dtype=np.int64) - start_ns) / 1e9
    window_s = (end_ns - start_ns) / 1e9
    if len(t_s) and (t_s[0] > 0 or t_s[-1] < window_s):
        raise InputError(
            f"{column} samples span [{s['t_wall_ns'].iloc[0]}, {s['t_wall_ns'].iloc[-1]}] ns but "
            f"the energy window is [{start_ns}, {end_ns}] ns; sampling must start before the "
            f"window and stop after it"
        )
    return t_s, s[column].to_numpy(dtype=float)


def energy_from_counter(samples: pd.DataFrame, start_ns: int, end_ns: int) -> float:
    """Energy counter delta over the window in J, the counter interpolated linearly at its edges.

    NaN where the samples carry no counter.
    """
    t_s, counter_j = _series(samples, "energy_counter_j", start_ns, end_ns)
    if len(t_s) == 0:
        return float("nan")
    if (np.diff(counter_j) < 0).any():
        raise InputError(
            f"energy_counter_j decreases within [{start_ns}, {end_ns}] ns (driver reloaded?); "
            f"a cumulative counter must never fall"
        )
    window_s = (end_ns - start_ns) / 1e9
    return float(np.interp(window_s, t_s, counter_j) - np.interp(0.0, t_s, counter_j))


def energy_from_power(samples: pd.DataFrame, start_ns: int, end_ns: int) -> float:
    """Trapezoid integral of power_w over the window in J, power interpolated at its edges.

    Uses each sample's own timestamp: intervals are never assumed to be regular.
    """
    t_s, power_w = _series(samples, "power_w", start_ns, end_ns)
    if len(t_s) == 0:
        raise InputError(f"no finite power_w sample to integrate over [{start_ns}, {end_ns}] ns")
    window_s = (end_ns - start_ns) / 1e9
    inside = (t_s > 0) & (t_s < window_s)
    edges_w = np.interp([0.0, window_s], t_s, power_w)
    t_all = np.concatenate([[0.0], t_s[inside], [window_s]])
    p_all = np.concatenate([[edges_w[0]], power_w[inside], [edges_w[1]]])
    return float(np.trapezoid(p_all, t_all))


def _record(
    window_s: float, n_samples: int, counter_j: float, integrated_j: float, modeled: bool,
    idle_power_w: float,
) -> EnergyRecord:
    """The measurements of a window with the one to use, the QA flags and the idle split."""
    has_counter = not np.isnan(counter_j)
    relative_difference = (
        (integrated_j - counter_j) / counter_j if has_counter and counter_j > 0 else float("nan")
    )
    flags = []
    if abs(relative_difference) > MAX_RELATIVE_DIFFERENCE:  # False for NaN
        flags.append("counter_vs_integral_gt_5pct")
    if n_samples < MIN_SAMPLES:
        flags.append("fewer_than_10_samples")
    if modeled:
        flags.append("modeled")
    method = "modeled" if modeled else "counter" if has_counter else "integrated"
    energy_j = counter_j if method == "counter" else integrated_j
    idle_energy_j = idle_power_w * window_s
    return EnergyRecord(
        window_s=window_s,
        n_samples=n_samples,
        energy_counter_j=counter_j,
        energy_integrated_j=integrated_j,
        energy_j=energy_j,
        method=method,
        relative_difference=relative_difference,
        qa_flags=tuple(flags),
        idle_energy_j=idle_energy_j,
        above_idle_energy_j=energy_j - idle_energy_j,
    )


def cell_energy(
    samples: pd.DataFrame, start_ns: int, end_ns: int, idle_power_w: float
) -> EnergyRecord:
    """Both energy measurements of [start_ns, end_ns], the one to use, QA flags and idle split."""
    t_ns = samples["t_wall_ns"]
    n_samples = int(((t_ns >= start_ns) & (t_ns <= end_ns) & np.isfinite(samples["power_w"])).sum())
    return _record(
        (end_ns - start_ns) / 1e9,
        n_samples,
        energy_from_counter(samples, start_ns, end_ns),
        energy_from_power(samples, start_ns, end_ns),
        bool(samples["modeled"].any()),
        idle_power_w,
    )


def windows_energy(
    samples: pd.DataFrame, windows: list[tuple[int, int]], idle_power_w: float
) -> EnergyRecord:
    """cell_energy summed over disjoint windows (a cell's batches): the time between batches,
    where an engine allocates caches or captures graphs, is not part of the measured work."""
    parts = [cell_energy(samples, start, end, idle_power_w) for start, end in windows]
    return _record(
        sum(p.window_s for p in parts),
        sum(p.n_samples for p in parts),
        sum(p.energy_counter_j for p in parts),  # NaN if any window lacks a counter
        sum(p.energy_integrated_j for p in parts),
        any(p.method == "modeled" for p in parts),
        idle_power_w,
    )

"""Energy of a time window from POWER samples: the ONE integrator of tokencarbon.

Counter delta and trapezoid integral, the counter checked for plausibility (a counter that is
frozen, falls or jumps is not used: the window falls back to the integral and says so), energy
split at cut points (where carbon intensity changes), idle power and the idle split, QA flags.
carbon.py takes its energies from here, as Zeus's carbon monitor takes its energy monitor's.

Times are wall-clock ns (t_wall_ns, BATCHES' *_wall_ns). They are made relative to the window
start in int64 before any float arithmetic: epoch ns as float64 would round to 256 ns.

Contracts (docs/metrics.md):
- One device: samples of several (source, device_index) pairs are refused unless `device` picks one.
- Power samples that are not finite, or negative, are dropped and the window is flagged
  `power_invalid_dropped`; the trapezoid bridges them (the same linear interpolation the window
  edges get). A missing reading ('[N/A]' in nvidia-smi, a failed NVML call) is routine, and losing a
  whole cell to one reading would be worse than a flagged bridge.
- The counter is used only where it is plausible over the window; otherwise the integral, flagged.
- Power is the instant power_w; a device with no finite power_w sample at all but a 1 s average
  (power_avg_w) has the average integrated, every window flagged AVERAGE_FLAG.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from tokencarbon.errors import InputError
from tokencarbon.units import NS_PER_S

if TYPE_CHECKING:  # no pandas at run time: a Monitor's window is integrated without loading it
    import pandas as pd

# Threshold of the QA flag "counter_vs_integral_gt_5pct".
MAX_RELATIVE_DIFFERENCE = 0.05
# Threshold of the QA flag "fewer_than_10_samples".
MIN_SAMPLES = 10
# A counter interval whose mean power exceeds this many times the highest power reading of the
# window's span is a jump, not energy. On the committed H100/H200 cells (50 ms sampling, a counter
# that advances every ~100 ms, so every other interval holds two updates) the largest ratio is
# 1.53; a power reading that is a short average can sit another ~2x below a prefill spike.
COUNTER_JUMP_FACTOR = 5.0
# QA flag "power_gap": consecutive finite samples in a window's span further apart than this many
# median intervals and more than MIN_GAP_S.
GAP_FACTOR = 5.0
MIN_GAP_S = 1.0

# QA flag of a window whose power came from the driver's 1 s average (POWER's power_avg_w:
# nvidia-smi power.draw on Ampere and newer, "the average power draw ... over the last second",
# NVML nvmlDeviceGetPowerUsage) because the device has no finite instant power_w sample. An
# average lags instant power by ~0.5 s: on the short windows of the committed H100/H200 cells it
# read 3-13 % low (issue 10). Importers probe for this constant (hasattr) to know that energy
# integrates such averages itself.
AVERAGE_FLAG = "integrated_from_1s_average"

# Flags that mean the counter was not used for the window (the integral was).
COUNTER_REJECTED = ("counter_frozen", "counter_decreasing", "counter_jump", "counter_incomplete")
METHODS = ("counter", "integrated", "modeled", "mixed")


@dataclass(frozen=True)
class EnergyRecord:
    """Energy of one window (or of several disjoint windows) and how it was measured.

    energy_j is the counter delta where the source has a counter and it is plausible over the
    window, else the trapezoid integral of power (method "integrated", or "modeled" when the power
    itself is an estimate). Over several windows, method "mixed" means some windows used their
    counter and others fell back to the integral (qa_flags names why).
    energy_counter_j is the counter delta as read, also where it was rejected (NaN without one).
    relative_difference is (integrated - counter) / counter over the windows whose counter was
    used, NaN where none was.
    segment_energy_j: energy between consecutive cut points [start, cuts..., end] by the method
    used, summing to energy_j (one value when no cuts were given; empty for combined windows).
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
    segment_energy_j: tuple[float, ...] = ()
    counter_used_j: float = float("nan")  # counter energy of the windows whose counter was used
    integrated_where_counter_used_j: float = float("nan")


def devices(samples: pd.DataFrame) -> list[tuple[str, int]]:
    """The (source, device_index) pairs present in the samples, sorted."""
    pairs = samples[["source", "device_index"]].drop_duplicates()
    return sorted((str(s), int(i)) for s, i in pairs.itertuples(index=False))


def select_device(
    samples: pd.DataFrame, device: tuple[str, int] | None = None, where: str = "power samples"
) -> pd.DataFrame:
    """The samples of one device: `device` = (source, device_index), or the only one present.

    Raises InputError when several devices are present and none is chosen, or the chosen one is
    absent. Energies are never summed over devices silently: a node's other GPUs are not the cell's.
    """
    present = devices(samples)
    if device is None:
        if len(present) > 1:
            raise InputError(
                f"{where} hold {len(present)} devices {present} (source, device_index); energy is "
                "computed for one device: choose the one the cell measured (device=(source, "
                "device_index)), or keep only its rows"
            )
        return samples
    device = (str(device[0]), int(device[1]))
    if device not in present:
        raise InputError(f"{where}: device {device} is not among the devices present {present}")
    keep = (samples["source"] == device[0]) & (samples["device_index"] == device[1])
    return samples[keep]


@dataclass(frozen=True, eq=False)
class DeviceSamples:
    """One device's POWER samples as numpy columns, in time order: what window_energy integrates.

    t_wall_ns: int64 (n,), UTC epoch ns; power_w, energy_counter_j: float64 (n,) in W and J, NaN
    where not read; power_avg_w: float64 (n,) in W, or None where the samples have no such column;
    modeled: bool (n,). source, device_index: the device ("" and -1 when there are no samples).
    Rows are put in time order (a stable sort) when built. Raises InputError when the columns'
    lengths differ. Built by device_samples (from a POWER DataFrame) or by
    tokencarbon.power.base.streamed_samples (a sidecar's streamed rows, without pandas).
    """

    source: str
    device_index: int
    t_wall_ns: np.ndarray
    power_w: np.ndarray
    power_avg_w: np.ndarray | None
    energy_counter_j: np.ndarray
    modeled: np.ndarray

    def __post_init__(self) -> None:
        columns = {
            "t_wall_ns": np.asarray(self.t_wall_ns, dtype=np.int64),
            "power_w": np.asarray(self.power_w, dtype=np.float64),
            "energy_counter_j": np.asarray(self.energy_counter_j, dtype=np.float64),
            "modeled": np.asarray(self.modeled, dtype=bool),
        }
        if self.power_avg_w is not None:
            columns["power_avg_w"] = np.asarray(self.power_avg_w, dtype=np.float64)
        lengths = {name: len(v) for name, v in columns.items()}
        if len(set(lengths.values())) > 1:
            raise InputError(f"samples of {self.source} {self.device_index}: column lengths differ "
                             f"{lengths}; each sample needs a value in every column")  # fmt: skip
        t_ns = columns["t_wall_ns"]
        if len(t_ns) > 1 and (np.diff(t_ns) < 0).any():
            order = np.argsort(t_ns, kind="stable")
            columns = {name: v[order] for name, v in columns.items()}
        for name, v in columns.items():
            object.__setattr__(self, name, v)

    def __len__(self) -> int:
        return len(self.t_wall_ns)


def device_samples(
    samples: pd.DataFrame | DeviceSamples,
    device: tuple[str, int] | None = None,
    where: str = "power samples",
) -> DeviceSamples:
    """One device's samples (select_device's choice and errors) as DeviceSamples, time-sorted.
    DeviceSamples are returned as they are (InputError when `device` names another device)."""
    if isinstance(samples, DeviceSamples):
        present = (samples.source, samples.device_index)
        if device is not None and (str(device[0]), int(device[1])) != present:
            raise InputError(
                f"{where}: device {tuple(device)} is not among the devices present {[present]}"
            )
        return samples
    s = select_device(samples, device, where)
    return DeviceSamples(
        source=str(s["source"].iloc[0]) if len(s) else "",
        device_index=int(s["device_index"].iloc[0]) if len(s) else -1,
        t_wall_ns=s["t_wall_ns"].to_numpy(dtype=np.int64),
        power_w=s["power_w"].to_numpy(dtype=float),
        power_avg_w=s["power_avg_w"].to_numpy(dtype=float) if "power_avg_w" in s else None,
        energy_counter_j=s["energy_counter_j"].to_numpy(dtype=float),
        modeled=s["modeled"].to_numpy(dtype=bool),
    )


def _span(t_ns: np.ndarray, start_ns: int, end_ns: int) -> slice:
    """Indices of sorted t_ns from the last sample at or before start to the first at or after end."""
    lo = int(np.searchsorted(t_ns, start_ns, side="right")) - 1
    hi = int(np.searchsorted(t_ns, end_ns, side="left"))
    return slice(max(lo, 0), min(hi, len(t_ns) - 1) + 1)


def _cumulative_trapezoid(t_s: np.ndarray, p_w: np.ndarray, at_s: np.ndarray) -> np.ndarray:
    """Trapezoid integral of the piecewise-linear p(t) from t_s[0] to each of at_s, in J.

    Exact for power linear between samples; cutting anywhere adds nothing, so the pieces between
    cut points sum to the whole.
    """
    cum_j = np.concatenate([[0.0], np.cumsum(np.diff(t_s) * (p_w[:-1] + p_w[1:]) / 2)])
    i = np.clip(np.searchsorted(t_s, at_s, side="right") - 1, 0, len(t_s) - 2)
    p_at = np.interp(at_s, t_s, p_w)
    return cum_j[i] + (at_s - t_s[i]) * (p_w[i] + p_at) / 2


def _check_window(start_ns: int, end_ns: int, cuts_ns: np.ndarray) -> None:
    if end_ns <= start_ns:
        raise InputError(f"energy window [{start_ns}, {end_ns}] ns: end must be after start")
    if len(cuts_ns) and (
        (np.diff(cuts_ns) <= 0).any() or cuts_ns[0] <= start_ns or cuts_ns[-1] >= end_ns
    ):
        raise InputError(
            f"cut points {cuts_ns.tolist()} ns: must increase strictly and lie inside the window "
            f"({start_ns}, {end_ns}) ns"
        )


def power_column(samples: pd.DataFrame | DeviceSamples) -> str:
    """The POWER column integrated for one device's samples: "power_w" (instant power), or
    "power_avg_w" (the driver's 1 s average) where no power_w sample is finite and some
    power_avg_w sample is; such windows are flagged AVERAGE_FLAG. Samples with neither finite
    power_w nor a power_avg_w column keep "power_w" (and its error: no finite sample)."""
    d = device_samples(samples)
    if np.isfinite(d.power_w).any():
        return "power_w"
    if d.power_avg_w is not None and np.isfinite(d.power_avg_w).any():
        return "power_avg_w"
    return "power_w"


def _power_series(d: DeviceSamples, start_ns: int, end_ns: int, where: str):
    """(t_ns, power W, flags, column name, the column's values over all samples) of the finite,
    non-negative samples of the column power_column picks; span checks."""
    t_all = d.t_wall_ns
    if (np.diff(t_all) == 0).any():
        dup = int(t_all[np.flatnonzero(np.diff(t_all) == 0)[0]])
        raise InputError(
            f"{where}: t_wall_ns {dup} appears twice for one device; each sample needs its own time"
        )
    column = power_column(d)
    p_all = d.power_avg_w if column == "power_avg_w" else d.power_w
    valid = np.isfinite(p_all) & (p_all >= 0)
    flags = [AVERAGE_FLAG] if column == "power_avg_w" else []
    span = _span(t_all, start_ns, end_ns)
    if not valid[span].all():
        flags.append("power_invalid_dropped")
    t_ns, p_w = t_all[valid], p_all[valid]
    if len(t_ns) == 0:
        raise InputError(
            f"{where}: no finite power_w (nor power_avg_w) sample to integrate over "
            f"[{start_ns}, {end_ns}] ns"
        )
    if t_ns[0] > start_ns or t_ns[-1] < end_ns:
        raise InputError(
            f"{where}: {column} samples span [{t_ns[0]}, {t_ns[-1]}] ns but the energy window is "
            f"[{start_ns}, {end_ns}] ns; sampling must start before the window and stop after it"
        )
    span = _span(t_ns, start_ns, end_ns)
    gaps_s = np.diff(t_ns[span]) / NS_PER_S
    if len(gaps_s) and gaps_s.max() > max(MIN_GAP_S, GAP_FACTOR * np.median(gaps_s)):
        flags.append("power_gap")
    return t_ns, p_w, flags, column, p_all


def _counter(
    d: DeviceSamples, start_ns: int, edges_ns: np.ndarray, integrated_j: float, max_power_w: float
) -> tuple[np.ndarray | None, float, list[str]]:
    """(counter energies at edges relative to the start or None if rejected, raw delta, flags)."""
    c_all = d.energy_counter_j
    t_all = d.t_wall_ns
    finite = np.isfinite(c_all)
    if not finite.any():
        return None, float("nan"), []
    flags = []
    end_ns = int(edges_ns[-1])
    if not finite[_span(t_all, start_ns, end_ns)].all():
        flags.append("counter_nonfinite_dropped")
    t_ns, c_j = t_all[finite], c_all[finite]
    if t_ns[0] > start_ns or t_ns[-1] < end_ns:
        return None, float("nan"), flags + ["counter_incomplete"]
    span = _span(t_ns, start_ns, end_ns)
    t_s = (t_ns[span] - start_ns) / NS_PER_S
    c_span = c_j[span]
    at_s = (edges_ns - start_ns) / NS_PER_S
    raw = np.interp(at_s, t_s, c_span) - np.interp(0.0, t_s, c_span)
    delta_j = float(raw[-1])
    steps_j = np.diff(c_span)
    if (steps_j < 0).any():
        return None, delta_j, flags + ["counter_decreasing"]
    if delta_j == 0 and integrated_j > 0:
        return None, delta_j, flags + ["counter_frozen"]
    mean_w = steps_j / np.diff(t_s)
    if len(mean_w) and mean_w.max() > COUNTER_JUMP_FACTOR * max_power_w:
        return None, delta_j, flags + ["counter_jump"]
    return raw, delta_j, flags


def window_energy(
    samples: pd.DataFrame | DeviceSamples,
    start_ns: int,
    end_ns: int,
    idle_power_w: float = float("nan"),
    *,
    cuts_ns: np.ndarray | list[int] = (),
    device: tuple[str, int] | None = None,
    where: str = "power samples",
) -> EnergyRecord:
    """Energy of [start_ns, end_ns] from one device's POWER samples, and how it was measured.

    samples: POWER rows (t_wall_ns, source, device_index, modeled, power_w, energy_counter_j; any
    phase), as a DataFrame or as DeviceSamples (the same integration; no pandas needed). cuts_ns: strictly increasing times inside the window where the energy is split
    (segment_energy_j has len(cuts_ns) + 1 values). idle_power_w: for idle_energy_j =
    idle_power_w x window_s (NaN when unknown). Raises InputError when the finite power samples do
    not span the window, a time repeats, or several devices are present and `device` is None.
    Power is instant power_w; where the device has no finite power_w at all, its 1 s average
    power_avg_w, flagged AVERAGE_FLAG ("integrated_from_1s_average"). A counter that is frozen over the window (no advance while power is drawn), falls, jumps (an
    interval above COUNTER_JUMP_FACTOR x the highest power reading) or does not span the window is
    not used: energy_j is the integral and qa_flags names the reason.
    """
    d = device_samples(samples, device, where)
    cuts = np.asarray(cuts_ns, dtype=np.int64)
    _check_window(start_ns, end_ns, cuts)
    t_ns, p_w, flags, column, p_all = _power_series(d, start_ns, end_ns, where)
    edges_ns = np.concatenate([[start_ns], cuts, [end_ns]]).astype(np.int64)
    window_s = (end_ns - start_ns) / NS_PER_S
    t_s = (t_ns - start_ns) / NS_PER_S
    at_s = (edges_ns - start_ns) / NS_PER_S
    cum_j = _cumulative_trapezoid(t_s, p_w, at_s)
    integrated = np.diff(cum_j)
    integrated_j = float(cum_j[-1] - cum_j[0])
    span = _span(t_ns, start_ns, end_ns)
    counter_at, counter_j, counter_flags = _counter(
        d, start_ns, edges_ns, integrated_j, float(p_w[span].max())
    )
    flags += counter_flags
    in_window = (d.t_wall_ns >= start_ns) & (d.t_wall_ns <= end_ns)
    sample_span = _span(d.t_wall_ns, start_ns, end_ns)
    modeled = bool(d.modeled[sample_span].any())
    if modeled:
        method = "modeled"
    elif counter_at is not None:
        method = "counter"
    else:
        method = "integrated"
    segments = np.diff(counter_at) if method == "counter" else integrated
    energy_j = counter_j if method == "counter" else integrated_j
    rel = float("nan")
    if method == "counter" and counter_j > 0:
        rel = (integrated_j - counter_j) / counter_j
        if abs(rel) > MAX_RELATIVE_DIFFERENCE:
            flags.append("counter_vs_integral_gt_5pct")
    n_samples = int((in_window & np.isfinite(p_all) & (p_all >= 0)).sum())
    if n_samples < MIN_SAMPLES:
        flags.append("fewer_than_10_samples")
    if modeled:
        flags.append("modeled")
    idle_energy_j = idle_power_w * window_s
    return EnergyRecord(
        window_s=window_s,
        n_samples=n_samples,
        energy_counter_j=counter_j,
        energy_integrated_j=integrated_j,
        energy_j=energy_j,
        method=method,
        relative_difference=rel,
        qa_flags=tuple(flags),
        idle_energy_j=idle_energy_j,
        above_idle_energy_j=energy_j - idle_energy_j,
        segment_energy_j=tuple(float(x) for x in segments),
        counter_used_j=counter_j if method == "counter" else float("nan"),
        integrated_where_counter_used_j=integrated_j if method == "counter" else float("nan"),
    )


def combine(records: list[EnergyRecord], idle_power_w: float = float("nan")) -> EnergyRecord:
    """Records of disjoint windows (a cell's batches) as one: energies and durations summed.

    method: the windows' common method, or "mixed" when some used their counter and others the
    integral. relative_difference over the windows whose counter was used. qa_flags: the union,
    in first-seen order.
    """
    if not records:
        raise InputError("no energy window to combine (a cell without measured batches)")
    methods = {r.method for r in records}
    if "modeled" in methods:
        method = "modeled"
    elif len(methods) == 1:
        method = methods.pop()
    else:
        method = "mixed"
    used = [r for r in records if r.method == "counter"]
    counter_used_j = sum(r.energy_j for r in used) if used else float("nan")
    integrated_used_j = sum(r.energy_integrated_j for r in used) if used else float("nan")
    rel = (
        (integrated_used_j - counter_used_j) / counter_used_j
        if used and counter_used_j > 0 else float("nan")
    )
    flags = list(dict.fromkeys(f for r in records for f in r.qa_flags))
    # The 5 % check is re-made on the sums: many short windows' noise averages out.
    flags = [f for f in flags if f != "counter_vs_integral_gt_5pct"]
    if abs(rel) > MAX_RELATIVE_DIFFERENCE:
        flags.append("counter_vs_integral_gt_5pct")
    n_samples = sum(r.n_samples for r in records)
    if n_samples >= MIN_SAMPLES:
        flags = [f for f in flags if f != "fewer_than_10_samples"]
    elif "fewer_than_10_samples" not in flags:
        flags.append("fewer_than_10_samples")
    window_s = sum(r.window_s for r in records)
    energy_j = sum(r.energy_j for r in records)
    idle_energy_j = idle_power_w * window_s
    return EnergyRecord(
        window_s=window_s,
        n_samples=n_samples,
        energy_counter_j=sum(r.energy_counter_j for r in records),  # NaN if any window lacks one
        energy_integrated_j=sum(r.energy_integrated_j for r in records),
        energy_j=energy_j,
        method=method,
        relative_difference=rel,
        qa_flags=tuple(flags),
        idle_energy_j=idle_energy_j,
        above_idle_energy_j=energy_j - idle_energy_j,
        counter_used_j=counter_used_j,
        integrated_where_counter_used_j=integrated_used_j,
    )


def cell_energy(
    samples: pd.DataFrame,
    start_ns: int,
    end_ns: int,
    idle_power_w: float = float("nan"),
    device: tuple[str, int] | None = None,
) -> EnergyRecord:
    """window_energy of one window (kept for the sidecar and benchmarks that call it)."""
    return window_energy(samples, start_ns, end_ns, idle_power_w, device=device)


def windows_energy(
    samples: pd.DataFrame,
    windows: list[tuple[int, int]],
    idle_power_w: float = float("nan"),
    device: tuple[str, int] | None = None,
) -> EnergyRecord:
    """window_energy summed over disjoint windows (a cell's batches): the time between batches,
    where an engine allocates caches or captures graphs, is not part of the measured work."""
    parts = [window_energy(samples, s, e, idle_power_w, device=device) for s, e in windows]
    return combine(parts, idle_power_w)


def idle_power(
    samples: pd.DataFrame, device: tuple[str, int] | None = None, where: str = "idle samples"
) -> tuple[float, EnergyRecord]:
    """Mean idle power in W over the span of the samples given (a cell's phase "idle" rows).

    The mean is the window's energy (counter where plausible, as the cell's own energy) over its
    length, from the first to the last sample. Returns (idle_power_w, the idle window's record,
    whose qa_flags metrics keeps as "idle_<flag>"). Raises InputError with fewer than 2 samples.
    """
    d = device_samples(samples, device, where)
    t_ns = d.t_wall_ns
    if len(t_ns) < 2 or t_ns.min() == t_ns.max():
        raise InputError(f"{where}: {len(t_ns)} sample(s); idle power needs at least 2 in time")
    record = window_energy(d, int(t_ns.min()), int(t_ns.max()), where=where)
    return record.energy_j / record.window_s, record

"""Grid carbon intensity (constant or an Electricity Maps trace), its alignment with measured power,
PUE, and the amortised embodied carbon of the hardware.

Carbon never integrates power itself: energies come from tokencarbon.energy (the one integrator),
cut at the instants where the intensity changes, as Zeus's carbon monitor takes its energy
monitor's numbers. Times are UTC nanoseconds since the epoch, energy is in joules; only
units.energy_kwh() makes kWh.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from tokencarbon.energy import EnergyRecord, window_energy
from tokencarbon.errors import ConfigError, InputError
from tokencarbon.units import (
    G_PER_KG,
    NS_PER_HOUR,
    NS_PER_S,
    S_PER_DAY,
    S_PER_HOUR,
    S_PER_YEAR,
    energy_kwh,
)

if TYPE_CHECKING:  # pandas is loaded where a trace is read, not for a constant intensity
    import pandas as pd

# The study's Wisconsin value from Electricity Maps (Lim, Pan, Zhou 2024).
DEFAULT_INTENSITY_G_PER_KWH = 413.0
# Config carbon.max_fill_s: how far (s) a filled instant may lie from the trace row whose value the
# fill policy gives it. One hour lets "previous" bridge one missing hourly row, or a run end a few
# minutes after an export's last hour; a 2026 run against a 2023 trace is refused. None: no limit
# (the user asks for that fill, knowingly).
DEFAULT_MAX_FILL_S: float | None = float(S_PER_HOUR)

# Where a trace does not cover part of a window:
#   "previous": the last value before the uncovered part carries forward (past the trace's end too);
#               nothing fills a window that starts before the trace's first row.
#   "nearest":  each uncovered instant takes the value of the closest covered row (a gap splits at
#               its midpoint; before the first row the first value, after the last row the last).
FILL_POLICIES = ("previous", "nearest")
BASES = ("direct", "lifecycle")

# Electricity Maps export headers, matched case-insensitively: the older export, then the newer.
_TIME_COLUMN = "Datetime (UTC)"
_ZONE_COLUMNS = ("Zone Id", "Zone id")
_INTENSITY_COLUMNS = {
    "direct": ("Carbon Intensity gCO₂eq/kWh (direct)", "Carbon intensity gCO₂eq/kWh (direct)"),
    "lifecycle": (
        "Carbon Intensity gCO₂eq/kWh (LCA)",
        "Carbon intensity gCO₂eq/kWh (Life cycle)",
    ),
}
_HEADER_VARIANTS = (
    "older export: 'Datetime (UTC)', 'Zone Id', 'Carbon Intensity gCO₂eq/kWh (direct)', "
    "'Carbon Intensity gCO₂eq/kWh (LCA)'; newer export: 'Datetime (UTC)', 'Zone id', "
    "'Carbon intensity gCO₂eq/kWh (direct)', 'Carbon intensity gCO₂eq/kWh (Life cycle)'"
)
_FAR_PAST_NS = np.iinfo(np.int64).min
_FAR_FUTURE_NS = np.iinfo(np.int64).max


def utc(t_ns: int) -> str:
    import pandas as pd

    return pd.Timestamp(int(t_ns), unit="ns", tz="UTC").isoformat()


class IntensitySegments(NamedTuple):
    """A window cut where the intensity changes: segment k is [edges_ns[k], edges_ns[k+1])."""

    edges_ns: np.ndarray  # int64, n + 1 values
    intensity_g_per_kwh: np.ndarray  # float64, n values
    filled: np.ndarray  # bool, n values: True where a fill policy supplied the value
    # float64, n values: the farthest (s) the segment lies from the trace row whose value it was
    # given; 0 where not filled
    fill_distance_s: np.ndarray


def _check_window(start_ns: int, end_ns: int) -> None:
    if not end_ns > start_ns:
        raise InputError(
            f"time window {utc(start_ns)} to {utc(end_ns)} ({start_ns} to {end_ns} ns): "
            "the end must be later than the start"
        )


def _check_fill(fill: str | None) -> None:
    if fill is not None and fill not in FILL_POLICIES:
        raise ConfigError(
            f"carbon fill policy {fill!r}: use null (no fill) or one of {FILL_POLICIES}"
        )


# How the workflow's config names the fill settings; the command line passes its flags instead.
CONFIG_NAMES = {"fill": "config carbon.fill", "max_fill_s": "carbon.max_fill_s"}
CLI_NAMES = {"fill": "--fill", "max_fill_s": "--max-fill-s"}


class TraceCoverageError(InputError):
    """An intensity trace that does not give a window an intensity: part of the window lies
    outside the trace and no fill policy is set, or a fill would reach further from the trace than
    max_fill_s. str() names the config keys that settle it; message(names) names others (the
    command line's flags, CLI_NAMES)."""

    def __init__(self, path: str, window: str, problem: str, fill: str | None,
                 max_fill_s: float | None) -> None:  # fmt: skip
        self.path, self.window, self.problem = path, window, problem
        self.fill, self.max_fill_s = fill, max_fill_s
        super().__init__(self.message(CONFIG_NAMES))

    def message(self, names: dict[str, str]) -> str:
        """The error with the fill settings named as `names` ({"fill": ..., "max_fill_s": ...})."""
        if self.fill is None:
            fix = (
                f"give a trace that covers it, or set the fill policy ({names['fill']}) to one of "
                f"{FILL_POLICIES}"
            )
        else:
            fix = (
                f"more than {names['max_fill_s']} = {self.max_fill_s:g} s; give a trace that "
                f"covers the run, or raise {names['max_fill_s']} (null / none: no limit) if that "
                "fill is what you want"
            )
        return f"{self.path}: {self.problem}; {fix}"


@dataclass(frozen=True)
class ConstantIntensity:
    """One intensity for all time (the study's setting)."""

    intensity_g_per_kwh: float = DEFAULT_INTENSITY_G_PER_KWH

    def __post_init__(self) -> None:
        if not (math.isfinite(self.intensity_g_per_kwh) and self.intensity_g_per_kwh >= 0):
            raise ConfigError(
                f"carbon intensity_g_per_kwh {self.intensity_g_per_kwh!r}: "
                "must be a finite number >= 0 (gCO2/kWh)"
            )

    def segments(
        self,
        start_ns: int,
        end_ns: int,
        fill: str | None = None,
        max_fill_s: float | None = DEFAULT_MAX_FILL_S,
    ) -> IntensitySegments:
        _check_window(start_ns, end_ns)
        _check_fill(fill)
        return IntensitySegments(
            np.array([start_ns, end_ns], dtype=np.int64),
            np.array([self.intensity_g_per_kwh]),
            np.array([False]),
            np.array([0.0]),
        )


@dataclass(frozen=True, eq=False)
class IntensityTrace:
    """A grid intensity trace: row i holds intensity_g_per_kwh[i] over [start_ns[i], end_ns[i])."""

    path: str
    zone_id: str
    basis: str
    period: str  # "3600 s" for a regular trace, "1 month" (or "12 months") for a calendar one
    start_ns: np.ndarray
    end_ns: np.ndarray
    intensity_g_per_kwh: np.ndarray

    def _pieces(self, fill: str | None) -> tuple[np.ndarray, ...]:
        """The trace's rows plus, under a fill policy, pieces covering its gaps and both ends.

        (lo_ns, hi_ns, intensity, filled, source_ns): source_ns is the edge of the row whose value
        a filled piece carries (the distance a filled instant lies from its data).
        """
        starts, ends, values = self.start_ns, self.end_ns, self.intensity_g_per_kwh
        if fill is None:
            n = len(starts)
            return starts, ends, values, np.zeros(n, dtype=bool), np.zeros(n, dtype=np.int64)
        gap = np.flatnonzero(ends[:-1] < starts[1:])  # a gap follows row gap[k]
        gap_lo, gap_hi = ends[gap], starts[gap + 1]
        after = ([ends[-1]], [_FAR_FUTURE_NS], [values[-1]], [ends[-1]])
        if fill == "previous":
            extra = [(gap_lo, gap_hi, values[gap], gap_lo), after]
        else:
            mid = gap_lo + (gap_hi - gap_lo) // 2
            before = ([_FAR_PAST_NS], [starts[0]], [values[0]], [starts[0]])
            extra = [
                (gap_lo, mid, values[gap], gap_lo),
                (mid, gap_hi, values[gap + 1], gap_hi),
                before,
                after,
            ]
        lo = np.concatenate([starts] + [np.asarray(e[0], dtype=np.int64) for e in extra])
        hi = np.concatenate([ends] + [np.asarray(e[1], dtype=np.int64) for e in extra])
        val = np.concatenate([values] + [np.asarray(e[2], dtype=float) for e in extra])
        src = np.concatenate([starts] + [np.asarray(e[3], dtype=np.int64) for e in extra])
        filled = np.arange(len(lo)) >= len(starts)
        keep = hi > lo
        order = np.argsort(lo[keep], kind="stable")
        return tuple(a[keep][order] for a in (lo, hi, val, filled, src))

    def segments(
        self,
        start_ns: int,
        end_ns: int,
        fill: str | None = None,
        max_fill_s: float | None = DEFAULT_MAX_FILL_S,
    ) -> IntensitySegments:
        """The window cut where the intensity changes (IntensitySegments).

        Raises InputError where the trace leaves part of the window uncovered and no fill policy
        is set, or where a filled instant lies more than max_fill_s from the row whose value it
        takes (max_fill_s None: no limit).
        """
        _check_window(start_ns, end_ns)
        _check_fill(fill)
        if max_fill_s is not None and not (math.isfinite(max_fill_s) and max_fill_s >= 0):
            raise ConfigError(
                f"carbon max_fill_s {max_fill_s!r}: must be a number of seconds >= 0, or null "
                "for no limit"
            )
        lo, hi, val, filled, src = self._pieces(fill)
        inside = (hi > start_ns) & (lo < end_ns)
        lo = np.clip(lo[inside], start_ns, end_ns)
        hi = np.clip(hi[inside], start_ns, end_ns)
        # Pieces never overlap, so the window is covered exactly when they join end to start.
        bounds = np.concatenate([[start_ns], hi])
        nexts = np.concatenate([lo, [end_ns]])
        holes = [(a, b) for a, b in zip(bounds, nexts) if b > a]
        if holes:
            shown = "; ".join(f"{utc(a)} to {utc(b)}" for a, b in holes[:3])
            more = f" and {len(holes) - 3} more" if len(holes) > 3 else ""
            raise TraceCoverageError(
                self.path, f"{utc(start_ns)} to {utc(end_ns)}",
                f"the intensity trace ({self._described()}) does not cover {shown}{more} (UTC) of "
                f"the window {utc(start_ns)} to {utc(end_ns)}",
                None, max_fill_s,
            )  # fmt: skip
        filled, src = filled[inside], src[inside]
        # The farthest instant of a filled piece from its source edge is one of its own ends.
        distance_s = np.where(
            filled, np.maximum(np.abs(lo - src), np.abs(hi - src)) / NS_PER_S, 0.0
        )
        if max_fill_s is not None and len(distance_s) and distance_s.max() > max_fill_s:
            k = int(np.argmax(distance_s))
            raise TraceCoverageError(
                self.path, f"{utc(start_ns)} to {utc(end_ns)}",
                f"the window {utc(start_ns)} to {utc(end_ns)} lies up to {distance_s[k]:.0f} s "
                f"from the intensity trace ({self._described()}): {utc(lo[k])} to {utc(hi[k])} "
                f"would take {val[inside][k]:g} gCO2eq/kWh by fill policy {fill!r}",
                fill, max_fill_s,
            )  # fmt: skip
        return IntensitySegments(np.concatenate([lo, [end_ns]]), val[inside], filled, distance_s)

    def _described(self) -> str:
        return (
            f"zone {self.zone_id}, {self.period} rows from {utc(self.start_ns[0])} to "
            f"{utc(self.end_ns[-1])}"
        )


IntensitySource = ConstantIntensity | IntensityTrace


def mean_intensity(intensity_g_per_kwh, energy_j, duration_s) -> float:
    """The energy-weighted mean intensity (gCO2eq/kWh) of pieces of a run (intensity segments, or
    windows with their own means), each with its energy (J) and duration (s): sum(i x e) / sum(e).
    With no energy at all the energy-weighted mean is undefined, and the time-weighted one,
    sum(i x t) / sum(t), is the answer (the one answer at zero energy, wherever a mean intensity is
    reported: a window's, a cell's, a time-shifted job's). NaN only where no piece has a duration.
    """
    # Summed in order, piece by piece (Python floats), as every caller summed before this was one
    # function: the committed studies' tables read back to the same bits.
    pieces = [(float(i), float(e), float(t))
              for i, e, t in zip(intensity_g_per_kwh, energy_j, duration_s)]  # fmt: skip
    total_j = sum(e for _, e, _ in pieces)
    if total_j > 0:
        return sum(i * e for i, e, _ in pieces) / total_j
    total_s = sum(t for _, _, t in pieces)
    return sum(i * t for i, _, t in pieces) / total_s if total_s > 0 else float("nan")


@dataclass(frozen=True)
class CarbonAccounting:
    """How operational carbon is counted, chosen once (from_config) for metrics, the time-shift
    what-if, figure 6a and the DAG's coverage checks: the intensity source (a constant, or an
    Electricity Maps trace on its basis), PUE, the fill policy for what the trace does not cover and
    how far a fill may reach (max_fill_s, s; None: no limit)."""

    intensity: IntensitySource
    pue: float = 1.0
    fill: str | None = None
    max_fill_s: float | None = DEFAULT_MAX_FILL_S

    def __post_init__(self) -> None:
        _check_pue(self.pue)
        _check_fill(self.fill)

    @classmethod
    def from_config(
        cls, carbon: Mapping[str, Any], trace: str | Path | None = None
    ) -> CarbonAccounting:
        """The accounting of config `carbon` (its schema's keys: source, intensity_g_per_kwh,
        trace, basis, pue, fill, max_fill_s; an absent key has the schema's default); `trace`: the
        trace file where a job reads it from its input rather than the config. Raises ConfigError
        / InputError (load_trace)."""
        if carbon.get("source", "constant") == "trace":
            path = trace or carbon["trace"]
            intensity: IntensitySource = load_trace(path, carbon.get("basis", "direct"))
        else:
            value = carbon.get("intensity_g_per_kwh", DEFAULT_INTENSITY_G_PER_KWH)
            intensity = ConstantIntensity(float(value))
        return cls(intensity, float(carbon.get("pue", 1.0)), carbon.get("fill"),
                   carbon.get("max_fill_s", DEFAULT_MAX_FILL_S))  # fmt: skip

    def segments(self, start_ns: int, end_ns: int) -> IntensitySegments:
        """The window cut where the intensity changes, under the fill policy."""
        return self.intensity.segments(start_ns, end_ns, self.fill, self.max_fill_s)

    def first_uncovered(self, windows) -> tuple[str, TraceCoverageError] | None:
        """first_uncovered of `windows` under this accounting."""
        return first_uncovered(self.intensity, windows, self.fill, self.max_fill_s)

    def day(self, day: str | dt.date | None) -> pd.Series:
        """intensity_for_day of one UTC day under this accounting."""
        return intensity_for_day(self.intensity, day, self.fill, self.max_fill_s)


def first_uncovered(
    intensity: IntensitySource,
    windows,
    fill: str | None = None,
    max_fill_s: float | None = DEFAULT_MAX_FILL_S,
) -> tuple[str, TraceCoverageError] | None:
    """The first of `windows` ((label, start_ns, end_ns), ...) the intensity does not cover under
    the fill policy and max_fill_s, with the error metrics would raise for it; None when every
    window is covered (always, for a constant intensity). Checked when the DAG is built from the
    cells' known times, so that compute_metrics never fails on them after its inputs ran."""
    for label, start_ns, end_ns in windows:
        try:
            intensity.segments(int(start_ns), int(end_ns), fill, max_fill_s)
        except TraceCoverageError as exc:
            return label, exc
    return None


def _find_column(df: pd.DataFrame, names: tuple[str, ...]) -> str | None:
    wanted = {n.lower() for n in names}
    return next((c for c in df.columns if c.strip().lower() in wanted), None)


def load_trace(path: str | Path, basis: str = "direct") -> IntensityTrace:
    """Read an Electricity Maps CSV export (older or newer header, any regular or calendar period).

    A blank intensity cell is a gap, like a missing row.
    """
    import pandas as pd

    path = Path(path)
    if basis not in BASES:
        raise ConfigError(f"carbon basis {basis!r}: use one of {BASES}")
    try:
        # Only a blank cell is missing: pandas' default would also read "NaN", "N/A", "null" as
        # missing, turning a broken value into a silent gap.
        df = pd.read_csv(
            path, encoding="utf-8-sig", dtype=str, keep_default_na=False, na_values=[""]
        )
    except FileNotFoundError as exc:
        raise InputError(f"{path}: intensity trace not found") from exc
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise InputError(f"{path}: not a readable UTF-8 CSV intensity trace ({exc})") from exc
    time_col = _find_column(df, (_TIME_COLUMN,))
    zone_col = _find_column(df, _ZONE_COLUMNS)
    value_col = _find_column(df, _INTENSITY_COLUMNS[basis])
    wanted = {"time": time_col, "zone id": zone_col, f"{basis} intensity": value_col}
    missing = [name for name, col in wanted.items() if col is None]
    if missing:
        raise InputError(
            f"{path}: no {' or '.join(missing)} column among the columns found {list(df.columns)}; "
            f"accepted Electricity Maps headers: {_HEADER_VARIANTS}"
        )
    raw = df[value_col].str.strip()
    values = pd.to_numeric(raw, errors="coerce")
    # "NaN", "inf" or text is an error naming its line; only a blank cell is a missing value.
    bad = (values.isna() & raw.notna() & (raw != "")) | np.isinf(values) | (values < 0)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise InputError(
            f"{path}: line {row + 2}, column {value_col!r}: {df[value_col].iloc[row]!r} is not an "
            "intensity in gCO2eq/kWh (a finite number >= 0, or blank for a missing value)"
        )
    try:
        times = pd.to_datetime(df[time_col], utc=True, format="ISO8601")
    except (ValueError, TypeError) as exc:
        raise InputError(
            f"{path}: column {time_col!r} holds a value that is not a date-time such as "
            f"'2023-01-01 00:00:00' ({exc})"
        ) from exc
    if times.isna().any():
        row = int(np.flatnonzero(times.isna())[0])
        raise InputError(
            f"{path}: line {row + 2}, column {time_col!r} is empty; every row needs its UTC time "
            "such as '2023-01-01 00:00:00'"
        )
    zones = sorted(df[zone_col].dropna().unique())
    if len(zones) != 1:
        raise InputError(
            f"{path}: column {zone_col!r} holds zones {zones}; a trace must hold exactly one"
        )
    start_ns = times.dt.as_unit("ns").astype("int64").to_numpy()
    order = np.argsort(start_ns, kind="stable")
    start_ns, intensity = start_ns[order], values.to_numpy(dtype=float)[order]
    if len(start_ns) < 2:
        raise InputError(
            f"{path}: {len(start_ns)} row(s); at least 2 are needed to give the period"
        )
    dup = np.flatnonzero(np.diff(start_ns) == 0)
    if len(dup):
        raise InputError(
            f"{path}: time {utc(start_ns[dup[0]])} appears twice; each row needs its own time"
        )
    # The period comes from every row; only then do blank rows drop out, leaving gaps.
    end_ns, period = _row_ends(start_ns, path, order + 2)
    keep = ~np.isnan(intensity)
    if not keep.any():
        raise InputError(f"{path}: column {value_col!r} is blank in every row")
    start_ns, end_ns, intensity = start_ns[keep], end_ns[keep], intensity[keep]
    for a in (start_ns, end_ns, intensity):
        a.flags.writeable = False
    return IntensityTrace(str(path), zones[0], basis, period, start_ns, end_ns, intensity)


def _row_ends(start_ns: np.ndarray, path: Path, lines: np.ndarray) -> tuple[np.ndarray, str]:
    """Each row lasts one period: the most common step between rows (longer steps are gaps).

    Rows all at midnight on the 1st, at least 28 days apart, are calendar months (or multiples).
    A row off the grid of the first row and the period (an hourly trace with a row at 00:30) is an
    error naming its line: taking the shortest step as the period would turn every hour into a
    half-hour row followed by a gap, and report coverage errors that point elsewhere.
    """
    import pandas as pd

    steps = np.diff(start_ns)
    t = pd.DatetimeIndex(start_ns.astype("datetime64[ns]"))
    if steps.min() >= 28 * S_PER_DAY * NS_PER_S and (t == t.to_period("M").to_timestamp()).all():
        months = int(np.diff(t.year * 12 + t.month).min())
        ends = (t + pd.DateOffset(months=months)).as_unit("ns").asi8
        return ends.astype(np.int64), f"{months} month{'s' if months > 1 else ''}"
    values, counts = np.unique(steps, return_counts=True)
    step_ns = int(values[np.argmax(counts)])  # the most common; the shortest among equals
    off = np.flatnonzero((start_ns - start_ns[0]) % step_ns != 0)
    if len(off):
        row = int(off[0])
        raise InputError(
            f"{path}: line {lines[row]} ({utc(start_ns[row])}) is off the trace's grid of "
            f"{step_ns / NS_PER_S:g} s rows starting {utc(start_ns[0])} (most rows are that far "
            "apart); remove or correct that row"
        )
    return start_ns + step_ns, f"{step_ns / NS_PER_S:g} s"


@dataclass(frozen=True)
class CarbonSegment:
    """A piece of a window at one intensity (an hour of an hourly trace, clipped to the window)."""

    start_ns: int
    end_ns: int
    energy_j: float
    intensity_g_per_kwh: float
    filled: bool
    carbon_g: float


@dataclass(frozen=True)
class CarbonRecord:
    """Operational carbon of a window: device energy x intensity x PUE."""

    energy_j: float  # device energy, before PUE
    energy_kwh: float
    intensity_g_per_kwh: float  # mean over the window weighted by energy
    pue: float
    carbon_g: float
    filled_s: float  # seconds of the window whose intensity a fill policy supplied
    segments: tuple[CarbonSegment, ...]  # empty when no time window was given
    max_fill_distance_s: float = 0.0  # farthest a filled instant lies from its trace row


def _check_pue(pue: float) -> None:
    if not (math.isfinite(pue) and pue >= 1.0):
        raise ConfigError(f"carbon pue {pue!r}: must be >= 1.0 (facility energy / IT energy)")


def operational_carbon(
    segments: IntensitySegments, energy_j: np.ndarray | list[float], pue: float = 1.0
) -> CarbonRecord:
    """Carbon of a window cut into intensity segments, given each segment's energy in J.

    energy_j[k] is the device energy of [edges_ns[k], edges_ns[k+1]) from tokencarbon.energy
    (window_energy(..., cuts_ns=segments.edges_ns[1:-1]).segment_energy_j): carbon integrates
    nothing itself. carbon_g = sum_k energy_kwh(energy_j[k]) x intensity[k] x PUE.
    Raises InputError where energies are not finite and >= 0 or do not match the segments.
    """
    _check_pue(pue)
    energy_j = np.asarray(energy_j, dtype=float)
    if energy_j.shape != segments.intensity_g_per_kwh.shape:
        raise InputError(
            f"{len(energy_j)} segment energies for {len(segments.intensity_g_per_kwh)} intensity "
            "segments; give one energy per segment"
        )
    if not (np.isfinite(energy_j).all() and (energy_j >= 0).all()):
        raise InputError(
            f"segment energies {energy_j.tolist()} J: each must be a finite number >= 0"
        )
    carbon_g = energy_kwh(energy_j) * segments.intensity_g_per_kwh * pue
    widths_ns = np.diff(segments.edges_ns)
    total_j = float(energy_j.sum())
    parts = tuple(
        CarbonSegment(int(a), int(b), float(e), float(i), bool(f), float(c))
        for a, b, e, i, f, c in zip(
            segments.edges_ns[:-1],
            segments.edges_ns[1:],
            energy_j,
            segments.intensity_g_per_kwh,
            segments.filled,
            carbon_g,
        )
    )
    return CarbonRecord(
        energy_j=total_j,
        energy_kwh=energy_kwh(total_j),
        intensity_g_per_kwh=mean_intensity(segments.intensity_g_per_kwh, energy_j,
                                           widths_ns / NS_PER_S),  # fmt: skip
        pue=pue,
        carbon_g=float(carbon_g.sum()),
        filled_s=float(widths_ns[segments.filled].sum() / NS_PER_S),
        segments=parts,
        max_fill_distance_s=float(segments.fill_distance_s.max(initial=0.0)),
    )


def window_carbon(
    samples: pd.DataFrame,
    start_ns: int,
    end_ns: int,
    intensity: IntensitySource,
    *,
    pue: float = 1.0,
    fill: str | None = None,
    max_fill_s: float | None = DEFAULT_MAX_FILL_S,
    idle_power_w: float = float("nan"),
    device: tuple[str, int] | None = None,
    where: str | Path = "power samples",
) -> tuple[EnergyRecord, CarbonRecord]:
    """Energy (tokencarbon.energy.window_energy) and operational carbon of one window.

    The window is cut where the intensity changes; each piece's energy, by the method the energy
    module chose for the window (counter where plausible, else the integral), meets its own
    intensity. Errors as window_energy and IntensitySource.segments.
    """
    segs = intensity.segments(start_ns, end_ns, fill, max_fill_s)
    energy = window_energy(
        samples, start_ns, end_ns, idle_power_w,
        cuts_ns=segs.edges_ns[1:-1], device=device, where=str(where),
    )  # fmt: skip
    return energy, operational_carbon(segs, np.array(energy.segment_energy_j), pue)


def carbon_from_energy(
    energy_j: float,
    intensity: IntensitySource,
    pue: float = 1.0,
    start_ns: int | None = None,
    end_ns: int | None = None,
    fill: str | None = None,
    max_fill_s: float | None = DEFAULT_MAX_FILL_S,
) -> CarbonRecord:
    """Carbon of an energy known only as a total: energy_j x intensity x PUE.

    With a window, the energy is spread evenly over it (constant power), so a trace can be used.
    """
    _check_pue(pue)
    if not (math.isfinite(energy_j) and energy_j >= 0):
        raise InputError(f"energy_j {energy_j!r}: must be a finite number of joules >= 0")
    if start_ns is None or end_ns is None:
        if not isinstance(intensity, ConstantIntensity):
            raise ConfigError(
                f"{intensity.path}: an intensity trace needs the run's time window "
                "(start_ns, end_ns)"
            )
        kwh, g_per_kwh = energy_kwh(energy_j), intensity.intensity_g_per_kwh
        return CarbonRecord(energy_j, kwh, g_per_kwh, pue, kwh * g_per_kwh * pue, 0.0, ())
    segs = intensity.segments(start_ns, end_ns, fill, max_fill_s)
    share = np.diff(segs.edges_ns) / (end_ns - start_ns)
    return operational_carbon(segs, energy_j * share, pue)


def intensity_for_day(
    intensity: IntensitySource,
    day: str | dt.date | None = None,
    fill: str | None = None,
    max_fill_s: float | None = DEFAULT_MAX_FILL_S,
) -> pd.Series:
    """The 24 hourly intensities (time-weighted means) of one UTC day, indexed by hour_utc 0-23.

    day is a date or "YYYY-MM-DD"; None takes the first day of a trace.
    """
    import pandas as pd

    if day is None:
        if not isinstance(intensity, IntensityTrace):
            raise ConfigError("intensity_for_day: a constant intensity needs an explicit day")
        day_ns = int(pd.Timestamp(int(intensity.start_ns[0]), unit="ns").normalize().value)
    else:
        try:
            day_ns = int(pd.Timestamp(dt.date.fromisoformat(str(day))).as_unit("ns").value)
        except ValueError as exc:
            raise ConfigError(
                f"carbon trace_day {day!r}: use a UTC day written YYYY-MM-DD"
            ) from exc
    segs = intensity.segments(day_ns, day_ns + 24 * NS_PER_HOUR, fill, max_fill_s)
    hourly = []
    for hour in range(24):
        a, b = day_ns + hour * NS_PER_HOUR, day_ns + (hour + 1) * NS_PER_HOUR
        widths = np.clip(segs.edges_ns[1:], a, b) - np.clip(segs.edges_ns[:-1], a, b)
        hourly.append(float(np.sum(widths * segs.intensity_g_per_kwh) / np.sum(widths)))
    name = intensity.zone_id if isinstance(intensity, IntensityTrace) else "constant"
    return pd.Series(hourly, index=pd.RangeIndex(24, name="hour_utc"), name=name)


def embodied_carbon_g(
    embodied_kg_co2e: float,
    lifetime_years: float,
    duration_s: float,
    utilisation_share: float = 1.0,
) -> float:
    """A device's manufacturing footprint amortised linearly over its service life.

    The share charged to a run is duration / lifetime x the share of the device the run holds: ACT's
    CF = OP_CF + (T / LT) x E_CF (Gupta et al., ISCA 2022), LLMCarbon's embodied term
    t_i / lifetime_i x CO2eq_chip_i (Faiz et al., ICLR 2024) and the GSF Software Carbon Intensity's
    M = TE x (TiR / EL) x RS, whose worked example (1000 kg, 4 years, 1 hour -> about 28 g) uses
    365-day years.
    """
    if not (math.isfinite(embodied_kg_co2e) and embodied_kg_co2e >= 0):
        raise ConfigError(
            f"embodied_kg_co2e {embodied_kg_co2e!r}: must be a finite number >= 0 (kgCO2e)"
        )
    if not (math.isfinite(lifetime_years) and lifetime_years > 0):
        raise ConfigError(f"lifetime_years {lifetime_years!r}: must be a finite number > 0")
    if not 0 < utilisation_share <= 1:
        raise ConfigError(f"utilisation_share {utilisation_share!r}: must lie in (0, 1]")
    if not (math.isfinite(duration_s) and duration_s >= 0):
        raise InputError(f"duration_s {duration_s!r}: must be a finite number of seconds >= 0")
    return (
        embodied_kg_co2e * G_PER_KG * duration_s / (lifetime_years * S_PER_YEAR) * utilisation_share
    )

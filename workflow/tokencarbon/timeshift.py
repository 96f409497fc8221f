"""Time-shift what-if: the carbon a job of known energy profile would have emitted had it started
at each hour of a chosen day, the best start with perfect foresight (the oracle bound), and a
forecast-free policy kept apart from it (start at the hour that was best on the previous day).

Location-based accounting only: the grid's average intensity where the job runs (an Electricity
Maps trace, direct or life-cycle basis), no market instruments (RECs, PPAs) and no marginal
intensity. Energies are the cells' measured energies (tokencarbon.metrics); carbon goes through
carbon.carbon_from_energy, so fill, max_fill_s and PUE mean what they mean for metrics.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pandas as pd

from tokencarbon.carbon import (
    DEFAULT_MAX_FILL_S,
    IntensityTrace,
    carbon_from_energy,
    mean_intensity,
    utc,
)
from tokencarbon.errors import ConfigError, InputError
from tokencarbon.tables import CELL_KEYS
from tokencarbon.units import NS_PER_HOUR, NS_PER_S

POLICY = "previous-day best start"


@dataclass(frozen=True)
class JobProfile:
    """A job's energy as pieces: piece k draws energies_j[k] evenly over
    [offsets_s[k], offsets_s[k] + durations_s[k]) after the job's start."""

    offsets_s: tuple[float, ...]
    durations_s: tuple[float, ...]
    energies_j: tuple[float, ...]

    def __post_init__(self) -> None:
        n = {len(self.offsets_s), len(self.durations_s), len(self.energies_j)}
        if len(n) != 1 or not self.offsets_s:
            raise InputError("a job profile needs one offset, duration and energy per piece")
        for name in ("offsets_s", "durations_s", "energies_j"):
            values = np.asarray(getattr(self, name), dtype=float)
            lowest = 0.0 if name != "durations_s" else np.nextafter(0, 1)
            if not (np.isfinite(values).all() and (values >= lowest).all()):
                raise InputError(f"job profile {name} {values.tolist()}: each must be finite, "
                                 f"{'> 0' if name == 'durations_s' else '>= 0'}")  # fmt: skip

    @classmethod
    def constant(cls, energy_j: float, duration_s: float) -> JobProfile:
        """energy_j drawn at constant power over duration_s."""
        return cls((0.0,), (float(duration_s),), (float(energy_j),))

    @classmethod
    def back_to_back(cls, durations_s: list[float], energies_j: list[float]) -> JobProfile:
        """Pieces run one after another (the cells of a study, each at its mean power)."""
        offsets = np.concatenate([[0.0], np.cumsum(durations_s)[:-1]])
        return cls(tuple(offsets), tuple(map(float, durations_s)), tuple(map(float, energies_j)))

    @property
    def duration_s(self) -> float:
        return float(max(o + d for o, d in zip(self.offsets_s, self.durations_s)))

    @property
    def energy_j(self) -> float:
        return float(sum(self.energies_j))


def job_carbon_g(
    profile: JobProfile,
    start_ns: int,
    intensity: IntensityTrace,
    *,
    pue: float = 1.0,
    fill: str | None = None,
    max_fill_s: float | None = DEFAULT_MAX_FILL_S,
) -> tuple[float, float]:
    """(carbon g, energy-weighted intensity g/kWh: carbon.mean_intensity) of the job started at
    start_ns (UTC ns)."""
    carbon_g = 0.0
    intensities = []
    for off, dur, e_j in zip(profile.offsets_s, profile.durations_s, profile.energies_j):
        a = int(start_ns + round(off * NS_PER_S))
        b = int(a + round(dur * NS_PER_S))
        rec = carbon_from_energy(e_j, intensity, pue, a, b, fill, max_fill_s)
        carbon_g += rec.carbon_g
        intensities.append(rec.intensity_g_per_kwh)
    return carbon_g, mean_intensity(intensities, profile.energies_j, profile.durations_s)


def day_start_ns(day: str | dt.date) -> int:
    """UTC midnight of a day given as a date or 'YYYY-MM-DD'."""
    try:
        date = day if isinstance(day, dt.date) else dt.date.fromisoformat(str(day))
    except ValueError as exc:
        raise ConfigError(f"time-shift day {day!r}: use a UTC day written YYYY-MM-DD") from exc
    return int(pd.Timestamp(date, tz="UTC").value)


def hourly_starts(day: str | dt.date, hours: int = 24) -> np.ndarray:
    """The start of each of the first `hours` hours of a UTC day, ns."""
    return day_start_ns(day) + np.arange(hours, dtype=np.int64) * NS_PER_HOUR


def policy_start_ns(
    profile: JobProfile, intensity: IntensityTrace, day: str | dt.date, **carbon_kw
) -> int:
    """The forecast-free policy: the start hour that would have been best on the previous day
    (for a 1-hour job, the hour lowest on the previous day), taken at the same hour on `day`.
    Ties go to the earliest hour."""
    previous = hourly_starts(day) - 24 * NS_PER_HOUR
    carbons = [job_carbon_g(profile, int(s), intensity, **carbon_kw)[0] for s in previous]
    return int(previous[int(np.argmin(carbons))] + 24 * NS_PER_HOUR)


def timeshift(
    profile: JobProfile,
    intensity: IntensityTrace,
    day: str | dt.date,
    actual_start_ns: int,
    *,
    job: str = "job",
    pue: float = 1.0,
    fill: str | None = None,
    max_fill_s: float | None = DEFAULT_MAX_FILL_S,
) -> pd.DataFrame:
    """TIMESHIFT rows: the job started at each hour of `day` (UTC), plus its actual start.

    actual_start_ns: when the job is taken to have started (a row of its own when not on the
    hour). The oracle's best start (is_oracle_best) has perfect foresight of the day's intensities;
    the policy's start (is_policy) only uses the previous day's. saving_vs_actual_g = carbon at the
    actual start - carbon at this row's start (> 0: this start would have emitted less). Raises
    InputError (carbon.py) where the trace does not cover a start's window within max_fill_s.
    """
    if not isinstance(intensity, IntensityTrace):
        raise ConfigError(
            "the time-shift what-if needs an hourly intensity trace (carbon.source: trace); a "
            "constant intensity gives the same carbon at every hour"
        )
    kw = {"pue": pue, "fill": fill, "max_fill_s": max_fill_s}
    starts = [int(s) for s in hourly_starts(day)]
    if int(actual_start_ns) not in starts:
        starts.append(int(actual_start_ns))
    policy_ns = policy_start_ns(profile, intensity, day, **kw)
    rows = []
    for s in sorted(starts):
        carbon_g, mean_g_per_kwh = job_carbon_g(profile, s, intensity, **kw)
        rows.append({
            "job": job, "zone_id": intensity.zone_id, "basis": intensity.basis,
            "day": str(pd.Timestamp(day_start_ns(day), unit="ns", tz="UTC").date()),
            "start_wall_ns": s, "start_utc": utc(s), "energy_j": profile.energy_j,
            "duration_s": profile.duration_s, "pue": pue, "carbon_g": carbon_g,
            "intensity_g_per_kwh": mean_g_per_kwh, "is_actual": s == int(actual_start_ns),
            "is_policy": s == policy_ns,
        })  # fmt: skip
    df = pd.DataFrame(rows)
    on_day = df["start_wall_ns"].isin(hourly_starts(day))
    best = df.loc[on_day, "carbon_g"].idxmin()  # first of equals: the earliest hour
    df["is_oracle_best"] = df.index == best
    actual_g = float(df.loc[df["is_actual"], "carbon_g"].iloc[0])
    df["saving_vs_actual_g"] = actual_g - df["carbon_g"]
    return df


def study_timeshift(
    metrics: pd.DataFrame,
    cells: pd.DataFrame,
    intensity: IntensityTrace,
    day: str | dt.date | None = None,
    *,
    pue: float = 1.0,
    fill: str | None = None,
    max_fill_s: float | None = DEFAULT_MAX_FILL_S,
) -> pd.DataFrame:
    """TIMESHIFT rows for the whole study: every cell's measured energy over its measured time,
    back to back in the order the cells ran (METRICS' energy_j and window_s; CELLS' window start).

    The actual start is the first cell's start time of day (UTC) placed on `day`; day None takes
    the trace's first day (as figure 6a does). Set-up time between cells draws no energy here.
    """
    keys = [k for k, _ in CELL_KEYS]
    order = cells.sort_values("window_start_wall_ns")[keys]
    m = order.merge(metrics, on=keys, how="left")
    if m["energy_j"].isna().any():
        raise InputError("metrics lack cells that cells.parquet lists; re-run compute_metrics")
    profile = JobProfile.back_to_back(m["window_s"].tolist(), m["energy_j"].tolist())
    if day is None:
        day = pd.Timestamp(int(intensity.start_ns[0]), unit="ns", tz="UTC").date()
    first_ns = int(cells["window_start_wall_ns"].min())
    time_of_day_ns = first_ns - int(pd.Timestamp(first_ns, unit="ns", tz="UTC").normalize().value)
    return timeshift(profile, intensity, day, day_start_ns(day) + time_of_day_ns, job="study",
                     pue=pue, fill=fill, max_fill_s=max_fill_s)  # fmt: skip

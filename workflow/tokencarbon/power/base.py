"""The record every power source returns, and how a list of them becomes a POWER table."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import pyarrow as pa

from tokencarbon.tables import POWER


@dataclass(frozen=True)
class PowerSample:
    """One reading of one device; NaN (-1 for throttle_reasons) where the source lacks a field."""

    t_wall_ns: int
    source: str
    modeled: bool
    device_index: int
    power_w: float
    power_avg_w: float = math.nan
    energy_counter_j: float = math.nan
    util_pct: float = math.nan
    mem_used_bytes: float = math.nan
    temperature_c: float = math.nan
    sm_clock_mhz: float = math.nan
    mem_clock_mhz: float = math.nan
    throttle_reasons: int = -1


def samples_table(samples: list[PowerSample], phase: str | list[str]) -> pa.Table:
    """The POWER table of these samples, every row tagged with `phase` ("idle" or "run"), or row i
    with phase[i] when a list of the samples' length is given. Raises ValueError for a list of
    another length."""
    phases = [phase] * len(samples) if isinstance(phase, str) else list(phase)
    if len(phases) != len(samples):
        raise ValueError(f"samples_table: {len(samples)} samples but {len(phases)} phases")
    rows = [dataclasses.asdict(s) | {"phase": p} for s, p in zip(samples, phases)]
    return pa.Table.from_pylist(rows, schema=POWER)

"""The record every power source returns, and how a list of them becomes a POWER table.

Importing this module costs no numpy, pandas or pyarrow (the sidecar process imports it at
start-up): samples_table, samples_frame and streamed_samples import what they need when called.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from tokencarbon.energy import DeviceSamples


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


# A sample as a plain row (the sidecar streams rows to its parent): PowerSample's fields in order.
FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(PowerSample))


def as_row(sample: PowerSample) -> list:
    """The sample's values in FIELDS order (JSON-able: floats may be NaN, which json writes and
    reads back as NaN)."""
    return [getattr(sample, name) for name in FIELDS]


def samples_table(samples: list[PowerSample], phase: str | list[str]) -> pa.Table:
    """The POWER table of these samples, every row tagged with `phase` ("idle" or "run"), or row i
    with phase[i] when a list of the samples' length is given. Raises ValueError for a list of
    another length."""
    import pyarrow as pa

    from tokencarbon.tables import POWER

    phases = [phase] * len(samples) if isinstance(phase, str) else list(phase)
    if len(phases) != len(samples):
        raise ValueError(f"samples_table: {len(samples)} samples but {len(phases)} phases")
    rows = [dataclasses.asdict(s) | {"phase": p} for s, p in zip(samples, phases)]
    return pa.Table.from_pylist(rows, schema=POWER)


def samples_frame(rows: list[list], phases: list[str]) -> pd.DataFrame:
    """POWER rows as a DataFrame with the POWER schema's columns (in its order) and numeric dtypes,
    strings as Python str, from rows in FIELDS order (as_row) and each row's phase: what
    tokencarbon.energy integrates, built without a Parquet round trip. Raises ValueError when the
    lengths differ."""
    import numpy as np
    import pandas as pd

    if len(rows) != len(phases):
        raise ValueError(f"samples_frame: {len(rows)} rows but {len(phases)} phases")
    columns = list(zip(*rows)) if rows else [()] * len(FIELDS)
    data = dict(zip(FIELDS, columns))
    frame = pd.DataFrame({
        "t_wall_ns": np.asarray(data["t_wall_ns"], dtype=np.int64),
        # Python strings (object dtype), not pandas' pyarrow-backed "str" that a Parquet read
        # gives: the same values, and tokencarbon.energy's device checks run ~40 % faster on them.
        "phase": pd.Series(phases, dtype=object),
        "source": pd.Series(data["source"], dtype=object),
        "modeled": np.asarray(data["modeled"], dtype=bool),
        "device_index": np.asarray(data["device_index"], dtype=np.int64),
        **{name: np.asarray(data[name], dtype=np.float64)
           for name in FIELDS if name not in ("t_wall_ns", "source", "modeled", "device_index",
                                              "throttle_reasons")},
        "throttle_reasons": np.asarray(data["throttle_reasons"], dtype=np.int64),
    })  # fmt: skip
    return frame


def streamed_samples(rows: list[list], where: str = "streamed power samples") -> DeviceSamples:
    """Rows in FIELDS order (as_row) of one device as tokencarbon.energy.DeviceSamples: what a
    Monitor integrates, built with numpy alone (no pandas: `tokencarbon measure` does not pay the
    ~0.4 s of loading it). Raises InputError naming `where` when the rows hold several devices."""
    import numpy as np

    from tokencarbon.energy import DeviceSamples
    from tokencarbon.errors import InputError

    if not rows:
        return DeviceSamples("", -1, np.empty(0, np.int64), np.empty(0), None, np.empty(0),
                             np.empty(0, bool))  # fmt: skip
    col = {name: i for i, name in enumerate(FIELDS)}
    present = sorted({(str(r[col["source"]]), int(r[col["device_index"]])) for r in rows})
    if len(present) > 1:
        raise InputError(f"{where} hold {len(present)} devices {present} (source, device_index); "
                         "energy is computed for one device")  # fmt: skip
    columns = list(zip(*rows))
    return DeviceSamples(
        source=present[0][0],
        device_index=present[0][1],
        t_wall_ns=np.asarray(columns[col["t_wall_ns"]], dtype=np.int64),
        power_w=np.asarray(columns[col["power_w"]], dtype=np.float64),
        power_avg_w=np.asarray(columns[col["power_avg_w"]], dtype=np.float64),
        energy_counter_j=np.asarray(columns[col["energy_counter_j"]], dtype=np.float64),
        modeled=np.asarray(columns[col["modeled"]], dtype=bool),
    )

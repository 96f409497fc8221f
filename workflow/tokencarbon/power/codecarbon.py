"""Import CodeCarbon's emissions.csv as a POWER table: each row is one tracked run's energy total.

CodeCarbon (github.com/mlco2/codecarbon) appends one row per tracked run: `timestamp` (the run's
end, ISO-8601, local time without a zone in the files seen), `duration` (s) and the energy of each
component in kWh (`cpu_energy`, `gpu_energy`, `ram_energy`, and their sum `energy_consumed`), with
the mean power of each (`cpu_power`, `gpu_power`, `ram_power`, W). It keeps no samples, so a row
becomes two samples, at the run's start and end, carrying a cumulative energy counter (the rows'
energies summed in time order) and the run's mean power as power_avg_w. A window inside a run gets
the run's mean power times its length (noted in PowerLog.notes): exact only for windows that are
whole runs. gpu_energy sums every GPU CodeCarbon saw (gpu_count); such a row is refused unless the
caller takes the sum as one device (all_gpus=True).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from tokencarbon.errors import ConfigError, InputError
from tokencarbon.power.csvfile import read_csv_lines
from tokencarbon.power.nvidia_smi import PowerLog
from tokencarbon.power.timestamps import parse_times
from tokencarbon.tables import POWER, check

J_PER_KWH = 3.6e6
COMPONENTS = {"gpu": "gpu_energy", "cpu": "cpu_energy", "ram": "ram_energy",
              "total": "energy_consumed"}  # fmt: skip


def import_codecarbon(
    path: str | Path,
    tz: str | None = None,
    *,
    component: str = "gpu",
    run_id: str | None = None,
    all_gpus: bool = False,
) -> PowerLog:
    """Read a CodeCarbon emissions.csv: the energy of one component over each run, as POWER samples.

    tz: the zone of its zone-less timestamps. component: "gpu" (default), "cpu", "ram" or "total".
    run_id: keep only that run's rows. Raises InputError naming the file, row and column (missing
    columns, runs overlapping in time, a multi-GPU gpu_energy without all_gpus); ConfigError for
    an unknown component.
    """
    path = Path(path)
    if component not in COMPONENTS:
        raise ConfigError(f"component={component!r}: one of {sorted(COMPONENTS)}")
    lines = read_csv_lines(path, "a CodeCarbon emissions.csv")
    raw = lines.rows  # text, indexed by the file's line numbers
    column = COMPONENTS[component]
    missing = [c for c in ("timestamp", "duration", column) if c not in raw.columns]
    if missing:
        raise InputError(
            f"{path}: CodeCarbon emissions.csv needs columns {missing}; found {list(raw.columns)}"
        )
    if run_id is not None:
        if "run_id" not in raw.columns or not (raw["run_id"] == run_id).any():
            raise InputError(f"{path}: no row with run_id {run_id!r}")
        raw = raw[raw["run_id"] == run_id]
    if raw.empty:
        raise InputError(f"{path}: no rows" + "".join(f"; {n}" for n in lines.notes))
    if component == "gpu" and "gpu_count" in raw.columns and not all_gpus:
        counts = pd.to_numeric(raw["gpu_count"], errors="coerce")
        if (counts > 1).any():
            i = int(np.flatnonzero((counts > 1).to_numpy())[0])
            model = raw["gpu_model"].iloc[i] if "gpu_model" in raw.columns else "?"
            raise InputError(
                f"{path}, line {raw.index[i]}: gpu_energy is the sum over {int(counts.iloc[i])} GPUs "
                f"({model}); CodeCarbon keeps no per-GPU energy. Import it only if the measured "
                "work used all of them (all_gpus=True, --all-gpus), else log one GPU with "
                "nvidia-smi or NVML"
            )
    if component == "gpu" and "gpu_model" in raw.columns:
        models = raw["gpu_model"][raw["gpu_model"] != ""].drop_duplicates()
        if len(models) > 1:
            listing = "; ".join(f"{m!r} (line {line})" for line, m in models.items())
            raise InputError(
                f"{path}: rows name different GPUs in gpu_model: {listing}; a cell measures one "
                "device: keep one machine's runs (run_id, --run-id), or split the file"
            )
    end_ns = parse_times(raw["timestamp"], tz, f"{path}, column 'timestamp'", lines=raw.index)

    def numbers(name: str) -> np.ndarray:
        values = pd.to_numeric(raw[name], errors="coerce").to_numpy(dtype=float)
        bad = ~np.isfinite(values) | (values < 0)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise InputError(
                f"{path}, line {raw.index[i]}, column {name!r}: {raw[name].iloc[i]!r} is not a finite "
                "number >= 0"
            )
        return values

    duration_s = numbers("duration")
    energy_j = numbers(column) * J_PER_KWH
    start_ns = end_ns - np.round(duration_s * 1e9).astype(np.int64)
    order = np.argsort(start_ns, kind="stable")
    start_ns, end_ns, energy_j, duration_s = (
        start_ns[order],
        end_ns[order],
        energy_j[order],
        duration_s[order],
    )
    overlap = np.flatnonzero(start_ns[1:] < end_ns[:-1])
    if len(overlap):
        raise InputError(
            f"{path}: runs overlap in time (lines {raw.index[int(order[overlap[0]])]} and "
            f"{raw.index[int(order[overlap[0] + 1])]}); their energies cannot share one counter: choose "
            "one run with run_id (--run-id)"
        )
    if (duration_s <= 0).any():
        raise InputError(f"{path}: a row has duration 0; a run needs a positive duration")
    before = np.concatenate([[0.0], np.cumsum(energy_j)[:-1]])
    mean_w = energy_j / duration_s
    # Two samples per run; where one run ends exactly as the next starts, keep the later sample
    # of the two a nanosecond later so that times stay strictly increasing.
    t = np.ravel(np.column_stack([start_ns, end_ns]))
    t[1:] = np.maximum(t[1:], np.maximum.accumulate(t)[:-1] + 1)
    df = pd.DataFrame(
        {
            "t_wall_ns": t,
            "phase": "run",
            "source": "codecarbon",
            "modeled": False,
            "device_index": -1,
            "power_w": np.nan,
            "power_avg_w": np.repeat(mean_w, 2),
            "energy_counter_j": np.ravel(np.column_stack([before, before + energy_j])),
            "throttle_reasons": -1,
        }
    )
    for c in POWER.names:
        if c not in df:
            df[c] = np.nan
    return PowerLog(
        samples=check(df, POWER, path), path=str(path), source="codecarbon",
        power_field=f"{column} / duration", power_kind="average",
        device={"component": component}
        | ({"gpu_model": str(raw["gpu_model"].iloc[0])}
           if component == "gpu" and "gpu_model" in raw.columns and raw["gpu_model"].iloc[0]
           else {}),
        devices=({"component": component},),
        notes=(
            f"CodeCarbon keeps one {column} total per run: a window inside a run gets the run's "
            "mean power",
            *lines.notes,
        ),
    )  # fmt: skip

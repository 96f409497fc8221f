"""An idle window shared by the cells of one run on one device (config `power.idle_share_s`).

By default every cell samples its own idle window (`power.idle_s`) after its warm-up. On a GPU that
is 5 s of a cell job that measures no work: a study of ~100 cells spends over 8 minutes of device
time on idle windows of one card whose idle power does not change between them. With
`power.idle_share_s: S > 0`, a cell whose device had an idle window sampled less than S seconds
before reuses that window's samples instead of sampling its own: they are written into its
power.parquet as its phase "idle" rows with their own timestamps, and its meta.json says so
("idle_window": {"shared": true, "from_cell", "age_s", ...}), which metrics turns into the QA
flag `idle_shared`. The window is kept per device (GPU UUID, or the pinned CPU set) under the
study's results/.cache/idle/.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import pandas as pd

from tokencarbon import tables
from tokencarbon.errors import InputError
from tokencarbon.files import write_json
from tokencarbon.units import NS_PER_S


def device_key(platform: str, lease: dict[str, Any]) -> str:
    """Which device an idle window belongs to: '<platform>_gpu-<uuid>' for a GPU lease
    ({"gpu_index", "gpu_uuid"}), '<platform>_cpus-<i>-<j>...' for a CPU lease ({"cpus"}).
    Raises ValueError for a lease holding neither."""
    if lease.get("gpu_uuid"):
        return f"{platform}_gpu-{lease['gpu_uuid']}"
    if lease.get("cpus"):
        return f"{platform}_cpus-" + "-".join(str(c) for c in sorted(lease["cpus"]))
    raise ValueError(f"idle window: lease {lease!r} names no GPU UUID and no CPUs")


def _paths(root: str | Path, key: str) -> tuple[Path, Path]:
    folder = Path(root) / "idle"
    return folder / f"{key}.parquet", folder / f"{key}.json"


def lookup(
    root: str | Path, key: str, max_age_s: float, now_wall_ns: int | None = None
) -> tuple[pd.DataFrame, dict[str, Any]] | None:
    """The idle samples (POWER rows, phase "idle") and their record of the device `key`, if an
    idle window ended less than max_age_s seconds before now_wall_ns (default: now); else None.
    A record whose samples are missing or unreadable counts as absent (the cell then samples its
    own window and replaces it)."""
    samples_path, record_path = _paths(root, key)
    if max_age_s <= 0 or not record_path.exists():
        return None
    now = time.time_ns() if now_wall_ns is None else now_wall_ns
    try:
        record = json.loads(record_path.read_text())
        age_s = (now - int(record["end_wall_ns"])) / NS_PER_S
        if not 0 <= age_s < max_age_s:
            return None
        samples = tables.read(samples_path, tables.POWER)
    except (OSError, ValueError, KeyError, TypeError, InputError):
        return None
    if len(samples) < 2 or not (samples["phase"] == "idle").all():
        return None
    return samples, record | {"age_s": age_s}


def store(root: str | Path, key: str, samples: pd.DataFrame, cell: str) -> dict[str, Any]:
    """Keep a cell's own idle samples (phase "idle", >= 2) as device `key`'s shared window;
    returns the record written. The samples are written first and the record last, each whole or
    absent, so a reader never pairs a record with another window's samples. Raises ValueError for
    fewer than 2 idle samples."""
    idle = samples[samples["phase"] == "idle"]
    if len(idle) < 2:
        raise ValueError(f"idle window of {cell}: {len(idle)} idle sample(s); at least 2 needed")
    samples_path, record_path = _paths(root, key)
    samples_path.parent.mkdir(parents=True, exist_ok=True)
    tables.write(idle.reset_index(drop=True), samples_path, tables.POWER)
    record = {
        "device": key,
        "from_cell": cell,
        "start_wall_ns": int(idle["t_wall_ns"].iloc[0]),
        "end_wall_ns": int(idle["t_wall_ns"].iloc[-1]),
        "n_samples": len(idle),
    }
    write_json(record_path, record)
    return record


def describe(shared: dict[str, Any] | None, idle_s: float, max_age_s: float) -> dict[str, Any]:
    """meta.json's "idle_window": {"shared", "idle_s" (configured), "share_max_age_s", and for a
    shared window "from_cell", "age_s", "start_wall_ns", "end_wall_ns"}."""
    out: dict[str, Any] = {"shared": shared is not None, "idle_s": float(idle_s),
                           "share_max_age_s": float(max_age_s)}  # fmt: skip
    if shared is not None:
        out |= {k: shared[k] for k in ("from_cell", "start_wall_ns", "end_wall_ns")}
        out["age_s"] = float(shared["age_s"]) if math.isfinite(shared["age_s"]) else None
    return out

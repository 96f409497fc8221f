"""Merge every cell's files into one table per kind: batches, power samples, cells, and the
requests and engine steps of continuous-batching cells.

A cell is self-describing through its meta.json, so cells measured on several machines merge by
copying their results/cells/<platform>/ trees side by side. Cells measured before a column existed
(the committed GPU study, other machines' older trees) are read with the value docs/data.md states.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from tokencarbon import tables
from tokencarbon.errors import InputError

# Cell columns added after the first cells were measured, and what an older meta.json means by
# their absence: static batches, all there at the start, run once, no watch for other processes.
_ADDED_LATER = {
    "mode": "static",
    "arrival": "offline",
    "request_rate_per_s": math.nan,
    "repeats": 1,
    "foreign_cpu_share": math.nan,
    "cpu_steal_share": math.nan,
    "foreign_gpu_processes": -1,
    # weight-only quantization (issue 16): cells before it ran unquantized weights
    "quantization": "none",
    "quant_group_size": None,
    "quant_library": "",
    # shared idle windows (issue 19): every earlier cell sampled its own
    "idle_shared": False,
}
# ... and one read from the cell's own batches.parquet: its largest batch.
_FROM_BATCHES = "max_batch_requests"


@dataclass(frozen=True)
class CellTables:
    """The aggregated tables, each checked against its schema (tables.with_cell_keys)."""

    batches: pd.DataFrame
    power: pd.DataFrame
    cells: pd.DataFrame
    requests: pd.DataFrame  # continuous cells only; empty without them
    steps: pd.DataFrame


def read_meta(path: str | Path) -> dict:
    """A cell's meta.json with every CELLS key (older cells completed as _ADDED_LATER says;
    max_batch_requests may be None, to be read from its batches). Raises InputError naming the
    file for an unreadable file or a missing key."""
    path = Path(path)
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not a readable cell meta.json ({exc})") from exc
    if not isinstance(meta, dict):
        raise InputError(f"{path}: a cell meta.json holds one JSON object, not {type(meta).__name__}")
    for key, value in _ADDED_LATER.items():
        meta.setdefault(key, value)
    meta.setdefault(_FROM_BATCHES, None)
    missing = [k for k in tables.CELLS.names if k not in meta]
    if missing:
        raise InputError(f"{path}: cell meta.json lacks keys {missing}; rerun the cell")
    for key in ("request_rate_per_s", "foreign_cpu_share", "cpu_steal_share"):  # null: not applicable
        if meta[key] is None:
            meta[key] = math.nan
    return meta


def _read_batches(path: Path) -> pd.DataFrame:
    """A cell's batches; cells measured before repeats existed ran their batches once (repeat 0)."""
    if "repeat" not in pq.read_schema(path).names:
        df = pq.read_table(path).to_pandas()
        df.insert(0, "repeat", 0)
        return tables.check(df, tables.BATCHES, path)
    return tables.read(path, tables.BATCHES)


def _keyed(df: pd.DataFrame, meta: dict) -> pd.DataFrame:
    df = df.copy()
    for i, (name, _) in enumerate(tables.CELL_KEYS):
        df.insert(i, name, meta[name])
    return df


def _concat(frames: list[pd.DataFrame], schema, where: str) -> pd.DataFrame:
    keyed_schema = tables.with_cell_keys(schema)
    if not frames:
        return tables.check(pd.DataFrame(columns=keyed_schema.names), keyed_schema, where)
    return tables.check(pd.concat(frames, ignore_index=True), keyed_schema, where)


def aggregate(cell_dirs: Sequence[str | Path]) -> CellTables:
    """The tables over the given cell folders (each with meta.json, batches.parquet,
    power.parquet; continuous cells also requests.parquet and steps.parquet).

    Raises InputError when there is no cell, a continuous cell lacks its request or step file,
    or a file is unreadable; SchemaError (an InputError) for a table that breaks its schema.
    """
    batches, power, cells, requests, steps = [], [], [], [], []
    for d in map(Path, cell_dirs):
        meta = read_meta(d / "meta.json")
        cell_batches = _read_batches(d / "batches.parquet")
        if meta[_FROM_BATCHES] is None:
            meta[_FROM_BATCHES] = int(cell_batches["n_requests"].max())
        cells.append({k: meta[k] for k in tables.CELLS.names})
        batches.append(_keyed(cell_batches, meta))
        power.append(_keyed(tables.read(d / "power.parquet", tables.POWER), meta))
        if meta["mode"] == "continuous":
            for name, schema, out in [
                ("requests", tables.REQUESTS, requests),
                ("steps", tables.STEPS, steps),
            ]:
                path = d / f"{name}.parquet"
                if not path.exists():
                    raise InputError(
                        f"{path}: missing; a continuous cell ({d / 'meta.json'} says mode "
                        f"'continuous') writes {name}.parquet beside meta.json; rerun the cell"
                    )
                out.append(_keyed(tables.read(path, schema), meta))
    if not cells:
        raise InputError("no cells to aggregate: the sweep selected no (platform, model, batch)")
    return CellTables(
        batches=_concat(batches, tables.BATCHES, "batches"),
        power=_concat(power, tables.POWER, "power"),
        cells=tables.check(pd.DataFrame(cells), tables.CELLS, "cells"),
        requests=_concat(requests, tables.REQUESTS, "requests"),
        steps=_concat(steps, tables.STEPS, "steps"),
    )

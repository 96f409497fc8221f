"""Merge every cell's files into one table per kind: batches, power samples and cells.

A cell is self-describing through its meta.json, so cells measured on several machines merge by
copying their results/cells/<platform>/ trees side by side.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from tokencarbon import tables
from tokencarbon.errors import InputError


def read_meta(path: str | Path) -> dict:
    path = Path(path)
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not a readable cell meta.json ({exc})") from exc
    # Cells measured before continuous batching existed are static batches.
    meta.setdefault("mode", "static")
    missing = [k for k in tables.CELLS.names if k not in meta]
    if missing:
        raise InputError(f"{path}: cell meta.json lacks keys {missing}; rerun the cell")
    return meta


def _read_batches(path: Path) -> pd.DataFrame:
    """A cell's batches; cells measured before repeats existed ran their batches once (repeat 0)."""
    import pyarrow.parquet as pq

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


def aggregate(cell_dirs: Sequence[str | Path]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(batches, power, cells) tables over the given cell folders, checked against their schemas."""
    batches, power, cells = [], [], []
    for d in map(Path, cell_dirs):
        meta = read_meta(d / "meta.json")
        cells.append({k: meta[k] for k in tables.CELLS.names})
        batches.append(_keyed(_read_batches(d / "batches.parquet"), meta))
        power.append(_keyed(tables.read(d / "power.parquet", tables.POWER), meta))
    if not cells:
        raise InputError("no cells to aggregate: the sweep selected no (platform, model, batch)")
    return (
        tables.check(pd.concat(batches, ignore_index=True), tables.with_cell_keys(tables.BATCHES), "batches"),
        tables.check(pd.concat(power, ignore_index=True), tables.with_cell_keys(tables.POWER), "power"),
        tables.check(pd.DataFrame(cells), tables.CELLS, "cells"),
    )

"""Merge every cell's files into one table per kind: batches, power samples, cells, and the
requests and engine steps of continuous-batching cells.

A cell is self-describing through its meta.json, so cells measured on several machines merge by
copying their results/cells/<platform>/ trees side by side. Cells measured before a key or column
existed (the committed GPU study, other machines' older trees) are read with the value docs/data.md
states: records.upgrade_meta for meta.json, tables.ADDED_COLUMNS for the tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from tokencarbon import tables
from tokencarbon.errors import InputError
from tokencarbon.layout import CONTINUOUS
from tokencarbon.records import CellMeta


@dataclass(frozen=True)
class CellTables:
    """The aggregated tables, each checked against its schema (tables.with_cell_keys)."""

    batches: pd.DataFrame
    power: pd.DataFrame
    cells: pd.DataFrame
    requests: pd.DataFrame  # continuous cells only; empty without them
    steps: pd.DataFrame


def _keyed(df: pd.DataFrame, meta: CellMeta) -> pd.DataFrame:
    df = df.copy()
    for i, (name, _) in enumerate(tables.CELL_KEYS):
        df.insert(i, name, getattr(meta, name))
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
        meta = CellMeta.read(d / "meta.json")  # older cells upgraded (records.upgrade_meta)
        cells.append(meta.cells_row())
        batches.append(_keyed(tables.read(d / "batches.parquet", tables.BATCHES), meta))
        power.append(_keyed(tables.read(d / "power.parquet", tables.POWER), meta))
        if meta.mode == CONTINUOUS:
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

"""Reading what the figures draw: aggregated tables written by this or by an older tokencarbon.

A metrics or power table written before a column existed (the committed GPU studies predate `mode`,
repeats, intervals and continuous cells) is read as it is: every column present is checked against
its schema, and absent optional columns stay absent, so a figure draws what the table holds and
never invents a number. The one column filled in is `mode`, and only as "static": tables without
it come from the versions that ran static batches only (cell folders bs{n}).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tokencarbon import tables
from tokencarbon.errors import SchemaError

# Columns of the metrics table that per-cell intervals and repeats add (tokencarbon.metrics);
# each value column X has X_ci_low and X_ci_high (bootstrap 95 % interval over repeats).
CI_VALUES = ("j_per_token", "g_per_token", "tokens_per_s", "s_per_token_user", "e2e_s_per_token")
STATIC = "static"
CONTINUOUS = "continuous"
MODES = (STATIC, CONTINUOUS)

# Columns figures may use beyond tables.METRICS as committed on 2026-11-30, with their types: a
# table carries them once tokencarbon.metrics writes them; read, they are checked like the rest.
OPTIONAL_METRICS = pa.schema(
    [(f"{v}_ci_{side}", pa.float64()) for v in CI_VALUES for side in ("low", "high")]
    + [
        ("n_repeats", pa.int64()),
        ("j_per_token_cv", pa.float64()),
        ("filled_share", pa.float64()),
        ("embodied_g_per_token_low", pa.float64()),
        ("embodied_g_per_token_high", pa.float64()),
        ("j_per_token_steady", pa.float64()),
        ("tokens_per_s_steady", pa.float64()),
        ("j_per_request", pa.float64()),
        ("e2e_s_per_token", pa.float64()),
    ]
    + [
        (f"{what}_{q}_s", pa.float64())
        for what in ("ttft", "tpot", "e2e")
        for q in ("p50", "p90", "p99")
    ]
)


def _known_fields(schemas: Iterable[pa.Schema]) -> dict[str, pa.DataType]:
    fields: dict[str, pa.DataType] = {}
    for schema in schemas:
        for field in schema:
            fields.setdefault(field.name, field.type)
    return fields


def read_table(
    path: str | Path, schema: pa.Schema, optional: pa.Schema | None = None
) -> pd.DataFrame:
    """A Parquet table with every column it holds that `schema` or `optional` names checked for
    type, other columns kept as they are; `mode` = "static" added where the file predates it.

    Columns that `schema` names but the file lacks are NOT an error here: each figure names the
    columns it needs (common.require_columns), so an old table serves every figure it can.
    Raises SchemaError for an unreadable file or a column of the wrong type.
    """
    path = Path(path)
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise SchemaError(f"{path}: not a readable Parquet file ({exc})") from exc
    known = _known_fields([schema] + ([optional] if optional is not None else []))
    present = pa.schema([(n, known[n]) for n in table.column_names if n in known])
    df = tables.check(table.to_pandas(), present, path)
    extra = [n for n in table.column_names if n not in known]
    if extra:
        df = pd.concat([df, table.select(extra).to_pandas()], axis=1)
    if "mode" in schema.names and "mode" not in df.columns:
        df.insert(min(2, len(df.columns)), "mode", STATIC)
    bad = set(df.get("mode", pd.Series([], dtype=str)).unique()) - set(MODES)
    if bad:
        raise SchemaError(f"{path}: column 'mode' holds {sorted(bad)}; valid: {list(MODES)}")
    return df


def read_metrics(path: str | Path) -> pd.DataFrame:
    """results/tables/metrics.parquet of any tokencarbon version (see the module docstring)."""
    return read_table(path, tables.METRICS, OPTIONAL_METRICS)


def read_power(path: str | Path) -> pd.DataFrame:
    """results/tables/power.parquet (cell keys + tables.POWER) of any tokencarbon version."""
    return read_table(path, tables.with_cell_keys(tables.POWER))


def read_batches(path: str | Path) -> pd.DataFrame:
    """results/tables/batches.parquet (cell keys + tables.BATCHES) of any tokencarbon version."""
    return read_table(path, tables.with_cell_keys(tables.BATCHES))


def read_timeshift(path: str | Path) -> pd.DataFrame:
    """results/tables/timeshift.parquet (tables.TIMESHIFT, tokencarbon.timeshift)."""
    return tables.read(path, tables.TIMESHIFT)


def read_cells(path: str | Path) -> pd.DataFrame:
    return read_table(path, tables.CELLS)


def read_probes(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    """The OOM probes' JSON results (results/cells/{platform}/{model}/probe.json; records.read_probe)."""
    from tokencarbon.records import read_probe

    return [read_probe(p) for p in paths]


# ------------------------------------------------------------------ the one latency axis

# What every latency axis, caption and SLO compares across modes (tokencarbon.metrics;
# docs/metrics.md, "One latency axis"): per request, E2E latency over its output tokens, every
# request of a repeat arriving when the repeat starts, averaged over requests.
LATENCY = "e2e_s_per_token"
LATENCY_LABEL = "E2E latency per output token (ms/token)"
LATENCY_NOTE = "per request (finish - arrival) / output tokens, all arriving as the repeat starts"
# The study's (Lim et al. 2024) batch latency per token: static cells' batch time over the tokens
# of each request, no queueing. Only figures and ratios of static cells against the study's own
# numbers use it (figure 7, the summary's headline ratios), and a table that predates LATENCY.
STUDY_LATENCY = "s_per_token_user"
STUDY_LATENCY_LABEL = "the study's batch latency per token (ms/token)"
STUDY_LATENCY_NOTE = "the study's batch time / tokens, no queueing (a table older than E2E per token)"


def latency_axis(df: pd.DataFrame, figure: str) -> tuple[str, str, str]:
    """(column, axis label, note for a title or caption) of the latency a figure draws from a
    METRICS table: LATENCY where the table holds it (a finite value in its column). A table
    written before LATENCY existed is drawn on STUDY_LATENCY, labelled as such, only while it
    holds static cells alone (that column means something else for continuous cells, so the two
    would share an axis without sharing a definition). Raises SchemaError for a table with
    continuous cells and no LATENCY, or with neither column."""
    if LATENCY in df.columns and df[LATENCY].notna().any():
        return LATENCY, LATENCY_LABEL, LATENCY_NOTE
    modes = set(df["mode"]) if "mode" in df.columns else {STATIC}
    if STUDY_LATENCY in df.columns and modes <= {STATIC}:
        return STUDY_LATENCY, STUDY_LATENCY_LABEL, STUDY_LATENCY_NOTE
    raise SchemaError(
        f"{figure}: the metrics table lacks column {LATENCY!r} (E2E latency per output token, "
        "tokencarbon.metrics); static and continuous cells share no other latency: recompute "
        "the metrics (rule compute_metrics) with this tokencarbon"
    )


def has_columns(df: pd.DataFrame, columns: Iterable[str]) -> bool:
    return all(c in df.columns for c in columns)


def interval_columns(value: str) -> tuple[str, str]:
    return f"{value}_ci_low", f"{value}_ci_high"


def has_intervals(df: pd.DataFrame, value: str) -> bool:
    """True where the table carries a bootstrap interval for `value` that means something: the
    interval columns exist, n_repeats exists and some cell was repeated (> 1), and the bounds are
    not all NaN. Old tables and single-run studies draw no error bars."""
    low, high = interval_columns(value)
    if not has_columns(df, [low, high, "n_repeats"]):
        return False
    repeated = df["n_repeats"] > 1
    return bool(repeated.any() and df.loc[repeated, [low, high]].notna().all(axis=1).any())


def interval_errors(df: pd.DataFrame, value: str, scale: float = 1.0) -> Any:
    """Asymmetric error-bar lengths [below, above] for matplotlib's errorbar (shape (2, n)), zero
    for cells run once or without bounds; None where the table has no intervals for `value`."""
    if not has_intervals(df, value):
        return None
    low, high = interval_columns(value)
    ok = (df["n_repeats"] > 1) & df[low].notna() & df[high].notna()
    below = ((df[value] - df[low]) * scale).where(ok, 0.0).clip(lower=0.0)
    above = ((df[high] - df[value]) * scale).where(ok, 0.0).clip(lower=0.0)
    return [below.to_numpy(), above.to_numpy()]


def energy_is_modeled(df: pd.DataFrame) -> bool:
    """Whether any row's energy is modeled (energy_method "modeled"), not read from a sensor."""
    return "energy_method" in df.columns and bool((df["energy_method"] == "modeled").any())


def one_value(df: pd.DataFrame, column: str) -> Any:
    """The single value of `column` over df, or None where it varies or the column is absent."""
    if column not in df.columns:
        return None
    values = df[column].dropna().unique()
    return values[0] if len(values) == 1 else None


def mapping_paths(inputs: Mapping[str, Any], key: str) -> list[str]:
    value = inputs.get(key, [])
    return [value] if isinstance(value, str | Path) else list(value)

"""The study's tables 3 and 4 (largest batch before OOM per model and platform), the metrics table
for the report, and the results summary: our ratios smallest -> largest batch next to the study's,
the carbon-optimal operating point under each latency SLO, notes on filled intensities, embodied
carbon and flagged cells. Each is written as Markdown (or CSV) and as HTML for the report."""

from __future__ import annotations

import html
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from tokencarbon.errors import InputError
from tokencarbon.figures.carbon_analysis import carbon_optimal_points
from tokencarbon.figures.common import (
    MG_PER_G,
    MS_PER_S,
    PCT_PER_FRACTION,
    energy_text,
    require_columns,
)
from tokencarbon import qa
from tokencarbon.figures.inputs import STATIC, has_columns, latency_axis
from tokencarbon.figures.measured import batch1_vs_max, ratio_interval
from tokencarbon.figures.quantized import (
    NONE,
    QUANT_COLUMNS,
    SCHEME_ORDER,
    WEIGHTS_NOTE,
    is_quantized,
    is_quantized_scheme,
    natural_key,
    quantized_comparison,
    unpaired_quantized,
    weights_label,
)
from tokencarbon.files import write_text

PROBE_KEYS = ("platform", "model", "max_ok", "min_failed", "memory_limit_gb")
# model -> what the config says of it (registry.Study.model_info): architecture (name), dtype,
# quantization (scheme, "none" for unquantized) and quant_group_size (None: not given).
ModelInfo = Mapping[str, Mapping[str, object]]
# The study's cards whose memory a cap emulates (Lim, Pan, Zhou 2024, Table 3: V100 32GB and
# A100 40GB), keyed by the cap in GB (platforms.<name>.memory_limit_gb).
STUDY_CAP_CARDS = {32.0: "V100 32GB", 40.0: "A100 40GB"}
# The study's Table 3 (TensorRT-LLM, 1000 input / 1000 output tokens), as issue 16 and
# benchmarks/oom_table.py quote it: largest batch before out-of-memory.
STUDY_TABLE3 = (
    "Study (Lim, Pan, Zhou 2024, Table 3, TensorRT-LLM, 1000 input / 1000 output tokens): on the "
    "V100 32GB Llama-2-7B 14 and Llama-2-13B 4, with 4-bit weight-only quantization (WQ4bit) 22 "
    "and 12; on the A100 40GB Llama-2-7B 22 and Llama-2-13B 8."
)
STUDY_TABLE3_ARCHITECTURES = frozenset({"llama-2-7b", "llama-2-13b"})
# Lim, Pan, Zhou 2024 (TensorRT-LLM on V100/A100): batch 1 -> largest batch cuts carbon per token
# about 11x for about 2x the latency per token; batch 1 reaches about 2 % MFU.
STUDY = {"carbon_ratio": "~11x", "latency_ratio": "~2x", "mfu_batch1": "~2 %"}


# ------------------------------------------------------------------ documents: Markdown and HTML


@dataclass(frozen=True)
class Table:
    header: Sequence[str]
    rows: Sequence[Sequence[str]]


Block = tuple[str, object]  # ("h1" | "h3" | "p", text) or ("table", Table)


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = [header, ["---"] * len(header), *rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines) + "\n"


def to_markdown(blocks: Sequence[Block]) -> str:
    parts = []
    for kind, content in blocks:
        if kind == "table":
            parts.append(_markdown_table(content.header, content.rows))
        else:
            prefix = {"h1": "# ", "h3": "### ", "p": ""}[kind]
            parts.append(f"{prefix}{content}\n")
    return "\n".join(parts)


def _html_table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in table.rows
    )
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>{body}</tbody>\n</table>"


STYLE = (
    "body{font-family:sans-serif;margin:1.5em;max-width:80em}"
    "table{border-collapse:collapse;margin:0.5em 0 1.5em}"
    "th,td{border:1px solid #bbb;padding:0.25em 0.6em;text-align:left}"
    "th{background:#eee}td{font-variant-numeric:tabular-nums}"
)


def to_html(blocks: Sequence[Block], title: str) -> str:
    """A self-contained HTML page of the blocks (what snakemake --report shows in a frame)."""
    parts = []
    for kind, content in blocks:
        if kind == "table":
            parts.append(_html_table(content))
        else:
            tag = {"h1": "h1", "h3": "h3", "p": "p"}[kind]
            parts.append(f"<{tag}>{html.escape(str(content))}</{tag}>")
    return (
        f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head>\n<body>\n" + "\n".join(parts) + "\n</body></html>\n"
    )


# ------------------------------------------------------------------ tables 3 and 4


def _probe_frame(
    probe_rows: Sequence[Mapping], models: Sequence[str] | None, what: str
) -> pd.DataFrame:
    """The probe results as rows of PROBE_KEYS and QUANT_COLUMNS (NA in results written before
    quantization existed)."""
    for i, row in enumerate(probe_rows):
        missing = [k for k in PROBE_KEYS if k not in row]
        if missing:
            raise InputError(
                f"{what}: probe result {i} ({row.get('platform')}/{row.get('model')}) lacks "
                f"key(s) {missing}; each needs {list(PROBE_KEYS)}"
            )
        if not (isinstance(row["max_ok"], numbers.Integral) and row["max_ok"] >= 1):
            raise InputError(
                f"{what}: probe result {i} ({row['platform']}/{row['model']}): max_ok="
                f"{row['max_ok']!r}; must be an integer >= 1"
            )
    keys = list(PROBE_KEYS) + list(QUANT_COLUMNS)
    # NA where a result predates quantization: what ran is then the config's (model_info)
    df = pd.DataFrame([{k: r.get(k) for k in keys} for r in probe_rows], columns=keys)
    df["quant_group_size"] = df["quant_group_size"].astype("Int64")
    if models is not None:
        df = df[df["model"].isin(list(models))]
    if df.empty:
        subset = "" if models is None else f" for models {list(models)}"
        raise InputError(f"{what}: no probe results{subset}; nothing to tabulate")
    dup = df[df.duplicated(["platform", "model"])]
    if not dup.empty:
        raise InputError(
            f"{what}: {dup.iloc[0]['model']} on {dup.iloc[0]['platform']} has more than one "
            "probe result; give one per (platform, model)"
        )
    return df


def _ran_with(row, given: Mapping[str, object]) -> tuple:
    """(scheme, group size, library) of one probe result: as it recorded them, or where it
    predates them (NA) the config's (model_info: scheme and group size; library unknown)."""
    if isinstance(row["quantization"], str):
        return row["quantization"], row["quant_group_size"], row["quant_library"] or ""
    return given.get("quantization", NONE), given.get("quant_group_size"), ""


def _scheme(df: pd.DataFrame, model: str, info: ModelInfo | None) -> str:
    """The model's quantization scheme over its probe results ("none" unless one is quantized)."""
    given = (info or {}).get(model, {})
    schemes = [_ran_with(r, given)[0] for _, r in df[df["model"] == model].iterrows()]
    return next((s for s in schemes if is_quantized_scheme(s)), NONE)


def model_weights(df: pd.DataFrame, info: ModelInfo | None = None) -> dict[str, str]:
    """model -> quantized.weights_label of each model in a probe frame (_probe_frame): the
    quantization that ran (scheme, group size, library; the config's where a result predates
    those keys), else the config's dtype ("unquantized" where unknown). Platforms that recorded
    different libraries are all named, " / "-joined."""
    out = {}
    for model, rows in df.groupby("model", sort=False):
        given = (info or {}).get(model, {})
        labels: list[str] = []
        for _, r in rows.iterrows():
            label = weights_label(*_ran_with(r, given), dtype=given.get("dtype"))
            if label not in labels:
                labels.append(label)
        out[model] = " / ".join(labels)
    return out


def _quantized_models(df: pd.DataFrame, info: ModelInfo | None) -> set[str]:
    return {m for m in df["model"].unique() if is_quantized_scheme(_scheme(df, m, info))}


def model_order(df: pd.DataFrame, info: ModelInfo | None) -> list[str]:
    """The table's rows in the study's order: without model_info sorted by name (as before
    quantization); with it, by architecture (digits by value: llama-2-7b before llama-2-13b),
    each unquantized model first, then its quantized siblings (int8, then int4)."""
    models = sorted(df["model"].unique())
    if info is None:
        return models

    def key(model):
        given = info.get(model, {})
        scheme = _scheme(df, model, info)
        return (
            natural_key(given.get("architecture", model)),
            SCHEME_ORDER.get(scheme, len(SCHEME_ORDER)),
            natural_key(model),
        )

    return sorted(models, key=key)


def max_batch_table(
    probe_rows: Sequence[Mapping],
    models: Sequence[str] | None = None,
    model_info: ModelInfo | None = None,
) -> pd.DataFrame:
    """Largest batch that ran (max_ok): rows model, columns platform; <NA> where not probed.
    models picks the table's rows (the study's table 3: Llama-2, table 4: GPT-2). With
    model_info (registry.Study.model_info) the rows follow the study's order (model_order); where
    any model is quantized, a first column `weights` names each model's weights (model_weights:
    "int4 g128, torchao 0.18.0", "bfloat16")."""
    df = _probe_frame(probe_rows, models, "max_batch_table")
    table = df.pivot(index="model", columns="platform", values="max_ok").astype("Int64")
    table.columns.name = None
    table = table.loc[model_order(df, model_info), sorted(table.columns, key=natural_key)]
    if _quantized_models(df, model_info):
        weights = model_weights(df, model_info)
        table.insert(0, "weights", [weights[m] for m in table.index])
    return table


def write_max_batch_csv(
    probe_rows: Sequence[Mapping],
    path: str | Path,
    models: Sequence[str] | None = None,
    model_info: ModelInfo | None = None,
) -> None:
    write_text(path, max_batch_table(probe_rows, models, model_info).to_csv())


N_PLUS_NOTE = "N+: batch N ran and no larger batch was tried (the sweep's limit), so no OOM was seen."


def _cap_note(df: pd.DataFrame) -> str | None:
    """Which of the study's cards the table's caps emulate (STUDY_CAP_CARDS), or None."""
    caps = sorted({float(c) for c in df["memory_limit_gb"] if pd.notna(c)} & set(STUDY_CAP_CARDS))
    if not caps:
        return None
    named = "; ".join(f"{c:g} GB stands for the study's {STUDY_CAP_CARDS[c]}" for c in caps)
    return (
        "A memory cap (platforms.<name>.memory_limit_gb) emulates a smaller card on a larger "
        f"one: {named}."
    )


def max_batch_blocks(
    probe_rows: Sequence[Mapping],
    models: Sequence[str] | None = None,
    title: str = "Largest batch before out-of-memory",
    model_info: ModelInfo | None = None,
) -> list[Block]:
    """max_batch_table as blocks; "N+" where batch N ran and no larger batch was tried (the
    sweep's limit), and each platform's memory cap in its column header (a capped platform per
    card emulated: e.g. 32 GB for the study's V100 32GB beside 40 GB for its A100 40GB, each its
    own column). Where any model is quantized, a `weights` column (model_weights) and a note on
    the schemes; where the rows include the study's Llama-2-7B/13B architectures and a model is
    quantized, the study's own Table 3 values in a note."""
    df = _probe_frame(probe_rows, models, "max_batch_markdown")
    platforms = sorted(df["platform"].unique(), key=natural_key)
    quantized = _quantized_models(df, model_info)
    header = ["model"] + (["weights"] if quantized else [])
    for p in platforms:
        caps = sorted({c for c in df.loc[df["platform"] == p, "memory_limit_gb"] if pd.notna(c)})
        header.append(p + (f" (capped at {', '.join(f'{c:g}' for c in caps)} GB)" if caps else ""))
    cells = {
        (r.model, r.platform): f"{r.max_ok}" + ("+" if pd.isna(r.min_failed) else "")
        for r in df.itertuples()
    }
    weights = model_weights(df, model_info) if quantized else {}
    rows = [
        [m] + ([weights[m]] if quantized else []) + [cells.get((m, p), "—") for p in platforms]
        for m in model_order(df, model_info)
    ]
    blocks: list[Block] = [("h3", title), ("table", Table(header, rows)), ("p", N_PLUS_NOTE)]
    cap_note = _cap_note(df)
    if cap_note:
        blocks.append(("p", cap_note))
    if quantized:
        blocks.append(("p", WEIGHTS_NOTE))
        architectures = {str(v.get("architecture")) for v in (model_info or {}).values()}
        if architectures & STUDY_TABLE3_ARCHITECTURES:
            blocks.append(("p", STUDY_TABLE3))
    return blocks


def max_batch_markdown(
    probe_rows: Sequence[Mapping],
    models: Sequence[str] | None = None,
    title: str = "Largest batch before out-of-memory",
    model_info: ModelInfo | None = None,
) -> str:
    return to_markdown(max_batch_blocks(probe_rows, models, title, model_info))


def write_max_batch_markdown(
    probe_rows: Sequence[Mapping],
    path: str | Path,
    models: Sequence[str] | None = None,
    title: str = "Largest batch before out-of-memory",
    model_info: ModelInfo | None = None,
) -> None:
    write_text(path, max_batch_markdown(probe_rows, models, title, model_info))


def write_max_batch_tables(
    probe_rows: Sequence[Mapping],
    outputs: Mapping[str, str],
    title: str,
    model_info: ModelInfo | None = None,
) -> None:
    """Table 3 or 4 as outputs["csv"], ["md"] and ["html"] (the probes given are the table's;
    model_info: registry.Study.model_info of its models, for the study's row order and weights)."""
    write_max_batch_csv(probe_rows, outputs["csv"], model_info=model_info)
    blocks = max_batch_blocks(probe_rows, title=title, model_info=model_info)
    write_text(outputs["md"], to_markdown(blocks))
    write_text(outputs["html"], to_html(blocks, title))


# ------------------------------------------------------------------ the metrics table


def _fmt(value, scale: float = 1.0, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return ""
    if isinstance(value, numbers.Number) and not isinstance(value, bool):
        return f"{value * scale:.{digits}g}"
    return str(value)


def _with_interval(row, column: str, scale: float = 1.0) -> str:
    """value, or "value [low, high]" where the row has a 95 % interval over repeats."""
    text = _fmt(row.get(column), scale)
    low, high = row.get(f"{column}_ci_low"), row.get(f"{column}_ci_high")
    if text and row.get("n_repeats", 1) and row.get("n_repeats", 1) > 1 and pd.notna(low) and pd.notna(high):
        text += f" [{_fmt(low, scale)}, {_fmt(high, scale)}]"
    return text


# (column, header with its display unit, scale from the table's SI unit, with interval)
METRICS_TABLE = (
    ("platform", "platform", None, False),
    ("model", "model", None, False),
    ("mode", "mode", None, False),
    ("batch_size", "batch size / max_num_seqs", None, False),
    ("n_repeats", "repeats", None, False),
    ("energy_method", "energy from", None, False),
    ("j_per_token", "J/token", 1.0, True),
    ("g_per_token", "operational mgCO2e/token", MG_PER_G, True),
    ("tokens_per_s", "output tokens/s", 1.0, True),
    ("e2e_s_per_token", "E2E latency ms/output token", MS_PER_S, True),
    ("s_per_token_user", "the study's batch ms/token (no queueing)", MS_PER_S, True),
    ("j_per_token_cv", "J/token CV over repeats", 1.0, False),
    ("ttft_s", "mean TTFT (ms)", MS_PER_S, False),
    ("ttft_p50_s", "TTFT p50 (ms)", MS_PER_S, False),
    ("ttft_p99_s", "TTFT p99 (ms)", MS_PER_S, False),
    ("tpot_s", "mean TPOT (ms)", MS_PER_S, False),
    ("tpot_p50_s", "TPOT p50 (ms)", MS_PER_S, False),
    ("tpot_p99_s", "TPOT p99 (ms)", MS_PER_S, False),
    ("e2e_p50_s", "E2E p50 (s)", 1.0, False),
    ("e2e_p99_s", "E2E p99 (s)", 1.0, False),
    ("j_per_request", "J/request", 1.0, False),
    ("steady_window_s", "steady state (s)", 1.0, False),
    ("j_per_token_steady", "J/token, steady state", 1.0, False),
    ("tokens_per_s_steady", "output tokens/s, steady state", 1.0, False),
    ("embodied_g_per_token_low", "embodied mgCO2e/token, low", MG_PER_G, False),
    ("embodied_g_per_token_high", "embodied mgCO2e/token, high", MG_PER_G, False),
    ("mfu", "MFU (%)", PCT_PER_FRACTION, False),
    ("mbu", "MBU (%)", PCT_PER_FRACTION, False),
    ("intensity_g_per_kwh", "gCO2/kWh", 1.0, False),
    ("filled_share", "intensity filled (share)", 1.0, False),
    ("pue", "PUE", 1.0, False),
    ("qa_flags", "suspect-cell QA flags", None, False),
)


def metrics_table(metrics: pd.DataFrame) -> Table:
    """The metrics table as the report shows it: one row per cell, the columns of METRICS_TABLE
    that the table holds (older tables lack some), values in display units, intervals beside
    their values as "value [low, high]"."""
    present = [c for c in METRICS_TABLE if c[0] in metrics.columns]
    sort = [c for c in ["platform", "model", "mode", "batch_size"] if c in metrics.columns]
    if "qa_flags" in metrics.columns:  # the CELL tier only: the study's are said once, above
        metrics = metrics.assign(qa_flags=metrics["qa_flags"].map(lambda v: ";".join(qa.cell_flags(v))))
    rows = []
    for _, row in metrics.sort_values(sort).iterrows():
        rows.append(
            [
                (_with_interval(row, col, scale) if ci else _fmt(row[col], scale))
                if scale is not None
                else _fmt(row[col])
                for col, _, scale, ci in present
            ]
        )
    return Table([h for _, h, _, _ in present], rows)


def write_metrics_html(metrics: pd.DataFrame, path: str | Path) -> None:
    blocks: list[Block] = [
        ("h1", "Metrics per cell"),
        (
            "p",
            "Every cell of results/tables/metrics.parquet (docs/metrics.md gives each formula). "
            "Intervals in brackets: bootstrap 95 % intervals over the cell's repeats. E2E "
            "latency per output token is the latency static and continuous cells share (every "
            "request arriving when its repeat starts); the study's batch latency per token has "
            "no queueing and means that only for static cells. The QA flags column lists what "
            "marks a suspect cell; what holds for the whole study is said once, below.",
        ),
        ("table", metrics_table(metrics)),
    ]
    blocks += study_flag_blocks(metrics)
    write_text(path, to_html(blocks, "Metrics per cell"))


# ------------------------------------------------------------------ the time-shift table

TIMESHIFT_MARKS = (
    ("is_actual", "actual"),
    ("is_oracle_best", "best (oracle)"),
    ("is_policy", "policy: previous day's best"),
)


def _carbon_unit(carbon_g: pd.Series) -> tuple[float, str]:
    return (MG_PER_G, "mgCO2e") if carbon_g.max() < 1.0 else (1.0, "gCO2e")


def timeshift_table(timeshift: pd.DataFrame) -> Table:
    """TIMESHIFT rows as a table: each candidate start, its carbon, the energy-weighted intensity,
    the saving against the actual start, and which start is the actual, the oracle's, the policy's."""
    require_columns(timeshift, ["start_utc", "carbon_g", "intensity_g_per_kwh", "saving_vs_actual_g"]
                    + [flag for flag, _ in TIMESHIFT_MARKS], "timeshift_table")  # fmt: skip
    scale, unit = _carbon_unit(timeshift["carbon_g"])
    rows = [
        [
            r.start_utc,
            f"{r.carbon_g * scale:.4g}",
            f"{r.intensity_g_per_kwh:.1f}",
            f"{r.saving_vs_actual_g * scale:+.3g}",
            ", ".join(name for flag, name in TIMESHIFT_MARKS if getattr(r, flag)),
        ]
        for r in timeshift.sort_values("start_wall_ns").itertuples()
    ]
    header = ["start (UTC)", f"carbon ({unit})", "intensity (gCO2/kWh)",
              f"saving vs actual ({unit})", "start"]  # fmt: skip
    return Table(header, rows)


def timeshift_sentences(timeshift: pd.DataFrame) -> list[str]:
    """What the time-shift what-if found, in words: the actual start's carbon, the oracle's best
    start and saving, the forecast-free policy's start and saving."""
    scale, unit = _carbon_unit(timeshift["carbon_g"])
    first = timeshift.iloc[0]

    def at(flag):
        row = timeshift[timeshift[flag]].iloc[0]
        hhmm = pd.Timestamp(int(row["start_wall_ns"]), unit="ns", tz="UTC").strftime("%H:%M")
        return row, hhmm

    actual, actual_at = at("is_actual")
    out = [
        f"Time shift ({first['zone_id']}, {first['day']} UTC, {first['basis']} intensity, "
        f"location-based): the {first['job']} ({first['duration_s'] / 60:.3g} min, "
        f"{energy_text(first['energy_j'])} before PUE) started at {actual_at} emitted "
        f"{actual['carbon_g'] * scale:.4g} {unit}."
    ]
    for flag, what in (("is_oracle_best", "The best start of the day, with perfect foresight"),
                       ("is_policy", "Starting at the previous day's best hour, no forecast")):  # fmt: skip
        row, hhmm = at(flag)
        share = row["saving_vs_actual_g"] / actual["carbon_g"] if actual["carbon_g"] > 0 else math.nan
        out.append(
            f"{what}: {hhmm}, {row['carbon_g'] * scale:.4g} {unit}, saving "
            f"{row['saving_vs_actual_g'] * scale:.3g} {unit} ({share:.1%})."
        )
    return out


def write_timeshift_tables(timeshift: pd.DataFrame, outputs: Mapping[str, str]) -> None:
    """The time-shift table as outputs["csv"] (every TIMESHIFT column) and outputs["html"]."""
    write_text(outputs["csv"], timeshift.to_csv(index=False))
    blocks: list[Block] = [("h1", "Time-shift what-if")]
    blocks += [("p", s) for s in timeshift_sentences(timeshift)]
    blocks.append(("table", timeshift_table(timeshift)))
    write_text(outputs["html"], to_html(blocks, "Time-shift what-if"))


# ------------------------------------------------------------------ the summary


def carbon_optimal_batches(metrics: pd.DataFrame, slos_s_per_token: Sequence[float]) -> pd.DataFrame:
    """carbon_optimal_points (kept under the name the summary used before continuous cells)."""
    return carbon_optimal_points(metrics, slos_s_per_token)


def _ratio_text(value: float, interval: pd.Series, digits: int) -> str:
    text = f"{value:.{digits}f}x"
    if pd.notna(interval["low"]) and pd.notna(interval["high"]):
        text += f" [{interval['low']:.{digits}f}, {interval['high']:.{digits}f}]"
    return text


def _cards_apart(pairs: pd.DataFrame) -> dict[int, str]:
    """The pairs (batch1_vs_max rows, by position) whose two cells name different GPU UUIDs
    (METRICS gpu_uuid; a cell without one is never counted apart), each as text: 'gpt2 on
    h100-sxm-80gb: batch 1 on ...7901c5 (idle 131 W), batch 100 on ...480db6 (idle 114 W)'."""
    if "gpu_uuid_1" not in pairs.columns or "gpu_uuid_max" not in pairs.columns:
        return {}
    out = {}
    for i, p in enumerate(pairs.itertuples()):
        a, b = p.gpu_uuid_1, p.gpu_uuid_max
        if isinstance(a, str) and isinstance(b, str) and a and b and a != b:
            idle = [getattr(p, f"idle_power_w_{s}", float("nan")) for s in ("1", "max")]
            watts = [f" (idle {w:.0f} W)" if pd.notna(w) else "" for w in idle]
            out[i] = (f"{p.model} on {p.platform}: batch {p.batch_size_1} on ...{a[-6:]}{watts[0]}, "
                      f"batch {p.batch_size_max} on ...{b[-6:]}{watts[1]}")  # fmt: skip
    return out


def _headline_blocks(metrics: pd.DataFrame) -> list[Block]:
    pairs = batch1_vs_max(metrics, "summary_markdown")
    if pairs.empty:
        return [
            (
                "p",
                "No model and platform has two static batch sizes measured, so there is no "
                "smallest-to-largest batch ratio to report.",
            )
        ]
    carbon_ci = ratio_interval(pairs, "g_per_token", smaller_over_larger=True)
    latency_ci = ratio_interval(pairs, "s_per_token_user", smaller_over_larger=False)
    header = [
        "model",
        "platform",
        "batches",
        "mgCO2e/token at the smallest",
        "at the largest",
        f"carbon/token ratio (study {STUDY['carbon_ratio']})",
        f"the study's batch latency/token ratio (study {STUDY['latency_ratio']})",
        f"MFU at the smallest (study {STUDY['mfu_batch1']})",
        "energy",
    ]
    rows = []
    cards = _cards_apart(pairs)
    for i, p in enumerate(pairs.itertuples()):
        methods = sorted({getattr(p, "energy_method_1", ""), getattr(p, "energy_method_max", "")} - {""})
        rows.append(
            [
                p.model,
                p.platform,
                f"{p.batch_size_1} → {p.batch_size_max}" + (" †" if i in cards else ""),
                f"{p.g_per_token_1 * MG_PER_G:.3g}",
                f"{p.g_per_token_max * MG_PER_G:.3g}",
                _ratio_text(p.g_per_token_1 / p.g_per_token_max, carbon_ci.iloc[i], 1),
                _ratio_text(p.s_per_token_user_max / p.s_per_token_user_1, latency_ci.iloc[i], 2),
                f"{p.mfu_1 * PCT_PER_FRACTION:.2f} %" if hasattr(p, "mfu_1") else "",
                # CPU runs have modeled power: the reader must see that next to the ratios.
                "; ".join(methods),
            ]
        )
    blocks: list[Block] = [("table", Table(header, rows))]
    blocks.append((
        "p",
        "The latency ratio is the study's own measure (batch time / tokens per request, no "
        "queueing), so that it compares with the study's ~2x; the SLO analysis below and every "
        "latency axis use E2E latency per output token instead, which static and continuous "
        "cells share (docs/metrics.md).",
    ))  # fmt: skip
    if cards:
        blocks.append(("p", "† Its two cells ran on different GPUs of the same model: " + "; ".join(
            cards.values()) + ". Energy counts the whole board, so a ratio across two cards "
            "carries their difference as well as the batch's (idle power differed by 10-18 W "
            "among the H100s of 2026-12-07, docs/results.md)."))  # fmt: skip
    if (pairs["batch_size_1"] != 1).any():
        blocks.append(
            ("p", "Where batch 1 was not measured, the smallest measured batch stands in for it.")
        )
    if (carbon_ci["low"].notna() | latency_ci["low"].notna()).any():
        blocks.append(
            (
                "p",
                "Ratio intervals in brackets: from each cell's bootstrap 95 % interval over its "
                "repeats, [low_a / high_b, high_a / low_b]; both cells lie inside their intervals "
                "with probability >= 90 % (Bonferroni), so the ratio does too. A cell run once has "
                "no interval.",
            )
        )
    return blocks


def _slo_blocks(metrics: pd.DataFrame, slos_s_per_token: Sequence[float]) -> list[Block]:
    best = carbon_optimal_points(metrics, slos_s_per_token)
    _, label, note = latency_axis(metrics, "summary_markdown (SLO)")
    header = [
        "model",
        "platform",
        "latency SLO (ms/token)",
        "carbon-optimal operating point",
        "mgCO2e/token there",
        "ms/token there",
    ]
    rows = []
    for r in best.itertuples():
        if pd.isna(r.batch_size):
            point, g, s = "none meets it", "", ""
        else:
            point = (
                f"static batch {r.batch_size}"
                if r.mode == STATIC
                else f"continuous, max_num_seqs {r.batch_size}"
            )
            g, s = f"{r.g_per_token * MG_PER_G:.3g}", f"{r.latency_s_per_token * MS_PER_S:.3g}"
        rows.append([r.model, r.platform, f"{r.slo_s_per_token * MS_PER_S:g}", point, g, s])
    return [
        ("h3", "Carbon-optimal operating point under a latency SLO"),
        (
            "p",
            "Among every measured cell (static batch sizes and continuous-batching max_num_seqs) "
            f"whose latency meets the SLO, the one with the least operational carbon per token; "
            f"it lies on the Pareto front of the carbon-vs-latency figure. Latency, {label}: "
            f"{note}; a static batch's requests wait for the batches before theirs "
            "(docs/metrics.md).",
        ),
        ("table", Table(header, rows)),
    ]


def _filled_blocks(metrics: pd.DataFrame) -> list[Block]:
    if "filled_share" not in metrics.columns:
        return []
    filled = metrics[metrics["filled_share"] > 0]
    if filled.empty:
        return []
    worst = filled.loc[filled["filled_share"].idxmax()]
    return [
        (
            "p",
            f"Filled intensity: for {len(filled)} of {len(metrics)} cells part of the window lies "
            "where the carbon-intensity trace has no hour, and the configured carbon.fill "
            f"supplied it from the trace's own hours (up to {worst['filled_share']:.0%} of a "
            f"window: {worst['model']} on {worst['platform']}, batch {worst['batch_size']}). "
            "Their carbon uses an intensity that was not measured for those hours.",
        )
    ]


EMBODIED_BOUNDARY = (
    "low: the device's dies and memory only, estimated by LLMCarbon's method (die area x carbon "
    "per area + memory GB x 0.4 kgCO2e/GB); high: the vendor's product carbon footprint, cradle "
    "to gate (NVIDIA's HGX H100 PCF: 164 kgCO2e per H100), or where no vendor publishes one, the "
    "low bound scaled by the H100's ratio of PCF to estimate; the host server is excluded unless "
    "the config gives its share. resources/platforms.csv names each bound's source (columns source "
    "and embodied_high_source; docs/metrics.md). Both are amortised over the device's service "
    "life and the measured window, and neither is in the operational figures above."
)


def _embodied_blocks(metrics: pd.DataFrame) -> list[Block]:
    cols = ["embodied_g_per_token_low", "embodied_g_per_token_high"]
    if not has_columns(metrics, cols) or metrics[cols].isna().all().all():
        return []
    pairs = batch1_vs_max(metrics, "summary_markdown")
    rows = []
    source = pairs if not pairs.empty else None
    if source is not None:
        for p in source.itertuples():
            rows.append(
                [
                    p.model,
                    p.platform,
                    f"{p.embodied_g_per_token_low_1 * MG_PER_G:.3g}–{p.embodied_g_per_token_high_1 * MG_PER_G:.3g}",
                    f"{p.embodied_g_per_token_low_max * MG_PER_G:.3g}–{p.embodied_g_per_token_high_max * MG_PER_G:.3g}",
                ]
            )
    blocks: list[Block] = [("h3", "Embodied carbon per token (a range)")]
    if rows:
        blocks.append(
            (
                "table",
                Table(
                    ["model", "platform", "mgCO2e/token at the smallest batch", "at the largest"],
                    rows,
                ),
            )
        )
    blocks.append(("p", "Boundary: " + EMBODIED_BOUNDARY))
    return blocks


def _point_text(point: str, batch_q: int, batch_u: int) -> str:
    if point == "smallest":
        return "batch 1" if batch_q == 1 else f"smallest common batch ({batch_q})"
    return f"largest batch ({batch_u} → {batch_q})"


def quantization_blocks(metrics: pd.DataFrame) -> list[Block]:
    """summary.md's quantized-vs-unquantized comparison (quantized.quantized_comparison): per
    quantized model, unquantized sibling (same architecture) and platform, operational carbon
    per output token (mgCO2e/token) and energy per output token (J/token) at batch 1 and at each
    model's largest static batch, with the ratios quantized / unquantized. [] where the metrics
    hold no quantized model (a table without a `quantization` column holds none)."""
    if metrics.empty or not is_quantized(metrics).any():
        return []
    require_columns(metrics, ["architecture", "j_per_token"], "summary_markdown (quantization)")
    pairs = quantized_comparison(metrics)
    blocks: list[Block] = [
        ("h3", "Weight-quantized against unquantized models"),
        (
            "p",
            "Each quantized model beside the unquantized model of the same architecture on the "
            "same platform (static batches): at batch 1 (the smallest batch both measured) and at "
            "each one's largest batch (batch sizes unquantized → quantized; quantized weights "
            "leave memory for more requests, Table 3). Ratios are quantized / unquantized: below "
            "1x the quantized model costs less per token. The study (Lim, Pan, Zhou 2024) "
            "measured Llama-2-7B and -13B with TensorRT-LLM's 4-bit weight-only quantization "
            "(WQ4bit, figure 4c).",
        ),
    ]
    if not pairs.empty:
        header = [
            "quantized model (weights)",
            "unquantized",
            "platform",
            "at",
            "mgCO2e/token unquantized",
            "quantized",
            "carbon ratio",
            "J/token unquantized",
            "quantized",
            "energy ratio",
            "energy",
        ]
        rows = [
            [
                f"{r.model_q} ({r.weights_q})",
                r.model_u,
                r.platform,
                _point_text(r.point, r.batch_q, r.batch_u),
                f"{r.g_per_token_u * MG_PER_G:.3g}",
                f"{r.g_per_token_q * MG_PER_G:.3g}",
                f"{r.g_per_token_ratio:.2f}x",
                f"{r.j_per_token_u:.3g}",
                f"{r.j_per_token_q:.3g}",
                f"{r.j_per_token_ratio:.2f}x",
                r.energy_method,
            ]
            for r in pairs.itertuples()
        ]
        blocks.append(("table", Table(header, rows)))
    unpaired = unpaired_quantized(metrics)
    if unpaired:
        named = ", ".join(f"{m} on {p}" for m, p in unpaired)
        blocks.append(
            (
                "p",
                f"No unquantized model of the same architecture was measured beside {named}; "
                "configure one (the same architecture without quantization) to compare.",
            )
        )
    return blocks


def study_flag_blocks(metrics: pd.DataFrame) -> list[Block]:
    """The STUDY-tier QA flags (tokencarbon.qa), said once for the study: each with how many
    cells carry it and what it says. [] where no cell carries one."""
    if "qa_flags" not in metrics.columns:
        return []
    counts = qa.study_flag_counts(metrics["qa_flags"])
    if not counts:
        return []
    items = "; ".join(
        f"{flag} ({'every cell' if n == len(metrics) else f'{n} of {len(metrics)} cells'}: "
        f"{qa.meaning(flag) or 'see docs/metrics.md'})"
        for flag, n in counts.items()
    )
    return [
        ("h3", "How this study measured (flags of the whole study)"),
        ("p", f"Said once here rather than on every cell (docs/metrics.md, QA flags): {items}."),
    ]


def _flag_blocks(metrics: pd.DataFrame) -> list[Block]:
    """The study's flags once (study_flag_blocks), then the suspect cells: those with a
    CELL-tier QA flag, each with its flags."""
    if "qa_flags" not in metrics.columns:
        return []
    rows = []
    for r in metrics.sort_values(["model", "platform", "batch_size"]).itertuples():
        flags = qa.cell_flags(r.qa_flags)
        if flags:
            rows.append([r.model, r.platform, getattr(r, "mode", STATIC), str(r.batch_size), "; ".join(flags)])
    blocks = study_flag_blocks(metrics)
    if rows:
        blocks += [
            ("h3", "Suspect cells"),
            ("p", "These cells carry QA flags that mark a suspect measurement (docs/metrics.md "
                  "explains each; red rings in the figures); read their numbers with care."),
            ("table", Table(["model", "platform", "mode", "batch size", "QA flags"], rows)),
        ]  # fmt: skip
    return blocks


def summary_blocks(
    metrics: pd.DataFrame,
    probe_rows: Sequence[Mapping],
    slos_s_per_token: Sequence[float] = (),
    timeshift: pd.DataFrame | None = None,
    model_info: ModelInfo | None = None,
) -> list[Block]:
    """results/summary.md's content: per (model, platform) the carbon-per-token and latency ratios
    of the smallest (batch 1) to the largest static batch and the MFU there, each beside the
    study's value, with intervals where cells were repeated; quantized models against their
    unquantized siblings (quantization_blocks, where any model is quantized); the carbon-optimal
    operating point under each SLO; notes on filled intensities, embodied carbon and flagged
    cells; the probes' largest batches (model_info: registry.Study.model_info, for their order
    and weights)."""
    what = "summary_markdown"
    require_columns(metrics, ["platform", "model", "batch_size", "g_per_token", "s_per_token_user"], what)
    if metrics.empty:
        raise InputError(f"{what}: no rows in the metrics table; nothing to summarise")
    blocks: list[Block] = [
        ("h1", "Results summary"),
        (
            "p",
            "The smallest (batch 1) against the largest static batch measured for each model and "
            "platform, recomputed from the study's tables/metrics.parquet, beside Lim, Pan, Zhou "
            "2024 (TensorRT-LLM on V100/A100: batch 1 -> largest batch cut carbon per token ~11x for "
            "~2x the latency per token; MFU ~2 % at batch 1). Carbon is operational (energy x "
            "PUE x grid intensity). Ratios: carbon = smallest / largest batch; latency = largest "
            "/ smallest batch.",
        ),
    ]
    blocks += _headline_blocks(metrics)
    blocks += quantization_blocks(metrics)
    if slos_s_per_token:
        blocks += _slo_blocks(metrics, slos_s_per_token)
    blocks += _filled_blocks(metrics)
    if timeshift is not None and not timeshift.empty:
        blocks.append(("h3", "Time-shift what-if"))
        blocks += [("p", s) for s in timeshift_sentences(timeshift)]
    blocks += _embodied_blocks(metrics)
    blocks += _flag_blocks(metrics)
    if probe_rows:
        blocks += max_batch_blocks(probe_rows, model_info=model_info)
    return blocks


def summary_markdown(
    metrics: pd.DataFrame,
    probe_rows: Sequence[Mapping],
    slos_s_per_token: Sequence[float] = (),
    timeshift: pd.DataFrame | None = None,
    model_info: ModelInfo | None = None,
) -> str:
    return to_markdown(summary_blocks(metrics, probe_rows, slos_s_per_token, timeshift, model_info))


def write_summary(
    metrics: pd.DataFrame,
    probe_rows: Sequence[Mapping],
    slos_s_per_token: Sequence[float],
    outputs: Mapping[str, str],
    timeshift: pd.DataFrame | None = None,
    model_info: ModelInfo | None = None,
) -> None:
    """outputs["md"] (results/summary.md) and outputs["html"] (the same, for the report)."""
    blocks = summary_blocks(metrics, probe_rows, slos_s_per_token, timeshift, model_info)
    write_text(outputs["md"], to_markdown(blocks))
    write_text(outputs["html"], to_html(blocks, "Results summary"))

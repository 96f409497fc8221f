"""The study's tables 3 and 4 (largest batch before OOM per model and platform) and the results
summary: our ratios batch 1 -> largest batch next to the study's."""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from tokencarbon.errors import InputError
from tokencarbon.figures.common import MG_PER_G, PCT_PER_FRACTION, require_columns
from tokencarbon.figures.measured import batch1_vs_max
from tokencarbon.files import write_text

PROBE_KEYS = ("platform", "model", "max_ok", "min_failed", "memory_limit_gb")
# Lim, Pan, Zhou 2024 (TensorRT-LLM on V100/A100): batch 1 -> largest batch cuts carbon per token
# about 11x for about 2x the latency per token; batch 1 reaches about 2 % MFU.
STUDY = {"carbon_ratio": "~11x", "latency_ratio": "~2x", "mfu_batch1": "~2 %"}


def _probe_frame(
    probe_rows: Sequence[Mapping], models: Sequence[str] | None, what: str
) -> pd.DataFrame:
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
    df = pd.DataFrame(list(probe_rows), columns=list(PROBE_KEYS))
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


def max_batch_table(
    probe_rows: Sequence[Mapping], models: Sequence[str] | None = None
) -> pd.DataFrame:
    """Largest batch that ran (max_ok): rows model, columns platform; <NA> where not probed.
    models picks the table's rows (the study's table 3: Llama-2, table 4: GPT-2)."""
    df = _probe_frame(probe_rows, models, "max_batch_table")
    table = df.pivot(index="model", columns="platform", values="max_ok").astype("Int64")
    table.columns.name = None
    return table


def write_max_batch_csv(
    probe_rows: Sequence[Mapping], path: str | Path, models: Sequence[str] | None = None
) -> None:
    write_text(path, max_batch_table(probe_rows, models).to_csv())


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = [header, ["---"] * len(header), *rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines) + "\n"


def max_batch_markdown(
    probe_rows: Sequence[Mapping],
    models: Sequence[str] | None = None,
    title: str = "Largest batch before out-of-memory",
) -> str:
    """max_batch_table as Markdown; "N+" where batch N ran and no larger batch was tried (the
    sweep's limit), and each platform's memory cap in its column header."""
    df = _probe_frame(probe_rows, models, "max_batch_markdown")
    platforms = sorted(df["platform"].unique())
    header = ["model"]
    for p in platforms:
        caps = sorted({c for c in df.loc[df["platform"] == p, "memory_limit_gb"] if pd.notna(c)})
        header.append(p + (f" (capped at {', '.join(f'{c:g}' for c in caps)} GB)" if caps else ""))
    cells = {
        (r.model, r.platform): f"{r.max_ok}" + ("+" if pd.isna(r.min_failed) else "")
        for r in df.itertuples()
    }
    rows = [[m] + [cells.get((m, p), "—") for p in platforms] for m in sorted(df["model"].unique())]
    note = (
        "\nN+: batch N ran and no larger batch was tried (the sweep's limit), so no OOM was seen.\n"
    )
    return f"### {title}\n\n" + _markdown_table(header, rows) + note


def write_max_batch_markdown(
    probe_rows: Sequence[Mapping],
    path: str | Path,
    models: Sequence[str] | None = None,
    title: str = "Largest batch before out-of-memory",
) -> None:
    write_text(path, max_batch_markdown(probe_rows, models, title))


def carbon_optimal_batches(metrics: pd.DataFrame, slos_s_per_token: Sequence[float]) -> pd.DataFrame:
    """Per (model, platform) and latency SLO: the measured batch size with the least carbon per
    token among those whose user-perceived latency (s_per_token_user) meets the SLO; batch_size
    <NA> where no measured batch meets it."""
    require_columns(
        metrics, ["platform", "model", "batch_size", "g_per_token", "s_per_token_user"],
        "carbon_optimal_batches",
    )
    rows = []
    for (model, platform), cells in metrics.groupby(["model", "platform"]):
        for slo in slos_s_per_token:
            ok = cells[cells["s_per_token_user"] <= slo]
            best = ok.loc[ok["g_per_token"].idxmin()] if len(ok) else None
            rows.append({
                "model": model,
                "platform": platform,
                "slo_s_per_token": float(slo),
                "batch_size": pd.NA if best is None else int(best["batch_size"]),
                "g_per_token": float("nan") if best is None else float(best["g_per_token"]),
                "s_per_token_user": float("nan") if best is None else float(best["s_per_token_user"]),
            })
    return pd.DataFrame(rows).astype({"batch_size": "Int64"})


def _slo_markdown(metrics: pd.DataFrame, slos_s_per_token: Sequence[float]) -> str:
    best = carbon_optimal_batches(metrics, slos_s_per_token)
    header = ["model", "platform", "latency SLO (s/token)", "carbon-optimal batch",
              "mgCO2e/token there", "s/token there"]
    rows = [
        [r.model, r.platform, f"{r.slo_s_per_token:g}",
         "none meets it" if pd.isna(r.batch_size) else str(r.batch_size),
         "" if pd.isna(r.batch_size) else f"{r.g_per_token * MG_PER_G:.3g}",
         "" if pd.isna(r.batch_size) else f"{r.s_per_token_user:.3g}"]
        for r in best.itertuples()
    ]
    return "\n".join([
        "### Carbon-optimal batch under a latency SLO\n",
        "Among the measured batch sizes whose user-perceived latency per token meets the SLO, the "
        "one with the least operational carbon per token.\n",
        _markdown_table(header, rows),
    ])


def summary_markdown(
    metrics: pd.DataFrame, probe_rows: Sequence[Mapping], slos_s_per_token: Sequence[float] = ()
) -> str:
    """results/summary.md: per (model, platform) the carbon-per-token and latency ratios of batch 1
    to the largest measured batch and the MFU at batch 1, each beside the study's value."""
    what = "summary_markdown"
    require_columns(
        metrics,
        [
            "platform",
            "model",
            "batch_size",
            "g_per_token",
            "s_per_token_user",
            "mfu",
            "energy_method",
        ],
        what,
    )
    pairs = batch1_vs_max(metrics, what)
    header = [
        "model",
        "platform",
        "largest batch measured",
        "mgCO2e/token at batch 1",
        "at largest batch",
        f"carbon/token ratio (study {STUDY['carbon_ratio']})",
        f"latency ratio, s/token (study {STUDY['latency_ratio']})",
        f"MFU at batch 1 (study {STUDY['mfu_batch1']})",
        "energy",
    ]
    rows = [
        [
            p.model,
            p.platform,
            str(p.batch_size_max),
            f"{p.g_per_token_1 * MG_PER_G:.3g}",
            f"{p.g_per_token_max * MG_PER_G:.3g}",
            f"{p.g_per_token_1 / p.g_per_token_max:.1f}x",
            f"{p.s_per_token_user_max / p.s_per_token_user_1:.2f}x",
            f"{p.mfu_1 * PCT_PER_FRACTION:.2f} %",
            # CPU runs have modeled power: the reader must see that next to the ratios.
            "; ".join(sorted({p.energy_method_1, p.energy_method_max})),
        ]
        for p in pairs.itertuples()
    ]
    parts = [
        "# Results summary\n",
        "Batch 1 against the largest batch measured for each model and platform, recomputed from "
        "results/tables/metrics.parquet, beside Lim, Pan, Zhou 2024 (TensorRT-LLM on V100/A100: "
        "batch 1 -> largest batch cut carbon per token ~11x for ~2x the latency per token; "
        "MFU ~2 % at batch 1). Carbon is operational (energy x PUE x grid intensity). Ratios: "
        "carbon = batch 1 / largest batch; latency = largest batch / batch 1.\n",
        _markdown_table(header, rows),
    ]
    if slos_s_per_token:
        parts.append(_slo_markdown(metrics, slos_s_per_token))
    if probe_rows:
        parts.append(max_batch_markdown(probe_rows))
    return "\n".join(parts)

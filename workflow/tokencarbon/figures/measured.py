"""Figures of the measured cells: throughput vs latency (4), MFU at batch 1 (5), power over time
(6b/6c) and carbon per token at batch 1 vs the largest batch (7)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from tokencarbon.errors import InputError
from tokencarbon.figures.common import (
    MG_PER_G,
    NS_PER_S,
    OUTSIDE_RIGHT,
    PCT_PER_FRACTION,
    log_scale_if_wide,
    new_figure,
    require_columns,
    require_one_row_per_cell,
    require_rows,
    select_models,
    themed,
)
from tokencarbon.models import load_architecture

CELL = ["platform", "model", "batch_size"]
# Lim, Pan, Zhou 2024 (TensorRT-LLM, V100/A100): batch 1 reaches about 2 % MFU.
STUDY_MFU_BATCH1_PCT = 2.0


def family_models(metrics: pd.DataFrame, family: str) -> list[str]:
    """Model names in a METRICS table whose architecture is of `family` ("llama" or "gpt2"),
    for the models= subsets of figures 4 and 6 (4a/6b: llama, 4b/6c: gpt2)."""
    require_columns(metrics, ["model", "architecture"], "family_models")
    pairs = metrics[["model", "architecture"]].drop_duplicates()
    return sorted(
        m for m, a in pairs.itertuples(index=False) if load_architecture(a).family == family
    )


@themed
def fig4_throughput_latency(
    metrics: pd.DataFrame,
    *,
    models: Sequence[str] | None = None,
    title: str = "Throughput vs latency",
) -> Figure:
    """Output tokens/s vs user-perceived s/token, one line per (model, platform) through its
    batch sizes, each point labelled with its batch size. models picks a subset (4a, 4b, 4c)."""
    figure = "fig4_throughput_latency"
    df = select_models(metrics, models, CELL + ["tokens_per_s", "s_per_token_user"], figure)
    require_one_row_per_cell(df, figure)
    df = df.sort_values(CELL)
    fig = new_figure()
    ax = fig.subplots()
    sns.lineplot(
        df,
        x="s_per_token_user",
        y="tokens_per_s",
        hue="model",
        style="platform",
        markers=True,
        dashes=False,
        sort=False,  # rows are in batch order, so each line runs batch 1 -> largest
        estimator=None,
        ax=ax,
    )
    for row in df.itertuples():
        ax.annotate(
            str(row.batch_size),
            (row.s_per_token_user, row.tokens_per_s),
            xytext=(4, 4),
            textcoords="offset points",
            fontsize="x-small",
        )
    sns.move_legend(ax, **OUTSIDE_RIGHT)
    log_scale_if_wide(ax, "x", df["s_per_token_user"])
    log_scale_if_wide(ax, "y", df["tokens_per_s"])
    ax.set_xlabel("user-perceived latency (s/token)")
    ax.set_ylabel("throughput (output tokens/s)")
    ax.set_title(f"{title}\n(numbers at the points: batch size)")
    return fig


@themed
def fig5_mfu_batch1(metrics: pd.DataFrame) -> Figure:
    """Model FLOPs utilisation (%) at batch 1, one bar per (model, platform)."""
    figure = "fig5_mfu_batch1"
    require_columns(metrics, CELL + ["mfu"], figure)
    df = metrics[metrics["batch_size"] == 1].copy()
    if df.empty:
        raise InputError(
            f"{figure}: no batch-1 cells in the metrics table (batch sizes present: "
            f"{sorted(metrics['batch_size'].unique().tolist())}); the sweep must include batch 1"
        )
    require_one_row_per_cell(df, figure)
    df["mfu_pct"] = df["mfu"] * PCT_PER_FRACTION
    df = df.sort_values(["model", "platform"])
    fig = new_figure(4.5 + 0.9 * len(df), 5.0)
    ax = fig.subplots()
    sns.barplot(df, x="model", y="mfu_pct", hue="platform", errorbar=None, ax=ax)
    for bars in ax.containers:
        ax.bar_label(bars, fmt="{:.2f}", fontsize="x-small", padding=2)
    ax.axhline(STUDY_MFU_BATCH1_PCT, color="0.3", ls="--", lw=1, label="study at batch 1: ~2 %")
    ax.legend(title="platform", **OUTSIDE_RIGHT)
    ax.margins(y=0.15)
    ax.set_xlabel("model")
    ax.set_ylabel("model FLOPs utilisation, MFU (%)")
    ax.set_title("MFU at batch 1 (bar labels in %)")
    return fig


@themed
def fig6_power_over_time(
    power: pd.DataFrame,
    *,
    models: Sequence[str] | None = None,
    title: str = "Power over time",
) -> Figure:
    """Raw power (W) of each cell vs time since its first run sample (aggregated POWER table,
    tables.with_cell_keys(POWER)); idle samples, taken just before, fall at t < 0 on a grey band.
    One panel per (model, platform), one line per batch size (and device)."""
    figure = "fig6_power_over_time"
    columns = CELL + ["t_wall_ns", "phase", "modeled", "device_index", "power_w"]
    df = select_models(power, models, columns, figure)[columns].copy()
    start_ns = df[df["phase"] == "run"].groupby(CELL)["t_wall_ns"].min().rename("start_ns")
    df = df.join(start_ns, on=CELL)
    no_run = df[df["start_ns"].isna()]
    if not no_run.empty:
        cell = no_run.iloc[0]
        raise InputError(
            f"{figure}: cell (platform={cell['platform']}, model={cell['model']}, batch_size="
            f"{cell['batch_size']}) has no samples with phase 'run'; rerun that cell"
        )
    df["t_s"] = (df["t_wall_ns"] - df["start_ns"]) / NS_PER_S
    df["batch size"] = df["batch_size"].astype(str)
    panels = sorted(df.groupby(["model", "platform"]).groups)
    ncols = min(2, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = new_figure(6.5 * ncols, 4.2 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (model, platform) in zip(axes, panels):
        d = df[(df["model"] == model) & (df["platform"] == platform)].sort_values(
            ["batch_size", "device_index", "t_wall_ns"]
        )
        order = [str(b) for b in sorted(d["batch_size"].unique())]
        modeled = bool(d["modeled"].any())
        t_idle_s = d.loc[d["phase"] == "idle", "t_s"]
        if not t_idle_s.empty:
            ax.axvspan(t_idle_s.min(), 0, color="0.9", zorder=0)
            ax.text(t_idle_s.min(), 1.0, " idle", transform=ax.get_xaxis_transform(), va="top")
        sns.lineplot(
            d,
            x="t_s",
            y="power_w",
            hue="batch size",
            hue_order=order,
            palette=sns.color_palette("viridis", len(order)),
            units="device_index",
            estimator=None,
            sort=False,
            lw=1.2,
            ax=ax,
        )
        ax.legend(title="batch size (modeled)" if modeled else "batch size", fontsize="small")
        ax.set_xlabel("time since cell start (s)")
        ax.set_ylabel("power (W)")
        ax.set_title(
            f"{model} on {platform}" + (" (modeled power, not a reading)" if modeled else "")
        )
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    fig.suptitle(title)
    return fig


def batch1_vs_max(metrics: pd.DataFrame, figure: str) -> pd.DataFrame:
    """Per (model, platform): its batch-1 row and its largest measured batch's row, as columns
    suffixed _1 and _max (batch_size_max, g_per_token_1, ...)."""
    require_columns(metrics, CELL, figure)
    require_rows(metrics, figure, "in the metrics table")
    require_one_row_per_cell(metrics, figure)
    rows = []
    for (model, platform), cells in metrics.groupby(["model", "platform"], sort=True):
        one = cells[cells["batch_size"] == 1]
        if one.empty:
            raise InputError(
                f"{figure}: {model} on {platform} has no batch-1 cell (batch sizes measured: "
                f"{sorted(cells['batch_size'].tolist())}); the ratios need batch 1"
            )
        top = cells.loc[cells["batch_size"].idxmax()]
        rows.append(
            {"model": model, "platform": platform}
            | {f"{k}_1": v for k, v in one.iloc[0].items() if k not in ("model", "platform")}
            | {f"{k}_max": v for k, v in top.items() if k not in ("model", "platform")}
        )
    return pd.DataFrame(rows)


@themed
def fig7_carbon_per_token(
    metrics: pd.DataFrame, *, title: str = "Carbon per token: batch 1 vs largest measured batch"
) -> Figure:
    """Operational carbon per output token (mgCO2e) at batch 1 and at the largest measured batch,
    grouped per (model, platform), with the ratio batch 1 / largest written above each pair."""
    figure = "fig7_carbon_per_token"
    require_columns(metrics, CELL + ["g_per_token"], figure)
    pairs = batch1_vs_max(metrics, figure)
    pairs["pair"] = pairs["model"] + "\n" + pairs["platform"]
    bars = pd.concat(
        [
            pd.DataFrame({"pair": pairs["pair"], "batch": "batch 1", "mg": pairs["g_per_token_1"]}),
            pd.DataFrame(
                {
                    "pair": pairs["pair"],
                    "batch": "largest measured batch",
                    "mg": pairs["g_per_token_max"],
                }
            ),
        ]
    )
    bars["mg"] *= MG_PER_G
    fig = new_figure(max(6.0, 1.6 * len(pairs) + 2.5), 5.0)
    ax = fig.subplots()
    sns.barplot(
        bars,
        x="pair",
        y="mg",
        hue="batch",
        order=list(pairs["pair"]),
        hue_order=["batch 1", "largest measured batch"],
        errorbar=None,
        ax=ax,
    )
    log_scale_if_wide(ax, "y", bars["mg"])
    ax.bar_label(
        ax.containers[1], labels=[f"bs {b}" for b in pairs["batch_size_max"]], fontsize="small"
    )
    for i, pair in pairs.iterrows():
        ratio = pair["g_per_token_1"] / pair["g_per_token_max"]
        ax.annotate(
            f"{ratio:.1f}x",
            (i, max(pair["g_per_token_1"], pair["g_per_token_max"]) * MG_PER_G),
            xytext=(0, 14),
            textcoords="offset points",
            ha="center",
            fontweight="bold",
        )
    ax.margins(y=0.2)
    ax.legend(title="batch size", **OUTSIDE_RIGHT)
    ax.set_xlabel("model / platform")
    ax.set_ylabel("operational carbon per output token (mgCO2e)")
    ax.set_title(f"{title}\n(bold: batch 1 / largest batch)")
    return fig

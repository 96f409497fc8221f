"""Figures of the measured cells: throughput vs latency (4), MFU at batch 1 (5), power over time
(6b/6c) and carbon per token at the smallest vs the largest batch (7).

Tables of any tokencarbon version are drawn (figures.inputs): error bars appear where the metrics
carry bootstrap intervals of repeated cells, continuous-batching cells where there are any.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from tokencarbon.errors import ConfigError, InputError
from tokencarbon.figures.common import (
    FLOPS_PER_TFLOPS,
    MG_PER_G,
    MS_PER_S,
    NS_PER_S,
    OUTSIDE_RIGHT,
    PCT_PER_FRACTION,
    mark_suspect,
    new_figure,
    readable_axis,
    require_columns,
    require_one_row_per_cell,
    require_rows,
    select_models,
    suspect_flags,
    suspect_handle,
    themed,
    wrap_to_width,
)
from tokencarbon.figures.inputs import (
    CONTINUOUS,
    STATIC,
    energy_is_modeled,
    interval_columns,
    interval_errors,
    latency_axis,
    one_value,
)
from tokencarbon.figures.layout import declutter
from tokencarbon.models import Architecture, load_architecture

CELL = ["platform", "model", "mode", "batch_size"]
# Lim, Pan, Zhou 2024 (TensorRT-LLM, V100/A100): batch 1 reaches about 2 % MFU.
STUDY_MFU_BATCH1_PCT = 2.0
# The study's headline (Lim, Pan, Zhou 2024): batch 1 -> largest batch cuts carbon per token about
# 11x for about 2x the latency per token.
STUDY_CARBON_RATIO = 11.0
STUDY_LATENCY_RATIO = 2.0
MARKERS = ("o", "s", "D", "^", "v", "P", "X", "*", "<", ">")
MODE_DASHES = {STATIC: "-", CONTINUOUS: "--"}
# Figure 4c's reference lines (unquantized siblings): drawn under the quantized models, faded.
REFERENCE_ALPHA = 0.4
REFERENCE_LW = 1.0


def family_models(
    metrics: pd.DataFrame,
    family: str,
    architectures: Mapping[str, Architecture | Mapping[str, Any]] | None = None,
) -> list[str]:
    """Model names in a METRICS table whose architecture is of `family` ("llama" or "gpt2"),
    for the models= subsets of figures 4 and 6 (4a/6b: llama, 4b/6c: gpt2).

    architectures: name -> models.Architecture or its fields (models.architecture_to_dict; the
    workflow's architecture_params() gives these for every configured model), looked up first;
    names not in it are read from resources/models. An `auto` architecture (read from a
    checkpoint, named after its model) or one given inline has no file there: pass it here.
    Raises InputError naming the model and architecture that neither holds."""
    require_columns(metrics, ["model", "architecture"], "family_models")
    given = dict(architectures or {})
    pairs = metrics[["model", "architecture"]].drop_duplicates()

    def family_of(model: str, name: str) -> str:
        if name in given:
            arch = given[name]
            return arch.family if isinstance(arch, Architecture) else arch["family"]
        try:
            return load_architecture(name).family
        except ConfigError as e:
            raise InputError(
                f"family_models: model {model!r} has architecture {name!r}, which is neither in "
                f"the architectures given ({sorted(given) or 'none'}) nor a file of "
                f"resources/models ({e}); pass its fields (an `auto` or inline architecture: "
                "the workflow's architecture_params())"
            ) from None

    return sorted(m for m, a in pairs.itertuples(index=False) if family_of(m, a) == family)


def platform_colours(platforms: Sequence[str]) -> dict[str, tuple]:
    """One colour per platform, the same in every figure of a study (sorted names)."""
    names = sorted(set(platforms))
    return dict(zip(names, sns.color_palette("colorblind", n_colors=max(len(names), 1))))


def point_label(mode: str, batch_size: int) -> str:
    """How a cell is named at its point: its batch size, or cb<max_num_seqs> for continuous."""
    return str(batch_size) if mode == STATIC else f"cb{batch_size}"


def _with_mode(df: pd.DataFrame) -> pd.DataFrame:
    return df if "mode" in df.columns else df.assign(mode=STATIC)


@themed
def fig4_throughput_latency(
    metrics: pd.DataFrame,
    *,
    models: Sequence[str] | None = None,
    title: str = "Throughput vs latency",
    references: Sequence[str] = (),
    labels: Mapping[str, str] | None = None,
) -> Figure:
    """Output tokens/s vs E2E latency per output token (ms/token; inputs.latency_axis: the one
    definition static and continuous cells share), one line per (platform: colour, model:
    marker, mode: solid static / dashed continuous) through its batch sizes (max_num_seqs), each
    point labelled with its batch size (cb<n> for continuous); suspect cells (a CELL-tier QA
    flag, tokencarbon.qa) ringed in red, their flags in the legend. Error bars: bootstrap 95 %
    intervals where the table has them. models picks a subset (4a, 4b; 4c: the quantized models).

    references: models drawn beside `models` as faded, thinner lines (figure 4c: each quantized
    model's unquantized sibling), named "(reference)" in the legend; the figure needs rows of
    `models` itself. labels: model -> legend text (4c: the model with its weights, e.g.
    "llama-2-7b-wq4 (int4 g128, torchao 0.18.0)"); where absent the model's name, and
    "<name> (reference)" for a reference."""
    figure = "fig4_throughput_latency"
    latency, latency_label, latency_note = latency_axis(metrics, figure)
    columns = CELL + ["tokens_per_s", latency]
    references = [r for r in references if models is None or r not in models]
    if references:
        select_models(metrics, models, columns, figure)  # the figure's own models have rows
    wanted = None if models is None else list(models) + list(references)
    df = select_models(_with_mode(metrics), wanted, columns, figure)
    require_one_row_per_cell(df, figure)
    df = df.sort_values(CELL).reset_index(drop=True)
    df["ms_per_token"] = df[latency] * MS_PER_S
    df["suspect"] = suspect_flags(df)
    colours = platform_colours(df["platform"])
    markers = dict(zip(sorted(df["model"].unique()), MARKERS * 3))
    faded = set(references) & set(df["model"])
    labels = dict(labels or {})
    names = {m: labels.get(m, m + (" (reference)" if m in faded else "")) for m in markers}
    fig = new_figure(8.5 if not labels else 10.0, 5.2)
    ax = fig.subplots()
    xerr = interval_errors(df, latency, MS_PER_S)
    yerr = interval_errors(df, "tokens_per_s")
    point_labels = []
    for (platform, model, mode), d in df.groupby(["platform", "model", "mode"], sort=True):
        ax.plot(
            d["ms_per_token"],
            d["tokens_per_s"],
            color=colours[platform],
            marker=markers[model],
            ls=MODE_DASHES[mode],
            mfc=colours[platform] if mode == STATIC else "white",
            lw=REFERENCE_LW if model in faded else 1.6,
            alpha=REFERENCE_ALPHA if model in faded else 1.0,
            zorder=1.5 if model in faded else 2.0,
        )
        if xerr is not None or yerr is not None:
            idx = d.index.to_numpy()
            ax.errorbar(
                d["ms_per_token"],
                d["tokens_per_s"],
                xerr=None if xerr is None else [xerr[0][idx], xerr[1][idx]],
                yerr=None if yerr is None else [yerr[0][idx], yerr[1][idx]],
                fmt="none",
                ecolor=colours[platform],
                elinewidth=1,
                capsize=2,
            )
        for row in d.itertuples():
            point_labels.append(
                ax.annotate(
                    point_label(mode, row.batch_size),
                    (row.ms_per_token, row.tokens_per_s),
                    xytext=(4, 4),
                    textcoords="offset points",
                    fontsize="x-small",
                    alpha=REFERENCE_ALPHA if model in faded else 1.0,
                )
            )
    suspect = df[df["suspect"] != ""]
    mark_suspect(ax, suspect["ms_per_token"], suspect["tokens_per_s"])
    modes = sorted(df["mode"].unique())
    handles = _fig4_handles(colours, markers, names, faded, modes, suspect["suspect"])
    ax.legend(handles=handles, fontsize="small", **OUTSIDE_RIGHT)
    readable_axis(ax, "x", df["ms_per_token"])
    readable_axis(ax, "y", df["tokens_per_s"])
    ax.set_xlabel(latency_label)
    ax.set_ylabel("throughput (output tokens/s)")
    numbers = "batch size" if modes == [STATIC] else "batch size; cb<n>: max_num_seqs n"
    bars = "; bars: 95 % interval" if xerr is not None or yerr is not None else ""
    reference = "; faded: unquantized reference" if faded else ""
    # The legend takes about 2.5 in beside the axes (labels with weights: about 4 in).
    ax.set_title(
        wrap_to_width(
            f"{title}\n(x: {latency_note}; numbers at the points: {numbers}{bars}{reference})",
            fig.get_figwidth() - (3.0 if not labels else 4.5),
            12.0,
        ),
        fontsize="medium",
        # a top y tick label stands half its height above the axes: matplotlib's 6 pt pad let
        # it touch the title's last line (layout_problems, seen on a tiny CPU run's fig4b)
        pad=12,
        # from the axes' left edge: centred on axes that the legend and wide tick labels left
        # 3.7 in wide, the 4.95 in title began 4 px left of the canvas (a tiny CPU run, 2026-12-08)
        loc="left",
    )
    declutter(fig, point_labels)
    return fig


def _fig4_handles(colours, markers, names, faded, modes, suspect: pd.Series) -> list:
    """Figure 4's legend: platforms (colours), models (markers; references faded), the modes'
    dashes where a continuous cell is drawn, and the suspect-cell ring where `suspect` (the
    CELL-tier flags of the suspect cells) holds any."""
    handles = [Patch(color=colours[p], label=p) for p in colours]
    handles += [
        Line2D(
            [], [], color="0.3", marker=markers[m], ls="none", label=names[m],
            alpha=REFERENCE_ALPHA if m in faded else 1.0,
        )  # fmt: skip
        for m in markers
    ]
    if len(modes) > 1 or modes != [STATIC]:
        handles += [
            Line2D([], [], color="0.3", ls=MODE_DASHES[m], label=f"{m} batching") for m in modes
        ]
    if len(suspect):
        handles.append(suspect_handle(suspect))
    return handles


def smallest_static_cells(metrics: pd.DataFrame) -> pd.DataFrame:
    """Per (model, platform): its smallest static batch's row (batch 1 in the study's sweep)."""
    static = _with_mode(metrics)
    static = static[static["mode"] == STATIC]
    idx = static.groupby(["model", "platform"])["batch_size"].idxmin()
    return static.loc[idx.to_numpy()]


def _peak_label(rows: pd.DataFrame) -> str:
    """The dense peak MFU divided by, recovered from the rows themselves: mfu = flops /
    (window_s x peak), so peak = flops / (window_s x mfu); with the dtype it applies to."""
    if not {"flops", "window_s", "dtype"} <= set(rows.columns):
        return "peak: not in this table"
    peaks = []
    for r in rows.itertuples():
        if r.mfu > 0 and r.window_s > 0 and r.flops > 0:
            peak = r.flops / (r.window_s * r.mfu) / FLOPS_PER_TFLOPS
            peaks.append(f"{peak:,.4g} TFLOPS {r.dtype}")
    return "peak " + ", ".join(sorted(set(peaks))) if peaks else "peak unknown (MFU 0)"


@themed
def fig5_mfu_batch1(metrics: pd.DataFrame, *, cells: pd.DataFrame | None = None) -> Figure:
    """Model FLOPs utilisation (%) at batch 1 (each pair's smallest static batch where batch 1
    was not measured, and then the title says so), one bar per (model, platform). The legend
    names each platform with its device (the cells table's device_name, when given) and the dense
    peak FLOP/s MFU divides by."""
    figure = "fig5_mfu_batch1"
    require_columns(metrics, ["platform", "model", "batch_size", "mfu"], figure)
    require_rows(metrics, figure, "in the metrics table")
    df = smallest_static_cells(metrics).copy()
    if df.empty:
        raise InputError(f"{figure}: no static cells in the metrics table; MFU at batch 1 needs one")
    require_one_row_per_cell(df, figure)
    df["mfu_pct"] = df["mfu"] * PCT_PER_FRACTION
    df = df.sort_values(["model", "platform"])
    names = {}
    for platform, rows in df.groupby("platform"):
        device = None
        if cells is not None and "device_name" in cells.columns:
            device = one_value(cells[cells["platform"] == platform], "device_name")
        names[platform] = f"{platform}" + (f"\n{device}" if device else "") + f"\n{_peak_label(rows)}"
    df["platform (device, peak)"] = df["platform"].map(names)
    batches = sorted(df["batch_size"].unique())
    fig = new_figure(max(9.0, 5.5 + 1.0 * len(df)), 5.0)
    ax = fig.subplots()
    sns.barplot(
        df,
        x="model",
        y="mfu_pct",
        hue="platform (device, peak)",
        hue_order=[names[p] for p in sorted(names)],
        palette=[platform_colours(df["platform"])[p] for p in sorted(names)],
        errorbar=None,
        ax=ax,
    )
    for bars in ax.containers:
        ax.bar_label(bars, fmt="{:.2f}", fontsize="x-small", padding=2)
    ax.axhline(STUDY_MFU_BATCH1_PCT, color="0.3", ls="--", lw=1, label="study at batch 1: ~2 %")
    ax.legend(title="platform, device, dense peak", fontsize="small", **OUTSIDE_RIGHT)
    ax.margins(y=0.15)
    ax.set_xlabel("model")
    ax.set_ylabel("model FLOPs utilisation, MFU (%)")
    at = "batch 1" if batches == [1] else f"the smallest measured batch ({', '.join(map(str, batches))})"
    ax.set_title(f"MFU at {at}\n(bar labels in %; MFU = model FLOPs / (time x dense peak))")
    return fig


@themed
def fig6_power_over_time(
    power: pd.DataFrame,
    *,
    models: Sequence[str] | None = None,
    title: str = "Power over time",
    batches: pd.DataFrame | None = None,
) -> Figure:
    """Raw power (W) of each cell vs time since its first run sample (aggregated POWER table,
    tables.with_cell_keys(POWER)); measured idle samples, taken just before, fall at t < 0 on a
    grey band. Modeled power (CPU: TDP x the process's utilisation) has no idle reading, so its
    idle samples are not drawn. One panel per (model, platform), one line per cell (and device).
    With `batches` (aggregated BATCHES), each measured window's start is ticked at the bottom in
    its cell's colour: the dips between them are the host's set-up of the next batch."""
    figure = "fig6_power_over_time"
    columns = CELL + ["t_wall_ns", "phase", "modeled", "device_index", "power_w"]
    df = select_models(_with_mode(power), models, columns, figure)[columns].copy()
    start_ns = df[df["phase"] == "run"].groupby(CELL)["t_wall_ns"].min().rename("start_ns")
    df = df.join(start_ns, on=CELL)
    no_run = df[df["start_ns"].isna()]
    if not no_run.empty:
        cell = no_run.iloc[0]
        raise InputError(
            f"{figure}: cell (platform={cell['platform']}, model={cell['model']}, mode="
            f"{cell['mode']}, batch_size={cell['batch_size']}) has no samples with phase 'run'; "
            "rerun that cell"
        )
    df["t_s"] = (df["t_wall_ns"] - df["start_ns"]) / NS_PER_S
    df["cell"] = [point_label(m, b) for m, b in zip(df["mode"], df["batch_size"])]
    # One colour per cell label across all panels (static batch sizes first, then cb<n>), so one
    # legend below the panels serves them all and covers no data.
    keys = df[["mode", "batch_size", "cell"]].drop_duplicates()
    keys = keys.assign(static_first=keys["mode"] != STATIC).sort_values(["static_first", "batch_size"])
    order = list(keys["cell"])
    palette = dict(zip(order, sns.color_palette("viridis", len(order))))
    panels = sorted(df.groupby(["model", "platform"]).groups)
    ncols = min(2, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = new_figure(6.5 * ncols, 4.2 * nrows + 1.0)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    any_modeled = False
    for ax, (model, platform) in zip(axes, panels):
        d = df[(df["model"] == model) & (df["platform"] == platform)]
        modeled = bool(d["modeled"].any())
        any_modeled |= modeled
        if modeled:
            d = d[d["phase"] == "run"]
        d = d.sort_values(["mode", "batch_size", "device_index", "t_wall_ns"])
        t_idle_s = d.loc[d["phase"] == "idle", "t_s"]
        if not t_idle_s.empty:
            ax.axvspan(t_idle_s.min(), 0, color="0.9", zorder=0)
            ax.text(t_idle_s.min(), 0.98, " idle", transform=ax.get_xaxis_transform(), va="top")
        sns.lineplot(
            d,
            x="t_s",
            y="power_w",
            hue="cell",
            hue_order=[c for c in order if c in set(d["cell"])],
            palette=palette,
            units="device_index",
            estimator=None,
            sort=False,
            lw=1.0,
            legend=False,
            ax=ax,
        )
        ax.set_ylim(bottom=0)
        if batches is not None:
            _tick_batch_starts(ax, batches, d, model, platform, palette)
        ax.set_xlabel("time since cell start (s)")
        ax.set_ylabel("power (W)")
        ax.set_title(f"{model} on {platform}" + (" (modeled power, not a reading)" if modeled else ""))
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    legend_title = "batch size" if set(df["mode"]) == {STATIC} else "batch size / cb<max_num_seqs>"
    fig.legend(
        handles=[Line2D([], [], color=palette[c], lw=2) for c in order],
        labels=order,
        title=legend_title + (" (modeled)" if any_modeled else ""),
        loc="outside lower center",
        ncols=min(len(order), 8),
        fontsize="small",
    )
    fig.suptitle(title)
    return fig


def _tick_batch_starts(ax, batches, panel, model, platform, palette) -> None:
    """A short tick at the bottom of the panel at each measured window's start, per cell."""
    b = _with_mode(batches)
    b = b[(b["model"] == model) & (b["platform"] == platform)]
    starts = panel.drop_duplicates(["mode", "batch_size"]).set_index(["mode", "batch_size"])["start_ns"]
    for (mode, batch_size), windows in b.groupby(["mode", "batch_size"]):
        if (mode, batch_size) not in starts.index:
            continue
        t_s = (windows["start_wall_ns"] - starts[(mode, batch_size)]) / NS_PER_S
        ax.plot(
            t_s,
            [0.015] * len(t_s),
            ls="none",
            marker="|",
            ms=8,
            color=palette[point_label(mode, batch_size)],
            transform=ax.get_xaxis_transform(),
        )


def batch1_vs_max(metrics: pd.DataFrame, figure: str) -> pd.DataFrame:
    """Per (model, platform) with at least two static batch sizes: its smallest batch's row (batch
    1 in the study's sweep) and its largest's, as columns suffixed _1 and _max (batch_size_1,
    batch_size_max, g_per_token_1, ...). Pairs measured at one batch size only are left out."""
    require_columns(metrics, ["platform", "model", "batch_size"], figure)
    require_rows(metrics, figure, "in the metrics table")
    metrics = _with_mode(metrics)
    require_one_row_per_cell(metrics, figure)
    static = metrics[metrics["mode"] == STATIC]
    rows = []
    for (model, platform), cells in static.groupby(["model", "platform"], sort=True):
        if cells["batch_size"].nunique() < 2:
            continue
        one = cells.loc[cells["batch_size"].idxmin()]
        top = cells.loc[cells["batch_size"].idxmax()]
        rows.append(
            {"model": model, "platform": platform}
            | {f"{k}_1": v for k, v in one.items() if k not in ("model", "platform")}
            | {f"{k}_max": v for k, v in top.items() if k not in ("model", "platform")}
        )
    return pd.DataFrame(rows)


def ratio_interval(pairs: pd.DataFrame, value: str, smaller_over_larger: bool) -> pd.DataFrame:
    """A conservative interval for the ratio of a pair's two cells from each cell's 95 % interval:
    [low_a / high_b, high_a / low_b] for a / b, where a is batch 1's value (smaller_over_larger)
    or the largest batch's. Both cells inside their 95 % intervals has probability >= 90 %
    (Bonferroni), so the ratio lies inside with at least that probability. NaN where either cell
    has no interval or ran once."""
    low, high = interval_columns(value)
    a, b = ("1", "max") if smaller_over_larger else ("max", "1")
    needed = [f"{c}_{s}" for c in (low, high, "n_repeats") for s in ("1", "max")]
    if not all(c in pairs.columns for c in needed):
        return pd.DataFrame({"low": np.nan, "high": np.nan}, index=pairs.index)
    repeated = (pairs["n_repeats_1"] > 1) & (pairs["n_repeats_max"] > 1)
    out = pd.DataFrame(
        {
            "low": pairs[f"{low}_{a}"] / pairs[f"{high}_{b}"],
            "high": pairs[f"{high}_{a}"] / pairs[f"{low}_{b}"],
        }
    )
    return out.where(repeated)


@themed
def fig7_carbon_per_token(
    metrics: pd.DataFrame,
    *,
    title: str = "What batching buys and what it costs",
) -> Figure:
    """Per (model, platform), on a linear axis: the carbon-per-token ratio smallest batch / largest
    batch (operational carbon per output token) beside the latency-per-token ratio largest /
    smallest (the study's batch latency per token, s_per_token_user: batch time / tokens, no
    queueing, the measure the study's ~2x is in; static cells only, so no mixed definitions),
    the study's ~11x and ~2x dashed. Tick labels give the batch
    sizes and both mgCO2e/token values; the subtitle the grid intensity and PUE; "(modeled)" marks
    pairs whose energy is modeled. Error bars: conservative intervals from the cells' 95 %
    intervals (ratio_interval), where the table has them."""
    figure = "fig7_carbon_per_token"
    require_columns(metrics, ["platform", "model", "batch_size", "g_per_token", "s_per_token_user"], figure)
    pairs = batch1_vs_max(metrics, figure)
    # Each pair's tick label is four lines; its longest line sets the room the pair needs.
    longest = max((len(line) for p in _pair_labels(pairs) for line in p.split("\n")), default=10)
    # ~0.1 in per character of an 11 pt tick label; 4.5 in for the y axis and the legend beside.
    fig = new_figure(max(8.0, max(len(pairs), 1) * max(1.9, 0.1 * longest + 0.3) + 4.5), 5.6)
    ax = fig.subplots()
    if pairs.empty:
        ax.text(
            0.5,
            0.5,
            "no model and platform has two static batch sizes measured:\nno ratio to draw",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
        ax.set_axis_off()
        fig.suptitle(title)
        return fig
    pairs["carbon_ratio"] = pairs["g_per_token_1"] / pairs["g_per_token_max"]
    pairs["latency_ratio"] = pairs["s_per_token_user_max"] / pairs["s_per_token_user_1"]
    pairs["pair"] = _pair_labels(pairs)
    carbon_name = "carbon per token: smallest / largest batch"
    latency_name = "the study's batch latency per token: largest / smallest batch"
    bars = pd.concat(
        [
            pd.DataFrame({"pair": pairs["pair"], "ratio": carbon_name, "x": pairs["carbon_ratio"]}),
            pd.DataFrame({"pair": pairs["pair"], "ratio": latency_name, "x": pairs["latency_ratio"]}),
        ],
        ignore_index=True,
    )
    colours = sns.color_palette("colorblind", 2)
    sns.barplot(
        bars,
        x="pair",
        y="x",
        hue="ratio",
        order=list(pairs["pair"]),
        hue_order=[carbon_name, latency_name],
        palette=colours,
        errorbar=None,
        ax=ax,
    )
    intervals = [
        ratio_interval(pairs, "g_per_token", smaller_over_larger=True),
        ratio_interval(pairs, "s_per_token_user", smaller_over_larger=False),
    ]
    has_bars = False
    for container, ratio, interval in zip(ax.containers, ("carbon_ratio", "latency_ratio"), intervals):
        ax.bar_label(container, labels=[f"{v:.1f}x" for v in pairs[ratio]], fontsize="small", padding=2)
        ok = interval["low"].notna() & interval["high"].notna()
        if ok.any():
            has_bars = True
            xs = [b.get_x() + b.get_width() / 2 for b, k in zip(container, ok) if k]
            ax.errorbar(
                xs,
                pairs.loc[ok, ratio],
                yerr=[
                    (pairs.loc[ok, ratio] - interval.loc[ok, "low"]).clip(lower=0),
                    (interval.loc[ok, "high"] - pairs.loc[ok, ratio]).clip(lower=0),
                ],
                fmt="none",
                ecolor="0.2",
                capsize=3,
            )
    ax.axhline(STUDY_CARBON_RATIO, color=colours[0], ls="--", lw=1, label="study: ~11x carbon")
    ax.axhline(STUDY_LATENCY_RATIO, color=colours[1], ls="--", lw=1, label="study: ~2x latency")
    ax.axhline(1.0, color="0.3", lw=0.8)
    ax.set_ylim(0, max(STUDY_CARBON_RATIO, bars["x"].max()) * 1.15)
    ax.legend(fontsize="small", **OUTSIDE_RIGHT)
    ax.set_xlabel("")
    ax.set_ylabel("ratio (x)")
    # Across the figure, not the axes: the legend beside the axes leaves them narrower than the text.
    text = f"{title}\n{_carbon_basis(metrics)}" + ("; bars: >= 90 % intervals" if has_bars else "")
    fig.suptitle(wrap_to_width(text, fig.get_figwidth() - 0.3, 12.0), fontsize="medium")
    return fig


def _pair_modeled(pairs: pd.DataFrame) -> pd.Series:
    if "energy_method_1" not in pairs.columns:
        return pd.Series(False, index=pairs.index)
    return (pairs["energy_method_1"] == "modeled") | (pairs["energy_method_max"] == "modeled")


def _pair_labels(pairs: pd.DataFrame) -> list[str]:
    """fig7's tick label of each pair: model, platform (modeled), batch sizes, mgCO2e/token."""
    if pairs.empty:
        return []
    return [
        f"{r.model}\n{r.platform}{' (modeled)' if m else ''}\nbs {r.batch_size_1} → "
        f"{r.batch_size_max}\n{r.g_per_token_1 * MG_PER_G:.3g} → {r.g_per_token_max * MG_PER_G:.3g} mg"
        for r, m in zip(pairs.itertuples(), _pair_modeled(pairs))
    ]


def _carbon_basis(metrics: pd.DataFrame) -> str:
    """The subtitle of a carbon figure: intensity and PUE the carbon was computed with, and
    whether any energy is modeled."""
    parts = []
    if "intensity_g_per_kwh" in metrics.columns:
        values = metrics["intensity_g_per_kwh"].dropna()
        if len(values) and values.max() - values.min() <= 1e-9 * max(values.max(), 1.0):
            parts.append(f"{values.iloc[0]:g} gCO2/kWh")
        elif len(values):
            parts.append(f"{values.min():.0f}-{values.max():.0f} gCO2/kWh (hourly trace)")
    if "pue" in metrics.columns:
        pue = metrics["pue"].dropna().unique()
        parts.append("PUE " + "/".join(f"{p:g}" for p in sorted(pue)))
    text = "operational carbon at " + ", ".join(parts) if parts else "operational carbon"
    if energy_is_modeled(metrics):
        text += "; energy (modeled) where marked"
    return text

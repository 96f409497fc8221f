"""Carbon analysis beyond the study's figures: every cell's carbon per token against its latency per
token (static batches and continuous batching on one plot), their Pareto front, the operating
point recommended under each latency SLO, and the time-shift what-if drawn on the day's intensity."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from tokencarbon.errors import InputError
from tokencarbon.figures.common import (
    MG_PER_G,
    MS_PER_S,
    energy_text,
    mark_suspect,
    new_figure,
    suspect_flags,
    suspect_handle,
    wrap_to_width,
    readable_axis,
    require_columns,
    require_one_row_per_cell,
    require_rows,
    themed,
)
from tokencarbon.figures.inputs import CONTINUOUS, STATIC, interval_errors, latency_axis
from tokencarbon.figures.layout import declutter
from tokencarbon.figures.measured import _carbon_basis, point_label

CARBON = "g_per_token"  # operational carbon per output token (g)
# Latency: inputs.latency_axis (E2E latency per output token, the one both modes share).


def _with_mode(df: pd.DataFrame) -> pd.DataFrame:
    return df if "mode" in df.columns else df.assign(mode=STATIC)


def pareto_mask(latency_s: Sequence[float], carbon_g: Sequence[float]) -> np.ndarray:
    """True for the points no other point dominates, where a point dominates another when it is at
    least as good on both (lower latency, lower carbon) and better on one. NaN points are never on
    the front. Shape: (n,) bool for n points."""
    lat = np.asarray(latency_s, dtype=float)
    g = np.asarray(carbon_g, dtype=float)
    ok = np.isfinite(lat) & np.isfinite(g)
    front = np.zeros(len(lat), dtype=bool)
    for i in np.flatnonzero(ok):
        others = ok & (lat <= lat[i]) & (g <= g[i]) & ((lat < lat[i]) | (g < g[i]))
        front[i] = not others.any()
    return front


def carbon_optimal_points(metrics: pd.DataFrame, slos_s_per_token: Sequence[float]) -> pd.DataFrame:
    """Per (model, platform) and latency SLO (s/token): the cell, static batch or continuous
    max_num_seqs, with the least carbon per token (g_per_token) among those whose E2E latency per
    output token (inputs.latency_axis) meets the SLO (<=). Columns: model, platform,
    slo_s_per_token, mode, batch_size (<NA> where no cell meets the SLO), g_per_token,
    latency_s_per_token (the chosen cell's latency), latency_column (the METRICS column it is).
    Ties on carbon go to the lower latency. The chosen cell always lies on the Pareto front
    (pareto_mask). Raises SchemaError as latency_axis does."""
    metrics = _with_mode(metrics)
    latency = latency_axis(metrics, "carbon_optimal_points")[0]
    require_columns(metrics, ["platform", "model", "batch_size", CARBON, latency], "carbon_optimal_points")
    rows = []
    for (model, platform), cells in metrics.groupby(["model", "platform"], sort=True):
        for slo in slos_s_per_token:
            ok = cells[cells[latency] <= slo].dropna(subset=[CARBON])
            best = ok.sort_values([CARBON, latency]).iloc[0] if len(ok) else None
            rows.append(
                {
                    "model": model,
                    "platform": platform,
                    "slo_s_per_token": float(slo),
                    "mode": None if best is None else best["mode"],
                    "batch_size": pd.NA if best is None else int(best["batch_size"]),
                    CARBON: math.nan if best is None else float(best[CARBON]),
                    "latency_s_per_token": math.nan if best is None else float(best[latency]),
                    "latency_column": latency,
                }
            )
    columns = ["model", "platform", "slo_s_per_token", "mode", "batch_size", CARBON,
               "latency_s_per_token", "latency_column"]  # fmt: skip
    return pd.DataFrame(rows, columns=columns).astype({"batch_size": "Int64"})


MODE_STYLE = {
    STATIC: {"marker": "o", "label": "static batches (batch size)"},
    CONTINUOUS: {"marker": "s", "label": "continuous batching (cb<max_num_seqs>)"},
}


@themed
def pareto_carbon_latency(metrics: pd.DataFrame, slos_s_per_token: Sequence[float] = ()) -> Figure:
    """One panel per (model, platform): every cell's operational carbon per output token (mgCO2e)
    against its E2E latency per output token (ms; inputs.latency_axis, the one definition both
    modes share), static batches (circles) and continuous-batching cells (squares) each joined
    in batch order, the Pareto front (cells no other beats on both) as a grey step line, each
    latency SLO dotted and the cell recommended under it (least carbon meeting it:
    carbon_optimal_points) starred; suspect cells (a CELL-tier QA flag, tokencarbon.qa) ringed in
    red. Error bars: bootstrap 95 % intervals where the table has them."""
    figure = "pareto_carbon_latency"
    df = _with_mode(metrics)
    latency, latency_label, latency_note = latency_axis(df, figure)
    require_columns(df, ["platform", "model", "batch_size", CARBON, latency], figure)
    require_rows(df, figure, "in the metrics table")
    require_one_row_per_cell(df, figure)
    df = df.sort_values(["model", "platform", "mode", "batch_size"]).reset_index(drop=True)
    df["ms"] = df[latency] * MS_PER_S
    df["mg"] = df[CARBON] * MG_PER_G
    df["suspect"] = suspect_flags(df)
    xerr = interval_errors(df, latency, MS_PER_S)
    yerr = interval_errors(df, CARBON, MG_PER_G)
    best = carbon_optimal_points(df, slos_s_per_token)
    panels = sorted(df.groupby(["model", "platform"]).groups)
    ncols = min(2, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = new_figure(max(7.5, 6.8 * ncols), 4.6 * nrows + 1.2)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    colours = dict(zip((STATIC, CONTINUOUS), sns.color_palette("colorblind", 2)))
    labels = []
    for ax, (model, platform) in zip(axes, panels):
        d = df[(df["model"] == model) & (df["platform"] == platform)]
        front = d[pareto_mask(d["ms"], d["mg"])].sort_values("ms")
        if len(front):
            ax.plot(front["ms"], front["mg"], drawstyle="steps-post", color="0.6", lw=5, alpha=0.4, zorder=1)
        for mode, m in d.groupby("mode"):
            ax.plot(m["ms"], m["mg"], color=colours[mode], marker=MODE_STYLE[mode]["marker"], lw=1.4, zorder=3)
            if xerr is not None or yerr is not None:
                idx = m.index.to_numpy()
                ax.errorbar(
                    m["ms"],
                    m["mg"],
                    xerr=None if xerr is None else [xerr[0][idx], xerr[1][idx]],
                    yerr=None if yerr is None else [yerr[0][idx], yerr[1][idx]],
                    fmt="none",
                    ecolor=colours[mode],
                    capsize=2,
                    zorder=2,
                )
        suspect = d[d["suspect"] != ""]
        mark_suspect(ax, suspect["ms"], suspect["mg"])
        readable_axis(ax, "x", d["ms"])
        readable_axis(ax, "y", d["mg"])
        ax.margins(x=0.08, y=0.12)
        x0, x1 = ax.get_xlim()
        b = best[(best["model"] == model) & (best["platform"] == platform)]
        chosen_slos = {
            key: ", ".join(f"{s * MS_PER_S:g}" for s in c["slo_s_per_token"])
            for key, c in b.dropna(subset=["batch_size"]).groupby(["mode", "batch_size"])
        }
        beyond = []
        for slo in sorted(set(b["slo_s_per_token"])):
            slo_ms = slo * MS_PER_S
            if x0 <= slo_ms <= x1:
                ax.axvline(slo_ms, color="0.35", ls=":", lw=1.2, zorder=0)
            elif slo_ms > x1:
                beyond.append(f"{slo_ms:g}")
        for r in d.itertuples():
            key = (r.mode, r.batch_size)
            text = point_label(r.mode, r.batch_size)
            if key in chosen_slos:
                ax.plot(r.ms, r.mg, marker="*", ms=16, color="gold", mec="0.2", ls="none", zorder=4)
                text += f": best at SLO {chosen_slos[key]} ms"
            # Labels of points in the right part of the panel extend leftwards, inside the axes.
            right = ax.transAxes.inverted().transform(ax.transData.transform((r.ms, r.mg)))[0] > 0.6
            labels.append(
                ax.annotate(
                    text,
                    (r.ms, r.mg),
                    xytext=(-6 if right else 6, 5),
                    textcoords="offset points",
                    ha="right" if right else "left",
                    fontsize="x-small",
                    bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.8},
                    zorder=5,
                )
            )
        unmet = [f"{s * MS_PER_S:g}" for s in b.loc[b["batch_size"].isna(), "slo_s_per_token"]]
        notes = []
        if unmet:
            notes.append(f"no cell meets SLO {', '.join(unmet)} ms")
        if beyond:
            notes.append(f"SLO {', '.join(beyond)} ms right of the axis")
        if notes:
            ax.text(0.01, 0.02, "; ".join(notes), transform=ax.transAxes, fontsize="x-small", va="bottom")
        ax.set_xlabel(latency_label)
        ax.set_ylabel("carbon per token (mgCO2e)")
        ax.set_title(f"{model} on {platform}", fontsize="medium")
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    handles = _pareto_handles(df, colours)
    # Three legend columns need two panels' width; one panel takes two.
    fig.legend(handles=handles, loc="outside lower center", ncols=3 if ncols > 1 else 2, fontsize="small")
    bars = "; bars: 95 % intervals" if xerr is not None or yerr is not None else ""
    title = (f"Carbon per token vs E2E latency per token, every cell\n{_carbon_basis(df)}{bars}"
             f"\nx: {latency_note}")
    fig.suptitle(wrap_to_width(title, fig.get_figwidth() - 0.3, 14.4))  # "large" in the theme
    if not panels:
        raise InputError(f"{figure}: no (model, platform) to draw")
    declutter(fig, labels)
    return fig


def _pareto_handles(df: pd.DataFrame, colours: dict) -> list[Line2D]:
    """The Pareto figure's legend: each mode drawn, the front, the SLO line, the star, and the
    suspect-cell ring where a cell is suspect (df["suspect"]: its CELL-tier flags)."""
    handles = [
        Line2D([], [], color=colours[m], marker=MODE_STYLE[m]["marker"], label=MODE_STYLE[m]["label"])
        for m in (STATIC, CONTINUOUS)
        if m in set(df["mode"])
    ]
    handles += [
        Line2D([], [], color="0.6", lw=5, alpha=0.4, label="Pareto front"),
        Line2D([], [], color="0.35", ls=":", label="latency SLO"),
        Line2D([], [], marker="*", ms=12, color="gold", mec="0.2", ls="none", label="least carbon meeting the SLO"),
    ]
    if (df["suspect"] != "").any():
        handles.append(suspect_handle(df.loc[df["suspect"] != "", "suspect"]))
    return handles


# ------------------------------------------------------------------ the time-shift what-if

PLACEMENTS = (  # (TIMESHIFT flag, label, colour index in the colorblind palette)
    ("is_actual", "actual start", 3),
    ("is_oracle_best", "best start (oracle: perfect foresight)", 2),
    ("is_policy", "previous day's best hour (forecast-free)", 0),
)
NS_PER_HOUR = 3600 * 10**9


def _hour_of_day(start_wall_ns: pd.Series, day_start_ns: int) -> pd.Series:
    return (start_wall_ns - day_start_ns) / NS_PER_HOUR


@themed
def timeshift_day(timeshift: pd.DataFrame, intensity_g_per_kwh: pd.Series) -> Figure:
    """Figure 6a's day with the job placed on it: top, the day's hourly grid intensity (gCO2/kWh,
    carbon.intensity_for_day) with the job's span at its actual start, at the day's best start
    (oracle) and at the forecast-free policy's start; below, the job's operational carbon had it
    started at each hour (TIMESHIFT rows, tokencarbon.timeshift), the three starts marked and the
    savings against the actual start written beside them. Location-based intensity only."""
    figure = "timeshift_day"
    columns = ["job", "zone_id", "basis", "day", "start_wall_ns", "duration_s", "carbon_g",
               "saving_vs_actual_g", "is_actual", "is_oracle_best", "is_policy"]  # fmt: skip
    require_columns(timeshift, columns, figure)
    require_rows(timeshift, figure, "in the time-shift table")
    jobs = sorted(timeshift["job"].unique())
    if len(jobs) != 1:
        raise InputError(f"{figure}: the time-shift table holds jobs {jobs}; draw one at a time")
    for flag, _, _ in PLACEMENTS:
        if timeshift[flag].sum() != 1:
            raise InputError(f"{figure}: {timeshift[flag].sum()} rows have {flag}; exactly one must")
    values = intensity_g_per_kwh.dropna()
    if values.empty:
        raise InputError(f"{figure}: the intensity series of the day has no values")
    first = timeshift.iloc[0]
    day_ns = int(pd.Timestamp(first["day"], tz="UTC").value)
    df = timeshift.assign(hour=_hour_of_day(timeshift["start_wall_ns"], day_ns))
    duration_h = float(first["duration_s"]) / 3600.0
    scale, unit = (MG_PER_G, "mgCO2e") if df["carbon_g"].max() < 1.0 else (1.0, "gCO2e")
    palette = sns.color_palette("colorblind", 4)
    fig = new_figure(9.5, 7.0)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[1.0, 1.2])
    hours = [float(h) for h in values.index]
    top.plot(hours + [hours[-1] + 1], list(values) + [values.iloc[-1]], drawstyle="steps-post", color="0.2")
    top.set_ylabel("intensity (gCO2/kWh)")
    # Spans narrower than a few minutes would vanish: drawn at least 5 minutes wide.
    width_h = max(duration_h, 5 / 60)
    for i, (flag, label, colour) in enumerate(PLACEMENTS):
        row = df[df[flag]].iloc[0]
        top.axvspan(row["hour"], row["hour"] + width_h, color=palette[colour], alpha=0.35, lw=0)
        top.axvline(row["hour"], color=palette[colour], lw=1.5)
    on_hour = df[(df["start_wall_ns"] - day_ns) % NS_PER_HOUR == 0]
    bottom.plot(on_hour["hour"], on_hour["carbon_g"] * scale, marker="o", ms=4, color="0.45", lw=1)
    handles = []
    for flag, label, colour in PLACEMENTS:
        row = df[df[flag]].iloc[0]
        saving = float(row["saving_vs_actual_g"])
        actual_g = float(df.loc[df["is_actual"], "carbon_g"].iloc[0])
        hhmm = pd.Timestamp(int(row["start_wall_ns"]), unit="ns", tz="UTC").strftime("%H:%M")
        text = f"{label}, {hhmm}: {row['carbon_g'] * scale:.3g} {unit}"
        if flag != "is_actual":
            pct = saving / actual_g if actual_g > 0 else math.nan
            text += f", saves {saving * scale:.3g} {unit} ({pct:.1%})"
        bottom.plot(row["hour"], row["carbon_g"] * scale, marker="D", ms=9, ls="none", color=palette[colour], mec="0.2")
        handles.append(Line2D([], [], marker="D", ls="none", color=palette[colour], mec="0.2", label=text))
    bottom.set_ylabel(f"job's operational carbon ({unit})")
    bottom.set_xlabel("start hour of day (UTC)")
    bottom.set_xlim(0, 24)
    bottom.set_xticks(range(0, 25, 3))
    fig.legend(handles=handles, loc="outside lower center", fontsize="small", ncols=1)
    zone, basis = first["zone_id"], first["basis"]
    title = (
        f"When would the job ({first['job']}: {first['duration_s'] / 60:.3g} min, "
        f"{energy_text(timeshift['energy_j'].iloc[0])}) have emitted least?\n"
        f"{zone}, {first['day']} (UTC), {basis} intensity, location-based"
    )
    fig.suptitle(wrap_to_width(title, fig.get_figwidth() - 0.3, 12.0), fontsize="medium")
    return fig

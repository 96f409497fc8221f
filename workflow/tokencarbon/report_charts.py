"""The study report's interactive charts (tokencarbon.report), drawn with plotly: one point per
cell, its hover text naming the cell, its values with their bootstrap intervals and its QA flags;
the carbon-latency chart carries a latency-SLO slider (plotly's own slider, no hand-written
script) that fades the cells over the SLO and stars, per model and platform, the one with the
least carbon per token among those meeting it; the energy-latency chart carries an energy-budget
slider (J/token, as ML.ENERGY's leaderboard has one) that fades the cells over the budget and
stars, per model and platform, the fastest (lowest latency per token) among those within it.

Every chart is an SVG scatter (not WebGL), so a browser's DOM holds one `path.point` per cell;
cell traces carry meta "cells", the SLO's stars meta "optimum", the budget's stars meta "fastest"
(tests/test_report.py counts them).
"""

from __future__ import annotations

import html
from collections.abc import Sequence

import pandas as pd
import plotly.graph_objects as go

from tokencarbon import qa
from tokencarbon.figures.inputs import latency_axis
from tokencarbon.layout import STATIC, CellKey

CELLS_META = "cells"
OPTIMUM_META = "optimum"
FASTEST_META = "fastest"
MODE_SYMBOL = {STATIC: "circle"}  # continuous (and any later mode): square
SUSPECT_LINE = {"color": "#d62728", "width": 2.5}  # outline of a point carrying a cell flag
LOG_SPAN = 20.0  # an axis whose values span more than this factor is drawn logarithmic
MAX_SLO_STEPS = 60
FADED = 0.2
# (column, scale to the shown unit, unit, label) of the values a hover names
VALUES = {
    "g_per_token": (1e3, "mgCO2e/token", "carbon"),
    "e2e_s_per_token": (1e3, "ms/token", "E2E latency per output token"),
    "s_per_token_user": (1e3, "ms/token", "the study's batch latency per token"),
    "j_per_token": (1.0, "J/token", "energy"),
    "tokens_per_s": (1.0, "tokens/s", "throughput"),
}
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf")  # fmt: skip


def cell_name(row: pd.Series) -> str:
    """The cell's name, <platform>/<model>/<bs|cb><n> (tokencarbon.layout.CellKey)."""
    return CellKey.of(row).name


def study_flags(metrics: pd.DataFrame) -> list[str]:
    """The study-tier QA flags (tokencarbon.qa: what holds of the machine, not of a cell) any
    cell carries, said once for the study as summary.md says them; a cell-tier flag marks its
    cell's point (outlined red) and its hover."""
    return list(qa.study_flag_counts(metrics.get("qa_flags", pd.Series([], dtype=object))))


def _fmt(value: float) -> str:
    return "n/a" if value is None or pd.isna(value) else f"{value:.3g}"


def _interval(row: pd.Series, column: str, scale: float) -> str:
    low, high = row.get(f"{column}_ci_low"), row.get(f"{column}_ci_high")
    if low is None or high is None or pd.isna(low) or pd.isna(high):
        return ""
    return f" [{low * scale:.3g}, {high * scale:.3g}]"


def hover_text(row: pd.Series, common: Sequence[str] = ()) -> str:
    """A cell's hover: its name, mode and n, each value with its 95 % interval over repeats (where
    it was repeated), energy method, and its QA flags (those every cell carries marked so)."""
    mode = str(row.get("mode") or STATIC)
    what = "static batch" if mode == STATIC else f"{mode} batching, max_num_seqs"
    lines = [f"<b>{html.escape(cell_name(row))}</b>", f"{what} {int(row['batch_size'])}"]
    for column, (scale, unit, label) in VALUES.items():
        if column in row.index:
            lines.append(f"{label}: {_fmt(row[column] * scale)} {unit}{_interval(row, column, scale)}")
    if "mfu" in row.index:
        lines.append(f"MFU: {_fmt(row['mfu'] * 100)} %")
    lines.append(f"energy method: {html.escape(str(row.get('energy_method', 'n/a')))}")
    flags = qa.split(row.get("qa_flags"))
    own = [f for f in flags if f not in common]
    lines.append("flags: " + ("; ".join(own) if own else "none of its own"))
    if common:
        lines.append("study-wide flags: " + "; ".join(f for f in flags if f in common))
    return "<br>".join(lines)


def _errors(df: pd.DataFrame, column: str, scale: float) -> dict | None:
    low, high = f"{column}_ci_low", f"{column}_ci_high"
    if low not in df.columns or high not in df.columns or df[[low, high]].isna().all().all():
        return None
    value = df[column] * scale
    return {"type": "data", "symmetric": False, "array": (df[high] * scale - value).tolist(),
            "arrayminus": (value - df[low] * scale).tolist(), "thickness": 1}  # fmt: skip


def groups(metrics: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """The cells by (model, platform, mode), each sorted by batch size, with the group's label."""
    mode = metrics["mode"].fillna(STATIC) if "mode" in metrics.columns else STATIC
    df = metrics.assign(mode=mode)
    out = []
    for (model, platform, mode), cells in df.groupby(["model", "platform", "mode"], sort=True):
        out.append((f"{model} on {platform}, {mode}", cells.sort_values("batch_size")))
    return out


def _axis(values: pd.Series, title: str) -> dict:
    finite = values[(values > 0) & values.notna()]
    wide = len(finite) > 1 and finite.max() / finite.min() > LOG_SPAN
    return {"title": {"text": title}, "type": "log" if wide else "linear", "zeroline": False}


def cell_traces(metrics: pd.DataFrame, x: str, y: str, x_scale: float = 1.0,
                y_scale: float = 1.0) -> list[go.Scatter]:  # fmt: skip
    """One line-and-marker trace per (model, platform, mode), a point per cell in batch order (a
    colour per model and platform; static: solid, circles; continuous: dotted, squares), error
    bars from the cells' intervals, hover from hover_text, points carrying a cell-tier QA flag
    (tokencarbon.qa: a suspect cell, as the figures ring it) outlined red."""
    common = study_flags(metrics)
    pairs = sorted(set(zip(metrics["model"], metrics["platform"])))
    traces = []
    for label, cells in groups(metrics):
        mode = cells["mode"].iloc[0]
        color = PALETTE[pairs.index((cells["model"].iloc[0], cells["platform"].iloc[0])) % len(PALETTE)]
        suspect = [bool(qa.cell_flags(f)) for f in cells["qa_flags"]]
        traces.append(go.Scatter(
            x=(cells[x] * x_scale).tolist(), y=(cells[y] * y_scale).tolist(), name=label,
            mode="lines+markers", meta=CELLS_META,
            line={"color": color, "dash": "solid" if mode == STATIC else "dot"},
            marker={"symbol": MODE_SYMBOL.get(mode, "square"), "size": 10,
                    "color": color,
                    "line": {"color": [SUSPECT_LINE["color"] if s else "white" for s in suspect],
                             "width": [SUSPECT_LINE["width"] if s else 1 for s in suspect]}},
            error_x=_errors(cells, x, x_scale), error_y=_errors(cells, y, y_scale),
            hovertext=[hover_text(r, common) for _, r in cells.iterrows()],
            hovertemplate="%{hovertext}<extra></extra>",
        ))  # fmt: skip
    return traces


def _layout(title: str, x_axis: dict, y_axis: dict) -> dict:
    return {"title": {"text": title}, "xaxis": x_axis, "yaxis": y_axis, "hovermode": "closest",
            "template": "plotly_white", "height": 520, "legend": {"orientation": "v"},
            "margin": {"t": 60, "r": 20}}  # fmt: skip


def latency(metrics: pd.DataFrame) -> tuple[str, str]:
    """(column, axis label) of the latency every chart and the SLO slider use: the figures' one
    latency axis (figures.inputs.latency_axis: E2E latency per output token, static and
    continuous cells on one definition; an old static-only table on the study's column)."""
    column, label, _ = latency_axis(metrics, "report")
    return column, label


def _steps(values: pd.Series, configured: Sequence[float] = ()) -> list[float]:
    """A slider's steps: the configured values and each cell's own value (where a cell starts to
    pass), ascending; thinned to MAX_SLO_STEPS keeping the configured ones."""
    cells = sorted(float(v) for v in values.dropna())
    configured = sorted({float(s) for s in configured})
    if len(cells) + len(configured) > MAX_SLO_STEPS:
        keep = max(MAX_SLO_STEPS - len(configured), 2)
        cells = [cells[round(i * (len(cells) - 1) / (keep - 1))] for i in range(keep)]
    return sorted(set(cells) | set(configured))


def slo_steps(metrics: pd.DataFrame, slos_s_per_token: Sequence[float]) -> list[float]:
    """The slider's SLOs (s/token): the configured ones and each cell's own latency (where a cell
    starts to meet it), ascending; thinned to MAX_SLO_STEPS keeping the configured ones."""
    return _steps(metrics[latency(metrics)[0]], slos_s_per_token)


def budget_steps(metrics: pd.DataFrame) -> list[float]:
    """The energy-budget slider's budgets (J/token): each cell's own energy per output token
    (where that cell starts to fit), ascending, thinned to MAX_SLO_STEPS; empty without any."""
    return _steps(metrics["j_per_token"])


def optimum(metrics: pd.DataFrame, slo_s: float) -> pd.DataFrame:
    """Per (model, platform): the cell with the least carbon per token among those whose latency
    per token meets slo_s (<=); ties on carbon to the lower latency. No row where none meets it."""
    column = latency(metrics)[0]
    ok = metrics[metrics[column] <= slo_s].dropna(subset=["g_per_token"])
    ok = ok.sort_values(["g_per_token", column])
    return ok.groupby(["model", "platform"], sort=True).head(1)


def fastest_within(metrics: pd.DataFrame, budget_j_per_token: float) -> pd.DataFrame:
    """Per (model, platform): the cell with the lowest latency per token (the report's one latency
    axis, `latency`) among those whose energy per output token is within the budget (j_per_token
    <= budget_j_per_token); ties on latency to the lower energy. No row where none fits."""
    column = latency(metrics)[0]
    ok = metrics[metrics["j_per_token"] <= budget_j_per_token].dropna(subset=[column])
    ok = ok.sort_values([column, "j_per_token"])
    return ok.groupby(["model", "platform"], sort=True).head(1)


def _slo_state(metrics: pd.DataFrame, traces: Sequence[go.Scatter], slo: float) -> tuple[dict, dict]:
    """(restyle, relayout) of the carbon chart at one SLO: every cell trace's opacities, the
    stars' points and hovers, the SLO line and the title's count. The cell traces' x, y and hover
    are restated as they are (a null in plotly's restyle would reset them)."""
    best = optimum(metrics, slo)
    scale = 1e3
    opacity = [[1.0 if x <= slo * scale else FADED for x in t.x] for t in traces]
    names = [cell_name(r) for _, r in best.iterrows()]
    restyle = {
        "marker.opacity": opacity + [1.0],
        "x": [list(t.x) for t in traces] + [(best[latency(metrics)[0]] * scale).tolist()],
        "y": [list(t.y) for t in traces] + [(best["g_per_token"] * scale).tolist()],
        "hovertext": [list(t.hovertext) for t in traces]
        + [[f"<b>{n}</b><br>least carbon meeting {slo * scale:.3g} ms/token" for n in names]],
    }
    meets = int((metrics[latency(metrics)[0]] <= slo).sum())
    relayout = {
        "shapes": [{"type": "line", "xref": "x", "yref": "paper", "x0": slo * scale,
                    "x1": slo * scale, "y0": 0, "y1": 1, "line": {"dash": "dash", "color": "#555"}}],
        "title.text": f"Carbon vs latency per token: {meets} of {len(metrics)} cells meet "
                      f"{slo * scale:.3g} ms/token; stars: least carbon meeting it",
    }  # fmt: skip
    return restyle, relayout


def _apply(fig: go.Figure, restyle: dict, relayout: dict) -> None:
    """Set the figure to one slider step's state (what the step does in the browser)."""
    for i, trace in enumerate(fig.data):
        for key, values in restyle.items():
            trace[tuple(key.split("."))] = values[i]
    fig.update_layout({"shapes": relayout["shapes"], "title": {"text": relayout["title.text"]}})


def _budget_state(metrics: pd.DataFrame, traces: Sequence[go.Scatter],
                  budget: float) -> tuple[dict, dict]:  # fmt: skip
    """(restyle, relayout) of the energy chart at one budget (J/token), as _slo_state: opacities
    (cells over the budget faded), the stars (fastest_within), the budget line, the title."""
    column = latency(metrics)[0]
    best = fastest_within(metrics, budget)
    opacity = [[1.0 if y <= budget else FADED for y in t.y] for t in traces]
    names = [cell_name(r) for _, r in best.iterrows()]
    restyle = {
        "marker.opacity": opacity + [1.0],
        "x": [list(t.x) for t in traces] + [(best[column] * 1e3).tolist()],
        "y": [list(t.y) for t in traces] + [best["j_per_token"].tolist()],
        "hovertext": [list(t.hovertext) for t in traces]
        + [[f"<b>{n}</b><br>fastest within {budget:.3g} J/token" for n in names]],
    }
    fits = int((metrics["j_per_token"] <= budget).sum())
    relayout = {
        "shapes": [{"type": "line", "xref": "paper", "yref": "y", "x0": 0, "x1": 1, "y0": budget,
                    "y1": budget, "line": {"dash": "dash", "color": "#555"}}],
        "title.text": f"Energy vs latency per token: {fits} of {len(metrics)} cells within "
                      f"{budget:.3g} J/token; stars: the fastest within it",
    }  # fmt: skip
    return restyle, relayout


def _star_trace(name: str, meta: str) -> go.Scatter:
    """The empty gold-star trace a slider fills with its chosen cells (named `name`, tagged `meta`
    for the page's script)."""
    return go.Scatter(x=[], y=[], mode="markers", name=name, meta=meta, hovertext=[],
                      hovertemplate="%{hovertext}<extra></extra>",
                      marker={"symbol": "star", "size": 18, "color": "gold",
                              "line": {"color": "black", "width": 1}})  # fmt: skip


def energy_latency_chart(metrics: pd.DataFrame) -> go.Figure:
    """Energy per output token (J) against latency per token (ms) per cell, with the energy-budget
    slider (budget_steps); it starts at the loosest budget, where every cell fits."""
    column, label = latency(metrics)
    traces = cell_traces(metrics, column, "j_per_token", 1e3, 1.0)
    star = _star_trace("fastest within the energy budget", FASTEST_META)
    fig = go.Figure(traces + [star])
    fig.update_layout(_layout(
        "Energy vs latency per token",
        _axis(metrics[column], label),
        _axis(metrics["j_per_token"], "energy per output token (J)"),
    ))  # fmt: skip
    steps = budget_steps(metrics)
    if not steps:
        return fig
    slider_steps = [{"method": "update", "label": f"{b:.3g}", "args": list(_budget_state(
        metrics, traces, b))} for b in steps]  # fmt: skip
    _apply(fig, *_budget_state(metrics, traces, steps[-1]))
    fig.update_layout(sliders=[{
        "active": len(steps) - 1, "steps": slider_steps, "pad": {"t": 60},
        "currentvalue": {"prefix": "energy budget (J/token): "},
    }], height=640)  # fmt: skip
    return fig


def carbon_latency_chart(metrics: pd.DataFrame, slos_s_per_token: Sequence[float]) -> go.Figure:
    """Carbon (mgCO2e/token) against latency (ms/token) per cell, with the SLO slider; it starts
    at the loosest configured SLO (else the loosest step)."""
    column, label = latency(metrics)
    traces = cell_traces(metrics, column, "g_per_token", 1e3, 1e3)
    star = _star_trace("least carbon meeting the SLO", OPTIMUM_META)
    fig = go.Figure(traces + [star])
    fig.update_layout(_layout(
        "Carbon vs latency per token",
        _axis(metrics[column], label),
        _axis(metrics["g_per_token"], "operational carbon per token (mgCO2e)"),
    ))  # fmt: skip
    steps = slo_steps(metrics, slos_s_per_token)
    if not steps:
        return fig
    start = steps.index(max(slos_s_per_token)) if slos_s_per_token else len(steps) - 1
    slider_steps = []
    for slo in steps:
        restyle, relayout = _slo_state(metrics, traces, slo)
        slider_steps.append({"method": "update", "label": f"{slo * 1e3:.3g}",
                             "args": [restyle, relayout]})  # fmt: skip
    _apply(fig, *_slo_state(metrics, traces, steps[start]))
    fig.update_layout(sliders=[{
        "active": start, "steps": slider_steps, "pad": {"t": 60},
        "currentvalue": {"prefix": "latency SLO (ms/token): "},
    }], height=640)  # fmt: skip
    return fig


def energy_batch_chart(metrics: pd.DataFrame) -> go.Figure:
    """Energy per output token (J) against batch size (static) or max_num_seqs (continuous)."""
    fig = go.Figure(cell_traces(metrics, "batch_size", "j_per_token"))
    x_axis = _axis(metrics["batch_size"].astype(float), "batch size / max_num_seqs")
    fig.update_layout(_layout("Energy per token by batch size", x_axis,
                              _axis(metrics["j_per_token"], "energy per output token (J)")))  # fmt: skip
    return fig


def throughput_latency_chart(metrics: pd.DataFrame) -> go.Figure:
    """Throughput (output tokens/s) against latency per token (ms): the study's figure 4."""
    column, label = latency(metrics)
    fig = go.Figure(cell_traces(metrics, column, "tokens_per_s", 1e3))
    fig.update_layout(_layout(
        "Throughput vs latency per token",
        _axis(metrics[column], label),
        _axis(metrics["tokens_per_s"], "throughput (output tokens/s)"),
    ))  # fmt: skip
    return fig

"""One HTML page per study to explore rather than read (issue 24, item 5): the headline table
beside the paper's, interactive charts (tokencarbon.report_charts: hover names the cell, its flags
and intervals; a latency-SLO slider and an energy-budget slider), every cell's numbers, the study's figures and the
provenance (commits, config, package versions, devices, each cell's commit and versions).

Self-contained: plotly.js, the figures (PNG as data: URIs) and the styles are inlined; the page
loads nothing. tests/test_report.py opens it in a headless chromium.
"""

from __future__ import annotations

import base64
import html
import importlib.metadata
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from tokencarbon import qa
from tokencarbon.files import write_text
from tokencarbon.layout import RESULTS, STATIC, CellKey
from tokencarbon.report_charts import latency as latency_column
from tokencarbon.report_charts import (
    carbon_latency_chart,
    cell_name,
    energy_batch_chart,
    energy_latency_chart,
    study_flags,
    throughput_latency_chart,
)

# The paper's headlines (Lim, Pan, Zhou 2024, "Characterizing the Carbon Impact of LLM Inference":
# TensorRT-LLM on V100 and A100 GPUs, Llama-2 and GPT-2 models): batch 1 -> the largest batch cut
# carbon per token about 11x for about 2x the latency per token; batch 1 reaches about 2 % MFU.
PAPER = {"carbon_ratio": "~11x", "latency_ratio": "~2x", "mfu_batch1": "~2 %"}
PAPER_SOURCE = (
    "Paper: Lim, Pan and Zhou (2024), <i>Characterizing the Carbon Impact of LLM Inference</i>, "
    "TensorRT-LLM on V100 and A100 GPUs: from batch 1 to the largest batch that fits, carbon per "
    "token fell about 11x for about 2x the latency per token, and batch 1 used about 2 % of the "
    "GPU's peak FLOP/s (MFU). Its numbers are quoted from the paper's text and figures, not "
    "recomputed."
)
# Packages whose versions the provenance lists (those installed where the report was built).
PACKAGES = ("tokencarbon", "snakemake", "torch", "transformers", "pandas", "pyarrow", "numpy",
            "matplotlib", "plotly")  # fmt: skip
# The version keys of a cell's meta.json `versions` shown per cell.
CELL_VERSIONS = ("torch", "cuda", "transformers", "python")
COMMIT_ENV = "TOKENCARBON_SOURCE_COMMIT"  # the commit to name where the report is built outside git
STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:78em;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:.92em}
th,td{border:1px solid #ccc;padding:.25em .55em;text-align:left;vertical-align:top}
th{background:#f0f0f0}td{font-variant-numeric:tabular-nums}
td.paper{background:#fff7e0}.flags{color:#b22}nav a{margin-right:1em}
figure{margin:1em 0 2em}figure img{max-width:100%;border:1px solid #ddd}
figcaption,.note{color:#555;font-size:.92em;max-width:60em}
pre{background:#f6f6f6;padding:.8em;overflow:auto;font-size:.85em}
"""


@dataclass
class ReportInputs:
    """What one study's report is made of: its metrics and cells tables, each cell's meta.json
    (records.CellMeta.to_json: the versions and config slices it ran with), the carbon accounting
    its metrics were computed with (the config's `carbon`), its latency SLOs (s/token), and its
    figures (name -> PNG path) with their captions (name -> text)."""

    metrics: pd.DataFrame
    cells: pd.DataFrame
    metas: Sequence[Mapping[str, Any]]
    carbon: Mapping[str, Any] = field(default_factory=dict)
    slos_s_per_token: Sequence[float] = ()
    figures: Mapping[str, str] = field(default_factory=dict)
    captions: Mapping[str, str] = field(default_factory=dict)


def _e(text: object) -> str:
    return html.escape(str(text))


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], paper: Sequence[int] = (),
           raw: bool = False, table_id: str = "") -> str:  # fmt: skip
    """An HTML table; `paper`: indices of the columns quoting the paper (shaded); raw: cells are
    HTML already."""
    ident = f" id='{table_id}'" if table_id else ""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td{' class=paper' if i in paper else ''}>{c if raw else _e(c)}</td>"
                         for i, c in enumerate(row)) + "</tr>"
        for row in rows
    )  # fmt: skip
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _ratio(a: float, b: float, low: float = float("nan"), high: float = float("nan"),
           digits: int = 1) -> str:  # fmt: skip
    text = f"{a / b:.{digits}f}x"
    if pd.notna(low) and pd.notna(high):
        text += f" [{low:.{digits}f}, {high:.{digits}f}]"
    return text


def headline_rows(metrics: pd.DataFrame) -> list[list[str]]:
    """Per (model, platform) with two static batch sizes or more: the smallest (batch 1) against
    the largest static batch, each of our ratios followed by the paper's: carbon per token
    (smallest / largest), latency per token (largest / smallest), MFU at the smallest; the
    energy method. Ratio intervals from the cells' 95 % intervals (figures.measured.ratio_interval)."""
    from tokencarbon.figures.measured import batch1_vs_max, ratio_interval

    metrics = metrics if "mode" in metrics.columns else metrics.assign(mode=STATIC)
    static = metrics[metrics["mode"] == STATIC]
    pairs = batch1_vs_max(static, "report") if len(static) else pd.DataFrame()
    if pairs.empty:
        return []
    carbon = ratio_interval(pairs, "g_per_token", smaller_over_larger=True)
    latency = ratio_interval(pairs, "s_per_token_user", smaller_over_larger=False)
    rows = []
    for i, p in enumerate(pairs.itertuples()):
        mfu = getattr(p, "mfu_1", float("nan"))
        methods = {str(getattr(p, f"energy_method_{end}", "")) for end in ("1", "max")} - {""}
        rows.append([
            p.model, p.platform, f"{p.batch_size_1} → {p.batch_size_max}",
            f"{p.g_per_token_1 * 1e3:.3g}", f"{p.g_per_token_max * 1e3:.3g}",
            _ratio(p.g_per_token_1, p.g_per_token_max, *carbon.iloc[i]), PAPER["carbon_ratio"],
            _ratio(p.s_per_token_user_max, p.s_per_token_user_1, *latency.iloc[i], digits=2),
            PAPER["latency_ratio"],
            "n/a" if pd.isna(mfu) else f"{mfu * 100:.2f} %", PAPER["mfu_batch1"],
            "; ".join(sorted(methods)),
        ])  # fmt: skip
    return rows


HEADLINE_HEADER = ("model", "platform", "batches", "mgCO2e/token at the smallest", "at the largest",
                   "carbon/token ratio (ours)", "paper", "latency/token ratio (ours)", "paper",
                   "MFU at the smallest (ours)", "paper", "energy")  # fmt: skip
PAPER_COLUMNS = (6, 8, 10)


def headline_section(metrics: pd.DataFrame) -> str:
    """The headline table beside the paper's numbers, with the paper's source stated."""
    rows = headline_rows(metrics)
    parts = ["<h2 id='headline'>Headline: batch 1 against the largest batch, beside the paper</h2>"]
    if rows:
        parts.append(_table(HEADLINE_HEADER, rows, paper=PAPER_COLUMNS, table_id="headline-table"))
        parts.append("<p class='note'>Ours: static batches, the smallest measured (batch 1 in the "
                     "study's sweep) against the largest. Carbon is operational (energy x PUE x grid "
                     "intensity). Brackets: an interval for the ratio from both cells' bootstrap 95 % "
                     "intervals over their repeats (covering it with probability >= 90 %); a cell run "
                     "once has none.</p>")  # fmt: skip
    else:
        parts.append("<p>No model and platform has two static batch sizes measured: no ratio.</p>")
    parts.append(f"<p class='note' id='paper-source'>{PAPER_SOURCE}</p>")
    return "\n".join(parts)


def _cell_value(row: pd.Series, column: str, scale: float) -> str:
    value = row.get(column)
    if value is None or pd.isna(value):
        return "n/a"
    low, high = row.get(f"{column}_ci_low"), row.get(f"{column}_ci_high")
    text = f"{value * scale:.3g}"
    if low is not None and high is not None and pd.notna(low) and pd.notna(high):
        text += f" [{low * scale:.3g}, {high * scale:.3g}]"
    return text


def cells_section(metrics: pd.DataFrame) -> str:
    """Every cell's numbers with their intervals and its own flags (those not every cell has)."""
    common = set(study_flags(metrics))
    latency = latency_column(metrics)[0]
    rows = []
    for _, r in metrics.sort_values(["model", "platform", "mode", "batch_size"]).iterrows():
        own = [f for f in qa.split(r.get("qa_flags")) if f not in common]
        rows.append([cell_name(r), _cell_value(r, "j_per_token", 1.0), _cell_value(r, "g_per_token", 1e3),
                     _cell_value(r, latency, 1e3), _cell_value(r, "s_per_token_user", 1e3),
                     _cell_value(r, "tokens_per_s", 1.0), _cell_value(r, "mfu", 100.0),
                     str(r.get("energy_method", "")), "; ".join(own)])  # fmt: skip
    header = ["cell", "J/token", "mgCO2e/token", "E2E ms/token", "batch ms/token (the study's)",
              "tokens/s", "MFU %", "energy", "flags"]  # fmt: skip
    return "<h2 id='cells'>Every cell</h2>\n" + _table(header, rows, table_id="cells-table")


def _rst_text(text: str) -> str:
    """A report caption's .rst as plain text (its markup is only paragraphs and ``literals``)."""
    return re.sub(r"``([^`]*)``", r"\1", text).strip()


def figures_section(figures: Mapping[str, str], captions: Mapping[str, str]) -> str:
    """The study's figures, each PNG inlined as a data: URI, with its caption."""
    parts = ["<h2 id='figures'>Figures</h2>"]
    for name, path in figures.items():
        data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
        caption = _e(_rst_text(captions.get(name, "")))
        parts.append(f"<figure id='fig-{_e(name)}'><img alt='{_e(name)}' src='data:image/png;base64,"
                     f"{data}'><figcaption><b>{_e(name)}</b>. {caption}</figcaption></figure>")  # fmt: skip
    return "\n".join(parts) if figures else ""


def source_commit() -> str:
    """The commit the report was built from: $TOKENCARBON_SOURCE_COMMIT where set (a build in a
    copy outside git, benchmarks/gpu_study.sh), else this checkout's HEAD (hardware.git_commit)."""
    from tokencarbon.hardware import git_commit

    return os.environ.get(COMMIT_ENV) or git_commit()


def package_versions(names: Sequence[str] = PACKAGES) -> dict[str, str]:
    """name -> installed version of each package, "not installed" where absent."""
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _utc(ns: object) -> str:
    return "n/a" if ns is None or pd.isna(ns) else str(pd.Timestamp(int(ns), unit="ns", tz="UTC"))[:19]


def device_rows(cells: pd.DataFrame) -> list[list[str]]:
    """Per platform: its devices as the cells recorded them, power source, backend, cell count."""
    rows = []
    for platform, group in cells.groupby("platform", sort=True):
        rows.append([platform, "; ".join(sorted(group["device_name"].astype(str).unique())),
                     "; ".join(sorted(group["power_source"].astype(str).unique())),
                     "; ".join(sorted(group["backend"].astype(str).unique())), str(len(group))])  # fmt: skip
    return rows


def cell_provenance_rows(cells: pd.DataFrame, metas: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    """Per cell: its name, device, the commit it was measured with, when (UTC), and the versions
    its meta.json records (CELL_VERSIONS; an imported cell records none)."""
    by_name = {CellKey.of(m).name: m for m in metas}
    rows = []
    for _, r in cells.sort_values(["platform", "model", "mode", "batch_size"]).iterrows():
        name = cell_name(r)
        versions = by_name.get(name, {}).get("versions") or {}
        rows.append([name, str(r["device_name"]), str(r["git_commit"]), _utc(r["window_start_wall_ns"])]
                    + [str(versions.get(k, "")) for k in CELL_VERSIONS])  # fmt: skip
    return rows


def _yaml(value: Any) -> str:
    return yaml.safe_dump(json.loads(json.dumps(value, default=str)), sort_keys=False)


def config_groups(metas: Sequence[Mapping[str, Any]]) -> list[tuple[list[str], str]]:
    """The config slices the cells ran with (meta.json's `config`: model, platform, run, serving),
    as YAML, each with the names of the cells that ran with it; cells recording none left out."""
    groups: dict[str, list[str]] = {}
    for meta in metas:
        if meta.get("config"):
            groups.setdefault(_yaml(meta["config"]), []).append(CellKey.of(meta).name)
    return [(sorted(names), text) for text, names in sorted(groups.items(), key=lambda g: sorted(g[1]))]


def _config_details(inputs: ReportInputs) -> list[str]:
    carbon = _e(_yaml(dict(inputs.carbon)))
    parts = ["<h3>Config</h3>",
             f"<p>The carbon accounting of the metrics:</p><pre id='carbon-config'>{carbon}</pre>"]
    for names, text in config_groups(inputs.metas):
        parts.append(f"<details><summary>config slices of {_e(', '.join(names))}</summary>"
                     f"<pre>{_e(text)}</pre></details>")  # fmt: skip
    return parts


def provenance_section(inputs: ReportInputs) -> str:
    """Where the numbers come from: the report's commit and packages, the devices, each cell's
    commit and versions, the carbon accounting and the config slices each cell ran with."""
    commits = sorted(inputs.cells["git_commit"].astype(str).unique())
    versions = package_versions()
    return "\n".join([
        "<h2 id='provenance'>Provenance</h2>",
        f"<p>Report built from commit <code id='report-commit'>{_e(source_commit())}</code>; its "
        f"cells were measured with commit(s) {', '.join(f'<code>{_e(c)}</code>' for c in commits)}.</p>",
        "<h3>Devices</h3>",
        _table(["platform", "device", "power source", "backend", "cells"], device_rows(inputs.cells)),
        "<h3>Packages where the report was built</h3>",
        _table(["package", "version"], [[k, v] for k, v in versions.items()]),
        "<h3>Each cell</h3>",
        _table(["cell", "device", "git commit", "measured from (UTC)", *CELL_VERSIONS],
               cell_provenance_rows(inputs.cells, inputs.metas), table_id="cell-provenance"),
        *_config_details(inputs),
    ])  # fmt: skip


CHARTS = (
    ("chart-carbon-latency", "Drag the slider to set a latency SLO: cells slower than it fade, and "
     "for each model and platform a star marks the cell with the least carbon per token among those "
     "meeting it. Hover a point for its cell, values with their 95 % intervals over repeats, and its "
     "QA flags; a red outline marks a cell with a flag of its own."),
    ("chart-energy-latency", "Drag the slider to set an energy budget in J per output token (as "
     "ML.ENERGY's leaderboard does): cells using more fade, and for each model and platform a star "
     "marks the fastest cell (the lowest latency per token; on a tie, the lower energy) among "
     "those within the budget. It starts at the loosest budget, where every cell fits."),
    ("chart-energy-batch", "Energy per output token against the batch size (static, solid) or "
     "max_num_seqs (continuous batching, dotted)."),
    ("chart-throughput-latency", "Throughput against latency per token (the paper's figure 4): "
     "batching moves a model up and to the right."),
)


def charts_section(metrics: pd.DataFrame, slos_s_per_token: Sequence[float]) -> str:
    """The interactive charts as plotly divs (plotly.js itself is inlined once, in page())."""
    figures = [carbon_latency_chart(metrics, slos_s_per_token), energy_latency_chart(metrics),
               energy_batch_chart(metrics), throughput_latency_chart(metrics)]  # fmt: skip
    parts = ["<h2 id='charts'>Explore the cells</h2>"]
    common = study_flags(metrics)
    if common:
        parts.append("<p id='study-flags'>QA flags of the study's machine rather than of a cell "
                     "(docs/metrics.md, their two tiers), said once here: <span class='flags'>"
                     f"{_e('; '.join(common))}</span>. A point outlined red carries a flag that "
                     "marks its cell as suspect.</p>")  # fmt: skip
    config = {"displaylogo": False, "responsive": True}
    for (div_id, caption), fig in zip(CHARTS, figures):
        parts.append(fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, config=config))
        parts.append(f"<p class='note'>{_e(caption)}</p>")
    return "\n".join(parts)


def page(inputs: ReportInputs) -> str:
    """The whole self-contained page."""
    from plotly.offline import get_plotlyjs

    metrics = inputs.metrics if "mode" in inputs.metrics.columns else inputs.metrics.assign(mode=STATIC)
    platforms = sorted(metrics["platform"].unique())
    models = sorted(metrics["model"].unique())
    title = f"tokencarbon report: {', '.join(models)} on {', '.join(platforms)}"
    body = [
        f"<h1>{_e(title)}</h1>",
        f"<p>{len(metrics)} cells of {len(models)} model(s) on {_e(', '.join(platforms))}. "
        "Every number is recomputed from the study's tables (tables/metrics.parquet in its folder; "
        "docs/metrics.md gives each formula).</p>",
        "<nav><a href='#headline'>headline</a><a href='#charts'>charts</a><a href='#cells'>cells</a>"
        "<a href='#figures'>figures</a><a href='#provenance'>provenance</a></nav>",
        headline_section(metrics),
        charts_section(metrics, inputs.slos_s_per_token),
        cells_section(metrics),
        figures_section(inputs.figures, inputs.captions),
        provenance_section(inputs),
    ]  # fmt: skip
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{_e(title)}</title><style>{STYLE}</style>"
        f"<script>{get_plotlyjs()}</script></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def write_report(inputs: ReportInputs, path: str | Path) -> None:
    """Write the study's report page to `path` (atomically)."""
    write_text(path, page(inputs))

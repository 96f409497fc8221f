"""Which data each figure target reads and how it is drawn: the one place the figure rules call.

Inputs arrive as file paths (from Snakemake) and plain params; figures are drawn by the functions
of this package and saved as PNG + PDF.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from tokencarbon import tables
from tokencarbon.errors import ConfigError
from tokencarbon.figures import (
    fig1_flops_vs_seqlen,
    fig2a_memory_vs_seqlen,
    fig2b_gpu_generations,
    fig4_throughput_latency,
    fig5_mfu_batch1,
    fig6_power_over_time,
    fig6a_intensity_day,
    fig7_carbon_per_token,
    save,
)
from tokencarbon.models import load_architecture
from tokencarbon.platforms import get_platform, load_platforms

FAMILY_TITLES = {"llama": "Llama-architecture models", "gpt2": "GPT-2-architecture models"}


def read_probes(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    return [json.loads(Path(p).read_text()) for p in paths]


def intensity_series(carbon: Mapping[str, Any], cells_path: str | Path | None) -> tuple[pd.Series, str | None]:
    """The 24-hour intensity series of figure 6a: the trace's configured day, or for a constant
    intensity the UTC day the first cell ran."""
    from tokencarbon.carbon import ConstantIntensity, intensity_for_day, load_trace

    if carbon["source"] == "trace":
        trace = load_trace(carbon["trace"], carbon["basis"])
        return intensity_for_day(trace, carbon["trace_day"], carbon["fill"]), carbon["trace_day"]
    cells = tables.read(cells_path, tables.CELLS)
    day = carbon["trace_day"] or str(
        pd.Timestamp(int(cells["window_start_wall_ns"].min()), unit="ns").date()
    )
    return intensity_for_day(ConstantIntensity(carbon["intensity_g_per_kwh"]), day), day


def render(name: str, inputs: Mapping[str, Any], params: Mapping[str, Any], stem: str | Path) -> None:
    """Draw figure `name` from its inputs and save it as <stem>.png and <stem>.pdf."""
    family = params.get("family")
    title = FAMILY_TITLES.get(family, "")
    if name == "fig1_flops_vs_seqlen":
        fig = fig1_flops_vs_seqlen([load_architecture(a) for a in params["architectures"]])
    elif name == "fig2a_memory_vs_seqlen":
        fig = fig2a_memory_vs_seqlen(
            [load_architecture(a) for a in params["architectures"]],
            platforms=[get_platform(p, lim) for p, lim in params["platforms"].items()],
        )
    elif name == "fig2b_gpu_generations":
        fig = fig2b_gpu_generations(list(load_platforms().values()))
    elif name in {"fig4a_throughput_latency", "fig4b_throughput_latency"}:
        metrics = tables.read(inputs["metrics"], tables.METRICS)
        fig = fig4_throughput_latency(
            metrics, models=params["models"], title=f"Throughput vs user-perceived latency: {title}"
        )
    elif name == "fig5_mfu_batch1":
        fig = fig5_mfu_batch1(tables.read(inputs["metrics"], tables.METRICS))
    elif name == "fig6a_intensity_day":
        series, day = intensity_series(params["carbon"], inputs.get("cells"))
        fig = fig6a_intensity_day(series, day)
    elif name in {"fig6b_power_over_time", "fig6c_power_over_time"}:
        power = tables.read(inputs["power"], tables.with_cell_keys(tables.POWER))
        fig = fig6_power_over_time(power, models=params["models"], title=f"Power over time: {title}")
    elif name == "fig7_carbon_per_token":
        fig = fig7_carbon_per_token(tables.read(inputs["metrics"], tables.METRICS))
    else:
        raise ConfigError(f"unknown figure {name!r}")
    save(fig, stem)

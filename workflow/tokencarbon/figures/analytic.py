"""Figures drawn from the study's inputs rather than its measurements: forward-pass FLOPs and memory
of the architectures (1, 2a), GPU generations from the platform table (2b), a day of grid carbon
intensity (6a)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from tokencarbon import flops
from tokencarbon.errors import InputError
from tokencarbon.figures.common import (
    BYTES_PER_GB,
    FLOPS_PER_TFLOPS,
    OUTSIDE_RIGHT,
    new_figure,
    require_rows,
    themed,
)
from tokencarbon.models import Architecture, kv_cache_bytes, weight_bytes
from tokencarbon.figures.quantized import weights_label
from tokencarbon.quantization import NONE, Quantization
from tokencarbon.platforms import Platform

# The study's range: 128 tokens up to Llama-2's 4096 positions (GPT-2 stops at its 1024).
SEQ_LENS = (128, 256, 512, 1024, 2048, 4096)


def _per_seq_len(
    archs: Sequence[Architecture],
    seq_lens: Sequence[int],
    figure: str,
    value: Callable[[Architecture, int], float],
) -> pd.DataFrame:
    """One row per (model, sequence length) the model's positions allow."""
    if not archs:
        raise InputError(f"{figure}: no architectures given; pass at least one models.Architecture")
    names = [a.name for a in archs]
    if len(set(names)) != len(names):
        raise InputError(f"{figure}: architectures {names} name one model twice")
    rows = []
    for arch in archs:
        fitting = [t for t in sorted(set(seq_lens)) if 1 <= t <= arch.max_positions]
        if not fitting:
            raise InputError(
                f"{figure}: model {arch.name} (max_positions {arch.max_positions}) fits none of "
                f"the sequence lengths {list(seq_lens)}; give lengths in 1..{arch.max_positions}"
            )
        rows += [{"model": arch.name, "seq_len": t, "value": value(arch, t)} for t in fitting]
    return pd.DataFrame(rows)


def _seq_len_axis(ax, seq_lens: pd.Series) -> None:
    ax.set_xscale("log", base=2)
    ticks = sorted(seq_lens.unique())
    ax.set_xticks(ticks, labels=[str(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("sequence length (tokens)")


@themed
def fig1_flops_vs_seqlen(
    archs: Sequence[Architecture],
    seq_lens: Sequence[int] = SEQ_LENS,
    *,
    causal: bool = False,
    logits: str = "all",
) -> Figure:
    """TFLOPs of one forward pass of batch 1 over seq_len tokens, per model (flops.prefill_flops).

    The defaults count what a profiler such as calflops reports for a plain forward pass (the full
    attention score matrix, logits at every position); causal=True, logits="last" count what our
    backend's prefill needs.
    """
    figure = "fig1_flops_vs_seqlen"
    df = _per_seq_len(
        archs,
        seq_lens,
        figure,
        lambda a, t: flops.prefill_flops(a, t, causal=causal, logits=logits) / FLOPS_PER_TFLOPS,
    )
    fig = new_figure()
    ax = fig.subplots()
    sns.lineplot(df, x="seq_len", y="value", hue="model", marker="o", estimator=None, ax=ax)
    _seq_len_axis(ax, df["seq_len"])
    ax.set_yscale("log")
    ax.set_ylabel("forward-pass compute (TFLOPs)")
    attention = "causal attention" if causal else "full attention matrix"
    positions = "every position" if logits == "all" else "the last position"
    ax.set_title(
        f"Forward-pass FLOPs vs sequence length\n(batch 1, {attention}, logits at {positions})"
    )
    return fig


@themed
def fig2a_memory_vs_seqlen(
    archs: Sequence[Architecture],
    seq_lens: Sequence[int] = SEQ_LENS,
    platforms: Sequence[Platform] = (),
    *,
    dtype: str = "float16",
    dtypes: Mapping[str, str] | None = None,
    batch: int = 1,
    quantized: Mapping[str, tuple[str, str, Quantization]] | None = None,
) -> Figure:
    """Weights + KV cache (GB) vs sequence length per model, each in its dtype (dtypes: architecture
    name -> dtype, `dtype` for the others); each model's weights-only level dashed, each given
    platform's usable memory (memory_limit_gb when set) dotted and labelled at the right. The
    title names the dtype where all share one, else the legend names each model's.
    quantized: model name -> (architecture name among archs, dtype, Quantization): one more line
    per weight-only quantized model, its weights as stored (models.weight_bytes) and its cache in
    dtype. Raises InputError for an architecture not among archs."""
    figure = "fig2a_memory_vs_seqlen"
    _per_seq_len(archs, seq_lens, figure, lambda a, t: 0.0)  # the checks: some, distinct, fitting
    dtype_of = {a.name: (dtypes or {}).get(a.name, dtype) for a in archs}
    by_name = {a.name: a for a in archs}
    # (label, architecture, dtype, quantization) per line: the architectures, then quantized models
    lines = [(a.name, a, dtype_of[a.name], NONE) for a in archs]
    for model, (arch_name, q_dtype, q) in (quantized or {}).items():
        if arch_name not in by_name:
            raise InputError(
                f"{figure}: quantized model {model!r} names architecture {arch_name!r}, not one of "
                f"{sorted(by_name)}"
            )
        lines.append((model, by_name[arch_name], q_dtype, q))
    one_dtype = len({d for _, _, d, _ in lines}) == 1
    frames = []
    for name, arch, d, q in lines:
        df = _per_seq_len(
            [arch], seq_lens, figure,
            lambda a, t, d=d, q=q: (weight_bytes(a, d, q) + kv_cache_bytes(a, batch, t, d))
            / BYTES_PER_GB,
        )  # fmt: skip
        if q.quantized:  # "llama-2-7b-wq4 (int4 g128)": int4/int8 weights, activations in dtype
            df["model"] = f"{name} ({weights_label(q.scheme, q.group_size)})"
        else:
            df["model"] = name if one_dtype else f"{name} ({d})"
        frames.append(df)
    df = pd.concat(frames, ignore_index=True)
    labels_in_order = list(dict.fromkeys(df["model"]))
    colours = dict(zip(labels_in_order, sns.color_palette(n_colors=len(labels_in_order))))
    fig = new_figure(8.5, 5.0)
    ax = fig.subplots()
    sns.lineplot(
        df, x="seq_len", y="value", hue="model", palette=colours, marker="o", estimator=None, ax=ax
    )
    for label, (_, arch, d, q) in zip(labels_in_order, lines):
        ax.axhline(weight_bytes(arch, d, q) / BYTES_PER_GB, color=colours[label], ls="--", lw=1)
    handles, labels = ax.get_legend_handles_labels()
    handles.append(Line2D([], [], color="0.4", ls="--", lw=1))
    labels.append("weights only (dashed)")
    levels: dict[float, list[str]] = {}
    for p in platforms:
        usable_gb = p.memory_limit_gb if p.memory_limit_gb is not None else p.memory_gb
        capped = f" capped at {usable_gb:g} GB" if p.memory_limit_gb is not None else f": {usable_gb:g} GB"
        levels.setdefault(float(usable_gb), []).append(p.platform + capped)
    for usable_gb, names in sorted(levels.items()):
        ax.axhline(usable_gb, color="0.2", ls=":", lw=1.5)
        ax.annotate(
            "; ".join(names),
            xy=(1, usable_gb),
            xycoords=("axes fraction", "data"),
            xytext=(-4, 3),
            textcoords="offset points",
            ha="right",
            fontsize="small",
        )
    if levels:
        handles.append(Line2D([], [], color="0.2", ls=":", lw=1.5))
        labels.append("usable device memory (dotted)")
    # Outside the axes: the platform labels sit at the right end of their lines, inside.
    ax.legend(handles, labels, title="model", fontsize="small", **OUTSIDE_RIGHT)
    _seq_len_axis(ax, df["seq_len"])
    ax.set_yscale("log")
    if levels:
        top = max(levels) * 2.5  # room for the highest label above its line
        ax.set_ylim(top=max(top, ax.get_ylim()[1]))
    ax.set_ylabel("weights + KV cache (GB)")
    # one dtype: named here; several: the legend names each model's
    which = f", {lines[0][2]}" if one_dtype else ""
    ax.set_title(f"Inference memory vs sequence length (batch {batch}{which})")
    return fig


# (column of Platform, panel label) for fig2b's three panels.
_GENERATION_PANELS = (
    ("peak_tflops_fp16", "dense fp16 peak (TFLOPS)"),
    ("memory_gb", "HBM capacity (GB)"),
    ("memory_gb_per_s", "HBM bandwidth (GB/s)"),
)


@themed
def fig2b_gpu_generations(platforms: Sequence[Platform]) -> Figure:
    """Dense fp16 TFLOPS, HBM GB and HBM GB/s of the GPU platforms over their release year."""
    figure = "fig2b_gpu_generations"
    df = pd.DataFrame(
        [
            {"platform": p.platform, "release_year": p.release_year}
            | {col: getattr(p, col) for col, _ in _GENERATION_PANELS}
            for p in platforms
            if p.kind == "gpu"
        ]
    )
    require_rows(df, figure, "of kind 'gpu' in the platforms given")
    df = df.sort_values(["release_year", "platform"])
    # Platforms of one year (A100 40 GB and 80 GB) would hide each other: spread them a little.
    rank = df.groupby("release_year").cumcount()
    spread = rank - df.groupby("release_year")["platform"].transform("size").sub(1) / 2
    df["year"] = df["release_year"] + 0.15 * spread
    fig = new_figure(13.0, 4.5)
    axes = fig.subplots(1, len(_GENERATION_PANELS), sharex=True)
    for ax, (col, label) in zip(axes, _GENERATION_PANELS):
        sns.scatterplot(
            df.dropna(subset=[col]),
            x="year",
            y=col,
            hue="platform",
            style="platform",
            hue_order=list(df["platform"]),
            style_order=list(df["platform"]),
            s=90,
            ax=ax,
            legend=ax is axes[0],
        )
        ax.set_ylabel(label)
        ax.set_xlabel("release year")
        ax.set_ylim(bottom=0)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    handles, labels = axes[0].get_legend_handles_labels()
    axes[0].get_legend().remove()
    fig.legend(handles, labels, title="platform", loc="outside right center")
    fig.suptitle("GPU generations: compute, memory capacity and memory bandwidth")
    return fig


@themed
def fig6a_intensity_day(intensity_g_per_kwh: pd.Series, day: str | None = None) -> Figure:
    """A day of grid carbon intensity (carbon.intensity_for_day: hourly means indexed by hour_utc,
    named after the zone or "constant"), each hour's value held over that hour."""
    figure = "fig6a_intensity_day"
    values = intensity_g_per_kwh.dropna()
    if values.empty:
        raise InputError(
            f"{figure}: the intensity series has no values (empty or all NaN); pass "
            "carbon.intensity_for_day(...) of a day the trace covers"
        )
    hours = [float(h) for h in values.index]
    # The closing point draws the last hour's step to its end.
    x = hours + [hours[-1] + 1]
    y = list(values) + [values.iloc[-1]]
    fig = new_figure(7.5, 4.5)
    ax = fig.subplots()
    sns.lineplot(x=x, y=y, drawstyle="steps-post", estimator=None, ax=ax)
    zone = intensity_g_per_kwh.name or "unnamed zone"
    if values.nunique() == 1:
        ax.set_ylim(0, values.iloc[0] * 1.25)  # a flat line needs the zero to be read
    if zone == "constant":  # carbon.intensity_for_day's name for a ConstantIntensity
        ax.text(
            0.5,
            0.5,
            f"constant intensity {values.iloc[0]:g} gCO2/kWh:\nno hourly trace configured",
            transform=ax.transAxes,
            ha="center",
            va="center",
        )
    ax.set_xlim(0, 24)
    ax.set_xticks(range(0, 25, 3))
    ax.set_xlabel("hour of day (UTC)")
    ax.set_ylabel("carbon intensity (gCO2/kWh)")
    ax.set_title(f"Grid carbon intensity: {zone}" + (f", {day}" if day else "") + " (UTC)")
    return fig

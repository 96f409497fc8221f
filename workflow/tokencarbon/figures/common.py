"""What every figure shares: the theme, input checks that name the figure, the one place units are
converted for display, and save() (PNG + PDF, each written atomically)."""

from __future__ import annotations

import functools
import os
import textwrap
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullLocator

from tokencarbon import qa
from tokencarbon.errors import ConfigError, InputError, SchemaError

PNG_DPI = 200
# Display units: data stay SI (tables.py); these are the only conversions the figures make.
BYTES_PER_GB = 1e9  # decimal, as datasheets state memory (platforms.csv)
FLOPS_PER_TFLOPS = 1e12
MG_PER_G = 1e3
MS_PER_S = 1e3
PCT_PER_FRACTION = 100.0
NS_PER_S = 1e9
J_PER_WH = 3600.0
# A legend beside the axes, where it cannot hide bars or lines.
OUTSIDE_RIGHT = {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0)}
# An axis whose values span more than this factor is drawn on a log scale.
LOG_SPAN = 20.0


def themed(draw: Callable[..., Figure]) -> Callable[..., Figure]:
    """Draw inside one theme without touching the caller's global matplotlib settings."""

    @functools.wraps(draw)
    def wrapper(*args, **kwargs) -> Figure:
        with (
            sns.axes_style("whitegrid"),
            sns.plotting_context("notebook", font_scale=1.0),
            sns.color_palette("colorblind"),
        ):
            return draw(*args, **kwargs)

    return wrapper


def new_figure(width_in: float = 7.5, height_in: float = 5.0) -> Figure:
    """A Figure outside pyplot's registry, so figures made in a loop are freed with their owner."""
    return Figure(figsize=(width_in, height_in), layout="constrained")


def require_rows(df: pd.DataFrame, figure: str, what: str) -> None:
    if df.empty:
        raise InputError(f"{figure}: no rows {what}; nothing to draw")


def require_columns(df: pd.DataFrame, columns: Iterable[str], figure: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise SchemaError(
            f"{figure}: input table lacks column(s) {missing}; it needs {list(columns)} "
            "(tokencarbon.tables schemas)"
        )


def select_models(
    df: pd.DataFrame, models: Sequence[str] | None, columns: Sequence[str], figure: str
) -> pd.DataFrame:
    """The rows of the given models (all rows when models is None), checked to be non-empty."""
    require_columns(df, columns, figure)
    if models is not None:
        df = df[df["model"].isin(list(models))]
    require_rows(
        df, figure, "in the input" if models is None else f"for the model subset {list(models)}"
    )
    return df


def require_one_row_per_cell(df: pd.DataFrame, figure: str) -> None:
    keys = ["platform", "model", "mode", "batch_size"]
    dup = df[df.duplicated(keys, keep=False)]
    if not dup.empty:
        first = dup.iloc[0]
        raise InputError(
            f"{figure}: cell (platform={first['platform']}, model={first['model']}, "
            f"mode={first['mode']}, batch_size={first['batch_size']}) appears more than once; the metrics table must "
            "hold one row per cell"
        )


# A suspect cell's point (a CELL-tier QA flag, tokencarbon.qa): a red ring around it.
SUSPECT_STYLE = {"marker": "o", "ms": 15, "mfc": "none", "mec": "#d62728", "mew": 1.8, "ls": "none"}


def suspect_flags(df: pd.DataFrame) -> pd.Series:
    """Per row, its CELL-tier QA flags ";"-joined (qa.cell_flags), "" where none or where the
    table has no qa_flags column."""
    if "qa_flags" not in df.columns:
        return pd.Series("", index=df.index, dtype=object)
    return df["qa_flags"].map(lambda v: ";".join(qa.cell_flags(v)))


def mark_suspect(ax: Axes, x: Iterable[float], y: Iterable[float]) -> None:
    """Ring the points (x, y) of suspect cells (SUSPECT_STYLE), above their own markers."""
    x, y = list(x), list(y)
    if x:
        ax.plot(x, y, zorder=4.5, **SUSPECT_STYLE)


def suspect_handle(flags: Iterable[str]):
    """The legend entry of the suspect-cell ring, naming the flags seen (";"-joined values)."""
    from matplotlib.lines import Line2D

    names = sorted({f for v in flags for f in qa.split(v)})
    return Line2D([], [], label="suspect cell: " + ", ".join(names), **SUSPECT_STYLE)


def log_scale_if_wide(ax: Axes, axis: str, values: Iterable[float]) -> bool:
    """A log scale on `axis` ("x" or "y") where the positive values span more than LOG_SPAN;
    returns whether it set one."""
    values = [v for v in values if v > 0]
    if values and max(values) / min(values) > LOG_SPAN:
        (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
        return True
    return False


def plain_number(value: float, _pos=None) -> str:
    """A tick label without offset or scientific notation: 0.5, 20, 1,500, 12,000, 0.002."""
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.4g}"


# A character of DejaVu Sans (matplotlib's default) is about 0.6 em wide on average.
EM_PER_CHAR = 0.6


def wrap_to_width(text: str, width_in: float, fontsize_pt: float = 12.0) -> str:
    """text with each of its lines wrapped (at spaces) to fit `width_in` inches at `fontsize_pt`,
    for titles whose content (intensity, PUE, flags) varies with the data."""
    chars = max(20, int(width_in * 72.0 / (EM_PER_CHAR * fontsize_pt)))
    return "\n".join(
        textwrap.fill(line, chars, break_on_hyphens=False) if line else line
        for line in text.split("\n")
    )


def energy_text(energy_j: float) -> str:
    """An energy for a sentence, in J, Wh or kWh as its size suggests: 850 J, 12.5 Wh, 1.2 kWh."""
    wh = energy_j / J_PER_WH
    if wh >= 1000:
        kwh = wh / 1000
        return f"{plain_number(kwh) if kwh >= 1000 else f'{kwh:.3g}'} kWh"
    if wh >= 1:
        return f"{wh:.3g} Wh"
    return f"{energy_j:.3g} J"


def readable_axis(ax: Axes, axis: str, values: Iterable[float], nbins: int = 6) -> None:
    """Log scale where the values are wide (log_scale_if_wide), ticks at 1-2-5 steps there, at
    most `nbins` linear ticks otherwise; labels as plain numbers, never an offset ("+6.75e-4")."""
    target = ax.xaxis if axis == "x" else ax.yaxis
    if log_scale_if_wide(ax, axis, list(values)):
        target.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        target.set_minor_locator(NullLocator())
    else:
        target.set_major_locator(MaxNLocator(nbins=nbins, min_n_ticks=3))
    target.set_major_formatter(FuncFormatter(plain_number))


def save(fig: Figure, stem_path: str | Path) -> tuple[Path, Path]:
    """Write <stem>.png (PNG_DPI) and <stem>.pdf, each to a temp name renamed into place."""
    stem = Path(stem_path)
    if stem.suffix.lower() in (".png", ".pdf"):
        raise ConfigError(
            f"save: {stem} ends in {stem.suffix}; pass the stem without extension "
            f"(e.g. {stem.with_suffix('')}), both .png and .pdf are written"
        )
    stem.parent.mkdir(parents=True, exist_ok=True)
    written = []
    # A fixed (absent) creation date keeps PDFs byte-identical across reruns of the same data.
    for fmt, options in (("png", {"dpi": PNG_DPI}), ("pdf", {"metadata": {"CreationDate": None}})):
        path = stem.with_name(f"{stem.name}.{fmt}")
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        try:
            fig.savefig(tmp, format=fmt, **options)
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)
        written.append(path)
    return written[0], written[1]

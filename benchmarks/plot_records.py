"""Figures from the GPU benchmark records (benchmarks/results/*.json) and, optionally, the study
grid's metrics tables: sidecar overhead, NVML counter vs integrated power, decode vs roofline."""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from tokencarbon.errors import InputError, SchemaError
from tokencarbon.figures.common import (
    OUTSIDE_RIGHT,
    PCT_PER_FRACTION,
    PNG_DPI,
    log_scale_if_wide,
    new_figure,
    save,
    themed,
)
from tokencarbon.figures.inputs import read_metrics

REPO = Path(__file__).resolve().parents[1]
RECORD_GLOB = {"sidecar_overhead": "*-sidecar*.json", "decode_roofline": "*-decode*.json"}
DECODE_TOK = "decode_tok_per_s"
OUTPUT_TOK = "output_tok_per_s"
ROOFLINE_TOK = "roofline_tok_per_s"
# Bar labels of the decode figure, keyed by the column each shows.
DECODE_BARS = {
    ROOFLINE_TOK: "roofline at copy bandwidth",
    DECODE_TOK: "decode (steady step)",
    OUTPUT_TOK: "output (prefill incl.)",
}


# ---------------------------------------------------------------- reading records


def load_record(path: Path, benchmark: str) -> dict:
    """The JSON record at `path`, checked to be one of `benchmark`'s."""
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise InputError(f"{path}: no such record; run benchmarks/{benchmark}.py first") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not a readable JSON record ({exc})") from exc
    if not isinstance(record, dict) or record.get("benchmark") != benchmark:
        found = record.get("benchmark") if isinstance(record, dict) else type(record).__name__
        raise InputError(f"{path}: field 'benchmark' is {found!r}; expected {benchmark!r}")
    return record


def _field(obj: Any, key: str, path: Path, where: str = "") -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise InputError(
            f"{path}: field '{where}{key}' is missing; benchmarks/README.md lists the fields "
            "of each record"
        )
    return obj[key]


def _positive(obj: Any, key: str, path: Path, where: str = "") -> float:
    value = _field(obj, key, path, where)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
        raise InputError(
            f"{path}: field '{where}{key}' is {value!r}; expected a positive finite number"
        )
    return float(value)


def find_records(results_dir: Path, benchmark: str) -> list[Path]:
    """The records of `benchmark` in results_dir, smoke (CPU, tiny model) runs left out: the
    figures document GPU measurements."""
    paths = []
    for path in sorted(Path(results_dir).glob(RECORD_GLOB[benchmark]), key=lambda p: p.stem):
        if _field(load_record(path, benchmark), "smoke", path) is True:
            print(f"plot_records: {path} is a smoke run; left out", file=sys.stderr)
        else:
            paths.append(path)
    if not paths:
        raise InputError(
            f"{results_dir}: no non-smoke {RECORD_GLOB[benchmark]} record; "
            f"run benchmarks/{benchmark}.py on a GPU first"
        )
    return paths


# ---------------------------------------------------------------- shaping


def relative_difference(energy_counter_j: Any, energy_integrated_j: Any) -> Any:
    """(integrated - counter) / counter, the convention of docs/metrics.md (floats or Series)."""
    return (energy_integrated_j - energy_counter_j) / energy_counter_j


@dataclass(frozen=True)
class SidecarOverhead:
    """One sidecar record: its repetitions and what the overhead figure states about them."""

    record: str  # the record's file stem, e.g. "h100-sidecar"
    device_name: str
    repetitions: pd.DataFrame  # repetition (run order), sidecar ("off"/"on"), tok_per_s, window_s
    tok_per_s_off_median: float
    tok_per_s_on_median: float
    tok_diff_pct: float  # 100 x (on median / off median - 1)
    tok_spread_off_pct: float  # 100 x (max - min) / median of the off repetitions
    tok_diff_pct_below: float  # the record's criteria
    energy_relative_difference_below: float
    energy_window_s_at_least: float

    @property
    def tok_passed(self) -> bool:
        return abs(self.tok_diff_pct) < self.tok_diff_pct_below


def sidecar_overhead(path: Path) -> SidecarOverhead:
    """Tokens/s per repetition of a sidecar_overhead record, recomputed medians and difference."""
    record = load_record(path, "sidecar_overhead")
    reps = _field(record, "repetitions", path)
    rows = []
    for i, rep in enumerate(reps):
        where = f"repetitions[{i}]."
        state = _field(rep, "sidecar", path, where)
        if state not in ("off", "on"):
            raise InputError(f"{path}: field '{where}sidecar' is {state!r}; expected 'off' or 'on'")
        rows.append(
            {
                "repetition": i,
                "sidecar": state,
                "tok_per_s": _positive(rep, "tok_per_s", path, where),
                "window_s": _positive(rep, "window_s", path, where),
            }
        )
    df = pd.DataFrame(rows, columns=["repetition", "sidecar", "tok_per_s", "window_s"])
    off = df.loc[df["sidecar"] == "off", "tok_per_s"].tolist()
    on = df.loc[df["sidecar"] == "on", "tok_per_s"].tolist()
    if not off or not on:
        raise InputError(
            f"{path}: field 'repetitions' holds {len(off)} 'off' and {len(on)} 'on' repetitions; "
            "the overhead needs at least one of each"
        )
    criteria = _field(_field(record, "summary", path), "criteria", path, "summary.")
    off_median, on_median = statistics.median(off), statistics.median(on)
    return SidecarOverhead(
        record=Path(path).stem,
        device_name=_field(_field(record, "machine", path), "device_name", path, "machine."),
        repetitions=df,
        tok_per_s_off_median=off_median,
        tok_per_s_on_median=on_median,
        tok_diff_pct=PCT_PER_FRACTION * (on_median / off_median - 1.0),
        tok_spread_off_pct=PCT_PER_FRACTION * (max(off) - min(off)) / off_median,
        **{
            key: _positive(criteria, key, path, "summary.criteria.")
            for key in (
                "tok_diff_pct_below",
                "energy_relative_difference_below",
                "energy_window_s_at_least",
            )
        },
    )


WINDOW_COLUMNS = ["source", "window_s", "relative_difference"]


def sidecar_windows(path: Path) -> pd.DataFrame:
    """One row per sidecar-on repetition with an energy counter: its window and the counter vs
    integral difference. A modeled source (no counter) gives no rows."""
    record = load_record(path, "sidecar_overhead")
    rows = []
    for i, rep in enumerate(_field(record, "repetitions", path)):
        where = f"repetitions[{i}]."
        if _field(rep, "sidecar", path, where) != "on":
            continue
        if _field(rep, "energy_counter_j", path, where) is None:
            continue
        counter_j = _positive(rep, "energy_counter_j", path, where)
        integrated_j = _positive(rep, "energy_integrated_j", path, where)
        rows.append(
            {
                "source": f"{Path(path).stem} (repetitions)",
                "window_s": _positive(rep, "window_s", path, where),
                "relative_difference": relative_difference(counter_j, integrated_j),
            }
        )
    return pd.DataFrame(rows, columns=WINDOW_COLUMNS)


def cells_windows(path: Path) -> pd.DataFrame:
    """One row per cell of a metrics table (results/tables/metrics.parquet) that has an energy
    counter: its window and the counter vs integral difference."""
    cells = read_metrics(path)  # any tokencarbon version's table (the committed studies are older)
    needed = ["platform", "window_s", "energy_counter_j", "energy_integrated_j"]
    missing = [c for c in needed if c not in cells.columns]
    if missing:
        raise SchemaError(f"{path}: missing column(s) {missing}; the figure needs {needed}")
    df = cells[(cells["energy_counter_j"] > 0) & (cells["energy_integrated_j"] > 0)]  # NaN: none
    if df.empty:
        print(
            f"plot_records: {path}: none of its {len(cells)} cells has an energy counter "
            "(modeled or integrated only); none drawn",
            file=sys.stderr,
        )
    return pd.DataFrame(
        {
            "source": "cells " + df["platform"],
            "window_s": df["window_s"],
            "relative_difference": relative_difference(
                df["energy_counter_j"], df["energy_integrated_j"]
            ),
        },
        columns=WINDOW_COLUMNS,
    ).reset_index(drop=True)


def counter_vs_integral_summary(
    windows: pd.DataFrame, band: float, min_window_s: float
) -> dict[str, Any]:
    """How many windows, how many long enough to be judged, the worst |difference| among those
    and how many of those fall outside the band."""
    checked = windows.loc[windows["window_s"] >= min_window_s, "relative_difference"].abs()
    return {
        "n_windows": len(windows),
        "n_checked": len(checked),
        "worst_abs_checked": float(checked.max()) if len(checked) else None,
        "n_checked_outside_band": int((checked >= band).sum()),
    }


DECODE_COLUMNS = [
    "case",
    "mode",
    "model",
    "batch",
    DECODE_TOK,
    OUTPUT_TOK,
    ROOFLINE_TOK,
    "fraction_of_roofline",
    "target_tok_per_s",
    "target_metric",
    "target_met",
]


@dataclass(frozen=True)
class DecodeRecord:
    record: str  # file stem, e.g. "h100-decode"
    device_name: str
    copy_bytes_per_s: float
    results: pd.DataFrame  # DECODE_COLUMNS, one row per (case, mode) that ran


def decode_vs_roofline(path: Path) -> DecodeRecord:
    """Per case and mode of a decode_roofline record: the measured rates and the roofline the
    copy bandwidth implies. A step reads at least its useful bytes, so at copy bandwidth B it
    takes >= useful / B: tok/s <= batch x B / useful. Cases that errored are left out."""
    record = load_record(path, "decode_roofline")
    copy = _field(_field(record, "bandwidth", path), "copy", path, "bandwidth.")
    copy_bytes_per_s = _positive(copy, "bytes_per_s", path, "bandwidth.copy.")
    rows = []
    for i, r in enumerate(_field(record, "results", path)):
        where = f"results[{i}]."
        if isinstance(r, dict) and "error" in r:
            print(
                f"plot_records: {path} {where}: {r.get('case')} errored; left out", file=sys.stderr
            )
            continue
        batch = _positive(r, "batch", path, where)
        decode = _positive(r, DECODE_TOK, path, where)
        roofline = batch * copy_bytes_per_s / _positive(r, "useful_bytes_per_step", path, where)
        row = {
            "case": _field(r, "case", path, where),
            "mode": _field(r, "mode", path, where),
            "model": _field(r, "model", path, where),
            "batch": int(batch),
            DECODE_TOK: decode,
            OUTPUT_TOK: _positive(r, OUTPUT_TOK, path, where),
            ROOFLINE_TOK: roofline,
            "fraction_of_roofline": decode / roofline,
            "target_tok_per_s": math.nan,
            "target_metric": None,
            "target_met": None,
        }
        if _field(r, "target", path, where) is not None:
            metric = _field(r, "target_metric", path, where)
            if metric not in (DECODE_TOK, OUTPUT_TOK):
                raise InputError(
                    f"{path}: field '{where}target_metric' is {metric!r}; "
                    f"expected {DECODE_TOK!r} or {OUTPUT_TOK!r}"
                )
            target = _positive(r, "target", path, where)
            row |= {
                "target_tok_per_s": target,
                "target_metric": metric,
                "target_met": row[metric] >= target,
            }
        rows.append(row)
    if not rows:
        raise InputError(f"{path}: field 'results' holds no case that ran; nothing to draw")
    return DecodeRecord(
        record=Path(path).stem,
        device_name=_field(_field(record, "machine", path), "device_name", path, "machine."),
        copy_bytes_per_s=copy_bytes_per_s,
        results=pd.DataFrame(rows, columns=DECODE_COLUMNS),
    )


def energy_criteria(overheads: list[SidecarOverhead]) -> tuple[float, float]:
    """(band, shortest window judged) shared by the sidecar records; they must agree, since one
    figure draws one band."""
    found = {(o.energy_relative_difference_below, o.energy_window_s_at_least) for o in overheads}
    if len(found) != 1:
        raise InputError(
            f"sidecar records {[o.record for o in overheads]} carry different energy criteria "
            f"{sorted(found)} (summary.criteria); plot them separately (--results)"
        )
    return found.pop()


# ---------------------------------------------------------------- figures


@themed
def plot_sidecar_overhead(overheads: list[SidecarOverhead]) -> Figure:
    """Tokens/s per repetition, off and on, their medians, and the off median +/- the criterion."""
    fig = new_figure(6.8 * len(overheads), 4.8)
    axes = fig.subplots(1, len(overheads), squeeze=False).ravel()
    colors = dict(zip(("off", "on"), sns.color_palette()))
    for ax, o in zip(axes, overheads):
        crit = o.tok_diff_pct_below / PCT_PER_FRACTION
        ax.axhspan(
            o.tok_per_s_off_median * (1 - crit),
            o.tok_per_s_off_median * (1 + crit),
            color="0.9",
            zorder=0,
            label=f"off median ± {o.tok_diff_pct_below:g} %: on median must fall inside",
        )
        for state, median in (("off", o.tok_per_s_off_median), ("on", o.tok_per_s_on_median)):
            ax.axhline(
                median, color=colors[state], ls="--", lw=1.2, label=f"median {state}: {median:,.1f}"
            )
        sns.scatterplot(
            o.repetitions,
            x="repetition",
            y="tok_per_s",
            hue="sidecar",
            hue_order=["off", "on"],
            palette=colors,
            style="sidecar",
            s=90,
            ax=ax,
        )
        ax.set_xticks(o.repetitions["repetition"])
        ax.set_xlabel("repetition (run order)")
        ax.set_ylabel("output tokens/s")
        ax.legend(fontsize="small", loc="lower right")
        verdict = "pass" if o.tok_passed else "FAIL"
        ax.set_title(
            f"{o.record}: {o.device_name}\nsidecar on vs off {o.tok_diff_pct:+.2f} % "
            f"(off spread {o.tok_spread_off_pct:.2f} %); |diff| < {o.tok_diff_pct_below:g} %: "
            f"{verdict}",
            fontsize="medium",
        )
    return fig


@themed
def plot_counter_vs_integral(windows: pd.DataFrame, band: float, min_window_s: float) -> Figure:
    """Counter vs integral difference (%) against window length, the band and the shortest window
    judged drawn."""
    if windows.empty:
        raise InputError("counter-vs-integral: no window with an energy counter; nothing to draw")
    s = counter_vs_integral_summary(windows, band, min_window_s)
    df = windows.assign(pct=windows["relative_difference"] * PCT_PER_FRACTION)
    band_pct = band * PCT_PER_FRACTION
    fig = new_figure(8.0, 4.8)
    ax = fig.subplots()
    ax.axhspan(-band_pct, band_pct, color="0.9", zorder=0, label=f"± {band_pct:g} % criterion")
    ax.axhline(0.0, color="0.5", lw=0.8)
    ax.axvline(
        min_window_s, color="0.3", ls=":", label=f"{min_window_s:g} s: shortest window judged"
    )
    sns.scatterplot(df, x="window_s", y="pct", hue="source", style="source", s=70, ax=ax)
    log_scale_if_wide(ax, "x", df["window_s"])
    top = max(band_pct, df["pct"].abs().max()) * 1.3
    ax.set_ylim(-top, top)
    ax.set_xlim(min(df["window_s"].min(), min_window_s) * 0.8, df["window_s"].max() * 1.2)
    ax.set_xlabel("window (s)")
    ax.set_ylabel("(integrated − counter) / counter (%)")
    ax.legend(fontsize="small", **OUTSIDE_RIGHT)
    worst = (
        ""
        if s["worst_abs_checked"] is None
        else f", worst |diff| {s['worst_abs_checked'] * PCT_PER_FRACTION:.2f} %"
    )
    ax.set_title(
        f"NVML energy counter vs integrated power, {s['n_windows']} windows\n{s['n_checked']} "
        f"of them >= {min_window_s:g} s{worst}, {s['n_checked_outside_band']} outside "
        f"± {band_pct:g} %",
        fontsize="medium",
    )
    return fig


# Room for one case's three bars and its three-line tick label (inches), and the panels per row.
DECODE_CASE_WIDTH_IN = 1.5
DECODE_PANELS_PER_ROW = 2


@themed
def plot_decode_roofline(records: list[DecodeRecord]) -> Figure:
    """A grid, one panel per record (two per row, all as wide as the record with the most cases):
    roofline, decode and output tok/s per (case, mode) on a log axis, the decode share of the
    roofline under each case, each target on the bar of its metric. Panel titles are three short
    lines (record, device, copy bandwidth), so neighbours cannot run into each other."""
    ncols = min(DECODE_PANELS_PER_ROW, len(records))
    nrows = math.ceil(len(records) / ncols)
    panel_in = max(5.0, DECODE_CASE_WIDTH_IN * max(len(r.results) for r in records))
    fig = new_figure(panel_in * ncols, 4.8 * nrows + 0.6)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    legend = {}
    for ax, rec in zip(axes, records):
        df = rec.results.assign(
            label=[
                f"{r.case}\n{r.mode}\n{r.fraction_of_roofline:.0%} of roofline"
                for r in rec.results.itertuples()
            ]
        )
        long = df.melt(
            id_vars="label", value_vars=list(DECODE_BARS), var_name="bar", value_name="tok_per_s"
        )
        long["bar"] = long["bar"].map(DECODE_BARS)
        sns.barplot(
            long,
            x="label",
            y="tok_per_s",
            hue="bar",
            hue_order=list(DECODE_BARS.values()),
            order=list(df["label"]),
            ax=ax,
        )
        ax.set_yscale("log")
        # ax.containers follow hue_order, and each container's bars follow `order`
        bars = dict(zip(DECODE_BARS, ax.containers))
        for i, row in enumerate(df.itertuples(index=False)):
            if pd.isna(row.target_tok_per_s):
                continue
            bar = bars[row.target_metric][i]
            ax.plot(
                bar.get_x() + bar.get_width() / 2,
                row.target_tok_per_s,
                marker="_",
                ms=24,
                mew=3,
                ls="none",
                color="black" if row.target_met else "crimson",
                label="target, on its metric's bar: " + ("met" if row.target_met else "missed"),
            )
        legend |= dict(zip(*reversed(ax.get_legend_handles_labels())))
        ax.get_legend().remove()
        ax.set_xlabel("")
        ax.set_ylabel("tokens/s")
        ax.tick_params(axis="x", labelsize="small")
        ax.set_title(
            f"{rec.record}\n{rec.device_name}\n"
            f"copy bandwidth {rec.copy_bytes_per_s / 1e9:,.0f} GB/s (read + written)",
            fontsize="medium",
        )
    for ax in axes[len(records) :]:
        ax.set_visible(False)
    fig.legend(legend.values(), legend.keys(), loc="outside lower center", ncols=min(3, len(legend)))
    return fig


def write_figure(fig: Figure, out_dir: Path, name: str, pdf: bool) -> list[Path]:
    """<out_dir>/<name>.png, and .pdf with `pdf`; each written to a temp name renamed into place."""
    if pdf:
        return list(save(fig, Path(out_dir) / name))
    path = Path(out_dir) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        fig.savefig(tmp, format="png", dpi=PNG_DPI)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return [path]


# ---------------------------------------------------------------- command line


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--results",
        type=Path,
        default=REPO / "benchmarks" / "results",
        help="folder of the *-sidecar*.json and *-decode*.json records",
    )
    p.add_argument(
        "--cells-metrics",
        type=Path,
        nargs="*",
        default=[],
        help="metrics.parquet tables whose cells join the counter-vs-integral figure",
    )
    p.add_argument("--out", type=Path, default=REPO / "docs" / "figures")
    p.add_argument("--pdf", action="store_true", help="also write a PDF of each figure")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sidecar_paths = find_records(args.results, "sidecar_overhead")
    overheads = [sidecar_overhead(p) for p in sidecar_paths]
    windows = pd.concat(
        [sidecar_windows(p) for p in sidecar_paths]
        + [cells_windows(p) for p in args.cells_metrics],
        ignore_index=True,
    )
    band, min_window_s = energy_criteria(overheads)
    decodes = [decode_vs_roofline(p) for p in find_records(args.results, "decode_roofline")]
    written = []
    for name, fig in (
        ("sidecar-overhead", plot_sidecar_overhead(overheads)),
        ("counter-vs-integral", plot_counter_vs_integral(windows, band, min_window_s)),
        ("decode-roofline", plot_decode_roofline(decodes)),
    ):
        written += write_figure(fig, args.out, name, args.pdf)
    print("\n".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The serving comparison figure: our continuous-batching points (benchmarks/serving.py records)
beside ML.ENERGY's vLLM curves on the H100 and the B200 (../shared/data/mlenergy/*_configs.csv):
output tokens/s and median inter-token latency against J/token, one point per max_num_seqs.

Our points: each continuous case of each record, over ML.ENERGY's steady window (filled; the window
their numbers use) and over the whole run (hollow), labelled with max_num_seqs; a point whose
steady window ML.ENERGY's rule would drop (under 20 s, or a mean batch under 85 % of max_num_seqs)
is drawn with an x.

    python benchmarks/plot_serving.py benchmarks/results/h100-serving*.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure
from plot_records import write_figure
from serving import MLENERGY_DIR, read_mlenergy_configs

from tokencarbon.errors import InputError
from tokencarbon.figures.common import new_figure, themed

REPO = Path(__file__).resolve().parents[1]
COLUMNS = [
    "series", "source", "gpu", "request_set", "window", "max_num_seqs", "tok_per_s",
    "j_per_token", "itl_p50_ms", "dropped",
]  # fmt: skip


def _gpu(device_name: str) -> str:
    for gpu in ("H100", "H200", "B200", "A100"):
        if gpu in device_name:
            return gpu
    return device_name


def comparison_table(records: list[tuple[Path, dict]], configs: list[dict]) -> pd.DataFrame:
    """One row per point (COLUMNS): ML.ENERGY's rows (window "steady", as published), and per
    continuous case of each record its steady window (where it has one with energy) and its whole
    run. records: (path, parsed JSON) of benchmarks/serving.py records. InputError naming the file
    for a record that is not one or a case that lacks a field the figure needs."""
    rows = []
    for c in configs:
        rows.append({
            "series": f"vLLM 0.11.1 (ML.ENERGY), {c['gpu_model']}", "source": "ML.ENERGY",
            "gpu": c["gpu_model"], "request_set": "lm-arena-chat", "window": "steady",
            "max_num_seqs": c["max_num_seqs"], "tok_per_s": c["output_throughput_tokens_per_sec"],
            "j_per_token": c["energy_per_token_joules"], "itl_p50_ms": c["median_itl_ms"],
            "dropped": False,
        })  # fmt: skip
    for path, record in records:
        if record.get("benchmark") != "serving":
            raise InputError(
                f"{path}: field 'benchmark' is {record.get('benchmark')!r}; expected 'serving'"
            )
        gpu = _gpu(record.get("machine", {}).get("device_name", "?"))
        for case in record.get("cases", []):
            if (
                case.get("engine") != "continuous"
                or "error" in case
                or case.get("n_requests", 9) <= 8
            ):
                continue  # batch-1 decode probes (a few requests) are no serving points
            try:
                stats = case["stats"]
                layout = case.get("kv_layout", "slots")
                series = f"ours ({layout}), {gpu}, {case.get('request_set', 'synthetic')} set"
                base = {"series": series, "source": "tokencarbon", "gpu": gpu,
                        "request_set": case.get("request_set", "synthetic"),
                        "max_num_seqs": case["concurrency"]}  # fmt: skip
                rows.append(base | {
                    "window": "whole run", "tok_per_s": case["output_tok_per_s"],
                    "j_per_token": case["j_per_output_token"],
                    "itl_p50_ms": (stats.get("itl_ms") or {}).get("p50", float("nan")),
                    "dropped": False,
                })  # fmt: skip
                steady = stats.get("steady") or {}
                if steady.get("j_per_output_token"):
                    rows.append(base | {
                        "window": "steady", "tok_per_s": steady["output_tok_per_s"],
                        "j_per_token": steady["j_per_output_token"],
                        "itl_p50_ms": (steady.get("itl_ms") or {}).get("p50", float("nan")),
                        "dropped": bool(steady.get("flags")),
                    })  # fmt: skip
            except KeyError as exc:
                raise InputError(f"{path}: case {case.get('name')!r} lacks field {exc}") from exc
    return pd.DataFrame(rows, columns=COLUMNS)


@themed
def plot_comparison(df: pd.DataFrame) -> Figure:
    """Two panels against J/token (log): output tokens/s and median ITL (ms); one line per series
    through its points in max_num_seqs order, each point labelled with its max_num_seqs."""
    if df.empty:
        raise InputError("serving comparison: no points to draw")
    fig = new_figure(13.0, 6.5)
    axes = fig.subplots(1, 2)
    series = list(dict.fromkeys(df["series"]))
    colors = dict(zip(series, [f"C{i}" for i in range(len(series))]))
    panels = [
        (axes[0], "tok_per_s", "output tokens/s"),
        (axes[1], "itl_p50_ms", "median inter-token latency (ms)"),
    ]
    for ax, metric, label in panels:
        for (name, window), part in df.groupby(["series", "window"], sort=False):
            part = part.sort_values("max_num_seqs").dropna(subset=[metric])
            if part.empty:
                continue
            ours = part["source"].iloc[0] == "tokencarbon"
            style = "-" if window == "steady" else ":"
            ax.plot(part["j_per_token"], part[metric], style, color=colors[name], alpha=0.8,
                    label=f"{name}, {window}")  # fmt: skip
            for row in part.itertuples():
                marker = "x" if row.dropped else "o"
                fill = colors[name] if window == "steady" else "none"
                ax.plot(row.j_per_token, getattr(row, metric), marker, color=colors[name],
                        mfc=fill, ms=6 if ours else 4)  # fmt: skip
                ax.annotate(str(row.max_num_seqs), (row.j_per_token, getattr(row, metric)),
                            textcoords="offset points", xytext=(4, 3), fontsize="x-small",
                            color=colors[name])  # fmt: skip
        ax.set_xscale("log")
        ax.set_xlabel("J per output token (log)")
        ax.set_ylabel(label)
    axes[0].set_title("throughput against energy per token", fontsize="medium")
    axes[1].set_title("latency against energy per token", fontsize="medium")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=2, fontsize="small")
    return fig


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("records", type=Path, nargs="+", help="benchmarks/serving.py records (JSON)")
    p.add_argument("--mlenergy-dir", type=Path, default=MLENERGY_DIR)
    p.add_argument("--out", type=Path, default=REPO / "docs" / "figures")
    p.add_argument("--name", default="serving-vs-mlenergy")
    p.add_argument("--pdf", action="store_true")
    args = p.parse_args(argv)
    configs = read_mlenergy_configs(args.mlenergy_dir)
    if configs is None:
        raise SystemExit(f"{args.mlenergy_dir}: no ML.ENERGY configs CSV; pass --mlenergy-dir")
    records = []
    for path in args.records:
        try:
            records.append((path, json.loads(path.read_text(encoding="utf-8"))))
        except (OSError, json.JSONDecodeError) as exc:
            raise SystemExit(f"{path}: not a readable JSON record ({exc})") from exc
    table = comparison_table(records, configs)
    for path in write_figure(plot_comparison(table), args.out, args.name, args.pdf):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

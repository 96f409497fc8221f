"""Results that leave the machine: one JSON per cell and metrics.csv under results/export/.

Schema "tokencarbon.cell" version EXPORT_SCHEMA_VERSION, documented field by field in
docs/export.md. Field names follow the two public result formats closest to ours, so a reader of
either recognises them: ML.ENERGY's leaderboard (energy_per_token_joules, total_energy_joules,
output_throughput_tokens_per_sec, total_input_tokens, total_output_tokens, num_requests,
energy_per_request_joules, gpu_model, num_gpus, max_num_seqs; ml-energy/leaderboard
scripts/build_data.py) and optimum-benchmark's report (per block `unit` + values: energy in kWh
with cpu/gpu/ram/total, efficiency in tokens/kWh, latency with mean/p50/p90/p99, throughput;
huggingface/optimum-benchmark trackers/energy.py, latency.py). Every METRICS column is also kept
verbatim under "metrics", in tokencarbon's own names and SI units.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tokencarbon import tables
from tokencarbon.errors import InputError
from tokencarbon.files import write_text

EXPORT_SCHEMA = "tokencarbon.cell"
EXPORT_SCHEMA_VERSION = 1
J_PER_KWH = 3.6e6


def _plain(value: Any) -> Any:
    """A JSON-safe builtin: numpy scalars unwrapped, NaN and inf -> None, arrays -> lists."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def cell_file(platform: str, model: str, mode: str, batch_size: int) -> str:
    """Where a cell's JSON goes, relative to results/export/cells/ (the cell tree's layout)."""
    from tokencarbon.layout import CellKey

    return f"{CellKey(platform, model, mode, int(batch_size)).name}.json"


def _server(meta: dict | None) -> dict | None:
    """A server cell's (backend openai_server) record of its server, for provenance: model,
    base_url, lengths_forced, prompt_tokens_exact, requests_short; None for other cells."""
    server = (meta or {}).get("server")
    if not server:
        return None
    keep = ("model", "base_url", "lengths_forced", "prompt_tokens_exact", "requests_short")
    return {k: server.get(k) for k in keep}


def cell_record(metrics: dict[str, Any], cell: dict[str, Any], meta: dict | None = None) -> dict:
    """The export record of one cell from its METRICS row, its CELLS row and (optionally) its
    meta.json. Missing METRICS columns (an older table) become null."""
    m = {k: _plain(v) for k, v in metrics.items()}
    g = m.get
    energy_j, out_tokens, n_requests = g("energy_j"), g("output_tokens"), g("n_requests")
    repeats = g("n_repeats") or 1
    per_request = g("j_per_request")
    if per_request is None and energy_j is not None and n_requests:
        per_request = energy_j / (n_requests * repeats)
    continuous = cell.get("mode") == "continuous"

    def kwh(j):
        return None if j is None else j / J_PER_KWH

    imported = (meta or {}).get("imported")
    return _plain(
        {
            "schema": EXPORT_SCHEMA,
            "schema_version": EXPORT_SCHEMA_VERSION,
            "cell": {
                "platform": cell["platform"],
                "model": cell["model"],
                "mode": cell["mode"],
                "batch_size": int(cell["batch_size"]),
                "max_num_seqs": int(cell["batch_size"]) if continuous else None,
                "architecture": cell.get("architecture"),
                "dtype": cell.get("dtype"),
                "backend": cell.get("backend"),
                "device_name": cell.get("device_name"),
                "device_kind": cell.get("device_kind"),
                "gpu_model": cell.get("device_name") if cell.get("device_kind") != "cpu" else None,
                "num_gpus": 0 if cell.get("device_kind") == "cpu" else 1,
                "arrival": cell.get("arrival"),
                "request_rate_per_s": cell.get("request_rate_per_s"),
            },
            "workload": {
                "num_requests": n_requests,
                "num_repeats": repeats,
                "total_input_tokens": g("input_tokens"),
                "total_output_tokens": out_tokens,
            },
            "energy": {
                "unit": "J",
                "total_energy_joules": energy_j,
                "energy_per_token_joules": g("j_per_token"),
                "energy_per_request_joules": per_request,
                "method": g("energy_method"),
                "counter_joules": g("energy_counter_j"),
                "integrated_joules": g("energy_integrated_j"),
                "counter_vs_integral_relative_difference": g("energy_relative_difference"),
                "idle_power_watts": g("idle_power_w"),
                "idle_energy_joules": g("idle_energy_j"),
                "above_idle_energy_joules": g("above_idle_energy_j"),
                "modeled": g("energy_method") == "modeled",
                "qa_flags": [f for f in (g("qa_flags") or "").split(";") if f],
            },
            # optimum-benchmark's blocks: energy in kWh of one device (ours: the measured device
            # only, so cpu/ram are null unless the device is the CPU), efficiency in tokens/kWh.
            "energy_kwh": {
                "unit": "kWh",
                "cpu": kwh(energy_j) if cell.get("device_kind") == "cpu" else None,
                "gpu": kwh(energy_j) if cell.get("device_kind") == "gpu" else None,
                "ram": None,
                "total": kwh(energy_j),
            },
            "efficiency": {
                "unit": "tokens/kWh",
                "value": out_tokens / kwh(energy_j) if energy_j and out_tokens else None,
            },
            "carbon": {
                "unit": "gCO2eq",
                "intensity_g_per_kwh": g("intensity_g_per_kwh"),
                "intensity_filled_share": g("filled_share"),
                "pue": g("pue"),
                "operational_g": g("operational_g"),
                "embodied_g": g("embodied_g"),
                "embodied_g_high": g("embodied_g_high"),
                "total_g": g("carbon_g"),
                "carbon_per_token_g": g("g_per_token"),
                "carbon_per_token_with_embodied_g": g("g_per_token_with_embodied"),
            },
            "latency": {
                "unit": "s",
                "duration_seconds": g("window_s"),
                "s_per_token_user": g("s_per_token_user"),
                "e2e_s_per_token": g("e2e_s_per_token"),
                "ttft": {"mean": g("ttft_s"), "p50": g("ttft_p50_s"), "p90": g("ttft_p90_s"),
                         "p99": g("ttft_p99_s")},
                "tpot": {"mean": g("tpot_s"), "p50": g("tpot_p50_s"), "p90": g("tpot_p90_s"),
                         "p99": g("tpot_p99_s")},
                "e2e": {"p50": g("e2e_p50_s"), "p90": g("e2e_p90_s"), "p99": g("e2e_p99_s")},
            },  # fmt: skip
            "throughput": {
                "unit": "tokens/s",
                "output_throughput_tokens_per_sec": g("tokens_per_s"),
            },
            "utilization": {
                "flops": g("flops"),
                "mfu": g("mfu"),
                "bytes_moved": g("bytes_moved"),
                "mbu": g("mbu"),
            },
            "provenance": {
                "power_source": cell.get("power_source"),
                "power_interval_s": cell.get("power_interval_s"),
                "n_power_samples": g("n_power_samples"),
                "window_start_wall_ns": cell.get("window_start_wall_ns"),
                "window_end_wall_ns": cell.get("window_end_wall_ns"),
                "git_commit": cell.get("git_commit"),
                "imported": imported,
                "server": _server(meta),
            },
            "metrics": m,
        }
    )


def export(
    metrics: pd.DataFrame,
    cells: pd.DataFrame,
    out_dir: str | Path,
    *,
    metas: dict[tuple, dict] | None = None,
    device_kinds: dict[str, str] | None = None,
) -> list[Path]:
    """Write out_dir/metrics.csv and out_dir/cells/<platform>/<model>/<bs|cb><n>.json.

    metrics: the METRICS table; cells: the CELLS table (one row per cell, joined on the cell keys).
    metas: optional meta.json per cell key (for imported cells' provenance). device_kinds: platform
    -> "cpu" | "gpu" (for the optimum-benchmark energy block). Returns the JSON paths written.
    Raises InputError when a metrics row has no cell row (tables from different runs).
    """
    out_dir = Path(out_dir)
    keys = [name for name, _ in tables.CELL_KEYS]
    by_key = {tuple(r[k] for k in keys): r for r in cells.to_dict("records")}
    written = []
    for row in metrics.to_dict("records"):
        key = tuple(row[k] for k in keys)
        if key not in by_key:
            raise InputError(
                f"metrics row {key} has no row in the cells table; metrics and cells come from "
                "different runs: rerun aggregate_cells and compute_metrics"
            )
        cell = dict(by_key[key])
        cell["device_kind"] = (device_kinds or {}).get(cell["platform"])
        record = cell_record(row, cell, (metas or {}).get(key))
        path = out_dir / "cells" / cell_file(*key)
        write_text(path, json.dumps(record, indent=2, sort_keys=False, allow_nan=False) + "\n")
        written.append(path)
    write_text(out_dir / "metrics.csv", metrics.to_csv(index=False))
    return written


# The export stage's outputs, for `all` (workflow/rules/export.smk).
EXPORT_TARGETS = ("results/export/metrics.csv", "results/export/cells")

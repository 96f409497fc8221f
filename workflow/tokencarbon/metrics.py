"""Per-cell metrics: energy (counter and integral), carbon, per-token figures, MFU and MBU.

docs/metrics.md gives every formula and how ours differs from the study's.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from tokencarbon import flops, tables
from tokencarbon.carbon import DEFAULT_MAX_FILL_S, embodied_carbon_g, window_carbon
from tokencarbon.energy import combine, idle_power, select_device
from tokencarbon.models import Architecture
from tokencarbon.platforms import Platform, peak_bandwidth_bytes_per_s, peak_flops


def batch_work(arch: Architecture, batch: pd.Series, dtype: str) -> tuple[float, float]:
    """(FLOPs, bytes) a static batch must do/move for its real tokens (flops.py conventions).

    Decode step k (1..max_out-1) reads every weight once and the cache of each request still
    generating (output_len > k), whose context is prompt_len + k.
    """
    prompt_lens = [int(p) for p in batch["prompt_lens"]]
    output_lens = [int(n) for n in batch["output_lens"]]
    work_flops = flops.batch_flops(arch, prompt_lens, output_lens)
    moved = float(flops.prefill_bytes(arch, prompt_lens, dtype))
    for k in range(1, max(output_lens)):
        active = [p + k for p, n in zip(prompt_lens, output_lens) if n > k]
        moved += flops.decode_step_bytes(arch, active, dtype)
    return work_flops, moved


def latency_metrics(batches: pd.DataFrame) -> dict[str, float]:
    """The study's user-perceived s/token and our TTFT / TPOT, averaged over batches."""
    duration_s = (batches["end_ns"] - batches["start_ns"]) / 1e9
    prefill_s = (batches["first_token_ns"] - batches["start_ns"]) / 1e9
    decode_s = (batches["end_ns"] - batches["first_token_ns"]) / 1e9
    steps = batches["max_output_tokens"] - 1
    tpot = (decode_s[steps > 0] / steps[steps > 0]).mean() if (steps > 0).any() else float("nan")
    return {
        # Lim et al.: a batch's latency divided by the tokens each of its requests generated.
        "s_per_token_user": float((duration_s / batches["max_output_tokens"]).mean()),
        "ttft_s": float(prefill_s.mean()),
        "tpot_s": float(tpot),
    }


def _cell_name(cell: dict[str, Any]) -> str:
    prefix = tables.CELL_DIR_PREFIX.get(cell["mode"], cell["mode"])
    return f"{cell['platform']}/{cell['model']}/{prefix}{cell['batch_size']}"


def _idle(cell: dict[str, Any], power: pd.DataFrame, where: str) -> tuple[float, list[str]]:
    """Idle power (W) from the cell's phase "idle" samples, with that window's flags as idle_<flag>.

    A cell without idle samples (written before they were kept) falls back to the idle power its
    meta.json recorded, flagged "idle_power_from_meta".
    """
    idle = power[power["phase"] == "idle"]
    if len(idle) < 2:
        return float(cell["idle_power_w"]), ["idle_power_from_meta"]
    idle_power_w, record = idle_power(idle, where=f"{where} (phase idle)")
    return idle_power_w, [f"idle_{f}" for f in record.qa_flags]


def cell_metrics(
    cell: dict[str, Any],
    batches: pd.DataFrame,
    power: pd.DataFrame,
    arch: Architecture,
    platform: Platform,
    intensity: Any,
    *,
    pue: float,
    fill: str | None,
    max_fill_s: float | None = DEFAULT_MAX_FILL_S,
) -> dict[str, Any]:
    """One METRICS row for a cell, from its batches and its power samples (both phases).

    Raises InputError where the power samples hold several devices (the cell measured one), do not
    span a batch, or the intensity trace does not cover a batch (within carbon.max_fill_s under a
    fill policy). A counter that is not plausible over a window never raises: that window's energy
    is the integral, flagged (tokencarbon.energy).
    """
    where = f"power samples of {_cell_name(cell)}"
    select_device(power, None, where)
    idle_power_w, idle_flags = _idle(cell, power, where)
    # Energy, carbon and rates count the batches' own time: engine set-up between batches
    # (cache allocation, graph capture or compilation for a new shape) is excluded.
    windows = [(int(s), int(e)) for s, e in zip(batches["start_wall_ns"], batches["end_wall_ns"])]
    run = power[power["phase"] == "run"]
    parts = [
        window_carbon(
            run, s, e, intensity, pue=pue, fill=fill, max_fill_s=max_fill_s,
            idle_power_w=idle_power_w, where=where,
        )
        for s, e in windows
    ]  # fmt: skip
    energy = combine([p[0] for p in parts], idle_power_w)
    carbons = [p[1] for p in parts]
    operational_g = sum(c.carbon_g for c in carbons)
    carbon_energy_j = sum(c.energy_j for c in carbons)
    intensity_g_per_kwh = (
        sum(c.intensity_g_per_kwh * c.energy_j for c in carbons) / carbon_energy_j
        if carbon_energy_j > 0 else float(np.mean([c.intensity_g_per_kwh for c in carbons]))
    )
    filled_share = sum(c.filled_s for c in carbons) / energy.window_s
    flags = list(energy.qa_flags) + idle_flags
    if filled_share > 0:
        flags.append("intensity_filled")
    embodied_g = embodied_carbon_g(platform.embodied_kg_co2e, platform.lifetime_years, energy.window_s)
    work = [batch_work(arch, b, cell["dtype"]) for _, b in batches.iterrows()]
    total_flops = float(sum(f for f, _ in work))
    total_bytes = float(sum(b for _, b in work))
    out_tokens = int(batches["output_tokens"].sum())
    return {
        "platform": cell["platform"],
        "model": cell["model"],
        "mode": cell["mode"],
        "batch_size": int(cell["batch_size"]),
        "architecture": cell["architecture"],
        "dtype": cell["dtype"],
        "n_requests": int(cell["n_requests"]),
        "input_tokens": int(batches["input_tokens"].sum()),
        "output_tokens": out_tokens,
        "window_s": energy.window_s,
        "n_power_samples": energy.n_samples,
        "energy_method": energy.method,
        "energy_j": energy.energy_j,
        "energy_counter_j": energy.energy_counter_j,
        "energy_integrated_j": energy.energy_integrated_j,
        "energy_relative_difference": energy.relative_difference,
        "qa_flags": ";".join(flags),
        "idle_power_w": idle_power_w,
        "idle_energy_j": energy.idle_energy_j,
        "above_idle_energy_j": energy.above_idle_energy_j,
        "intensity_g_per_kwh": intensity_g_per_kwh,
        "filled_share": filled_share,
        "pue": pue,
        "operational_g": operational_g,
        "embodied_g": embodied_g,
        "carbon_g": operational_g + embodied_g,
        "j_per_token": energy.energy_j / out_tokens,
        "g_per_token": operational_g / out_tokens,
        "g_per_token_with_embodied": (operational_g + embodied_g) / out_tokens,
        "tokens_per_s": out_tokens / energy.window_s,
        **latency_metrics(batches),
        "flops": total_flops,
        "mfu": total_flops / (energy.window_s * peak_flops(platform, cell["dtype"])),
        "bytes_moved": total_bytes,
        "mbu": total_bytes / (energy.window_s * peak_bandwidth_bytes_per_s(platform)),
    }


def all_metrics(cells: pd.DataFrame, batches: pd.DataFrame, power: pd.DataFrame,
                archs: dict[str, Architecture], platforms: dict[str, Platform], intensity: Any,
                *, pue: float, fill: str | None,
                max_fill_s: float | None = DEFAULT_MAX_FILL_S) -> pd.DataFrame:
    """METRICS rows of every cell (cells: CELLS; batches, power: aggregated, cell keys in front)."""
    keys = [name for name, _ in tables.CELL_KEYS]
    b_groups = dict(tuple(batches.groupby(keys)))
    p_groups = dict(tuple(power.groupby(keys)))
    rows = []
    for cell in cells.to_dict("records"):
        key = tuple(cell[k] for k in keys)
        rows.append(cell_metrics(cell, b_groups[key], p_groups[key], archs[cell["architecture"]],
                                 platforms[cell["platform"]], intensity, pue=pue, fill=fill,
                                 max_fill_s=max_fill_s))
    return pd.DataFrame(rows)

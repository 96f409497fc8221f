"""Per-cell metrics: energy (counter and integral), carbon, per-token figures, MFU and MBU; per
repeat (METRICS_REPEATS) and per cell with bootstrap intervals over repeats; steady-state figures;
latency percentiles and energy per request, for static and continuous-batching cells.

docs/metrics.md gives every formula and how ours differs from the study's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import pandas as pd

from tokencarbon import flops, tables
from tokencarbon.carbon import (
    CarbonAccounting,
    CarbonRecord,
    embodied_carbon_g,
    mean_intensity,
    operational_carbon,
)
from tokencarbon.energy import EnergyRecord, combine, idle_power, select_device, window_energy
from tokencarbon.errors import ConfigError, InputError
from tokencarbon.models import Architecture, kv_cache_bytes, weight_bytes
from tokencarbon.layout import CellKey
from tokencarbon.quantization import from_columns
from tokencarbon.platforms import (
    MEASURE_KEY,
    Platform,
    peak_bandwidth_bytes_per_s,
    peak_flops,
    resolve_platform,
)
from tokencarbon.stats import bootstrap_ci, coefficient_of_variation
from tokencarbon.units import NS_PER_S

# NVML clocks-event reasons that slow the clocks below what the load asks for (nvml.h:
# HwSlowdown 0x8, SwThermalSlowdown 0x20, HwThermalSlowdown 0x40, HwPowerBrakeSlowdown 0x80).
# SwPowerCap (0x4) is left out: a loaded GPU at its power limit is in its steady state.
THROTTLE_MASK = 0x8 | 0x20 | 0x40 | 0x80
# A repeat's start-up transient: its leading static batches whose mean power is below this share
# of the median batch's mean power in the repeat.
TRANSIENT_POWER_SHARE = 0.9
CI_METRICS = ("j_per_token", "g_per_token", "tokens_per_s", "s_per_token_user", "e2e_s_per_token")
PERCENTILES = (50, 90, 99)
# BATCHES / REQUESTS first_token_ns (and first_token_wall_ns) of a window or request whose first
# token time is unknown (an imported timing file without it): TTFT and TPOT are NaN there.
UNKNOWN_TIME_NS = -1
# QA flags of cells with unknown parts (imported timing files).
FIRST_TOKEN_UNKNOWN_FLAG = "first_token_unknown"
INPUT_TOKENS_UNKNOWN_FLAG = "input_tokens_unknown"
# QA flags of cells whose devices other processes used during the measured window (CELLS'
# foreign_cpu_share, foreign_gpu_processes; tokencarbon.occupancy): their latency and throughput,
# and any wall-socket or whole-device power, include that load. A share at or below 0.05 is the
# bound under which cells print no note (cell.py; docs/data.md: below ~0.01 is tick rounding).
MAX_FOREIGN_CPU_SHARE = 0.05
FOREIGN_CPU_FLAG = "foreign_cpu_use"
FOREIGN_GPU_FLAG = "foreign_gpu_processes"
# ... and of CPU cells on a virtual machine whose hypervisor ran other guests on their CPUs (CELLS'
# cpu_steal_share, steal time / (window x pinned CPUs)) for more than the same share of the window.
MAX_CPU_STEAL_SHARE = 0.05
CPU_STEAL_FLAG = "cpu_steal"
# The cell's idle window was an earlier cell's on the same device (power.idle_share_s): its idle
# power is that window's, not sampled after this cell's own warm-up (tokencarbon.idle_share).
IDLE_SHARED_FLAG = "idle_shared"
# QA flag of every cell of a platform whose measured peaks (rule measure_platform) were measured
# while other processes used more than MAX_FOREIGN_CPU_SHARE of its CPUs: the peaks are low, so
# MFU and MBU read high.
PEAKS_UNDER_LOAD_FLAG = "peaks_measured_under_load"
# QA flags of a cell whose MFU or MBU exceeds 1 (100 %): more FLOPs or bytes per second than the
# platform's peak allows, which no device does; the peak (platforms.csv, config spec or a
# measurement, see spec_source) or the work counted is wrong. The value is kept so that the size of
# the error shows; the summary lists the cell among the flagged ones.
MFU_ABOVE_PEAK_FLAG = "mfu_above_100pct"
MBU_ABOVE_PEAK_FLAG = "mbu_above_100pct"


@dataclass(frozen=True)
class MetricsSettings:
    """Config `metrics` keys (params of compute_metrics), each with its default.

    max_j_per_token_cv: QA flag j_per_token_cv_high above this CV of J/token over repeats.
    min_steady_s: QA flag steady_window_short below this much steady state (ML.ENERGY's 20 s).
    confidence, n_resamples, seed: the bootstrap intervals over repeats (tokencarbon.stats).
    """

    max_j_per_token_cv: float = 0.05
    min_steady_s: float = 20.0
    confidence: float = 0.95
    n_resamples: int = 10_000
    seed: int = 0

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | None) -> MetricsSettings:
        """Settings from a config slice; unknown keys and bad values raise ConfigError."""
        params = dict(params or {})
        known = {f.name: f.type for f in fields(cls)}
        unknown = sorted(set(params) - set(known))
        if unknown:
            raise ConfigError(f"config key metrics.{unknown[0]}: unknown; valid: {sorted(known)}")
        values = {k: v for k, v in params.items() if v is not None}
        out = cls(**values)
        checks = {
            "max_j_per_token_cv": out.max_j_per_token_cv > 0,
            "min_steady_s": out.min_steady_s >= 0,
            "confidence": 0 < out.confidence < 1,
            "n_resamples": out.n_resamples >= 1 and float(out.n_resamples).is_integer(),
            "seed": float(out.seed).is_integer(),
        }
        for key, ok in checks.items():
            value = getattr(out, key)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and ok):
                raise ConfigError(f"config key metrics.{key}: {value!r} is not valid")
        return out


def input_tokens_unknown(batch: pd.Series) -> bool:
    """True where a BATCHES row's prompt lengths are unknown: prompt_lens [] with requests in it
    (an imported timing window without input_tokens; tokencarbon.importing writes it so)."""
    return len(batch["prompt_lens"]) == 0 and int(batch["n_requests"]) > 0


def batch_work(
    arch: Architecture, batch: pd.Series, dtype: str, quantization=None
) -> tuple[float, float]:
    """(FLOPs, bytes) a static batch must do/move for its real tokens (flops.py conventions).

    Decode step k (1..max_out-1) reads every weight once and the cache of each request still
    generating (output_len > k), whose context is prompt_len + k. Where the prompt lengths are
    unknown (input_tokens_unknown: prompt_lens []), both are NaN: no FLOPs without the prompts,
    quantization: the model's weight-only quantization (weights counted as stored; None: none).
    and a made-up length would give an MFU that looks measured. Raises ConfigError (flops.py)
    where prompt_lens and output_lens disagree in length or hold a length below 1.
    """
    if input_tokens_unknown(batch):
        return float("nan"), float("nan")
    prompt_lens = [int(p) for p in batch["prompt_lens"]]
    output_lens = [int(n) for n in batch["output_lens"]]
    work_flops = flops.batch_flops(arch, prompt_lens, output_lens)
    moved = float(flops.prefill_bytes(arch, prompt_lens, dtype, quantization))
    for k in range(1, max(output_lens)):
        active = [p + k for p, n in zip(prompt_lens, output_lens) if n > k]
        moved += flops.decode_step_bytes(arch, active, dtype, quantization)
    return work_flops, moved


def steps_bytes(
    arch: Architecture, steps: pd.DataFrame, dtype: str, quantization=None
) -> float:
    """Bytes the engine steps of a continuous-batching repeat moved at least.

    Per step: every weight once as stored (weight_bytes with `quantization`), and per request
    in it, its cache read and its new K/V written:
    prior + 2 x tokens positions (a decode token's K/V written, then read back with the rest, as
    flops.decode_step_bytes), or just the tokens for a request's first prefill chunk (nothing to
    read yet, as flops.prefill_bytes). prior = the request's tokens in earlier steps. Sliding
    windows are not applied (no model of ours has one in continuous cells).
    """
    prior: dict[str, int] = {}
    moved = 0.0
    per_weight = weight_bytes(arch, dtype, quantization)
    for ids, toks in zip(steps["request_ids"], steps["request_tokens"]):
        positions = 0
        for rid, tok in zip(ids, toks):
            p = prior.get(rid, 0)
            positions += p + (2 * int(tok) if p > 0 else int(tok))
            prior[rid] = p + int(tok)
        moved += per_weight + kv_cache_bytes(arch, 1, positions, dtype)
    return moved


def first_token_known(times: pd.DataFrame) -> np.ndarray:
    """Boolean per BATCHES or REQUESTS row: its first token time is known (first_token_ns and
    first_token_wall_ns both not UNKNOWN_TIME_NS)."""
    known = times["first_token_ns"].to_numpy(dtype=np.int64) != UNKNOWN_TIME_NS
    if "first_token_wall_ns" in times:
        known &= times["first_token_wall_ns"].to_numpy(dtype=np.int64) != UNKNOWN_TIME_NS
    return known


def _check_first_token(times: pd.DataFrame, start: str, end: str, where: str) -> np.ndarray:
    """first_token_known, after checking that every known first token lies in [start, end].

    Raises InputError naming the row otherwise (a first token before its window started or after
    it ended is a broken record, not a latency)."""
    known = first_token_known(times)
    first = times["first_token_ns"].to_numpy(dtype=np.int64)
    lo, hi = times[start].to_numpy(dtype=np.int64), times[end].to_numpy(dtype=np.int64)
    bad = np.flatnonzero(known & ((first < lo) | (first > hi)))
    if len(bad):
        i = int(bad[0])
        raise InputError(
            f"{where}, row {i}: first_token_ns {int(first[i])} lies outside [{start} {int(lo[i])}, "
            f"{end} {int(hi[i])}]; a first token time must be inside its window, or "
            f"{UNKNOWN_TIME_NS} where unknown"
        )
    return known


def latency_metrics(batches: pd.DataFrame, where: str = "batches") -> dict[str, float]:
    """The study's user-perceived s/token and our TTFT / TPOT, averaged over batches (s).

    TTFT and TPOT are means over the batches whose first token time is known (first_token_ns not
    UNKNOWN_TIME_NS), NaN when none is; s_per_token_user needs only start and end. Raises
    InputError where a known first token lies outside its batch.
    """
    known = _check_first_token(batches, "start_ns", "end_ns", where)
    duration_s = (batches["end_ns"] - batches["start_ns"]) / NS_PER_S
    prefill_s = (batches["first_token_ns"] - batches["start_ns"]) / NS_PER_S
    decode_s = (batches["end_ns"] - batches["first_token_ns"]) / NS_PER_S
    steps = batches["max_output_tokens"] - 1
    has_tpot = known & (steps > 0).to_numpy()
    return {
        # Lim et al.: a batch's latency divided by the tokens each of its requests generated.
        "s_per_token_user": float((duration_s / batches["max_output_tokens"]).mean()),
        "ttft_s": float(prefill_s[known].mean()) if known.any() else float("nan"),
        "tpot_s": float((decode_s[has_tpot] / steps[has_tpot]).mean())
        if has_tpot.any() else float("nan"),
    }


def static_e2e_per_token(batches: pd.DataFrame, where: str = "batches") -> np.ndarray:
    """Per request of static batches: its E2E latency per output token (s/token), the one latency
    both modes share (docs/metrics.md, "One latency axis").

    Every request of a repeat arrives when the repeat starts (the offline request set a
    continuous cell serves, arrivals at t = 0) and waits for the batches before its own: a request
    of batch k finishes when batch k ends (a static batch returns all its requests together), so
    E2E = the durations (end_ns - start_ns) of batches 0..k of its repeat summed. The engine's
    set-up between batches is left out, as window_s and tokens/s leave it out. Divided by the
    request's own output tokens (BATCHES.output_lens). One value per request, batches in
    (repeat, batch_index) order. Raises InputError where a batch's output_lens does not hold one
    length per request (n_requests) or holds a length below 1.
    """
    out = []
    ordered = batches.sort_values(["repeat", "batch_index"])
    for _, rep in ordered.groupby("repeat", sort=True):
        finish_s = np.cumsum((rep["end_ns"] - rep["start_ns"]).to_numpy(dtype=float)) / NS_PER_S
        for done_s, (i, batch) in zip(finish_s, rep.iterrows()):
            lens = np.asarray(batch["output_lens"], dtype=float)
            if len(lens) != int(batch["n_requests"]) or (lens < 1).any():
                raise InputError(
                    f"{where}, repeat {int(batch['repeat'])} batch {int(batch['batch_index'])}: "
                    f"output_lens {lens.astype(int).tolist()} must hold one length >= 1 per "
                    f"request (n_requests {int(batch['n_requests'])})"
                )
            out.append(done_s / lens)
    return np.concatenate(out) if out else np.array([], dtype=float)


def _percentiles(prefix: str, values: np.ndarray) -> dict[str, float]:
    values = values[np.isfinite(values)]
    return {
        f"{prefix}_p{q}_s": float(np.percentile(values, q)) if len(values) else float("nan")
        for q in PERCENTILES
    }


def static_request_latencies(batches: pd.DataFrame, where: str = "batches") -> dict[str, np.ndarray]:
    """Per request of static batches (s): every request of a batch shares its batch's figures.

    ttft = first_token - start; e2e = end - start (a static batch returns when its longest
    request ends); tpot = (end - first_token) / (max_output_tokens - 1), NaN for 1-token batches.
    ttft and tpot are NaN for batches whose first token time is unknown (UNKNOWN_TIME_NS).
    """
    known = _check_first_token(batches, "start_ns", "end_ns", where)
    n = batches["n_requests"].to_numpy(dtype=int)
    ttft = np.where(
        known, (batches["first_token_ns"] - batches["start_ns"]).to_numpy() / NS_PER_S, np.nan
    )
    e2e = (batches["end_ns"] - batches["start_ns"]).to_numpy() / NS_PER_S
    steps = (batches["max_output_tokens"] - 1).to_numpy(dtype=float)
    decode = (batches["end_ns"] - batches["first_token_ns"]).to_numpy() / NS_PER_S
    with np.errstate(divide="ignore", invalid="ignore"):
        tpot = np.where(known & (steps > 0), decode / steps, np.nan)
    return {"ttft": np.repeat(ttft, n), "tpot": np.repeat(tpot, n), "e2e": np.repeat(e2e, n)}


def request_latencies(requests: pd.DataFrame, where: str = "requests") -> dict[str, np.ndarray]:
    """Per request of a continuous-batching cell (s), from REQUESTS' monotonic times.

    ttft = first_token - arrival; e2e = finish - arrival; tpot = (finish - first_token) /
    (output_tokens - 1), NaN for 1-token requests. ttft and tpot are NaN for requests whose first
    token time is unknown (UNKNOWN_TIME_NS). Raises InputError where a known first token lies
    outside [arrival, finish].
    """
    known = _check_first_token(requests, "arrival_ns", "finish_ns", where)
    arrival = requests["arrival_ns"].to_numpy()
    first = requests["first_token_ns"].to_numpy()
    finish = requests["finish_ns"].to_numpy()
    out = requests["output_tokens"].to_numpy(dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        tpot = np.where(known & (out > 1), (finish - first) / NS_PER_S / (out - 1), np.nan)
    ttft = np.where(known, (first - arrival) / NS_PER_S, np.nan)
    return {"ttft": ttft, "tpot": tpot, "e2e": (finish - arrival) / NS_PER_S}


def step_tiles(steps: pd.DataFrame, start_ns: int, end_ns: int) -> np.ndarray:
    """Edges of a repeat's step tiles: [start, s_1, ..., s_{n-1}, end] (n + 1 values).

    Step k's energy window is [start_wall_ns[k], start_wall_ns[k+1]) (tables.STEPS); the first
    tile starts at the repeat's window start, the last ends at its end. Raises InputError where
    step starts do not increase strictly or leave the window.
    """
    starts = steps.sort_values("step_index")["start_wall_ns"].to_numpy(dtype=np.int64)
    inner = starts[1:]
    if (np.diff(starts) <= 0).any() or (len(inner) and (inner[0] <= start_ns or inner[-1] >= end_ns)):
        raise InputError(
            f"steps' start_wall_ns {starts[:5].tolist()}...: must increase strictly and lie inside "
            f"the repeat's window [{start_ns}, {end_ns}] ns"
        )
    return np.concatenate([[start_ns], inner, [end_ns]]).astype(np.int64)


def attribute_step_energy(
    steps: pd.DataFrame, tile_energy_j: np.ndarray, requests: pd.DataFrame
) -> pd.Series:
    """Energy per request (J, indexed by request_id) of one repeat, summing to the tiles' energy.

    Step k's tile energy is shared among the requests that had tokens in it in proportion to
    request_tokens (a prefill chunk of 200 tokens takes 200 times a decode token's share). A tile
    with no request (an engine waiting for arrivals) is shared among all requests in proportion
    to their tokens in the repeat (input + output), as the idle time serves them all.
    """
    ordered = steps.sort_values("step_index")
    ids = requests["request_id"].astype(str).tolist()
    energy = pd.Series(0.0, index=ids)
    idle_j = 0.0
    for (rids, toks), e_j in zip(zip(ordered["request_ids"], ordered["request_tokens"]), tile_energy_j):
        toks = np.asarray(toks, dtype=float)
        if len(rids) == 0 or toks.sum() <= 0:
            idle_j += e_j
            continue
        unknown = set(map(str, rids)) - set(ids)
        if unknown:
            raise InputError(f"steps name request(s) {sorted(unknown)[:3]} that REQUESTS lacks")
        energy.loc[[str(r) for r in rids]] += e_j * toks / toks.sum()
    if idle_j:
        weight = (requests["input_tokens"] + requests["output_tokens"]).to_numpy(dtype=float)
        energy += idle_j * weight / weight.sum()
    return energy


def _steady_static(
    batches: pd.DataFrame, records: list[EnergyRecord], run: pd.DataFrame
) -> np.ndarray:
    """Boolean per window (batch): after its repeat's start-up transient and not throttled."""
    duration_s = np.array([r.window_s for r in records])
    mean_w = np.array([r.energy_j for r in records]) / duration_s
    steady = np.zeros(len(batches), dtype=bool)
    for _, idx in batches.groupby("repeat").indices.items():
        idx = np.sort(idx)
        level = np.median(mean_w[idx])
        reached = np.flatnonzero(mean_w[idx] >= TRANSIENT_POWER_SHARE * level)
        steady[idx[reached[0]:]] = True
    return steady & ~_throttled_windows(batches, run)


def _throttled_windows(batches: pd.DataFrame, run: pd.DataFrame) -> np.ndarray:
    t = run["t_wall_ns"].to_numpy(dtype=np.int64)
    reasons = run["throttle_reasons"].to_numpy(dtype=np.int64)
    slowed = (reasons > 0) & ((reasons & THROTTLE_MASK) != 0)
    out = []
    for s, e in zip(batches["start_wall_ns"], batches["end_wall_ns"]):
        inside = (t >= s) & (t <= e)
        out.append(bool(slowed[inside].any()))
    return np.array(out, dtype=bool)


def _tokens_per_step(steps: pd.DataFrame, requests: pd.DataFrame) -> np.ndarray:
    """Output tokens each step produced: a request yields one token in every step after which its
    processed tokens reach its input length (the end of its prefill, then each decode step)."""
    inputs = dict(zip(requests["request_id"].astype(str), requests["input_tokens"].astype(int)))
    done: dict[str, int] = {}
    produced = []
    for rids, toks in zip(steps["request_ids"], steps["request_tokens"]):
        n = 0
        for rid, tok in zip(rids, toks):
            rid = str(rid)
            done[rid] = done.get(rid, 0) + int(tok)
            n += done[rid] >= inputs.get(rid, 0)
        produced.append(n)
    return np.array(produced, dtype=float)


@dataclass
class _Window:
    """One measured window (a static batch, or a continuous repeat) and what it measured."""

    row: pd.Series
    energy: EnergyRecord
    carbon: CarbonRecord
    tile_energy_j: np.ndarray | None = None  # continuous: energy per step tile

    @property
    def operational_g(self) -> float:
        return self.carbon.carbon_g


def _measure_window(
    run: pd.DataFrame, row: pd.Series, accounting: CarbonAccounting, *, idle_power_w: float,
    where: str, tiles_ns: np.ndarray | None,
) -> _Window:  # fmt: skip
    """Energy from energy.py over the union of intensity and step cuts; carbon per intensity piece."""
    start, end = int(row["start_wall_ns"]), int(row["end_wall_ns"])
    segs = accounting.segments(start, end)
    cuts = set(segs.edges_ns[1:-1].tolist())
    if tiles_ns is not None:
        cuts |= set(tiles_ns[1:-1].tolist())
    cuts_ns = np.array(sorted(cuts), dtype=np.int64)
    energy = window_energy(run, start, end, idle_power_w, cuts_ns=cuts_ns, where=where)
    piece_start = np.concatenate([[start], cuts_ns])
    pieces_j = np.array(energy.segment_energy_j)
    # Every piece lies in one intensity segment and one step tile: sum the pieces of each.
    seg_of = np.searchsorted(segs.edges_ns, piece_start, side="right") - 1
    seg_j = np.bincount(seg_of, weights=pieces_j, minlength=len(segs.intensity_g_per_kwh))
    carbon = operational_carbon(segs, np.clip(seg_j, 0.0, None), accounting.pue)
    tile_j = None
    if tiles_ns is not None:
        tile_of = np.searchsorted(tiles_ns, piece_start, side="right") - 1
        tile_j = np.bincount(tile_of, weights=pieces_j, minlength=len(tiles_ns) - 1)
    return _Window(row, energy, carbon, tile_j)


def _rates(windows: list[_Window], s_per_token_user: float, e2e_s_per_token: float) -> dict[str, Any]:
    energy = combine([w.energy for w in windows])
    out_tokens = int(sum(int(w.row["output_tokens"]) for w in windows))
    operational_g = sum(w.operational_g for w in windows)
    return {
        "window_s": energy.window_s,
        "output_tokens": out_tokens,
        "n_requests": int(sum(int(w.row["n_requests"]) for w in windows)),
        "energy_j": energy.energy_j,
        "energy_method": energy.method,
        "qa_flags": ";".join(energy.qa_flags),
        "operational_g": operational_g,
        "j_per_token": energy.energy_j / out_tokens,
        "g_per_token": operational_g / out_tokens,
        "tokens_per_s": out_tokens / energy.window_s,
        "s_per_token_user": s_per_token_user,
        "e2e_s_per_token": e2e_s_per_token,
    }


def _cell_name(cell: Mapping[str, Any]) -> str:
    return CellKey.of(cell).name


def _idle(cell: Mapping[str, Any], power: pd.DataFrame, where: str) -> tuple[float, list[str]]:
    """Idle power (W) from the cell's phase "idle" samples, with that window's flags as idle_<flag>.

    A cell without idle samples (written before they were kept) falls back to the idle power its
    meta.json recorded, flagged "idle_power_from_meta".
    """
    idle = power[power["phase"] == "idle"]
    if len(idle) < 2:
        return float(cell["idle_power_w"]), ["idle_power_from_meta"]
    idle_power_w, record = idle_power(idle, where=f"{where} (phase idle)")
    value = cell.get("idle_shared", False)  # missing (NA) in tables of older cells: not shared
    shared = [IDLE_SHARED_FLAG] if value is not None and not pd.isna(value) and bool(value) else []
    return idle_power_w, [f"idle_{f}" for f in record.qa_flags] + shared


def foreign_use_flags(cell: Mapping[str, Any]) -> list[str]:
    """QA flags for other processes on the cell's devices during its window (CELLS row):
    FOREIGN_CPU_FLAG above MAX_FOREIGN_CPU_SHARE, CPU_STEAL_FLAG above MAX_CPU_STEAL_SHARE of
    hypervisor steal, FOREIGN_GPU_FLAG for any other GPU process. Not measured (NaN shares, -1
    processes, or columns absent in older tables): no flag."""
    share = float(cell.get("foreign_cpu_share", math.nan))
    steal = float(cell.get("cpu_steal_share", math.nan))
    processes = int(cell.get("foreign_gpu_processes", -1))
    return (
        ([FOREIGN_CPU_FLAG] if share > MAX_FOREIGN_CPU_SHARE else [])
        + ([CPU_STEAL_FLAG] if steal > MAX_CPU_STEAL_SHARE else [])
        + ([FOREIGN_GPU_FLAG] if processes > 0 else [])
    )


@dataclass(frozen=True)
class CellMetrics:
    """A cell's METRICS row and its METRICS_REPEATS rows."""

    row: dict[str, Any]
    repeats: list[dict[str, Any]]


# ---------------------------------------------------------------- by mode


class StaticMetrics:
    """What differs in a static cell's (bs{n}) metrics: windows are batches; every request of a
    batch shares its batch's latency (the study's user-perceived s/token per batch); energy per
    request is the cell's over its requests; steady state is the batches after each repeat's
    start-up transient; bytes follow the static schedule (batch_work)."""

    def __init__(self, cell: Mapping[str, Any], batches: pd.DataFrame, run: pd.DataFrame,
                 flags: list[str]) -> None:  # fmt: skip
        self.cell, self.batches, self.run, self.flags = cell, batches, run, flags
        self.name = _cell_name(cell)

    def tiles(self, row: pd.Series) -> np.ndarray | None:
        """Cut points of a window's energy beyond the intensity's: none."""
        return None

    def latency(self) -> tuple[float, dict[str, float], dict[str, np.ndarray]]:
        """(s_per_token_user, {"ttft_s", "tpot_s", "e2e_s_per_token"} means, per-request arrays
        for percentiles). e2e_s_per_token: the mean over requests of static_e2e_per_token."""
        where = f"batches of {self.name}"
        lat = static_request_latencies(self.batches, where)
        study = latency_metrics(self.batches, where)
        if not first_token_known(self.batches).all():
            self.flags.append(FIRST_TOKEN_UNKNOWN_FLAG)
        means = {"ttft_s": study["ttft_s"], "tpot_s": study["tpot_s"],
                 "e2e_s_per_token": float(np.mean(static_e2e_per_token(self.batches, where)))}
        return study["s_per_token_user"], means, lat

    def j_per_request(self, windows: list[_Window], energy: EnergyRecord) -> float:
        return energy.energy_j / int(self.batches["n_requests"].sum())

    def repeat_latency(self, repeat: int, rows: np.ndarray) -> tuple[float, float]:
        """(s_per_token_user, e2e_s_per_token) of one repeat (its BATCHES rows)."""
        batches = self.batches.iloc[rows]
        return (latency_metrics(batches)["s_per_token_user"],
                float(np.mean(static_e2e_per_token(batches, f"batches of {self.name}"))))

    def steady(self, windows: list[_Window]) -> tuple[float, float, float]:
        """(J, s, output tokens) of the steady windows: after each repeat's transient, not
        throttled (_steady_static)."""
        keep = _steady_static(self.batches, [w.energy for w in windows], self.run)
        return (
            float(sum(w.energy.energy_j for w, k in zip(windows, keep) if k)),
            float(sum(w.energy.window_s for w, k in zip(windows, keep) if k)),
            float(self.batches["output_tokens"].to_numpy()[keep].sum()),
        )

    def bytes_moved(self, arch: Architecture, dtype: str, quantization, per_batch: list) -> float:
        """Bytes the cell moved at least: the static schedule's per batch (batch_work)."""
        return float(sum(per_batch, 0.0))


class ContinuousMetrics(StaticMetrics):
    """What differs in a continuous cell's (cb{n}) metrics: one window per repeat, cut at its
    engine steps (step_tiles); latency per request from REQUESTS (TTFT from arrival); energy per
    request by each step's tile shared by the tokens it processed; steady state the steps where
    the engine ran max_num_seqs requests; bytes from the steps (steps_bytes). Without requests or
    steps (an older or imported cell) the static rules apply, flagged."""

    def __init__(self, cell, batches, run, flags, requests: pd.DataFrame,
                 steps: pd.DataFrame) -> None:  # fmt: skip
        super().__init__(cell, batches, run, flags)
        self.requests, self.steps = requests, steps

    def _steps_of(self, repeat) -> pd.DataFrame:
        return self.steps[self.steps["repeat"] == repeat] if len(self.steps) else self.steps

    def tiles(self, row: pd.Series) -> np.ndarray | None:
        steps = self._steps_of(row["repeat"])
        if not len(steps):
            return None
        return step_tiles(steps, int(row["start_wall_ns"]), int(row["end_wall_ns"]))

    def latency(self) -> tuple[float, dict[str, float], dict[str, np.ndarray]]:
        if not len(self.requests):
            self.flags.append("no_requests_latency_from_windows")
            return super().latency()
        lat = request_latencies(self.requests, f"requests of {self.name}")
        out = self.requests["output_tokens"].to_numpy(dtype=float)
        means = {name: float(np.nanmean(lat[key])) if np.isfinite(lat[key]).any() else float("nan")
                 for name, key in (("ttft_s", "ttft"), ("tpot_s", "tpot"))}  # fmt: skip
        if not first_token_known(self.requests).all():
            self.flags.append(FIRST_TOKEN_UNKNOWN_FLAG)
        # Both latencies are (finish - arrival) / output tokens per request here: the study's
        # batch latency has no meaning without batches, and E2E per token is this by definition.
        means["e2e_s_per_token"] = float(np.mean(lat["e2e"] / out))
        return means["e2e_s_per_token"], means, lat

    def j_per_request(self, windows: list[_Window], energy: EnergyRecord) -> float:
        if not len(self.requests):
            return super().j_per_request(windows, energy)
        per_request = []
        for w in windows:
            rep = int(w.row["repeat"])
            rep_requests = self.requests[self.requests["repeat"] == rep]
            rep_steps = self._steps_of(rep)
            if w.tile_energy_j is not None and len(rep_steps):
                per_request.append(attribute_step_energy(rep_steps, w.tile_energy_j, rep_requests))
            else:
                tokens = rep_requests["input_tokens"] + rep_requests["output_tokens"]
                weight = tokens.to_numpy(float)
                per_request.append(pd.Series(w.energy.energy_j * weight / weight.sum()))
                if "no_steps_energy_by_tokens" not in self.flags:
                    self.flags.append("no_steps_energy_by_tokens")
        return float(pd.concat(per_request).mean())

    def repeat_latency(self, repeat: int, rows: np.ndarray) -> tuple[float, float]:
        if not len(self.requests):
            return super().repeat_latency(repeat, rows)
        r = self.requests[self.requests["repeat"] == repeat]
        e2e = float(np.mean(request_latencies(r)["e2e"] / r["output_tokens"].to_numpy(float)))
        return e2e, e2e

    def steady(self, windows: list[_Window]) -> tuple[float, float, float]:
        """(J, s, output tokens) of the steps where the engine ran max_num_seqs requests
        (saturated), not throttled; nothing without steps or requests."""
        steady_j = steady_s = steady_tokens = 0.0
        if not (len(self.steps) and len(self.requests)):
            return steady_j, steady_s, steady_tokens
        for w in windows:
            rep_steps = self._steps_of(w.row["repeat"]).sort_values("step_index")
            if w.tile_energy_j is None or not len(rep_steps):
                continue
            tiles = step_tiles(rep_steps, int(w.row["start_wall_ns"]), int(w.row["end_wall_ns"]))
            saturated = rep_steps["request_ids"].map(len).to_numpy() >= int(self.cell["batch_size"])
            throttled = _throttled_windows(
                pd.DataFrame({"start_wall_ns": tiles[:-1], "end_wall_ns": tiles[1:]}), self.run
            )
            keep = saturated & ~throttled
            rep_requests = self.requests[self.requests["repeat"] == w.row["repeat"]]
            produced = _tokens_per_step(rep_steps, rep_requests)
            steady_j += float(w.tile_energy_j[keep].sum())
            steady_s += float(np.diff(tiles)[keep].sum() / NS_PER_S)
            steady_tokens += float(produced[keep].sum())
        return steady_j, steady_s, steady_tokens

    def bytes_moved(self, arch: Architecture, dtype: str, quantization, per_batch: list) -> float:
        if not len(self.steps):
            self.flags.append("bytes_from_static_schedule")
            return super().bytes_moved(arch, dtype, quantization, per_batch)
        return sum(
            steps_bytes(arch, s.sort_values("step_index"), dtype, quantization)
            for _, s in self.steps.groupby("repeat")
        )


def _mode_metrics(cell, batches, run, flags, requests, steps) -> StaticMetrics:
    if cell["mode"] == "continuous":
        return ContinuousMetrics(cell, batches, run, flags,
                                 requests if requests is not None else pd.DataFrame(),
                                 steps if steps is not None else pd.DataFrame())  # fmt: skip
    return StaticMetrics(cell, batches, run, flags)


# ---------------------------------------------------------------- shared steps


def _carbon(windows: list[_Window], energy: EnergyRecord, pue: float) -> dict[str, float]:
    """Operational carbon over the windows, their energy-weighted mean intensity (carbon.
    mean_intensity of each window's mean by its energy) and the share of the measured time whose
    intensity a fill policy supplied."""
    return {
        "intensity_g_per_kwh": mean_intensity(
            [w.carbon.intensity_g_per_kwh for w in windows], [w.energy.energy_j for w in windows],
            [w.energy.window_s for w in windows],
        ),
        "filled_share": sum(w.carbon.filled_s for w in windows) / energy.window_s,
        "pue": pue,
        "operational_g": sum(w.operational_g for w in windows),
    }  # fmt: skip


def _repeats(cell, mode: StaticMetrics, windows: list[_Window],
             settings: MetricsSettings) -> tuple[list[dict], dict[str, float]]:  # fmt: skip
    """METRICS_REPEATS rows (the same figures per repeat), the bootstrap intervals of CI_METRICS
    over them and the CV of J/token (flagged above settings.max_j_per_token_cv)."""
    rows = []
    for rep, idx in mode.batches.groupby("repeat").indices.items():
        rep_windows = [windows[i] for i in sorted(idx)]
        rows.append({
            **{k: cell[k] for k, _ in tables.CELL_KEYS}, "repeat": int(rep),
            **_rates(rep_windows, *mode.repeat_latency(rep, sorted(idx))),
        })  # fmt: skip
    out: dict[str, float] = {}
    for name in CI_METRICS:
        low, high = bootstrap_ci(
            [r[name] for r in rows], confidence=settings.confidence,
            n_resamples=settings.n_resamples, seed=settings.seed,
        )  # fmt: skip
        out[f"{name}_ci_low"], out[f"{name}_ci_high"] = low, high
    out["j_per_token_cv"] = coefficient_of_variation([r["j_per_token"] for r in rows])
    if out["j_per_token_cv"] > settings.max_j_per_token_cv:  # False for NaN (one repeat)
        mode.flags.append("j_per_token_cv_high")
    return rows, out


def _steady(mode: StaticMetrics, windows: list[_Window], settings: MetricsSettings) -> dict:
    """The steady-state figures (the mode's steady windows), throttled and short flags."""
    if any(_throttled_windows(mode.batches, mode.run)):
        mode.flags.append("throttled")
    steady_j, steady_s, steady_tokens = mode.steady(windows)
    if steady_s < settings.min_steady_s:
        mode.flags.append("steady_window_short")
    return {
        "steady_window_s": steady_s,
        "j_per_token_steady": steady_j / steady_tokens if steady_tokens > 0 else float("nan"),
        "tokens_per_s_steady": steady_tokens / steady_s if steady_s > 0 else float("nan"),
    }


def _work(mode: StaticMetrics, arch: Architecture, platform: Platform, quantization,
          window_s: float) -> dict[str, float]:  # fmt: skip
    """FLOPs per request and bytes by the engine's schedule (the mode's), MFU and MBU against the
    platform's peaks. Utilisation beyond the peak is no measurement (the peak, or the work counted,
    is wrong: a unit slip, peaks measured under load): kept, flagged."""
    batches, dtype = mode.batches, mode.cell["dtype"]
    if any(input_tokens_unknown(b) for _, b in batches.iterrows()):
        mode.flags.append(INPUT_TOKENS_UNKNOWN_FLAG)  # FLOPs and MFU NaN (and MBU of static cells)
    work = [batch_work(arch, b, dtype, quantization) for _, b in batches.iterrows()]
    total_flops = sum((f for f, _ in work), 0.0)
    total_bytes = mode.bytes_moved(arch, dtype, quantization, [moved for _, moved in work])
    mfu = total_flops / (window_s * peak_flops(platform, dtype))
    mbu = total_bytes / (window_s * peak_bandwidth_bytes_per_s(platform))
    above = ((MFU_ABOVE_PEAK_FLAG, mfu), (MBU_ABOVE_PEAK_FLAG, mbu))
    mode.flags.extend(flag for flag, value in above if value > 1.0)
    return {"flops": total_flops, "mfu": mfu, "bytes_moved": total_bytes, "mbu": mbu}


def cell_metrics(
    cell: Mapping[str, Any],
    batches: pd.DataFrame,
    power: pd.DataFrame,
    arch: Architecture,
    platform: Platform,
    accounting: CarbonAccounting,
    *,
    requests: pd.DataFrame | None = None,
    steps: pd.DataFrame | None = None,
    settings: MetricsSettings = MetricsSettings(),
) -> CellMetrics:
    """The METRICS row and METRICS_REPEATS rows of one cell.

    batches, power (both phases), requests and steps (continuous cells; None or empty otherwise):
    the cell's rows of the aggregated tables; accounting: intensity, PUE and fill policy. The
    mode's parts are StaticMetrics' or ContinuousMetrics'. Raises InputError where the power
    samples hold several devices (the cell measured one), do not span a window, or the intensity
    trace does not cover a window (within max_fill_s under a fill policy). A counter that is not
    plausible over a window never raises: that window's energy is the integral, flagged
    (tokencarbon.energy).
    """
    where = f"power samples of {_cell_name(cell)}"
    select_device(power, None, where)
    quantization = from_columns(cell.get("quantization"), cell.get("quant_group_size"))
    idle_power_w, idle_flags = _idle(cell, power, where)
    batches = batches.sort_values(["repeat", "batch_index"]).reset_index(drop=True)
    mode = _mode_metrics(cell, batches, power[power["phase"] == "run"], [], requests, steps)
    # Energy, carbon and rates count the windows' own time: engine set-up between static batches
    # (cache allocation, graph capture or compilation for a new shape) is excluded.
    windows = [
        _measure_window(mode.run, row, accounting, idle_power_w=idle_power_w, where=where,
                        tiles_ns=mode.tiles(row))
        for _, row in batches.iterrows()
    ]  # fmt: skip
    energy = combine([w.energy for w in windows], idle_power_w)
    carbon = _carbon(windows, energy, accounting.pue)
    mode.flags.extend(list(energy.qa_flags) + idle_flags)
    if carbon["filled_share"] > 0:
        mode.flags.append("intensity_filled")
    mode.flags.extend(foreign_use_flags(cell) + list(platform.qa_flags))
    s_per_token_user, means, lat = mode.latency()
    percentiles = {**_percentiles("ttft", lat["ttft"]), **_percentiles("tpot", lat["tpot"]),
                   **_percentiles("e2e", lat["e2e"])}  # fmt: skip
    j_per_request = mode.j_per_request(windows, energy)
    repeat_rows, intervals = _repeats(cell, mode, windows, settings)
    steady = _steady(mode, windows, settings)
    # Embodied carbon: the device's share over the window, low (dies + memory) and high (PCF).
    embodied = [embodied_carbon_g(kg, platform.lifetime_years, energy.window_s)
                for kg in platform.embodied_range_kg_co2e]  # fmt: skip
    work = _work(mode, arch, platform, quantization, energy.window_s)
    row = _row(cell, batches, quantization, energy, carbon, embodied, idle_power_w, mode.flags,
               s_per_token_user, {**means, **percentiles, "j_per_request": j_per_request,
               **intervals, **steady, **work}, platform, len(repeat_rows))  # fmt: skip
    return CellMetrics(row, repeat_rows)


def _row(cell, batches, quantization, energy: EnergyRecord, carbon: dict, embodied: list,
         idle_power_w: float, flags: list[str], s_per_token_user: float, figures: dict,
         platform: Platform, n_repeats: int) -> dict[str, Any]:  # fmt: skip
    """The METRICS row, in the table's column order."""
    out_tokens = int(batches["output_tokens"].sum())
    operational_g, (embodied_g, embodied_g_high) = carbon["operational_g"], embodied
    row = {
        "platform": cell["platform"],
        "model": cell["model"],
        "mode": cell["mode"],
        "batch_size": int(cell["batch_size"]),
        "architecture": cell["architecture"],
        "dtype": cell["dtype"],
        "quantization": quantization.scheme,
        "quant_group_size": quantization.group_size,
        "quant_library": cell.get("quant_library") or "",
        "gpu_uuid": cell["gpu_uuid"] if isinstance(cell.get("gpu_uuid"), str) else None,
        "n_requests": int(cell["n_requests"]),
        "n_repeats": n_repeats,
        "input_tokens": int(batches["input_tokens"].sum()),
        "output_tokens": out_tokens,
        "window_s": energy.window_s,
        "n_power_samples": energy.n_samples,
        "energy_method": energy.method,
        "energy_j": energy.energy_j,
        "energy_counter_j": energy.energy_counter_j,
        "energy_integrated_j": energy.energy_integrated_j,
        "energy_relative_difference": energy.relative_difference,
        "qa_flags": ";".join(dict.fromkeys(flags)),
        "idle_power_w": idle_power_w,
        "idle_energy_j": energy.idle_energy_j,
        "above_idle_energy_j": energy.above_idle_energy_j,
        "intensity_g_per_kwh": carbon["intensity_g_per_kwh"],
        "filled_share": carbon["filled_share"],
        "pue": carbon["pue"],
        "operational_g": operational_g,
        "embodied_g": embodied_g,
        "embodied_g_high": embodied_g_high,
        "carbon_g": operational_g + embodied_g,
        "j_per_token": energy.energy_j / out_tokens,
        "g_per_token": operational_g / out_tokens,
        "g_per_token_with_embodied": (operational_g + embodied_g) / out_tokens,
        "embodied_g_per_token_low": embodied_g / out_tokens,
        "embodied_g_per_token_high": embodied_g_high / out_tokens,
        "tokens_per_s": out_tokens / energy.window_s,
        "s_per_token_user": s_per_token_user,
        **figures,
        "spec_source": platform.spec_source,
    }
    return {name: row[name] for name in tables.METRICS.names}


def resolve_cell_platforms(
    cells: pd.DataFrame,
    specs: Mapping[str, Mapping[str, Any]] | None = None,
    measured: Mapping[str, Mapping[str, float]] | None = None,
    measurements: Mapping[str, Mapping[str, Any]] | None = None,
    rows: Mapping[str, str] | None = None,
) -> dict[str, Platform]:
    """Each platform's row resolved for the device its cells ran on (CELLS' device_name).

    rows: per platform, its row of resources/platforms.csv (config.platform_row: the row a capped
    variant names in platforms.<name>.hardware); a platform absent there is its own row.
    specs / measured: per platform name, config's platforms.<name>.spec (`measure` included) and
    measured peaks, as platforms.resolve_platform takes them. measurements: per platform, the
    record rule measure_platform wrote (tokencarbon.peak.read_measurement): its "measured" peaks
    are used, its device must be each cell's device, and a foreign CPU share above
    MAX_FOREIGN_CPU_SHARE (or steal above MAX_CPU_STEAL_SHARE) during it puts
    PEAKS_UNDER_LOAD_FLAG on every cell of the platform.
    Raises HardwareMismatchError where a cell's device is not its platform's and nothing describes
    it, InputError where cells of one platform ran on devices that resolve to different numbers
    (merge such machines as separate platforms), where a spec asks for a measurement none is given
    for, or where the measurement was made on another device than the cells.
    """
    out: dict[str, Platform] = {}
    for name, group in cells.groupby("platform"):
        name = str(name)
        spec = (specs or {}).get(name) or {}
        peaks = (measured or {}).get(name)
        record = (measurements or {}).get(name)
        flags: tuple[str, ...] = ()
        if record is not None:
            peaks = record["measured"]
            others = sorted(set(group["device_name"]) - {record["device_name"]})
            if others:
                raise InputError(
                    f"platform {name!r}: its peaks were measured on {record['device_name']!r} "
                    f"(results/<study>/platforms/{name}/spec.json), and its cells ran on {others}; measure "
                    "on the machine of the cells (delete that spec.json there), or give each "
                    "machine its own platform in config"
                )
            # null where not measured (a record written before steal was recorded: absent)
            foreign, steal = (record.get(k) for k in ("foreign_cpu_share", "cpu_steal_share"))
            if (foreign or 0.0) > MAX_FOREIGN_CPU_SHARE or (steal or 0.0) > MAX_CPU_STEAL_SHARE:
                flags = (PEAKS_UNDER_LOAD_FLAG,)
        elif spec.get(MEASURE_KEY) and peaks is None:
            raise InputError(
                f"config key platforms.{name}.spec.measure is true, and no measurement of platform "
                f"{name!r} was given (rule measure_platform's results/<study>/platforms/{name}/spec.json); "
                "MFU and MBU would have no peak to divide by"
            )
        resolved = {
            device: replace(
                resolve_platform(name, device or None, spec, peaks, row=(rows or {}).get(name)),
                qa_flags=flags,
            )
            for device in group["device_name"].unique()
        }
        distinct = {replace(p, device_name_pattern="") for p in resolved.values()}
        if len(distinct) > 1:
            raise InputError(
                f"cells of platform {name!r} ran on devices {sorted(resolved)} whose specs "
                "differ; give each machine its own platform in config"
            )
        out[name] = next(iter(resolved.values()))
    return out


def _groups(df: pd.DataFrame | None, keys: list[str]) -> dict[tuple, pd.DataFrame]:
    if df is None or not len(df):
        return {}
    return dict(tuple(df.groupby(keys)))


def compute_all(
    cells: pd.DataFrame,
    batches: pd.DataFrame,
    power: pd.DataFrame,
    archs: Mapping[str, Architecture],
    platforms: Mapping[str, Platform],
    accounting: CarbonAccounting,
    *,
    requests: pd.DataFrame | None = None,
    steps: pd.DataFrame | None = None,
    settings: MetricsSettings = MetricsSettings(),
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(METRICS, METRICS_REPEATS) of every cell.

    cells: CELLS; batches, power, requests, steps: the aggregated tables (cell keys in front;
    requests and steps may be None where no continuous cell exists). platforms: by platform name,
    already resolved for the detected device (platforms.resolve_platform). accounting: the carbon
    accounting (carbon.CarbonAccounting.from_config).
    """
    keys = [name for name, _ in tables.CELL_KEYS]
    b_groups, p_groups = _groups(batches, keys), _groups(power, keys)
    r_groups, s_groups = _groups(requests, keys), _groups(steps, keys)
    rows, repeats = [], []
    for cell in cells.to_dict("records"):
        key = tuple(cell[k] for k in keys)
        if key not in b_groups or key not in p_groups:
            # Aggregation copies each cell's own files: rerunning it cannot add rows that the
            # cell's file lacks. The cell itself has to be measured (or imported) again.
            what, file = ("batches", "batches") if key not in b_groups else ("power samples", "power")
            folder = CellKey.of(cell).folder()
            raise InputError(
                f"cell {_cell_name(cell)}: no {what} in the aggregated tables, so the cell's own "
                f"{folder}/{file}.parquet holds none (a power sidecar that wrote no sample, a file "
                "emptied or cut); nothing can be integrated: measure that cell again (delete "
                f"{folder}/ and rerun; an imported cell: import it again), or leave it out of "
                "the sweep"
            )
        result = cell_metrics(
            cell, b_groups[key], p_groups[key], archs[cell["architecture"]],
            platforms[cell["platform"]], accounting, requests=r_groups.get(key),
            steps=s_groups.get(key), settings=settings,
        )  # fmt: skip
        rows.append(result.row)
        repeats += result.repeats
    return pd.DataFrame(rows), pd.DataFrame(repeats)


def all_metrics(cells: pd.DataFrame, batches: pd.DataFrame, power: pd.DataFrame,
                archs: Mapping[str, Architecture], platforms: Mapping[str, Platform],
                accounting: CarbonAccounting, **kw: Any) -> pd.DataFrame:
    """METRICS rows of every cell (compute_all without the per-repeat table)."""
    return compute_all(cells, batches, power, archs, platforms, accounting, **kw)[0]

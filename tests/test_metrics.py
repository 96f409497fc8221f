"""Per-cell metrics of a synthetic cell whose every figure is worked out by hand."""

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from tokencarbon import tables
from tokencarbon.carbon import DEFAULT_MAX_FILL_S, CarbonAccounting, ConstantIntensity
from tokencarbon.errors import InputError
from tokencarbon.metrics import MetricsSettings, all_metrics, compute_all

# The toy windows last a second: no steady-state minimum, so its flag does not crowd the others.
NO_MIN = MetricsSettings(min_steady_s=0.0)
from tokencarbon.models import Architecture
from tokencarbon.platforms import Platform

# A toy Llama: hidden 8, 1 layer, 2 heads (head_dim 4), 2 kv heads, MLP 16, vocab 32.
ARCH = Architecture(
    name="toy", family="llama", hidden_size=8, num_layers=1, num_heads=2, num_kv_heads=2,
    intermediate_size=16, vocab_size=32, max_positions=64, tied_embeddings=False,
    activation="silu", norm="rmsnorm", norm_eps=1e-5, rope_theta=10000.0,
)
# 1e4 FLOP/s fp32 peak, 2e4 B/s bandwidth, 1000 kgCO2e over 1 year.
PLATFORM = Platform(
    platform="toyplat", kind="cpu", device_name_pattern=".*", peak_tflops_fp32=1e-8,
    peak_tflops_tf32=None, peak_tflops_fp16=None, peak_tflops_bf16=None, peak_tflops_int8=None,
    memory_gb=1.0, memory_gb_per_s=2e-5, tdp_w=100.0, release_year=2024, embodied_kg_co2e=1000.0,
    lifetime_years=1.0, logical_cpus=2, source="test",
)
T0 = 1_700_000_000_000_000_000  # wall clock of the batch start (ns)
S = 1_000_000_000

# the study's accounting: 413 gCO2/kWh (Lim et al. 2024), PUE 1, no fill
CONSTANT_413 = CarbonAccounting(ConstantIntensity(413.0))


def _defaults(schema, rows):
    """rows with every other column of schema at a neutral value of its type (CELLS grows)."""
    import pyarrow as pa

    def neutral(t):
        return "" if pa.types.is_string(t) else 1 if pa.types.is_integer(t) else 0.0

    return pd.DataFrame([{n: r.get(n, neutral(t)) for n, t in zip(schema.names, schema.types)}
                         for r in rows])  # fmt: skip


def _cell():
    cells = _defaults(tables.CELLS, [{
        "platform": "toyplat", "model": "toy-model", "mode": "static", "batch_size": 1, "architecture": "toy",
        "dtype": "float32", "backend": "torch", "device_name": "x", "n_requests": 1, "n_batches": 1,
        "warmup_batches": 1, "window_start_wall_ns": T0, "window_end_wall_ns": T0 + S,
        "idle_power_w": 39.0, "power_source": "nvml", "power_interval_s": 0.1,
        "peak_memory_bytes": 0.0, "git_commit": "x", "foreign_gpu_processes": -1,
    }])
    # One request: 4 prompt tokens, 3 output tokens; prefill ends at 0.25 s, the batch at 1 s.
    batches = pd.DataFrame([{
        "platform": "toyplat", "model": "toy-model", "mode": "static", "batch_size": 1, "repeat": 0, "batch_index": 0,
        "n_requests": 1, "input_tokens": 4, "output_tokens": 3, "padded_input_len": 4,
        "max_output_tokens": 3, "start_ns": 0, "first_token_ns": S // 4, "end_ns": S,
        "start_wall_ns": T0, "first_token_wall_ns": T0 + S // 4, "end_wall_ns": T0 + S,
        "prompt_lens": [4], "output_lens": [3],
    }])
    # A steady 100 W from -0.5 s to 1.5 s, every 0.1 s, with a counter rising 100 J/s.
    t = T0 + np.arange(-5, 16) * (S // 10)
    run = pd.DataFrame({
        "platform": "toyplat", "model": "toy-model", "mode": "static", "batch_size": 1, "t_wall_ns": t,
        "phase": "run", "source": "nvml", "modeled": False, "device_index": 0, "power_w": 100.0,
        "power_avg_w": np.nan, "energy_counter_j": 100.0 * (t - T0) / S + 5000.0, "util_pct": 0.0,
        "mem_used_bytes": 0.0, "temperature_c": 0.0, "sm_clock_mhz": 0.0, "mem_clock_mhz": 0.0,
        "throttle_reasons": -1,
    })
    # Idle before the cell: 40 W from -3 s to -1 s (21 samples), the counter rising 40 J/s.
    t_idle = T0 + np.arange(-30, -9) * (S // 10)
    idle = run.iloc[:21].assign(
        t_wall_ns=t_idle, phase="idle", power_w=40.0,
        energy_counter_j=40.0 * (t_idle - t_idle[0]) / S + 4000.0,
    )  # fmt: skip
    power = pd.concat([idle, run], ignore_index=True)
    return (
        tables.check(cells, tables.CELLS, "cells"),
        tables.check(batches, tables.with_cell_keys(tables.BATCHES), "batches"),
        tables.check(power, tables.with_cell_keys(tables.POWER), "power"),
    )


@pytest.fixture(scope="module")
def row():
    cells, batches, power = _cell()
    df = all_metrics(cells, batches, power, {"toy": ARCH}, {"toyplat": PLATFORM},
                     CONSTANT_413, settings=NO_MIN)
    tables.check(df, tables.METRICS, "metrics")
    return df.iloc[0]


def test_flops_and_mfu_by_hand(row):
    # matmul params: q,k,v,o 4*8*8 = 256; gate/up/down 3*8*16 = 384; lm_head 8*32 = 256 -> 896.
    # prefill (4 tokens, causal, last-position logits): 2*(896-256)*4 = 5120, + lm_head 2*8*32 = 512,
    #   + attention 4*8*1*(1+2+3+4 = 10) = 320 -> 5952.
    # decode steps 1, 2 at contexts 5 and 6: 2*896 + 4*8*5 = 1952; 2*896 + 4*8*6 = 1984 -> 3936.
    assert row["flops"] == 5952 + 3936
    assert row["mfu"] == pytest.approx(9888 / (1.0 * 1e4))  # 1 s busy at 1e4 FLOP/s


def test_bytes_and_mbu_by_hand(row):
    # params: embed 256 + layer (640 matmul + 2 norms of 8) + final norm 8 + lm_head 256 = 1176 -> 4704 B.
    # K/V per position: 2 * 1 layer * 2 kv heads * head_dim 4 * 4 B = 64 B.
    # prefill: 4704 + 4*64 = 4960; step 1: 4704 + (5 read + 1 written)*64 = 5088; step 2: 4704 + 7*64 = 5152.
    assert row["bytes_moved"] == 4960 + 5088 + 5152
    assert row["mbu"] == pytest.approx(15200 / (1.0 * 2e4))


def test_energy_carbon_and_per_token_by_hand(row):
    assert row["energy_method"] == "counter"
    assert row["energy_j"] == pytest.approx(100.0)  # 100 W for 1 s
    assert row["energy_integrated_j"] == pytest.approx(100.0)
    # Idle power from the idle samples (80 J over 2 s = 40 W), not meta.json's 39 W.
    assert row["idle_power_w"] == pytest.approx(40.0)
    assert row["idle_energy_j"] == pytest.approx(40.0) and row["above_idle_energy_j"] == pytest.approx(60.0)
    assert row["qa_flags"] == "" and row["filled_share"] == 0.0
    assert row["operational_g"] == pytest.approx(100 / 3.6e6 * 413)  # 0.011472 g
    assert row["embodied_g"] == pytest.approx(1e6 / (365 * 86400))  # 1000 kg over a year, 1 s of it
    assert row["j_per_token"] == pytest.approx(100 / 3)
    assert row["g_per_token"] == pytest.approx(100 / 3.6e6 * 413 / 3)
    assert row["tokens_per_s"] == pytest.approx(3.0)
    assert row["n_power_samples"] == 11  # samples at 0.0, 0.1, ..., 1.0 s
    # Embodied range: low 1000 kg over a year, 1 s of it: 1e6 g / 31,536,000 = 0.0317098 g;
    # the high bound is unset on this platform, so equal to the low one. Per token: / 3.
    assert row["embodied_g_per_token_low"] == pytest.approx(1e6 / (365 * 86400) / 3)
    assert row["embodied_g_high"] == pytest.approx(row["embodied_g"])
    # One repeat: no interval, no CV, no flag; one request: j_per_request = 100 J.
    assert row["n_repeats"] == 1 and np.isnan(row["j_per_token_ci_low"])
    assert np.isnan(row["j_per_token_cv"]) and row["j_per_request"] == pytest.approx(100.0)
    assert row["spec_source"] == "datasheet"


def test_latency_by_hand(row):
    assert row["s_per_token_user"] == pytest.approx(1 / 3)  # 1 s batch, 3 tokens per request
    assert row["ttft_s"] == pytest.approx(0.25)
    assert row["tpot_s"] == pytest.approx(0.75 / 2)  # 2 decode steps after the first token
    # One request: every percentile is its value.
    assert (row["ttft_p50_s"], row["ttft_p99_s"]) == pytest.approx((0.25, 0.25))
    assert (row["tpot_p90_s"], row["e2e_p50_s"]) == pytest.approx((0.375, 1.0))


def _metrics(cells, batches, power, intensity=ConstantIntensity(413.0), platform=PLATFORM, **kw):
    kw.setdefault("settings", NO_MIN)
    accounting = CarbonAccounting(intensity, 1.0, kw.pop("fill", None),
                                  kw.pop("max_fill_s", DEFAULT_MAX_FILL_S))  # fmt: skip
    df, repeats = compute_all(cells, batches, power, {"toy": ARCH}, {"toyplat": platform},
                              accounting, **kw)
    tables.check(repeats, tables.METRICS_REPEATS, "metrics_repeats")
    return tables.check(df, tables.METRICS, "metrics")


def test_one_cells_bad_counter_does_not_stop_the_others():
    # Two copies of the toy cell (batch sizes 1 and 2). In the second, the counter reads 150 J at
    # 0.5 s inside its rise from 5000 J: that cell falls back to the integral (100 W x 1 s = 100 J)
    # with a flag, and the first keeps its counter. Before: compute_metrics stopped for both.
    cells, batches, power = _cell()
    bad_power = power.assign(batch_size=2)
    bad_power.loc[bad_power["t_wall_ns"] == T0 + S // 2, "energy_counter_j"] = 150.0
    df = _metrics(
        pd.concat([cells, cells.assign(batch_size=2)], ignore_index=True),
        pd.concat([batches, batches.assign(batch_size=2)], ignore_index=True),
        pd.concat([power, bad_power], ignore_index=True),
    )
    good, bad = df.iloc[0], df.iloc[1]
    assert good["energy_method"] == "counter" and good["qa_flags"] == ""
    assert bad["energy_method"] == "integrated" and bad["energy_j"] == pytest.approx(100.0)
    assert bad["qa_flags"] == "counter_decreasing"


def test_frozen_counter_cell_and_idle_flags_kept():
    # The run counter frozen at 5000 J: energy 100 J (the integral), not 0, and J/token 100/3.
    # The idle window's counter frozen too: idle power from its integral, 40 W, flagged idle_...
    cells, batches, power = _cell()
    power = power.assign(energy_counter_j=5000.0)
    row = _metrics(cells, batches, power).iloc[0]
    assert row["energy_j"] == pytest.approx(100.0) and row["j_per_token"] == pytest.approx(100 / 3)
    assert row["operational_g"] == pytest.approx(100 / 3.6e6 * 413)
    assert row["idle_power_w"] == pytest.approx(40.0)
    assert row["qa_flags"] == "counter_frozen;idle_counter_frozen"


def test_cell_without_idle_samples_takes_meta_idle_power_flagged():
    cells, batches, power = _cell()
    row = _metrics(cells, batches, power[power["phase"] == "run"]).iloc[0]
    assert row["idle_power_w"] == 39.0 and row["qa_flags"] == "idle_power_from_meta"


def test_several_devices_in_a_cell_are_refused():
    cells, batches, power = _cell()
    two = pd.concat([power, power.assign(device_index=1)], ignore_index=True)
    with pytest.raises(InputError, match=r"toyplat/toy-model/bs1.*2 devices"):
        _metrics(cells, batches, two)


def test_filled_share_and_flag(tmp_path):
    from tokencarbon.carbon import load_trace

    # A trace of two hourly rows, 20:00 (200) and 21:00 (300), ending at 22:00; the batch at T0
    # (2023-11-14 22:13:20 UTC, 1 s) lies after it, so the whole 1 s is filled under "previous":
    # filled_share 1.0, flagged; intensity the last row's 300.
    start = pd.Timestamp(T0, unit="ns", tz="UTC").floor("h") - pd.Timedelta(hours=2)
    rows = [f"{(start + pd.Timedelta(hours=h)).strftime('%Y-%m-%d %H:%M:%S')},X,{v},{v}"
            for h, v in ((0, 200), (1, 300))]  # fmt: skip
    path = tmp_path / "trace.csv"
    path.write_text("Datetime (UTC),Zone Id,Carbon Intensity gCO₂eq/kWh (direct),"
                    "Carbon Intensity gCO₂eq/kWh (LCA)\n" + "\n".join(rows) + "\n")
    trace = load_trace(path)
    cells, batches, power = _cell()
    with pytest.raises(InputError, match="does not cover"):
        _metrics(cells, batches, power, trace)
    row = _metrics(cells, batches, power, trace, fill="previous").iloc[0]
    assert row["filled_share"] == 1.0 and row["qa_flags"] == "intensity_filled"
    assert row["intensity_g_per_kwh"] == 300.0
    # The batch ends 22:13:21, 801 s after the trace's end: over a 600 s tolerance it is refused.
    with pytest.raises(InputError, match="lies up to 801 s .*max_fill_s = 600"):
        _metrics(cells, batches, power, trace, fill="previous", max_fill_s=600.0)


def _build(specs, power_at, mode="static", batch_size=1, throttle_at=lambda t: -1, n_requests=1):
    """A cell of windows specs [(repeat, batch_index, start_s, duration_s, output_tokens)], one
    request of 4 prompt tokens per window (output = its tokens), power power_at(t_s) W sampled
    every 0.1 s from 1 s before the first window to 1 s after the last, no counter; no idle."""
    keys = {"platform": "toyplat", "model": "toy-model", "mode": mode, "batch_size": batch_size}
    end_s = max(s + d for _, _, s, d, _ in specs)
    cells = _defaults(tables.CELLS, [{
        **keys, "architecture": "toy", "dtype": "float32", "n_requests": n_requests,
        "idle_power_w": 0.0, "window_start_wall_ns": T0, "window_end_wall_ns": T0 + round(end_s * S),
        "foreign_gpu_processes": -1,
    }])  # fmt: skip
    rows = []
    for rep, i, start_s, dur_s, out in specs:
        a, b = round(start_s * S), round((start_s + dur_s) * S)
        rows.append({**keys, "repeat": rep, "batch_index": i, "n_requests": 1, "input_tokens": 4,
                     "output_tokens": out, "padded_input_len": 4, "max_output_tokens": out,
                     "start_ns": a, "first_token_ns": a + (b - a) // 4, "end_ns": b,
                     "start_wall_ns": T0 + a, "first_token_wall_ns": T0 + a + (b - a) // 4,
                     "end_wall_ns": T0 + b, "prompt_lens": [4], "output_lens": [out]})  # fmt: skip
    t_s = np.round(np.arange(-10, round(end_s * 10) + 11) / 10, 1)
    power = pd.DataFrame({
        **keys, "t_wall_ns": T0 + np.round(t_s * S).astype(np.int64), "phase": "run",
        "source": "nvml", "modeled": False, "device_index": 0,
        "power_w": [float(power_at(t)) for t in t_s], "power_avg_w": np.nan,
        "energy_counter_j": np.nan, "util_pct": 0.0, "mem_used_bytes": 0.0, "temperature_c": 0.0,
        "sm_clock_mhz": 0.0, "mem_clock_mhz": 0.0,
        "throttle_reasons": [int(throttle_at(t)) for t in t_s],
    })  # fmt: skip
    return (
        tables.check(cells, tables.CELLS, "cells"),
        tables.check(pd.DataFrame(rows), tables.with_cell_keys(tables.BATCHES), "batches"),
        tables.check(power, tables.with_cell_keys(tables.POWER), "power"),
    )


def test_embodied_range_per_token_by_hand():
    import dataclasses

    # High bound 3000 kg + a 500 kg host share = 3500 kg over one year; the window is 1 s with 3
    # tokens: 3.5e6 g / 31,536,000 s = 0.1109842 g; per token 0.0369947 g. Low: 1000 kg ->
    # 0.0317098 g; per token 0.0105699 g.
    platform = dataclasses.replace(PLATFORM, embodied_kg_co2e_high=3000.0, host_embodied_kg_co2e=500.0)
    row = _metrics(*_cell(), platform=platform).iloc[0]
    assert row["embodied_g_high"] == pytest.approx(3.5e6 / 31_536_000)
    assert row["embodied_g_per_token_high"] == pytest.approx(3.5e6 / 31_536_000 / 3)
    assert row["embodied_g_per_token_low"] == pytest.approx(1e6 / 31_536_000 / 3)
    assert row["carbon_g"] == pytest.approx(row["operational_g"] + 1e6 / 31_536_000)


def test_repeats_intervals_and_cv_by_hand():
    # Three repeats of one 1 s batch of 3 tokens, at 100, 110 and 120 W (repeat r runs at 10 r s;
    # power changes at 10 r + 5 s, outside every window): J/token 100/3, 110/3, 120/3.
    power_at = lambda t: 100.0 if t < 5 else 110.0 if t < 15 else 120.0  # noqa: E731
    cell = _build([(r, 0, 10.0 * r, 1.0, 3) for r in range(3)], power_at)
    df, repeats = compute_all(*cell, {"toy": ARCH}, {"toyplat": PLATFORM}, CONSTANT_413,
                              settings=NO_MIN)  # fmt: skip
    assert repeats["energy_j"].tolist() == pytest.approx([100.0, 110.0, 120.0])
    assert repeats["j_per_token"].tolist() == pytest.approx([100 / 3, 110 / 3, 120 / 3])
    row = df.iloc[0]
    assert row["n_repeats"] == 3 and row["j_per_token"] == pytest.approx(330 / 9)
    # Exact bootstrap of the mean over the 27 resamples of (100, 110, 120) J: sums 300 + 10 k with
    # k tens drawn, counts by k = 0..6: 1, 3, 6, 7, 6, 3, 1. Sorted: index 0 -> 300, 1-3 -> 310,
    # ..., 23-25 -> 350, 26 -> 360. Positions 0.65 and 25.35: 306.5 and 353.5, means 102.1667
    # and 117.8333 J, per 3 tokens 34.0556 and 39.2778 J/token.
    assert row["j_per_token_ci_low"] == pytest.approx(306.5 / 3 / 3)
    assert row["j_per_token_ci_high"] == pytest.approx(353.5 / 3 / 3)
    # g/token scales by 413 / 3.6e6: the same positions.
    assert row["g_per_token_ci_low"] == pytest.approx(306.5 / 9 * 413 / 3.6e6)
    # Every repeat makes 3 tokens in 1 s and 1/3 s per token: degenerate intervals.
    assert (row["tokens_per_s_ci_low"], row["tokens_per_s_ci_high"]) == pytest.approx((3.0, 3.0))
    assert row["s_per_token_user_ci_high"] == pytest.approx(1 / 3)
    # CV: sd of 100, 110, 120 is 10 (ddof 1), mean 110: 0.0909 > 0.05 -> flagged.
    assert row["j_per_token_cv"] == pytest.approx(10 / 110)
    assert "j_per_token_cv_high" in row["qa_flags"].split(";")
    relaxed = _metrics(*cell, settings=MetricsSettings(min_steady_s=0.0, max_j_per_token_cv=0.1))
    assert "j_per_token_cv_high" not in relaxed.iloc[0]["qa_flags"]


def test_steady_state_of_static_batches_by_hand():
    # One repeat, four 1 s batches of 3 tokens at 0, 2, 4, 6 s drawing 50, 100, 100, 100 W
    # (power steps at 1.5, 3.5, 5.5 s, between batches). Median batch power 100 W; the transient
    # is the first batch (50 < 0.9 x 100). Steady: 3 batches, 3 s, 300 J, 9 tokens -> 33.33
    # J/token, 3 tokens/s; the whole cell: 350 J / 12 tokens = 29.17 J/token.
    power_at = lambda t: 50.0 if t < 1.5 else 100.0  # noqa: E731
    cell = _build([(0, i, 2.0 * i, 1.0, 3) for i in range(4)], power_at)
    row = _metrics(*cell).iloc[0]
    assert row["j_per_token"] == pytest.approx(350 / 12)
    assert row["steady_window_s"] == pytest.approx(3.0)
    assert row["j_per_token_steady"] == pytest.approx(300 / 9)
    assert row["tokens_per_s_steady"] == pytest.approx(3.0)
    assert "steady_window_short" not in row["qa_flags"]
    # Under ML.ENERGY's 20 s minimum the cell is flagged, its steady figures still given.
    row = _metrics(*cell, settings=MetricsSettings()).iloc[0]
    assert "steady_window_short" in row["qa_flags"] and row["steady_window_s"] == 3.0
    # HW thermal slowdown (NVML 0x40) during the last batch (6-7 s): it leaves the steady part:
    # 2 batches, 200 J, 6 tokens; the power cap bit (0x4) alone in batch 2 does not.
    throttle = lambda t: 0x40 if 6 <= t <= 7 else 0x4 if 4 <= t <= 5 else 0  # noqa: E731
    row = _metrics(*_build([(0, i, 2.0 * i, 1.0, 3) for i in range(4)], power_at,
                           throttle_at=throttle)).iloc[0]  # fmt: skip
    assert row["steady_window_s"] == pytest.approx(2.0)
    assert row["j_per_token_steady"] == pytest.approx(200 / 6)
    assert "throttled" in row["qa_flags"].split(";")


def _continuous_cell(with_steps=True):
    """One repeat of a cb2 cell over [0, 1] s at a steady 100 W (no counter), two requests:
    r0 (3 prompt, 4 output tokens), r1 (2 prompt, 3 output), both arriving at 0. Steps at 0,
    0.25, 0.5, 0.75 s: prefill (r0 3 tokens, r1 2), decode (1, 1), decode (1, 1), decode (r0 1).
    r0's first token at 0.25 s, finish 1.0 s; r1's first 0.25 s, finish 0.75 s."""
    cells, batches, power = _build([(0, 0, 0.0, 1.0, 7)], lambda t: 100.0, mode="continuous",
                                   batch_size=2, n_requests=2)  # fmt: skip
    batches = batches.assign(n_requests=2, input_tokens=5, max_output_tokens=4, padded_input_len=0,
                             first_token_ns=S // 4, first_token_wall_ns=T0 + S // 4,
                             prompt_lens=[[3, 2]], output_lens=[[4, 3]])  # fmt: skip
    keys = {"platform": "toyplat", "model": "toy-model", "mode": "continuous", "batch_size": 2}
    q = S // 4
    requests = pd.DataFrame([
        {**keys, "repeat": 0, "request_id": "r0", "input_tokens": 3, "output_tokens": 4,
         "arrival_ns": 0, "first_token_ns": q, "finish_ns": 4 * q, "arrival_wall_ns": T0,
         "first_token_wall_ns": T0 + q, "finish_wall_ns": T0 + 4 * q},
        {**keys, "repeat": 0, "request_id": "r1", "input_tokens": 2, "output_tokens": 3,
         "arrival_ns": 0, "first_token_ns": q, "finish_ns": 3 * q, "arrival_wall_ns": T0,
         "first_token_wall_ns": T0 + q, "finish_wall_ns": T0 + 3 * q},
    ])  # fmt: skip
    steps = pd.DataFrame([
        {**keys, "repeat": 0, "step_index": k, "kind": kind, "start_ns": k * q,
         "end_ns": (k + 1) * q, "start_wall_ns": T0 + k * q, "end_wall_ns": T0 + (k + 1) * q,
         "request_ids": ids, "request_tokens": toks}
        for k, (kind, ids, toks) in enumerate([
            ("prefill", ["r0", "r1"], [3, 2]), ("decode", ["r0", "r1"], [1, 1]),
            ("decode", ["r0", "r1"], [1, 1]), ("decode", ["r0"], [1])])
    ])  # fmt: skip
    requests = tables.check(requests, tables.with_cell_keys(tables.REQUESTS), "requests")
    steps = tables.check(steps if with_steps else steps.iloc[:0],
                         tables.with_cell_keys(tables.STEPS), "steps")  # fmt: skip
    return cells, batches, power, requests, steps


def test_continuous_cell_latency_energy_per_request_and_steady_state_by_hand():
    cells, batches, power, requests, steps = _continuous_cell()
    row = _metrics(cells, batches, power, requests=requests, steps=steps).iloc[0]
    assert row["energy_j"] == pytest.approx(100.0) and row["j_per_token"] == pytest.approx(100 / 7)
    # TTFT 0.25 s for both; TPOT r0 (1.0 - 0.25) / 3 = 0.25, r1 (0.75 - 0.25) / 2 = 0.25.
    assert (row["ttft_p50_s"], row["ttft_p99_s"], row["tpot_p90_s"]) == pytest.approx((0.25,) * 3)
    # E2E 1.0 and 0.75 s: p50 0.875; p90 0.75 + 0.9 x 0.25 = 0.975; p99 0.75 + 0.99 x 0.25 = 0.9975.
    assert (row["e2e_p50_s"], row["e2e_p90_s"], row["e2e_p99_s"]) == pytest.approx(
        (0.875, 0.975, 0.9975))
    # s/token for the user: mean of 1.0 / 4 and 0.75 / 3 = 0.25.
    assert row["s_per_token_user"] == pytest.approx(0.25)
    # Each step's tile holds 25 J: step 0 shared 3:2 (15, 10), steps 1-2 halved, step 3 all r0:
    # r0 15 + 12.5 + 12.5 + 25 = 65 J, r1 10 + 12.5 + 12.5 = 35 J; mean 50 J.
    assert row["j_per_request"] == pytest.approx(50.0)
    # Steady: steps with 2 (= max_num_seqs) requests: 0, 1, 2 -> 0.75 s, 75 J; tokens produced:
    # 2 per step (both first tokens at the end of the prefill) -> 6: 12.5 J/token, 8 tokens/s.
    assert row["steady_window_s"] == pytest.approx(0.75)
    assert row["j_per_token_steady"] == pytest.approx(12.5)
    assert row["tokens_per_s_steady"] == pytest.approx(8.0)
    # Bytes by the steps: weights 4704 B x 4 steps = 18,816; K/V positions (64 B each): step 0
    # 3 + 2 = 5; step 1 (3 + 2) + (2 + 2) = 9; step 2 (4 + 2) + (3 + 2) = 11; step 3 5 + 2 = 7;
    # 32 x 64 = 2048. Total 20,864 B.
    assert row["bytes_moved"] == 18_816 + 2_048


def test_step_energy_attribution_sums_to_the_cell_energy():
    from tokencarbon.metrics import attribute_step_energy

    _, _, _, requests, steps = _continuous_cell()
    per_request = attribute_step_energy(steps, np.array([25.0, 25.0, 25.0, 25.0]), requests)
    assert per_request.to_dict() == pytest.approx({"r0": 65.0, "r1": 35.0})
    assert per_request.sum() == pytest.approx(100.0)
    # A step with no request (the engine waiting) is shared by tokens in the repeat: r0 3 + 4 = 7,
    # r1 2 + 3 = 5: 12 J -> 7 and 5; the sum is still every tile's energy.
    idle = pd.concat([steps, steps.iloc[[0]].assign(step_index=4, request_ids=[[]],
                                                     request_tokens=[[]])])  # fmt: skip
    per_request = attribute_step_energy(idle, np.array([25.0, 25.0, 25.0, 25.0, 12.0]), requests)
    assert per_request.to_dict() == pytest.approx({"r0": 72.0, "r1": 40.0})


def test_continuous_cell_without_steps_falls_back_flagged():
    # No steps recorded: the repeat's 100 J shared by tokens (r0 7, r1 5 of 12): mean 50 J still,
    # flagged; bytes from the static schedule, flagged.
    cells, batches, power, requests, steps = _continuous_cell(with_steps=False)
    row = _metrics(cells, batches, power, requests=requests, steps=steps).iloc[0]
    assert row["j_per_request"] == pytest.approx(50.0)
    flags = row["qa_flags"].split(";")
    assert "no_steps_energy_by_tokens" in flags and "bytes_from_static_schedule" in flags
    assert row["s_per_token_user"] == pytest.approx(0.25)


def test_imported_cell_without_inputs_first_token_or_instant_power_by_hand():
    # The toy cell as `tokencarbon import` writes a timing file without input_tokens and
    # first_token, its log holding only nvidia-smi power.draw (a 1 s average) and no counter:
    # prompt_lens [] (input_tokens 0), first_token_ns = first_token_wall_ns = -1,
    # power_w NaN and power_avg_w the same 100 W / 40 W.
    from tokencarbon.energy import AVERAGE_FLAG
    from tokencarbon.metrics import FIRST_TOKEN_UNKNOWN_FLAG, INPUT_TOKENS_UNKNOWN_FLAG

    cells, batches, power = _cell()
    batches = batches.assign(input_tokens=0, prompt_lens=[[]], first_token_ns=-1,
                             first_token_wall_ns=-1)  # fmt: skip
    power = power.assign(power_avg_w=power["power_w"], power_w=np.nan, energy_counter_j=np.nan)
    row = _metrics(cells, batches, power).iloc[0]
    # Energy: the average's trapezoid, 100 W x 1 s = 100 J; idle 80 J / 2 s = 40 W; both flagged.
    assert row["energy_method"] == "integrated" and row["energy_j"] == pytest.approx(100.0)
    assert row["idle_power_w"] == pytest.approx(40.0)
    flags = row["qa_flags"].split(";")
    for flag in (AVERAGE_FLAG, "idle_" + AVERAGE_FLAG, INPUT_TOKENS_UNKNOWN_FLAG,
                 FIRST_TOKEN_UNKNOWN_FLAG):  # fmt: skip
        assert flag in flags
    # No prompt lengths: no FLOPs, no bytes, no MFU/MBU (not the 9,888 FLOPs of the known prompt).
    for column in ("flops", "mfu", "bytes_moved", "mbu"):
        assert np.isnan(row[column]), column
    # No first token: TTFT/TPOT and their percentiles NaN (not 0 s and 1 s / 2); what needs only
    # start and end stays: 1 s / 3 tokens per request, e2e 1 s; J/token 100 / 3.
    for column in ("ttft_s", "tpot_s", "ttft_p50_s", "ttft_p99_s", "tpot_p50_s", "tpot_p99_s"):
        assert np.isnan(row[column]), column
    assert row["s_per_token_user"] == pytest.approx(1 / 3) and row["e2e_p50_s"] == pytest.approx(1.0)
    assert row["j_per_token"] == pytest.approx(100 / 3)


def test_first_token_unknown_in_some_windows_or_requests_only():
    from tokencarbon.metrics import latency_metrics, request_latencies, static_request_latencies

    # Two static batches [0, 1] s and [2, 4] s of 3 tokens, first tokens at 0.25 s and unknown:
    # TTFT the known batch's 0.25 s, TPOT its (1 - 0.25) / 2 = 0.375 s; s/token over both:
    # (1/3 + 2/3) / 2 = 0.5. Per request (2 in each batch): ttft [0.25, 0.25, nan, nan].
    batches = pd.DataFrame({
        "n_requests": [2, 2], "max_output_tokens": [3, 3], "start_ns": [0, 2 * S],
        "first_token_ns": [S // 4, -1], "end_ns": [S, 4 * S],
        "first_token_wall_ns": [T0 + S // 4, -1],
    })  # fmt: skip
    lat = latency_metrics(batches)
    assert (lat["ttft_s"], lat["tpot_s"], lat["s_per_token_user"]) == pytest.approx((0.25, 0.375, 0.5))
    per_request = static_request_latencies(batches)
    np.testing.assert_allclose(per_request["ttft"], [0.25, 0.25, np.nan, np.nan])
    np.testing.assert_allclose(per_request["tpot"], [0.375, 0.375, np.nan, np.nan])
    np.testing.assert_allclose(per_request["e2e"], [1.0, 1.0, 2.0, 2.0])
    # Only the wall clock unknown is unknown too (the pair is written together).
    assert np.isnan(latency_metrics(batches.assign(first_token_wall_ns=-1))["ttft_s"])
    # A first token outside its batch is a broken record: refused, naming the row.
    with pytest.raises(InputError, match=r"row 1: first_token_ns 5000000000 lies outside"):
        latency_metrics(batches.assign(first_token_ns=[S // 4, 5 * S],
                                       first_token_wall_ns=[T0 + S // 4, T0 + 5 * S]))
    # Requests: r0 known (ttft 0.25 s, tpot (1 - 0.25) / 3 = 0.25 s), r1 unknown.
    requests = pd.DataFrame({
        "arrival_ns": [0, 0], "first_token_ns": [S // 4, -1], "finish_ns": [S, S],
        "first_token_wall_ns": [T0 + S // 4, -1], "output_tokens": [4, 4],
    })  # fmt: skip
    lat = request_latencies(requests)
    np.testing.assert_allclose(lat["ttft"], [0.25, np.nan])
    np.testing.assert_allclose(lat["tpot"], [0.25, np.nan])


def test_other_processes_on_the_cells_devices_are_flagged():
    # CELLS foreign_cpu_share 0.52 (another process had about one of two pinned CPUs, as on this
    # machine's shared CI runs) -> foreign_cpu_use; 0.05 (the bound) and NaN (not measured) -> none;
    # 2 other GPU processes -> foreign_gpu_processes; -1 (not measured) -> none.
    cells, batches, power = _cell()
    cases = [(0.52, -1, "foreign_cpu_use"), (0.05, -1, ""), (float("nan"), -1, ""),
             (0.0, 2, "foreign_gpu_processes"), (0.3, 1, "foreign_cpu_use;foreign_gpu_processes")]
    for share, processes, expected in cases:
        row = _metrics(cells.assign(foreign_cpu_share=share, foreign_gpu_processes=processes),
                       batches, power).iloc[0]  # fmt: skip
        assert row["qa_flags"] == expected, (share, processes)


def test_hypervisor_steal_on_the_cells_cpus_is_flagged():
    # CELLS cpu_steal_share: 0.2 s stolen of a 1 s window on two CPUs = 0.1 -> cpu_steal; the bound
    # 0.05 itself and NaN (GPU cells, older cells) -> none; with foreign use too -> both, in order.
    cells, batches, power = _cell()
    cases = [(0.0, 0.10, "cpu_steal"), (0.0, 0.05, ""), (0.0, float("nan"), ""),
             (0.52, 0.10, "foreign_cpu_use;cpu_steal")]  # fmt: skip
    for share, steal, expected in cases:
        row = _metrics(cells.assign(foreign_cpu_share=share, cpu_steal_share=steal),
                       batches, power).iloc[0]  # fmt: skip
        assert row["qa_flags"] == expected, (share, steal)


def test_metrics_settings_are_checked():
    assert MetricsSettings.from_params({"max_j_per_token_cv": 0.1}).max_j_per_token_cv == 0.1
    assert MetricsSettings.from_params(None) == MetricsSettings()
    from tokencarbon.errors import ConfigError

    with pytest.raises(ConfigError, match="metrics.cv_bound: unknown"):
        MetricsSettings.from_params({"cv_bound": 0.1})
    with pytest.raises(ConfigError, match="metrics.confidence: 1.5"):
        MetricsSettings.from_params({"confidence": 1.5})
    with pytest.raises(ConfigError, match="metrics.max_j_per_token_cv: nan"):
        MetricsSettings.from_params({"max_j_per_token_cv": float("nan")})


def test_cell_platforms_resolved_for_their_devices():
    from tokencarbon.errors import HardwareMismatchError
    from tokencarbon.metrics import resolve_cell_platforms

    cells = _defaults(tables.CELLS, [
        {"platform": "h100-sxm-80gb", "device_name": "NVIDIA H100 80GB HBM3"},
        {"platform": "h100-sxm-80gb", "device_name": "NVIDIA H100 80GB HBM3"},
    ])  # fmt: skip
    p = resolve_cell_platforms(cells, {"h100-sxm-80gb": {"tdp_w": 500}})["h100-sxm-80gb"]
    assert p.tdp_w == 500 and p.spec_source == "datasheet; config: tdp_w"
    # A GH200's cells labelled h200-141gb are refused before any number is computed.
    gh = _defaults(tables.CELLS, [{"platform": "h200-141gb", "device_name": "NVIDIA GH200 480GB"}])
    with pytest.raises(HardwareMismatchError, match="GH200"):
        resolve_cell_platforms(gh)


XEON = "Intel(R) Xeon(R) Processor"  # this machine's and CI's CPU, not the cpu row's EPYC 7763


def _measurement(share, steal=0.0):
    """A record as rule measure_platform writes it (tokencarbon.peak.measure_platform)."""
    return {"platform": "cpu", "device_name": XEON, "foreign_cpu_share": share, "cpu_steal_share": steal,
            "measured": {"peak_tflops_fp32": 0.25, "peak_tflops_bf16": 1.0, "memory_gb_per_s": 40.0}}  # fmt: skip


def test_cpu_cells_take_the_platforms_measured_peaks_labelled():
    # issue 10 §4: cells of the cpu platform on a Xeon, spec.measure in config, the peaks from the
    # measurement; TDP and CPUs from config.
    from tokencarbon.metrics import PEAKS_UNDER_LOAD_FLAG, resolve_cell_platforms

    cells = _defaults(tables.CELLS, [{"platform": "cpu", "device_name": XEON}])
    spec = {"cpu": {"measure": True, "logical_cpus": 2, "tdp_w": 4.375}}
    p = resolve_cell_platforms(cells, spec, measurements={"cpu": _measurement(0.01)})["cpu"]
    assert (p.peak_tflops_fp32, p.peak_tflops_bf16, p.memory_gb_per_s, p.tdp_w) == (0.25, 1.0, 40.0, 4.375)
    assert "measured: peak_tflops_fp32, peak_tflops_bf16, memory_gb_per_s; config: tdp_w, logical_cpus" in p.spec_source
    assert p.qa_flags == ()  # 0.01 <= 0.05: no flag
    # measured while others used 0.72 of the CPUs (seen here): every cell of the platform flagged
    p = resolve_cell_platforms(cells, spec, measurements={"cpu": _measurement(0.72)})["cpu"]
    assert p.qa_flags == (PEAKS_UNDER_LOAD_FLAG,)
    # no other process, but the hypervisor took 0.1 of the CPUs (steal): flagged too; 0.05 is not
    p = resolve_cell_platforms(cells, spec, measurements={"cpu": _measurement(0.0, 0.1)})["cpu"]
    assert p.qa_flags == (PEAKS_UNDER_LOAD_FLAG,)
    p = resolve_cell_platforms(cells, spec, measurements={"cpu": _measurement(0.0, 0.05)})["cpu"]
    assert p.qa_flags == ()


def test_a_measurement_missing_or_of_another_cpu_is_refused():
    from tokencarbon.metrics import resolve_cell_platforms

    cells = _defaults(tables.CELLS, [{"platform": "cpu", "device_name": "AMD EPYC 9654 96-Core Processor"}])
    spec = {"cpu": {"measure": True, "logical_cpus": 2, "tdp_w": 4.375}}
    with pytest.raises(InputError, match=r"measured on 'Intel\(R\) Xeon\(R\) Processor'.*ran on \['AMD EPYC 9654"):
        resolve_cell_platforms(cells, spec, measurements={"cpu": _measurement(0.0)})
    with pytest.raises(InputError, match=r"platforms.cpu.spec.measure is true, and no measurement"):
        resolve_cell_platforms(cells, spec)


def test_a_platform_flag_reaches_every_metrics_row():
    from tokencarbon.metrics import PEAKS_UNDER_LOAD_FLAG

    cells, batches, power = _cell()
    flagged = replace(PLATFORM, qa_flags=(PEAKS_UNDER_LOAD_FLAG,))
    df = all_metrics(cells, batches, power, {"toy": ARCH}, {"toyplat": flagged},
                     CONSTANT_413, settings=NO_MIN)  # fmt: skip
    assert df.iloc[0]["qa_flags"] == PEAKS_UNDER_LOAD_FLAG  # the toy cell has no other flag


def _by_hand_from_raw(cell_dir):
    """Energy (J), output tokens, window (s), FLOPs and bytes of a committed Llama-2-7B fp16 cell,
    straight from its batches.parquet and power.parquet, without tokencarbon's code.

    Energy: NVML's counter linearly interpolated at each batch's wall-clock start and end, the
    deltas summed (the counter is the primary figure where it advances steadily, as here).
    Llama-2-7B (its config.json): hidden h = 4096, L = 32 layers, 32 KV heads, MLP 11008, vocab
    32000, 6,738,415,616 parameters. Matmul weights without lm_head: 32 x (4 x 4096^2 + 3 x 4096
    x 11008) = 6,476,005,376; lm_head 4096 x 32000 = 131,072,000.
    FLOPs of a request of P prompt and N output tokens: prefill 2 x 6,476,005,376 x P + 2 x lm_head
    (last position only) + 4 h L x P(P + 1)/2 (causal attention); decode steps k = 1..N-1:
    2 x (6,476,005,376 + 131,072,000) + 4 h L (P + k) each.
    Bytes of a static batch: prefill = weights (2 B x 6,738,415,616) + K/V of its prompt tokens
    (2 x 32 x 4096 x 2 B = 524,288 B per position); decode step k = 1..max(N)-1: weights + per
    request still generating (N > k) its cache P + k read and one new position written.
    """
    batches = pd.read_parquet(cell_dir / "batches.parquet")
    power = pd.read_parquet(cell_dir / "power.parquet")
    run = power[power["phase"] == "run"].sort_values("t_wall_ns")
    t0 = int(run["t_wall_ns"].iloc[0])
    t_s = (run["t_wall_ns"] - t0).to_numpy() / 1e9
    counter = run["energy_counter_j"].to_numpy()
    energy_j = sum(
        np.interp((e - t0) / 1e9, t_s, counter) - np.interp((s - t0) / 1e9, t_s, counter)
        for s, e in zip(batches["start_wall_ns"], batches["end_wall_ns"])
    )
    window_s = ((batches["end_wall_ns"] - batches["start_wall_ns"]) / 1e9).sum()
    h, layers, matmul, lm_head = 4096, 32, 6_476_005_376, 131_072_000
    weights_b, kv_b = 2 * 6_738_415_616, 524_288
    flops = moved = 0
    for prompts, outputs in zip(batches["prompt_lens"], batches["output_lens"]):
        moved += weights_b + kv_b * int(sum(prompts))
        for k in range(1, int(max(outputs))):
            moved += weights_b + kv_b * sum(p + k + 1 for p, n in zip(prompts, outputs) if n > k)
        for p, n in zip(map(int, prompts), map(int, outputs)):
            flops += 2 * matmul * p + 2 * lm_head + 4 * h * layers * p * (p + 1) // 2
            flops += (n - 1) * 2 * (matmul + lm_head) + 4 * h * layers * ((n - 1) * p + (n - 1) * n // 2)
    return energy_j, int(batches["output_tokens"].sum()), window_s, flops, moved


@pytest.mark.parametrize("study, batch_size, j_per_token", [
    ("gpu-study", 1, 2.737757),  # docs/results.md and the README: 2.74 J/token, H100 bs1
    ("gpu-large-batch", 64, 0.573948),
])  # fmt: skip
def test_committed_h100_cells_from_their_raw_samples(repo, study, batch_size, j_per_token):
    # The committed H100 80GB Llama-2-7B cells (benchmarks/results/<study>/cells), through the
    # pipeline's own aggregation and metrics, against _by_hand_from_raw. H100 SXM dense fp16
    # peak 989.4 TFLOP/s, 3350 GB/s (resources/platforms.csv, NVIDIA's whitepaper).
    from tokencarbon.aggregate import aggregate
    from tokencarbon.metrics import resolve_cell_platforms
    from tokencarbon.models import load_architecture

    cell_dir = repo / f"benchmarks/results/{study}/cells/h100-sxm-80gb/llama-2-7b/bs{batch_size}"
    t = aggregate([cell_dir])
    row = all_metrics(
        t.cells, t.batches, t.power, {"llama-2-7b": load_architecture("llama-2-7b")},
        resolve_cell_platforms(t.cells), CONSTANT_413,
    ).iloc[0]  # fmt: skip
    energy_j, tokens, window_s, flops, moved = _by_hand_from_raw(cell_dir)
    assert row["energy_method"] == "counter" and row["output_tokens"] == tokens
    assert row["energy_j"] == pytest.approx(energy_j, rel=1e-9)
    assert row["j_per_token"] == pytest.approx(energy_j / tokens, rel=1e-9)
    assert energy_j / tokens == pytest.approx(j_per_token, abs=5e-7)
    assert row["window_s"] == pytest.approx(window_s, rel=1e-12)
    assert row["flops"] == flops and row["bytes_moved"] == moved
    assert row["mfu"] == pytest.approx(flops / (window_s * 989.4e12), rel=1e-12)
    assert row["mbu"] == pytest.approx(moved / (window_s * 3350e9), rel=1e-12)


# --- issue 21: impossible utilisation is flagged, a cell without samples says what helps ---------


def test_utilisation_beyond_the_peak_is_flagged_never_silent():
    cells, batches, power = _cell()
    # The toy cell's work: 9,888 FLOPs and 15,200 bytes in 1 s (test_flops_and_mfu_by_hand,
    # test_bytes_and_mbu_by_hand). Peaks of 9,000 FLOP/s and 15,000 B/s (9e-9 TFLOP/s,
    # 1.5e-5 GB/s): MFU 9888 / 9000 = 1.0987 and MBU 15200 / 15000 = 1.0133, both above 100 %.
    low = replace(PLATFORM, peak_tflops_fp32=9e-9, memory_gb_per_s=1.5e-5)
    row = all_metrics(cells, batches, power, {"toy": ARCH}, {"toyplat": low},
                      CONSTANT_413, settings=NO_MIN).iloc[0]
    assert row["mfu"] == pytest.approx(9888 / 9000) and row["mbu"] == pytest.approx(15200 / 15000)
    assert row["qa_flags"].split(";") == ["mfu_above_100pct", "mbu_above_100pct"]
    # At the platform's own peaks (1e4 FLOP/s, 2e4 B/s): MFU 0.9888, MBU 0.76, no flag (the
    # module's `row` fixture: qa_flags "").
    only_mbu = replace(PLATFORM, memory_gb_per_s=1.5e-5)
    row = all_metrics(cells, batches, power, {"toy": ARCH}, {"toyplat": only_mbu},
                      CONSTANT_413, settings=NO_MIN).iloc[0]
    assert row["mfu"] == pytest.approx(0.9888) and row["qa_flags"] == "mbu_above_100pct"


def test_a_cell_without_power_samples_says_to_measure_it_again():
    cells, batches, power = _cell()
    with pytest.raises(InputError) as err:
        all_metrics(cells, batches, power.iloc[:0], {"toy": ARCH}, {"toyplat": PLATFORM},
                    CONSTANT_413, settings=NO_MIN)  # fmt: skip
    text = str(err.value)
    assert "results/<study>/cells/toyplat/toy-model/bs1/power.parquet holds none" in text
    assert "measure that cell again (delete results/<study>/cells/toyplat/toy-model/bs1/ and rerun" in text
    assert "re-run aggregate_cells" not in text


def test_static_and_continuous_cells_share_one_latency_definition_by_hand():
    # One study serves the same two requests twice, every request arriving when the repeat
    # starts: r0 (3 prompt, 4 output tokens) and r1 (2 prompt, 3 output tokens).
    # Static bs1: batch 0 is r0 over [0, 1.0] s, batch 1 is r1 over [1.2, 1.8] s (0.2 s of engine
    # set-up between them, outside every window).
    static = _build([(0, 0, 0.0, 1.0, 4), (0, 1, 1.2, 0.6, 3)], lambda t: 100.0, n_requests=2)
    # Continuous cb2 (_continuous_cell): both run at once; r0 finishes at 1.0 s, r1 at 0.75 s.
    cells, batches, power, requests, steps = _continuous_cell()
    both = [pd.concat([a, b], ignore_index=True) for a, b in zip(static, (cells, batches, power))]
    df = _metrics(*both, requests=requests, steps=steps)
    st = df[df["mode"] == "static"].iloc[0]
    cb = df[df["mode"] == "continuous"].iloc[0]
    # E2E per output token, static: r0 waits for nothing and ends with batch 0: 1.0 s / 4 =
    # 0.25 s/token; r1 waits for batch 0 (1.0 s) and then its own (0.6 s; the set-up gap is not
    # counted, as tokens/s does not count it): 1.6 s / 3 = 0.5333 s/token. Mean 0.391667.
    assert st["e2e_s_per_token"] == pytest.approx((1.0 / 4 + 1.6 / 3) / 2)
    # Continuous: (finish - arrival) / output tokens: r0 1.0 / 4 = 0.25, r1 0.75 / 3 = 0.25.
    assert cb["e2e_s_per_token"] == pytest.approx(0.25)
    # On this axis the continuous cell is the faster one (it serves both requests at once) ...
    assert cb["e2e_s_per_token"] < st["e2e_s_per_token"]
    # ... while the study's batch latency per token, kept as its own column, has no queueing:
    # static mean(1.0 / 4, 0.6 / 3) = 0.225 s/token, below the continuous cell's 0.25.
    assert st["s_per_token_user"] == pytest.approx((1.0 / 4 + 0.6 / 3) / 2)
    assert cb["s_per_token_user"] == pytest.approx(0.25)
    # One repeat: its row holds the same figure, with no interval.
    _, repeats = compute_all(*both, {"toy": ARCH}, {"toyplat": PLATFORM}, CONSTANT_413,
                             requests=requests, steps=steps, settings=NO_MIN)  # fmt: skip
    rep = repeats.set_index("mode")["e2e_s_per_token"]
    assert (rep["static"], rep["continuous"]) == pytest.approx((0.391667, 0.25), abs=1e-6)
    assert np.isnan(st["e2e_s_per_token_ci_low"])


def test_static_e2e_per_token_restarts_the_queue_each_repeat():
    from tokencarbon.metrics import static_e2e_per_token

    # Two repeats of two 1 s batches (outputs 2 and 4 tokens): each repeat's second batch waits
    # 1 s, never the earlier repeat's 2 s: [1/2, 2/4] per repeat -> [0.5, 0.5, 0.5, 0.5].
    _, batches, _ = _build([(r, i, 3.0 * r + 1.5 * i, 1.0, 2 + 2 * i) for r in (0, 1)
                            for i in (0, 1)], lambda t: 100.0)  # fmt: skip
    assert static_e2e_per_token(batches) == pytest.approx([0.5, 0.5, 0.5, 0.5])
    with pytest.raises(InputError, match="output_lens"):
        static_e2e_per_token(batches.assign(n_requests=2))

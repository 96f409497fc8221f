"""Per-cell metrics of a synthetic cell whose every figure is worked out by hand."""

import numpy as np
import pandas as pd
import pytest

from tokencarbon import tables
from tokencarbon.carbon import ConstantIntensity
from tokencarbon.errors import InputError
from tokencarbon.metrics import all_metrics
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


def _cell():
    cells = pd.DataFrame([{
        "platform": "toyplat", "model": "toy-model", "mode": "static", "batch_size": 1, "architecture": "toy",
        "dtype": "float32", "backend": "torch", "device_name": "x", "n_requests": 1, "n_batches": 1,
        "warmup_batches": 1, "window_start_wall_ns": T0, "window_end_wall_ns": T0 + S,
        "idle_power_w": 39.0, "power_source": "nvml", "power_interval_s": 0.1,
        "peak_memory_bytes": 0.0, "git_commit": "x",
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
                     ConstantIntensity(413.0), pue=1.0, fill=None)
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


def test_latency_by_hand(row):
    assert row["s_per_token_user"] == pytest.approx(1 / 3)  # 1 s batch, 3 tokens per request
    assert row["ttft_s"] == pytest.approx(0.25)
    assert row["tpot_s"] == pytest.approx(0.75 / 2)  # 2 decode steps after the first token


def _metrics(cells, batches, power, intensity=ConstantIntensity(413.0), **kw):
    df = all_metrics(cells, batches, power, {"toy": ARCH}, {"toyplat": PLATFORM}, intensity,
                     pue=1.0, fill=kw.pop("fill", None), **kw)
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

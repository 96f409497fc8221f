"""Per-cell metrics of a synthetic cell whose every figure is worked out by hand."""

import numpy as np
import pandas as pd
import pytest

from tokencarbon import tables
from tokencarbon.carbon import ConstantIntensity
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
        "idle_power_w": 40.0, "power_source": "nvml", "power_interval_s": 0.1,
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
    power = pd.DataFrame({
        "platform": "toyplat", "model": "toy-model", "mode": "static", "batch_size": 1, "t_wall_ns": t,
        "phase": "run", "source": "nvml", "modeled": False, "device_index": 0, "power_w": 100.0,
        "power_avg_w": np.nan, "energy_counter_j": 100.0 * (t - T0) / S + 5000.0, "util_pct": 0.0,
        "mem_used_bytes": 0.0, "temperature_c": 0.0, "sm_clock_mhz": 0.0, "mem_clock_mhz": 0.0,
        "throttle_reasons": -1,
    })
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
    assert row["idle_energy_j"] == pytest.approx(40.0) and row["above_idle_energy_j"] == pytest.approx(60.0)
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

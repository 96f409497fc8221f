"""Analytical FLOPs and bytes: hand computations, calflops' published Llama-2-7B figure, and
calflops run on real transformers models."""

import dataclasses

import pytest
import torch
import transformers
from calflops import calculate_flops
from helpers import hf_model

from tokencarbon.errors import ConfigError
from tokencarbon.flops import (
    batch_decode_flops,
    batch_flops,
    batch_prefill_flops,
    decode_flops,
    decode_step_bytes,
    decode_step_flops,
    prefill_bytes,
    prefill_flops,
    request_flops,
)
from tokencarbon.models import Architecture, load_architecture, to_hf_config

TINY = load_architecture("tiny-llama")
# Hand numbers for tiny-llama used below (h=256, L=4, heads=4, kv_dim=128, I=688, V=4096):
#   matmul params 3,948,544 = body 2,899,968 + lm_head 1,048,576 (see test_models)
#   attention per attended position, all layers: 4 * 256 * 4 = 4,096 FLOPs
#   K+V per position, fp16: 2 * 4 * 128 * 2 B = 2,048 B ; weights fp16: 4,999,424 * 2 = 9,998,848 B


def test_llama2_7b_matches_calflops_published_figure():
    # calflops README, "Large Language Model" table: llama2-7b, input (1,128):
    # fwd FLOPs 1700.06 G, fwd MACs 850 G. calflops counts the full T^2 score matrix
    # (torch.matmul in eager attention), logits at every position, no embedding.
    arch = load_architecture("llama-2-7b")
    ours = prefill_flops(arch, 128, causal=False, logits="all")
    # By hand: 2 * 6,607,077,376 matmul params * 128 = 1,691,411,808,256
    #        + 4 * 4096 * 32 layers * 128^2           =     8,589,934,592
    #        = 1,700,001,742,848
    assert ours == 1_700_001_742_848
    assert ours == pytest.approx(1700.06e9, rel=1e-3)
    # The exact residual: calflops also counts 1 FLOP per element of F.silu (T x I per layer)
    # and F.softmax (heads x T x T per layer): 32 * (128*11008 + 32*128*128) = 61,865,984,
    # giving 1,700,063,608,832 = 1700.06 G to the README's two decimals.
    residual = 32 * (128 * 11008 + 32 * 128 * 128)
    assert round((ours + residual) / 1e9, 2) == 1700.06
    # MACs are matmuls only: half our count, 850.0009 G, printed "850".
    assert round(ours / 2 / 1e9) == 850


def _calflops(model, seq_len, device):
    input_ids = torch.zeros((1, seq_len), dtype=torch.long, device=device)
    flops, macs, _ = calculate_flops(
        model, kwargs={"input_ids": input_ids},
        print_results=False, print_detailed=False, output_as_string=False,
    )  # fmt: skip
    return flops, macs


def test_calflops_on_meta_llama2_7b_reproduces_the_published_run():
    # The README's own measurement, redone: calflops over transformers' Llama-2-7B built on the
    # meta device (shapes only, no weights), 128 tokens.
    arch = load_architecture("llama-2-7b")
    flops, macs = _calflops(hf_model(arch, "meta", attn_implementation="eager"), 128, "meta")
    ours = prefill_flops(arch, 128, causal=False, logits="all")
    assert 2 * macs == ours
    assert flops == ours + 32 * (128 * 11008 + 32 * 128 * 128)  # silu + softmax, see above


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_calflops_cross_check_on_real_cpu_forward(name):
    # A real forward pass on CPU with random weights (GQA on tiny-llama, fused-qkv Conv1D with
    # biases on tiny-gpt2). calflops MACs are exactly our matmuls; its FLOPs add elementwise ops.
    arch = load_architecture(name)
    seq_len = 64
    flops, macs = _calflops(hf_model(arch, "cpu", attn_implementation="eager"), seq_len, "cpu")
    ours = prefill_flops(arch, seq_len, causal=False, logits="all")
    assert 2 * macs == ours
    assert flops == pytest.approx(ours, rel=0.01)
    # The residual by hand (L=4, T=64, heads=4, h=256): softmax 4 * 4*64*64 = 65,536, plus
    #   llama: F.silu 4 * 64*688 = 176,128                                  -> 241,664
    #   gpt2: F.layer_norm 5 FLOPs/element, 9 norms: 9 * 5*64*256 = 737,280; addmm adds one
    #         bias vector per call: 4 * (768 + 256 + 1024 + 256) = 9,216    -> 812,032
    expected_residual = {"tiny-llama": 65_536 + 176_128, "tiny-gpt2": 65_536 + 737_280 + 9_216}
    assert flops - ours == expected_residual[name]


def test_prefill_flops_by_hand():
    # T=4, causal, last-position logits:
    #   body 2 * 2,899,968 * 4 = 23,199,744 ; lm_head 2 * 1,048,576 = 2,097,152
    #   attention: token i attends to i+1 -> 1+2+3+4 = 10 positions * 4,096 = 40,960
    assert prefill_flops(TINY, 4) == 23_199_744 + 2_097_152 + 40_960
    # all logits: lm_head x4 ; full attention: 16 positions
    assert (
        prefill_flops(TINY, 4, causal=False, logits="all")
        == 23_199_744 + 4 * 2_097_152 + 16 * 4_096
    )


def test_decode_step_flops_by_hand():
    # 2 * 3,948,544 + 10 attended positions * 4,096 = 7,897,088 + 40,960
    assert decode_step_flops(TINY, 10) == 7_938_048


def test_request_flops_by_hand():
    # P=4, N=3: prefill (25,337,856) yields token 1; decode steps attend to 5 and 6 positions:
    #   2 * 7,897,088 + 11 * 4,096 = 15,794,176 + 45,056 = 15,839,232
    assert request_flops(TINY, 4, 3) == 25_337_856 + 15_839_232
    assert request_flops(TINY, 4, 1) == 25_337_856  # one output token: prefill only


def test_batch_flops_sum_real_tokens_only():
    # Requests (P=4, N=3) and (P=2, N=1); the second is padded to 4 in a static batch but
    # counts only its own tokens: prefill T=2 = 2*2,899,968*2 + 2,097,152 + 3*4,096 = 13,709,312.
    prompt_lens, output_lens = [4, 2], [3, 1]
    assert batch_flops(TINY, prompt_lens, output_lens) == 41_177_088 + 13_709_312
    assert batch_prefill_flops(TINY, prompt_lens) == 25_337_856 + 13_709_312
    assert batch_decode_flops(TINY, prompt_lens, output_lens) == 15_839_232
    with pytest.raises(ConfigError, match="2 prompt lengths but 1 output lengths"):
        batch_decode_flops(TINY, prompt_lens, [3])


def test_decode_step_bytes_by_hand():
    # Contexts 10 and 3: read 13 cached positions, write 2 new ones -> 15 * 2,048 = 30,720
    assert decode_step_bytes(TINY, [10, 3], "float16") == 9_998_848 + 30_720


def test_prefill_bytes_by_hand():
    # Weights once + K/V of the 4 + 2 real prompt tokens: 9,998,848 + 6 * 2,048
    assert prefill_bytes(TINY, [4, 2], "float16") == 10_011_136


def test_bad_lengths_rejected():
    with pytest.raises(ConfigError, match="prompt_len=0"):
        prefill_flops(TINY, 0)
    with pytest.raises(ConfigError, match="context_len=0"):
        decode_step_bytes(TINY, [5, 0], "float16")
    with pytest.raises(ConfigError, match="logits='first'"):
        prefill_flops(TINY, 4, logits="first")


# ---------------------------------------------------------------- GQA, biases, head_dim, windows

# A Mistral-shaped toy: h=64, 2 layers, 4 heads of 16 (q_dim 64), 2 KV heads (kv_dim 32), I=96,
# vocab 128, a sliding window of 4 positions.
WINDOWED = Architecture(
    "toy-mistral", "llama", 64, 2, 4, 2, 96, 128, 256, False, "silu", "rmsnorm", 1e-5, 1e4,
    model_type="mistral", sliding_window=4,
)  # fmt: skip
# matmul params: per layer q, o 2*64*64 = 8,192; k, v 2*64*32 = 4,096; MLP 3*64*96 = 18,432
#   -> 30,720; x2 = 61,440; lm_head 64*128 = 8,192 -> 69,632 (body 61,440)
# attention per attended position, all layers: 4 * q_dim 64 * 2 = 512 FLOPs


def test_sliding_window_caps_attended_positions_by_hand():
    # Prefill T=6, causal: token i attends to min(i, 4): 1+2+3+4+4+4 = 18 positions (21 unwindowed)
    assert prefill_flops(WINDOWED, 6) == 2 * 61_440 * 6 + 2 * 8_192 + 18 * 512
    full = dataclasses.replace(WINDOWED, sliding_window=None)
    assert prefill_flops(full, 6) == 2 * 61_440 * 6 + 2 * 8_192 + 21 * 512
    # An eager kernel still computes the whole T x T score matrix (calflops' convention): 36
    assert prefill_flops(WINDOWED, 6, causal=False) == 2 * 61_440 * 6 + 2 * 8_192 + 36 * 512
    # Decode P=6, N=4: contexts 7, 8, 9 each attend to 4 -> 12 positions (24 unwindowed)
    assert decode_flops(WINDOWED, 6, 4) == 3 * 2 * 69_632 + 12 * 512
    assert decode_flops(full, 6, 4) == 3 * 2 * 69_632 + 24 * 512
    # P=2, N=4: contexts 3, 4, 5 -> 3 + 4 + 4 = 11
    assert decode_flops(WINDOWED, 2, 4) == 3 * 2 * 69_632 + 11 * 512
    assert decode_step_flops(WINDOWED, 9) == 2 * 69_632 + 4 * 512
    # Bytes: a step reads at most the window of K/V: contexts 9 and 3 read 4 + 3, write 2 new
    # positions; K+V per position fp16: 2 * 2 layers * 32 * 2 B = 256 B; weights fp16:
    # param_count = 69,632 + 2 layers * 2 norms * 64 + final 64 + embed 128*64 = 78,144 -> 156,288 B
    assert decode_step_bytes(WINDOWED, [9, 3], "float16") == 156_288 + 9 * 256


def test_explicit_head_dim_sets_the_attention_width():
    # Mistral-Nemo style: head_dim 32 with hidden 64 and 4 heads: q_dim 128, kv_dim 64.
    arch = dataclasses.replace(WINDOWED, head_dim=32, sliding_window=None)
    assert (arch.q_dim, arch.kv_dim) == (128, 64)
    # matmul params per layer: q, o 2*64*128 = 16,384; k, v 2*64*64 = 8,192; MLP 18,432 -> 43,008
    # x2 = 86,016 + lm_head 8,192; attention 4 * 128 * 2 = 1,024 per attended position
    assert decode_step_flops(arch, 10) == 2 * (86_016 + 8_192) + 10 * 1_024


@pytest.mark.parametrize("name", ["qwen2", "mistral"])
def test_calflops_cross_check_qwen2_biases_and_mistral(name):
    # transformers' own Qwen2 (q/k/v biases: adds, not MACs) and Mistral classes on CPU: calflops'
    # MACs are exactly our matmuls (the full T x T scores of eager attention, all logits).
    arch = dataclasses.replace(WINDOWED, model_type=name, sliding_window=None, qkv_bias=None)
    config = to_hf_config(arch)
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    flops, macs = _calflops(model, 16, "cpu")
    ours = prefill_flops(arch, 16, causal=False, logits="all")
    assert 2 * macs == ours
    # The rest of calflops' FLOPs by hand (L=2, T=16, heads=4, I=96): softmax 2 * 4*16*16 = 2,048,
    #   F.silu 2 * 16*96 = 3,072. Qwen2's q/k/v biases add nothing: calflops counts F.linear as
    #   2 x MACs whether or not it has a bias (as our convention leaves biases out).
    assert flops - ours == 2_048 + 3_072

"""backends/model.py: the decoder against transformers on the same weights (Llama, Llama 3.1 RoPE
scaling, Qwen2 biases, GPT-2), RoPE frequencies by hand, dummy weights, architecture checks."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from hf_checkpoints import KINDS, LLAMA3_ROPE, PROMPTS, save_checkpoint

from tokencarbon.backends.model import build_model, rope_inv_freq
from tokencarbon.errors import ConfigError
from tokencarbon.models import load_architecture


@pytest.fixture(scope="module", params=KINDS)
def checkpoint(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param)
    arch, hf = save_checkpoint(request.param, path)
    return arch, hf, path


def test_logits_match_transformers(checkpoint):
    arch, hf, path = checkpoint
    ours = build_model(arch, "float32", "cpu", seed=0, checkpoint=str(path))
    long_prompt = list(range(1, 120))  # positions past the llama3 scaling's 64-token context
    for prompt in PROMPTS + [long_prompt]:
        ids = torch.tensor([prompt])
        n = len(prompt)
        allowed = torch.ones(n, n, dtype=torch.bool).tril()
        mask = torch.zeros(n, n).masked_fill(~allowed, float("-inf"))[None, None]
        for layer in ours.layers:  # prefill writes the KV cache
            shape = (1, arch.num_kv_heads, n, arch.head_dim)
            layer.attn.k_cache, layer.attn.v_cache = torch.zeros(shape), torch.zeros(shape)
        with torch.no_grad():
            got = ours(ids, torch.arange(n)[None], mask)[0]
            want = hf(ids).logits[0, -1]
        # within 1e-4 of the largest logit: same math, float32 rounding only
        assert (got - want).abs().max() <= 1e-4 * want.abs().max()


def test_llama3_rope_by_hand():
    # head_dim 64, theta 10000: inv_freq[i] = 10000^(-2i/64), wavelength 2 pi / inv_freq.
    # LLAMA3_ROPE: original context 64, low 1, high 4, factor 8 -> wavelengths > 64 divided by 8,
    # < 16 kept, between: (1 - s) f / 8 + s f with s = (64 / wavelength - 1) / (4 - 1).
    arch = dataclasses.replace(load_architecture("tiny-llama"), rope_scaling=LLAMA3_ROPE)
    got = rope_inv_freq(arch).double()
    for i, expected_kind in [(0, "kept"), (5, "mid"), (31, "scaled")]:
        f = 10000 ** (-2 * i / 64)
        wavelength = 2 * math.pi / f
        if expected_kind == "kept":
            assert wavelength < 16  # i = 0: 6.28
            want = f
        elif expected_kind == "scaled":
            assert wavelength > 64  # i = 31: 2 pi x 10000^(62/64) = 47,000
            want = f / 8
        else:
            assert 16 < wavelength < 64  # i = 5: 2 pi x 10000^(10/64) = 26.5
            s = (64 / wavelength - 1) / 3
            want = (1 - s) * f / 8 + s * f
        assert got[i].item() == pytest.approx(want, rel=1e-6)
    plain = rope_inv_freq(load_architecture("tiny-llama"))
    assert plain[0] == got[0] and plain[31] != got[31]


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_dummy_weights(name):
    arch = load_architecture(name)
    model = build_model(arch, "float32", "cpu", seed=7)
    for pname, p in model.named_parameters():
        if p.dim() == 2:  # every linear and embedding weight: N(0, 0.02), never zeros
            # >= 131,072 samples (tiny-gpt2's 512 x 256 positions): the std's standard error is
            # 0.02 / sqrt(2 x 131072) = 3.9e-5, so 5e-4 is about 13 standard errors.
            assert abs(p.std().item() - 0.02) < 5e-4, pname
            assert abs(p.mean().item()) < 5e-4, pname
        elif pname.endswith("norm.weight"):
            assert torch.all(p == 1), pname
        else:  # biases (gpt2)
            assert torch.all(p == 0), pname
    n_params = sum(p.numel() for p in model.parameters())
    # tiny-llama by hand: embed + lm_head 2 x 4096 x 256 = 2,097,152; per layer q 256x256,
    # k and v 256x128 each, o 256x256, gate/up/down 3 x 256 x 688, two norms 2 x 256
    # = 725,504, x 4 layers = 2,902,016; final norm 256 -> 4,999,424.
    # tiny-gpt2: wte 4096x256 (tied) + wpe 512x256 = 1,179,648; per layer qkv 256x768 + 768,
    # proj 256x256 + 256, fc 256x1024 + 1024, proj 1024x256 + 256, two LayerNorms 4 x 256
    # = 789,760, x 4 = 3,159,040; final LayerNorm 512 -> 4,339,200.
    assert n_params == {"tiny-llama": 4_999_424, "tiny-gpt2": 4_339_200}[name]
    same = build_model(arch, "float32", "cpu", seed=7)
    other = build_model(arch, "float32", "cpu", seed=8)
    assert torch.equal(model.layers[0].attn.qkv.weight, same.layers[0].attn.qkv.weight)
    assert not torch.equal(model.layers[0].attn.qkv.weight, other.layers[0].attn.qkv.weight)


def test_qkv_bias_built_from_the_architecture():
    # tiny-llama with Qwen2's biases: q/k/v (256 + 2 x 128 = 512 per layer) and nothing else.
    arch = dataclasses.replace(load_architecture("tiny-llama"), model_type="qwen2", qkv_bias=True)
    model = build_model(arch, "float32", "cpu", seed=0)
    assert model.layers[0].attn.qkv.bias.shape == (512,)
    assert model.layers[0].attn.out.bias is None and model.layers[0].mlp.up.bias is None
    # 4,999,424 (test_dummy_weights) + 4 layers x 512
    assert sum(p.numel() for p in model.parameters()) == 4_999_424 + 4 * 512


def test_tied_lm_head_is_the_embedding():
    model = build_model(load_architecture("tiny-gpt2"), "float32", "cpu", seed=0)
    assert model.lm_head.weight is model.embed.weight


def test_unsupported_architectures_are_refused():
    arch = load_architecture("tiny-llama")
    with pytest.raises(ConfigError, match="dtype 'float64'"):
        build_model(arch, "float64", "cpu", seed=0)
    yarn = dataclasses.replace(arch, rope_scaling={"rope_type": "yarn", "factor": 4.0})
    with pytest.raises(ConfigError, match="rope_scaling type 'yarn'.*transformers backend"):
        build_model(yarn, "float32", "cpu", seed=0)

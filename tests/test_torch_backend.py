"""The torch backend against Hugging Face transformers (same weights), and its batching, counting,
dummy weights and timing points. CPU, float32, tiny architectures; GPU tests skip without CUDA."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

from tokencarbon.backends.torch_backend import TorchEngine, build_model
from tokencarbon.errors import ConfigError, InputError
from tokencarbon.models import load_architecture

PROMPTS = [[5, 17, 300, 42, 9, 1000, 7], [3, 2, 4000, 11], [77]]
OUTPUTS = [6, 3, 5]

gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def hf_model(arch, path):
    """A random transformers model of `arch`, saved to `path` with save_pretrained."""
    if arch.family == "llama":
        config = transformers.LlamaConfig(
            hidden_size=arch.hidden_size,
            num_hidden_layers=arch.num_layers,
            num_attention_heads=arch.num_heads,
            num_key_value_heads=arch.num_kv_heads,
            intermediate_size=arch.intermediate_size,
            vocab_size=arch.vocab_size,
            max_position_embeddings=arch.max_positions,
            rms_norm_eps=arch.norm_eps,
            rope_theta=arch.rope_theta,
            tie_word_embeddings=False,
        )
        cls = transformers.LlamaForCausalLM
    else:
        config = transformers.GPT2Config(
            n_embd=arch.hidden_size,
            n_layer=arch.num_layers,
            n_head=arch.num_heads,
            n_inner=arch.intermediate_size,
            vocab_size=arch.vocab_size,
            n_positions=arch.max_positions,
            layer_norm_epsilon=arch.norm_eps,
        )
        cls = transformers.GPT2LMHeadModel
    torch.manual_seed(1)
    model = cls._from_config(config, attn_implementation="eager").eval()
    # transformers initialises biases to 0 and norms to 1, which would hide a wrong mapping of
    # either: make every tensor distinct.
    with torch.no_grad():
        for name, p in model.named_parameters():
            is_norm = p.dim() == 1 and ("norm" in name or ".ln_" in name)
            p.copy_(1 + 0.1 * torch.randn_like(p) if is_norm else 0.02 * torch.randn_like(p))
    model.save_pretrained(path)
    return model


@pytest.fixture(scope="module", params=["tiny-llama", "tiny-gpt2"])
def checkpoint(request, tmp_path_factory):
    arch = load_architecture(request.param)
    path = tmp_path_factory.mktemp(request.param)
    return arch, hf_model(arch, path), path


def test_logits_match_transformers(checkpoint):
    arch, hf, path = checkpoint
    ours = build_model(arch, "float32", "cpu", seed=0, checkpoint=str(path))
    for prompt in PROMPTS:
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


def test_batched_greedy_tokens_match_transformers_generate(checkpoint):
    # Each request of a left-padded batch decodes (KV cache, per-request positions, padding mask)
    # to the tokens transformers' own greedy generate gives for that prompt alone.
    arch, hf, path = checkpoint
    engine = TorchEngine(arch, "float32", "cpu", seed=0, checkpoint=str(path))
    result = engine.run_batch(PROMPTS, OUTPUTS)
    for prompt, n_out, got in zip(PROMPTS, OUTPUTS, result.token_ids):
        want = hf.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=n_out,
            min_new_tokens=n_out,  # EOS ignored, as the engine does
            do_sample=False,
            pad_token_id=0,
        )[0, len(prompt) :].tolist()
        assert list(got) == want


def test_key_buckets_by_hand():
    engine = TorchEngine(load_architecture("tiny-llama"), "float32", "cpu", seed=0)
    engine._allocate(1, 128)  # 128 / 8 buckets = 16 -> rounded up to one 64-slot block
    assert [engine.key_bucket(s) for s in (0, 63, 64, 127)] == [64, 64, 128, 128]
    engine._allocate(1, 2048)  # 2048 / 8 = 256 slots per bucket
    assert [engine.key_bucket(s) for s in (0, 255, 256, 1000, 2047)] == [256, 256, 512, 1024, 2048]


def test_decode_across_key_buckets_matches_transformers_generate(checkpoint):
    # 7 padded prompt slots + 90 outputs -> a 128-slot cache in two 64-slot key buckets: steps
    # feeding slots 7..63 attend over 64 slots, later ones over 128; tokens as transformers'.
    arch, hf, path = checkpoint
    engine = TorchEngine(arch, "float32", "cpu", seed=0, checkpoint=str(path))
    outputs = [90, 40, 70]
    result = engine.run_batch(PROMPTS, outputs)
    assert engine._shape == (3, 128)
    for prompt, n_out, got in zip(PROMPTS, outputs, result.token_ids):
        want = hf.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=n_out,
            min_new_tokens=n_out,
            do_sample=False,
            pad_token_id=0,
        )[0, len(prompt) :].tolist()
        assert list(got) == want


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_padded_batch_equals_each_request_alone(name):
    # tiny-gpt2's max_positions is 512: 500 padded prompt tokens + 20 decode steps = 520, so the
    # first request's positions pass the table after its own 2 tokens (clamped, uncounted) while
    # those 2 tokens must stay exact.
    engine = TorchEngine(load_architecture(name), "float32", "cpu", seed=3)
    prompts = [list(range(1, 501)), [9, 8, 7], [40, 41, 42, 43, 44]]
    outputs = [2, 20, 7]
    batched = engine.run_batch(prompts, outputs).token_ids
    alone = [engine.run_batch([p], [n]).token_ids[0] for p, n in zip(prompts, outputs)]
    assert batched == tuple(alone)
    assert [len(t) for t in batched] == outputs


def test_reused_cache_hides_stale_slots():
    # Both batches round to the same 64-slot cache, so the second reuses the first's cache with
    # its old K/V still in slots the second never writes: they must stay masked.
    arch = load_architecture("tiny-llama")
    engine = TorchEngine(arch, "float32", "cpu", seed=0)
    engine.run_batch([list(range(1, 41))], [20])  # 40 + 20 = 60 -> 64 slots
    reused = engine.run_batch([[6, 5, 4]], [10])  # 3 + 10 = 13 -> 64 slots
    fresh = TorchEngine(arch, "float32", "cpu", seed=0).run_batch([[6, 5, 4]], [10])
    assert reused.token_ids == fresh.token_ids


def test_counts_by_hand():
    engine = TorchEngine(load_architecture("tiny-llama"), "float32", "cpu", seed=0)
    r = engine.run_batch([[1, 2, 3], [4, 5, 6, 7, 8], [9, 10]], [4, 1, 2])
    assert r.n_requests == 3
    assert r.input_tokens == 10  # 3 + 5 + 2, padding excluded
    assert r.output_tokens == 7  # 4 + 1 + 2
    assert r.padded_input_len == 5  # longest prompt
    assert r.max_output_tokens == 4
    assert [len(t) for t in r.token_ids] == [4, 1, 2]
    assert all(0 <= t < 4096 for ids in r.token_ids for t in ids)


def test_timing_points_ordered():
    engine = TorchEngine(load_architecture("tiny-gpt2"), "float32", "cpu", seed=0)
    r = engine.run_batch([[1, 2, 3], [4, 5]], [8, 3])
    assert r.start_ns <= r.first_token_ns <= r.end_ns
    assert r.start_wall_ns <= r.first_token_wall_ns <= r.end_wall_ns
    assert r.end_ns > r.start_ns  # a prefill and 7 decode steps take some time


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


def test_tied_lm_head_is_the_embedding():
    model = build_model(load_architecture("tiny-gpt2"), "float32", "cpu", seed=0)
    assert model.lm_head.weight is model.embed.weight


def test_errors_name_the_fault(tmp_path):
    arch = load_architecture("tiny-gpt2")
    engine = TorchEngine(arch, "float32", "cpu", seed=0)
    with pytest.raises(InputError, match="request 1: 500 prompt \\+ 13 output tokens exceed"):
        engine.run_batch([[1], [1] * 500], [1, 13])  # 513 > max_positions 512
    with pytest.raises(ConfigError, match="dtype 'float64'"):
        build_model(arch, "float64", "cpu", seed=0)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 512}))
    with pytest.raises(
        ConfigError, match="n_embd=512 but architecture 'tiny-gpt2' has hidden_size=256"
    ):
        build_model(arch, "float32", "cpu", seed=0, checkpoint=str(tmp_path))


@gpu
@needs_cuda
@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_cuda_graph_decode_matches_eager(name):
    arch = load_architecture(name)
    graphed = TorchEngine(arch, "float32", "cuda", seed=0, cuda_graphs=True)
    eager = TorchEngine(arch, "float32", "cuda", seed=0, cuda_graphs=False)
    assert graphed._graphs == {} and eager.graphs is False
    want = eager.run_batch(PROMPTS, OUTPUTS).token_ids
    assert graphed.run_batch(PROMPTS, OUTPUTS).token_ids == want
    assert list(graphed._graphs) == [64]  # the decode steps above were replays of one graph
    # the next batch with the same (batch, cache) shape replays the same graph on new inputs
    graph = graphed._graphs[64]
    prompts = [[9, 9, 9], [1], [2, 3]]
    assert (
        graphed.run_batch(prompts, [4, 4, 4]).token_ids
        == eager.run_batch(prompts, [4, 4, 4]).token_ids
    )
    assert graphed._graphs[64] is graph
    # 7 + 90 slots: a 128-slot cache, key buckets 64 and 128, one graph each, sharing one pool
    outputs = [90, 40, 70]
    assert graphed.run_batch(PROMPTS, outputs).token_ids == eager.run_batch(PROMPTS, outputs).token_ids
    assert sorted(graphed._graphs) == [64, 128]


@gpu
@needs_cuda
def test_compiled_decode_matches_eager():
    arch = load_architecture("tiny-llama")
    compiled = TorchEngine(arch, "float32", "cuda", seed=0, compile_decode=True)
    eager = TorchEngine(arch, "float32", "cuda", seed=0, cuda_graphs=False)
    assert (
        compiled.run_batch(PROMPTS, OUTPUTS).token_ids
        == eager.run_batch(PROMPTS, OUTPUTS).token_ids
    )


@gpu
@needs_cuda
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_runs(dtype):
    arch = load_architecture("tiny-llama")
    engine = TorchEngine(arch, dtype, "cuda", seed=0)
    assert engine.model.lm_head.weight.dtype == getattr(torch, dtype)
    r = engine.run_batch(PROMPTS, OUTPUTS)
    assert [len(t) for t in r.token_ids] == OUTPUTS
    assert r.start_ns <= r.first_token_ns <= r.end_ns
    assert engine.peak_memory_bytes() > 0


def test_reserve_output_len_sizes_the_cache_without_changing_tokens():
    # The OOM probe reserves the full output length but decodes a few steps.
    # 3 prompt tokens + 100 reserved = 103 -> two 64-slot blocks = 128 slots (unreserved: 3 + 10
    # = 13 -> 64); greedy tokens do not depend on how many masked slots the cache holds.
    arch = load_architecture("tiny-llama")
    engine = TorchEngine(arch, "float32", "cpu", seed=0)
    reserved = engine.run_batch([[6, 5, 4]], [10], reserve_output_len=100)
    assert engine.model.layers[0].attn.k_cache.shape[2] == 128
    plain = TorchEngine(arch, "float32", "cpu", seed=0).run_batch([[6, 5, 4]], [10])
    assert reserved.token_ids == plain.token_ids
    assert reserved.output_tokens == 10  # only the decoded tokens count
    with pytest.raises(InputError, match="max_positions"):  # 3 + 510 > tiny-llama's 512
        engine.run_batch([[6, 5, 4]], [10], reserve_output_len=510)

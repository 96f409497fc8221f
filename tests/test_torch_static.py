"""backends/static.py: the static-batch engine against transformers' generate (same weights), its
batching, counting, key buckets and timing points. CPU, float32, tiny architectures; GPU tests skip
without CUDA."""

from __future__ import annotations

import pytest
import torch
from hf_checkpoints import KINDS, OUTPUTS, PROMPTS, generate, save_checkpoint

from tokencarbon.backends.static import TorchEngine
from tokencarbon.errors import ConfigError, InputError
from tokencarbon.models import load_architecture

gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module", params=KINDS)
def checkpoint(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param)
    arch, hf = save_checkpoint(request.param, path)
    return arch, hf, path


def test_batched_greedy_tokens_match_transformers_generate(checkpoint):
    # Each request of a left-padded batch decodes (KV cache, per-request positions, padding mask)
    # to the tokens transformers' own greedy generate gives for that prompt alone.
    arch, hf, path = checkpoint
    engine = TorchEngine(arch, "float32", "cpu", seed=0, checkpoint=str(path))
    result = engine.run_batch(PROMPTS, OUTPUTS)
    for prompt, n_out, got in zip(PROMPTS, OUTPUTS, result.token_ids):
        want = generate(hf, prompt, n_out)
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
        want = generate(hf, prompt, n_out)
        assert list(got) == want


def test_one_cache_for_every_batch_with_min_cache_len_same_tokens_and_key_buckets(checkpoint):
    # A static cell passes its batches' largest need (min_cache_len): the batches of one size then
    # run in one cache allocated once (its graphs kept, on a GPU), decode over the same key buckets
    # as a cache sized per batch (key_bucket of the batch's own span), and give transformers' tokens.
    arch, hf, path = checkpoint
    plain = TorchEngine(arch, "float32", "cpu", seed=0, checkpoint=str(path))
    shared = TorchEngine(arch, "float32", "cpu", seed=0, checkpoint=str(path), min_cache_len=600)
    keys = {plain: [], shared: []}  # the key span of every decode step each engine ran
    for engine in keys:
        step = engine._step_fn
        engine._step_fn = lambda k, step=step, seen=keys[engine]: (seen.append(k), step(k))[1]
    batches = [(PROMPTS, [90, 40, 70]), (PROMPTS, [5, 9, 3])]
    caches = []
    for prompts, outputs in batches:
        a, b = plain.run_batch(prompts, outputs), shared.run_batch(prompts, outputs)
        caches.append(shared.model.layers[0].attn.k_cache)
        assert shared._shape == (3, 640)  # 600 rounded up to CACHE_ALIGN (64): 10 blocks
        for prompt, n_out, got, alone in zip(prompts, outputs, b.token_ids, a.token_ids):
            assert list(got) == list(alone) == generate(hf, prompt, n_out)
    assert caches[0] is caches[1]  # not allocated again for the second batch
    # every step attended over the slots a per-batch cache gives: 7 + 90 slots -> 128, in 64-slot
    # buckets (steps feeding slots 7..63 over 64, 64..95 over 128); then 7 + 9 -> 64. (The
    # 640-slot cache's own buckets are 128 slots: 640 / 8 = 80, rounded up to 64s.)
    assert keys[shared] == keys[plain] == [64] * 57 + [128] * 32 + [64] * 8
    assert [shared.key_bucket(s, 128) for s in (7, 63, 64, 96)] == [64, 64, 128, 128]
    assert [shared.key_bucket(s) for s in (7, 127, 128)] == [128, 128, 256]  # the cache's own
    # 2048 slots of span: 256-slot buckets whatever the cache (as test_key_buckets_by_hand)
    assert shared.key_bucket(300, 2048) == 512
    with pytest.raises(ConfigError, match=r"min_cache_len=0; expected a whole number >= 1"):
        TorchEngine(arch, "float32", "cpu", seed=0, checkpoint=str(path), min_cache_len=0)


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


def test_errors_name_the_request():
    engine = TorchEngine(load_architecture("tiny-gpt2"), "float32", "cpu", seed=0)
    with pytest.raises(InputError, match="request 1: 500 prompt \\+ 13 output tokens exceed"):
        engine.run_batch([[1], [1] * 500], [1, 13])  # 513 > max_positions 512


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
def test_cuda_graphs_in_one_cache_for_every_batch_match_eager():
    # A static cell's engine (min_cache_len: one 640-slot cache for every batch of 3) replays the
    # graphs captured for the first batch on the later ones, with the tokens of an eager engine
    # whose cache is sized per batch: 7 + 90 slots -> key buckets 64 and 128; 7 + 9 -> 64.
    arch = load_architecture("tiny-llama")
    graphed = TorchEngine(arch, "float32", "cuda", seed=0, min_cache_len=600)
    eager = TorchEngine(arch, "float32", "cuda", seed=0, cuda_graphs=False)
    first = graphed.run_batch(PROMPTS, [90, 40, 70]).token_ids
    assert first == eager.run_batch(PROMPTS, [90, 40, 70]).token_ids
    assert graphed._shape == (3, 640) and sorted(graphed._graphs) == [64, 128]
    graphs, cache = dict(graphed._graphs), graphed.model.layers[0].attn.k_cache
    for prompts, outputs in [([[9, 9, 9], [1], [2, 3]], [9, 5, 2]), (PROMPTS, [5, 9, 3])]:
        want = eager.run_batch(prompts, outputs).token_ids
        assert graphed.run_batch(prompts, outputs).token_ids == want
    assert graphed.model.layers[0].attn.k_cache is cache  # allocated once
    assert graphed._graphs == graphs  # nothing captured again
    assert graphed.build_s["graph_capture"] > 0


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

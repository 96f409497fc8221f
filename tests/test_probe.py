"""The OOM probe: its search order against a known boundary, and the CPU memory-cap path on
tiny-llama with a budget worked out by hand."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from tokencarbon.backends.static import TorchEngine
from tokencarbon.errors import ConfigError
from tokencarbon.models import load_architecture
from tokencarbon.probe import OutOfMemory, make_try_batch, probe_max_batch, run_probe


def fails_above(boundary: int):
    def try_batch(batch: int) -> None:
        if batch > boundary:
            raise OutOfMemory(f"batch {batch} > {boundary}")

    return try_batch


def test_doubling_then_bisection():
    result = probe_max_batch(fails_above(37), limit=256)
    # doubling 1..32 fit, 64 fails; bisect (32, 64): 48 F, (32, 48): 40 F, (32, 40): 36 ok,
    # (36, 40): 38 F, (36, 38): 37 ok -> 37 fits, 38 does not
    assert result.tried == [
        (1, True), (2, True), (4, True), (8, True), (16, True), (32, True),
        (64, False), (48, False), (40, False), (36, True), (38, False), (37, True),
    ]  # fmt: skip
    assert (result.max_ok, result.min_failed) == (37, 38)


def test_limit_caps_the_doubling():
    result = probe_max_batch(fails_above(37), limit=50)
    # 64 would pass the limit, so 50 is tried; bisect (32, 50): 41 F, (32, 41): 36 ok,
    # (36, 41): 38 F, (36, 38): 37 ok
    assert [b for b, _ in result.tried] == [1, 2, 4, 8, 16, 32, 50, 41, 36, 38, 37]
    assert (result.max_ok, result.min_failed) == (37, 38)


def test_limit_that_fits_ends_the_search():
    result = probe_max_batch(fails_above(37), limit=20)
    assert result.tried == [(1, True), (2, True), (4, True), (8, True), (16, True), (20, True)]
    assert (result.max_ok, result.min_failed) == (20, None)


def test_start_above_one():
    result = probe_max_batch(fails_above(37), start=3, limit=256)
    # 3, 6, 12, 24 fit, 48 fails; bisect (24, 48): 36 ok, (36, 48): 42 F, (36, 42): 39 F,
    # (36, 39): 37 ok, (37, 39): 38 F
    assert [b for b, _ in result.tried] == [3, 6, 12, 24, 48, 36, 42, 39, 37, 38]
    assert (result.max_ok, result.min_failed) == (37, 38)


def test_batch_one_failing_is_a_clear_error():
    with pytest.raises(ConfigError, match="even batch 1 does not fit \\(batch 1 > 0\\)"):
        probe_max_batch(fails_above(0), limit=8)
    # a failing start above 1 bisects down to 1 first: 4 F, 2 F, 1 F
    with pytest.raises(ConfigError, match="even batch 1"):
        probe_max_batch(fails_above(0), start=4, limit=8)


def test_other_errors_are_not_swallowed():
    def broken(batch: int) -> None:
        raise RuntimeError("not a memory problem")

    with pytest.raises(RuntimeError, match="not a memory problem"):
        probe_max_batch(broken, limit=8)


def test_cpu_memory_cap_admits_exactly_five():
    # tiny-llama, float32, prompt 16 + output 8 tokens. By hand, from the architecture numbers
    # (hidden 256, 4 layers, 4 heads of 64, 2 kv heads -> kv width 128, intermediate 688,
    # vocab 4096):
    #   weights: embed + lm_head 2 x 4096 x 256 = 2,097,152; per layer q 65,536 + k 32,768
    #     + v 32,768 + o 65,536 + gate/up/down 3 x 256 x 688 = 528,384 + 2 norms 512 = 725,504,
    #     x 4 = 2,902,016; final norm 256 -> 4,999,424 params x 4 B = 19,997,696 B
    #   KV cache per request: 2 (K, V) x 4 layers x 128 x 24 positions x 4 B = 98,304 B
    #   prefill activations per request (models.activation_bytes over the 16 prompt tokens):
    #     residual 2 x 16 x 256 = 8,192; attention 16 x (256 + 256) + 2 x 4 x 16 x 16 + 16 x 256
    #     = 14,336 < MLP 3 x 16 x 688 = 33,024; logits 4,096 -> 45,312 elements x 4 B = 181,248 B
    #   need(b) = 19,997,696 + 279,552 b: b = 5 -> 21,395,456; b = 6 -> 21,675,008
    # A 0.0215 GB (21,500,000 B) budget admits exactly 5.
    engine = TorchEngine(load_architecture("tiny-llama"), "float32", "cpu", seed=0)
    ran = []
    run_batch = engine.run_batch

    def recording_run_batch(prompts, output_lengths, *, reserve_output_len=0):
        ran.append((len(prompts), len(prompts[0]), output_lengths[0], reserve_output_len))
        out = run_batch(prompts, output_lengths, reserve_output_len=reserve_output_len)
        # the cache really holds prompt + full output: 16 + 8 = 24 -> one 64-slot block
        assert engine.model.layers[0].attn.k_cache.shape[2] == 64
        return out

    engine.run_batch = recording_run_batch
    try_batch = make_try_batch(engine, prompt_len=16, output_len=8, memory_limit_gb=0.0215)
    result = probe_max_batch(try_batch, limit=64)
    # 1, 2, 4 fit; 8 fails; bisect (4, 8): 6 fails, 5 fits
    assert result.tried == [(1, True), (2, True), (4, True), (8, False), (6, False), (5, True)]
    assert (result.max_ok, result.min_failed) == (5, 6)
    # batches over budget never run; those within it really ran: the full 16-token prompt and
    # min(8, PROBE_DECODE_STEPS = 4) output tokens, with the cache reserved for all 8
    assert ran == [(1, 16, 4, 8), (2, 16, 4, 8), (4, 16, 4, 8), (5, 16, 4, 8)]
    assert engine.model.layers[0].attn.k_cache is None  # each try frees its KV cache


def test_run_probe_writes_the_result(tmp_path):
    # The longest prompt (16) and the longest output (8) come from different requests; the probe
    # runs them together, so the hand computation of the test above applies: exactly 5 fit.
    workload = pd.DataFrame(
        {"prompt_token_ids": [[7] * 3, [8] * 16, [9] * 9], "output_tokens": [8, 2, 5]}
    )
    out = tmp_path / "probe" / "tiny-llama.json"
    record = run_probe(
        model={"name": "tl", "architecture": "tiny-llama", "dtype": "float32", "checkpoint": None,
               "seed": 0},
        platform={"name": "cpu", "kind": "cpu", "device_name_pattern": ".*"},
        limits={"memory_limit_gb": 0.0215, "max_batch": 64},
        workload=workload,
        out_path=out,
    )  # fmt: skip
    assert json.loads(out.read_text()) == record
    assert record["platform"] == "cpu" and record["model"] == "tl"
    assert (record["max_ok"], record["min_failed"]) == (5, 6)
    assert (record["prompt_len"], record["output_len"]) == (16, 8)
    assert record["tried"] == [[1, True], [2, True], [4, True], [8, False], [6, False], [5, True]]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_probe_finds_a_real_oom_boundary():
    engine = TorchEngine(load_architecture("tiny-llama"), "float32", "cuda", seed=0)
    try:
        try_batch = make_try_batch(engine, prompt_len=448, output_len=64, memory_limit_gb=1.0)
        result = probe_max_batch(try_batch, limit=4096)
        assert result.min_failed == result.max_ok + 1  # a real boundary inside the limit
        try_batch(result.max_ok)  # the boundary is reproducible: max_ok runs again ...
        with pytest.raises(OutOfMemory):  # ... and the batch after it still does not fit
            try_batch(result.min_failed)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)


def test_serving_pool_probe_admits_exactly_four(tmp_path):
    # tiny-llama float32, longest prompt 16 + longest output 8, as above. A serving engine of n
    # slots holds, beside the 19,997,696 B of weights, per slot:
    #   KV pool: 24 positions rounded up to a KV block of 64 -> 2 x 4 layers x 128 x 64 x 4 B
    #     = 262,144 B
    #   generated-token buffer: 64 positions x 8 B (int64) = 512 B
    #   prefill: 2048 // 16 = 128 >= n prompts packed in one step, each 181,248 B of activations
    #     (models.activation_bytes over 16 tokens, as in the static test above)
    #   = 443,904 B per slot: need(n) = 19,997,696 + 443,904 n
    #   n = 4: 21,773,312 B; n = 5: 22,217,216 B. A 0.022 GB (22,000,000 B) budget admits 4.
    # The static probe under the same budget: need(b) = 19,997,696 + 279,552 b: b = 7 ->
    # 21,954,560 fits, b = 8 -> 22,234,112 does not.
    workload = pd.DataFrame(
        {"prompt_token_ids": [[7] * 3, [8] * 16, [9] * 9], "output_tokens": [8, 2, 5]}
    )
    record = run_probe(
        model={"name": "tl", "architecture": "tiny-llama", "dtype": "float32", "checkpoint": None,
               "seed": 0},
        platform={"name": "cpu", "kind": "cpu", "device_name_pattern": ".*"},
        limits={"memory_limit_gb": 0.022, "max_batch": 64, "max_num_seqs": 64},
        workload=workload,
        out_path=tmp_path / "probe.json",
    )  # fmt: skip
    assert (record["max_ok"], record["min_failed"]) == (7, 8)
    assert (record["max_num_seqs_ok"], record["max_num_seqs_min_failed"]) == (4, 5)
    # 1, 2, 4 fit; 8 does not; bisect (4, 8): 6 does not, 5 does not
    assert record["max_num_seqs_tried"] == [[1, True], [2, True], [4, True], [8, False],
                                            [6, False], [5, False]]  # fmt: skip
    assert record["max_num_seqs_limit"] == 64


def test_serving_tries_really_serve_every_slot():
    from tokencarbon.backends.serving import TorchServingEngine
    from tokencarbon.probe import make_try_seqs

    arch = load_architecture("tiny-llama")
    served = []

    def make_engine(n):
        engine = TorchServingEngine(arch, "float32", "cpu", seed=0, max_num_seqs=n,
                                    max_model_len=16 + 8)  # fmt: skip
        serve = engine.serve

        def recording_serve(requests):
            result = serve(requests)
            served.append((n, len(requests), {len(r.prompt) for r in requests},
                           max(len(s.request_ids) for s in result.steps)))  # fmt: skip
            return result

        engine.serve = recording_serve
        return engine

    try_seqs = make_try_seqs(make_engine, arch=arch, dtype="float32", device="cpu",
                             prompt_len=16, output_len=8, memory_limit_gb=None)  # fmt: skip
    try_seqs(3)
    # 3 slots, 3 requests of the 16-token prompt, all 3 in flight at once in some step
    assert served == [(3, 3, {16}, 3)]

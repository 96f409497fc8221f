"""The OOM probe: its calibrated search against known memory curves, the memory model by hand, a real
capped CPU probe whose predicted limit runs and whose limit + 1 fails, the probe cache, and the old
doubling search (kept to time against)."""

from __future__ import annotations

import dataclasses
import json

import pandas as pd
import pytest
import torch

from tokencarbon.backends.static import TorchEngine
from tokencarbon.errors import ConfigError
from tokencarbon.models import activation_bytes, architecture_to_dict, load_architecture
from tokencarbon.probe import (
    Calibration,
    CpuMeter,
    CudaMeter,
    LocalTrials,
    MemoryModel,
    OutOfMemory,
    ProbeCache,
    ProbeSetup,
    Try,
    calibrated_search,
    engine_fixed_bytes,
    key_digest,
    make_try_batch,
    probe_max_batch,
    run_probe,
    serving_memory_model,
    serving_pool_bytes,
    static_memory_model,
    static_request_bytes,
)
from tokencarbon.quantization import NONE

# ---------------------------------------------------------------- the calibrated search

# A memory curve worked by hand: 100 bytes fixed, 10 per request, 400 of budget: the model's limit
# is (400 - 100) / 10 = 30.
LINEAR = MemoryModel(100, lambda b: 10 * b)


def curve(peak, fits):
    """measure(b) for a curve: peak(b) measured bytes, fits(b) the real outcome."""

    def measure(b: int) -> Try:
        ok = fits(b)
        return Try(b, ok, 0.0, peak(b) if ok else None, error=None if ok else f"{b} too big")

    return measure


def sizes(search):
    return [(t.size, t.fits, t.phase) for t in search.tries]


def test_a_right_prediction_is_confirmed_in_four_tries():
    # peaks follow the model exactly: calibration at 1 and 30 // 2 = 15 fits fixed 100, 10 per
    # request; predicted 30 runs (400 bytes), 31 (410) fails
    search = calibrated_search(
        curve(lambda b: 100 + 10 * b, lambda b: 100 + 10 * b <= 400), LINEAR,
        budget_bytes=400, limit=1000,
    )  # fmt: skip
    assert sizes(search) == [
        (1, True, "calibration"), (15, True, "calibration"),
        (30, True, "confirmation"), (31, False, "confirmation"),
    ]  # fmt: skip
    assert (search.model_predicted, search.predicted, search.max_ok, search.min_failed) == (
        30, 30, 30, 31,
    )  # fmt: skip
    assert search.confirmed
    assert (search.calibration.fixed_bytes, search.calibration.scale) == (100, 1)


def test_the_calibration_replaces_the_models_bytes_by_measured_ones():
    # the real engine needs 60 fixed and 12 per request (the model says 100 and 10): peaks 72 at
    # 1 and 240 at 15 give scale 168 / 140 = 1.2 and fixed 72 - 12 = 60; (400 - 60) / 12 = 28.3
    search = calibrated_search(
        curve(lambda b: 60 + 12 * b, lambda b: 60 + 12 * b <= 400), LINEAR,
        budget_bytes=400, limit=1000,
    )  # fmt: skip
    assert search.model_predicted == 30 and search.predicted == 28
    assert search.calibration.scale == pytest.approx(1.2)
    assert search.calibration.fixed_bytes == pytest.approx(60)
    assert [t.size for t in search.tries] == [1, 15, 28, 29] and search.confirmed


def test_a_prediction_one_too_high_steps_down_to_the_truth():
    # 5 bytes the peaks do not show (allocator slack) make 30 fail: 400 + 5 > 400; 29 runs
    search = calibrated_search(
        curve(lambda b: 100 + 10 * b, lambda b: 100 + 10 * b + 5 <= 400), LINEAR,
        budget_bytes=400, limit=1000,
    )  # fmt: skip
    assert sizes(search)[2:] == [(30, False, "confirmation"), (29, True, "search")]
    assert (search.predicted, search.max_ok, search.min_failed) == (30, 29, 30)
    assert not search.confirmed


def test_a_prediction_three_too_high_gallops_down_then_bisects():
    # 25 unseen bytes: 100 + 10 b + 25 <= 400 up to b = 27. 30 fails, 29 (1 below) fails, 27 (2
    # below 29; above the middle (15 + 29) // 2 = 22) runs, then bisection of (27, 29): 28 fails
    search = calibrated_search(
        curve(lambda b: 100 + 10 * b, lambda b: 100 + 10 * b + 25 <= 400), LINEAR,
        budget_bytes=400, limit=1000,
    )  # fmt: skip
    assert [(t.size, t.fits) for t in search.tries] == [
        (1, True), (15, True), (30, False), (29, False), (27, True), (28, False),
    ]  # fmt: skip
    assert (search.max_ok, search.min_failed) == (27, 28)


def test_a_prediction_too_low_climbs_then_bisects():
    # peaks overstate the need by 40 (fixed 140 fitted): predicted (400 - 140) / 10 = 26, but
    # 100 + 10 b <= 400 runs up to 30. 26 and 27 run; the refitted calibration still says 26, so
    # 1, 2, 4 above the last fit: 28, 30, 34 (fails); bisection of (30, 34): 32, then 31 fail
    search = calibrated_search(
        curve(lambda b: 140 + 10 * b, lambda b: 100 + 10 * b <= 400), LINEAR,
        budget_bytes=400, limit=1000,
    )  # fmt: skip
    assert [(t.size, t.fits) for t in search.tries] == [
        (1, True), (15, True), (26, True), (27, True), (28, True), (30, True), (34, False),
        (32, False), (31, False),
    ]  # fmt: skip
    assert (search.predicted, search.max_ok, search.min_failed) == (26, 30, 31)


def test_a_refit_from_a_fitting_try_finds_the_limit():
    # no calibration tries (the continuous probe): a prior of 150 fixed predicts (400 - 150) / 10
    # = 25; the engine needs 130 + 10 n. 25 (380) and 26 (390) run; refitted through them
    # (fixed 130) the limit is 27 (400), which runs; refitted again it is still 27: 28 fails
    search = calibrated_search(
        curve(lambda n: 130 + 10 * n, lambda n: 130 + 10 * n <= 400), LINEAR,
        budget_bytes=400, limit=100, calibrate=False, prior=Calibration(150, 1, (), "prior"),
    )  # fmt: skip
    assert sizes(search) == [
        (25, True, "confirmation"), (26, True, "confirmation"), (27, True, "search"),
        (28, False, "search"),
    ]  # fmt: skip
    assert (search.model_predicted, search.predicted, search.max_ok) == (30, 25, 27)


def test_a_limit_that_fits_ends_the_search():
    # the cap 20 is below the model's limit: calibration at 1 and 20 // 2 = 10, then 20 runs
    search = calibrated_search(
        curve(lambda b: 100 + 10 * b, lambda b: True), LINEAR, budget_bytes=10**6, limit=20
    )
    assert [(t.size, t.fits) for t in search.tries] == [(1, True), (10, True), (20, True)]
    assert (search.max_ok, search.min_failed, search.confirmed) == (20, None, True)


def test_size_one_failing_is_a_clear_error():
    with pytest.raises(ConfigError, match="even batch 1 does not fit \\(1 too big\\)"):
        calibrated_search(curve(lambda b: 0, lambda b: False), LINEAR, budget_bytes=50, limit=8)


def test_other_errors_are_not_swallowed():
    def broken(b: int) -> Try:
        raise RuntimeError("not a memory problem")

    with pytest.raises(RuntimeError, match="not a memory problem"):
        calibrated_search(broken, LINEAR, budget_bytes=400, limit=8)


# ---------------------------------------------------------------- the memory model by hand

# tiny-llama (resources/models/tiny-llama.json: hidden 256, 4 layers, 4 heads of 64, 2 KV heads
# -> KV width 128, intermediate 688, vocab 4096) with 4096 positions, so that one request's KV
# cache (16 MiB at 4096 positions) dwarfs everything the model leaves out.
TL4K = dataclasses.replace(
    load_architecture("tiny-llama"), name="tiny-llama-4k", max_positions=4096
)
# weights: embed + lm_head 2 x 4096 x 256 = 2,097,152; per layer q 65,536 + k 32,768 + v 32,768
# + o 65,536 + gate/up/down 3 x 256 x 688 = 528,384 + 2 norms 512 = 725,504, x 4 = 2,902,016;
# final norm 256 -> 4,999,424 parameters x 4 B = 19,997,696 B. RoPE cos and sin:
# 2 x 4096 positions x 64 x 4 B = 2,097,152 -> fixed 22,094,848 B.
TL4K_FIXED = 22_094_848
# One request of an 8-token prompt with its cache reserved for 4088 more (4096 positions, already a
# multiple of 64), float32:
#   KV cache   2 (K, V) x 4 layers x 128 x 4096 x 4 B      = 16,777,216
#   _out       4096 x 8 B (int64)                           =     32,768
#   masks      8 x 8 x (1 bool + 4 additive + 2 x 4 GQA copy)  =    832
#   inputs     tokens, positions 2 x 8 x 8 + RoPE 2 x 8 x 64 x 4  = 4,224
#   prefill activations (models.activation_bytes, 8 tokens): residual 2 x 8 x 256 = 4,096;
#     attention 8 x 512 + 2 x 4 x 8 x 8 + 8 x 256 = 6,656 < MLP 3 x 8 x 688 = 16,512;
#     logits 4,096 -> 24,704 x 4 B                        =     98,816
#   per request                                           = 16,913,856
TL4K_REQUEST = 16_913_856
# need(b) = 22,094,848 + 16,913,856 b: b = 5 -> 106,664,128; b = 6 -> 123,577,984. A 0.113 GB
# (113,000,000 B) cap fits 5, leaving 6.3 MB for what the model leaves out.
# The serving engine's slot: KV 16,777,216 + token buffer 32,768 + one packed prefill of 8 tokens
# (2048 // 8 = 256 >= n prompts per step) 98,816 = 16,908,800: 5 -> 106,638,848, 6 -> 123,547,648.
TL4K_SLOT = 16_908_800
CAP_GB = 0.113


def test_the_static_memory_model_by_hand():
    assert engine_fixed_bytes(TL4K, "float32") == TL4K_FIXED
    assert static_request_bytes(TL4K, "float32", 8, 4088) == TL4K_REQUEST
    model = static_memory_model(TL4K, "float32", 8, 4088)
    assert model.need(5) == 106_664_128 <= CAP_GB * 1e9 < model.need(6) == 123_577_984


def test_the_serving_memory_model_by_hand():
    assert serving_pool_bytes(TL4K, "float32", 1, 8, 4088) == TL4K_SLOT
    model = serving_memory_model(TL4K, "float32", 8, 4088)
    assert model.need(5) == 106_638_848 <= CAP_GB * 1e9 < model.need(6) == 123_547_648
    # tiny-llama at 16 + 8 tokens (a 64-position block): KV 2 x 4 x 128 x 64 x 4 = 262,144,
    # buffer 64 x 8 = 512, prefill over 16 tokens: residual 8,192 + MLP 3 x 16 x 688 = 33,024 >
    # attention 16 x 512 + 2 x 4 x 256 + 16 x 256 = 14,336, + logits 4,096 -> 45,312 x 4 = 181,248
    # -> 443,904 per slot; 2 packed prompts: 2 x 181,248
    tl = load_architecture("tiny-llama")
    assert serving_pool_bytes(tl, "float32", 1, 16, 8) == 443_904
    assert serving_pool_bytes(tl, "float32", 2, 16, 8) == 2 * 443_904


# ---------------------------------------------------------------- a real capped probe on the CPU

WORKLOAD = pd.DataFrame({"prompt_token_ids": [[5] * 8, [6] * 3], "output_tokens": [10, 4088]})
PLATFORM = {"name": "cpu", "kind": "cpu", "device_name_pattern": ".*"}
LIMITS = {"memory_limit_gb": CAP_GB, "max_batch": 64, "max_num_seqs": 64}


def tl4k_model(name: str) -> dict:
    return {"name": name, "architecture": architecture_to_dict(TL4K), "dtype": "float32",
            "checkpoint": None, "seed": 0}  # fmt: skip


@pytest.fixture(scope="module")
def capped(tmp_path_factory):
    """One real probe of tiny-llama-4k under a 0.113 GB cap (a worker under RLIMIT_DATA), static
    and continuous, its result cached: (record, out path, cache folder)."""
    folder = tmp_path_factory.mktemp("probe")
    out = folder / "cells/cpu/tl4k/probe.json"
    record = run_probe(
        model=tl4k_model("tl4k"), platform=PLATFORM, limits=LIMITS, workload=WORKLOAD,
        out_path=out, cache_dir=folder / "cache",
    )  # fmt: skip
    return record, out, folder / "cache"


def test_the_predicted_limit_runs_and_one_more_fails_under_a_real_cap(capped):
    record, out, _ = capped
    assert json.loads(out.read_text()) == record
    # The longest prompt (8) and the longest output (4088) come from different requests; the
    # probe runs them together.
    assert (record["prompt_len"], record["output_len"]) == (8, 4088)
    # the cap is a real one: the worker's data segment may grow 113,000,000 B past its baseline
    cap = record["cap"]
    assert "RLIMIT_DATA" in cap["mechanism"]
    assert cap["rlimit_data_bytes"] - cap["baseline_data_bytes"] == 113_000_000
    static = record["static"]
    assert static["memory_model"] == {
        "fixed_bytes": TL4K_FIXED, "bytes_per_request_at_1": TL4K_REQUEST, "predicted": 5,
    }  # fmt: skip
    # calibration: batches 1 and 2 (half of 5), measured bytes per request
    # within 5 % of the model's (the KV cache is 99 % of them)
    assert static["calibration"]["sizes"] == [1, 2]
    assert static["calibration"]["bytes_per_request_at_1"] == pytest.approx(TL4K_REQUEST, rel=0.05)
    # the prediction, calibrated, is the model's 5; batch 5 really runs, batch 6 really fails:
    # torch's CPU allocator refused an allocation past the cap
    assert (static["predicted"], static["confirmed"]) == (5, True)
    assert record["tried"] == [[1, True], [2, True], [5, True], [6, False]]
    five, six = static["tries"][2:]
    assert five["fits"] and five["error"] is None and five["peak_bytes"] <= 113_000_000
    assert "can't allocate memory" in six["error"]
    assert (record["max_ok"], record["min_failed"]) == (5, 6)
    # the continuous probe, in a fresh worker (the failed try left the first one unusable): the
    # paged engine of the continuous cells, its pool the budget less the calibrated fixed bytes and
    # the activations of one step of prompts packed to 2048 tokens (256 prompts of 8), in blocks
    # of 64 tokens x 4,096 B (2 x 4 layers x 2 kv heads x 64 x 4 B) = 262,144 B
    assert cap["workers_started"] == 2
    cont = record["continuous"]
    assert cont["method"] == "paged pool" and cont["fits"]
    reserve = (2048 // 8) * activation_bytes(TL4K, 1, 8, "float32")
    pool = (113_000_000 - static["calibration"]["fixed_bytes"] - reserve) // 262_144
    fit = cont["fit"]
    assert fit["pool_blocks"] == cont["engine"]["num_blocks"] == pool
    # the workload's requests hold 8 + 10 - 1 = 17 positions (1 block) and 3 + 4088 - 1 = 4090
    # (64 blocks): both fit together, so max_num_seqs is 2 (its requests), 65 x 64 tokens in flight
    assert fit["workload"] == {"max_num_seqs": 2, "tokens_in_flight": 65 * 64, "requests": 2}
    # requests of the longest prompt and output (8 + 4088 - 1 = 4095 positions, 64 blocks)
    assert fit["longest"]["max_num_seqs"] == pool // 64
    assert (record["max_num_seqs_ok"], record["max_num_seqs_min_failed"]) == (2, 3)
    # the two were really served at once under the cap, none preempted
    assert cont["served"] == 2 and cont["preemptions"] == 0 and cont["peak_bytes"] <= 113_000_000
    assert record["max_num_seqs_limit"] == 64 and record["reused_from"] is None


def test_a_probe_of_the_same_key_is_reused_and_says_so(capped, tmp_path):
    record, out, cache = capped
    # another model name and another platform name of the same row: the same key
    again = run_probe(
        model=tl4k_model("another-name"), platform=PLATFORM | {"name": "cpu-copy", "hardware": "cpu"},
        limits=LIMITS, workload=WORKLOAD, out_path=tmp_path / "probe.json", cache_dir=cache,
    )  # fmt: skip
    assert (again["model"], again["platform"]) == ("another-name", "cpu-copy")
    assert again["reused_from"]["model"] == "tl4k" and again["reused_from"]["path"] == str(out)
    same = {"reused_from", "model", "platform", "probe_s"}
    assert {k: v for k, v in again.items() if k not in same} == {
        k: v for k, v in record.items() if k not in same
    }
    # a different key is a new probe: a smaller cap is not served the larger cap's result
    entry = next(cache.glob("*.json"))
    stored = json.loads(entry.read_text())
    other_key = stored["key"] | {"memory_limit_gb": 0.09}
    assert key_digest(other_key) != entry.stem and ProbeCache(cache, other_key).read() is None
    # nor is a key whose file was overwritten with another key's entry
    tampered = ProbeCache(cache, stored["key"])
    tampered.path.write_text(json.dumps(stored | {"key": other_key}))
    assert tampered.read() is None


def test_the_serving_try_serves_every_slot_at_once(monkeypatch):
    from tokencarbon.backends.serving import TorchServingEngine

    served = []
    serve = TorchServingEngine.serve

    def recording_serve(self, requests):
        result = serve(self, requests)
        served.append((self.max_num_seqs, len(requests), {len(r.prompt) for r in requests},
                       max(len(s.request_ids) for s in result.steps)))  # fmt: skip
        return result

    monkeypatch.setattr(TorchServingEngine, "serve", recording_serve)
    setup = ProbeSetup(load_architecture("tiny-llama"), "float32", "cpu", 0, None, NONE, 16, 8)
    t = LocalTrials(setup, CpuMeter(0)).serving(3)
    # 3 slots, 3 requests of the 16-token prompt, all 3 in flight in some step
    assert t.fits and t.build_s is not None and served == [(3, 3, {16}, 3)]


def test_make_try_batch_drives_cuda_engines_only():
    engine = TorchEngine(load_architecture("tiny-llama"), "float32", "cpu", seed=0)
    with pytest.raises(ConfigError, match="CUDA engine"):
        make_try_batch(engine, prompt_len=16, output_len=8, memory_limit_gb=None)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_calibrated_probe_finds_a_real_oom_boundary():
    # tiny-llama float32 at 448 + 64 tokens under a 1 GB cap: the calibrated search's answer is a
    # real boundary, and it reproduces: max_ok runs again, max_ok + 1 fails again
    device = torch.device("cuda")
    setup = ProbeSetup(load_architecture("tiny-llama"), "float32", "cuda", 0, None, NONE, 448, 64)
    torch.cuda.set_per_process_memory_fraction(
        1e9 / torch.cuda.get_device_properties(device).total_memory
    )
    try:
        trials = LocalTrials(setup, CudaMeter(device))
        trials.open_static()
        model = static_memory_model(setup.arch, "float32", 448, 64)
        search = calibrated_search(trials.static, model, budget_bytes=1e9, limit=4096)
        assert search.min_failed == search.max_ok + 1
        assert trials.static(search.max_ok).fits and not trials.static(search.min_failed).fits
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)


# ---------------------------------------------------------------- the old search (method bisect)


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


def test_the_old_search_refuses_batch_one_clearly():
    with pytest.raises(ConfigError, match="even batch 1 does not fit \\(batch 1 > 0\\)"):
        probe_max_batch(fails_above(0), limit=8)


def test_paged_fit_by_hand():
    from tokencarbon.probe import paged_fit

    # 100 blocks of 16; requests of 40, 30, 30 and 20 blocks: the 3 largest take 100 blocks, all 4
    # would take 120; their mean is 30 blocks (3 of them); the longest prompt 8 + output 640 hold
    # 647 positions = 41 blocks (2 of them)
    fit = paged_fit(100, 16, 8, 640, [40, 30, 30, 20], limit=64)
    assert fit["workload"] == {"max_num_seqs": 3, "tokens_in_flight": 100 * 16, "requests": 4}
    assert fit["typical"]["max_num_seqs"] == 3 and fit["longest"]["max_num_seqs"] == 2
    assert fit["max_num_seqs"] == 3 and fit["tokens_in_flight"] == 1600
    assert paged_fit(100, 16, 8, 640, [40, 30, 30, 20], limit=2)["max_num_seqs"] == 2


def test_paged_fit_is_where_the_real_engine_starts_to_preempt():
    # The memory model of the paged pool against the engine itself: 7 blocks of 16 tokens; a
    # request of 8 + 24 tokens holds 31 positions (2 blocks) at its end, so 3 fit at once (6
    # blocks) and a 4th cannot: serving 3 at once preempts nothing, serving 4 preempts.
    from tokencarbon.backends import Request
    from tokencarbon.backends.serving import TorchServingEngine
    from tokencarbon.probe import paged_fit

    assert paged_fit(7, 16, 8, 24, [2, 2, 2, 2], limit=4)["longest"]["max_num_seqs"] == 3
    engine = TorchServingEngine(load_architecture("tiny-llama"), "float32", "cpu", seed=0,
                                max_num_seqs=4, num_blocks=7, block_size=16)  # fmt: skip

    def preemptions(n: int) -> int:
        requests = [Request(f"r{i}", tuple(range(1 + i, 9 + i)), 24) for i in range(n)]
        result = engine.serve(requests)
        assert [r.output_tokens for r in result.requests] == [24] * n
        return sum(r.preemptions for r in result.requests)

    assert preemptions(3) == 0
    assert preemptions(4) >= 1

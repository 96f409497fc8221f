"""backends/serving.py: the continuous-batching engine. Its tokens against the same requests served
one at a time and against transformers' generate; its records (timing invariants, steps tiling the
window, exact output lengths, max_num_seqs, the prefill policy and its stall bound, arrivals).
CPU, float32, tiny architectures; GPU tests skip without CUDA."""

from __future__ import annotations

import pytest
import torch
from hf_checkpoints import KINDS, generate, save_checkpoint

from tokencarbon.backends import Request, ServingResult
from tokencarbon.backends.serving import TorchServingEngine
from tokencarbon.errors import ConfigError, InputError
from tokencarbon.models import load_architecture

gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# 8 requests of distinct lengths: prompts 1..59 tokens, outputs 1..20 (one of a single token,
# which finishes at its prefill step)
PROMPTS = [
    [5, 17, 300, 42, 9, 1000, 7], [3, 2, 4000, 11], [77], list(range(1, 60)), [8, 9],
    [1, 2, 3, 4, 5, 6], list(range(100, 130)), [4095, 0, 4095],
]  # fmt: skip
OUTPUTS = [6, 3, 5, 20, 1, 9, 12, 7]


def requests(prompts=PROMPTS, outputs=OUTPUTS, arrivals=None) -> list[Request]:
    arrivals = arrivals or [0.0] * len(prompts)
    return [
        Request(f"r{i}", tuple(p), n, a) for i, (p, n, a) in enumerate(zip(prompts, outputs, arrivals))
    ]


def engine(name="tiny-llama", **kwargs) -> TorchServingEngine:
    kwargs.setdefault("max_num_seqs", 3)
    return TorchServingEngine(load_architecture(name), "float32", "cpu", seed=3, **kwargs)


def occupancy(result: ServingResult) -> list[int]:
    """Requests holding a slot after each step: admitted by a prefill step so far, not finished."""
    finish = {r.request_id: r.finish_ns for r in result.requests}
    admitted, counts = 0, []
    for step in result.steps:
        admitted += len(step.request_ids) if step.kind == "prefill" else 0
        counts.append(admitted - sum(f <= step.end_ns for f in finish.values()))
    return counts


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_continuous_tokens_equal_each_request_served_alone(name):
    together = engine(name).serve(requests())
    alone = engine(name, max_num_seqs=1)
    for r in requests():
        assert together.token_ids[r.request_id] == alone.serve([r]).token_ids[r.request_id], r
    # the requests really shared steps: 3 at once at some point
    assert max(occupancy(together)) == 3


@pytest.fixture(scope="module", params=KINDS)
def checkpoint(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param)
    arch, hf = save_checkpoint(request.param, path)
    return arch, hf, path


def test_tokens_match_transformers_generate(checkpoint):
    # 2 slots, 4 requests: the third and fourth join as the first ones finish, into reused slots
    arch, hf, path = checkpoint
    served = TorchServingEngine(
        arch, "float32", "cpu", seed=0, checkpoint=str(path), max_num_seqs=2
    ).serve(requests(PROMPTS[:4], [6, 3, 5, 20]))
    for prompt, n_out, rid in zip(PROMPTS[:4], [6, 3, 5, 20], ["r0", "r1", "r2", "r3"]):
        assert list(served.token_ids[rid]) == generate(hf, prompt, n_out)


def test_records_counts_and_timing_invariants():
    result = engine().serve(requests())
    assert [r.request_id for r in result.requests] == [f"r{i}" for i in range(8)]
    for r, prompt, n_out in zip(result.requests, PROMPTS, OUTPUTS):
        assert (r.input_tokens, r.output_tokens) == (len(prompt), n_out)
        assert len(result.token_ids[r.request_id]) == n_out
        assert result.start_ns == r.arrival_ns <= r.first_token_ns <= r.finish_ns <= result.end_ns
        assert r.arrival_wall_ns <= r.first_token_wall_ns <= r.finish_wall_ns
        # the first token exists at the end of the prefill step that carried the prompt, the last
        # one at the end of the step that made it
        (prefill,) = [s for s in result.steps if s.kind == "prefill" and r.request_id in s.request_ids]
        assert r.first_token_ns == prefill.end_ns
        assert prefill.request_tokens[prefill.request_ids.index(r.request_id)] == len(prompt)
        last = [s for s in result.steps if r.request_id in s.request_ids][-1]
        assert r.finish_ns == last.end_ns and r.finish_wall_ns == last.end_wall_ns
        # one prefill step, then one decode step per further token (8 requests: 1 + 5 decode
        # steps for r0's 6 tokens; r4's single token comes from its prefill alone)
        decode = [s for s in result.steps if s.kind == "decode" and r.request_id in s.request_ids]
        assert len(decode) == n_out - 1
    # every token counted once: prompts in prefill steps, one token per request per decode step
    # 7 + 4 + 1 + 59 + 2 + 6 + 30 + 3 = 112 prompt tokens; sum(OUTPUTS) - 8 = 55 decode tokens
    assert sum(sum(s.request_tokens) for s in result.steps if s.kind == "prefill") == 112
    assert sum(sum(s.request_tokens) for s in result.steps if s.kind == "decode") == 63 - 8


def test_steps_tile_the_window():
    result = engine().serve(requests())
    steps = result.steps
    assert [s.step_index for s in steps] == list(range(len(steps)))
    assert result.start_ns <= steps[0].start_ns
    assert result.start_wall_ns <= steps[0].start_wall_ns
    for a, b in zip(steps, steps[1:]):
        assert a.start_ns < a.end_ns <= b.start_ns
        assert a.start_wall_ns <= a.end_wall_ns <= b.start_wall_ns
    assert (steps[-1].end_ns, steps[-1].end_wall_ns) == (result.end_ns, result.end_wall_ns)
    assert {s.kind for s in steps} == {"prefill", "decode"}


def test_max_num_seqs_never_exceeded_and_slots_refill_at_the_next_step():
    # prefill_min_seqs 1: a freed slot is refilled at once (the step after the one that freed it)
    result = engine(max_num_seqs=2, prefill_min_seqs=1).serve(requests())
    counts = occupancy(result)
    assert max(counts) == 2
    assert all(len(s.request_ids) <= 2 for s in result.steps)
    finish = {r.request_id: r.finish_ns for r in result.requests}
    steps = result.steps
    for k, step in enumerate(steps[:-1]):
        freed = [rid for rid in step.request_ids if finish[rid] == step.end_ns]
        admitted_later = any(s.kind == "prefill" for s in steps[k + 1 :])
        if step.kind == "decode" and freed and admitted_later:
            assert steps[k + 1].kind == "prefill", f"step {k} freed {freed}; no refill next"


def test_prefill_packs_prompts_within_its_budget_and_runs_one_step_between_decode_steps():
    # budget 10 tokens: prompts of 4 tokens go two per prefill step (8 <= 10, 12 > 10); a prompt
    # of 30 goes alone, whole. 4 slots, 7 requests.
    prompts = [[1, 2, 3, 4]] * 4 + [list(range(1, 31))] + [[5, 6, 7, 8]] * 2
    outputs = [8, 9, 10, 11, 5, 6, 7]
    result = engine(max_num_seqs=4, max_prefill_tokens=10, prefill_min_seqs=1).serve(
        requests(prompts, outputs)
    )
    prefill = [s for s in result.steps if s.kind == "prefill"]
    assert [len(s.request_ids) for s in prefill][:2] == [2, 2]
    for s in prefill:
        assert sum(s.request_tokens) <= 10 or len(s.request_ids) == 1
    assert any(s.request_tokens == (30,) for s in prefill)
    # stall bound: while requests run, never two prefill steps in a row
    kinds = [s.kind for s in result.steps]
    assert all(not (a == b == "prefill") for a, b in zip(kinds, kinds[1:]))


def test_slot_bound_admissions_wait_for_prefill_min_seqs_free_slots():
    # 2 slots, 8 requests queued: while more wait than slots are free, a prefill step starts only
    # once 2 slots are free, so each carries 2 prompts; only when the queue fits (1 left) goes 1.
    result = engine(max_num_seqs=2, prefill_min_seqs=2).serve(requests())
    sizes = [len(s.request_ids) for s in result.steps if s.kind == "prefill"]
    assert sizes == [2, 2, 2, 2]  # 8 requests, 2 per step


def test_arrivals_are_waited_for():
    # r1 arrives 1 s after the start: whatever r0 is doing then, r1 is prefilled no earlier
    result = engine().serve(requests(PROMPTS[:2], [3, 4], arrivals=[0.0, 1.0]))
    r0, r1 = result.requests
    assert r1.arrival_ns == result.start_ns + 1_000_000_000
    assert r1.arrival_wall_ns == result.start_wall_ns + 1_000_000_000
    (prefill,) = [s for s in result.steps if "r1" in s.request_ids and s.kind == "prefill"]
    assert prefill.start_ns >= r1.arrival_ns
    assert r0.request_id not in prefill.request_ids  # r0 was admitted at once, alone
    assert r1.first_token_ns >= r1.arrival_ns


def test_bad_input_is_refused_before_any_work():
    with pytest.raises(ConfigError, match="max_num_seqs=0"):
        engine(max_num_seqs=0)
    with pytest.raises(ConfigError, match="prefill_min_seqs=5; must lie in \\[1, max_num_seqs 3\\]"):
        engine(prefill_min_seqs=5)
    with pytest.raises(ConfigError, match="max_model_len=513"):
        engine(max_model_len=513)  # tiny-llama: max_positions 512
    capped = engine(max_model_len=32)
    with pytest.raises(InputError, match="request 'r3': 79 prompt \\+ output tokens exceed the "
                                         "engine's max_model_len 32"):  # fmt: skip
        capped.serve(requests())
    with pytest.raises(InputError, match="request 'r1': token ids must lie in"):
        capped.serve(requests([[1], [5000]], [1, 1]))


@gpu
@needs_cuda
@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_compiled_graph_decode_matches_eager_on_cuda(name):
    # float32: the compiled layer (flex decoding) replayed as one CUDA graph gives the eager
    # reference's tokens; a second request set reuses the same graph
    arch = load_architecture(name)
    fast = TorchServingEngine(arch, "float32", "cuda", seed=0, max_num_seqs=3, max_model_len=128)
    eager = TorchServingEngine(
        arch, "float32", "cuda", seed=0, max_num_seqs=3, max_model_len=128,
        cuda_graphs=False, compile_layers=False,
    )  # fmt: skip
    assert fast.serve(requests()).token_ids == eager.serve(requests()).token_ids
    graph = fast._graph
    again = requests(PROMPTS[::-1], OUTPUTS)
    assert fast.serve(again).token_ids == eager.serve(again).token_ids
    assert fast._graph is graph


@gpu
@needs_cuda
def test_bfloat16_serving_runs_on_cuda():
    engine_ = TorchServingEngine(
        load_architecture("tiny-llama"), "bfloat16", "cuda", seed=0, max_num_seqs=4
    )
    result = engine_.serve(requests())
    assert [len(result.token_ids[f"r{i}"]) for i in range(8)] == OUTPUTS
    assert engine_.peak_memory_bytes() > 0

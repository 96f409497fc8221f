"""backends/serving.py: the continuous-batching engine, both KV layouts (paged, the default, and
slots). Its tokens against the same requests served one at a time and against transformers'
generate; its records (timing invariants, steps tiling the window, exact output lengths,
max_num_seqs, admission, arrivals); the slot engine's prefill policy. CPU, float32, tiny
architectures; GPU tests skip without CUDA. The paged engine's own behaviour (chunks, mixed steps,
preemption, blocks): tests/test_paged.py."""

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
LAYOUTS = ["paged", "slots"]

# 8 requests of distinct lengths: prompts 1..59 tokens, outputs 1..20 (one of a single token,
# which finishes at the step that computes its prompt)
PROMPTS = [
    [5, 17, 300, 42, 9, 1000, 7], [3, 2, 4000, 11], [77], list(range(1, 60)), [8, 9],
    [1, 2, 3, 4, 5, 6], list(range(100, 130)), [4095, 0, 4095],
]  # fmt: skip
OUTPUTS = [6, 3, 5, 20, 1, 9, 12, 7]


def requests(prompts=PROMPTS, outputs=OUTPUTS, arrivals=None) -> list[Request]:
    arrivals = arrivals or [0.0] * len(prompts)
    return [
        Request(f"r{i}", tuple(p), n, a)
        for i, (p, n, a) in enumerate(zip(prompts, outputs, arrivals))
    ]


def engine(name="tiny-llama", **kwargs) -> TorchServingEngine:
    kwargs.setdefault("max_num_seqs", 3)
    return TorchServingEngine(load_architecture(name), "float32", "cpu", seed=3, **kwargs)


def in_flight(result: ServingResult) -> list[int]:
    """Requests in flight after each step: seen in a step so far and not finished by its end."""
    finish = {r.request_id: r.finish_ns for r in result.requests}
    seen: set[str] = set()
    counts = []
    for step in result.steps:
        seen |= set(step.request_ids)
        counts.append(sum(finish[rid] > step.end_ns for rid in seen))
    return counts


_ALONE: dict[str, dict] = {}


def served_alone(name: str) -> dict:
    """Each request of requests() served by itself (max_num_seqs 1), per model, computed once."""
    if name not in _ALONE:
        one = engine(name, max_num_seqs=1, kv_layout="slots")
        _ALONE[name] = {r.request_id: one.serve([r]).token_ids[r.request_id] for r in requests()}
    return _ALONE[name]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_continuous_tokens_equal_each_request_served_alone(name, layout):
    together = engine(name, kv_layout=layout).serve(requests())
    assert together.token_ids == served_alone(name)
    # the requests really shared steps: 3 at once in some step
    assert max(len(s.request_ids) for s in together.steps) == 3


def test_paged_and_slot_engines_give_the_same_tokens():
    reqs = requests()
    assert engine().serve(reqs).token_ids == engine(kv_layout="slots").serve(reqs).token_ids


@pytest.fixture(scope="module", params=KINDS)
def checkpoint(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param)
    arch, hf = save_checkpoint(request.param, path)
    return arch, hf, path


def test_tokens_match_transformers_generate(checkpoint):
    # 2 rows, 4 requests: the third and fourth join as the first ones finish (paged: into blocks
    # the first ones gave back; 16-token blocks, so r3's 20 tokens span two)
    arch, hf, path = checkpoint
    served = TorchServingEngine(
        arch, "float32", "cpu", seed=0, checkpoint=str(path), max_num_seqs=2, block_size=16
    ).serve(requests(PROMPTS[:4], [6, 3, 5, 20]))
    for prompt, n_out, rid in zip(PROMPTS[:4], [6, 3, 5, 20], ["r0", "r1", "r2", "r3"]):
        assert list(served.token_ids[rid]) == generate(hf, prompt, n_out)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_records_counts_and_timing_invariants(layout):
    result = engine(kv_layout=layout).serve(requests())
    assert [r.request_id for r in result.requests] == [f"r{i}" for i in range(8)]
    for r, prompt, n_out in zip(result.requests, PROMPTS, OUTPUTS):
        assert (r.input_tokens, r.output_tokens) == (len(prompt), n_out)
        assert r.preemptions == 0  # room for all: nothing preempted
        assert len(result.token_ids[r.request_id]) == n_out
        assert result.start_ns == r.arrival_ns <= r.first_token_ns <= r.finish_ns <= result.end_ns
        assert r.arrival_wall_ns <= r.first_token_wall_ns <= r.finish_wall_ns
        mine = [
            (s, s.request_tokens[s.request_ids.index(r.request_id)],
             s.new_tokens[s.request_ids.index(r.request_id)])
            for s in result.steps if r.request_id in s.request_ids
        ]  # fmt: skip
        # the first token exists at the end of the step that computed the prompt's last token,
        # the last one at the end of the step that made it; every token made once
        made = [s for s, _, new in mine if new == 1]
        assert len(made) == n_out and sum(new for _, _, new in mine) == n_out
        assert (r.first_token_ns, r.first_token_wall_ns) == (made[0].end_ns, made[0].end_wall_ns)
        assert (r.finish_ns, r.finish_wall_ns) == (made[-1].end_ns, made[-1].end_wall_ns)
        # the prompt before the first token (whole here: the budget holds every prompt), then one
        # token per step: prompt + output - 1 positions computed (the last token is never fed)
        before = [tok for s, tok, _ in mine if s.end_ns <= r.first_token_ns]
        assert before == [len(prompt)]
        assert sum(tok for _, tok, _ in mine) == len(prompt) + n_out - 1
    # 7 + 4 + 1 + 59 + 2 + 6 + 30 + 3 = 112 prompt tokens; sum(OUTPUTS) - 8 = 55 decode tokens
    assert sum(sum(s.request_tokens) for s in result.steps) == 112 + 55


@pytest.mark.parametrize("layout", LAYOUTS)
def test_steps_tile_the_window(layout):
    result = engine(kv_layout=layout).serve(requests())
    steps = result.steps
    assert [s.step_index for s in steps] == list(range(len(steps)))
    assert result.start_ns <= steps[0].start_ns
    assert result.start_wall_ns <= steps[0].start_wall_ns
    for a, b in zip(steps, steps[1:]):
        assert a.start_ns < a.end_ns <= b.start_ns
        assert a.start_wall_ns <= a.end_wall_ns <= b.start_wall_ns
    assert (steps[-1].end_ns, steps[-1].end_wall_ns) == (result.end_ns, result.end_wall_ns)
    kinds = {s.kind for s in steps}
    # slots: prompt steps and decode steps; paged: decode rows ride prompt steps (mixed)
    assert kinds == ({"prefill", "decode"} if layout == "slots" else {"prefill", "decode", "mixed"})


@pytest.mark.parametrize("layout", LAYOUTS)
def test_max_num_seqs_never_exceeded_and_rows_refill_at_the_next_step(layout):
    # prefill_min_seqs 1: a freed row (slot) is refilled at once, at the step after the one that
    # freed it (slots: a decode step's freed slot, by a prefill step; paged: any step's freed row,
    # by the next step, which carries the newcomer's prompt)
    result = engine(max_num_seqs=2, prefill_min_seqs=1, kv_layout=layout).serve(requests())
    assert max(in_flight(result)) == 2
    assert all(len(s.request_ids) <= 2 for s in result.steps)
    finish = {r.request_id: r.finish_ns for r in result.requests}
    first_step = {}
    for s in result.steps:
        for rid in s.request_ids:
            first_step.setdefault(rid, s.step_index)
    steps = result.steps
    for k, step in enumerate(steps[:-1]):
        freed = [rid for rid in step.request_ids if finish[rid] == step.end_ns]
        joined_later = [rid for rid, f in first_step.items() if f > k]
        if freed and joined_later and (layout == "paged" or step.kind == "decode"):
            assert min(first_step[rid] for rid in joined_later) == k + 1, f"step {k} freed {freed}"


def test_slot_prefill_packs_prompts_within_its_budget_and_runs_one_step_between_decode_steps():
    # budget 10 tokens: prompts of 4 tokens go two per prefill step (8 <= 10, 12 > 10); a prompt
    # of 30 goes alone, whole. 4 slots, 7 requests.
    prompts = [[1, 2, 3, 4]] * 4 + [list(range(1, 31))] + [[5, 6, 7, 8]] * 2
    outputs = [8, 9, 10, 11, 5, 6, 7]
    result = engine(
        max_num_seqs=4, max_prefill_tokens=10, prefill_min_seqs=1, kv_layout="slots"
    ).serve(requests(prompts, outputs))
    prefill = [s for s in result.steps if s.kind == "prefill"]
    assert [len(s.request_ids) for s in prefill][:2] == [2, 2]
    for s in prefill:
        assert sum(s.request_tokens) <= 10 or len(s.request_ids) == 1
    assert any(s.request_tokens == (30,) for s in prefill)
    # stall bound: while requests run, never two prefill steps in a row
    kinds = [s.kind for s in result.steps]
    assert all(not (a == b == "prefill") for a, b in zip(kinds, kinds[1:]))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_row_bound_admissions_wait_for_prefill_min_seqs_free_rows(layout):
    # 2 rows, 8 requests queued: while more wait than rows are free, new requests join only once
    # 2 rows are free, so each admission brings 2; only when the queue fits (1 left) comes 1.
    result = engine(max_num_seqs=2, prefill_min_seqs=2, kv_layout=layout).serve(requests())
    seen: set[str] = set()
    sizes = []
    for s in result.steps:
        new = set(s.request_ids) - seen
        seen |= new
        if new:
            sizes.append(len(new))
    assert sizes == [2, 2, 2, 2]  # 8 requests, 2 per admission


@pytest.mark.parametrize("layout", LAYOUTS)
def test_arrivals_are_waited_for(layout):
    # r1 arrives 1 s after the start: whatever r0 is doing then, r1 is computed no earlier
    result = engine(kv_layout=layout).serve(requests(PROMPTS[:2], [3, 4], arrivals=[0.0, 1.0]))
    r0, r1 = result.requests
    assert r1.arrival_ns == result.start_ns + 1_000_000_000
    assert r1.arrival_wall_ns == result.start_wall_ns + 1_000_000_000
    first = next(s for s in result.steps if "r1" in s.request_ids)
    assert first.start_ns >= r1.arrival_ns
    assert "r0" not in first.request_ids  # r0 was admitted at once, alone, and is done by then
    assert r1.first_token_ns >= r1.arrival_ns


def test_bad_input_is_refused_before_any_work():
    with pytest.raises(ConfigError, match="max_num_seqs=0"):
        engine(max_num_seqs=0)
    with pytest.raises(
        ConfigError, match="prefill_min_seqs=5; must lie in \\[1, max_num_seqs 3\\]"
    ):
        engine(prefill_min_seqs=5)
    with pytest.raises(ConfigError, match="max_model_len=513"):
        engine(max_model_len=513)  # tiny-llama: max_positions 512
    with pytest.raises(ConfigError, match="kv_layout='pages'; valid: \\['paged', 'slots'\\]"):
        engine(kv_layout="pages")
    with pytest.raises(ConfigError, match="block_size=24; must be a positive multiple of 16"):
        engine(block_size=24)
    with pytest.raises(ConfigError, match="max_num_batched_tokens=2; must be an integer >= "
                                          "max_num_seqs 3"):  # fmt: skip
        engine(max_num_batched_tokens=2)
    with pytest.raises(ConfigError, match="gpu_memory_utilization=1.5; must lie in \\(0, 1\\]"):
        engine(gpu_memory_utilization=1.5)
    with pytest.raises(ConfigError, match="num_blocks=0"):
        engine(num_blocks=0)
    for layout in LAYOUTS:
        capped = engine(max_model_len=32, kv_layout=layout)
        with pytest.raises(InputError, match="request 'r3': 79 prompt \\+ output tokens exceed "
                                             "the engine's max_model_len 32"):  # fmt: skip
            capped.serve(requests())
        with pytest.raises(InputError, match="request 'r1': token ids must lie in"):
            capped.serve(requests([[1], [5000]], [1, 1]))
    # r3 holds 59 + 20 - 1 = 78 positions at its end: 5 blocks of 16; a pool of 4 cannot hold it
    small = engine(block_size=16, num_blocks=4)
    with pytest.raises(InputError, match="request 'r3': 59 \\+ 20 tokens need 5 KV blocks of 16; "
                                         "the pool holds 4"):  # fmt: skip
        small.serve(requests())


def test_describe_names_the_settings_a_cell_records():
    paged = engine(block_size=16, num_blocks=40, max_num_batched_tokens=64).describe()
    # 40 blocks of 16 tokens; tiny-llama float32 K and V: 2 x 4 layers x 2 kv heads x 64 x 4 B =
    # 4,096 B per token, so 640 tokens = 2,621,440 B
    assert paged["kv_layout"] == "paged" and paged["max_num_seqs"] == 3
    assert (paged["block_size"], paged["num_blocks"], paged["pool_tokens"]) == (16, 40, 640)
    assert paged["pool_bytes"] == 2_621_440
    assert paged["num_blocks_source"] == "num_blocks"
    assert paged["max_num_batched_tokens"] == 64 and paged["preemption_mode"] == "recompute"
    assert paged["gpu_memory_utilization"] == 0.9 and paged["mixed_steps"] is True
    slots = engine(kv_layout="slots").describe()
    assert slots["kv_layout"] == "slots" and slots["max_prefill_tokens"] == 2048


@gpu
@needs_cuda
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_compiled_graph_decode_matches_eager_on_cuda(name, layout):
    # float32: the compiled layer (flex decoding) replayed as CUDA graphs gives the eager
    # reference's tokens; a second request set reuses the same graphs
    arch = load_architecture(name)
    kwargs = dict(max_num_seqs=3, max_model_len=128, kv_layout=layout)
    if layout == "paged":
        kwargs |= dict(block_size=16, num_blocks=64)
    fast = TorchServingEngine(arch, "float32", "cuda", seed=0, **kwargs)
    eager = TorchServingEngine(
        arch, "float32", "cuda", seed=0, cuda_graphs=False, compile_layers=False, **kwargs
    )
    assert fast.serve(requests()).token_ids == eager.serve(requests()).token_ids
    graphs = (
        [b.graph for b in fast.engine._buckets.values()]
        if layout == "paged"
        else [fast.engine._graph]
    )
    assert all(g is not None for g in graphs)
    again = requests(PROMPTS[::-1], OUTPUTS)
    assert fast.serve(again).token_ids == eager.serve(again).token_ids
    after = (
        [b.graph for b in fast.engine._buckets.values()]
        if layout == "paged"
        else [fast.engine._graph]
    )
    assert all(a is b for a, b in zip(graphs, after))


@gpu
@needs_cuda
@pytest.mark.parametrize("layout", LAYOUTS)
def test_bfloat16_serving_runs_on_cuda(layout):
    kwargs = dict(gpu_memory_utilization=0.3) if layout == "paged" else {}
    engine_ = TorchServingEngine(
        load_architecture("tiny-llama"), "bfloat16", "cuda", seed=0, max_num_seqs=4,
        kv_layout=layout, **kwargs,
    )  # fmt: skip
    result = engine_.serve(requests())
    assert [len(result.token_ids[f"r{i}"]) for i in range(8)] == OUTPUTS
    assert engine_.peak_memory_bytes() > 0

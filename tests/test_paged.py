"""The paged KV cache (backends/paged.py, paged_schedule.py, the paged engine of serving.py): the
arithmetic the OOM probe calls, worked by hand; the block allocator; the schedule's admission and
preemption on hand-built cases; and the engine's tokens under chunked prefill and preemption against
the same requests served one at a time, with every block back after each serve. CPU, float32."""

from __future__ import annotations

import numpy as np
import pytest

from tokencarbon.backends import Request
from tokencarbon.backends.paged import (
    BlockAllocator,
    blocks_for,
    kv_bytes_per_token,
    max_num_seqs_fitting,
    pool_bytes_under_utilization,
    pool_size,
)
from tokencarbon.backends.paged_schedule import Schedule
from tokencarbon.backends.serving import TorchServingEngine
from tokencarbon.errors import ConfigError
from tokencarbon.models import load_architecture
from tokencarbon.quantization import Quantization

GIB = 2**30
PROMPTS = [
    [5, 17, 300, 42, 9, 1000, 7], [3, 2, 4000, 11], [77], list(range(1, 60)), [8, 9],
    [1, 2, 3, 4, 5, 6], list(range(100, 130)), [4095, 0, 4095],
]  # fmt: skip
OUTPUTS = [6, 3, 5, 20, 1, 9, 12, 7]
REQUESTS = [Request(f"r{i}", tuple(p), n) for i, (p, n) in enumerate(zip(PROMPTS, OUTPUTS))]


# ---------------------------------------------------------------- the probe's arithmetic


def test_kv_bytes_per_token_by_hand():
    # Llama-2-7B (MHA): 2 (K, V) x 32 layers x 32 kv heads x 128 x 2 B (float16) = 524,288 B
    assert kv_bytes_per_token(load_architecture("llama-2-7b"), "float16") == 512 * 1024
    # Llama-3.1-8B (GQA): 2 x 32 x 8 x 128 x 2 B (bfloat16) = 131,072 B
    assert kv_bytes_per_token(load_architecture("llama-3.1-8b"), "bfloat16") == 128 * 1024


def test_pool_size_and_max_num_seqs_by_hand():
    arch = load_architecture("llama-2-7b")
    # 40 GiB in blocks of 16 tokens x 512 KiB = 8 MiB: 40 x 1024 / 8 = 5,120 blocks, 81,920 tokens
    pool = pool_size(arch, "float16", 40 * GIB, block_size=16)
    assert (pool.num_blocks, pool.tokens, pool.bytes_per_block) == (5120, 81920, 8 * 2**20)
    # a weight-only scheme leaves K and V in float16: the same pool
    int8 = pool_size(arch, "float16", 40 * GIB, 16, Quantization("int8_weight_only"))
    assert int8.num_blocks == 5120
    # 1,000 + 1,000 tokens: 1,999 positions (the last token is never fed back) = ceil(1999 / 16) =
    # 125 blocks; 5,120 // 125 = 40 requests (41 would need 5,125); 40 x 2,000 tokens in flight
    fit = max_num_seqs_fitting(arch, "float16", 40 * GIB, 1000, 1000, block_size=16)
    assert (fit.max_num_seqs, fit.blocks_per_request) == (40, 125)
    assert (fit.tokens_in_flight, fit.kv_tokens_in_flight) == (80_000, 79_960)
    # blocks of 64: 1,280 blocks; 1,999 positions = 32 blocks; 1,280 // 32 = 40 again
    assert max_num_seqs_fitting(arch, "float16", 40 * GIB, 1000, 1000).max_num_seqs == 40
    # 136 + 335 tokens (the serving benchmark's means) in blocks of 16: 470 positions = 30
    # blocks; 5,120 // 30 = 170 requests
    assert max_num_seqs_fitting(arch, "float16", 40 * GIB, 136, 335, 16).max_num_seqs == 170
    # a pool smaller than one request holds none
    assert max_num_seqs_fitting(arch, "float16", 100 * 2**20, 1000, 1000, 16).max_num_seqs == 0
    with pytest.raises(ConfigError, match="prompt_len=0, output_len=5"):
        max_num_seqs_fitting(arch, "float16", GIB, 0, 5)
    with pytest.raises(ConfigError, match="block_size=40"):
        pool_size(arch, "float16", GIB, 40)


def test_pool_bytes_under_utilization_by_hand():
    # 0.9 of 80e9 B = 72e9; minus 17e9 in use and 3e9 of activations: 52e9 B for the pool
    assert pool_bytes_under_utilization(80_000_000_000, 0.9, 17_000_000_000, 3_000_000_000) == (
        52_000_000_000
    )
    with pytest.raises(ConfigError, match="leaves -1000 B for the KV pool"):
        pool_bytes_under_utilization(10_000, 0.5, 5_000, 1_000)
    with pytest.raises(ConfigError, match="gpu_memory_utilization=0; must lie in"):
        pool_bytes_under_utilization(10_000, 0, 0, 0)


# ---------------------------------------------------------------- the allocator


def test_block_allocator_hands_out_and_takes_back_whole_blocks():
    a = BlockAllocator(4)
    assert a.allocate(2) == [0, 1] and a.num_free == 2
    assert a.allocate(3) is None and a.num_free == 2  # all or nothing
    assert a.allocate(2) == [2, 3] and a.num_free == 0
    a.free([1, 0])
    assert a.num_free == 2 and sorted(a.allocate(2)) == [0, 1]
    a.free([2])
    with pytest.raises(ValueError, match="block 2 is not an allocated block"):
        a.free([3, 2])  # 2 is already free; 3 stays allocated (all or nothing)
    assert a.num_free == 1
    a.free([3])
    assert a.num_free == 2
    assert blocks_for(16, 16) == 1 and blocks_for(17, 16) == 2


# ---------------------------------------------------------------- the schedule, by hand


def schedule(prompts, outputs, blocks, **kw) -> Schedule:
    kw = {"block_size": 4, "max_num_seqs": 4, "max_num_batched_tokens": 64,
          "max_blocks_per_seq": 8, "prefill_min_seqs": 1, "mixed_steps": True} | kw  # fmt: skip
    n = len(prompts)
    s = Schedule(np.array(prompts), np.array(outputs), np.zeros(n, dtype=np.int64),
                 BlockAllocator(blocks), **kw)  # fmt: skip
    s.arrive(0)
    return s


def test_admission_is_by_free_blocks_and_chunks_fill_the_token_budget():
    # blocks of 4 tokens, 5 blocks. Prompts 6, 6 and 3 tokens need 2, 2 and 1 blocks: all three
    # are admitted (5 blocks) in one step of 15 tokens (budget 64).
    s = schedule([6, 6, 3], [3, 3, 3], blocks=5)
    step = s.next_step()
    assert step.kind == "prefill" and step.chunks == [(0, 0, 6), (1, 0, 6), (2, 0, 3)]
    assert s.allocator.num_free == 0
    s.launched(step, 0)
    # every prompt computed and its first token sampled: three decode rows at positions 6, 6, 3
    assert s.g.tolist() == [1, 1, 1] and s.c.tolist() == [6, 6, 3]
    # budget 5 tokens: two prompts of 6 and 3 -> the first gets 5 (a chunk), the second waits
    t = schedule([6, 3], [2, 2], blocks=8, max_num_batched_tokens=5)
    step = t.next_step()
    assert step.chunks == [(0, 0, 5)]
    t.launched(step, 0)
    assert t.g.tolist() == [0, 0] and t.c.tolist() == [5, 0]  # no token: the prompt is unfinished
    step = t.next_step()
    assert step.chunks == [(0, 5, 1), (1, 0, 3)]  # the rest of the first prompt, then the second


def test_preemption_takes_the_newest_request_and_it_recomputes_what_it_had():
    # blocks of 4, 4 blocks. r0 (prompt 4) and r1 (prompt 4) take one block each, r2 (prompt 8)
    # two: the pool is full. Step 1: all three are decode rows; r0 and r1 sit at position 4 and
    # need a second block, r2 at position 8 a third. None is free: r0 takes r2's (the newest
    # request is preempted), r1 takes the other.
    s = schedule([4, 4, 8], [5, 5, 5], blocks=4)
    first = s.next_step()
    assert first.chunks == [(0, 0, 4), (1, 0, 4), (2, 0, 8)]
    s.launched(first, 0)
    second = s.next_step()
    assert second.kind == "decode" and second.decode.tolist() == [0, 1]
    assert s.preemptions.tolist() == [0, 0, 1]
    assert list(s.waiting) == [2] and s.c[2] == 0 and s.g[2] == 1  # its token is kept
    assert s.allocator.num_free == 0
    s.launched(second, 1)
    # r0 and r1 run on (positions 5, 6, 7 fit their second blocks) and finish at step 4
    # (5 tokens: one at step 0, one per decode step); then r2 is readmitted and recomputes its
    # prompt and the token it had: 8 + 1 = 9 positions, 3 blocks
    k = 2
    step = s.next_step()
    while 2 not in [r for r, _, _ in step.chunks]:
        s.launched(step, k)
        k += 1
        step = s.next_step()
    assert k == 5  # r0 and r1 finished at step 4
    assert step.chunks == [(2, 0, 9)] and s.nblk[2] == 3
    s.launched(step, k)
    assert s.g[2] == 2 and s.c[2] == 9  # its second token, sampled at the end of the recompute
    while not s.done:
        k += 1
        s.launched(s.next_step(), k)
    assert s.leaks() == "" and s.g.tolist() == [5, 5, 5]


def test_without_mixed_steps_a_step_is_decode_or_prompt_and_prompts_never_run_twice_in_a_row():
    s = schedule([4, 4, 4, 4, 4, 4], [3, 6, 2, 5, 4, 3], blocks=64, max_num_seqs=2,
                 mixed_steps=False)  # fmt: skip
    kinds = []
    k = 0
    while not s.done:
        step = s.next_step()
        assert not (len(step.decode) and step.chunks)
        kinds.append(step.kind)
        s.launched(step, k)
        k += 1
    assert "mixed" not in kinds
    assert all(not (a == b == "prefill") for a, b in zip(kinds, kinds[1:]))
    assert s.leaks() == ""


# ---------------------------------------------------------------- the engine


def engine(**kwargs) -> TorchServingEngine:
    kwargs.setdefault("max_num_seqs", 3)
    return TorchServingEngine(load_architecture("tiny-llama"), "float32", "cpu", seed=3, **kwargs)


@pytest.fixture(scope="module")
def alone() -> dict:
    one = engine(max_num_seqs=1, kv_layout="slots")
    return {r.request_id: one.serve([r]).token_ids[r.request_id] for r in REQUESTS}


def test_chunked_prefill_gives_the_tokens_of_whole_prefill(alone):
    # a budget of 5 tokens per step: 3 decode rows leave 2 for prompts, so r3's 59-token prompt
    # goes in chunks; the tokens are those of whole prefill and of each request alone
    chunked = engine(max_num_batched_tokens=5)
    result = chunked.serve(REQUESTS)
    assert result.token_ids == engine().serve(REQUESTS).token_ids == alone
    assert all(sum(s.request_tokens) <= 5 for s in result.steps)
    r3 = [(s.request_tokens[s.request_ids.index("r3")], s.new_tokens[s.request_ids.index("r3")])
          for s in result.steps if "r3" in s.request_ids]  # fmt: skip
    before = [tok for tok, new in r3[: [new for _, new in r3].index(1) + 1]]
    assert len(before) > 1 and sum(before) == 59  # in chunks, all of the prompt once
    assert chunked.engine.allocator.num_free == chunked.engine.allocator.num_blocks


def test_preempted_requests_resume_with_the_tokens_they_would_have_had(alone):
    # 5 blocks of 16 tokens for 3 rows: r3 alone needs 5 (59 + 20 - 1 = 78 positions), so requests
    # in flight beside it run out of blocks and the newest is preempted, recomputed later
    small = engine(block_size=16, num_blocks=5)
    for budget in (2048, 7):  # whole prompts, and chunks
        small.engine.max_num_batched_tokens = budget
        result = small.serve(REQUESTS)
        assert result.token_ids == alone
        preempted = {r.request_id: r.preemptions for r in result.requests if r.preemptions}
        assert preempted, "the pool was meant to run out"
        for rid, times in preempted.items():
            made = sum(s.new_tokens[s.request_ids.index(rid)] for s in result.steps
                       if rid in s.request_ids)  # fmt: skip
            assert made == OUTPUTS[int(rid[1:])]  # no token made twice, none lost
        assert small.engine.allocator.num_free == 5  # every block back


def test_mixed_steps_carry_decode_rows_and_prompts_together(alone):
    result = engine(max_num_seqs=2).serve(REQUESTS)
    assert result.token_ids == alone
    mixed = [s for s in result.steps if s.kind == "mixed"]
    assert mixed
    first = {r.request_id: r.first_token_ns for r in result.requests}
    for s in mixed:  # decode rows (first token before the step) beside prompt chunks (at its end)
        assert any(first[rid] < s.start_ns for rid in s.request_ids)
        assert any(first[rid] >= s.end_ns for rid in s.request_ids)
    separate = engine(max_num_seqs=2, mixed_steps=False).serve(REQUESTS)
    assert separate.token_ids == alone
    assert "mixed" not in {s.kind for s in separate.steps}

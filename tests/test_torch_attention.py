"""backends/attention.py: the decode block mask (each row's own keys, to KV_BLOCK granularity)
through flex_attention, and packed-prompt prefill, against plain SDPA per request."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import flex_attention

from tokencarbon.backends.attention import (
    KV_BLOCK,
    DecodeMask,
    decode_attention,
    prefill_attention,
)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def reference_decode(q, k, v, lengths):
    """SDPA of each row alone over its first lengths[b] keys."""
    rows = [
        F.scaled_dot_product_attention(
            q[b : b + 1, :, None], k[b : b + 1, :, :n], v[b : b + 1, :, :n], enable_gqa=True
        )[:, :, 0]
        for b, n in enumerate(lengths)
    ]
    return torch.cat(rows)


def test_block_counts_by_hand():
    # 4 rows over a 256-key cache (4 blocks of 64): lengths 1, 64, 65, 256
    mask = DecodeMask(4, 256, torch.device("cpu"))
    mask.update(torch.tensor([1, 64, 65, 256]))
    assert mask.full_num.view(-1).tolist() == [0, 1, 1, 4]  # whole blocks below the length
    assert mask.part_num.view(-1).tolist() == [1, 0, 1, 0]  # a partly filled last block
    assert mask.part_idx[:, 0, 0, 0].tolist() == [0, 1, 1, 3]  # its index (clamped when unused)
    # keys read per row: (full + partial) x 64 = 64, 64, 128, 256: at most KV_BLOCK - 1 past
    read = (mask.full_num + mask.part_num).view(-1) * KV_BLOCK
    assert read.tolist() == [64, 64, 128, 256]


@pytest.mark.parametrize("heads, kv_heads", [(4, 2), (4, 4)])
def test_flex_with_the_block_mask_reads_each_rows_own_keys(heads, kv_heads):
    torch.manual_seed(0)
    lengths = [1, 63, 64, 65, 200]
    q = torch.randn(5, heads, 16)
    k, v = torch.randn(5, kv_heads, 256, 16), torch.randn(5, kv_heads, 256, 16)
    mask = DecodeMask(5, 256, torch.device("cpu"))
    mask.update(torch.tensor(lengths))
    want = reference_decode(q, k, v, lengths)
    # flex_attention with the block mask (eager: its dense reference) and the engine's eager path
    flex = flex_attention(q[:, :, None], k, v, block_mask=mask.block_mask, enable_gqa=True)
    assert (flex[:, :, 0] - want).abs().max() < 1e-5
    assert (decode_attention(q, k, v, mask) - want).abs().max() < 1e-5
    # the same mask object follows new lengths (static buffers, updated in place)
    mask.update(torch.tensor([2, 2, 2, 2, 2]))
    assert (decode_attention(q, k, v, mask) - reference_decode(q, k, v, [2] * 5)).abs().max() < 1e-5


def test_packed_prefill_equals_each_prompt_alone():
    torch.manual_seed(0)
    lens = [5, 1, 12]
    offsets = [0, 5, 6, 18]
    q, k, v = torch.randn(18, 4, 16), torch.randn(18, 2, 16), torch.randn(18, 2, 16)
    got = prefill_attention(q, k, v, torch.tensor(offsets, dtype=torch.int32), offsets, max(lens))
    for start, end in zip(offsets[:-1], offsets[1:]):
        qi, ki, vi = (t[start:end].transpose(0, 1)[None] for t in (q, k, v))
        want = F.scaled_dot_product_attention(qi, ki, vi, is_causal=True, enable_gqa=True)
        assert (got[start:end] - want[0].transpose(0, 1)).abs().max() < 1e-6


@pytest.mark.gpu
@needs_cuda
def test_flash_varlen_prefill_and_compiled_flex_decode_on_cuda():
    # bf16 on the GPU: FlashAttention varlen (GQA 32/8 heads) and flex decoding compiled, against
    # float32 SDPA per request; bf16 operands land within 1e-2 relative.
    torch.manual_seed(0)
    dev = torch.device("cuda")
    lens = [100, 1, 300]
    offsets = [0, 100, 101, 401]
    q, k, v = (torch.randn(401, h, 128, device=dev) for h in (32, 8, 8))
    got = prefill_attention(
        q.bfloat16(), k.bfloat16(), v.bfloat16(),
        torch.tensor(offsets, dtype=torch.int32, device=dev), offsets, max(lens),
    )  # fmt: skip
    for start, end in zip(offsets[:-1], offsets[1:]):
        qi, ki, vi = (t[start:end].transpose(0, 1)[None] for t in (q, k, v))
        want = F.scaled_dot_product_attention(qi, ki, vi, is_causal=True, enable_gqa=True)
        want = want[0].transpose(0, 1)
        assert (got[start:end].float() - want).norm() / want.norm() < 1e-2
    lengths = [1, 64, 65, 1000]
    qd = torch.randn(4, 32, 128, device=dev)
    kc, vc = torch.randn(4, 8, 1024, 128, device=dev), torch.randn(4, 8, 1024, 128, device=dev)
    mask = DecodeMask(4, 1024, dev)
    mask.update(torch.tensor(lengths, device=dev))
    want = reference_decode(qd, kc, vc, lengths)
    # block-sparse: the compiled kernel never reads past a row's last block (64, 64, 128, 1024
    # keys), so NaN there cannot reach the result
    for b, n in enumerate(lengths):
        kc[b, :, -(-n // KV_BLOCK) * KV_BLOCK :] = float("nan")
        vc[b, :, -(-n // KV_BLOCK) * KV_BLOCK :] = float("nan")
    compiled = torch.compile(decode_attention, fullgraph=True, dynamic=False)
    got = compiled(qd.bfloat16(), kc.bfloat16(), vc.bfloat16(), mask).float()
    assert (got - want).norm() / want.norm() < 1e-2

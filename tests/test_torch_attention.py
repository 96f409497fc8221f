"""backends/attention.py: the decode block masks (slot cache: each row's own keys, to KV_BLOCK
granularity; paged pool: each row's own blocks) through flex_attention, packed-prompt prefill and
prompt chunks over cached keys, against plain SDPA per request."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import flex_attention

from tokencarbon.backends.attention import (
    KV_BLOCK,
    DecodeMask,
    PagedDecodeMask,
    chunk_attention,
    decode_attention,
    paged_decode_attention,
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


# 3 rows over a pool of 10 blocks of 16 (+ the scratch block): row 0 holds blocks 7, 2, 9 (40
# keys: 16 + 16 + 8), row 1 block 0 (3 keys), row 2 blocks 5, 1 (32 keys: both whole); row 3 none
TABLES, LENGTHS, BS = [[7, 2, 9], [0], [5, 1]], [40, 3, 32], 16


def reference_paged(q, k_pool, v_pool, tables, lengths, bs):
    """SDPA of each row alone over the first `length` positions of its blocks, in order."""
    rows = []
    for b, (blocks, n) in enumerate(zip(tables, lengths)):
        slots = torch.cat([torch.arange(x * bs, (x + 1) * bs) for x in blocks])[:n]
        rows.append(F.scaled_dot_product_attention(
            q[b : b + 1, :, None], k_pool[0][:, slots][None], v_pool[0][:, slots][None],
            enable_gqa=True,
        )[:, :, 0])  # fmt: skip
    return torch.cat(rows)


def test_paged_mask_buffers_by_hand():
    mask = PagedDecodeMask(4, 11 * BS, BS, torch.device("cpu"))
    mask.set(TABLES, LENGTHS)
    assert mask.num_blocks.tolist() == [3, 1, 2, 0]
    assert mask.table[:3, 0, 0, :3].tolist() == [[7, 2, 9], [0, 0, 0], [5, 1, 0]]
    assert mask.last_page.tolist() == [9, 0, 1, -1]  # each row's last block
    assert mask.last_len.tolist() == [8, 3, 16, 0]  # keys in it: 40 - 32, 3, 32 - 16
    assert mask.lengths().tolist() == [40, 3, 32, 0] and mask.cols == 3
    assert mask.table.shape[-1] == 11  # a column per pool block (flex's CPU kernel asks it)


@pytest.mark.parametrize("heads, kv_heads", [(4, 2), (4, 4)])
def test_paged_decode_attention_reads_each_rows_own_blocks(heads, kv_heads):
    torch.manual_seed(0)
    k, v = torch.randn(1, kv_heads, 11 * BS, 16), torch.randn(1, kv_heads, 11 * BS, 16)
    q = torch.randn(4, heads, 16)
    mask = PagedDecodeMask(4, 11 * BS, BS, torch.device("cpu"))
    mask.set(TABLES, LENGTHS)
    got = paged_decode_attention(q, k, v, mask)
    assert (got[:3] - reference_paged(q, k, v, TABLES, LENGTHS, BS)).abs().max() < 1e-5
    assert got[3].abs().max() == 0  # a row with no blocks attends nothing
    # the same buffers follow new tables (in place)
    mask.set([[3], [4, 6, 8]], [5, 48])
    want = reference_paged(q, k, v, [[3], [4, 6, 8]], [5, 48], BS)
    assert (paged_decode_attention(q, k, v, mask)[:2] - want).abs().max() < 1e-5


def test_prompt_chunks_attend_over_their_requests_keys_so_far():
    # chunk 0: positions 3..6 of a request (7 keys); chunk 1: a whole prompt of 2 (2 keys);
    # chunk 2: position 5 alone (6 keys). Each against SDPA of the full causal prompt, last rows.
    torch.manual_seed(0)
    n_q, n_k = [4, 2, 1], [7, 2, 6]
    q_off = [0, 4, 6, 7]
    k_off = [0, 7, 9, 15]
    full_q = [torch.randn(n, 4, 16) for n in n_k]
    keys, values = torch.randn(15, 2, 16), torch.randn(15, 2, 16)
    q = torch.cat([fq[-n:] for fq, n in zip(full_q, n_q)])
    got = chunk_attention(q, keys, values, torch.tensor(q_off, dtype=torch.int32),
                          torch.tensor(k_off, dtype=torch.int32), q_off, k_off, 4, 7)  # fmt: skip
    for i, (fq, n) in enumerate(zip(full_q, n_q)):
        ki, vi = keys[k_off[i] : k_off[i + 1]], values[k_off[i] : k_off[i + 1]]
        want = F.scaled_dot_product_attention(
            fq.transpose(0, 1)[None], ki.transpose(0, 1)[None], vi.transpose(0, 1)[None],
            is_causal=True, enable_gqa=True,
        )[0].transpose(0, 1)[-n:]  # fmt: skip
        assert (got[q_off[i] : q_off[i + 1]] - want).abs().max() < 1e-5


@pytest.mark.gpu
@needs_cuda
def test_compiled_paged_decode_and_flash_chunks_on_cuda():
    # bf16: flex decoding compiled over the paged pool reads only the rows' blocks (NaN everywhere
    # else cannot reach the result); FlashAttention varlen over chunks with more keys than queries
    # aligns its causal mask at the bottom right. Against float32 references within 1e-2.
    torch.manual_seed(0)
    dev = torch.device("cuda")
    bs, n_blocks = 64, 40
    k = torch.full((1, 8, (n_blocks + 1) * bs, 128), float("nan"), device=dev)
    v = k.clone()
    tables, lengths = [[7, 2, 30], [0], [5, 11, 12, 13], []], [130, 3, 256, 0]
    for blocks in tables:
        for x in blocks:
            k[:, :, x * bs : (x + 1) * bs] = torch.randn(1, 8, bs, 128, device=dev)
            v[:, :, x * bs : (x + 1) * bs] = torch.randn(1, 8, bs, 128, device=dev)
    q = torch.randn(4, 32, 128, device=dev)
    mask = PagedDecodeMask(4, (n_blocks + 1) * bs, bs, dev)
    mask.set(tables, lengths)
    # keys past a row's length inside its last block hold NaN too: mask_mod must hide them
    k[:, :, 30 * bs + 2 : 31 * bs] = float("nan")
    want = reference_paged(q[:3], k, v, tables[:3], lengths[:3], bs)
    compiled = torch.compile(paged_decode_attention, fullgraph=True, dynamic=False)
    got = compiled(q.bfloat16(), k.bfloat16(), v.bfloat16(), mask).float()
    assert (got[:3] - want).norm() / want.norm() < 1e-2
    assert got[3].abs().max() == 0
    n_q, n_k = [100, 1, 37], [300, 1, 37]
    q_off, k_off = [0, 100, 101, 138], [0, 300, 301, 338]
    full_q = [torch.randn(n, 32, 128, device=dev) for n in n_k]
    keys, values = torch.randn(338, 8, 128, device=dev), torch.randn(338, 8, 128, device=dev)
    qc = torch.cat([fq[-n:] for fq, n in zip(full_q, n_q)])
    got = chunk_attention(
        qc.bfloat16(), keys.bfloat16(), values.bfloat16(),
        torch.tensor(q_off, dtype=torch.int32, device=dev),
        torch.tensor(k_off, dtype=torch.int32, device=dev), q_off, k_off, 100, 300,
    ).float()  # fmt: skip
    for i, (fq, n) in enumerate(zip(full_q, n_q)):
        ki, vi = keys[k_off[i] : k_off[i + 1]], values[k_off[i] : k_off[i + 1]]
        want = F.scaled_dot_product_attention(
            fq.transpose(0, 1)[None], ki.transpose(0, 1)[None], vi.transpose(0, 1)[None],
            is_causal=True, enable_gqa=True,
        )[0].transpose(0, 1)[-n:]  # fmt: skip
        part = got[q_off[i] : q_off[i + 1]]
        assert (part - want).norm() / want.norm() < 1e-2


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

"""Attention of the continuous-batching engine, from what torch ships: one-token decode rows over a
per-request slot cache through flex_attention with a block-sparse BlockMask (each row reads its own
keys only, to KV_BLOCK granularity), and packed prompts through FlashAttention's varlen kernel.

The BlockMask's tensors are static buffers updated in place from the rows' lengths, so a decode step
that reads them can be captured once as a CUDA graph and replayed for any lengths."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention.flex_attention import BlockMask, flex_attention

# Keys per block of the decode BlockMask: a row reads ceil(length / KV_BLOCK) blocks, so at most
# KV_BLOCK - 1 keys past its own. 64 is flex decoding's default tile (BLOCK_N) on Hopper
# (torch/_inductor/template_heuristics/triton.py get_flex_decode_configs), the smallest block that
# keeps whole tiles.
KV_BLOCK = 64
# Query block of the mask: one decode token per row lies in the first; flex decoding needs it to be
# a multiple of its BLOCK_M (16 for up to 16 query heads per KV head).
Q_BLOCK = 128


class DecodeMask:
    """A flex_attention BlockMask over `rows` one-token queries and a [rows, kv_heads, cache_len,
    head_dim] slot cache: row b attends over keys [0, length[b]) of its own slot.

    Its blocks: the whole blocks below length[b] as "full" blocks (no mask_mod evaluated), and the
    block holding length[b] - 1, if partly filled, as a partial block whose keys at or past
    length[b] mask_mod hides. Rows of length 0 attend nothing (flex_attention returns 0 there)."""

    def __init__(self, rows: int, cache_len: int, device: torch.device):
        if cache_len % KV_BLOCK:
            raise ValueError(f"cache_len {cache_len} must be a multiple of KV_BLOCK {KV_BLOCK}")
        n_blocks = cache_len // KV_BLOCK
        self.n_blocks = n_blocks
        new = dict(dtype=torch.int32, device=device)
        self.lengths = torch.zeros(rows, **new)
        self.full_num = torch.zeros(rows, 1, 1, **new)
        self.full_idx = torch.arange(n_blocks, **new).expand(rows, 1, 1, n_blocks).contiguous()
        self.part_num = torch.zeros(rows, 1, 1, **new)
        self.part_idx = torch.zeros(rows, 1, 1, n_blocks, **new)
        lengths = self.lengths

        def keys_within_length(b, h, q_idx, kv_idx):
            return kv_idx < lengths[b]

        self.block_mask = BlockMask.from_kv_blocks(
            self.part_num,
            self.part_idx,
            self.full_num,
            self.full_idx,
            BLOCK_SIZE=(Q_BLOCK, KV_BLOCK),
            mask_mod=keys_within_length,
            seq_lengths=(1, cache_len),
        )

    def update(self, lengths: Tensor) -> None:
        """Set every row's key count from `lengths` [rows] (integers in [0, cache_len]), in place
        and without a host sync: safe inside a captured CUDA graph."""
        self.lengths.copy_(lengths)
        whole = torch.div(lengths, KV_BLOCK, rounding_mode="floor")
        self.full_num.view(-1).copy_(whole)
        self.part_num.view(-1).copy_(lengths % KV_BLOCK != 0)
        self.part_idx[:, 0, 0, 0].copy_(whole.clamp(max=self.n_blocks - 1))


def decode_attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, mask: DecodeMask) -> Tensor:
    """q [rows, heads, head_dim] (one token per row) attending over keys [0, length) of its slot of
    k_cache/v_cache [rows, kv_heads, cache_len, head_dim], lengths as `mask` holds them; returns
    [rows, heads, head_dim]. Under torch.compile: flex_attention with the block mask, which lowers to
    flex decoding's kernel (grouped-query heads packed into one tile, only the row's blocks read).
    Eagerly (CPU, and the CUDA reference): SDPA over the whole cache with the same mask as a dense
    boolean, the same function computed plainly (eager flex_attention computes it densely too, at
    some 0.1 s of Python overhead per call)."""
    gqa = q.shape[1] != k_cache.shape[1]
    if torch.compiler.is_compiling():
        out = flex_attention(
            q.unsqueeze(2), k_cache, v_cache, block_mask=mask.block_mask, enable_gqa=gqa
        )
        return out.squeeze(2)
    keys = torch.arange(k_cache.shape[2], device=q.device)
    allowed = (keys < mask.lengths[:, None])[:, None, None, :]  # [rows, 1, 1, cache_len]
    out = F.scaled_dot_product_attention(
        q.unsqueeze(2), k_cache, v_cache, attn_mask=allowed, enable_gqa=gqa
    )
    return out.squeeze(2)


def prefill_attention(
    q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor, offsets: list[int], max_len: int
) -> Tensor:
    """Causal attention of packed prompts: q [T, heads, head_dim], k and v [T, kv_heads, head_dim],
    prompt i holding tokens [offsets[i], offsets[i + 1]) (cu_seqlens: the same offsets, int32 on
    q's device; max_len: the longest prompt). Each token attends over its own prompt's earlier
    tokens. CUDA fp16/bf16: FlashAttention-2's varlen kernel, which takes fewer KV heads than query
    heads (grouped-query attention) as they are; elsewhere SDPA once per prompt."""
    if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        # torch.nn.attention.varlen.varlen_attn wraps this op; its Python signature changed
        # between torch 2.10 and 2.12 (is_causal, then window_size and enable_gqa), the op's
        # leading arguments did not.
        return torch.ops.aten._flash_attention_forward(
            q, k, v, cu_seqlens, cu_seqlens, max_len, max_len, 0.0, True, False
        )[0]
    out = []
    for start, end in zip(offsets[:-1], offsets[1:]):
        qi, ki, vi = (t[start:end].transpose(0, 1).unsqueeze(0) for t in (q, k, v))
        yi = F.scaled_dot_product_attention(qi, ki, vi, is_causal=True, enable_gqa=True)
        out.append(yi[0].transpose(0, 1))
    return torch.cat(out)

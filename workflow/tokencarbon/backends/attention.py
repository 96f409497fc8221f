"""Attention of the continuous-batching engine, from what torch ships.

- Decode rows (one query token each) through flex_attention with a block-sparse BlockMask: over a
  per-request slot cache (DecodeMask, the slot engine), or over the pages of the paged KV pool
  (PagedDecodeMask: the BlockMask's block indices are the row's physical blocks, so flex decoding
  reads the pool through the row's block table).
- Packed prompts (the slot engine) and prompt chunks over cached keys (the paged engine) through
  FlashAttention-2's varlen kernel.

The BlockMasks' tensors are static buffers written in place, so a decode step that reads them can be
captured once as a CUDA graph and replayed for any lengths and block tables."""

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
    [rows, heads, head_dim]. Under torch.compile: flex_attention with the block mask, which lowers
    to flex decoding's kernel (grouped-query heads packed into one tile, only the row's blocks read).
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


class PagedDecodeMask:
    """A flex_attention BlockMask over `rows` one-token queries and a paged KV pool of pool_tokens
    positions (key tensor [1, kv_heads, pool_tokens, head_dim], paged.KVPool): row b attends over
    the keys of its blocks table[b, 0, 0, :num_blocks[b]], whole but the last, of which only the
    first last_len[b] keys. A BlockMask block is one pool block (block_size keys), so the block
    indices are the row's physical blocks in the order of its positions. The table has a column per
    pool block (as torch.nn.attention.experimental._paged_attention sizes its converted masks:
    flex's CPU kernel asserts table width x block_size >= the key length); a row's blocks fill its
    first columns and nothing reads past num_blocks.

    Every block is a "partial" block (mask_mod evaluated): mask_mod hides the keys at or past
    last_len[b] of block last_page[b] (the row's last block) and nothing else. Partial blocks, not
    "full" ones, because flex decoding splits a row's keys among its KV-split programs by the row's
    own block count for partial blocks, but by the whole key length (here the whole pool) for full
    ones (torch/_inductor/kernel/flex/templates/flex_decode.py.jinja, TILE_KV). Rows with
    num_blocks 0 attend nothing (flex decoding returns 0 there; the eager path too). The mask_mod
    alone does not confine a row to its blocks: eager flex_attention, which evaluates mask_mod
    densely and ignores the block indices, is not a reference for it (paged_decode_attention's
    eager path is).

    Buffers (written in place by the engine, then read by the step): num_blocks [rows] int32,
    table [rows, 1, 1, pool_tokens / block_size] int32, last_page [rows] int64, last_len [rows]
    int64. cols (host int): columns of the table in use (the most blocks a row has), which the
    eager path gathers."""

    def __init__(self, rows: int, pool_tokens: int, block_size: int, device: torch.device):
        if pool_tokens % block_size:
            raise ValueError(f"pool_tokens {pool_tokens} must be a multiple of block_size {block_size}")
        self.rows, self.block_size, self.pool_tokens = rows, block_size, pool_tokens
        self.width = pool_tokens // block_size
        self.cols = 0
        i32 = dict(dtype=torch.int32, device=device)
        i64 = dict(dtype=torch.long, device=device)
        self.num_blocks = torch.zeros(rows, **i32)
        self.table = torch.zeros(rows, 1, 1, self.width, **i32)
        # separate tensors (no two inputs of the compiled step share storage)
        self.last_page = torch.full((rows,), -1, **i64)
        self.last_len = torch.zeros(rows, **i64)
        last_page, last_len = self.last_page, self.last_len

        def keys_of_the_row(b, h, q_idx, kv_idx):
            return (kv_idx // block_size != last_page[b]) | (kv_idx % block_size < last_len[b])

        self.block_mask = BlockMask.from_kv_blocks(
            self.num_blocks.view(rows, 1, 1),
            self.table,
            BLOCK_SIZE=(Q_BLOCK, block_size),
            mask_mod=keys_of_the_row,
            seq_lengths=(1, pool_tokens),
            compute_q_blocks=False,  # forward only
        )

    def set(self, tables: list[list[int]], lengths: list[int]) -> None:
        """Fill the buffers from each row's blocks (in position order) and key count; rows past
        len(tables) get none. For tests and references; the engine writes the same buffers from its
        packed step input."""
        bs = self.block_size
        n = torch.zeros(self.rows, dtype=torch.int32)
        table = torch.zeros(self.rows, self.width, dtype=torch.int32)
        last_page = torch.full((self.rows,), -1, dtype=torch.long)
        last_len = torch.zeros(self.rows, dtype=torch.long)
        for b, (blocks, length) in enumerate(zip(tables, lengths)):
            used = -(-length // bs)
            if used > len(blocks):
                raise ValueError(f"row {b}: {length} keys need {used} blocks, got {len(blocks)}")
            n[b] = used
            table[b, : len(blocks)] = torch.tensor(blocks, dtype=torch.int32)
            if used:
                last_page[b] = blocks[used - 1]
                last_len[b] = length - (used - 1) * bs
        self.num_blocks.copy_(n)
        self.table.view(self.rows, self.width).copy_(table)
        self.last_page.copy_(last_page)
        self.last_len.copy_(last_len)
        self.cols = int(n.max()) if self.rows else 0

    def lengths(self) -> Tensor:
        """Keys per row [rows] (int64): (num_blocks - 1) x block_size + last_len, 0 for none."""
        n = self.num_blocks.long()
        return torch.where(n > 0, (n - 1) * self.block_size + self.last_len, 0)


def paged_decode_attention(
    q: Tensor, k_pool: Tensor, v_pool: Tensor, mask: PagedDecodeMask
) -> Tensor:
    """q [rows, heads, head_dim] (one token per row) attending over its blocks of the pool
    k_pool/v_pool [1, kv_heads, pool_tokens, head_dim], as `mask` holds them; returns [rows,
    heads, head_dim]. Under torch.compile: flex_attention with the paged block mask (the pool is one
    key batch row every query row shares), which lowers to flex decoding's kernel: query heads of a
    KV head packed in one tile, only the row's blocks read. Eagerly (CPU, and the CUDA reference):
    each row's blocks gathered into a dense [rows, kv_heads, mask.cols x block_size, head_dim]
    and SDPA with a boolean mask of its key count (rows with no keys give 0)."""
    gqa = q.shape[1] != k_pool.shape[1]
    if torch.compiler.is_compiling():
        out = flex_attention(
            q.unsqueeze(2), k_pool, v_pool, block_mask=mask.block_mask, enable_gqa=gqa
        )
        return out.squeeze(2)
    bs, cols = mask.block_size, max(mask.cols, 1)
    table = mask.table.view(mask.rows, mask.width)[:, :cols].long()
    slots = (table[:, :, None] * bs + torch.arange(bs, device=q.device)).view(mask.rows, -1)
    keys = k_pool[0][:, slots].transpose(0, 1)  # [rows, kv_heads, max_blocks x bs, head_dim]
    values = v_pool[0][:, slots].transpose(0, 1)
    lengths = mask.lengths()
    allowed = torch.arange(slots.shape[1], device=q.device) < lengths[:, None]
    out = F.scaled_dot_product_attention(
        q.unsqueeze(2), keys, values, attn_mask=allowed[:, None, None, :], enable_gqa=gqa
    ).squeeze(2)
    return torch.where((lengths > 0)[:, None, None], out, 0.0)


def chunk_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cu_q: Tensor,
    cu_k: Tensor,
    q_offsets: list[int],
    k_offsets: list[int],
    max_q: int,
    max_k: int,
) -> Tensor:
    """Causal attention of packed prompt chunks over their requests' keys so far: chunk i's
    queries q[q_offsets[i]:q_offsets[i+1]] ([T, heads, head_dim] in all) are the last positions
    of its keys k[k_offsets[i]:k_offsets[i+1]] ([L, kv_heads, head_dim], the request's positions
    from 0 to the chunk's end), so query j of a chunk of n sees its first (keys - n + j + 1) keys
    (causal, aligned at the bottom right). cu_q, cu_k: the same offsets as int32 on q's device;
    max_q, max_k: the longest chunk and key run. A whole prompt is the chunk whose keys are its own
    tokens. CUDA fp16/bf16: FlashAttention-2's varlen kernel (its causal mask is aligned at the
    bottom right when there are more keys than queries); elsewhere SDPA once per chunk."""
    if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        return torch.ops.aten._flash_attention_forward(
            q, k, v, cu_q, cu_k, max_q, max_k, 0.0, True, False
        )[0]
    out = []
    for i in range(len(q_offsets) - 1):
        qs, qe, ks, ke = q_offsets[i], q_offsets[i + 1], k_offsets[i], k_offsets[i + 1]
        n, m = qe - qs, ke - ks
        qi = q[qs:qe].transpose(0, 1).unsqueeze(0)
        ki, vi = (t[ks:ke].transpose(0, 1).unsqueeze(0) for t in (k, v))
        allowed = (
            torch.arange(m, device=q.device)[None, :]
            <= torch.arange(m - n, m, device=q.device)[:, None]
        )
        yi = F.scaled_dot_product_attention(qi, ki, vi, attn_mask=allowed, enable_gqa=True)
        out.append(yi[0].transpose(0, 1))
    return torch.cat(out)


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

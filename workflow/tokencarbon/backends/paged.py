"""The paged KV cache of the continuous-batching engine (serving.py): one pool of fixed-size blocks
per layer, a block allocator, and the pure arithmetic the OOM probe and the engine share (how many
blocks a pool of so many bytes holds, how many requests of given lengths fit it, how many bytes the
pool gets under a gpu_memory_utilization).

Layout. Each layer's K and V are one tensor each, [1, kv_heads, (num_blocks + 1) x block_size,
head_dim]: block b holds positions [b x block_size, (b + 1) x block_size) of the token axis, for
every KV head. A request's block table lists its blocks in the order of its positions: its position
p lives in block table[p // block_size] at offset p % block_size. The extra last block is the
scratch block: writes of idle decode rows and padding land there and nothing reads it. The pool is
one batch row of a flex_attention key tensor, which every query row shares (attention.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from tokencarbon.errors import ConfigError
from tokencarbon.models import Architecture, kv_cache_bytes
from tokencarbon.quantization import NONE, Quantization

# Tokens per block. 64 is flex decoding's key tile on Hopper (BLOCK_N, torch/_inductor/
# template_heuristics/triton.py get_flex_decode_configs): a smaller block would shrink the tile
# (the kernel caps BLOCK_N at the block size), a larger one strands more of each request's last
# block (block_size / 2 positions on average).
DEFAULT_BLOCK_SIZE = 64
# Block sizes must be multiples of this: flex decoding's smallest key tile (16) must divide them.
BLOCK_SIZE_MULTIPLE = 16
# vLLM's default share of the device memory the engine may use (weights, activations, KV pool).
DEFAULT_GPU_MEMORY_UTILIZATION = 0.9


def kv_bytes_per_token(arch: Architecture, dtype: str) -> int:
    """Bytes of K and V one token occupies over all layers: 2 x layers x kv_heads x head_dim x the
    dtype's bytes (models.kv_cache_bytes of one position). Llama-2-7B float16: 2 x 32 x 32 x 128 x
    2 = 524,288 B (512 KiB); Llama-3.1-8B bfloat16: 2 x 32 x 8 x 128 x 2 = 131,072 B (128 KiB)."""
    return kv_cache_bytes(arch, 1, 1, dtype)


def check_block_size(block_size: int) -> None:
    """ConfigError unless block_size is a positive multiple of BLOCK_SIZE_MULTIPLE."""
    if type(block_size) is not int or block_size < 1 or block_size % BLOCK_SIZE_MULTIPLE:
        raise ConfigError(
            f"block_size={block_size!r}; must be a positive multiple of {BLOCK_SIZE_MULTIPLE} "
            f"tokens (flex decoding's smallest key tile), e.g. {DEFAULT_BLOCK_SIZE}"
        )


def blocks_for(tokens: int, block_size: int) -> int:
    """Blocks that hold `tokens` positions: ceil(tokens / block_size)."""
    return -(-tokens // block_size)


def kv_positions(prompt_len: int, output_len: int) -> int:
    """KV positions a request writes by its end: its prompt and every output token but the last,
    which is never fed back (prompt_len + output_len - 1)."""
    return prompt_len + output_len - 1


@dataclass(frozen=True)
class PoolSize:
    """A pool of num_blocks blocks of block_size tokens, bytes_per_block bytes each (all layers,
    K and V)."""

    block_size: int
    num_blocks: int
    bytes_per_block: int

    @property
    def tokens(self) -> int:
        return self.num_blocks * self.block_size

    @property
    def bytes(self) -> int:
        return self.num_blocks * self.bytes_per_block


def pool_size(
    arch: Architecture,
    dtype: str,
    pool_bytes: int,
    block_size: int = DEFAULT_BLOCK_SIZE,
    quantization: Quantization = NONE,
) -> PoolSize:
    """The blocks a KV pool of pool_bytes bytes holds: floor(pool_bytes / (block_size x
    kv_bytes_per_token)). pool_bytes: bytes of device memory given to the pool (K and V of every
    layer); block_size: tokens per block. quantization: the model's weight-only scheme, which
    leaves K and V in `dtype` (so it does not change the result; it is taken so callers pass what
    the cell runs). Raises ConfigError for a bad block size or negative pool_bytes.

    Llama-2-7B float16, 40 GiB, blocks of 16: 42,949,672,960 / (16 x 524,288) = 5,120 blocks,
    81,920 tokens (tests/test_paged.py by hand)."""
    check_block_size(block_size)
    if pool_bytes < 0:
        raise ConfigError(f"pool_bytes={pool_bytes!r}; must be >= 0")
    del quantization  # weight-only: K and V stay in dtype
    per_block = block_size * kv_bytes_per_token(arch, dtype)
    return PoolSize(block_size, int(pool_bytes) // per_block, per_block)


@dataclass(frozen=True)
class SeqsFit:
    """How many requests of one length a pool holds at once, each to its last token."""

    max_num_seqs: int  # requests that fit together (0: not even one)
    blocks_per_request: int  # blocks one request holds at its end
    tokens_in_flight: int  # prompt + output tokens of max_num_seqs such requests
    kv_tokens_in_flight: int  # KV positions they hold at their end (each prompt + output - 1)
    pool: PoolSize


def max_num_seqs_fitting(
    arch: Architecture,
    dtype: str,
    pool_bytes: int,
    prompt_len: int,
    output_len: int,
    block_size: int = DEFAULT_BLOCK_SIZE,
    quantization: Quantization = NONE,
) -> SeqsFit:
    """The largest max_num_seqs whose requests of prompt_len + output_len tokens all fit a pool of
    pool_bytes bytes at once, each holding the blocks of its kv_positions (prompt_len +
    output_len - 1) at its end: floor(num_blocks / blocks_for(kv_positions, block_size)), with
    num_blocks from pool_size. At that max_num_seqs no request is ever preempted whatever the
    order of their steps. pool_bytes: bytes; prompt_len, output_len: tokens (>= 1 each). Raises
    ConfigError for lengths < 1 (and as pool_size does).

    Llama-2-7B float16, 40 GiB, blocks of 16, 1,000 + 1,000 tokens: 1,999 positions = 125 blocks,
    5,120 // 125 = 40 requests, 80,000 tokens in flight (tests/test_paged.py by hand)."""
    if (
        type(prompt_len) is not int
        or type(output_len) is not int
        or min(prompt_len, output_len) < 1
    ):
        raise ConfigError(
            f"prompt_len={prompt_len!r}, output_len={output_len!r}; both must be integers >= 1"
        )
    pool = pool_size(arch, dtype, pool_bytes, block_size, quantization)
    per_request = blocks_for(kv_positions(prompt_len, output_len), block_size)
    n = pool.num_blocks // per_request
    return SeqsFit(
        max_num_seqs=n,
        blocks_per_request=per_request,
        tokens_in_flight=n * (prompt_len + output_len),
        kv_tokens_in_flight=n * kv_positions(prompt_len, output_len),
        pool=pool,
    )


def pool_bytes_under_utilization(
    total_bytes: int, utilization: float, used_bytes: int, activation_bytes: int
) -> int:
    """Bytes left for the KV pool when the engine may use `utilization` of the device's
    total_bytes (vLLM's gpu_memory_utilization: the share for weights, activations and the KV
    pool together): utilization x total_bytes - used_bytes - activation_bytes, where used_bytes is
    the device memory in use before the pool exists (weights, CUDA context and workspaces, anything
    else on the device) and activation_bytes the transient peak of the largest step (measured by a
    profiling step). Raises ConfigError when utilization is outside (0, 1] or nothing is left,
    naming the numbers."""
    if not (isinstance(utilization, (int, float)) and 0 < utilization <= 1):
        raise ConfigError(f"gpu_memory_utilization={utilization!r}; must lie in (0, 1]")
    left = int(math.floor(utilization * total_bytes)) - used_bytes - activation_bytes
    if left <= 0:
        raise ConfigError(
            f"gpu_memory_utilization={utilization} of {total_bytes} B leaves {left} B for the KV "
            f"pool after {used_bytes} B in use and {activation_bytes} B of step activations; raise "
            "it or free device memory"
        )
    return left


class BlockAllocator:
    """The free blocks of a pool of num_blocks blocks (0 .. num_blocks - 1), handed out and taken
    back whole. Host-side only: the engine's schedule decides every block before the step runs."""

    def __init__(self, num_blocks: int):
        if type(num_blocks) is not int or num_blocks < 1:
            raise ConfigError(f"num_blocks={num_blocks!r}; must be an integer >= 1")
        self.num_blocks = num_blocks
        # a stack, lowest block on top: a fresh pool hands out 0, 1, 2, ...
        self._free = list(range(num_blocks - 1, -1, -1))
        self._taken = bytearray(num_blocks)  # 1 where a block is handed out

    @property
    def num_free(self) -> int:
        return len(self._free)

    def allocate(self, n: int) -> list[int] | None:
        """n free blocks (taken), or None (nothing taken) when fewer than n are free."""
        if n > len(self._free):
            return None
        if n == 0:
            return []
        taken = self._free[-n:]
        del self._free[-n:]
        taken.reverse()
        for b in taken:
            self._taken[b] = 1
        return taken

    def free(self, blocks: list[int]) -> None:
        """Give blocks back. ValueError for a block outside the pool or one already free (a double
        free would hand one block to two requests)."""
        for i, b in enumerate(blocks):
            if not (0 <= b < self.num_blocks and self._taken[b]):
                for undo in blocks[:i]:  # all or nothing
                    self._taken[undo] = 1
                raise ValueError(f"block {b} is not an allocated block of this pool")
            self._taken[b] = 0
        self._free.extend(reversed(blocks))


class KVPool:
    """Per layer (k, v), each [1, kv_heads, (num_blocks + 1) x block_size, head_dim] in the model
    dtype on `device`, zeroed; block num_blocks is the scratch block (module docstring)."""

    def __init__(
        self,
        arch: Architecture,
        num_layers: int,
        num_blocks: int,
        block_size: int,
        dtype: torch.dtype,
        device: torch.device,
    ):
        check_block_size(block_size)
        self.num_blocks, self.block_size = num_blocks, block_size
        self.scratch_block = num_blocks
        self.tokens = (num_blocks + 1) * block_size
        shape = (1, arch.num_kv_heads, self.tokens, arch.head_dim)
        self.layers = [
            (
                torch.zeros(shape, dtype=dtype, device=device),
                torch.zeros(shape, dtype=dtype, device=device),
            )
            for _ in range(num_layers)
        ]

    @property
    def scratch_slot(self) -> int:
        """A token slot of the scratch block (where idle rows write)."""
        return self.scratch_block * self.block_size

"""The probe's memory models: the bytes a static batch of b requests, or a serving engine of n
slots, needs on a device, worked out from the architecture (weights as stored, KV cache, token
buffers, the prefill's masks, inputs and activations). The search predicts each limit from them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tokencarbon.backends.static import CACHE_ALIGN
from tokencarbon.errors import ConfigError
from tokencarbon.models import (
    DTYPE_BYTES,
    Architecture,
    activation_bytes,
    kv_cache_bytes,
    weight_bytes,
)
from tokencarbon.quantization import NONE, Quantization

BYTES_PER_GB = 1e9


@dataclass(frozen=True)
class MemoryModel:
    """Bytes an engine needs for size b (a static batch, or max_num_seqs): need(b) = fixed_bytes +
    per(b), per nondecreasing in b and per(0) = 0."""

    fixed_bytes: int
    per: Callable[[int], int]

    def need(self, size: int) -> int:
        return self.fixed_bytes + self.per(size)


def _cache_len(prompt_len: int, output_len: int, align: int) -> int:
    return -(-(prompt_len + output_len) // align) * align


def engine_fixed_bytes(arch: Architecture, dtype: str, quantization: Quantization = NONE) -> int:
    """What an engine holds whatever its batch: the weights as stored (models.weight_bytes) plus,
    for RoPE models, the cos and sin tables (2 x max_positions x head_dim in dtype; model.py
    Decoder.set_rope). Raises ConfigError for an unknown dtype."""
    rope = 2 * arch.max_positions * arch.head_dim * DTYPE_BYTES.get(dtype, 0)
    return weight_bytes(arch, dtype, quantization) + (rope if arch.rope_theta is not None else 0)


def static_request_bytes(arch: Architecture, dtype: str, prompt_len: int, output_len: int) -> int:
    """Bytes one request adds to a static batch of prompt_len prompt tokens whose KV cache is
    reserved for output_len more (backends/static.py TorchEngine.run_batch), at the prefill's peak:

      KV cache          kv_cache_bytes over cache_len = prompt + output rounded up to CACHE_ALIGN
      token buffer      cache_len int64 (_out)
      prefill masks     T x T bool (allowed) + T x T additive in dtype + (num_heads / num_kv_heads
                        > 1: Decoder.forward's repeat for grouped-query attention) group x T x T
      prefill inputs    tokens and positions, T int64 each; RoPE cos and sin, 2 x T x head_dim
      activations       models.activation_bytes over T tokens (eager attention: an upper end)

    with T = prompt_len. Raises ConfigError for an unknown dtype."""
    e = DTYPE_BYTES.get(dtype)
    if e is None:
        raise ConfigError(f"dtype {dtype!r}; valid: {list(DTYPE_BYTES)}")
    t, cache_len = prompt_len, _cache_len(prompt_len, output_len, CACHE_ALIGN)
    group = arch.num_heads // arch.num_kv_heads
    masks = t * t * (1 + e + (group * e if group > 1 else 0))
    inputs = 2 * t * 8 + (2 * t * arch.head_dim * e if arch.rope_theta is not None else 0)
    return (
        kv_cache_bytes(arch, 1, cache_len, dtype)
        + cache_len * 8
        + masks
        + inputs
        + activation_bytes(arch, 1, prompt_len, dtype)
    )


def static_memory_model(
    arch: Architecture, dtype: str, prompt_len: int, output_len: int, quantization=NONE
) -> MemoryModel:
    """need(b) = engine_fixed_bytes + b x static_request_bytes: the static engine's memory model."""
    per_request = static_request_bytes(arch, dtype, prompt_len, output_len)
    return MemoryModel(engine_fixed_bytes(arch, dtype, quantization), lambda b: b * per_request)


def serving_pool_bytes(
    arch, dtype: str, max_num_seqs: int, prompt_len: int, output_len: int
) -> int:
    """What a TorchServingEngine of max_num_seqs slots holds beside its weights while serving
    requests of prompt_len + output_len tokens: its KV pool (every slot sized for the longest
    request, rounded up to KV_BLOCK positions, as slot_engine.SlotEngine.cache_len_for does),
    the generated-token buffer (int64, slots x positions) and the activations of its largest
    prefill step (prompts packed up to MAX_PREFILL_TOKENS; a longer prompt alone;
    models.activation_bytes per packed prompt, eager attention: an upper-end estimate)."""
    from tokencarbon.backends.attention import KV_BLOCK
    from tokencarbon.backends.serving import MAX_PREFILL_TOKENS

    cache_len = _cache_len(prompt_len, output_len, KV_BLOCK)
    packed = min(max_num_seqs, max(1, MAX_PREFILL_TOKENS // prompt_len))
    return (
        kv_cache_bytes(arch, max_num_seqs, cache_len, dtype)
        + max_num_seqs * cache_len * 8
        + activation_bytes(arch, packed, prompt_len, dtype)
    )


def serving_memory_model(
    arch: Architecture, dtype: str, prompt_len: int, output_len: int, quantization=NONE
) -> MemoryModel:
    """The continuous engine's memory model: need(n) = engine_fixed_bytes + serving_pool_bytes of
    n slots. The one place the continuous probe learns what an engine of n requests holds (a paged
    KV pool would answer here)."""
    return MemoryModel(
        engine_fixed_bytes(arch, dtype, quantization),
        lambda n: serving_pool_bytes(arch, dtype, n, prompt_len, output_len) if n else 0,
    )

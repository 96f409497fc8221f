"""Analytical FLOPs and bytes moved per prefill and decode step, from the architecture alone;
the denominators of MFU and MBU. tests/test_flops.py cross-checks them against calflops.

Conventions (one multiply-accumulate = 2 FLOPs):
- Every matmul weight costs 2 FLOPs per token passing it (models.matmul_param_count); the lm_head
  only for positions whose logits are computed. Embedding lookups, norms, biases, activations,
  softmax and residual adds are not counted: they are < 0.1 % of Llama-2-7B's prefill.
- Attention: a query attending to ctx positions costs 2 x q_dim x ctx for QK^T and as much for
  AV, per layer (q_dim = heads x head_dim, the hidden size unless the config sets its own
  head_dim). Under grouped-query attention K/V are shared, but every query head still does its own
  dot products, so q_dim is right for any kv-head count. Under a sliding window (Mistral-7B-v0.1:
  4096) a query attends to at most that many positions.
- Biases (Qwen2's q/k/v, GPT-2's everywhere) are adds, not multiply-accumulates: not counted.
- A request of P prompt tokens and N output tokens is one prefill (which yields output token 1
  from the last position's logits) and N - 1 decode steps; decode step k (k = 1..N-1) feeds
  token P + k - 1 (0-based), which attends to context_len = P + k positions, itself included.
- Only real tokens count: padding in a static batch is wasted work, not useful FLOPs.
- Weight-only quantization (models.<name>.quantization) changes the bytes, not the FLOPs: the
  weights are dequantized (or multiplied by an int4/int8 kernel) against activations in dtype, so
  every multiply-accumulate of the model remains; bytes count the weights as stored.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from tokencarbon.errors import ConfigError
from tokencarbon.models import Architecture, kv_cache_bytes, matmul_param_count, weight_bytes


def _attention_flops(arch: Architecture, attended_positions: int) -> float:
    """QK^T and AV over all layers, for queries that attend to attended_positions in total."""
    return 4.0 * arch.q_dim * arch.num_layers * attended_positions


def _attended(arch: Architecture, first_ctx: int, last_ctx: int) -> int:
    """Positions attended by queries whose contexts are first_ctx..last_ctx (one query each),
    each capped at the sliding window: sum of min(c, window). 0 when last_ctx < first_ctx."""
    if last_ctx < first_ctx:
        return 0
    w = arch.sliding_window if arch.sliding_window is not None else last_ctx
    top = min(last_ctx, w)  # contexts first_ctx..top attend to all of themselves
    full = (first_ctx + top) * (top - first_ctx + 1) // 2 if top >= first_ctx else 0
    capped = last_ctx - max(first_ctx, w + 1) + 1  # contexts beyond the window attend to w each
    return full + max(capped, 0) * w


def _lm_head_flops(arch: Architecture) -> float:
    return 2.0 * arch.hidden_size * arch.vocab_size


def _check_len(name: str, value: int, minimum: int) -> None:
    if value < minimum:
        raise ConfigError(f"{name}={value}; must be >= {minimum}")


def prefill_flops(
    arch: Architecture,
    prompt_len: int,
    *,
    causal: bool = True,
    logits: Literal["last", "all"] = "last",
) -> float:
    """FLOPs of one request's prefill of prompt_len tokens.

    causal=True counts what a causal model needs (token i attends to i + 1 positions, T(T+1)/2 in
    all); causal=False counts the full T^2 score matrix an eager kernel computes before masking,
    which is what calflops reports. logits="last" matches our backend (lm_head on the last
    position only); "all" matches a plain forward pass such as calflops profiles.
    """
    _check_len("prompt_len", prompt_len, 1)
    if logits not in ("last", "all"):
        raise ConfigError(f"logits={logits!r}; valid: 'last', 'all'")
    t = prompt_len
    body = 2.0 * (matmul_param_count(arch) - arch.hidden_size * arch.vocab_size) * t
    head = _lm_head_flops(arch) * (1 if logits == "last" else t)
    attended = _attended(arch, 1, t) if causal else t * t
    return body + head + _attention_flops(arch, attended)


def decode_step_flops(arch: Architecture, context_len: int) -> float:
    """FLOPs of one decode step of one request whose new token attends to context_len positions."""
    _check_len("context_len", context_len, 1)
    return 2.0 * matmul_param_count(arch) + _attention_flops(
        arch, _attended(arch, context_len, context_len)
    )


def decode_flops(arch: Architecture, prompt_len: int, output_len: int) -> float:
    """The N - 1 decode steps of one request, summed in closed form:
    context lengths P+1 .. P+N-1 sum to (N-1) P + N(N-1)/2 (each capped at a sliding window)."""
    _check_len("prompt_len", prompt_len, 1)
    _check_len("output_len", output_len, 1)
    steps = output_len - 1
    attended = _attended(arch, prompt_len + 1, prompt_len + steps)
    return steps * 2.0 * matmul_param_count(arch) + _attention_flops(arch, attended)


def request_flops(arch: Architecture, prompt_len: int, output_len: int) -> float:
    """Causal prefill with last-position logits, then the decode steps: what our backend computes."""
    return prefill_flops(arch, prompt_len) + decode_flops(arch, prompt_len, output_len)


def batch_prefill_flops(arch: Architecture, prompt_lens: Sequence[int]) -> float:
    """Useful prefill FLOPs of a static batch: each request's real (unpadded) prompt."""
    return sum(prefill_flops(arch, p) for p in prompt_lens)


def batch_decode_flops(
    arch: Architecture, prompt_lens: Sequence[int], output_lens: Sequence[int]
) -> float:
    """Useful decode FLOPs of a static batch; a request stops counting after its own output_len."""
    _check_same_length(prompt_lens, output_lens)
    return sum(decode_flops(arch, p, n) for p, n in zip(prompt_lens, output_lens))


def batch_flops(
    arch: Architecture, prompt_lens: Sequence[int], output_lens: Sequence[int]
) -> float:
    return batch_prefill_flops(arch, prompt_lens) + batch_decode_flops(
        arch, prompt_lens, output_lens
    )


def _check_same_length(prompt_lens: Sequence[int], output_lens: Sequence[int]) -> None:
    if len(prompt_lens) != len(output_lens):
        raise ConfigError(
            f"{len(prompt_lens)} prompt lengths but {len(output_lens)} output lengths; "
            "need one of each per request"
        )


def prefill_bytes(
    arch: Architecture, prompt_lens: Sequence[int], dtype: str, quantization=None
) -> int:
    """Bytes a batch's prefill must move at least: every weight once, as stored (weight_bytes:
    a weight-only quantization's int4/int8 values and scales; None: unquantized), plus the K/V
    (in dtype) of every real prompt token written to the cache. Activations are assumed to stay
    on chip."""
    return weight_bytes(arch, dtype, quantization) + kv_cache_bytes(
        arch, 1, sum(prompt_lens), dtype
    )


def decode_step_bytes(
    arch: Architecture, context_lens: Sequence[int], dtype: str, quantization=None
) -> int:
    """Bytes one decode step of a batch must move at least: every weight once as stored
    (weight_bytes with the model's weight-only quantization, None: unquantized;
    the usual MBU convention, though only the batch's rows of an untied embedding are gathered),
    each request's cache of context_len positions read (the new token's K/V written first, then
    read back with the rest, at most a sliding window of it) and the new K/V written, 1 position
    per request."""
    for c in context_lens:
        _check_len("context_len", c, 1)
    positions = sum(_attended(arch, c, c) for c in context_lens) + len(context_lens)
    return weight_bytes(arch, dtype, quantization) + kv_cache_bytes(arch, 1, positions, dtype)

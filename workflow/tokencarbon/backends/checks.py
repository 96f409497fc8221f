"""The request checks every engine runs before any device work: torch's static batches and
continuous batching against the architecture, TensorRT-LLM's runner against its built engine's
limits. One definition, so all refuse the same inputs with the same messages."""

from __future__ import annotations

import math
from collections.abc import Sequence

from tokencarbon.backends import Request
from tokencarbon.errors import InputError
from tokencarbon.models import Architecture


def token_limit(arch: Architecture) -> tuple[int, str]:
    """(most prompt + output tokens one request may hold, what sets that limit). The torch
    backend attends over the whole context, so a sliding window caps it too (within the window
    full attention is what the model computes)."""
    if arch.sliding_window is not None and arch.sliding_window < arch.max_positions:
        return arch.sliding_window, f"{arch.name}'s sliding_window {arch.sliding_window}"
    return arch.max_positions, f"{arch.name}'s max_positions {arch.max_positions}"


def check_prompts(
    prompts: Sequence[Sequence[int]],
    output_lengths: Sequence[int],
    *,
    max_tokens: int,
    limit_source: str,
    vocab_size: int,
    labels: Sequence[str] | None = None,
) -> None:
    """InputError naming the first bad request (labels[i], default "request i") unless there is at
    least one request, one output length per prompt, every prompt and output length >= 1, every
    request's prompt + output tokens at most max_tokens (limit_source says what sets it, e.g.
    "llama-2-7b's max_positions 4096") and every token id in [0, vocab_size)."""
    if not prompts or len(prompts) != len(output_lengths):
        raise InputError(
            f"batch of {len(prompts)} prompts and {len(output_lengths)} output lengths; "
            "expected one output length per prompt, at least one request"
        )
    for i, (prompt, n_out) in enumerate(zip(prompts, output_lengths)):
        label = labels[i] if labels is not None else f"request {i}"
        if not prompt or type(n_out) is not int or n_out < 1:
            raise InputError(
                f"{label}: {len(prompt)} prompt tokens, {n_out!r} output tokens; both must be >= 1"
            )
        if len(prompt) + n_out > max_tokens:
            raise InputError(
                f"{label}: {len(prompt)} prompt + {n_out} output tokens exceed {limit_source}"
            )
        if min(prompt) < 0 or max(prompt) >= vocab_size:
            raise InputError(f"{label}: token ids must lie in [0, {vocab_size})")


def check_batch(
    arch: Architecture,
    prompts: Sequence[Sequence[int]],
    output_lengths: Sequence[int],
    labels: Sequence[str] | None = None,
) -> None:
    """check_prompts against the architecture: at most token_limit(arch) tokens per request, token
    ids below arch.vocab_size."""
    limit, what = token_limit(arch)
    check_prompts(
        prompts,
        output_lengths,
        max_tokens=limit,
        limit_source=what,
        vocab_size=arch.vocab_size,
        labels=labels,
    )


def check_requests(
    arch: Architecture, requests: Sequence[Request], limit: tuple[int, str] | None = None
) -> None:
    """check_batch over a served request set, plus: request ids unique, arrival_s finite and >= 0.
    Errors name the request by its id. limit: (max prompt + output tokens, what sets it); default
    token_limit(arch) (an engine that runs sliding windows itself passes the max_positions)."""
    if not requests:
        raise InputError("no requests to serve; expected at least one Request")
    seen: set[str] = set()
    for r in requests:
        if r.request_id in seen:
            raise InputError(f"request id {r.request_id!r} appears twice; ids must be unique")
        seen.add(r.request_id)
        arrival = r.arrival_s
        if not (isinstance(arrival, (int, float)) and math.isfinite(arrival) and arrival >= 0):
            raise InputError(
                f"request {r.request_id!r}: arrival_s={r.arrival_s!r}; must be a finite number of "
                "seconds >= 0 after the start of serving"
            )
    max_tokens, limit_source = limit if limit is not None else token_limit(arch)
    check_prompts(
        [r.prompt for r in requests],
        [r.output_len for r in requests],
        max_tokens=max_tokens,
        limit_source=limit_source,
        vocab_size=arch.vocab_size,
        labels=[f"request {r.request_id!r}" for r in requests],
    )

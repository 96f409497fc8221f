"""Inference backends share one interface: an engine whose run_batch(prompts, output_lengths) serves
one static batch and returns a BatchResult, its token counts and timing points (tables.BATCHES)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class BatchResult:
    n_requests: int
    input_tokens: int  # real prompt tokens, padding excluded
    output_tokens: int  # sum of the requests' own output lengths
    padded_input_len: int
    max_output_tokens: int
    start_ns: int  # time.monotonic_ns() when the batch's device work starts
    first_token_ns: int  # prefill done: every request has its first token
    end_ns: int  # every request has all of its tokens
    start_wall_ns: int  # time.time_ns() at the same three points, to align with power samples
    first_token_wall_ns: int
    end_wall_ns: int
    token_ids: tuple[tuple[int, ...], ...] | None = None  # per request, its own length; not timed


class Engine(Protocol):
    """What a cell calls: torch_backend.TorchEngine and tensorrt_llm.TrtllmEngine."""

    def run_batch(self, prompts: list[list[int]], output_lengths: list[int]) -> BatchResult: ...

    def peak_memory_bytes(self) -> int: ...

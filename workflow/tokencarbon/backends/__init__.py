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
    """What a cell calls: static.TorchEngine, transformers_backend.TransformersEngine and
    tensorrt_llm.TrtllmEngine."""

    def run_batch(self, prompts: list[list[int]], output_lengths: list[int]) -> BatchResult: ...

    def peak_memory_bytes(self) -> int: ...


# ---------------------------------------------------------------- continuous batching (cb cells)


@dataclass(frozen=True)
class Request:
    """One request of a served request set: its prompt, the exact number of tokens it must
    generate (EOS ignored, as in static cells) and when it arrives, in seconds after the start of
    serving (0.0 for every request under offline arrivals)."""

    request_id: str
    prompt: tuple[int, ...]
    output_len: int
    arrival_s: float = 0.0


@dataclass(frozen=True)
class RequestRecord:
    """Timing of one served request: tables.REQUESTS (monotonic and wall ns at three points)."""

    request_id: str
    input_tokens: int
    output_tokens: int
    arrival_ns: int
    first_token_ns: int
    finish_ns: int
    arrival_wall_ns: int
    first_token_wall_ns: int
    finish_wall_ns: int
    # times the engine preempted it (gave its KV blocks back to recompute later); None where the
    # engine does not report preemptions (transformers' manager)
    preemptions: int | None = None


@dataclass(frozen=True)
class StepRecord:
    """One engine step: tables.STEPS. request_tokens[i] tokens of request_ids[i] went through it,
    and it generated new_tokens[i] output tokens for it (1 for a decode row and for the chunk that
    ends a prompt, 0 for an earlier chunk or a recomputed prefix; None where unknown)."""

    step_index: int
    kind: str  # "prefill", "decode" or "mixed"
    start_ns: int
    end_ns: int
    start_wall_ns: int
    end_wall_ns: int
    request_ids: tuple[str, ...]
    request_tokens: tuple[int, ...]
    new_tokens: tuple[int, ...] | None = None


@dataclass(frozen=True)
class ServingResult:
    """A request set served by continuous batching. start/end: monotonic and wall ns of the served
    window (start: serving began, the clock of arrivals; end: the last token of the last request).
    steps may be empty where the engine does not expose its steps (transformers' manager); energy
    is then shared among requests as docs/metrics.md states."""

    requests: tuple[RequestRecord, ...]
    steps: tuple[StepRecord, ...]
    start_ns: int
    end_ns: int
    start_wall_ns: int
    end_wall_ns: int
    token_ids: dict[str, tuple[int, ...]] | None = None  # per request id, not timed


class ServingEngine(Protocol):
    """What a continuous-batching cell calls: up to max_num_seqs requests in flight, a finished
    request leaving and a waiting one joining at the next step."""

    def serve(self, requests: list[Request]) -> ServingResult: ...

    def peak_memory_bytes(self) -> int: ...

"""The continuous-batching engine: up to max_num_seqs requests in flight, a finished request leaving
and a waiting one joining at the next step, greedy, every request generating exactly its own output
length (EOS ignored). docs/architecture.md gives the design and the reasons for it.

TorchServingEngine builds the model and one of two engines:

- kv_layout "paged" (the default, PagedEngine): a paged KV pool (paged.py) sized from the device's
  memory (gpu_memory_utilization) or num_blocks; per-request block tables; admission by free blocks;
  preemption by recompute when the pool runs out (paged_schedule.py); chunked prefill within
  max_num_batched_tokens per step, decode rows riding prompt steps (mixed steps); decode-only steps
  replayed as CUDA graphs (one per row bucket), block tables as graph inputs; the host schedules
  step k + 1 while the device runs step k and timestamps steps with CUDA events.
- kv_layout "slots" (SlotEngine): one slot of cache_len positions per request, whole-prompt prefill
  steps, a host sync per step. Kept to compare against until the paged engine is measured at least
  as fast at every concurrency.

The continuous engine's files: this one (TorchServingEngine, the facade), paged_engine.py,
slot_engine.py, serving_steps.py (the layer pieces and step records both engines share),
upload_ring.py and step_clock.py (the paged engine's host-to-device inputs and step timestamps).
Every name other modules import from here stays importable from here.
"""

from __future__ import annotations

import resource
import time

import torch

from tokencarbon.backends import Request, ServingResult
from tokencarbon.backends.model import Decoder, build_model
from tokencarbon.backends.paged import DEFAULT_BLOCK_SIZE, DEFAULT_GPU_MEMORY_UTILIZATION
from tokencarbon.backends.paged_engine import (
    DECODE_BUCKET_FLOOR,
    DEFAULT_MAX_NUM_BATCHED_TOKENS,
    GRAPH_RESERVE_FIXED_BYTES,
    PREEMPTION_MODE,
    STEPS_AHEAD,
    PagedEngine,
    decode_buckets,
    paged_decode_layer,
)
from tokencarbon.backends.serving_steps import GRAPH_WARMUP_STEPS
from tokencarbon.backends.slot_engine import MAX_PREFILL_TOKENS, SlotEngine, decode_layer
from tokencarbon.errors import ConfigError
from tokencarbon.models import Architecture
from tokencarbon.quantization import NONE, Quantization

__all__ = [
    "COMPILE_CACHE_ENTRIES",
    "DECODE_BUCKET_FLOOR",
    "DEFAULT_MAX_NUM_BATCHED_TOKENS",
    "GRAPH_RESERVE_FIXED_BYTES",
    "GRAPH_WARMUP_STEPS",
    "KV_LAYOUTS",
    "MAX_PREFILL_TOKENS",
    "PREEMPTION_MODE",
    "STEPS_AHEAD",
    "PagedEngine",
    "SlotEngine",
    "TorchServingEngine",
    "decode_buckets",
    "decode_layer",
    "paged_decode_layer",
]

# torch.compile's per-function cache: one entry per (model shape, rows) an engine compiles in this
# process; the default (8) would silently fall back to eager past the eighth.
COMPILE_CACHE_ENTRIES = 64
KV_LAYOUTS = ("paged", "slots")


def _raise_compile_cache() -> None:
    config = torch._dynamo.config
    limit = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, limit, max(getattr(config, limit), COMPILE_CACHE_ENTRIES))


def _peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


class TorchServingEngine:
    """serve(requests) -> ServingResult (the ServingEngine protocol). Requests are admitted first
    come, first served, once their arrival time has passed on the engine's clock (0 after the
    start of serving: offline)."""

    def __init__(
        self,
        arch: Architecture,
        dtype: str,
        device: str | torch.device,
        seed: int,
        *,
        max_num_seqs: int,
        checkpoint: str | None = None,
        max_model_len: int | None = None,
        quantization: Quantization = NONE,
        cuda_graphs: bool = True,
        compile_layers: bool | None = None,
        prefill_min_seqs: int | None = None,
        kv_layout: str = "paged",
        gpu_memory_utilization: float = DEFAULT_GPU_MEMORY_UTILIZATION,
        block_size: int = DEFAULT_BLOCK_SIZE,
        num_blocks: int | None = None,
        max_num_batched_tokens: int = DEFAULT_MAX_NUM_BATCHED_TOKENS,
        mixed_steps: bool = True,
        max_prefill_tokens: int = MAX_PREFILL_TOKENS,
    ):
        """max_num_seqs: requests in flight at most. max_model_len: prompt + output tokens of the
        longest request (paged: default the architecture's token limit, checks.token_limit; slots:
        default each request set's longest, which sizes the slots). quantization: weight-only
        scheme applied to the weights once drawn or loaded (build_model); int4_weight_only needs
        dtype bfloat16 on CUDA (ConfigError). cuda_graphs: on CUDA, replay decode steps as CUDA
        graphs (paged: only with compile_layers, else decode steps run eagerly). compile_layers:
        compile the decode layer with torch.compile (default: on CUDA; needed there for flex
        decoding's fused kernel). prefill_min_seqs: while more requests wait
        than rows are free, admit only once this many rows are free, so one step's weight read
        carries several prompts (default max(1, max_num_seqs // 16)). kv_layout: "paged" or
        "slots" (module docstring).

        Paged only: gpu_memory_utilization: the share of the device's memory (total, or the
        per-process cap torch.cuda.set_per_process_memory_fraction set) the engine may use for
        weights, activations and the KV pool together (vLLM's meaning), in (0, 1]; sizes the pool
        on CUDA unless num_blocks is given. block_size: tokens per KV block (a multiple of 16).
        num_blocks: pool blocks, explicit (default on CUDA: from gpu_memory_utilization; on the
        CPU: enough for max_num_seqs requests of each request set's longest, so nothing is
        preempted). max_num_batched_tokens: tokens one step computes (decode rows one each, prompt
        chunks the rest), >= max_num_seqs. mixed_steps: decode rows ride prompt steps (else a step
        is one or the other, at most one prompt step between two decode steps).

        Slots only: max_prefill_tokens: prompt tokens one prefill step packs (a longer prompt goes
        alone). Raises ConfigError naming a bad setting."""
        self.arch, self.dtype, self.device = arch, dtype, torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(
                f"device {device!r}: torch sees no CUDA device; use 'cpu' or a GPU machine"
            )
        if kv_layout not in KV_LAYOUTS:
            raise ConfigError(f"kv_layout={kv_layout!r}; valid: {list(KV_LAYOUTS)}")
        if type(max_num_seqs) is not int or max_num_seqs < 1:
            raise ConfigError(f"max_num_seqs={max_num_seqs!r}; must be an integer >= 1")
        if max_model_len is not None and not 1 <= max_model_len <= arch.max_positions:
            raise ConfigError(
                f"max_model_len={max_model_len!r}; must lie in [1, {arch.name}'s max_positions "
                f"{arch.max_positions}]"
            )
        self.prefill_min_seqs = (
            max(1, max_num_seqs // 16) if prefill_min_seqs is None else prefill_min_seqs
        )
        if not 1 <= self.prefill_min_seqs <= max_num_seqs:
            raise ConfigError(
                f"prefill_min_seqs={prefill_min_seqs!r}; must lie in [1, max_num_seqs "
                f"{max_num_seqs}]"
            )
        self.kv_layout = kv_layout
        self.max_num_seqs = max_num_seqs
        self.quantization = quantization
        graphs = cuda_graphs and self.device.type == "cuda"
        compile_layers = self.device.type == "cuda" if compile_layers is None else compile_layers
        if kv_layout == "paged":
            PagedEngine.check_settings(
                max_num_seqs, gpu_memory_utilization, block_size, num_blocks, max_num_batched_tokens
            )
        elif max_prefill_tokens < 1:
            raise ConfigError(f"max_prefill_tokens={max_prefill_tokens!r}; must be >= 1")
        start = time.perf_counter()
        self.model: Decoder = build_model(arch, dtype, self.device, seed, checkpoint, quantization)
        model_s = time.perf_counter() - start
        if compile_layers:
            _raise_compile_cache()
        common = dict(
            max_num_seqs=max_num_seqs,
            max_model_len=max_model_len,
            prefill_min_seqs=self.prefill_min_seqs,
            cuda_graphs=graphs,
            compile_layers=compile_layers,
        )
        if kv_layout == "paged":
            self.engine = PagedEngine(
                self.model, arch, dtype, self.device, **common,
                gpu_memory_utilization=gpu_memory_utilization, block_size=block_size,
                num_blocks=num_blocks, max_num_batched_tokens=max_num_batched_tokens,
                mixed_steps=mixed_steps,
            )  # fmt: skip
        else:
            self.engine = SlotEngine(
                self.model, arch, dtype, self.device, **common,
                max_prefill_tokens=max_prefill_tokens,
            )  # fmt: skip
        # where the build time goes (seconds; meta.json "engine_parts_s", issue 19): the weights,
        # then the KV layout's own parts (PagedEngine.build_s), the rest of its constructor "other"
        kv_s = time.perf_counter() - start - model_s
        parts = dict(getattr(self.engine, "build_s", {}))
        self.build_s = {"model": model_s, **parts, "kv_other": kv_s - sum(parts.values())}

    @torch.no_grad()
    def serve(self, requests: list[Request]) -> ServingResult:
        """Serve `requests` to completion; every request gets exactly output_len tokens. Raises
        InputError (before any device work) for a request checks.check_requests refuses, one
        longer than max_model_len, or (paged) one whose KV alone needs more blocks than the pool."""
        return self.engine.serve(requests)

    def release(self) -> None:
        """Drop the KV pool, decode state and captured graphs (the weights stay loaded)."""
        self.engine.release()

    def peak_memory_bytes(self) -> int:
        """Peak device memory allocated by torch on CUDA; the process's peak resident set on CPU."""
        return _peak_memory_bytes(self.device)

    def describe(self) -> dict:
        """The settings a cell records beside its numbers (JSON-ready): kv_layout, max_num_seqs,
        and the layout's own (PagedEngine.describe, SlotEngine.describe)."""
        return {
            "kv_layout": self.kv_layout,
            "max_num_seqs": self.max_num_seqs,
        } | self.engine.describe()

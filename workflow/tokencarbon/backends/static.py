"""The static-batch engine (the study's method): prompts left-padded to the longest, every request
generating exactly its own output length (EOS ignored), the batch running until its longest is done,
timed at batch start, first token (end of prefill) and end. CPU runs eagerly; on CUDA the decode step
is replayed as a CUDA graph, with no host sync per token."""

from __future__ import annotations

import contextlib
import resource
import time
from functools import partial

import torch
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from tokencarbon.backends import BatchResult
from tokencarbon.backends.checks import check_batch
from tokencarbon.backends.model import TORCH_DTYPES, build_model
from tokencarbon.errors import ConfigError
from tokencarbon.models import Architecture
from tokencarbon.quantization import NONE, Quantization

# KV cache length is rounded up to this: aligned masks keep SDPA's fused kernels from padding a
# copy every call, and batches of similar length reuse one cache and one captured graph.
CACHE_ALIGN = 64
# Warm-up calls before capture (cuBLAS and SDPA pick and allocate their kernels outside the graph).
GRAPH_WARMUP_STEPS = 3
# A decode step attends over the cache's first `keys` slots, the bucket (a multiple of CACHE_ALIGN,
# at most this many per cache) holding every filled slot: at large batch attention reads the cache,
# and a static cache read whole is mostly empty early in a batch. One CUDA graph per bucket.
MAX_KEY_BUCKETS = 8
# Prefill attention backends: not cuDNN, which builds a plan for every new shape (50 ms to 1 s on an
# H200, inside the timed prefill) while prefill shapes change with every batch. Decode keeps cuDNN:
# its shape is fixed per cache and warmed up before the timed window.
PREFILL_ATTENTION = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def _additive(allowed: Tensor, dtype: torch.dtype) -> Tensor:
    """A boolean attention mask as SDPA's additive form (0 where allowed, -inf elsewhere)."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(
        ~allowed, float("-inf")
    )


class TorchEngine:
    """Serves static batches greedily: prompts left-padded to the longest, every request generating
    exactly its own output length (EOS ignored), the batch running until its longest is done."""

    def __init__(
        self,
        arch: Architecture,
        dtype: str,
        device: str | torch.device,
        seed: int,
        checkpoint: str | None = None,
        pad_token_id: int = 0,
        cuda_graphs: bool = True,
        compile_decode: bool = False,
        quantization: Quantization = NONE,
        min_cache_len: int | None = None,
    ):
        """cuda_graphs: on CUDA, replay the decode step as a graph. compile_decode: get that graph
        from torch.compile(mode="reduce-overhead") instead of a manual capture. Compiling costs
        15-60 s per batch shape for Llama-2-7B, inside the cell, so manual capture is the default.
        Measured on an H100, Llama-2-7B bf16, batch 1, 128-token prompt: manual 151 tok/s,
        compiled 187 tok/s (the fusion of the small elementwise kernels makes the difference).
        quantization: weight-only scheme applied to the weights once drawn or loaded (build_model;
        tokencarbon.quantization); int4_weight_only needs dtype bfloat16 on CUDA (ConfigError).
        min_cache_len: allocate the KV cache at least this many tokens long (a static cell passes its
        batches' largest prompt + output), so that every batch of one size runs in one cache and
        replays the graphs captured for it, where a cache sized per batch was allocated and its
        graphs captured again for almost every batch (the first GPU chunk's GPT-2 Large batch-1
        cell spent 35 s of its 95 s measured phase capturing, benchmarks/results/paper-h100). The
        decode steps attend over the same key buckets either way (key_bucket of the batch's own
        span), so the work measured is the same. Raises ConfigError below 1."""
        self.arch, self.dtype, self.device = arch, dtype, torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(
                f"device {device!r}: torch sees no CUDA device; use 'cpu' or a GPU machine"
            )
        if compile_decode and not (cuda_graphs and self.device.type == "cuda"):
            raise ConfigError("compile_decode=True needs cuda_graphs=True and a CUDA device")
        if not 0 <= pad_token_id < arch.vocab_size:
            raise ConfigError(
                f"pad_token_id {pad_token_id} outside the vocabulary [0, {arch.vocab_size})"
            )
        self.pad_token_id = pad_token_id
        if min_cache_len is not None and (isinstance(min_cache_len, bool) or min_cache_len < 1):
            raise ConfigError(f"min_cache_len={min_cache_len!r}; expected a whole number >= 1")
        self.min_cache_len = min_cache_len or 0
        self.graphs = cuda_graphs and self.device.type == "cuda"
        self.quantization = quantization
        start = time.perf_counter()
        self.model = build_model(arch, dtype, self.device, seed, checkpoint, quantization)
        # where the build and capture time goes (seconds; meta.json "engine_parts_s", issue 19)
        self.build_s: dict[str, float] = {"model": time.perf_counter() - start, "graph_capture": 0.0}
        self.compile_decode = compile_decode
        self._step_fn = self._decode_step
        if compile_decode:
            self._step_fn = torch.compile(self._decode_step, mode="reduce-overhead", fullgraph=True)
        self._shape: tuple[int, int] | None = None  # (batch, cache_len) of the allocated cache
        # Manual capture: one graph per key bucket of the allocated cache, captured when a batch
        # first needs it (before its timed window), sharing one memory pool.
        self._graphs: dict[int, torch.cuda.CUDAGraph] = {}
        # One stream for every warm-up and capture: cuBLAS keeps a workspace per stream, so a new
        # stream per batch shape would hold on to another 32 MiB each time.
        self._capture_stream = torch.cuda.Stream(self.device) if self.graphs else None

    # Static decode state (shape (batch, cache_len)), read and written in place by _decode_step:
    #   _token [B, 1] token fed next; _pos [B, 1] its position; _slot [1] its cache slot;
    #   _pad [B] left padding per request; _out [B, cache_len] token generated into each slot.
    def _allocate(self, batch: int, cache_len: int) -> None:
        if self._shape == (batch, cache_len):
            return
        self.release()
        kv_shape = (batch, self.arch.num_kv_heads, cache_len, self.arch.head_dim)
        for layer in self.model.layers:
            layer.attn.k_cache = torch.zeros(
                kv_shape, dtype=TORCH_DTYPES[self.dtype], device=self.device
            )
            layer.attn.v_cache = torch.zeros(
                kv_shape, dtype=TORCH_DTYPES[self.dtype], device=self.device
            )
        new = partial(torch.zeros, dtype=torch.long, device=self.device)
        self._token, self._pos, self._slot = new(batch, 1), new(batch, 1), new(1)
        self._pad, self._out = new(batch), new(batch, cache_len)
        self._key_slots = torch.arange(cache_len, device=self.device)
        self._shape = (batch, cache_len)
        if self.compile_decode:
            for t in [self._token, self._pos, self._slot, self._pad, self._out, self._key_slots]:
                torch._dynamo.mark_static_address(t)
            self._capture(None)

    def key_bucket(self, slot: int, span: int | None = None) -> int | None:
        """Cache slots a decode step feeding the token at `slot` attends over: the smallest multiple
        of the bucket size above `slot`, at most `span` (buckets: CACHE_ALIGN multiples, at most
        MAX_KEY_BUCKETS per span). span: the batch's own prompt + output slots, CACHE_ALIGN-rounded
        (default: the allocated cache, which min_cache_len may make longer). None (the whole cache)
        under compile_decode: one compiled shape per cache."""
        if self.compile_decode:
            return None
        span = self._shape[1] if span is None else span
        size = -(-span // MAX_KEY_BUCKETS // CACHE_ALIGN) * CACHE_ALIGN
        return min(span, (slot // size + 1) * size)

    def _capture(self, keys: int | None) -> None:
        # Warm-up and capture run on junk state: the cache slots they write are either overwritten
        # by the batch's prefill and decode or hidden by its mask, and run_batch resets the state.
        stream = self._capture_stream
        stream.wait_stream(torch.cuda.current_stream(self.device))
        # compile_decode compiles here (first calls of a shape); coordinate-descent tuning, as in
        # gpt-fast, took Llama-2-7B bf16 batch-1 decode on an H100 from 172 to 185 tok/s.
        tuning = contextlib.nullcontext()
        if self.compile_decode:
            from torch._inductor import config  # about 1 s to import: only compile_decode pays it

            tuning = config.patch(coordinate_descent_tuning=True)
        with torch.cuda.stream(stream), torch.no_grad(), tuning:
            for _ in range(GRAPH_WARMUP_STEPS):
                self._step_fn(keys)
                self._slot.zero_()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        if not self.compile_decode:
            graph = torch.cuda.CUDAGraph()
            # One pool for all buckets: graphs replay one at a time and keep nothing in the pool
            # past their step (the state they carry over lives in the static buffers).
            pool = next(iter(self._graphs.values())).pool() if self._graphs else None
            with torch.cuda.graph(graph, pool=pool, stream=stream), torch.no_grad():
                self._decode_step(keys)
            self._graphs[keys] = graph

    def release(self) -> None:
        """Drop the KV cache, decode state and captured graphs (the weights stay loaded); their
        memory goes back to torch's caching allocator, for the next shape to reuse."""
        self._graphs = {}
        for layer in self.model.layers:
            layer.attn.k_cache = layer.attn.v_cache = None
        self._token = self._pos = self._slot = self._pad = self._out = self._key_slots = None
        self._shape = None

    def _decode_step(self, keys: int | None = None) -> None:
        """One token for every request, reading and writing only the static state: a CUDA graph
        replays it with no host work and no sync. It attends over cache slots [0, keys)."""
        key_slots = self._key_slots[:keys]
        allowed = (key_slots >= self._pad[:, None]) & (key_slots <= self._slot)
        mask = _additive(allowed[:, None, None, :], TORCH_DTYPES[self.dtype])
        next_token = self.model(self._token, self._pos, mask, self._slot, keys).argmax(
            dim=-1, keepdim=True
        )
        self._token.copy_(next_token)
        self._out.index_copy_(1, self._slot + 1, next_token)
        self._slot.add_(1)
        # Past its own output length a request keeps decoding (uncounted); clamping keeps its
        # positions inside the model's table without touching its counted tokens.
        self._pos.add_(1).clamp_(max=self.arch.max_positions - 1)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @torch.no_grad()
    def run_batch(
        self,
        prompts: list[list[int]],
        output_lengths: list[int],
        *,
        reserve_output_len: int = 0,
    ) -> BatchResult:
        """reserve_output_len: size the KV cache, and capture the decode graphs, for at least this
        many output tokens (the OOM probe reserves the full output length but decodes only a few
        steps: decode replays static buffers, so the batch's peak memory is reached after its first
        steps; a cell's warm-up does the same for its first batch, so that batch's measured run
        captures nothing)."""
        check_batch(self.arch, prompts, [max(n, reserve_output_len) for n in output_lengths])
        n, lens = len(prompts), [len(p) for p in prompts]
        padded_len, max_out = max(lens), max(output_lengths)
        reserved = max(max_out, reserve_output_len)
        span = -(-(padded_len + reserved) // CACHE_ALIGN) * CACHE_ALIGN
        # one cache for every batch of this size where min_cache_len covers them (its graphs kept)
        cache_len = max(span, -(-self.min_cache_len // CACHE_ALIGN) * CACHE_ALIGN)
        self._allocate(n, cache_len)
        # decode step i feeds the token at slot padded_len + i
        step_keys = [self.key_bucket(padded_len + i, span) for i in range(max_out - 1)]
        if self.graphs and not self.compile_decode:
            # With a reservation (the OOM probe, a cell's warm-up), every bucket the reserved output
            # reaches: the probe's memory peak, and no capture left for the measured batch.
            needed = {self.key_bucket(padded_len + i, span)
                      for i in range(max(max_out, reserved) - 1)}  # fmt: skip
            start = time.perf_counter()
            for keys in sorted(needed - set(self._graphs)):
                self._capture(keys)
            self.build_s["graph_capture"] += time.perf_counter() - start

        tokens = torch.tensor(
            [[self.pad_token_id] * (padded_len - k) + p for p, k in zip(prompts, lens)],
            device=self.device,
        )
        pad = torch.tensor([padded_len - k for k in lens], device=self.device)
        slots = torch.arange(padded_len, device=self.device)
        positions = (slots[None, :] - pad[:, None]).clamp(min=0)
        # Causal, pads never attended; a pad row attends to itself so that no row is fully masked
        # (a fully masked row is NaN, and NaN values leak through zero attention weights).
        allowed = (slots[None, :] <= slots[:, None]) & (slots[None, None, :] >= pad[:, None, None])
        allowed |= torch.eye(padded_len, dtype=torch.bool, device=self.device)
        prefill_mask = _additive(allowed[:, None], TORCH_DTYPES[self.dtype])
        self._pad.copy_(pad)
        first_positions = torch.tensor(lens, device=self.device)[:, None]  # of each first new token
        self._sync()

        start_ns, start_wall_ns = time.monotonic_ns(), time.time_ns()
        with sdpa_kernel(PREFILL_ATTENTION):
            first = self.model(tokens, positions, prefill_mask).argmax(dim=-1, keepdim=True)
        self._token.copy_(first)
        self._out[:, padded_len : padded_len + 1] = first
        self._pos.copy_(first_positions)
        self._slot.fill_(padded_len)
        self._sync()
        first_token_ns, first_token_wall_ns = time.monotonic_ns(), time.time_ns()
        for keys in step_keys:
            if self._graphs:
                self._graphs[keys].replay()
            else:
                self._step_fn(keys)
        self._sync()
        end_ns, end_wall_ns = time.monotonic_ns(), time.time_ns()

        generated = self._out[:, padded_len : padded_len + max_out].tolist()
        return BatchResult(
            n_requests=n,
            input_tokens=sum(lens),
            output_tokens=sum(output_lengths),
            padded_input_len=padded_len,
            max_output_tokens=max_out,
            start_ns=start_ns,
            first_token_ns=first_token_ns,
            end_ns=end_ns,
            start_wall_ns=start_wall_ns,
            first_token_wall_ns=first_token_wall_ns,
            end_wall_ns=end_wall_ns,
            token_ids=tuple(tuple(row[:k]) for row, k in zip(generated, output_lengths)),
        )

    def peak_memory_bytes(self) -> int:
        """Peak device memory allocated by torch on CUDA; the process's peak resident set on CPU."""
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device)
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB

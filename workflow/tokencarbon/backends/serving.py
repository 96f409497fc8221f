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
"""

from __future__ import annotations

import gc
import heapq
import resource
import time
from collections import deque
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from tokencarbon.backends import Request, RequestRecord, ServingResult, StepRecord
from tokencarbon.backends.attention import (
    KV_BLOCK,
    DecodeMask,
    PagedDecodeMask,
    chunk_attention,
    decode_attention,
    paged_decode_attention,
    prefill_attention,
)
from tokencarbon.backends.checks import check_requests, token_limit
from tokencarbon.backends.model import TORCH_DTYPES, Block, Decoder, build_model, rotate
from tokencarbon.backends.paged import (
    DEFAULT_BLOCK_SIZE,
    DEFAULT_GPU_MEMORY_UTILIZATION,
    BlockAllocator,
    KVPool,
    blocks_for,
    check_block_size,
    kv_bytes_per_token,
    kv_positions,
    pool_bytes_under_utilization,
    pool_size,
)
from tokencarbon.backends.paged_schedule import Schedule, Step
from tokencarbon.errors import ConfigError, InputError
from tokencarbon.models import Architecture
from tokencarbon.quantization import NONE, Quantization

# Default prefill token budget of the slot engine: one prefill step of 2,048 tokens is about 33
# TFLOP for an 8B model (2 x 8.0e9 x 2048), some 50 ms on an H200 - the longest a running request
# waits between two decode steps (a single longer prompt is prefilled alone, whole).
MAX_PREFILL_TOKENS = 2048
# The paged engine's tokens per step (vLLM's max_num_batched_tokens: decode rows count one each,
# prompt chunks fill the rest): the same 2,048, so a step stalls decode rows no longer than the slot
# engine's prefill step did.
DEFAULT_MAX_NUM_BATCHED_TOKENS = 2048
# Warm-up calls before capture (compilation, cuBLAS and Triton kernel selection happen there).
GRAPH_WARMUP_STEPS = 3
# torch.compile's per-function cache: one entry per (model shape, rows) an engine compiles in this
# process; the default (8) would silently fall back to eager past the eighth.
COMPILE_CACHE_ENTRIES = 64
KV_LAYOUTS = ("paged", "slots")
PREEMPTION_MODE = "recompute"
# Steps the host may have launched beyond the one the device runs: it waits for step k - STEPS_AHEAD
# to finish before launching step k + 1 (so a request arriving now joins within a few steps).
STEPS_AHEAD = 2
# Decode graphs: one per row bucket. Rows beyond those running are idle (no keys, writes to the
# scratch block) but still go through every matmul; below ~300 rows an H100's bf16 matmuls are
# bound by the weight read (989 TFLOP/s dense / 3.35 TB/s = 295 FLOP per byte, and a matmul of M
# rows does about M), so idle rows are nearly free there and a bucket below 256 would only add
# compile and capture time (each bucket compiles the layer once more).
DECODE_BUCKET_FLOOR = (256,)
# Memory kept back from the pool for the decode graphs' private pool: their activations per row
# (residual, normed copy, attention output, MLP gate/up and product, logits), doubled for the
# allocator's rounding, plus a fixed allowance for cuBLAS workspaces and Triton launch state.
GRAPH_RESERVE_FIXED_BYTES = 512 * 2**20


def _project(layer: Block, x: Tensor, rope: tuple[Tensor, Tensor] | None):
    """q [N, heads, head_dim], k and v [N, kv_heads, head_dim] of hidden states x [N, hidden];
    rope: (cos, sin) [N, 1, head_dim] or None."""
    attn = layer.attn
    qkv = attn.qkv(layer.attn_norm(x)).view(x.shape[0], -1, attn.head_dim)
    qk, v = qkv.split([attn.n_heads + attn.n_kv_heads, attn.n_kv_heads], dim=1)
    if rope is not None:
        qk = rotate(qk, *rope)
    q, k = qk.split([attn.n_heads, attn.n_kv_heads], dim=1)
    return q, k, v


def _finish(layer: Block, x: Tensor, y: Tensor) -> Tensor:
    """The rest of a layer after attention: output projection, residual, MLP, residual."""
    x = x + layer.attn.out(y.reshape(x.shape[0], -1))
    return x + layer.mlp(layer.mlp_norm(x))


def decode_layer(layer, x, rope, rows, positions, k_cache, v_cache, mask: DecodeMask) -> Tensor:
    """One layer of a slot-engine decode step: x [rows, hidden] (one token per slot), its K/V
    written at (slot, positions[slot]) of k_cache/v_cache [rows, kv_heads, cache_len, head_dim],
    attention over the slot's keys as `mask` allows. The unit torch.compile compiles (once for all
    layers)."""
    q, k, v = _project(layer, x, rope)
    k_cache[rows, :, positions] = k
    v_cache[rows, :, positions] = v
    return _finish(layer, x, decode_attention(q, k_cache, v_cache, mask))


def paged_decode_layer(
    layer, x, rope, row0, slots, k_pool, v_pool, mask: PagedDecodeMask
) -> Tensor:
    """One layer of a paged decode step: x [rows, hidden] (one token per row), its K/V written at
    pool token slots[row] of k_pool/v_pool [1, kv_heads, pool_tokens, head_dim] (row0: zeros
    [rows], the pool's one batch row), attention over the row's blocks as `mask` holds them. The
    unit torch.compile compiles (once per row bucket, reused by all layers)."""
    q, k, v = _project(layer, x, rope)
    k_pool[row0, :, slots] = k
    v_pool[row0, :, slots] = v
    return _finish(layer, x, paged_decode_attention(q, k_pool, v_pool, mask))


def _step(index, kind, times: tuple[int, int, int, int], ids, tokens, new_tokens) -> StepRecord:
    start_ns, end_ns, start_wall_ns, end_wall_ns = times
    return StepRecord(
        step_index=index,
        kind=kind,
        start_ns=start_ns,
        end_ns=end_ns,
        start_wall_ns=start_wall_ns,
        end_wall_ns=end_wall_ns,
        request_ids=tuple(ids),
        request_tokens=tuple(int(t) for t in tokens),
        new_tokens=tuple(int(t) for t in new_tokens),
    )


def _rope_rows(rope: tuple[Tensor, Tensor] | None):
    return None if rope is None else (rope[0].unsqueeze(1), rope[1].unsqueeze(1))


def _raise_compile_cache() -> None:
    config = torch._dynamo.config
    limit = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, limit, max(getattr(config, limit), COMPILE_CACHE_ENTRIES))


def _check_max_model_len(requests: list[Request], max_model_len: int | None) -> None:
    if max_model_len is None:
        return
    totals = [len(r.prompt) + r.output_len for r in requests]
    i = int(np.argmax(totals))
    if totals[i] > max_model_len:
        raise InputError(
            f"request {requests[i].request_id!r}: {totals[i]} prompt + output tokens exceed "
            f"the engine's max_model_len {max_model_len}"
        )


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
        self.model: Decoder = build_model(arch, dtype, self.device, seed, checkpoint, quantization)
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


# ================================================================ the paged engine


@dataclass
class _Bucket:
    """Static decode-step buffers for `rows` rows (one CUDA graph each): ivec [4, rows] int64
    (token store index fed, store index of the sampled token, position, pool slot written), the
    block mask (block counts, tables, last block and the keys in it), the token ids fed, the
    sampled tokens, and zeros (the pool's batch row)."""

    rows: int
    ivec: Tensor
    mask: PagedDecodeMask
    ids: Tensor
    next_tok: Tensor
    row0: Tensor
    graph: torch.cuda.CUDAGraph | None = None


class _Uploader:
    """Host-to-device copies of each step's int64 inputs without a host sync: on CUDA through a
    ring of pinned buffers (a buffer is rewritten only once its previous copy has run, by its
    event) into one device buffer (its readers are on the same stream, so the next copy waits for
    them); on the CPU the array itself."""

    def __init__(self, device: torch.device, depth: int):
        self.device = device
        self.cuda = device.type == "cuda"
        self.ring: list[Tensor | None] = [None] * depth
        self.events: list[torch.cuda.Event | None] = [None] * depth
        self.k = 0
        self.dev: Tensor | None = None

    def __call__(self, array: np.ndarray) -> Tensor:
        if not self.cuda:
            return torch.from_numpy(array)
        n = len(array)
        k = self.k = (self.k + 1) % len(self.ring)
        if self.events[k] is not None:
            self.events[k].synchronize()
        if self.ring[k] is None or len(self.ring[k]) < n:
            self.ring[k] = torch.empty(max(n, 1 << 16), dtype=torch.long, pin_memory=True)
        if self.dev is None or len(self.dev) < n:
            self.dev = torch.empty(max(n, 1 << 16), dtype=torch.long, device=self.device)
        self.ring[k][:n].copy_(torch.from_numpy(array))
        self.dev[:n].copy_(self.ring[k][:n], non_blocking=True)
        event = self.events[k] = torch.cuda.Event()
        event.record()
        return self.dev[:n]


class _Clock:
    """Step timestamps. CUDA: an event before and after each step's work on the stream, read as
    milliseconds after a start anchor once the step is done (read() drops the event), and turned
    into host monotonic and wall ns at the end through two anchors (an event the host waited for at
    the start and at the end of serving; times between are mapped linearly, which also absorbs the
    drift between the device's and the host's clocks). CPU: the host's clocks around the
    (synchronous) step."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.device = device
        self.start_ns, self.start_wall_ns, self._a0 = self._anchor()

    def _anchor(self):
        if not self.cuda:
            return time.monotonic_ns(), time.time_ns(), None
        torch.cuda.synchronize(self.device)
        before, wall_before = time.monotonic_ns(), time.time_ns()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        event.synchronize()
        after, wall_after = time.monotonic_ns(), time.time_ns()
        return (before + after) // 2, (wall_before + wall_after) // 2, event

    def mark(self):
        """A point on the stream (CUDA: an event) or now (CPU: monotonic and wall ns)."""
        if not self.cuda:
            return time.monotonic_ns(), time.time_ns()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def read(self, mark):
        """A mark as it is kept: CUDA, milliseconds after the start anchor (the event must be
        done); CPU, as it is."""
        return self._a0.elapsed_time(mark) if self.cuda else mark

    def resolve(self, marks: list) -> list[tuple[int, int]]:
        """(monotonic ns, wall ns) of each mark or read() value; on CUDA, waits for the device."""
        if not self.cuda:
            return marks
        end_ns, end_wall_ns, a1 = self._anchor()
        span_ms = self._a0.elapsed_time(a1)
        scale = (end_ns - self.start_ns) / (span_ms * 1e6) if span_ms > 0 else 1.0
        wall_scale = (end_wall_ns - self.start_wall_ns) / (span_ms * 1e6) if span_ms > 0 else 1.0
        out = []
        for m in marks:
            ns = (m if isinstance(m, float) else self._a0.elapsed_time(m)) * 1e6
            out.append(
                (self.start_ns + round(ns * scale), self.start_wall_ns + round(ns * wall_scale))
            )
        return out


def decode_buckets(max_num_seqs: int) -> list[int]:
    """Row counts of the decode graphs: max_num_seqs and each of DECODE_BUCKET_FLOOR below it."""
    return sorted({max_num_seqs, *(b for b in DECODE_BUCKET_FLOOR if b < max_num_seqs)})


class PagedEngine:
    """The paged engine (kv_layout "paged"; module docstring). Built by TorchServingEngine."""

    @staticmethod
    def check_settings(
        max_num_seqs, gpu_memory_utilization, block_size, num_blocks, max_num_batched_tokens
    ) -> None:
        """ConfigError naming the first bad paged setting."""
        check_block_size(block_size)
        if not (
            isinstance(gpu_memory_utilization, (int, float)) and 0 < gpu_memory_utilization <= 1
        ):
            raise ConfigError(
                f"gpu_memory_utilization={gpu_memory_utilization!r}; must lie in (0, 1]"
            )
        if num_blocks is not None and (type(num_blocks) is not int or num_blocks < 1):
            raise ConfigError(f"num_blocks={num_blocks!r}; must be an integer >= 1 or None")
        if type(max_num_batched_tokens) is not int or max_num_batched_tokens < max_num_seqs:
            raise ConfigError(
                f"max_num_batched_tokens={max_num_batched_tokens!r}; must be an integer >= "
                f"max_num_seqs {max_num_seqs} (every decode row takes one token of a step)"
            )

    def __init__(
        self,
        model: Decoder,
        arch: Architecture,
        dtype: str,
        device: torch.device,
        *,
        max_num_seqs: int,
        max_model_len: int | None,
        prefill_min_seqs: int,
        cuda_graphs: bool,
        compile_layers: bool,
        gpu_memory_utilization: float,
        block_size: int,
        num_blocks: int | None,
        max_num_batched_tokens: int,
        mixed_steps: bool,
    ):
        self.model, self.arch, self.dtype, self.device = model, arch, dtype, device
        self.max_num_seqs = max_num_seqs
        limit, _ = token_limit(arch)
        self.max_model_len = limit if max_model_len is None else min(max_model_len, limit)
        self.prefill_min_seqs = prefill_min_seqs
        # The eager decode attention gathers as many table columns as the host says per step, which
        # a captured graph would freeze: graphs replay the compiled layer only.
        self.graphs = cuda_graphs and compile_layers
        self.compile_layers = compile_layers
        self.gpu_memory_utilization = gpu_memory_utilization
        self.block_size = block_size
        self.requested_blocks = num_blocks
        self.max_num_batched_tokens = max_num_batched_tokens
        self.mixed_steps = mixed_steps
        self.max_blocks_per_seq = blocks_for(self.max_model_len, block_size)
        self.buckets = decode_buckets(max_num_seqs)
        self._layer_fn = paged_decode_layer
        self._attn_fn = paged_decode_attention
        if compile_layers:
            self._layer_fn = torch.compile(paged_decode_layer, fullgraph=True, dynamic=False)
            self._attn_fn = torch.compile(paged_decode_attention, fullgraph=True, dynamic=False)
        self.pool: KVPool | None = None
        self.allocator: BlockAllocator | None = None
        self._buckets: dict[int, _Bucket] = {}
        self.num_blocks_source = ""
        self.pool_bytes_budget: int | None = None
        self.activation_bytes: int | None = None
        self._capture_stream = torch.cuda.Stream(device) if self.graphs else None
        self._graph_pool = None
        if num_blocks is not None:
            self._make_pool(num_blocks, "num_blocks")
        elif device.type == "cuda":
            self._make_pool(self._blocks_from_memory(), "gpu_memory_utilization")

    # ------------------------------------------------------------ pool

    def _make_pool(self, num_blocks: int, source: str, capture: bool = True) -> None:
        """A pool of num_blocks blocks, its allocator and decode buffers (and graphs, captured
        when `capture` and the engine replays graphs)."""
        self.release()
        self.pool = KVPool(
            self.arch, len(self.model.layers), num_blocks, self.block_size,
            TORCH_DTYPES[self.dtype], self.device,
        )  # fmt: skip
        self.allocator = BlockAllocator(num_blocks)
        self.num_blocks_source = source
        new = dict(dtype=torch.long, device=self.device)
        for rows in self.buckets:
            self._buckets[rows] = _Bucket(
                rows=rows,
                ivec=torch.zeros(4, rows, **new),
                mask=PagedDecodeMask(rows, self.pool.tokens, self.block_size, self.device),
                ids=torch.zeros(rows, **new),
                next_tok=torch.zeros(rows, **new),
                row0=torch.zeros(rows, **new),
            )
        if self.graphs and capture:
            self._graph_pool = torch.cuda.graph_pool_handle()
            for bucket in self._buckets.values():
                self._capture(bucket)

    def release(self) -> None:
        """Drop the pool, the decode buffers and graphs."""
        self._buckets = {}
        self.pool = None
        self.allocator = None
        self._graph_pool = None

    def _graph_reserve_bytes(self) -> int:
        arch, elem = self.arch, TORCH_DTYPES[self.dtype].itemsize
        per_row = 4 * arch.hidden_size + 3 * arch.intermediate_size + arch.vocab_size
        return 2 * max(self.buckets) * per_row * elem + GRAPH_RESERVE_FIXED_BYTES

    def _blocks_from_memory(self) -> int:
        """Pool blocks under gpu_memory_utilization (paged.pool_bytes_under_utilization): the
        memory in use now (weights, context, anything else on the device) and the transient peak
        of a profiling step of max_num_batched_tokens prompt tokens, run on a throwaway pool just
        big enough for it, then the decode graphs' reserve, are taken off the allowed share."""
        device = self.device
        gc.collect()
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        free, total = torch.cuda.mem_get_info(device)
        # the per-process cap (set_per_process_memory_fraction) of this device; the getter wants
        # an index, not torch.device("cuda") (ValueError on torch 2.11, seen on an H100)
        index = torch.cuda.current_device() if device.index is None else device.index
        fraction = getattr(torch.cuda, "get_per_process_memory_fraction", lambda d: 1.0)(index)
        allowed_total = int(total * min(1.0, fraction))
        used = total - free
        tokens = self.max_num_batched_tokens
        chunk = min(tokens, self.max_model_len)
        n_chunks = -(-tokens // chunk)
        blocks = n_chunks * blocks_for(chunk, self.block_size)
        self._make_pool(blocks, "profile", capture=False)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        self._profile_step(n_chunks, chunk)
        torch.cuda.synchronize(device)
        self.activation_bytes = torch.cuda.max_memory_allocated(device) - before
        self.release()
        gc.collect()
        torch.cuda.empty_cache()
        reserve = self.activation_bytes + self._graph_reserve_bytes()
        pool_bytes = pool_bytes_under_utilization(
            allowed_total, self.gpu_memory_utilization, used, reserve
        )
        self.pool_bytes_budget = pool_bytes
        n = pool_size(self.arch, self.dtype, pool_bytes, self.block_size).num_blocks
        if n < 1:
            raise ConfigError(
                f"gpu_memory_utilization={self.gpu_memory_utilization} leaves {pool_bytes} B for "
                f"the KV pool, less than one block of {self.block_size} tokens"
            )
        return n

    @torch.no_grad()
    def _profile_step(self, n_chunks: int, chunk: int) -> None:
        """One prompt step of n_chunks chunks of `chunk` tokens on the current (throwaway) pool,
        sampling min(max_num_seqs, chunks x chunk) rows (the most logits a step makes)."""
        bs = self.block_size
        tokens = n_chunks * chunk
        pos = np.tile(np.arange(chunk), n_chunks)
        blocks_per = blocks_for(chunk, bs)
        slots = np.concatenate(
            [
                (k * blocks_per + np.arange(chunk) // bs) * bs + np.arange(chunk) % bs
                for k in range(n_chunks)
            ]
        )
        offsets = [k * chunk for k in range(n_chunks + 1)]
        sample = np.arange(tokens - min(self.max_num_seqs, tokens), tokens)
        store = torch.zeros(tokens + 1, dtype=torch.long, device=self.device)
        prefill = dict(
            tok=torch.arange(tokens, device=self.device),
            pos=torch.from_numpy(pos).to(self.device),
            slot=torch.from_numpy(slots).to(self.device),
            ctx=torch.from_numpy(slots).to(self.device),
            cu_q=torch.tensor(offsets, dtype=torch.int32, device=self.device),
            cu_k=torch.tensor(offsets, dtype=torch.int32, device=self.device),
            q_off=offsets, k_off=offsets, max_q=chunk, max_k=chunk,
            sample_rows=torch.from_numpy(sample).to(self.device),
            sample_out=torch.full((len(sample),), tokens, device=self.device),
        )  # fmt: skip
        self._forward_mixed(store, None, 0, prefill)

    # ------------------------------------------------------------ the decode step (graph body)

    def _decode_body(self, b: _Bucket) -> None:
        model = self.model
        x, rope = model.embed_tokens(b.ids, b.ivec[2])
        rope = _rope_rows(rope)
        for layer, (k_pool, v_pool) in zip(model.layers, self.pool.layers):
            x = self._layer_fn(layer, x, rope, b.row0, b.ivec[3], k_pool, v_pool, b.mask)
        b.next_tok.copy_(model.lm_head(model.norm(x)).argmax(dim=-1))

    def _idle(self, b: _Bucket) -> None:
        """Every row idle: no keys, writes to the scratch block, position 0, token 0."""
        b.ivec.zero_()
        b.ivec[3].fill_(self.pool.scratch_slot)
        b.mask.last_page.fill_(-1)
        b.mask.last_len.zero_()
        b.mask.num_blocks.zero_()
        b.ids.zero_()

    def _capture(self, b: _Bucket) -> None:
        stream = self._capture_stream
        self._idle(b)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream), torch.no_grad():
            for _ in range(GRAPH_WARMUP_STEPS):
                self._decode_body(b)
            # the mixed steps' decode attention for these rows, compiled now, not in a timed window
            q = torch.zeros(
                b.rows, self.arch.num_heads, self.arch.head_dim,
                dtype=TORCH_DTYPES[self.dtype], device=self.device,
            )  # fmt: skip
            self._attn_fn(q, *self.pool.layers[0], b.mask)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream, pool=self._graph_pool), torch.no_grad():
            self._decode_body(b)
        b.graph = graph

    # ------------------------------------------------------------ a mixed or prompt step (eager)

    def _forward_mixed(self, store: Tensor, b: _Bucket | None, n_dec: int, pre: dict) -> None:
        """One step over n_dec decode rows (bucket b's buffers, rows [0, n_dec)) and the packed
        prompt chunks `pre` describes: every token through each layer's projections together; K/V
        written to the pool; decode rows attend through the (compiled) paged decode attention,
        chunks through chunk_attention over their requests' keys gathered from the pool; the
        sampled rows' argmax written into the token store."""
        model, device = self.model, self.device
        ids, pos, slots = [pre["tok"]], [pre["pos"]], [pre["slot"]]
        if n_dec:
            ids.insert(0, b.ivec[0, :n_dec])
            pos.insert(0, b.ivec[2, :n_dec])
            slots.insert(0, b.ivec[3, :n_dec])
        ids = store[torch.cat(ids)] if n_dec else store[ids[0]]
        pos = torch.cat(pos) if n_dec else pos[0]
        slots = torch.cat(slots) if n_dec else slots[0]
        row0 = torch.zeros_like(slots)
        x, rope = model.embed_tokens(ids, pos)
        rope = _rope_rows(rope)
        ctx = pre["ctx"]
        for layer, (k_pool, v_pool) in zip(model.layers, self.pool.layers):
            q, k, v = _project(layer, x, rope)
            k_pool[row0, :, slots] = k
            v_pool[row0, :, slots] = v
            k_ctx = k_pool[0].index_select(1, ctx).transpose(0, 1)
            v_ctx = v_pool[0].index_select(1, ctx).transpose(0, 1)
            y = chunk_attention(
                q[n_dec:], k_ctx, v_ctx, pre["cu_q"], pre["cu_k"], pre["q_off"], pre["k_off"],
                pre["max_q"], pre["max_k"],
            )  # fmt: skip
            if n_dec:
                qd = F.pad(q[:n_dec], (0, 0, 0, 0, 0, b.rows - n_dec))
                y = torch.cat([self._attn_fn(qd, k_pool, v_pool, b.mask)[:n_dec], y])
            x = _finish(layer, x, y)
        h = model.norm(x[pre["sample_rows"]])
        store[pre["sample_out"]] = model.lm_head(h).argmax(dim=-1)

    # ------------------------------------------------------------ step inputs

    def _decode_inputs(self, s: Schedule, dec: np.ndarray, rows: int, goff: np.ndarray):
        """The int64 inputs of decode rows `dec` padded to `rows`: [6, rows] (the bucket's ivec
        rows, then the mask's last block and keys in it), num_blocks [rows], table [rows, cols]
        (cols: the most blocks a row uses)."""
        bs, n = self.block_size, len(dec)
        ivec = np.zeros((6, rows), dtype=np.int64)
        ivec[3] = self.pool.scratch_slot
        ivec[4] = -1
        c, g, row = s.c[dec], s.g[dec], s.row_of[dec]
        page = s.table[row, c // bs]
        ivec[0, :n] = goff[dec] + g - 1  # the last generated token, not yet fed
        ivec[1, :n] = goff[dec] + g
        ivec[2, :n] = c
        ivec[3, :n] = page * bs + c % bs
        ivec[4, :n] = page
        ivec[5, :n] = c % bs + 1
        nblk = np.zeros(rows, dtype=np.int64)
        nblk[:n] = c // bs + 1
        cols = int(nblk.max()) if n else 1
        table = np.zeros((rows, cols), dtype=np.int64)
        table[:n] = s.table[row, :cols]
        return ivec, nblk, table, cols

    def _prefill_inputs(self, s: Schedule, step: Step, ends: list[bool], n_dec, poff, goff):
        """The int64 arrays of a step's prompt chunks (token store index, position and pool slot
        of each chunk token; pool slots of each chunk's keys; offsets) and its sampled rows."""
        tok, pos, slot, ctx, sample_rows, sample_out = [], [], [], [], [], []
        q_off, k_off = [0], [0]
        for (r, start, n), ends_here in zip(step.chunks, ends):
            p = s.p[r]
            positions = np.arange(start, start + n)
            tok.append(np.where(positions < p, poff[r] + positions, goff[r] + positions - p))
            pos.append(positions)
            slot.append(s.slots(r, start, start + n))
            ctx.append(s.slots(r, 0, start + n))
            q_off.append(q_off[-1] + n)
            k_off.append(k_off[-1] + start + n)
            if ends_here:
                sample_rows.append(n_dec + q_off[-1] - 1)
                sample_out.append(goff[r] + s.g[r])
        rows = np.concatenate([np.arange(n_dec), np.asarray(sample_rows, dtype=np.int64)])
        outs = np.concatenate(
            [np.zeros(n_dec, dtype=np.int64), np.asarray(sample_out, dtype=np.int64)]
        )
        parts = {
            "tok": np.concatenate(tok), "pos": np.concatenate(pos), "slot": np.concatenate(slot),
            "ctx": np.concatenate(ctx), "cu_q": np.asarray(q_off), "cu_k": np.asarray(k_off),
            "sample_rows": rows, "sample_out": outs,
        }  # fmt: skip
        meta = {
            "q_off": q_off, "k_off": k_off,
            "max_q": max(b - a for a, b in zip(q_off, q_off[1:])),
            "max_k": max(b - a for a, b in zip(k_off, k_off[1:])),
        }  # fmt: skip
        return parts, meta

    # ------------------------------------------------------------ serving

    def _ensure_pool(self, requests: list[Request]) -> None:
        if self.pool is not None and self.num_blocks_source != "max_num_seqs x longest request":
            return
        if self.requested_blocks is not None:
            self._make_pool(self.requested_blocks, "num_blocks")
        elif self.device.type == "cuda":
            self._make_pool(self._blocks_from_memory(), "gpu_memory_utilization")
        else:
            longest = max(len(r.prompt) + r.output_len for r in requests)
            need = self.max_num_seqs * blocks_for(longest, self.block_size)
            if self.pool is None or self.pool.num_blocks < need:
                self._make_pool(need, "max_num_seqs x longest request")

    @torch.no_grad()
    def serve(self, requests: list[Request]) -> ServingResult:
        check_requests(self.arch, requests)
        _check_max_model_len(requests, self.max_model_len)
        self._ensure_pool(requests)
        bs, n = self.block_size, len(requests)
        prompt_len = np.array([len(r.prompt) for r in requests], dtype=np.int64)
        output_len = np.array([r.output_len for r in requests], dtype=np.int64)
        for i, r in enumerate(requests):
            need = blocks_for(kv_positions(int(prompt_len[i]), int(output_len[i])), bs)
            if need > self.pool.num_blocks:
                raise InputError(
                    f"request {r.request_id!r}: {prompt_len[i]} + {output_len[i]} tokens need "
                    f"{need} KV blocks of {bs}; the pool holds {self.pool.num_blocks} "
                    f"({self.num_blocks_source})"
                )
        arrival = np.array([round(r.arrival_s * 1e9) for r in requests], dtype=np.int64)
        ids = [r.request_id for r in requests]
        # The token store: every prompt, then every request's generated tokens, then a trash slot.
        poff = np.concatenate([[0], np.cumsum(prompt_len)[:-1]]).astype(np.int64)
        goff = int(prompt_len.sum()) + np.concatenate([[0], np.cumsum(output_len)[:-1]]).astype(
            np.int64
        )
        trash = int(prompt_len.sum() + output_len.sum())
        host_store = np.zeros(trash + 1, dtype=np.int64)
        host_store[: prompt_len.sum()] = np.fromiter(
            (t for r in requests for t in r.prompt), dtype=np.int64, count=int(prompt_len.sum())
        )
        store = torch.from_numpy(host_store).to(self.device)
        sched = Schedule(
            prompt_len, output_len, arrival, self.allocator, block_size=bs,
            max_num_seqs=self.max_num_seqs, max_num_batched_tokens=self.max_num_batched_tokens,
            max_blocks_per_seq=self.max_blocks_per_seq, prefill_min_seqs=self.prefill_min_seqs,
            mixed_steps=self.mixed_steps,
        )  # fmt: skip
        upload = _Uploader(self.device, STEPS_AHEAD + 2)
        steps: list[tuple] = []  # (kind, ids, tokens, new tokens, start mark, end mark)
        clock = _Clock(self.device)
        while not sched.done:
            sched.arrive(time.monotonic_ns() - clock.start_ns)
            step = sched.next_step()
            if step is None:
                arrival_ns = sched.next_arrival_ns()
                if arrival_ns is None:  # cannot happen: a request alone fits the pool (checked)
                    raise RuntimeError("paged engine: requests wait that nothing can admit")
                time.sleep(max(0, arrival_ns - (time.monotonic_ns() - clock.start_ns)) / 1e9)
                continue
            k = len(steps)
            start = clock.mark()
            self._launch(sched, step, store, upload, poff, goff)
            end = clock.mark()
            ends = sched.sampled(step)
            dec_ids = [ids[r] for r in step.decode.tolist()]
            chunk_ids = [ids[r] for r, _, _ in step.chunks]
            tokens = [1] * len(dec_ids) + [m for _, _, m in step.chunks]
            new = [1] * len(dec_ids) + [int(e) for e in ends]
            steps.append([step.kind, dec_ids + chunk_ids, tokens, new, start, end])
            sched.launched(step, k)
            if clock.cuda and k >= STEPS_AHEAD:
                done = steps[k - STEPS_AHEAD]
                done[5].synchronize()  # at most STEPS_AHEAD steps queued beyond the one running
                done[4], done[5] = clock.read(done[4]), clock.read(done[5])
        times = clock.resolve([m for s in steps for m in (s[4], s[5])])
        leaks = sched.leaks()
        if leaks:
            raise RuntimeError(f"paged engine: after serving, {leaks} (a scheduling bug)")
        records = [
            _step(k, kind, _pair(times, k), rids, toks, new)
            for k, (kind, rids, toks, new, _, _) in enumerate(steps)
        ]
        generated = store.cpu().numpy()
        end_ns, end_wall_ns = records[-1].end_ns, records[-1].end_wall_ns
        out = []
        for i in range(n):
            f, e = int(sched.first_step[i]), int(sched.finish_step[i])
            out.append(
                RequestRecord(
                    request_id=ids[i],
                    input_tokens=int(prompt_len[i]),
                    output_tokens=int(output_len[i]),
                    arrival_ns=clock.start_ns + int(arrival[i]),
                    first_token_ns=records[f].end_ns,
                    finish_ns=records[e].end_ns,
                    arrival_wall_ns=clock.start_wall_ns + int(arrival[i]),
                    first_token_wall_ns=records[f].end_wall_ns,
                    finish_wall_ns=records[e].end_wall_ns,
                    preemptions=int(sched.preemptions[i]),
                )
            )
        return ServingResult(
            requests=tuple(out),
            steps=tuple(records),
            start_ns=clock.start_ns,
            end_ns=end_ns,
            start_wall_ns=clock.start_wall_ns,
            end_wall_ns=end_wall_ns,
            token_ids={
                ids[i]: tuple(generated[goff[i] : goff[i] + output_len[i]].tolist())
                for i in range(n)
            },
        )

    def _launch(self, s: Schedule, step: Step, store, upload, poff, goff) -> None:
        """Upload `step`'s inputs and enqueue its work (no host sync)."""
        n_dec = len(step.decode)
        b = None
        arrays = []
        if n_dec:
            b = self._buckets[next(r for r in self.buckets if r >= n_dec)]
            ivec, nblk, table, cols = self._decode_inputs(s, step.decode, b.rows, goff)
            arrays += [ivec.ravel(), nblk, table.ravel()]
        if step.chunks:
            parts, meta = self._prefill_inputs(s, step, s.sampled(step), n_dec, poff, goff)
            arrays += list(parts.values())
        dev = upload(np.concatenate(arrays))
        at = 0
        if n_dec:
            b.ivec.copy_(dev[: 4 * b.rows].view(4, b.rows))
            b.mask.last_page.copy_(dev[4 * b.rows : 5 * b.rows])
            b.mask.last_len.copy_(dev[5 * b.rows : 6 * b.rows])
            b.mask.num_blocks.copy_(dev[6 * b.rows : 7 * b.rows])
            at = 7 * b.rows
            b.mask.table.view(b.rows, -1)[:, :cols].copy_(
                dev[at : at + b.rows * cols].view(b.rows, cols)
            )
            b.mask.cols = cols
            at += b.rows * cols
        if not step.chunks:
            torch.index_select(store, 0, b.ivec[0], out=b.ids)
            if b.graph is not None:
                b.graph.replay()
            else:
                self._decode_body(b)
            store.index_copy_(0, b.ivec[1, :n_dec], b.next_tok[:n_dec])
            return
        pre = dict(meta)
        for name, array in parts.items():
            pre[name] = dev[at : at + len(array)]
            at += len(array)
        if n_dec:  # the decode rows' sampled tokens go where their ivec says
            pre["sample_out"] = torch.cat([b.ivec[1, :n_dec], pre["sample_out"][n_dec:]])
        pre["cu_q"], pre["cu_k"] = pre["cu_q"].int(), pre["cu_k"].int()
        self._forward_mixed(store, b, n_dec, pre)

    def describe(self) -> dict:
        """Settings a cell records: block size, pool blocks, tokens and bytes, how the pool was
        sized, gpu_memory_utilization, max_num_batched_tokens, preemption mode, mixed steps, decode
        graph buckets, max_model_len, prefill_min_seqs, graphs and compilation."""
        pool = self.pool
        return {
            "block_size": self.block_size,
            "num_blocks": None if pool is None else pool.num_blocks,
            "pool_tokens": None if pool is None else pool.num_blocks * self.block_size,
            "pool_bytes": (
                None
                if pool is None
                else kv_bytes_per_token(self.arch, self.dtype) * self.block_size * pool.num_blocks
            ),
            "num_blocks_source": self.num_blocks_source or None,
            # what gpu_memory_utilization left for the pool before rounding down to blocks (the
            # bytes the OOM probe hands paged.max_num_seqs_fitting); None when not sized that way
            "pool_bytes_budget": self.pool_bytes_budget,
            "kv_bytes_per_token": kv_bytes_per_token(self.arch, self.dtype),
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "profiled_activation_bytes": self.activation_bytes,
            "max_num_batched_tokens": self.max_num_batched_tokens,
            "preemption_mode": PREEMPTION_MODE,
            "mixed_steps": self.mixed_steps,
            "decode_buckets": list(self.buckets),
            "max_model_len": self.max_model_len,
            "prefill_min_seqs": self.prefill_min_seqs,
            "cuda_graphs": self.graphs,
            "compile_layers": self.compile_layers,
            "steps_ahead": STEPS_AHEAD if self.device.type == "cuda" else 0,
        }


def _pair(times: list[tuple[int, int]], k: int) -> tuple[int, int, int, int]:
    (s_ns, s_wall), (e_ns, e_wall) = times[2 * k], times[2 * k + 1]
    return s_ns, e_ns, s_wall, e_wall


# ================================================================ the slot engine


class SlotEngine:
    """The slot engine (kv_layout "slots"): one KV slot of cache_len positions per in-flight request
    (each layer's K and V [max_num_seqs, kv_heads, cache_len, head_dim], slot s = decode row s);
    a prefill step packs waiting prompts whole (up to max_prefill_tokens, at least one prompt), a
    decode step advances every running request by one token, at most one prefill step between two
    decode steps; the host keeps the schedule in numpy and synchronises once per step. Built by
    TorchServingEngine."""

    def __init__(
        self,
        model: Decoder,
        arch: Architecture,
        dtype: str,
        device: torch.device,
        *,
        max_num_seqs: int,
        max_model_len: int | None,
        prefill_min_seqs: int,
        cuda_graphs: bool,
        compile_layers: bool,
        max_prefill_tokens: int,
    ):
        self.model, self.arch, self.dtype, self.device = model, arch, dtype, device
        self.max_num_seqs = max_num_seqs
        self.max_model_len = max_model_len
        self.max_prefill_tokens = max_prefill_tokens
        self.prefill_min_seqs = prefill_min_seqs
        self.graphs = cuda_graphs
        self.compile_layers = compile_layers
        self._layer_fn = decode_layer
        if compile_layers:
            self._layer_fn = torch.compile(decode_layer, fullgraph=True, dynamic=False)
        self._cache_len: int | None = None
        self._graph: torch.cuda.CUDAGraph | None = None
        self._capture_stream = torch.cuda.Stream(self.device) if self.graphs else None

    def describe(self) -> dict:
        """Settings a cell records: positions per slot, prefill budget and admission gate."""
        return {
            "cache_len": self._cache_len,
            "max_model_len": self.max_model_len,
            "max_prefill_tokens": self.max_prefill_tokens,
            "prefill_min_seqs": self.prefill_min_seqs,
            "preemption_mode": None,
            "cuda_graphs": self.graphs,
            "compile_layers": self.compile_layers,
        }

    # ------------------------------------------------------------ pool and static decode state
    #   _caches: per layer (k, v) [S, kv_heads, cache_len, head_dim], slot s = decode row s
    #   _tokens [S] token fed next; _pos [S] its position (= its cache index); _active [S] 0/1;
    #   _n_gen [S] tokens generated so far; _out [S, cache_len] the generated tokens per slot.
    def _allocate(self, cache_len: int) -> None:
        if self._cache_len == cache_len:
            return
        self.release()
        s, arch = self.max_num_seqs, self.arch
        shape = (s, arch.num_kv_heads, cache_len, arch.head_dim)
        dtype = TORCH_DTYPES[self.dtype]
        self._caches = [
            (
                torch.zeros(shape, dtype=dtype, device=self.device),
                torch.zeros(shape, dtype=dtype, device=self.device),
            )
            for _ in self.model.layers
        ]
        new = dict(dtype=torch.long, device=self.device)
        self._rows = torch.arange(s, **new)
        self._tokens, self._pos = torch.zeros(s, **new), torch.zeros(s, **new)
        self._active, self._n_gen = torch.zeros(s, **new), torch.zeros(s, **new)
        self._out = torch.zeros(s, cache_len, **new)
        self._mask = DecodeMask(s, cache_len, self.device)
        self._cache_len = cache_len
        if self.graphs:
            self._capture()

    def release(self) -> None:
        """Drop the KV pool, decode state and captured graph (the weights stay loaded)."""
        self._graph = None
        self._caches = []
        self._rows = self._tokens = self._pos = self._active = self._n_gen = self._out = None
        self._mask = None
        self._cache_len = None

    def _decode_step(self) -> None:
        """One token for every running slot, reading and writing only the static state (a CUDA
        graph replays it). Idle slots (active 0) compute on junk and keep position 0."""
        model = self.model
        self._mask.update(self._pos + 1)  # keys: the slot's tokens up to the one fed now
        x, rope = model.embed_tokens(self._tokens, self._pos)
        rope = _rope_rows(rope)
        for layer, (k_cache, v_cache) in zip(model.layers, self._caches):
            x = self._layer_fn(layer, x, rope, self._rows, self._pos, k_cache, v_cache, self._mask)
        next_token = model.lm_head(model.norm(x)).argmax(dim=-1)
        self._out[self._rows, self._n_gen] = next_token
        self._tokens.copy_(next_token)
        self._pos.add_(self._active)
        self._n_gen.add_(self._active)

    def _capture(self) -> None:
        # Warm-up and capture run on idle slots (junk in, position 0); serve() resets the state.
        stream = self._capture_stream
        self._reset()
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream), torch.no_grad():
            for _ in range(GRAPH_WARMUP_STEPS):
                self._decode_step()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream), torch.no_grad():
            self._decode_step()
        self._graph = graph

    def _reset(self) -> None:
        for t in (self._tokens, self._pos, self._active, self._n_gen):
            t.zero_()

    def _set_slots(self, slots: list[int], pos: list[int], active: list[int], n_gen: list[int]):
        """Write the decode state of `slots` in one host-to-device copy."""
        values = torch.tensor([slots, pos, active, n_gen], dtype=torch.long).to(self.device)
        index = values[0]
        self._pos.index_copy_(0, index, values[1])
        self._active.index_copy_(0, index, values[2])
        self._n_gen.index_copy_(0, index, values[3])

    # ------------------------------------------------------------ prefill

    def _prefill(self, prompts: list[tuple[int, ...]], slots: list[int]) -> Tensor:
        """Prefill whole prompts into their slots' cache positions [0, len); returns each prompt's
        first generated token [len(prompts)] (on the device)."""
        model, device = self.model, self.device
        lens = [len(p) for p in prompts]
        offsets = np.concatenate([[0], np.cumsum(lens)]).tolist()
        tokens = torch.tensor([t for p in prompts for t in p], device=device)
        positions = torch.cat([torch.arange(n) for n in lens]).to(device)
        token_slots = torch.repeat_interleave(torch.tensor(slots), torch.tensor(lens)).to(device)
        cu_seqlens = torch.tensor(offsets, dtype=torch.int32, device=device)
        last = cu_seqlens[1:].long() - 1
        x, rope = model.embed_tokens(tokens, positions)
        rope = _rope_rows(rope)
        for layer, (k_cache, v_cache) in zip(model.layers, self._caches):
            q, k, v = _project(layer, x, rope)
            k_cache[token_slots, :, positions] = k
            v_cache[token_slots, :, positions] = v
            x = _finish(layer, x, prefill_attention(q, k, v, cu_seqlens, offsets, max(lens)))
        return model.lm_head(model.norm(x[last])).argmax(dim=-1)

    # ------------------------------------------------------------ serving

    def cache_len_for(self, longest: int) -> int:
        """Positions per slot for a request set whose longest request holds `longest` prompt +
        output tokens: max_model_len if set, else `longest`, rounded up to KV_BLOCK."""
        size = self.max_model_len if self.max_model_len is not None else longest
        return -(-size // KV_BLOCK) * KV_BLOCK

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @torch.no_grad()
    def serve(self, requests: list[Request]) -> ServingResult:
        check_requests(self.arch, requests)
        _check_max_model_len(requests, self.max_model_len)
        totals = [len(r.prompt) + r.output_len for r in requests]
        self._allocate(self.cache_len_for(max(totals)))
        self._reset()
        n, slots_n = len(requests), self.max_num_seqs
        prompt_len = np.array([len(r.prompt) for r in requests])
        output_len = np.array([r.output_len for r in requests])
        arrival_offset_ns = np.array([round(r.arrival_s * 1e9) for r in requests], dtype=np.int64)
        generated = torch.zeros(n, int(output_len.max()), dtype=torch.long, device=self.device)
        order = sorted(range(n), key=lambda i: (arrival_offset_ns[i], i))
        ids = [r.request_id for r in requests]

        queue: deque[int] = deque()  # arrived, not admitted (request indices, FCFS)
        free = list(range(slots_n))  # a heap: the lowest free slot first
        slot_request = np.full(slots_n, -1)  # request index a slot serves
        remaining = np.zeros(slots_n, dtype=np.int64)  # decode tokens it still needs
        first_ns = np.zeros((n, 2), dtype=np.int64)  # monotonic, wall
        finish_ns = np.zeros((n, 2), dtype=np.int64)
        steps: list[StepRecord] = []
        arrived = finished = running = 0
        last_was_prefill = False

        def keep_tokens(slots: list[int]) -> None:
            # before the slots are reused: their generated tokens into the request's row
            index = torch.tensor(slots, device=self.device)
            rows = torch.tensor(slot_request[slots], device=self.device)
            generated[rows] = self._out[index, : generated.shape[1]]

        self._sync()
        start_ns, start_wall_ns = time.monotonic_ns(), time.time_ns()
        while finished < n:
            now_ns = time.monotonic_ns() - start_ns
            while arrived < n and arrival_offset_ns[order[arrived]] <= now_ns:
                queue.append(order[arrived])
                arrived += 1
            admit = min(len(queue), len(free))
            if admit and (
                running == 0
                or (
                    not last_was_prefill
                    and (len(queue) <= len(free) or admit >= self.prefill_min_seqs)
                )
            ):
                batch, tokens = [], 0
                while queue and len(batch) < len(free):
                    if batch and tokens + prompt_len[queue[0]] > self.max_prefill_tokens:
                        break
                    tokens += int(prompt_len[queue[0]])
                    batch.append(queue.popleft())
                slots = [heapq.heappop(free) for _ in batch]
                t0, w0 = time.monotonic_ns(), time.time_ns()
                first = self._prefill([requests[i].prompt for i in batch], slots)
                slot_index = torch.tensor(slots, device=self.device)
                self._out[slot_index, 0] = first
                self._tokens[slot_index] = first
                more = [int(output_len[i] > 1) for i in batch]  # still decoding after this step
                pos = [int(prompt_len[i]) * m for i, m in zip(batch, more)]
                self._set_slots(slots, pos, more, more)
                slot_request[slots] = batch
                remaining[slots] = output_len[batch] - 1
                done = [s for s, m in zip(slots, more) if not m]
                if done:
                    keep_tokens(done)
                self._sync()
                t1, w1 = time.monotonic_ns(), time.time_ns()
                times = (t0, t1, w0, w1)
                tokens_in = prompt_len[batch].tolist()
                steps.append(
                    _step(
                        len(steps),
                        "prefill",
                        times,
                        [ids[i] for i in batch],
                        tokens_in,
                        [1] * len(batch),
                    )
                )
                first_ns[batch] = (t1, w1)
                for s in done:
                    finish_ns[slot_request[s]] = (t1, w1)
                    slot_request[s] = -1
                    heapq.heappush(free, s)
                finished += len(done)
                running += len(batch) - len(done)
                last_was_prefill = True
                continue
            if running:
                live = np.flatnonzero(remaining > 0)
                t0, w0 = time.monotonic_ns(), time.time_ns()
                if self._graph is not None:
                    self._graph.replay()
                else:
                    self._decode_step()
                self._sync()
                t1, w1 = time.monotonic_ns(), time.time_ns()
                live_ids = [ids[i] for i in slot_request[live]]
                steps.append(
                    _step(
                        len(steps),
                        "decode",
                        (t0, t1, w0, w1),
                        live_ids,
                        [1] * len(live),
                        [1] * len(live),
                    )
                )
                remaining[live] -= 1
                done = live[remaining[live] == 0].tolist()
                if done:
                    keep_tokens(done)
                    self._set_slots(done, [0] * len(done), [0] * len(done), [0] * len(done))
                    finish_ns[slot_request[done]] = (t1, w1)
                    slot_request[done] = -1
                    for s in done:
                        heapq.heappush(free, s)
                    finished += len(done)
                    running -= len(done)
                last_was_prefill = False
                continue
            # nothing runs and nothing waits: sleep until the next arrival
            time.sleep(max(0, arrival_offset_ns[order[arrived]] - now_ns) / 1e9)
        end_ns, end_wall_ns = steps[-1].end_ns, steps[-1].end_wall_ns

        tokens = generated.tolist()
        records = tuple(
            RequestRecord(
                request_id=ids[i],
                input_tokens=int(prompt_len[i]),
                output_tokens=int(output_len[i]),
                arrival_ns=start_ns + int(arrival_offset_ns[i]),
                first_token_ns=int(first_ns[i, 0]),
                finish_ns=int(finish_ns[i, 0]),
                arrival_wall_ns=start_wall_ns + int(arrival_offset_ns[i]),
                first_token_wall_ns=int(first_ns[i, 1]),
                finish_wall_ns=int(finish_ns[i, 1]),
                preemptions=0,
            )
            for i in range(n)
        )
        return ServingResult(
            requests=records,
            steps=tuple(steps),
            start_ns=start_ns,
            end_ns=end_ns,
            start_wall_ns=start_wall_ns,
            end_wall_ns=end_wall_ns,
            token_ids={ids[i]: tuple(tokens[i][: output_len[i]]) for i in range(n)},
        )

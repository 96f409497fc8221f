"""The continuous-batching engine: up to max_num_seqs requests in flight, a finished request leaving
and a waiting one joining at the next step, greedy, every request generating exactly its own output
length (EOS ignored). docs/architecture.md gives the design and the reasons for it:

- KV pool: one slot of cache_len positions per in-flight request ([max_num_seqs, kv_heads,
  cache_len, head_dim] per layer); decode attention reads each row's own keys only (attention.py).
- Steps: a prefill step packs waiting prompts whole (up to max_prefill_tokens, at least one prompt),
  a decode step advances every running request by one token. At most one prefill step runs between
  two decode steps, so a running request stalls at most one prefill step.
- Decode steps read and write static buffers only; on CUDA the layer is compiled (flex decoding,
  fused element-wise work) and the whole step is replayed as one CUDA graph.
- The host keeps the schedule (which slot holds which request, how many tokens each still needs) in
  numpy, synchronises once per step and timestamps it there.
"""

from __future__ import annotations

import heapq
import resource
import time
from collections import deque

import numpy as np
import torch
from torch import Tensor

from tokencarbon.backends import Request, RequestRecord, ServingResult, StepRecord
from tokencarbon.backends.attention import (
    KV_BLOCK,
    DecodeMask,
    decode_attention,
    prefill_attention,
)
from tokencarbon.backends.checks import check_requests
from tokencarbon.backends.model import TORCH_DTYPES, Block, Decoder, build_model, rotate
from tokencarbon.errors import ConfigError, InputError
from tokencarbon.models import Architecture
from tokencarbon.quantization import NONE, Quantization

# Default prefill token budget: one prefill step of 2,048 tokens is about 33 TFLOP for an 8B model
# (2 x 8.0e9 x 2048), some 50 ms on an H200 - the longest a running request waits between two
# decode steps (a single longer prompt is prefilled alone, whole).
MAX_PREFILL_TOKENS = 2048
# Warm-up calls before capture (compilation, cuBLAS and Triton kernel selection happen there).
GRAPH_WARMUP_STEPS = 3
# torch.compile's per-function cache: one entry per (model shape, max_num_seqs) an engine compiles
# in this process; the default (8) would silently fall back to eager past the eighth.
COMPILE_CACHE_ENTRIES = 64


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
    """One layer of a decode step: x [rows, hidden] (one token per slot), its K/V written at
    (slot, positions[slot]) of k_cache/v_cache [rows, kv_heads, cache_len, head_dim], attention over
    the slot's keys as `mask` allows. The unit torch.compile compiles (once for all layers)."""
    q, k, v = _project(layer, x, rope)
    k_cache[rows, :, positions] = k
    v_cache[rows, :, positions] = v
    return _finish(layer, x, decode_attention(q, k_cache, v_cache, mask))


def _step(index: int, kind: str, times: tuple[int, int, int, int], ids: list, tokens: list):
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
    )


def _rope_rows(rope: tuple[Tensor, Tensor] | None):
    return None if rope is None else (rope[0].unsqueeze(1), rope[1].unsqueeze(1))


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
        max_prefill_tokens: int = MAX_PREFILL_TOKENS,
        prefill_min_seqs: int | None = None,
        cuda_graphs: bool = True,
        compile_layers: bool | None = None,
        quantization: Quantization = NONE,
    ):
        """max_num_seqs: requests in flight at most (slots of the KV pool). max_model_len: prompt +
        output tokens of the longest request a slot holds; None sizes the pool at each serve() for
        that request set's longest (rounded up to KV_BLOCK). max_prefill_tokens: prompt tokens
        one prefill step packs (a longer prompt goes alone). prefill_min_seqs: while more requests
        wait than slots are free, admit only once this many slots are free, so one prefill step
        carries several prompts (default max(1, max_num_seqs // 16)). cuda_graphs: on CUDA,
        replay the decode step as one graph. compile_layers: compile the decode layer with
        torch.compile (default: on CUDA; required there for flex decoding's fused kernel).
        quantization: weight-only scheme applied to the weights once drawn or loaded (build_model;
        tokencarbon.quantization); int4_weight_only needs dtype bfloat16 on CUDA (ConfigError)."""
        self.arch, self.dtype, self.device = arch, dtype, torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(
                f"device {device!r}: torch sees no CUDA device; use 'cpu' or a GPU machine"
            )
        if type(max_num_seqs) is not int or max_num_seqs < 1:
            raise ConfigError(f"max_num_seqs={max_num_seqs!r}; must be an integer >= 1")
        if max_model_len is not None and not 1 <= max_model_len <= arch.max_positions:
            raise ConfigError(
                f"max_model_len={max_model_len!r}; must lie in [1, {arch.name}'s max_positions "
                f"{arch.max_positions}]"
            )
        if max_prefill_tokens < 1:
            raise ConfigError(f"max_prefill_tokens={max_prefill_tokens!r}; must be >= 1")
        self.max_num_seqs = max_num_seqs
        self.max_model_len = max_model_len
        self.max_prefill_tokens = max_prefill_tokens
        self.prefill_min_seqs = (
            max(1, max_num_seqs // 16) if prefill_min_seqs is None else prefill_min_seqs
        )
        if not 1 <= self.prefill_min_seqs <= max_num_seqs:
            raise ConfigError(
                f"prefill_min_seqs={prefill_min_seqs!r}; must lie in [1, max_num_seqs "
                f"{max_num_seqs}]"
            )
        self.graphs = cuda_graphs and self.device.type == "cuda"
        self.compile_layers = self.device.type == "cuda" if compile_layers is None else compile_layers
        self.quantization = quantization
        self.model: Decoder = build_model(arch, dtype, self.device, seed, checkpoint, quantization)
        self._layer_fn = decode_layer
        if self.compile_layers:
            config = torch._dynamo.config
            limit = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
            setattr(config, limit, max(getattr(config, limit), COMPILE_CACHE_ENTRIES))
            self._layer_fn = torch.compile(decode_layer, fullgraph=True, dynamic=False)
        self._cache_len: int | None = None
        self._graph: torch.cuda.CUDAGraph | None = None
        self._capture_stream = torch.cuda.Stream(self.device) if self.graphs else None

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
            x = self._layer_fn(
                layer, x, rope, self._rows, self._pos, k_cache, v_cache, self._mask
            )
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
        """Serve `requests` to completion; every request gets exactly output_len tokens. Raises
        InputError (before any device work) for a request checks.check_requests refuses or one
        longer than max_model_len."""
        check_requests(self.arch, requests)
        totals = [len(r.prompt) + r.output_len for r in requests]
        if self.max_model_len is not None and max(totals) > self.max_model_len:
            i = int(np.argmax(totals))
            raise InputError(
                f"request {requests[i].request_id!r}: {totals[i]} prompt + output tokens exceed "
                f"the engine's max_model_len {self.max_model_len}"
            )
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
                steps.append(_step(len(steps), "prefill", times, [ids[i] for i in batch], tokens_in))
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
                steps.append(_step(len(steps), "decode", (t0, t1, w0, w1), live_ids, [1] * len(live)))
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

    def peak_memory_bytes(self) -> int:
        """Peak device memory allocated by torch on CUDA; the process's peak resident set on CPU."""
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device)
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB

"""The slot engine (kv_layout "slots"): one slot of cache_len positions per request, whole-prompt
prefill steps, a host sync per step. Kept to compare against until the paged engine is measured at
least as fast at every concurrency."""

from __future__ import annotations

import heapq
import time
from collections import deque
from dataclasses import dataclass, field

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
from tokencarbon.backends.model import TORCH_DTYPES, Decoder
from tokencarbon.backends.serving_steps import (
    GRAPH_WARMUP_STEPS,
    _check_max_model_len,
    _finish,
    _project,
    _rope_rows,
    _step,
)
from tokencarbon.models import Architecture

# Default prefill token budget of the slot engine: one prefill step of 2,048 tokens is about 33
# TFLOP for an 8B model (2 x 8.0e9 x 2048), some 50 ms on an H200 - the longest a running request
# waits between two decode steps (a single longer prompt is prefilled alone, whole).
MAX_PREFILL_TOKENS = 2048


def decode_layer(layer, x, rope, rows, positions, k_cache, v_cache, mask: DecodeMask) -> Tensor:
    """One layer of a slot-engine decode step: x [rows, hidden] (one token per slot), its K/V
    written at (slot, positions[slot]) of k_cache/v_cache [rows, kv_heads, cache_len, head_dim],
    attention over the slot's keys as `mask` allows. The unit torch.compile compiles (once for all
    layers)."""
    q, k, v = _project(layer, x, rope)
    k_cache[rows, :, positions] = k
    v_cache[rows, :, positions] = v
    return _finish(layer, x, decode_attention(q, k_cache, v_cache, mask))


@dataclass
class _SlotRun:
    """The host's state of one SlotEngine.serve: the requests (prompt_len, output_len per request;
    generated [requests, longest output] on the device, each row filled once its slot finishes),
    the slots (queue: arrived, not admitted, request indices FCFS; free: a heap, the lowest free
    slot first; slot_request: the request index a slot serves, -1 none; remaining: decode tokens
    it still needs), the times (first_ns, finish_ns [requests, 2]: monotonic and wall ns), the
    step records, and the counters the admission rule reads."""

    requests: list[Request]
    ids: list[str]
    prompt_len: np.ndarray
    output_len: np.ndarray
    generated: Tensor
    queue: deque[int]
    free: list[int]
    slot_request: np.ndarray
    remaining: np.ndarray
    first_ns: np.ndarray
    finish_ns: np.ndarray
    steps: list[StepRecord] = field(default_factory=list)
    finished: int = 0
    running: int = 0
    last_was_prefill: bool = False


def _slot_result(
    run: _SlotRun, start_ns: int, start_wall_ns: int, arrival_offset_ns: np.ndarray
) -> ServingResult:
    """The ServingResult of a finished SlotEngine.serve: each request's record and tokens."""
    n, ids, prompt_len, output_len = len(run.ids), run.ids, run.prompt_len, run.output_len
    first_ns, finish_ns, steps = run.first_ns, run.finish_ns, run.steps
    end_ns, end_wall_ns = steps[-1].end_ns, steps[-1].end_wall_ns

    tokens = run.generated.tolist()
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
        run = _SlotRun(
            requests=requests,
            ids=ids,
            prompt_len=prompt_len,
            output_len=output_len,
            generated=generated,
            queue=deque(),
            free=list(range(slots_n)),
            slot_request=np.full(slots_n, -1),
            remaining=np.zeros(slots_n, dtype=np.int64),
            first_ns=np.zeros((n, 2), dtype=np.int64),
            finish_ns=np.zeros((n, 2), dtype=np.int64),
        )
        arrived = 0

        self._sync()
        start_ns, start_wall_ns = time.monotonic_ns(), time.time_ns()
        while run.finished < n:
            now_ns = time.monotonic_ns() - start_ns
            while arrived < n and arrival_offset_ns[order[arrived]] <= now_ns:
                run.queue.append(order[arrived])
                arrived += 1
            admit = min(len(run.queue), len(run.free))
            if admit and (
                run.running == 0
                or (
                    not run.last_was_prefill
                    and (len(run.queue) <= len(run.free) or admit >= self.prefill_min_seqs)
                )
            ):
                self._prefill_step(run)
                continue
            if run.running:
                self._decode_and_record(run)
                continue
            # nothing runs and nothing waits: sleep until the next arrival
            time.sleep(max(0, arrival_offset_ns[order[arrived]] - now_ns) / 1e9)
        return _slot_result(run, start_ns, start_wall_ns, arrival_offset_ns)

    def _keep_tokens(self, run: _SlotRun, slots: list[int]) -> None:
        """Before the slots are reused: their generated tokens into their requests' rows."""
        index = torch.tensor(slots, device=self.device)
        rows = torch.tensor(run.slot_request[slots], device=self.device)
        run.generated[rows] = self._out[index, : run.generated.shape[1]]

    def _prefill_step(self, run: _SlotRun) -> None:
        """Admit waiting requests (FCFS, into the lowest free slots, their prompts packed up to
        max_prefill_tokens, at least one) and run their prefill step: each one's first token; a
        request of one output token finishes here and frees its slot."""
        batch, tokens = [], 0
        while run.queue and len(batch) < len(run.free):
            if batch and tokens + run.prompt_len[run.queue[0]] > self.max_prefill_tokens:
                break
            tokens += int(run.prompt_len[run.queue[0]])
            batch.append(run.queue.popleft())
        slots = [heapq.heappop(run.free) for _ in batch]
        t0, w0 = time.monotonic_ns(), time.time_ns()
        first = self._prefill([run.requests[i].prompt for i in batch], slots)
        slot_index = torch.tensor(slots, device=self.device)
        self._out[slot_index, 0] = first
        self._tokens[slot_index] = first
        more = [int(run.output_len[i] > 1) for i in batch]  # still decoding after this step
        pos = [int(run.prompt_len[i]) * m for i, m in zip(batch, more)]
        self._set_slots(slots, pos, more, more)
        run.slot_request[slots] = batch
        run.remaining[slots] = run.output_len[batch] - 1
        done = [s for s, m in zip(slots, more) if not m]
        if done:
            self._keep_tokens(run, done)
        self._sync()
        t1, w1 = time.monotonic_ns(), time.time_ns()
        times = (t0, t1, w0, w1)
        tokens_in = run.prompt_len[batch].tolist()
        run.steps.append(
            _step(
                len(run.steps),
                "prefill",
                times,
                [run.ids[i] for i in batch],
                tokens_in,
                [1] * len(batch),
            )
        )
        run.first_ns[batch] = (t1, w1)
        for s in done:
            run.finish_ns[run.slot_request[s]] = (t1, w1)
            run.slot_request[s] = -1
            heapq.heappush(run.free, s)
        run.finished += len(done)
        run.running += len(batch) - len(done)
        run.last_was_prefill = True

    def _decode_and_record(self, run: _SlotRun) -> None:
        """One decode step (the captured graph, else eagerly) for every running slot; slots whose
        request got its last token are freed."""
        live = np.flatnonzero(run.remaining > 0)
        t0, w0 = time.monotonic_ns(), time.time_ns()
        if self._graph is not None:
            self._graph.replay()
        else:
            self._decode_step()
        self._sync()
        t1, w1 = time.monotonic_ns(), time.time_ns()
        live_ids = [run.ids[i] for i in run.slot_request[live]]
        run.steps.append(
            _step(
                len(run.steps),
                "decode",
                (t0, t1, w0, w1),
                live_ids,
                [1] * len(live),
                [1] * len(live),
            )
        )
        run.remaining[live] -= 1
        done = live[run.remaining[live] == 0].tolist()
        if done:
            self._keep_tokens(run, done)
            self._set_slots(done, [0] * len(done), [0] * len(done), [0] * len(done))
            run.finish_ns[run.slot_request[done]] = (t1, w1)
            run.slot_request[done] = -1
            for s in done:
                heapq.heappush(run.free, s)
            run.finished += len(done)
            run.running -= len(done)
        run.last_was_prefill = False

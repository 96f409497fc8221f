"""The paged engine (kv_layout "paged", TorchServingEngine's default): a paged KV pool (paged.py)
sized from the device's memory (gpu_memory_utilization) or num_blocks; per-request block tables;
admission by free blocks; preemption by recompute when the pool runs out (paged_schedule.py);
chunked prefill within max_num_batched_tokens per step, decode rows riding prompt steps (mixed
steps); decode-only steps replayed as CUDA graphs (one per row bucket), block tables as graph
inputs; the host schedules step k + 1 while the device runs step k (upload_ring.py) and timestamps
steps with CUDA events (step_clock.py)."""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from tokencarbon.backends import Request, RequestRecord, ServingResult, StepRecord
from tokencarbon.backends.attention import PagedDecodeMask, chunk_attention, paged_decode_attention
from tokencarbon.backends.checks import check_requests, token_limit
from tokencarbon.backends.model import TORCH_DTYPES, Decoder
from tokencarbon.backends.paged import (
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
from tokencarbon.backends.serving_steps import (
    GRAPH_WARMUP_STEPS,
    _check_max_model_len,
    _finish,
    _project,
    _rope_rows,
    _step,
)
from tokencarbon.backends.step_clock import _Clock
from tokencarbon.backends.upload_ring import _Uploader
from tokencarbon.errors import ConfigError, InputError
from tokencarbon.models import Architecture

# The paged engine's tokens per step (vLLM's max_num_batched_tokens: decode rows count one each,
# prompt chunks fill the rest): the same 2,048, so a step stalls decode rows no longer than the slot
# engine's prefill step did.
DEFAULT_MAX_NUM_BATCHED_TOKENS = 2048
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
        # seconds of the build's parts (TorchServingEngine.build_s; meta.json "engine_parts_s")
        self.build_s: dict[str, float] = {"activation_profile": 0.0, "graph_capture": 0.0}
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
            start = time.perf_counter()
            self._graph_pool = torch.cuda.graph_pool_handle()
            for bucket in self._buckets.values():
                self._capture(bucket)  # compiles the layer for the bucket's rows, then captures
            self.build_s["graph_capture"] += time.perf_counter() - start

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
        start = time.perf_counter()
        self._make_pool(blocks, "profile", capture=False)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        self._profile_step(n_chunks, chunk)
        torch.cuda.synchronize(device)
        self.build_s["activation_profile"] += time.perf_counter() - start
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
        bs = self.block_size
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
        clock, steps = self._run_steps(sched, store, poff, goff, ids)
        times = clock.resolve([m for s in steps for m in (s[4], s[5])])
        leaks = sched.leaks()
        if leaks:
            raise RuntimeError(f"paged engine: after serving, {leaks} (a scheduling bug)")
        records = [
            _step(k, kind, _pair(times, k), rids, toks, new)
            for k, (kind, rids, toks, new, _, _) in enumerate(steps)
        ]
        return _paged_result(
            records, sched, clock, ids, prompt_len, output_len, arrival, store, goff
        )

    def _run_steps(self, sched: Schedule, store: Tensor, poff, goff, ids: list[str]):
        """Launch steps until `sched` is done, sleeping until the next arrival when nothing can
        run: (the clock, a list per step [kind, request ids, tokens, new tokens, start mark, end
        mark]). On CUDA at most STEPS_AHEAD steps are queued beyond the one running; the marks of
        a step known done are read (_Clock.read) as it goes."""
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
        return clock, steps

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


def _paged_result(
    records: list[StepRecord],
    sched: Schedule,
    clock: _Clock,
    ids: list[str],
    prompt_len: np.ndarray,
    output_len: np.ndarray,
    arrival: np.ndarray,
    store: Tensor,
    goff: np.ndarray,
) -> ServingResult:
    """The ServingResult of a paged serve(): each request's record (its first token and its finish
    at the end of the steps that sampled them, sched.first_step and finish_step; arrival on the
    engine's clock) and its tokens, read from the token store at goff."""
    n = len(ids)
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
            ids[i]: tuple(generated[goff[i] : goff[i] + output_len[i]].tolist()) for i in range(n)
        },
    )

"""Transformers backend (`backend.name: transformers`): any decoder-only causal LM that
transformers.AutoModelForCausalLM loads, the user's checkpoint or an architecture with seeded dummy
weights, served two ways with the records the torch engines write:

- static batches (run_batch -> BatchResult) through `generate()` with a static KV cache: greedy,
  prompts left-padded to the longest, EOS ignored; one generate call cannot give each request its
  own min/max_new_tokens, so the batch generates to its longest output and each request counts its
  own length (as the torch static engine does: the shorter ones keep decoding, uncounted);
- continuous batching (serve -> ServingResult) through transformers' own ContinuousBatchingManager:
  at most max_num_seqs requests in flight (its max_requests_per_batch, FIFO scheduler: decoding
  requests are scheduled first), per-request max_new_tokens, EOS disabled, requests added at their
  arrival times; first-token and finish times from the per-token timestamps transformers records.
  transformers does not expose its steps, so ServingResult.steps is empty.

Weight-only quantization (models.<name>.quantization; tokencarbon.quantization) goes through
transformers' torchao integration where transformers loads the weights: a checkpoint is loaded with
from_pretrained(quantization_config=transformers.TorchAoConfig(<torchao config>,
modules_to_not_convert=[...])) on the target device (transformers 5.x quantizes each nn.Linear
weight as it is loaded; its default would also leave an untied lm_head unquantized, so the list is
given: only a tied lm_head is kept, as the torch backend does). Dummy weights (from_config) are
drawn first and then quantized with torchao's quantize_ (quantization.quantize_module), as
TorchAoConfig does not apply to from_config. Both use the same torchao config: Int4WeightOnlyConfig
(tile_packed_to_4d, CUDA bf16) or Int8WeightOnlyConfig (per row). GPT-2's Conv1D projections are
no nn.Linear: the DAG refuses a quantized GPT-2 on this backend (config._check_quantization).

describe() says what ran: transformers and torch versions, the attention implementation the model
used, whether the decode step was compiled (CUDA graphs), the continuous-batching settings, the
quantization.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import resource
import time
from typing import Any

import torch
import transformers
from torch import nn

from tokencarbon.backends import BatchResult, Request, RequestRecord, ServingResult
from tokencarbon.backends.checks import check_prompts, check_requests
from tokencarbon.errors import ConfigError
from tokencarbon.models import Architecture, check_checkpoint_matches, to_hf_config
from tokencarbon.quantization import (
    NONE,
    Quantization,
    check_supported,
    quantize_module,
    record,
    torchao_config,
)

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
INIT_STD = 0.02  # as the torch backend's dummy weights: N(0, 0.02) linear and embedding weights
# Static-cache lengths are rounded up to this, so that batches of similar length share one cache
# shape (one compiled decode graph on CUDA) instead of one per batch.
CACHE_ALIGN = 256
# Attention implementations of a static-batch model (transformers' attn_implementation names);
# continuous batching runs them in their paged form (transformers picks "paged|<name>").
ATTENTION = ("sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention")
# New tokens of the untimed generate that meets a new static-cache shape first: torch.compile's
# "reduce-overhead" mode compiles on the first decode step and records its CUDA graph on a later one,
# so three decode steps leave the timed batches only graph replays.
WARMUP_NEW_TOKENS = 4
# How long serve() waits for the next finished request before it checks the manager is alive.
RESULT_POLL_S = 1.0


def _clock_points() -> tuple[int, int, float]:
    """(time.monotonic_ns, time.time_ns, time.perf_counter) read together: transformers stamps its
    requests with perf_counter, converted to our two clocks through these."""
    return time.monotonic_ns(), time.time_ns(), time.perf_counter()


# ---------------------------------------------------------------- model


def load_model(
    arch: Architecture,
    dtype: str,
    device: str | torch.device,
    seed: int,
    checkpoint: str | None = None,
    attn_implementation: str = "sdpa",
    quantization: Quantization = NONE,
) -> transformers.PreTrainedModel:
    """The model on `device` in `dtype`, eval mode, no gradients: the checkpoint (a local Hugging
    Face directory or a cached hub id, offline; its config must match `arch`, else ConfigError
    naming both values), or transformers' class for arch.model_type built from to_hf_config(arch)
    with seeded dummy weights drawn as the torch backend draws them: every linear, Conv1D and
    embedding weight N(0, 0.02) from one torch.Generator(seed) on the device, biases 0, norm
    weights 1 (norm biases 0). quantization: weight-only, through TorchAoConfig for a checkpoint,
    quantize_ after drawing for dummy weights (module docstring); ConfigError where torchao has no
    kernel for the dtype and device (int4: bfloat16 on CUDA only)."""
    if dtype not in TORCH_DTYPES:
        raise ConfigError(f"dtype {dtype!r}; valid: {list(TORCH_DTYPES)}")
    if attn_implementation not in ATTENTION:
        raise ConfigError(
            f"attn_implementation {attn_implementation!r}; valid: {list(ATTENTION)} "
            "(transformers' names; the flash ones need their package installed)"
        )
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {str(device)!r}: torch sees no CUDA device; use 'cpu' or a GPU")
    check_supported(quantization, dtype, device.type)
    kwargs = dict(dtype=TORCH_DTYPES[dtype], attn_implementation=attn_implementation)
    if checkpoint:
        check_checkpoint_matches(arch, checkpoint)
        if quantization.quantized:
            # quantized as loaded, on the device (tinygemm packs int4 on CUDA)
            kwargs |= dict(quantization_config=_torchao_config(arch, quantization),
                           device_map=str(device))  # fmt: skip
        model = transformers.AutoModelForCausalLM.from_pretrained(
            checkpoint, local_files_only=True, **kwargs
        )
        if not quantization.quantized:
            model = model.to(device)
    else:
        # no bos/eos/pad ids: dummy weights have no special tokens (and EOS is never honoured)
        config = to_hf_config(arch, bos_token_id=None, eos_token_id=None, pad_token_id=None)
        with device:
            model = transformers.AutoModelForCausalLM.from_config(config, **kwargs)
        _init_dummy(model, seed)
        quantize_module(model, quantization)
    return model.requires_grad_(False).eval()


def _torchao_config(arch: Architecture, quantization: Quantization):
    """transformers.TorchAoConfig for from_pretrained: torchao_config(quantization) on every
    nn.Linear but a tied lm_head (modules_to_not_convert given, so transformers' default of also
    skipping an untied lm_head does not apply)."""
    return transformers.TorchAoConfig(
        torchao_config(quantization),
        modules_to_not_convert=["lm_head"] if arch.tied_embeddings else [],
    )


@torch.no_grad()
def _init_dummy(model: nn.Module, seed: int) -> None:
    weighted = (nn.Linear, nn.Embedding, transformers.pytorch_utils.Conv1D)
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    done: set[int] = set()
    for module in model.modules():
        own = dict(module.named_parameters(recurse=False))
        if not own:
            continue
        weight, bias = own.pop("weight", None), own.pop("bias", None)
        if own or weight is None:
            raise ConfigError(
                f"dummy weights: {type(module).__name__} has parameters {sorted(own) or ['bias']} "
                "this backend does not know how to draw; use a checkpoint"
            )
        if isinstance(module, weighted):
            weight.normal_(0.0, INIT_STD, generator=gen)
        elif weight.dim() == 1:  # RMSNorm / LayerNorm
            weight.fill_(1.0)
        else:
            raise ConfigError(
                f"dummy weights: unknown module {type(module).__name__} with a matrix"
            )
        if bias is not None:
            bias.zero_()
        done |= {id(weight)} | ({id(bias)} if bias is not None else set())
    missed = [n for n, p in model.named_parameters() if id(p) not in done]
    if missed:
        raise ConfigError(f"dummy weights: parameters {missed[:5]} were not drawn")


def _cache_kwarg(model: nn.Module) -> str:
    """The name generate() takes a Cache under: `cache` since transformers 5.2x, `past_key_values`
    before."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


class _FirstToken(transformers.StoppingCriteria):
    """Stamps the moment the first generated token exists (after a device sync), never stops."""

    def __init__(self, sync) -> None:
        self.sync, self.stamp = sync, None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        if self.stamp is None:
            self.sync()
            self.stamp = (time.monotonic_ns(), time.time_ns())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


# ---------------------------------------------------------------- engine


class TransformersEngine:
    """A transformers model serving static batches (run_batch, tokencarbon.backends.Engine) and,
    when built with max_num_seqs, request sets by continuous batching (serve,
    tokencarbon.backends.ServingEngine)."""

    def __init__(
        self,
        arch: Architecture,
        dtype: str,
        device: str | torch.device,
        seed: int,
        checkpoint: str | None = None,
        *,
        pad_token_id: int = 0,
        attn_implementation: str = "sdpa",
        compile_decode: bool | None = None,
        max_cache_len: int | None = None,
        max_num_seqs: int | None = None,
        cuda_graphs: bool | None = None,
        quantization: Quantization = NONE,
    ):
        """compile_decode: let generate() compile the decode step of the static cache
        (torch.compile, CUDA graphs); None: transformers' own choice (on CUDA with a static cache,
        yes). Each new cache shape is compiled by an untimed short generate before the batch's
        timed window. max_cache_len: size every static cache for at least this many positions (the
        workload's longest prompt + output), so one cache shape, one compiled graph, serves every
        batch of a size. max_num_seqs: requests in flight under continuous batching. cuda_graphs:
        ContinuousBatchingConfig.use_cuda_graph (None: transformers decides; on CUDA, yes).
        quantization: weight-only scheme (load_model; tokencarbon.quantization)."""
        self.arch, self.dtype, self.device = arch, dtype, torch.device(device)
        if not 0 <= pad_token_id < arch.vocab_size:
            raise ConfigError(
                f"pad_token_id {pad_token_id} outside the vocabulary [0, {arch.vocab_size})"
            )
        if max_num_seqs is not None and (type(max_num_seqs) is not int or max_num_seqs < 1):
            raise ConfigError(f"max_num_seqs={max_num_seqs!r}; must be a positive integer")
        if max_cache_len is not None and (type(max_cache_len) is not int or max_cache_len < 1):
            raise ConfigError(f"max_cache_len={max_cache_len!r}; must be a positive integer")
        self.pad_token_id, self.max_num_seqs = pad_token_id, max_num_seqs
        self.compile_decode, self.cuda_graphs = compile_decode, cuda_graphs
        self.max_cache_len = max_cache_len
        self.quantization = quantization
        self.model = load_model(
            arch, dtype, self.device, seed, checkpoint, attn_implementation, quantization
        )
        self.checkpoint = checkpoint
        self.attn_implementation = self.model.config._attn_implementation
        # generate() fills unset values from the model's generation config (a checkpoint's
        # generation_config.json holds its EOS): replace it, so EOS is never honoured.
        self.model.generation_config = transformers.GenerationConfig(
            do_sample=False, num_beams=1, eos_token_id=None, bos_token_id=None,
            pad_token_id=pad_token_id, use_cache=True,
        )  # fmt: skip
        self._cache = None  # the static cache of the last batch shape, reused while it fits
        self._cache_shape: tuple[int, int] | None = None
        self._cache_kwarg = _cache_kwarg(self.model)
        self._manager = None  # transformers' ContinuousBatchingManager, kept across serve() calls
        self._serving: dict[str, Any] = {}

    # ------------------------------------------------------------ static batches

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _limit(self) -> tuple[int, str]:
        # transformers runs a sliding window itself: a request may fill max_positions.
        return self.arch.max_positions, f"{self.arch.name}'s max_positions {self.arch.max_positions}"

    def _check(self, prompts: list[list[int]], output_lengths: list[int], labels=None) -> None:
        max_tokens, limit_source = self._limit()
        check_prompts(
            prompts, output_lengths, max_tokens=max_tokens, limit_source=limit_source,
            vocab_size=self.arch.vocab_size, labels=labels,
        )  # fmt: skip

    def _generation_config(self, new_tokens: int) -> transformers.GenerationConfig:
        config = transformers.GenerationConfig(
            max_new_tokens=new_tokens, do_sample=False, num_beams=1, eos_token_id=None,
            pad_token_id=self.pad_token_id, use_cache=True,
        )  # fmt: skip
        if self.compile_decode is not None:
            config.disable_compile = not self.compile_decode
        return config

    def _static_cache(self, batch: int, needed: int):
        """A static cache for `batch` requests holding at least `needed` positions: the current
        one reset when it fits, else a new one of max(needed, max_cache_len) rounded up to
        CACHE_ALIGN. Returns (cache, is_new)."""
        if self._cache_shape and self._cache_shape[0] == batch and self._cache_shape[1] >= needed:
            self._cache.reset()
            return self._cache, False
        length = max(needed, self.max_cache_len or 0)
        length = min(-(-length // CACHE_ALIGN) * CACHE_ALIGN, max(self.arch.max_positions, needed))
        self._cache = self._cache_shape = None
        self._cache = transformers.StaticCache(config=self.model.config, max_cache_len=length)
        self._cache_shape = (batch, length)
        return self._cache, True

    def _generate(self, tokens, mask, new_tokens: int, cache, stopping=None) -> torch.Tensor:
        return self.model.generate(
            input_ids=tokens,
            attention_mask=mask,
            generation_config=self._generation_config(new_tokens),
            stopping_criteria=transformers.StoppingCriteriaList(stopping or []),
            **{self._cache_kwarg: cache},
        )

    @torch.no_grad()
    def run_batch(
        self,
        prompts: list[list[int]],
        output_lengths: list[int],
        *,
        reserve_output_len: int = 0,
    ) -> BatchResult:
        """One static batch, greedy, EOS ignored: prompts left-padded with pad_token_id to the
        longest, generate() to the longest output length, each request keeping its own. Timing
        points: batch start (after a device sync), first token (the first stopping-criteria call,
        after a sync: prefill done), end (after a sync). reserve_output_len: size the static cache
        for at least this many output tokens (the OOM probe). A cache shape first seen is
        allocated (and, on CUDA, its decode step compiled) by an untimed WARMUP_NEW_TOKENS-token
        generate before the timed window."""
        self._check(prompts, [max(n, reserve_output_len) for n in output_lengths])
        n, lens = len(prompts), [len(p) for p in prompts]
        padded_len, max_out = max(lens), max(output_lengths)
        tokens = torch.tensor(
            [[self.pad_token_id] * (padded_len - k) + list(p) for p, k in zip(prompts, lens)],
            device=self.device,
        )
        mask = torch.tensor(
            [[0] * (padded_len - k) + [1] * k for k in lens], device=self.device, dtype=torch.long
        )
        # (never past the position table: GPT-2's is learned)
        warmup = max(1, min(WARMUP_NEW_TOKENS, self.arch.max_positions - padded_len))
        cache, new = self._static_cache(n, padded_len + max(max_out, reserve_output_len, warmup))
        if new:  # allocation and, on CUDA, the decode graph's compilation, outside the window
            self._generate(tokens, mask, warmup, cache)
            cache.reset()
        first = _FirstToken(self._sync)
        self._sync()
        start_ns, start_wall_ns = time.monotonic_ns(), time.time_ns()
        out = self._generate(tokens, mask, max_out, cache, [first])
        self._sync()
        end_ns, end_wall_ns = time.monotonic_ns(), time.time_ns()
        generated = out[:, padded_len:].tolist()
        if out.shape[1] != padded_len + max_out or first.stamp is None:
            raise RuntimeError(
                f"generate() returned {out.shape[1] - padded_len} new tokens, expected {max_out}"
            )
        return BatchResult(
            n_requests=n,
            input_tokens=sum(lens),
            output_tokens=sum(output_lengths),
            padded_input_len=padded_len,
            max_output_tokens=max_out,
            start_ns=start_ns,
            first_token_ns=first.stamp[0],
            end_ns=end_ns,
            start_wall_ns=start_wall_ns,
            first_token_wall_ns=first.stamp[1],
            end_wall_ns=end_wall_ns,
            token_ids=tuple(tuple(row[:k]) for row, k in zip(generated, output_lengths)),
        )

    def release(self) -> None:
        """Drop the static cache (the weights stay loaded)."""
        self._cache = self._cache_shape = None

    # ------------------------------------------------------------ continuous batching

    def _cb_config(self, requests: list[Request]):
        """ContinuousBatchingConfig: max_requests_per_batch = max_num_seqs, prefix sharing off
        (every request computes its own prompt, as in the static cells), no silent switch to flash
        attention (the attention that runs is the one recorded). Keys this transformers does not
        have are left out and recorded as such."""
        wanted = {
            "max_requests_per_batch": self.max_num_seqs,
            "allow_block_sharing": False,
            "auto_switch_to_flash": False,
            "scheduler_type": "fifo",
        }
        if self.cuda_graphs is not None:
            wanted["use_cuda_graph"] = self.cuda_graphs
        fields_ = {f.name for f in dataclasses.fields(transformers.ContinuousBatchingConfig)}
        if self.device.type == "cpu":
            # transformers sizes its paged cache and per-step token budget from free memory (a GPU
            # notion: ~90 % of it); on a CPU, size them for the workload instead: max_num_seqs
            # requests of the longest length in flight, over the FIFO scheduler's 15 % free-block
            # safety margin, and a step of at most the longest prompt (at least 256 tokens).
            page = next((getattr(transformers.ContinuousBatchingConfig(), k) for k in
                         ("page_size", "block_size") if k in fields_), 256)  # fmt: skip
            longest = max(len(r.prompt) + r.output_len for r in requests)
            needed = self.max_num_seqs * -(-longest // page)
            wanted["num_blocks"] = math.ceil(needed / 0.85) + 1
            wanted["max_batch_tokens"] = max(256, max(len(r.prompt) for r in requests))
        if "max_requests_per_batch" not in fields_:
            raise ConfigError(
                f"transformers {transformers.__version__}: ContinuousBatchingConfig has no "
                "max_requests_per_batch, so max_num_seqs cannot be honoured; use transformers >= 5.17"
            )
        self._serving["continuous_batching_config"] = {
            k: v for k, v in wanted.items() if k in fields_
        }
        self._serving["not_supported_here"] = sorted(set(wanted) - fields_)
        return transformers.ContinuousBatchingConfig(
            **{k: v for k, v in wanted.items() if k in fields_}
        )

    def _manager_for(self, requests: list[Request]):
        """transformers' ContinuousBatchingManager: created (and, on CUDA, warmed up: its CUDA
        graphs captured) by the first call, outside any timed window; later calls get the same
        manager back from init_continuous_batching (kept on the model by stop(keep_for_next_session
        =True)), which also switches the model to its continuous-batching attention again."""
        generation = transformers.GenerationConfig(
            do_sample=False, num_beams=1, eos_token_id=-1, pad_token_id=self.pad_token_id,
            max_new_tokens=max(r.output_len for r in requests),
        )  # fmt: skip
        kwargs: dict[str, Any] = dict(
            generation_config=generation, continuous_batching_config=self._cb_config(requests)
        )
        try:  # sizes the paged cache for the workload (transformers >= 5.1x)
            from transformers.generation.continuous_batching.utils import WorkloadHints

            kwargs["workload_hints"] = WorkloadHints(
                max_prompt_length=max(len(r.prompt) for r in requests),
                max_generated_length=max(r.output_len for r in requests),
                num_requests=len(requests),
            )
        except ImportError:
            pass
        manager = self.model.init_continuous_batching(**kwargs)
        if manager is not self._manager:
            if self.device.type == "cuda" and hasattr(manager, "warmup"):
                manager.warmup()  # CUDA graphs captured here, before any timed window
            self._manager = manager
        return manager

    def _record_manager(self, manager) -> None:
        """What the manager ran with, once it has served: the attention implementation the model
        used and the paged cache's sizes."""
        self._serving["attn_implementation"] = self.model.config._attn_implementation
        cache = getattr(getattr(manager, "batch_processor", None), "cache", None)
        for key in ("num_blocks", "block_size", "page_size", "max_batch_tokens"):
            if isinstance(getattr(cache, key, None), int):
                self._serving[f"cache_{key}"] = getattr(cache, key)

    @torch.no_grad()
    def serve(self, requests: list[Request]) -> ServingResult:
        """Serve `requests` by transformers' continuous batching: each added at its arrival_s
        after the start of serving, generating exactly its output_len tokens greedily (EOS
        disabled). Times (monotonic and wall ns) per request: arrival (when added), first token
        and finish (transformers' per-token timestamps). The window starts when serving starts and
        ends at the last token of the last request. The manager (its paged KV cache and CUDA
        graphs) is created and warmed up on the first call, outside any window, and kept."""
        if self.max_num_seqs is None:
            raise ConfigError(
                "serve() needs an engine built with max_num_seqs (continuous batching)"
            )
        self._check_requests(requests)
        manager = self._manager_for(requests)
        by_id = {r.request_id: r for r in requests}
        order = sorted(requests, key=lambda r: r.arrival_s)
        results: dict[str, Any] = {}
        manager.start()
        try:
            self._wait_until_serving(manager)
            self._sync()
            start_ns, start_wall_ns, start_perf = _clock_points()
            for r in order:
                delay = start_perf + r.arrival_s - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                manager.add_request(
                    list(r.prompt), request_id=r.request_id, max_new_tokens=r.output_len,
                    record_timestamps=True, eos_token_id=-1,
                )  # fmt: skip
            while len(results) < len(requests):
                out = manager.get_result(timeout=RESULT_POLL_S)
                if out is None:
                    if not manager.is_running():
                        raise RuntimeError(
                            f"transformers' continuous batching stopped with {len(results)} of "
                            f"{len(requests)} requests finished"
                        )
                    continue
                if out.error is not None:
                    raise RuntimeError(
                        f"request {out.request_id!r} failed in transformers: {out.error}"
                    )
                if out.is_finished():
                    results[out.request_id] = out
            self._record_manager(manager)
        finally:
            manager.stop(block=True, keep_for_next_session=True)

        def ns(t_perf: float) -> tuple[int, int]:
            delta = round((t_perf - start_perf) * 1e9)
            return start_ns + delta, start_wall_ns + delta

        records, token_ids = [], {}
        for rid, out in results.items():
            r = by_id[rid]
            got = list(out.generated_tokens)
            if len(got) != r.output_len or not out.timestamps or len(out.timestamps) != len(got):
                raise RuntimeError(
                    f"request {rid!r}: transformers returned {len(got)} tokens with "
                    f"{len(out.timestamps or [])} timestamps; expected {r.output_len} of each"
                )
            (arr, arr_w), (first, first_w) = ns(out.created_time), ns(out.timestamps[0])
            fin, fin_w = ns(out.timestamps[-1])
            records.append(
                RequestRecord(rid, len(r.prompt), len(got), arr, first, fin, arr_w, first_w, fin_w)
            )
            token_ids[rid] = tuple(got)
        records.sort(key=lambda rec: (rec.arrival_ns, rec.request_id))
        end = max(records, key=lambda rec: rec.finish_ns)
        return ServingResult(
            requests=tuple(records),
            steps=(),  # transformers' manager does not expose its steps
            start_ns=start_ns,
            end_ns=end.finish_ns,
            start_wall_ns=start_wall_ns,
            end_wall_ns=end.finish_wall_ns,
            token_ids=token_ids,
        )

    def _wait_until_serving(self, manager) -> None:
        """Serve one 1-token request before the window: the manager's thread resets its batch
        processor and cache when it starts (seconds on a CPU), which must not count as serving."""
        self._probes = getattr(self, "_probes", 0) + 1
        rid = f"__tokencarbon_start_{self._probes}"
        manager.add_request([0], request_id=rid, max_new_tokens=1, eos_token_id=-1)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            out = manager.get_result(request_id=rid, timeout=RESULT_POLL_S)
            if out is not None and out.is_finished():
                if out.error is not None:
                    raise RuntimeError(f"transformers' continuous batching failed: {out.error}")
                return
            if out is None and not manager.is_running():
                raise RuntimeError("transformers' continuous batching stopped before serving")
        raise RuntimeError(
            "transformers' continuous batching did not serve a 1-token request in 600 s"
        )

    def _check_requests(self, requests: list[Request]) -> None:
        check_requests(self.arch, requests, limit=self._limit())

    def close(self) -> None:
        """Stop transformers' manager thread and free its paged cache."""
        if self._manager is not None:
            self._manager.destroy() if hasattr(self._manager, "destroy") else None
            self.model.__dict__.pop("_cached_continuous_batching_manager", None)
            self._manager = None

    # ------------------------------------------------------------ records

    def peak_memory_bytes(self) -> int:
        """Peak device memory allocated by torch on CUDA; the process's peak resident set on CPU."""
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device)
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB

    def describe(self) -> dict[str, Any]:
        """What ran, for meta.json: versions, model class, attention implementation (static and,
        once serve() has run, continuous), compile setting, cache settings."""
        return {
            "backend": "transformers",
            "transformers_version": transformers.__version__,
            "torch_version": torch.__version__,
            "model_class": type(self.model).__name__,
            "weights": (
                "checkpoint" if self.checkpoint else "dummy: N(0, 0.02) linear/embedding, norm 1"
            ),
            "attn_implementation": self.attn_implementation,
            "static": {
                "cache": "StaticCache",
                "cache_align": CACHE_ALIGN,
                "max_cache_len": self.max_cache_len,
                "compile_decode": self.compile_decode,
            },
            "continuous": dict(self._serving, max_num_seqs=self.max_num_seqs),
            **record(self.quantization),
            "quantization_path": (
                None if not self.quantization.quantized
                else "TorchAoConfig (from_pretrained)" if self.checkpoint
                else "torchao quantize_ after drawing (from_config)"
            ),  # fmt: skip
        }


def engine_for_cell(
    arch: Architecture,
    model: dict[str, Any],
    options: dict[str, Any] | None,
    device: str,
    *,
    max_num_seqs: int | None = None,
    max_cache_len: int | None = None,
) -> TransformersEngine:
    """The engine a cell runs: model is the model slice (dtype, seed, checkpoint, quantization),
    options the transformers backend options (engine.TRANSFORMERS_OPTIONS: attn_implementation,
    compile_decode, cuda_graphs; checked, ConfigError naming a bad one). max_num_seqs for a
    continuous cell; max_cache_len (the workload's longest prompt + output) for a static one.
    Close it (engine.close()) when the cell ends: it stops transformers' manager thread."""
    from tokencarbon.engine import transformers_options
    from tokencarbon.quantization import of_model

    opts = transformers_options(options)
    return TransformersEngine(
        arch,
        model["dtype"],
        device,
        seed=model["seed"],
        checkpoint=model["checkpoint"],
        attn_implementation=opts["attn_implementation"],
        compile_decode=opts["compile_decode"],
        cuda_graphs=opts["cuda_graphs"],
        max_num_seqs=max_num_seqs,
        max_cache_len=max_cache_len,
        quantization=of_model(model),
    )

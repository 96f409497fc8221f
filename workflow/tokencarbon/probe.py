"""OOM probe: the largest static batch a model serves on a device, and (continuous batching) the
largest max_num_seqs whose serving engine fits, at the workload's longest prompt and longest output.

Each limit is predicted from the memory model (weights as stored, KV cache per request, the
prefill's activations and masks: static_memory_model, serving_memory_model), calibrated by the
measured peak memory of small real tries, and confirmed by real tries at the predicted limit (must
fit) and at the limit + 1 (must fail, unless the limit is the configured cap). A confirmation that
disagrees continues as a short search from the prediction (galloping, then bisection), so the
answer is always the one real tries bound; probe.json records what the model predicted, what was
measured, the calibrated prediction, whether it held, and every try with its peak bytes and
seconds.

Real tries: on CUDA in this process, under torch.cuda.set_per_process_memory_fraction when a cap is
set. On the CPU in a worker process (`python -c ... _worker_main`) whose data segment is capped
with setrlimit(RLIMIT_DATA) at its baseline (the interpreter and torch, measured before the weights
are built) plus the budget, so that torch's allocations really fail past it; a try after a failed
one runs in a fresh worker. At the boundary the CPU's outcome can vary by a request between runs
where a request is about a megabyte (threads' temporary buffers overlap differently each time).

A probe's result depends only on its key (probe_key: hardware and cap, architecture, dtype,
quantization, prompt/output lengths, limits, engine and probe code); run_probe with a cache_dir
reuses a result stored under the same key and says so in probe.json (reused_from).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import gc
import hashlib
import json
import math
import os
import resource
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
import torch

from tokencarbon.backends.static import CACHE_ALIGN, TorchEngine
from tokencarbon.errors import ConfigError, InputError, TokencarbonError
from tokencarbon.files import write_json
from tokencarbon.hardware import check_platform, detect
from tokencarbon.models import (
    DTYPE_BYTES,
    Architecture,
    activation_bytes,
    architecture_from_dict,
    architecture_to_dict,
    kv_cache_bytes,
    resolve_architecture,
    weight_bytes,
)
from tokencarbon.quantization import NONE, Quantization, of_model, parse_quantization
from tokencarbon.quantization import record as quantization_record

if TYPE_CHECKING:  # the CPU worker imports this module: no pandas there (0.3 s)
    import pandas as pd

BYTES_PER_GB = 1e9
# A try runs the full longest prompt with the KV cache reserved for the full longest output, then
# this many decode steps: decode replays static buffers (a CUDA graph on GPU), so the peak is reached
# by then, and a 13B try at 1000 output tokens takes a second instead of 12.
PROBE_DECODE_STEPS = 4
# Bumped when what a probe measures changes without its code changing (the cache key holds it).
PROBE_FORMAT = 2
METHODS = ("calibrated", "bisect")
# The CPU worker's allocator settings, so that its memory is what its tensors hold: every glibc
# allocation of 64 KiB or more is its own mapping, returned to the kernel when freed (a fixed
# threshold also stops glibc from raising it after a free); MKL frees its per-thread GEMM buffers
# after each call instead of keeping the largest (measured here: 10 MB per thread kept after a
# batch-8 prefill of tiny-llama, 0 with this setting).
CPU_WORKER_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MKL_DISABLE_FAST_MM": "1"}


class OutOfMemory(Exception):
    """A batch does not fit in the device's (possibly capped) memory."""


class ProbeError(TokencarbonError):
    """The probe's CPU worker process died or failed."""


# ---------------------------------------------------------------- memory model


@dataclass(frozen=True)
class MemoryModel:
    """Bytes an engine needs for size b (a static batch, or max_num_seqs): need(b) = fixed_bytes +
    per(b), per nondecreasing in b and per(0) = 0."""

    fixed_bytes: int
    per: Callable[[int], int]

    def need(self, size: int) -> int:
        return self.fixed_bytes + self.per(size)


def _cache_len(prompt_len: int, output_len: int, align: int) -> int:
    return -(-(prompt_len + output_len) // align) * align


def engine_fixed_bytes(arch: Architecture, dtype: str, quantization: Quantization = NONE) -> int:
    """What an engine holds whatever its batch: the weights as stored (models.weight_bytes) plus,
    for RoPE models, the cos and sin tables (2 x max_positions x head_dim in dtype; model.py
    Decoder.set_rope). Raises ConfigError for an unknown dtype."""
    rope = 2 * arch.max_positions * arch.head_dim * DTYPE_BYTES.get(dtype, 0)
    return weight_bytes(arch, dtype, quantization) + (rope if arch.rope_theta is not None else 0)


def static_request_bytes(arch: Architecture, dtype: str, prompt_len: int, output_len: int) -> int:
    """Bytes one request adds to a static batch of prompt_len prompt tokens whose KV cache is
    reserved for output_len more (backends/static.py TorchEngine.run_batch), at the prefill's peak:

      KV cache          kv_cache_bytes over cache_len = prompt + output rounded up to CACHE_ALIGN
      token buffer      cache_len int64 (_out)
      prefill masks     T x T bool (allowed) + T x T additive in dtype + (num_heads / num_kv_heads
                        > 1: Decoder.forward's repeat for grouped-query attention) group x T x T
      prefill inputs    tokens and positions, T int64 each; RoPE cos and sin, 2 x T x head_dim
      activations       models.activation_bytes over T tokens (eager attention: an upper end)

    with T = prompt_len. Raises ConfigError for an unknown dtype."""
    e = DTYPE_BYTES.get(dtype)
    if e is None:
        raise ConfigError(f"dtype {dtype!r}; valid: {list(DTYPE_BYTES)}")
    t, cache_len = prompt_len, _cache_len(prompt_len, output_len, CACHE_ALIGN)
    group = arch.num_heads // arch.num_kv_heads
    masks = t * t * (1 + e + (group * e if group > 1 else 0))
    inputs = 2 * t * 8 + (2 * t * arch.head_dim * e if arch.rope_theta is not None else 0)
    return (
        kv_cache_bytes(arch, 1, cache_len, dtype)
        + cache_len * 8
        + masks
        + inputs
        + activation_bytes(arch, 1, prompt_len, dtype)
    )


def static_memory_model(
    arch: Architecture, dtype: str, prompt_len: int, output_len: int, quantization=NONE
) -> MemoryModel:
    """need(b) = engine_fixed_bytes + b x static_request_bytes: the static engine's memory model."""
    per_request = static_request_bytes(arch, dtype, prompt_len, output_len)
    return MemoryModel(engine_fixed_bytes(arch, dtype, quantization), lambda b: b * per_request)


def serving_pool_bytes(
    arch, dtype: str, max_num_seqs: int, prompt_len: int, output_len: int
) -> int:
    """What a TorchServingEngine of max_num_seqs slots holds beside its weights while serving
    requests of prompt_len + output_len tokens: its KV pool (every slot sized for the longest
    request, rounded up to KV_BLOCK positions, as serving.TorchServingEngine.cache_len_for does),
    the generated-token buffer (int64, slots x positions) and the activations of its largest
    prefill step (prompts packed up to MAX_PREFILL_TOKENS; a longer prompt alone;
    models.activation_bytes per packed prompt, eager attention: an upper-end estimate)."""
    from tokencarbon.backends.attention import KV_BLOCK
    from tokencarbon.backends.serving import MAX_PREFILL_TOKENS

    cache_len = _cache_len(prompt_len, output_len, KV_BLOCK)
    packed = min(max_num_seqs, max(1, MAX_PREFILL_TOKENS // prompt_len))
    return (
        kv_cache_bytes(arch, max_num_seqs, cache_len, dtype)
        + max_num_seqs * cache_len * 8
        + activation_bytes(arch, packed, prompt_len, dtype)
    )


def serving_memory_model(
    arch: Architecture, dtype: str, prompt_len: int, output_len: int, quantization=NONE
) -> MemoryModel:
    """The continuous engine's memory model: need(n) = engine_fixed_bytes + serving_pool_bytes of
    n slots. The one place the continuous probe learns what an engine of n requests holds (a paged
    KV pool would answer here)."""
    return MemoryModel(
        engine_fixed_bytes(arch, dtype, quantization),
        lambda n: serving_pool_bytes(arch, dtype, n, prompt_len, output_len) if n else 0,
    )


# ---------------------------------------------------------------- tries and the search


@dataclass(frozen=True)
class Try:
    """One real try of `size` (a batch, or max_num_seqs). peak_bytes: on CUDA torch's peak
    allocation (torch.cuda.max_memory_allocated, weights included); on the CPU the worker's memory
    above its baseline (data segment at the try's start + the growth of its peak resident set).
    For a try that failed it is what was held when it failed. None where nothing measures it."""

    size: int
    fits: bool
    seconds: float
    peak_bytes: int | None = None
    reserved_peak_bytes: int | None = None  # CUDA: torch.cuda.max_memory_reserved
    error: str | None = None  # the out-of-memory message of a try that failed
    phase: str = ""  # calibration, confirmation or search
    build_s: float | None = None  # serving: the engine's construction (weights drawn or loaded)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Calibration:
    """need(b) = fixed_bytes + scale x model.per(b), fitted to measured peaks. source: how."""

    fixed_bytes: float
    scale: float
    points: tuple[int, ...]
    source: str

    def need(self, model: MemoryModel, size: int) -> float:
        return self.fixed_bytes + self.scale * model.per(size)


def model_calibration(model: MemoryModel) -> Calibration:
    """The memory model as it stands (no measurement)."""
    return Calibration(float(model.fixed_bytes), 1.0, (), "memory model")


def fit_calibration(model: MemoryModel, peaks: dict[int, int]) -> Calibration | None:
    """The calibration through measured peaks {size: peak bytes}: through the smallest and the
    largest size (fixed and scale fitted), or through one size with the model's scale; None
    without a peak. A fitted scale that is not positive (peaks not growing with size) falls back
    to the model's scale through the largest size."""
    if not peaks:
        return None
    lo, hi = min(peaks), max(peaks)
    if lo != hi:
        d = model.per(hi) - model.per(lo)
        scale = (peaks[hi] - peaks[lo]) / d if d > 0 else math.nan
        if math.isfinite(scale) and scale > 0:
            fixed = peaks[lo] - scale * model.per(lo)
            return Calibration(fixed, scale, (lo, hi), "measured peaks")
    return Calibration(
        float(peaks[hi] - model.per(hi)), 1.0, (hi,), "measured peak, model's bytes per size"
    )


def largest_fitting(need: Callable[[int], float], budget_bytes: float, limit: int) -> int:
    """The largest b in [1, limit] with need(b) <= budget_bytes (need nondecreasing); 0 if none."""
    if need(1) > budget_bytes:
        return 0
    lo, hi = 1, limit  # need(lo) fits; the answer lies in [lo, hi]
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if need(mid) <= budget_bytes:
            lo = mid
        else:
            hi = mid - 1
    return lo


def calibration_sizes(model_predicted: int, limit: int) -> tuple[int, ...]:
    """Sizes the calibration tries: 1, and half the memory model's limit (at least 2, at most
    `limit`). Far enough from 1 that what only a batch of 1 allocates (measured on the CPU: 1.5 MB
    more than the line through larger batches of int8 tiny-llama) and the allocator's rounding
    are small beside the slope; inside the real limit wherever the model is the upper end it is
    meant to be (it counts eager attention's scores, which SDPA's kernels do not allocate)."""
    second = min(limit, max(2, min(model_predicted, limit) // 2))
    return (1,) if second <= 1 else (1, second)


@dataclass(frozen=True)
class Search:
    """The outcome of calibrated_search: max_ok ran, min_failed (None: `limit` itself ran) did
    not; predicted is the calibrated prediction, model_predicted the memory model's own (0: not
    even size 1); confirmed: the prediction was the answer."""

    max_ok: int
    min_failed: int | None
    tries: tuple[Try, ...]
    model_predicted: int
    predicted: int
    calibration: Calibration
    budget_bytes: float
    limit: int

    @property
    def confirmed(self) -> bool:
        return self.max_ok == self.predicted

    @property
    def tried(self) -> list[tuple[int, bool]]:
        return [(t.size, t.fits) for t in self.tries]


def calibrated_search(
    measure: Callable[[int], Try],
    model: MemoryModel,
    *,
    budget_bytes: float,
    limit: int,
    calibrate: bool = True,
    prior: Calibration | None = None,
    what: str = "batch",
) -> Search:
    """The largest size in [1, limit] whose real try fits, from a prediction.

    1. calibrate: tries at calibration_sizes (1 and half the model's limit); their peaks fit the
       calibration (fit_calibration), else `prior` (default: the model itself).
    2. predicted = the largest size the calibration fits in budget_bytes (below any calibration
       size that failed); tries there (must fit) and at predicted + 1 (must fail, unless
       predicted == limit).
    3. If either disagrees, a short search from there. Upward (nothing failed yet): the next try
       is the prediction of the calibration refitted through every peak so far, or, where that
       says no more fits, 1, 2, 4, ... above the last fit. Downward from a failed prediction: 1,
       2, 4, ... below it, but not past the middle down to the largest fit. Between a fit at or
       above the prediction and a failure: bisection.
       Every try lies strictly between the largest size that fit and the smallest that failed.

    measure(size) returns a Try (fits or not); any other error propagates. Raises ConfigError when
    size 1 does not fit."""
    if type(limit) is not int or limit < 1:
        raise ConfigError(f"OOM probe: limit {limit!r} must be an integer >= 1")
    tries: list[Try] = []
    known: dict[int, Try] = {}
    lo, hi = 0, None  # largest size that fit (0: none yet), smallest that failed

    def run(size: int, phase: str) -> None:
        nonlocal lo, hi
        t = dataclasses.replace(measure(size), phase=phase)
        tries.append(t)
        known[size] = t
        if t.fits:
            lo = max(lo, size)
        else:
            hi = size if hi is None else min(hi, size)

    def peaks() -> dict[int, int]:
        return {s: t.peak_bytes for s, t in known.items() if t.fits and t.peak_bytes is not None}

    def largest(cal: Calibration) -> int:
        return largest_fitting(lambda b: cal.need(model, b), budget_bytes, limit)

    def done() -> bool:
        return lo == limit or (hi is not None and hi == lo + 1)

    base = model_calibration(model)
    model_predicted = largest(base)
    if calibrate:
        for size in calibration_sizes(model_predicted, limit):
            if hi is None:
                run(size, "calibration")
    calibration = fit_calibration(model, peaks()) or prior or base
    predicted = max(min(largest(calibration), limit if hi is None else hi - 1), lo, 1)

    size, phase, up, down = predicted, "confirmation", 1, 1
    while not done():
        if size not in known:
            run(size, phase)
        if done():
            break
        if known[size].fits:
            if hi is not None:
                nxt = (lo + hi) // 2
            elif size == predicted:
                nxt = size + 1  # the confirmation's second try
            else:
                estimate = largest(fit_calibration(model, peaks()) or calibration)
                if estimate > lo:
                    nxt = estimate
                else:
                    nxt, up = lo + up, up * 2
            nxt = min(nxt, limit)
        elif lo >= predicted:
            nxt = (lo + hi) // 2
        else:  # galloping down, never past the middle of (lo, hi)
            nxt, down = max(hi - down, (lo + hi) // 2), down * 2
        phase = "confirmation" if size == predicted and nxt == predicted + 1 else "search"
        size = nxt
    if lo == 0:
        error = next((t.error for t in tries if t.size == 1), "")
        raise ConfigError(
            f"OOM probe: even {what} 1 does not fit ({error}); use a platform with more memory "
            "(or a larger memory_limit_gb), shorter prompts/outputs, or drop this model there"
        )
    return Search(
        max_ok=lo,
        min_failed=hi,
        tries=tuple(tries),
        model_predicted=model_predicted,
        predicted=predicted,
        calibration=calibration,
        budget_bytes=budget_bytes,
        limit=limit,
    )


@dataclass(frozen=True)
class ProbeResult:
    max_ok: int  # largest batch that ran
    min_failed: int | None  # smallest batch that did not fit; None when `limit` itself ran
    tried: list[tuple[int, bool]]  # (batch, fitted), in the order tried


def probe_max_batch(try_batch: Callable[[int], None], *, start: int = 1, limit: int) -> ProbeResult:
    """The search before calibration (run_probe's method "bisect", kept to time it against):
    double from `start` until a batch fails or `limit` runs, then bisect between the last batch
    that ran and the first that failed. try_batch(b) raises OutOfMemory when b does not fit."""
    if not 1 <= start <= limit:
        raise ConfigError(f"OOM probe: start {start} and limit {limit} need 1 <= start <= limit")
    tried: list[tuple[int, bool]] = []
    last_error = ""

    def fits(batch: int) -> bool:
        nonlocal last_error
        try:
            try_batch(batch)
            ok = True
        except OutOfMemory as exc:
            ok, last_error = False, str(exc)
        tried.append((batch, ok))
        return ok

    ok_batch, failed_batch = 0, None  # 0: no batch known to fit yet
    batch = start
    while True:
        if not fits(batch):
            failed_batch = batch
            break
        ok_batch = batch
        if batch == limit:
            break
        batch = min(2 * batch, limit)
    if failed_batch is not None:
        while failed_batch - ok_batch > 1:
            mid = (ok_batch + failed_batch) // 2
            if fits(mid):
                ok_batch = mid
            else:
                failed_batch = mid
    if ok_batch == 0:
        raise ConfigError(
            f"OOM probe: even batch 1 does not fit ({last_error}); use a platform with more memory "
            "(or a larger memory_limit_gb), shorter prompts/outputs, or drop this model there"
        )
    return ProbeResult(max_ok=ok_batch, min_failed=failed_batch, tried=tried)


# ---------------------------------------------------------------- measuring real tries


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    """exc and the exceptions it was raised from or during (torch.compile wraps an error raised
    while compiling in its own), each once."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:500]


class CudaMeter:
    """Peaks of torch's CUDA allocator on `device`."""

    mechanism = "torch.cuda.set_per_process_memory_fraction (torch's allocations, not the context)"

    def __init__(self, device: torch.device):
        self.device = device

    def reset(self) -> None:
        torch.cuda.reset_peak_memory_stats(self.device)

    def peaks(self) -> tuple[int | None, int | None]:
        return (
            torch.cuda.max_memory_allocated(self.device),
            torch.cuda.max_memory_reserved(self.device),
        )

    @staticmethod
    def is_oom(exc: BaseException) -> bool:
        return any(isinstance(e, torch.cuda.OutOfMemoryError) for e in _chain(exc))

    def cleanup(self, failed: bool = False) -> None:
        gc.collect()
        torch.cuda.empty_cache()  # each try starts from the weights alone


def _proc_status_bytes(key: str) -> int:
    """A /proc/self/status field given in kB (VmData, VmRSS, VmHWM), in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise ProbeError(f"/proc/self/status has no {key}; the CPU probe needs Linux")


class CpuMeter:
    """The CPU worker's memory above its baseline (base_data: VmData before the weights): at a
    try's start its data segment (VmData, what RLIMIT_DATA counts), plus the growth of its peak
    resident set during the try (VmHWM, reset by writing 5 to /proc/self/clear_refs). Tensors are
    written whole (zeros, kernel outputs), so resident growth is their bytes."""

    mechanism = "setrlimit(RLIMIT_DATA) in a worker process: its data segment above its baseline"

    def __init__(self, base_data: int):
        self.base_data = base_data
        self._data0 = self._rss0 = 0
        self.peak_measured = True

    def reset(self) -> None:
        self._data0 = _proc_status_bytes("VmData")
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            self.peak_measured = False  # peaks unknown: the calibration falls back to the model
        self._rss0 = _proc_status_bytes("VmRSS")

    def peaks(self) -> tuple[int | None, int | None]:
        if not self.peak_measured:
            return None, None
        grown = max(0, _proc_status_bytes("VmHWM") - self._rss0)
        return self._data0 - self.base_data + grown, None

    @staticmethod
    def is_oom(exc: BaseException) -> bool:
        """MemoryError (Python), torch.OutOfMemoryError, or torch's CPU allocator refusing
        ("DefaultCPUAllocator: can't allocate memory"), anywhere in exc's chain."""
        for e in _chain(exc):
            if isinstance(e, (MemoryError, torch.OutOfMemoryError)):
                return True
            text = str(e)
            if isinstance(e, RuntimeError) and any(
                s in text for s in ("can't allocate memory", "not enough memory", "std::bad_alloc")
            ):
                return True
        return False

    def cleanup(self, failed: bool = False) -> None:
        # Freed tensors are returned at once (CPU_WORKER_ENV); only a failure's traceback may
        # leave cycles (a full collection costs 0.1 s here, as long as a small try).
        if failed:
            gc.collect()


@dataclass
class ProbeSetup:
    """What the tries run: the model, its lengths and the device."""

    arch: Architecture
    dtype: str
    device: str
    seed: int
    checkpoint: str | None
    quantization: Quantization
    prompt_len: int
    output_len: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "arch": architecture_to_dict(self.arch),
            "dtype": self.dtype,
            "device": self.device,
            "seed": self.seed,
            "checkpoint": self.checkpoint,
            "quantization": self.quantization.to_dict(),
            "prompt_len": self.prompt_len,
            "output_len": self.output_len,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ProbeSetup:
        return cls(
            **{**d, "arch": architecture_from_dict(d["arch"], "probe worker"),
               "quantization": parse_quantization(d["quantization"], "probe worker")}
        )  # fmt: skip

    @property
    def prompt(self) -> list[int]:
        return [(i % (self.arch.vocab_size - 1)) + 1 for i in range(self.prompt_len)]


class LocalTrials:
    """Real tries in this process, each measured by `meter` (CudaMeter, or CpuMeter inside the
    CPU worker): static batches on one TorchEngine (open_static builds it; each try allocates and
    frees its own KV cache), and serving engines, one built per try (a pool's size is fixed at
    construction). Out-of-memory errors become tries that did not fit; other errors propagate."""

    def __init__(self, setup: ProbeSetup, meter):
        self.setup, self.meter = setup, meter
        self.decode_len = min(setup.output_len, PROBE_DECODE_STEPS)
        self._engine: TorchEngine | None = None

    def open_static(self) -> float:
        """Build the static engine; returns its seconds. Raises OutOfMemory if its weights do not
        fit."""
        s = self.setup
        t0 = time.monotonic()
        try:
            self._engine = TorchEngine(
                s.arch, s.dtype, s.device, seed=s.seed, checkpoint=s.checkpoint,
                quantization=s.quantization,
            )  # fmt: skip
        except Exception as exc:
            if not self.meter.is_oom(exc):
                raise
            error = _first_line(exc)
        else:
            return time.monotonic() - t0
        self.meter.cleanup(failed=True)
        raise OutOfMemory(f"the weights of {s.arch.name} do not fit: {error}")

    def close_static(self) -> None:
        if self._engine is not None:
            self._engine.release()
        self._engine = None
        self.meter.cleanup(failed=True)  # a full collection once: the engine's modules

    def static(self, batch: int) -> Try:
        """batch requests of the longest prompt, the cache reserved for the longest output, then
        PROBE_DECODE_STEPS decode steps (TorchEngine.run_batch's reserve_output_len)."""
        engine, s = self._engine, self.setup
        if engine is None:
            raise ProbeError("static tries need open_static() first")
        self.meter.reset()
        t0, error = time.monotonic(), None
        try:
            engine.run_batch(
                [s.prompt] * batch, [self.decode_len] * batch, reserve_output_len=s.output_len
            )
        except Exception as exc:
            if not self.meter.is_oom(exc):
                raise
            error = _first_line(exc)  # the text only: the exception's frames hold the tensors
        finally:
            peak, reserved = self.meter.peaks()
            engine.release()
            self.meter.cleanup(failed=error is not None)
        return Try(batch, error is None, time.monotonic() - t0, peak, reserved, error)

    def serving(self, n: int) -> Try:
        """A TorchServingEngine of max_num_seqs n whose slots hold prompt_len + output_len tokens
        (max_model_len) serves n requests of the longest prompt, all at t=0, PROBE_DECODE_STEPS
        output tokens each: every slot busy, the pool allocated for the full output."""
        from tokencarbon.backends import Request
        from tokencarbon.backends.serving import TorchServingEngine

        s = self.setup
        prompt = tuple(s.prompt)
        requests = [Request(f"probe{i}", prompt, self.decode_len, 0.0) for i in range(n)]
        self.meter.cleanup()
        self.meter.reset()
        t0, error, build_s, engine = time.monotonic(), None, None, None
        try:
            engine = TorchServingEngine(
                s.arch, s.dtype, s.device, seed=s.seed, checkpoint=s.checkpoint, max_num_seqs=n,
                max_model_len=s.prompt_len + s.output_len, quantization=s.quantization,
                kv_layout="slots",
            )  # fmt: skip
            build_s = time.monotonic() - t0
            engine.serve(requests)
        except Exception as exc:
            if not self.meter.is_oom(exc):
                raise
            error = _first_line(exc)
        finally:
            peak, reserved = self.meter.peaks()
            if engine is not None:
                engine.release()
                if getattr(engine.engine, "compile_layers", False):
                    # the next engine has another max_num_seqs, so another compiled decode step:
                    # nothing of this one's (its guards name this engine's modules) may stay
                    torch._dynamo.reset()
            del engine
            self.meter.cleanup(failed=True)  # the engine's modules: collect before the next build
        return Try(n, error is None, time.monotonic() - t0, peak, reserved, error, build_s=build_s)


    def paged(self, limit: int, num_blocks: int | None, request_tokens: list[int]) -> dict[str, Any]:
        """The paged engine (the continuous cells' own, kv_layout "paged") with max_num_seqs
        `limit` rows: its pool sized as a cell's is (CUDA: gpu_memory_utilization of the device, or
        of the cap; num_blocks on the CPU, from the budget). The largest max_num_seqs is pool
        arithmetic on the pool it really allocated (paged_fit), confirmed by serving that many
        requests of the longest prompt at once, PROBE_DECODE_STEPS output tokens each (the
        prefill and decode steps at that many rows: activations and graphs). Returns
        {"fits", "error", "seconds", "build_s", "peak_bytes", "engine": describe(), "fit",
        "served", "preemptions"}; an out-of-memory error (building or serving) gives fits False."""
        from tokencarbon.backends import Request
        from tokencarbon.backends.serving import TorchServingEngine

        s = self.setup
        self.meter.cleanup()
        self.meter.reset()
        t0, error, build_s, engine, info = time.monotonic(), None, None, None, {}
        try:
            engine = TorchServingEngine(
                s.arch, s.dtype, s.device, seed=s.seed, checkpoint=s.checkpoint,
                max_num_seqs=limit, max_model_len=s.prompt_len + s.output_len,
                quantization=s.quantization, kv_layout="paged", num_blocks=num_blocks,
            )  # fmt: skip
            build_s = time.monotonic() - t0
            described = engine.describe()
            fit = paged_fit(described["num_blocks"], described["block_size"], s.prompt_len,
                            s.output_len, request_blocks_at(request_tokens, described["block_size"]),
                            limit)  # fmt: skip
            n = fit["max_num_seqs"]
            prompt = tuple(s.prompt)
            requests = [Request(f"probe{i}", prompt, self.decode_len, 0.0) for i in range(n)]
            result = engine.serve(requests) if n else None
            preemptions = 0 if result is None else sum(r.preemptions or 0 for r in result.requests)
            info = {"engine": described, "fit": fit, "served": n, "preemptions": preemptions}
        except Exception as exc:
            if not self.meter.is_oom(exc):
                raise
            error = _first_line(exc)
        finally:
            peak, _ = self.meter.peaks()
            if engine is not None:
                engine.release()
                if getattr(engine.engine, "compile_layers", False):
                    torch._dynamo.reset()  # nothing of this engine's compiled step stays
            del engine
            self.meter.cleanup(failed=True)
        return {"fits": error is None, "error": error, "seconds": time.monotonic() - t0,
                "build_s": build_s, "peak_bytes": peak, **info}  # fmt: skip


def request_blocks_at(request_tokens: list[int], block_size: int) -> list[int]:
    """KV blocks each request holds at its end: blocks_for(kv positions) of its prompt + output
    tokens (paged.kv_positions: every token but the last is written), largest first."""
    from tokencarbon.backends.paged import blocks_for

    return sorted((blocks_for(max(1, t - 1), block_size) for t in request_tokens), reverse=True)


def paged_fit(
    num_blocks: int,
    block_size: int,
    prompt_len: int,
    output_len: int,
    request_blocks: list[int],
    limit: int,
) -> dict[str, Any]:
    """How many requests a paged pool of num_blocks blocks holds at once, each to its last token.

    longest: requests of the longest prompt + the longest output (paged.max_num_seqs_fitting's
    worst case); workload: the largest n such that the n largest requests of the workload
    (request_blocks: KV blocks of each at its end, largest first) fit together, so that no
    request of the cell can be preempted whatever the order of their steps; typical: requests of
    the workload's mean blocks (how many of its typical request the pool holds, which may exceed
    the workload's count). max_num_seqs: min(limit, workload) (a cell's max_num_seqs never
    exceeds its requests). Tokens in flight are blocks x block_size at each count. Raises
    ConfigError for an empty request list or lengths < 1.

    By hand: 100 blocks of 16, requests of 40, 30, 30, 20 blocks: the 3 largest take 100 blocks,
    the 4 take 120: workload 3; the mean is 30 blocks: typical 3; longest (prompt 8 + output
    640 = 647 positions, 41 blocks): 2."""
    from tokencarbon.backends.paged import blocks_for, kv_positions

    if not request_blocks or min(prompt_len, output_len) < 1:
        raise ConfigError(
            f"paged fit: {len(request_blocks)} requests, prompt_len {prompt_len}, output_len "
            f"{output_len}; needs requests and lengths >= 1"
        )
    longest_blocks = blocks_for(kv_positions(prompt_len, output_len), block_size)
    used, workload = 0, 0
    for blocks in sorted(request_blocks, reverse=True):
        if used + blocks > num_blocks:
            break
        used, workload = used + blocks, workload + 1
    mean_blocks = sum(request_blocks) / len(request_blocks)
    typical = int(num_blocks // mean_blocks)
    n = min(limit, workload)
    return {
        "pool_blocks": num_blocks,
        "block_size": block_size,
        "pool_tokens": num_blocks * block_size,
        "longest": {"max_num_seqs": num_blocks // longest_blocks,
                    "tokens_in_flight": (num_blocks // longest_blocks) * longest_blocks * block_size},
        "workload": {"max_num_seqs": workload, "tokens_in_flight": used * block_size,
                     "requests": len(request_blocks)},
        "typical": {"max_num_seqs": typical, "mean_blocks": mean_blocks},
        "limit": limit,
        "max_num_seqs": n,
        "tokens_in_flight": sum(sorted(request_blocks, reverse=True)[:n]) * block_size,
    }  # fmt: skip


# ---------------------------------------------------------------- the CPU worker


def _warm_up(setup: ProbeSetup, serving: bool) -> None:
    """Run a one-layer, 64-wide model of the same family, dtype and quantization once (static, and
    a serving engine when asked), so that what torch and its libraries set up on first use (thread
    pools, kernels, lazy imports: about 70 MB measured here for tiny-llama) lies below the
    worker's baseline instead of inside its budget."""
    a = setup.arch
    small = dataclasses.replace(
        a, name=f"{a.name}-warm-up", num_layers=1, hidden_size=64, num_heads=1, num_kv_heads=1,
        head_dim=64, intermediate_size=64, vocab_size=min(a.vocab_size, 256),
        max_positions=min(a.max_positions, 64),
        sliding_window=None if a.sliding_window is None else min(a.sliding_window, 64),
    )  # fmt: skip
    warm = dataclasses.replace(setup, arch=small, checkpoint=None, prompt_len=8, output_len=8)
    trials = LocalTrials(warm, CpuMeter(0))
    trials.open_static()
    trials.static(2)
    trials.close_static()
    if serving:
        trials.paged(2, 8, [16, 16])  # the continuous probe's engine (paged, small pool)
    gc.collect()


def _worker_main() -> None:
    """The CPU worker: JSON lines on stdin, one JSON reply per line on its original stdout (fd 1
    then points at stderr, so that nothing else can write there). The first line sets it up
    (ProbeSetup.to_dict + budget_bytes, threads, serving); then {"op": "open_static" | "static" |
    "close_static" | "serving", "size": n}. Errors reply {"ok": false, "type", "message"}."""
    reply = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    from tokencarbon.lease import die_with_supervisor

    die_with_supervisor()  # never outlives the probe that started it

    def send(obj: dict[str, Any]) -> None:
        reply.write(json.dumps(obj) + "\n")

    def failed(exc: BaseException) -> dict[str, Any]:
        return {"ok": False, "type": type(exc).__name__, "message": str(exc),
                "traceback": traceback.format_exc()}  # fmt: skip

    try:
        init = json.loads(sys.stdin.readline())
        torch.set_num_threads(init["threads"])
        setup = ProbeSetup.from_dict(init["setup"])
        t0 = time.monotonic()
        _warm_up(setup, init["serving"])
        base_data = _proc_status_bytes("VmData")
        cap = base_data + int(init["budget_bytes"])
        _, hard = resource.getrlimit(resource.RLIMIT_DATA)
        if hard != resource.RLIM_INFINITY:
            cap = min(cap, hard)
        resource.setrlimit(resource.RLIMIT_DATA, (cap, hard))
        meter = CpuMeter(base_data)
        trials = LocalTrials(setup, meter)
        send({"ok": True, "baseline_data_bytes": base_data, "rlimit_data_bytes": cap,
              "warm_up_s": time.monotonic() - t0, "pid": os.getpid()})  # fmt: skip
    except Exception as exc:
        send(failed(exc))
        return
    for line in sys.stdin:
        try:
            req = json.loads(line)
            op = req["op"]
            if op == "open_static":
                out = {"seconds": trials.open_static()}
            elif op == "static":
                out = trials.static(req["size"]).to_dict()
            elif op == "close_static":
                trials.close_static()
                out = {}
            elif op == "serving":
                out = trials.serving(req["size"]).to_dict()
            elif op == "paged":
                out = trials.paged(req["size"], req["num_blocks"], req["request_tokens"])
            else:
                raise ProbeError(f"probe worker: unknown op {op!r}")
            out["peak_measured"] = meter.peak_measured
            send({"ok": True, **out})
        except Exception as exc:
            send(failed(exc))


_WORKER_ERRORS = {
    "ConfigError": ConfigError,
    "InputError": InputError,
    "OutOfMemory": OutOfMemory,
    "ProbeError": ProbeError,
}


class WorkerTrials:
    """LocalTrials run by a CPU worker process under setrlimit(RLIMIT_DATA) = its baseline +
    budget_bytes (_worker_main; CPU_WORKER_ENV). The worker inherits this thread's CPU affinity
    (a leased probe's pinned CPUs) and uses this process's torch thread count.

    A try that ran out of memory leaves its worker unusable: measured here, each failed static try
    of tiny-llama left 5-7 MB in the worker's data segment for good, so later tries failed where a
    fresh worker's fit. The next try after a failure therefore runs in a new worker (with the
    static engine rebuilt where static tries go on): every try starts from the same state.
    info: the first worker's setup reply, with workers_started and start_s (all workers).
    A context manager: the worker ends with the block. Raises ProbeError if one dies, with its
    exit status."""

    mechanism = CpuMeter.mechanism

    def __init__(self, setup: ProbeSetup, *, budget_bytes: int, serving: bool):
        self._init = {"setup": setup.to_dict(), "budget_bytes": int(budget_bytes),
                      "threads": torch.get_num_threads(), "serving": serving}  # fmt: skip
        self._proc: subprocess.Popen | None = None
        self._static_open = self._dirty = False
        self.info: dict[str, Any] = {}
        self.peak_measured = True
        self._start()

    def _start(self) -> None:
        package_parent = str(Path(__file__).resolve().parents[1])
        env = dict(os.environ, **CPU_WORKER_ENV)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (package_parent, os.environ.get("PYTHONPATH")) if p
        )
        try:  # the worker's messages go where this process's do (a job's log)
            stderr = sys.stderr.fileno()
        except (AttributeError, OSError, ValueError):
            stderr = None
        t0 = time.monotonic()
        self._proc = subprocess.Popen(
            [sys.executable, "-c", "from tokencarbon.probe import _worker_main; _worker_main()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=env,
            text=True,
        )
        try:
            reply = self._call(self._init)
        except BaseException:
            self.close()
            raise
        seconds = time.monotonic() - t0
        if not self.info:
            self.info = {**reply, "env": dict(CPU_WORKER_ENV), "workers_started": 0, "start_s": 0}
        self.info["workers_started"] += 1
        self.info["start_s"] = round(self.info["start_s"] + seconds, 3)
        self._dirty = False

    def _fresh(self) -> None:
        """A new worker in place of one a failed try left unusable, its static engine rebuilt."""
        if not self._dirty:
            return
        self.close()
        self._start()
        if self._static_open:
            self._call({"op": "open_static"})

    def __enter__(self) -> WorkerTrials:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def _call(self, request: dict[str, Any]) -> dict[str, Any]:
        proc, line = self._proc, ""
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.write(json.dumps(request) + "\n")
            proc.stdin.flush()
            line = proc.stdout.readline()
        if not line:
            rc = proc.wait()
            raise ProbeError(
                f"the CPU probe's worker (pid {proc.pid}) ended with status {rc} during "
                f"{request.get('op', 'setup')} {request.get('size', '')}".rstrip()
                + " (a negative status is the signal that ended it; SIGKILL from the kernel's OOM"
                " killer means the machine ran out of memory before the cap: set"
                " memory_limit_gb below the free memory); its stderr is in this log"
            )
        reply = json.loads(line)
        if not reply.pop("ok"):
            error = _WORKER_ERRORS.get(reply["type"], ProbeError)
            message = reply["message"]
            if error is ProbeError:
                message = f"the CPU probe's worker failed: {reply['traceback']}"
            raise error(message)
        return reply

    def open_static(self) -> float:
        self._fresh()
        seconds = self._call({"op": "open_static"})["seconds"]
        self._static_open = True
        return seconds

    def close_static(self) -> None:
        if self._static_open and not self._dirty:
            self._call({"op": "close_static"})
        self._static_open = False

    def _try(self, op: str, size: int) -> Try:
        self._fresh()
        reply = self._call({"op": op, "size": size})
        self.peak_measured = reply.pop("peak_measured")
        t = Try(**reply)
        self._dirty = not t.fits
        return t

    def static(self, batch: int) -> Try:
        return self._try("static", batch)

    def serving(self, n: int) -> Try:
        return self._try("serving", n)

    def paged(self, limit: int, num_blocks: int | None, request_tokens: list[int]) -> dict[str, Any]:
        self._fresh()
        reply = self._call({"op": "paged", "size": limit, "num_blocks": num_blocks,
                            "request_tokens": request_tokens})  # fmt: skip
        self.peak_measured = reply.pop("peak_measured")
        self._dirty = not reply["fits"]
        return reply


# ---------------------------------------------------------------- CUDA helpers


def _cap_cuda_memory(memory_limit_gb: float | None, device: torch.device) -> None:
    """torch.cuda.set_per_process_memory_fraction for memory_limit_gb (None: no cap)."""
    if memory_limit_gb is None:
        return
    total_bytes = torch.cuda.get_device_properties(device).total_memory
    limit_bytes = memory_limit_gb * BYTES_PER_GB
    if limit_bytes > total_bytes:
        raise ConfigError(
            f"memory_limit_gb {memory_limit_gb} exceeds the device's "
            f"{total_bytes / BYTES_PER_GB:.1f} GB; use at most that, or null"
        )
    index = torch.cuda.current_device() if device.index is None else device.index
    torch.cuda.set_per_process_memory_fraction(limit_bytes / total_bytes, index)


def make_try_batch(
    engine: TorchEngine, *, prompt_len: int, output_len: int, memory_limit_gb: float | None
) -> Callable[[int], None]:
    """try_batch(b) for probe_max_batch on a CUDA engine (benchmarks/oom_table.py): runs b requests
    of prompt_len + output_len tokens (LocalTrials.static) under memory_limit_gb
    (torch.cuda.set_per_process_memory_fraction; None: the whole card); raises OutOfMemory when b
    does not fit. Raises ConfigError for a CPU engine: CPU tries run in a capped worker process
    (run_probe)."""
    if engine.device.type != "cuda":
        raise ConfigError(
            "make_try_batch drives a CUDA engine; the CPU probe's tries run in a worker process "
            "under a real memory cap (run_probe)"
        )
    _cap_cuda_memory(memory_limit_gb, engine.device)
    setup = ProbeSetup(
        engine.arch, engine.dtype, "cuda", 0, None, engine.quantization, prompt_len, output_len
    )
    trials = LocalTrials(setup, CudaMeter(engine.device))
    trials._engine = engine

    def try_batch(batch: int) -> None:
        t = trials.static(batch)
        if not t.fits:
            raise OutOfMemory(f"batch {batch}: {t.error}")

    return try_batch


# ---------------------------------------------------------------- the cache


def code_fingerprint() -> str:
    """sha256 over the source of every package module this one imports, transitively
    (codedeps.package_modules): any change to the probe, the engines or the memory model changes
    it."""
    from tokencarbon.codedeps import package_modules

    here = Path(__file__).resolve()
    root = here.parents[1]
    digest = hashlib.sha256()
    for path in sorted({here, *package_modules(here, root)}):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def probe_key(
    *,
    platform: dict[str, Any],
    hardware: dict[str, Any],
    limits: dict[str, Any],
    arch: Architecture,
    model: dict[str, Any],
    prompt_len: int,
    output_len: int,
    method: str,
) -> dict[str, Any]:
    """What determines a probe's result (plain builtins): the platform's row and the detected
    device with its memory, the memory cap and search limits, the architecture, dtype,
    quantization (with its library) and whether weights are drawn or loaded, the prompt and output
    lengths, the method, the engines (the code fingerprint of the probe and everything it imports)
    and torch's version. Names (platform and model) are not in it: models and configs that share
    the rest share the result."""
    gpu = hardware.get("gpu") or {}
    return {
        "format": PROBE_FORMAT,
        "method": method,
        "platform_row": platform.get("hardware", platform["name"]),
        "device_name": hardware.get("device_name"),
        "device_memory_bytes": gpu.get("memory_total_bytes", hardware.get("host_memory_bytes")),
        "cpu_threads": torch.get_num_threads() if platform["kind"] == "cpu" else None,
        "memory_limit_gb": limits["memory_limit_gb"],
        "max_batch": limits["max_batch"],
        "max_num_seqs": limits.get("max_num_seqs"),
        "architecture": architecture_to_dict(arch),
        "dtype": model["dtype"],
        **quantization_record(of_model(model)),
        "weights": "dummy" if model.get("checkpoint") is None else "checkpoint",
        "prompt_len": prompt_len,
        "output_len": output_len,
        "engines": {"static": "torch TorchEngine", "continuous": "torch TorchServingEngine"},
        "code_sha256": code_fingerprint(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
    }


def key_digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


class ProbeCache:
    """results/.cache/probe/<sha256 of the key>.json: {"key", "result", "probed"}, read back only
    when its key equals this one in full (a digest collision, or a hand-edited file, is a miss).
    lock() serialises probes of one key, so a second waits for the first and reuses its result."""

    def __init__(self, folder: str | Path, key: dict[str, Any]):
        self.key = key
        self.digest = key_digest(key)
        self.path = Path(folder) / f"{self.digest}.json"

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Held while probing (or reading) this key. Where the file system refuses locks (some
        network mounts), probes of one key may both run; each still writes whole files."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX)
            except OSError:
                yield
                return
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def read(self) -> dict[str, Any] | None:
        try:
            entry = json.loads(self.path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        if not isinstance(entry, dict) or entry.get("key") != self.key:
            return None
        return entry

    def write(self, result: dict[str, Any], probed: dict[str, Any]) -> None:
        write_json(self.path, {"key": self.key, "result": result, "probed": probed})


# ---------------------------------------------------------------- the probe


def _search_record(search: Search, model: MemoryModel, unit: str) -> dict[str, Any]:
    cal = search.calibration
    return {
        "budget_bytes": int(search.budget_bytes),
        "memory_model": {
            "fixed_bytes": model.fixed_bytes,
            f"bytes_per_{unit}_at_1": model.per(1),
            "predicted": search.model_predicted,
        },
        "calibration": {
            "fixed_bytes": round(cal.fixed_bytes),
            "scale": cal.scale,
            f"bytes_per_{unit}_at_1": round(cal.scale * model.per(1)),
            "sizes": list(cal.points),
            "source": cal.source,
        },
        "predicted": search.predicted,
        "confirmed": search.confirmed,
        "tries": [t.to_dict() for t in search.tries],
        "seconds": round(sum(t.seconds for t in search.tries), 3),
    }


def _bisect(measure: Callable[[int], Try], limit: int, what: str) -> tuple[ProbeResult, list[Try]]:
    tries: list[Try] = []

    def try_size(size: int) -> None:
        t = measure(size)
        tries.append(t)
        if not t.fits:
            raise OutOfMemory(f"{what} {size}: {t.error}")

    return probe_max_batch(try_size, limit=limit), tries


def _check_limits(limits: dict[str, Any]) -> None:
    cap = limits.get("memory_limit_gb")
    if cap is not None and (type(cap) not in (int, float) or not cap > 0):
        raise ConfigError(f"OOM probe: memory_limit_gb {cap!r}; must be a positive number or null")
    for key in ("max_batch", "max_num_seqs"):
        value = limits.get(key)
        if (key == "max_batch" or value is not None) and (type(value) is not int or value < 1):
            raise ConfigError(f"OOM probe: {key} {value!r}; must be an integer >= 1")


def _measure(
    setup: ProbeSetup,
    limits: dict[str, Any],
    method: str,
    say: Callable[[str], None],
    request_tokens: list[int] | None = None,
) -> dict[str, Any]:
    """Run the probe's tries (static, then continuous when limits["max_num_seqs"] is set); returns
    the result keys of probe.json that do not name the job. request_tokens: prompt + output tokens
    of each request of the workload (the continuous probe's paged fit; default: one request of the
    longest prompt and output)."""
    t_start = time.monotonic()
    cap_gb, seqs_limit = limits["memory_limit_gb"], limits.get("max_num_seqs")
    static_model = static_memory_model(
        setup.arch, setup.dtype, setup.prompt_len, setup.output_len, setup.quantization
    )
    serving_model = serving_memory_model(
        setup.arch, setup.dtype, setup.prompt_len, setup.output_len, setup.quantization
    )
    out: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        if setup.device == "cuda":
            device = torch.device("cuda")
            _cap_cuda_memory(cap_gb, device)
            free, _ = torch.cuda.mem_get_info(device)
            budget = cap_gb * BYTES_PER_GB if cap_gb else free + torch.cuda.memory_reserved(device)
            trials = LocalTrials(setup, CudaMeter(device))
            out["cap"] = {"mechanism": CudaMeter.mechanism, "device_free_bytes_at_start": free}
        else:
            budget = cap_gb * BYTES_PER_GB if cap_gb else psutil.virtual_memory().total
            trials = stack.enter_context(
                WorkerTrials(setup, budget_bytes=int(budget), serving=seqs_limit is not None)
            )
            out["cap"] = {"mechanism": WorkerTrials.mechanism, **trials.info}
        out["budget_bytes"] = int(budget)

        try:
            build_s = trials.open_static()
        except OutOfMemory as exc:
            raise ConfigError(
                f"OOM probe: {exc} (budget {budget / BYTES_PER_GB:.3f} GB); use a platform with "
                "more memory (or a larger memory_limit_gb), or drop this model there"
            ) from None
        say(f"static engine built in {build_s:.1f} s; budget {budget / BYTES_PER_GB:.3f} GB")
        if method == "calibrated":
            static = calibrated_search(
                trials.static, static_model, budget_bytes=budget, limit=limits["max_batch"]
            )
            trials.close_static()
            out |= {
                "max_ok": static.max_ok,
                "min_failed": static.min_failed,
                "tried": [[b, ok] for b, ok in static.tried],
                "static": {"engine_build_s": round(build_s, 3),
                           **_search_record(static, static_model, "request")},
            }  # fmt: skip
            say(
                f"static: memory model {static.model_predicted}, calibrated {static.predicted}, "
                f"found {static.max_ok} (first failure {static.min_failed}) in "
                f"{len(static.tries)} tries"
            )
        else:
            result, tries = _bisect(trials.static, limits["max_batch"], "batch")
            trials.close_static()
            out |= {
                "max_ok": result.max_ok,
                "min_failed": result.min_failed,
                "tried": [[b, ok] for b, ok in result.tried],
                "static": {"engine_build_s": round(build_s, 3),
                           "tries": [t.to_dict() for t in tries],
                           "seconds": round(sum(t.seconds for t in tries), 3)},
            }  # fmt: skip
        if seqs_limit is not None and method == "calibrated":
            # The continuous cells' engine is the paged one (backends/serving.py): its pool is
            # allocated once, sized from memory, and requests take blocks from it, so the largest
            # max_num_seqs is how many of the workload's requests that pool holds at once (no
            # preemption whatever the order), confirmed by a real engine serving that many.
            if setup.device == "cpu":
                from tokencarbon.backends.paged import DEFAULT_BLOCK_SIZE, pool_size
                from tokencarbon.backends.serving import DEFAULT_MAX_NUM_BATCHED_TOKENS

                # the budget less the engine's fixed bytes (the static calibration's) and the
                # activations of its largest step: prompts of the longest packed up to
                # max_num_batched_tokens, models.activation_bytes per prompt (attention is per
                # prompt), as the CUDA engine's profiling step reserves them there
                packed = max(1, DEFAULT_MAX_NUM_BATCHED_TOKENS // setup.prompt_len)
                reserve = packed * activation_bytes(setup.arch, 1, setup.prompt_len, setup.dtype)
                pool_bytes = max(0, int(budget - static.calibration.fixed_bytes - reserve))
                num_blocks = pool_size(
                    setup.arch, setup.dtype, pool_bytes, DEFAULT_BLOCK_SIZE
                ).num_blocks
            else:
                num_blocks = None  # gpu_memory_utilization of the device (or of the cap)
            tokens = request_tokens or [setup.prompt_len + setup.output_len]
            paged = trials.paged(seqs_limit, num_blocks, tokens)
            if not paged["fits"]:
                raise ConfigError(
                    f"OOM probe: the paged serving engine did not fit ({paged['error']}); use a "
                    "platform with more memory or a smaller model"
                )
            fit = paged["fit"]
            n = fit["max_num_seqs"]
            if n < 1:
                raise ConfigError(
                    f"OOM probe: the paged pool ({fit['pool_blocks']} blocks of "
                    f"{fit['block_size']}) holds no request of the workload's largest; use a "
                    "platform with more memory, or shorter requests"
                )
            out |= {
                "max_num_seqs_ok": n,
                "max_num_seqs_min_failed": n + 1 if n < seqs_limit else None,
                "max_num_seqs_limit": seqs_limit,
                "max_num_seqs_tried": [[n, True]],
                "continuous": {"method": "paged pool", **paged},
            }
            say(
                f"continuous (paged): pool of {fit['pool_blocks']} blocks x {fit['block_size']} "
                f"tokens holds {fit['workload']['max_num_seqs']} of the workload's "
                f"{fit['workload']['requests']} requests at once ({fit['longest']['max_num_seqs']} "
                f"of the longest, {fit['typical']['max_num_seqs']} of its mean); max_num_seqs "
                f"{n}, {fit['tokens_in_flight']} tokens in flight; served {paged['served']} with "
                f"{paged['preemptions']} preemptions in {paged['seconds']:.1f} s"
            )
        elif seqs_limit is not None:
            if method == "calibrated":
                # The static tries measured the engine's fixed memory (weights, tables, workspaces):
                # the serving prediction starts from it; each engine that fits refits it. On CUDA
                # every engine build compiles its decode step (seconds), so no calibration
                # builds there; on the CPU (eager, no compilation) builds are cheap, and its eager
                # decode attention needs more per slot than the pool (measured: twice, at 64 + 64
                # tokens), so two small builds calibrate first.
                fixed = max(float(serving_model.fixed_bytes), static.calibration.fixed_bytes)
                prior = Calibration(fixed, 1.0, (), "static calibration's fixed bytes")
                seqs = calibrated_search(
                    trials.serving, serving_model, budget_bytes=budget, limit=seqs_limit,
                    calibrate=setup.device == "cpu", prior=prior, what="max_num_seqs",
                )  # fmt: skip
                out |= {
                    "max_num_seqs_ok": seqs.max_ok,
                    "max_num_seqs_min_failed": seqs.min_failed,
                    "max_num_seqs_limit": seqs_limit,
                    "max_num_seqs_tried": [[n, ok] for n, ok in seqs.tried],
                    "continuous": _search_record(seqs, serving_model, "sequence"),
                }
                say(
                    f"continuous: memory model {seqs.model_predicted}, calibrated "
                    f"{seqs.predicted}, found {seqs.max_ok} (first failure {seqs.min_failed}) "
                    f"in {len(seqs.tries)} engine builds"
                )
            else:
                result, tries = _bisect(trials.serving, seqs_limit, "max_num_seqs")
                out |= {
                    "max_num_seqs_ok": result.max_ok,
                    "max_num_seqs_min_failed": result.min_failed,
                    "max_num_seqs_limit": seqs_limit,
                    "max_num_seqs_tried": [[n, ok] for n, ok in result.tried],
                    "continuous": {"tries": [t.to_dict() for t in tries],
                                   "seconds": round(sum(t.seconds for t in tries), 3)},
                }  # fmt: skip
        if isinstance(trials, WorkerTrials):
            out["cap"].update(trials.info)  # with every worker this probe started
        if getattr(trials, "peak_measured", True) is False:
            out["cap"]["note"] = "/proc/self/clear_refs not writable: peaks unmeasured"
    out["measure_s"] = round(time.monotonic() - t_start, 3)
    return out


def run_probe(
    *,
    model: dict[str, Any],
    platform: dict[str, Any],
    limits: dict[str, Any],
    workload: pd.DataFrame,
    out_path: str | Path,
    cache_dir: str | Path | None = None,
    method: str = "calibrated",
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Probe `model` on `platform` at the workload's longest prompt and longest output, up to
    limits["max_batch"] under limits["memory_limit_gb"] (GB of 1e9 bytes; None: the whole card, or
    on the CPU the machine's RAM); write the result as JSON (atomically) to out_path and return it.

    With limits["max_num_seqs"] (an int: the continuous sweep's `auto` asks for it), also the
    largest max_num_seqs up to that limit whose serving engine fits: keys max_num_seqs_ok,
    max_num_seqs_min_failed, max_num_seqs_limit, max_num_seqs_tried, and `continuous`.

    method "calibrated" (calibrated_search) or "bisect" (probe_max_batch: doubling, then
    bisection; kept to time against). cache_dir: reuse a result of the same probe_key stored
    there (the record then says reused_from), else store this one there. log(text): progress.

    probe.json keys: platform, model, max_ok, min_failed, memory_limit_gb, max_batch, prompt_len,
    output_len, device, tried, quantization columns, weight_bytes (as stored), method,
    budget_bytes (bytes the tries may use), static (engine_build_s, memory_model, calibration,
    predicted, confirmed, tries with peak bytes and seconds), cap (how memory is capped), probe_s,
    cache_key_sha256, reused_from (null, or where the result was measured).

    Raises ConfigError (bad limits or method, size 1 does not fit), HardwareMismatchError,
    ProbeError (a dead or failing CPU worker)."""
    t_start = time.monotonic()
    say = log or (lambda text: None)
    if method not in METHODS:
        raise ConfigError(f"OOM probe: method {method!r}; valid: {list(METHODS)}")
    _check_limits(limits)
    hardware = detect(platform["kind"])
    check_platform(platform, hardware)
    arch = resolve_architecture(model)
    prompt_len = max(len(ids) for ids in workload["prompt_token_ids"])
    # Every request fits the model's positions, but the longest prompt and the longest output may
    # belong to different requests; the probe's uniform batch stays inside the positions.
    output_len = min(int(workload["output_tokens"].max()), arch.max_positions - prompt_len)
    device = "cpu" if platform["kind"] == "cpu" else "cuda"
    quantization = of_model(model)
    identity = {"platform": platform["name"], "model": model["name"]}
    key = probe_key(
        platform=platform, hardware=hardware, limits=limits, arch=arch, model=model,
        prompt_len=prompt_len, output_len=output_len, method=method,
    )  # fmt: skip
    # the continuous probe's paged fit reads every request's length: part of the key
    request_tokens = [
        len(ids) + int(n) for ids, n in zip(workload["prompt_token_ids"], workload["output_tokens"])
    ]
    if limits.get("max_num_seqs") is not None:
        key["request_tokens_sha256"] = hashlib.sha256(
            ",".join(map(str, sorted(request_tokens))).encode()
        ).hexdigest()
    cache = ProbeCache(cache_dir, key) if cache_dir is not None else None
    with cache.lock() if cache is not None else contextlib.nullcontext():
        entry = cache.read() if cache is not None else None
        if entry is not None:
            record = {
                **entry["result"],
                **identity,
                "reused_from": {"cache": str(cache.path), **entry["probed"]},
                "cache_key_sha256": cache.digest,
                "probe_s": round(time.monotonic() - t_start, 3),
            }
            write_json(out_path, record)
            say(f"reused the probe of {entry['probed']} ({cache.path}): same key")
            return record
        setup = ProbeSetup(
            arch, model["dtype"], device, model["seed"], model["checkpoint"], quantization,
            prompt_len, output_len,
        )  # fmt: skip
        result = {
            "memory_limit_gb": limits["memory_limit_gb"],
            "max_batch": limits["max_batch"],
            "prompt_len": prompt_len,
            "output_len": output_len,
            "device": device,
            **quantization_record(quantization),
            # the weights as stored (models.weight_bytes), part of every engine's fixed bytes
            "weight_bytes": weight_bytes(arch, model["dtype"], quantization),
            "method": method,
            **_measure(setup, limits, method, say, request_tokens),
        }
        record = {
            **result,
            **identity,
            "reused_from": None,
            "cache_key_sha256": key_digest(key),
            "probe_s": round(time.monotonic() - t_start, 3),
        }
        write_json(out_path, record)
        if cache is not None:
            cache.write(
                result,
                {**identity, "path": str(out_path),
                 "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "probe_s": record["probe_s"]},
            )  # fmt: skip
    return record

"""The probe's searches for the largest size (a static batch, or max_num_seqs) whose real try fits:
the calibrated search (a prediction from the memory model, calibrated by measured peaks, confirmed
by real tries, a short search where it disagrees) with its records (Try, Calibration, Search), and
the old doubling-then-bisection search (probe_max_batch, kept to time against). Pure: the tries
are a callable handed in."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tokencarbon.errors import ConfigError
from tokencarbon.probe.errors import OutOfMemory
from tokencarbon.probe.memory import MemoryModel


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

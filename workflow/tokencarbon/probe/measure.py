"""The probe's tries on one device, phase by phase: the memory cap and the trials (CUDA in this
process, the CPU in a capped worker), the static search, then the continuous one (the paged
engine's pool fit, confirmed by serving; or, by the old search, slot engines of each size). Returns
probe.json's result keys; run_probe (the package's __init__) names the job and caches them."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import psutil
import torch

from tokencarbon.errors import ConfigError
from tokencarbon.models import activation_bytes
from tokencarbon.probe.errors import OutOfMemory
from tokencarbon.probe.memory import (
    BYTES_PER_GB,
    MemoryModel,
    serving_memory_model,
    static_memory_model,
)
from tokencarbon.probe.meters import CudaMeter
from tokencarbon.probe.search import (
    Calibration,
    ProbeResult,
    Search,
    Try,
    calibrated_search,
    probe_max_batch,
)
from tokencarbon.probe.trials import LocalTrials, ProbeSetup, _cap_cuda_memory
from tokencarbon.probe.worker import WorkerTrials


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
        trials, budget, out["cap"] = _open_trials(setup, cap_gb, seqs_limit, stack)
        out["budget_bytes"] = int(budget)
        static_out, static = _static_probe(trials, static_model, budget, limits, method, say)
        out |= static_out
        if seqs_limit is not None and method == "calibrated":
            out |= _paged_probe(setup, trials, budget, static, seqs_limit, request_tokens, say)
        elif seqs_limit is not None:
            out |= _serving_probe(
                setup, trials, serving_model, budget, static, seqs_limit, method, say
            )
        if isinstance(trials, WorkerTrials):
            out["cap"].update(trials.info)  # with every worker this probe started
        if getattr(trials, "peak_measured", True) is False:
            out["cap"]["note"] = "/proc/self/clear_refs not writable: peaks unmeasured"
    out["measure_s"] = round(time.monotonic() - t_start, 3)
    return out


def _open_trials(
    setup: ProbeSetup, cap_gb: float | None, seqs_limit: int | None, stack: contextlib.ExitStack
) -> tuple[LocalTrials | WorkerTrials, float, dict[str, Any]]:
    """(trials, budget bytes, probe.json's `cap`): on CUDA LocalTrials in this process under the cap
    (budget: the cap, else the device's free memory plus what torch holds); on the CPU a worker
    (WorkerTrials, closed with `stack`) under RLIMIT_DATA (budget: the cap, else the machine's
    RAM)."""
    if setup.device == "cuda":
        device = torch.device("cuda")
        _cap_cuda_memory(cap_gb, device)
        free, _ = torch.cuda.mem_get_info(device)
        budget = cap_gb * BYTES_PER_GB if cap_gb else free + torch.cuda.memory_reserved(device)
        trials = LocalTrials(setup, CudaMeter(device))
        cap = {"mechanism": CudaMeter.mechanism, "device_free_bytes_at_start": free}
    else:
        budget = cap_gb * BYTES_PER_GB if cap_gb else psutil.virtual_memory().total
        trials = stack.enter_context(
            WorkerTrials(setup, budget_bytes=int(budget), serving=seqs_limit is not None)
        )
        cap = {"mechanism": WorkerTrials.mechanism, **trials.info}
    return trials, budget, cap


def _static_probe(
    trials: LocalTrials | WorkerTrials,
    static_model: MemoryModel,
    budget: float,
    limits: dict[str, Any],
    method: str,
    say: Callable[[str], None],
) -> tuple[dict[str, Any], Search | None]:
    """The static engine built, its largest batch searched (method "calibrated" or "bisect"), the
    engine closed: (probe.json's max_ok, min_failed, tried and `static`; the Search, None for
    "bisect"). Raises ConfigError when the weights alone do not fit."""
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
        out = {
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
        return out, static
    result, tries = _bisect(trials.static, limits["max_batch"], "batch")
    trials.close_static()
    out = {
        "max_ok": result.max_ok,
        "min_failed": result.min_failed,
        "tried": [[b, ok] for b, ok in result.tried],
        "static": {"engine_build_s": round(build_s, 3),
                   "tries": [t.to_dict() for t in tries],
                   "seconds": round(sum(t.seconds for t in tries), 3)},
    }  # fmt: skip
    return out, None


def _paged_probe(
    setup: ProbeSetup,
    trials: LocalTrials | WorkerTrials,
    budget: float,
    static: Search,
    seqs_limit: int,
    request_tokens: list[int] | None,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """The continuous probe of method "calibrated": probe.json's max_num_seqs_* keys and
    `continuous` from the paged engine's pool fit (LocalTrials.paged). Raises ConfigError when the
    engine does not fit or its pool holds no request of the workload's largest."""
    # The continuous cells' engine is the paged one (backends/paged_engine.py): its pool is
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
        num_blocks = pool_size(setup.arch, setup.dtype, pool_bytes, DEFAULT_BLOCK_SIZE).num_blocks
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
    say(
        f"continuous (paged): pool of {fit['pool_blocks']} blocks x {fit['block_size']} "
        f"tokens holds {fit['workload']['max_num_seqs']} of the workload's "
        f"{fit['workload']['requests']} requests at once ({fit['longest']['max_num_seqs']} "
        f"of the longest, {fit['typical']['max_num_seqs']} of its mean); max_num_seqs "
        f"{n}, {fit['tokens_in_flight']} tokens in flight; served {paged['served']} with "
        f"{paged['preemptions']} preemptions in {paged['seconds']:.1f} s"
    )
    return {
        "max_num_seqs_ok": n,
        "max_num_seqs_min_failed": n + 1 if n < seqs_limit else None,
        "max_num_seqs_limit": seqs_limit,
        "max_num_seqs_tried": [[n, True]],
        "continuous": {"method": "paged pool", **paged},
    }


def _serving_probe(
    setup: ProbeSetup,
    trials: LocalTrials | WorkerTrials,
    serving_model: MemoryModel,
    budget: float,
    static: Search | None,
    seqs_limit: int,
    method: str,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """The continuous probe by slot engines of each size (LocalTrials.serving): probe.json's
    max_num_seqs_* keys and `continuous`. _measure calls it for method "bisect" only (a calibrated
    probe takes the paged fit), so its "calibrated" branch does not run there."""
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
        say(
            f"continuous: memory model {seqs.model_predicted}, calibrated "
            f"{seqs.predicted}, found {seqs.max_ok} (first failure {seqs.min_failed}) "
            f"in {len(seqs.tries)} engine builds"
        )
        return {
            "max_num_seqs_ok": seqs.max_ok,
            "max_num_seqs_min_failed": seqs.min_failed,
            "max_num_seqs_limit": seqs_limit,
            "max_num_seqs_tried": [[n, ok] for n, ok in seqs.tried],
            "continuous": _search_record(seqs, serving_model, "sequence"),
        }
    result, tries = _bisect(trials.serving, seqs_limit, "max_num_seqs")
    return {
        "max_num_seqs_ok": result.max_ok,
        "max_num_seqs_min_failed": result.min_failed,
        "max_num_seqs_limit": seqs_limit,
        "max_num_seqs_tried": [[n, ok] for n, ok in result.tried],
        "continuous": {"tries": [t.to_dict() for t in tries],
                       "seconds": round(sum(t.seconds for t in tries), 3)},
    }  # fmt: skip

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

The package, one concern per module: memory.py (the memory models), search.py (the calibrated
search and the old bisection, with Try, Calibration and Search), meters.py (measuring a try's
memory on CUDA and the CPU), trials.py (real tries in this process; the CUDA cap), paged.py (the
paged pool's fit), worker.py (the CPU worker under RLIMIT_DATA and WorkerTrials driving it),
cache.py (the probe key and cache), measure.py (the probe's phases on one device), errors.py; this
file holds run_probe and re-exports every public name of the modules.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokencarbon.errors import ConfigError
from tokencarbon.files import write_json
from tokencarbon.hardware import check_platform, detect
from tokencarbon.models import resolve_architecture, weight_bytes
from tokencarbon.probe.cache import (
    PROBE_FORMAT,
    ProbeCache,
    code_fingerprint,
    key_digest,
    probe_key,
)
from tokencarbon.probe.errors import OutOfMemory, ProbeError
from tokencarbon.probe.measure import _measure
from tokencarbon.probe.memory import (
    BYTES_PER_GB,
    MemoryModel,
    engine_fixed_bytes,
    serving_memory_model,
    serving_pool_bytes,
    static_memory_model,
    static_request_bytes,
)
from tokencarbon.probe.meters import CpuMeter, CudaMeter
from tokencarbon.probe.paged import paged_fit, request_blocks_at
from tokencarbon.probe.search import (
    Calibration,
    ProbeResult,
    Search,
    Try,
    calibrated_search,
    calibration_sizes,
    fit_calibration,
    largest_fitting,
    model_calibration,
    probe_max_batch,
)
from tokencarbon.probe.trials import PROBE_DECODE_STEPS, LocalTrials, ProbeSetup, make_try_batch
from tokencarbon.probe.worker import CPU_WORKER_ENV, WorkerTrials
from tokencarbon.quantization import of_model
from tokencarbon.quantization import record as quantization_record

if TYPE_CHECKING:  # the CPU worker imports this package: no pandas there (0.3 s)
    import pandas as pd

__all__ = [
    "BYTES_PER_GB",
    "CPU_WORKER_ENV",
    "METHODS",
    "PROBE_DECODE_STEPS",
    "PROBE_FORMAT",
    "Calibration",
    "CpuMeter",
    "CudaMeter",
    "LocalTrials",
    "MemoryModel",
    "OutOfMemory",
    "ProbeCache",
    "ProbeError",
    "ProbeResult",
    "ProbeSetup",
    "Search",
    "Try",
    "WorkerTrials",
    "calibrated_search",
    "calibration_sizes",
    "code_fingerprint",
    "engine_fixed_bytes",
    "fit_calibration",
    "key_digest",
    "largest_fitting",
    "make_try_batch",
    "model_calibration",
    "paged_fit",
    "probe_key",
    "probe_max_batch",
    "request_blocks_at",
    "run_probe",
    "serving_memory_model",
    "serving_pool_bytes",
    "static_memory_model",
    "static_request_bytes",
]

METHODS = ("calibrated", "bisect")


def _check_limits(limits: dict[str, Any]) -> None:
    cap = limits.get("memory_limit_gb")
    if cap is not None and (type(cap) not in (int, float) or not cap > 0):
        raise ConfigError(f"OOM probe: memory_limit_gb {cap!r}; must be a positive number or null")
    for key in ("max_batch", "max_num_seqs"):
        value = limits.get(key)
        if (key == "max_batch" or value is not None) and (type(value) is not int or value < 1):
            raise ConfigError(f"OOM probe: {key} {value!r}; must be an integer >= 1")


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

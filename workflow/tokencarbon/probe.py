"""OOM probe: the largest static batch a model serves on a device, and (continuous batching) the
largest max_num_seqs whose KV pool fits, each found by real runs of the workload's longest prompt
and longest output (doubling, then bisection)."""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import psutil
import torch

from tokencarbon.backends.static import TorchEngine
from tokencarbon.errors import ConfigError
from tokencarbon.files import write_json
from tokencarbon.hardware import check_platform, detect
from tokencarbon.models import (
    activation_bytes,
    kv_cache_bytes,
    resolve_architecture,
    weight_bytes,
)
from tokencarbon.quantization import NONE, Quantization, of_model
from tokencarbon.quantization import record as quantization_record

BYTES_PER_GB = 1e9
# A try runs the full longest prompt with the KV cache reserved for the full longest output, then
# this many decode steps: decode replays static buffers (a CUDA graph on GPU), so the peak is reached
# by then, and a 13B try at 1000 output tokens takes a second instead of 12.
PROBE_DECODE_STEPS = 4


class OutOfMemory(Exception):
    """A batch does not fit in the device's (possibly capped) memory."""


@dataclass(frozen=True)
class ProbeResult:
    max_ok: int  # largest batch that ran
    min_failed: int | None  # smallest batch that did not fit; None when `limit` itself ran
    tried: list[tuple[int, bool]]  # (batch, fitted), in the order tried


def probe_max_batch(try_batch: Callable[[int], None], *, start: int = 1, limit: int) -> ProbeResult:
    """Double from `start` until a batch fails or `limit` runs, then bisect between the last batch
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


def make_try_batch(
    engine: TorchEngine, *, prompt_len: int, output_len: int, memory_limit_gb: float | None
) -> Callable[[int], None]:
    """try_batch(b) for probe_max_batch: runs b requests of prompt_len + output_len tokens on the
    engine (weights stay loaded; each try allocates and then frees its own KV cache).

    CUDA: a real run, capped by torch.cuda.set_per_process_memory_fraction when memory_limit_gb is
    set (the cap covers torch's allocations, not the CUDA context); torch's OutOfMemoryError becomes
    OutOfMemory. CPU: weights as stored (models.weight_bytes with the engine's quantization) + KV
    cache + prefill activations (tokencarbon.models) are checked against memory_limit_gb (default:
    the machine's RAM) before a short real run.
    """
    arch, dtype, device = engine.arch, engine.dtype, engine.device
    quantization = engine.quantization
    decode_len = min(output_len, PROBE_DECODE_STEPS)

    def prompts(batch: int) -> list[list[int]]:
        return [[(i % (arch.vocab_size - 1)) + 1 for i in range(prompt_len)]] * batch

    if device.type == "cuda":
        _cap_cuda_memory(memory_limit_gb, device)

        def try_batch(batch: int) -> None:
            error = ""
            try:
                engine.run_batch(
                    prompts(batch), [decode_len] * batch, reserve_output_len=output_len
                )
            except torch.cuda.OutOfMemoryError as exc:
                # keep only the text: the exception's frames hold the tensors to be freed
                error = str(exc).splitlines()[0]
            engine.release()
            gc.collect()
            torch.cuda.empty_cache()  # each try starts from the weights alone
            if error:
                raise OutOfMemory(f"batch {batch}: {error}")

        return try_batch

    if memory_limit_gb is None:
        budget_bytes = psutil.virtual_memory().total
    else:
        budget_bytes = memory_limit_gb * BYTES_PER_GB

    def try_batch(batch: int) -> None:
        need_bytes = (
            weight_bytes(arch, dtype, quantization)
            + kv_cache_bytes(arch, batch, prompt_len + output_len, dtype)
            + activation_bytes(arch, batch, prompt_len, dtype)
        )
        if need_bytes > budget_bytes:
            raise OutOfMemory(
                f"batch {batch} needs {need_bytes} bytes (weights + KV cache + activations) > "
                f"budget {budget_bytes:.0f} bytes"
            )
        try:
            engine.run_batch(prompts(batch), [decode_len] * batch, reserve_output_len=output_len)
        finally:
            engine.release()

    return try_batch


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


def serving_pool_bytes(arch, dtype: str, max_num_seqs: int, prompt_len: int, output_len: int) -> int:
    """What a TorchServingEngine of max_num_seqs slots holds beside its weights while serving
    requests of prompt_len + output_len tokens: its KV pool (every slot sized for the longest
    request, rounded up to KV_BLOCK positions, as serving.TorchServingEngine.cache_len_for does),
    the generated-token buffer (int64, slots x positions) and the activations of its largest
    prefill step (prompts packed up to MAX_PREFILL_TOKENS; a longer prompt alone;
    models.activation_bytes per packed prompt, eager attention: an upper-end estimate)."""
    from tokencarbon.backends.attention import KV_BLOCK
    from tokencarbon.backends.serving import MAX_PREFILL_TOKENS

    cache_len = -(-(prompt_len + output_len) // KV_BLOCK) * KV_BLOCK
    packed = min(max_num_seqs, max(1, MAX_PREFILL_TOKENS // prompt_len))
    return (
        kv_cache_bytes(arch, max_num_seqs, cache_len, dtype)
        + max_num_seqs * cache_len * 8
        + activation_bytes(arch, packed, prompt_len, dtype)
    )


def make_try_seqs(
    make_engine: Callable[[int], Any],
    *,
    arch,
    dtype: str,
    device: str,
    prompt_len: int,
    output_len: int,
    memory_limit_gb: float | None,
    quantization: Quantization = NONE,
) -> Callable[[int], None]:
    """try_seqs(n) for probe_max_batch, continuous batching: make_engine(n) builds a serving engine
    of max_num_seqs n whose slots hold prompt_len + output_len tokens (TorchServingEngine with
    max_model_len), which serves n requests of the longest prompt, all at t=0, PROBE_DECODE_STEPS
    output tokens each: every slot busy, the pool allocated for the full output. Each try builds
    its own engine (the pool's size is fixed at construction) and frees it.

    CUDA: a real run under the memory cap; torch's OutOfMemoryError (building or serving) becomes
    OutOfMemory. CPU: weights as stored (models.weight_bytes with `quantization`) +
    serving_pool_bytes are checked against memory_limit_gb (default: the machine's RAM) before a
    real run.
    """
    from tokencarbon.backends import Request

    decode_len = min(output_len, PROBE_DECODE_STEPS)
    prompt = tuple((i % (arch.vocab_size - 1)) + 1 for i in range(prompt_len))

    def requests(n: int) -> list:
        return [Request(f"probe{i}", prompt, decode_len, 0.0) for i in range(n)]

    if torch.device(device).type == "cuda":
        _cap_cuda_memory(memory_limit_gb, torch.device(device))

        def try_seqs(n: int) -> None:
            error, engine = "", None
            try:
                engine = make_engine(n)
                engine.serve(requests(n))
            except torch.cuda.OutOfMemoryError as exc:
                error = str(exc).splitlines()[0]  # the text only: frames hold tensors
            if engine is not None:
                engine.release()
            del engine
            gc.collect()
            torch.cuda.empty_cache()
            if error:
                raise OutOfMemory(f"max_num_seqs {n}: {error}")

        return try_seqs

    budget_bytes = (
        psutil.virtual_memory().total if memory_limit_gb is None else memory_limit_gb * BYTES_PER_GB
    )

    def try_seqs(n: int) -> None:
        need_bytes = weight_bytes(arch, dtype, quantization) + serving_pool_bytes(
            arch, dtype, n, prompt_len, output_len
        )
        if need_bytes > budget_bytes:
            raise OutOfMemory(
                f"max_num_seqs {n} needs {need_bytes} bytes (weights + KV pool + token buffer + "
                f"prefill activations) > budget {budget_bytes:.0f} bytes"
            )
        engine = make_engine(n)
        try:
            engine.serve(requests(n))
        finally:
            engine.release()

    return try_seqs


def run_probe(
    *,
    model: dict[str, Any],
    platform: dict[str, Any],
    limits: dict[str, Any],
    workload: pd.DataFrame,
    out_path: str | Path,
) -> dict[str, Any]:
    """Probe `model` on `platform` at the workload's longest prompt and longest output, up to
    limits["max_batch"] under limits["memory_limit_gb"]; write the result as JSON (atomically).

    With limits["max_num_seqs"] (an int: the continuous sweep's `auto` asks for it), also the
    largest max_num_seqs up to that limit whose serving engine's KV pool fits (make_try_seqs):
    keys max_num_seqs_ok, max_num_seqs_min_failed, max_num_seqs_limit, max_num_seqs_tried."""
    check_platform(platform, detect(platform["kind"]))
    arch = resolve_architecture(model)
    prompt_len = max(len(ids) for ids in workload["prompt_token_ids"])
    # Every request fits the model's positions, but the longest prompt and the longest output may
    # belong to different requests; the probe's uniform batch stays inside the positions.
    output_len = min(int(workload["output_tokens"].max()), arch.max_positions - prompt_len)
    device = "cpu" if platform["kind"] == "cpu" else "cuda"
    quantization = of_model(model)
    engine = TorchEngine(
        arch, model["dtype"], device, seed=model["seed"], checkpoint=model["checkpoint"],
        quantization=quantization,
    )  # fmt: skip
    try_batch = make_try_batch(
        engine,
        prompt_len=prompt_len,
        output_len=output_len,
        memory_limit_gb=limits["memory_limit_gb"],
    )
    result = probe_max_batch(try_batch, limit=limits["max_batch"])
    record = {
        "platform": platform["name"],
        "model": model["name"],
        "max_ok": result.max_ok,
        "min_failed": result.min_failed,
        "memory_limit_gb": limits["memory_limit_gb"],
        "max_batch": limits["max_batch"],
        "prompt_len": prompt_len,
        "output_len": output_len,
        "device": device,
        "tried": [[batch, ok] for batch, ok in result.tried],
        **quantization_record(quantization),
        # the weights as stored, which the CPU check reserves (models.weight_bytes)
        "weight_bytes": weight_bytes(arch, model["dtype"], quantization),
    }
    seqs_limit = limits.get("max_num_seqs")
    if seqs_limit is not None:
        engine.release()
        del engine, try_batch
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
        from tokencarbon.backends.serving import TorchServingEngine

        def make_engine(n: int) -> TorchServingEngine:
            return TorchServingEngine(
                arch, model["dtype"], device, seed=model["seed"], checkpoint=model["checkpoint"],
                max_num_seqs=n, max_model_len=prompt_len + output_len, quantization=quantization,
            )  # fmt: skip

        try_seqs = make_try_seqs(
            make_engine,
            arch=arch,
            dtype=model["dtype"],
            device=device,
            prompt_len=prompt_len,
            output_len=output_len,
            memory_limit_gb=limits["memory_limit_gb"],
            quantization=quantization,
        )
        seqs = probe_max_batch(try_seqs, limit=seqs_limit)
        record |= {
            "max_num_seqs_ok": seqs.max_ok,
            "max_num_seqs_min_failed": seqs.min_failed,
            "max_num_seqs_limit": seqs_limit,
            "max_num_seqs_tried": [[n, ok] for n, ok in seqs.tried],
        }
    write_json(out_path, record)
    return record

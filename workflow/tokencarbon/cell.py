"""One cell: a model on a platform at one batch size, its batches timed and its power sampled.

Order of events: check the workload and (TensorRT-LLM) the engine against the cell, check the
hardware, load the engine of the configured backend, run the warm-up batch(es), sample idle power
for a few seconds, start the power sidecar, run every measured batch, stop the sidecar, then write
batches.parquet, power.parquet and meta.json, each atomically and meta.json last: a cell killed
part-way leaves no file that looks finished. Only loading the engine differs between backends.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from tokencarbon import tables
from tokencarbon.errors import ConfigError, HardwareMismatchError
from tokencarbon.files import write_json
from tokencarbon.hardware import check_platform, detect, software_versions
from tokencarbon.models import load_architecture


def group_batches(workload: pd.DataFrame, batch_size: int) -> list[pd.DataFrame]:
    """The workload in order, cut into static batches of batch_size (the last may be smaller)."""
    return [workload.iloc[i : i + batch_size] for i in range(0, len(workload), batch_size)]


def pin_to_logical_cpus(n: int) -> None:
    """Run on the platform's n logical CPUs, as its TDP and peak FLOP/s describe (platforms.csv)."""
    import torch

    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < n:
        raise HardwareMismatchError(
            f"platform 'cpu' describes {n} logical CPUs (resources/platforms.csv, logical_cpus) but "
            f"this process may use only {len(allowed)}: {allowed}"
        )
    os.sched_setaffinity(0, allowed[:n])
    torch.set_num_threads(n)


def power_source_spec(platform: dict[str, Any]) -> dict[str, Any]:
    if platform["kind"] == "cpu":
        return {"kind": "modeled_cpu", "tdp_w": platform["tdp_w"]}
    # CUDA_VISIBLE_DEVICES (set by the scheduler or a lease) makes the cell's GPU device 0.
    return {"kind": "nvml", "device_index": 0}


def run_cell(
    *,
    model: dict[str, Any],
    platform: dict[str, Any],
    run: dict[str, Any],
    batch_size: int,
    workload: pd.DataFrame,
    engine_manifest: str | Path,
    out_batches: str | Path,
    out_power: str | Path,
    out_meta: str | Path,
    gpu_lease: dict[str, Any] | None = None,
) -> None:
    """engine_manifest: the engine stage's manifest. The tensorrt_llm backend runs the engine it
    names; the torch backend builds its engine from `model` (its manifest is the same recipe)."""
    from tokencarbon.backends import tensorrt_llm as trtllm_backend
    from tokencarbon.power.sidecar import PowerSidecar, measure_idle, parts_dir, read_samples

    arch = load_architecture(model["architecture"])
    too_large = [
        max(ids) for ids in workload["prompt_token_ids"] if len(ids) and max(ids) >= arch.vocab_size
    ]
    if too_large:
        raise ConfigError(
            f"model {model['name']!r}: the workload holds token id {max(too_large)}, outside "
            f"{arch.name}'s vocabulary of {arch.vocab_size}; use a tokenizer whose vocabulary fits "
            "(families.<family>.tokenizer, or workload.builtin_vocab_size)"
        )
    trt_engine = None  # what meta.json records of a TensorRT-LLM engine
    if run["backend"] == "tensorrt_llm":
        if platform["kind"] != "gpu":
            raise ConfigError(
                f"config key backend.name: 'tensorrt_llm' runs on GPU platforms only, and platform "
                f"{platform['name']!r} is a CPU; measure it with backend.name: torch"
            )
        trt_engine = trtllm_backend.engine_for_cell(
            engine_manifest,
            model=model,
            platform=platform,
            batch_size=batch_size,
            longest_prompt=int(workload["prompt_token_ids"].map(len).max()),
            longest_output=int(workload["output_tokens"].max()),
        )
        trtllm_backend.require_tensorrt_llm()
    hardware = detect(platform["kind"])
    check_platform(platform, hardware)

    device = "cpu" if platform["kind"] == "cpu" else "cuda"
    if device == "cpu":
        pin_to_logical_cpus(platform["logical_cpus"])
    with contextlib.ExitStack() as stack:
        if trt_engine is None:
            from tokencarbon.backends.torch_backend import TorchEngine

            engine = TorchEngine(
                arch,
                model["dtype"],
                device,
                seed=model["seed"],
                checkpoint=model["checkpoint"],
                cuda_graphs=run["cuda_graphs"],
                compile_decode=run["compile_decode"] and device == "cuda",
            )
        else:
            # The Executor holds the GPU and a worker thread until shut down, also on failure.
            engine = stack.enter_context(
                contextlib.closing(trtllm_backend.TrtllmEngine(trt_engine["engine_dir"]))
            )
        batches = group_batches(workload, batch_size)

        def run_one(batch: pd.DataFrame):
            return engine.run_batch(
                [list(ids) for ids in batch["prompt_token_ids"]],
                [int(n) for n in batch["output_tokens"]],
            )

        for _ in range(run["warmup_batches"]):
            run_one(batches[0])

        source = power_source_spec(platform)
        interval_s = platform["power_interval_s"]
        idle_samples, idle_power_w = measure_idle(source, platform["idle_s"], interval_s)

        power_path = Path(out_power)
        run_samples_path = power_path.with_name(".run_power.parquet")
        results = []
        # The sidecar samples this process's CPU use (modeled) or the cell's GPU (NVML).
        pid = os.getpid()
        with PowerSidecar(source, run_samples_path, interval_s, phase="run", target_pid=pid):
            for batch in tqdm(batches, desc=f"{model['name']} bs{batch_size}", file=sys.stderr):
                results.append(run_one(batch))
        run_samples = read_samples(run_samples_path)
        run_samples_path.unlink()
        shutil.rmtree(parts_dir(run_samples_path), ignore_errors=True)

        versions = software_versions()
        rows = [
            {
                "repeat": 0,
                "batch_index": i,
                **_batch_record(r),
                "prompt_lens": [len(ids) for ids in batch["prompt_token_ids"]],
                "output_lens": [int(n) for n in batch["output_tokens"]],
            }
            for i, (r, batch) in enumerate(zip(results, batches))
        ]
        tables.write(pd.DataFrame(rows), out_batches, tables.BATCHES)
        tables.write(
            pd.concat([idle_samples, run_samples], ignore_index=True), out_power, tables.POWER
        )
        write_json(
            out_meta,
            {
                "platform": platform["name"],
                "model": model["name"],
                "mode": "static",
                "batch_size": batch_size,
                "architecture": arch.name,
                "dtype": model["dtype"],
                "backend": run["backend"],
                # tensorrt_llm: manifest, engine_dir, limits, version, build GPU; null for torch
                "engine": trt_engine,
                "device_name": hardware["device_name"],
                "n_requests": len(workload),
                "n_batches": len(results),
                "warmup_batches": run["warmup_batches"],
                "window_start_wall_ns": results[0].start_wall_ns,
                "window_end_wall_ns": results[-1].end_wall_ns,
                "idle_power_w": idle_power_w,
                "power_source": source["kind"],
                "power_interval_s": interval_s,
                "peak_memory_bytes": float(engine.peak_memory_bytes()),
                "git_commit": versions["git_commit"],
                "hardware": hardware,
                "gpu_lease": gpu_lease,
                "versions": versions,
                "config": {"model": model, "platform": platform, "run": run},
                "seeds": {"weights": model["seed"]},
                "n_power_samples": {"idle": len(idle_samples), "run": len(run_samples)},
                "finished_wall_ns": time.time_ns(),
            },
        )


def _batch_record(result: Any) -> dict[str, int]:
    skip = {"repeat", "batch_index", "prompt_lens", "output_lens"}
    return {name: int(getattr(result, name)) for name in tables.BATCHES.names if name not in skip}

"""The OOM table: the largest static batch of Llama-2-7B and -13B at the study's 1000 / 1000 token
bounds under a memory cap (default 40 GB, the study's A100-40GB), found by the workflow's own probe
(real CUDA out-of-memory errors), beside the study's table and a count from first principles.

    python benchmarks/oom_table.py                      # 7B and 13B, fp16, 40 GB cap
    python benchmarks/oom_table.py --memory-limit-gb 40 none   # also the whole card
    python benchmarks/oom_table.py --dtype bfloat16 --quantization int4_weight_only:128 \
        --memory-limit-gb 32 40      # the study's WQ4bit rows (torchao int4, group 128)

Writes <gpu>-oom.json (<gpu>-oom-<scheme>.json when quantized) to $OUT (else benchmarks/results)
after every probe, and prints a table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode_roofline import describe_machine, free_device_memory, gpu_slug, log, out_dir  # noqa: E402

from tokencarbon.backends.static import CACHE_ALIGN, TorchEngine  # noqa: E402
from tokencarbon.files import write_json  # noqa: E402
from tokencarbon.models import (  # noqa: E402
    activation_bytes,
    kv_cache_bytes,
    load_architecture,
    weight_bytes,
)
from tokencarbon.probe import PROBE_DECODE_STEPS, make_try_batch, probe_max_batch  # noqa: E402
from tokencarbon.quantization import NONE, library_version, parse_quantization  # noqa: E402

# Lim, Pan, Zhou (2024), TensorRT-LLM on an A100-40GB, 1000 input / 1000 output tokens, one engine
# built per batch size: the largest batch that built and ran.
STUDY_A100_40GB = {"llama-2-7b": 22, "llama-2-13b": 8}
# The same study's Table 3 on a V100 32GB, unquantized and TensorRT-LLM's WQ4bit (issue 16 quotes it)
STUDY_V100_32GB = {"llama-2-7b": 14, "llama-2-13b": 4}
STUDY_V100_32GB_WQ4 = {"llama-2-7b": 22, "llama-2-13b": 12}
BYTES_PER_GB = 1e9


def first_principles(
    arch_name: str, dtype: str, prompt_len: int, output_len: int, cap_gb: float, quantization=NONE
):
    """Largest b with weights + KV cache (at the backend's aligned length) + prefill activations
    within the cap: what the probe should find, give or take the allocator's slack."""
    arch = load_architecture(arch_name)
    cache_len = -(-(prompt_len + output_len) // CACHE_ALIGN) * CACHE_ALIGN
    weights = weight_bytes(arch, dtype, quantization)
    per_request = kv_cache_bytes(arch, 1, cache_len, dtype) + activation_bytes(
        arch, 1, prompt_len, dtype
    )
    return {
        "weights_bytes": weights,
        "kv_bytes_per_request": kv_cache_bytes(arch, 1, cache_len, dtype),
        "cache_len": cache_len,
        "max_batch": int((cap_gb * BYTES_PER_GB - weights) // per_request),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["llama-2-7b", "llama-2-13b"])
    p.add_argument("--dtype", default="float16")
    p.add_argument("--prompt-len", type=int, default=1000)
    p.add_argument("--output-len", type=int, default=1000)
    p.add_argument(
        "--memory-limit-gb", nargs="+", default=["40"], help="caps in GB; 'none' = the whole card"
    )
    p.add_argument("--limit", type=int, default=256, help="largest batch tried")
    p.add_argument(
        "--quantization",
        default="none",
        help="none, int8_weight_only or int4_weight_only:GROUP (torchao; int4 needs bfloat16)",
    )
    p.add_argument("--out-dir", help="default: $OUT, else benchmarks/results")
    args = p.parse_args(argv)
    scheme, _, group = args.quantization.partition(":")
    raw = {"scheme": scheme, "group_size": int(group)} if group else scheme
    quantization = parse_quantization(raw, "--quantization")
    if not torch.cuda.is_available():
        print("oom_table.py needs a CUDA GPU (the probe's OOM is a real CUDA OOM)", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    total_gb = torch.cuda.get_device_properties(device).total_memory / BYTES_PER_GB
    rows = []
    suffix = "" if quantization == NONE else f"-{quantization.label()}"
    path = out_dir(args.out_dir) / f"{gpu_slug(device)}-oom{suffix}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "benchmark": "oom_table",
        "prompt_len": args.prompt_len,
        "output_len": args.output_len,
        "quantization": quantization.scheme,
        "quant_group_size": quantization.group_size,
        "quant_library": library_version(quantization),
        "probe_decode_steps": PROBE_DECODE_STEPS,
        "cap_note": "torch.cuda.set_per_process_memory_fraction: torch's allocations only, "
        "not the CUDA context (~0.5 GB)",
        "machine": describe_machine(device),
        "results": rows,
    }
    for name in args.models:
        arch = load_architecture(name)
        engine = TorchEngine(arch, args.dtype, device, seed=0, quantization=quantization)
        for cap in args.memory_limit_gb:
            cap_gb = None if cap == "none" else float(cap)
            log(f"{name} {args.dtype} cap {cap_gb} GB")
            t0 = time.monotonic()
            try_batch = make_try_batch(
                engine,
                prompt_len=args.prompt_len,
                output_len=args.output_len,
                memory_limit_gb=cap_gb,
            )
            result = probe_max_batch(try_batch, limit=args.limit)
            torch.cuda.set_per_process_memory_fraction(1.0)
            rows.append(
                {
                    "model": name,
                    "dtype": args.dtype,
                    "quantization": quantization.label(),
                    "memory_limit_gb": cap_gb,
                    "max_ok": result.max_ok,
                    "min_failed": result.min_failed,
                    "tried": [[b, ok] for b, ok in result.tried],
                    "probe_s": round(time.monotonic() - t0, 1),
                    "first_principles": first_principles(
                        name, args.dtype, args.prompt_len, args.output_len, cap_gb or total_gb,
                        quantization,
                    ),  # fmt: skip
                    "study_a100_40gb": None if suffix else STUDY_A100_40GB.get(name),
                    "study_v100_32gb": (STUDY_V100_32GB_WQ4 if suffix else STUDY_V100_32GB).get(
                        name
                    ),
                }
            )
            write_json(path, record)
            log(f"  max batch {result.max_ok} (first failure {result.min_failed})")
        del engine, try_batch  # the closure holds the engine: both go before the next model
        free_device_memory(device)
    write_json(path, record)
    print(f"{'model':<12} {'cap GB':>7} {'ours':>5} {'first principles':>17} {'study':>6}")
    for r in rows:
        cap = "card" if r["memory_limit_gb"] is None else f"{r['memory_limit_gb']:g}"
        study = {"40": r["study_a100_40gb"] or "", "32": r["study_v100_32gb"] or ""}
        print(
            f"{r['model']:<12} {cap:>7} {r['max_ok']:>5} {r['first_principles']['max_batch']:>17} "
            f"{study.get(cap, ''):>6}"
        )
    print(f"record: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Weight-only quantization on the torch backend (issue 16): decode tokens/s, MBU and J/token of one
model unquantized beside its torchao-quantized weights, at batch 1, 16 and 64, on one seeded prompt
set; the record goes to h<gpu>-quant.json (benchmarks/README.md).

    python benchmarks/quant_decode.py             # GPU: Llama-2-7B bf16 and int4 g128 (tinygemm)
    python benchmarks/quant_decode.py --smoke     # CPU: tiny-llama fp32 and int8 (the code path)

Per (scheme, batch): one warm-up batch (cache allocation, CUDA graph capture), then `repeats` timed
batches inside one measurement window (tokencarbon.monitor: NVML's energy counter on a GPU, TDP x
utilisation on a CPU, flagged "modeled"). Decode step time = (end - first token) / (N - 1), median
over the timed batches; J/token = the window's energy / its output tokens (prefill included, as a
cell counts it). Results are written after every case, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import statistics
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from decode_roofline import (
    copy_bandwidth,
    describe_machine,
    error_text,
    free_device_memory,
    gpu_slug,
    log,
    out_dir,
)

from tokencarbon.backends.static import TorchEngine
from tokencarbon.files import write_json
from tokencarbon.flops import decode_step_bytes
from tokencarbon.models import load_architecture, weight_bytes
from tokencarbon.monitor import Monitor
from tokencarbon.quantization import NONE, Quantization, library_version

# issue 16, one H200, Llama-2-7B int4 weight-only group 128, batch-1 decode: must reach / goal.
TARGET_TOK_S = {"must": 350.0, "goal": 450.0}
# gpt-fast's README (pytorch-labs/gpt-fast): one A100 80GB power-limited to 330 W, batch 1,
# Llama-2-7B "Base" 104.9 tok/s, "4-bit (G=32)" 196.80 tok/s (torch.compile'd decode).
ANCHOR = {
    "source": "pytorch-labs/gpt-fast README, A100 80GB at 330 W, Llama-2-7B, batch 1",
    "base_tok_s": 104.9,
    "int4_g32_tok_s": 196.80,
}


@dataclass(frozen=True)
class Plan:
    model: str
    dtype: str
    schemes: tuple[Quantization, ...]
    batches: tuple[int, ...]
    prompt_len: int
    output_len: int


GPU_PLAN = Plan(
    "llama-2-7b", "bfloat16", (NONE, Quantization("int4_weight_only", 128)), (1, 16, 64), 128, 256
)
SMOKE_PLAN = Plan("tiny-llama", "float32", (NONE, Quantization("int8_weight_only")), (1, 4), 16, 16)


def seeded_prompts(batch: int, prompt_len: int, vocab_size: int, seed: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch, prompt_len), generator=gen).tolist()


def measure_case(
    engine: TorchEngine, plan: Plan, q: Quantization, batch: int, repeats: int, monitor: Monitor,
    bandwidth: dict, seed: int,
) -> dict:  # fmt: skip
    """One (scheme, batch) case on a built engine: timing, MBU against the copy bandwidth, J/token."""
    arch = engine.arch
    prompts = seeded_prompts(batch, plan.prompt_len, arch.vocab_size, seed)
    outputs = [plan.output_len] * batch
    warm = engine.run_batch(prompts, outputs)
    name = f"{q.label()}-bs{batch}"
    monitor.begin_window(name)
    runs = [engine.run_batch(prompts, outputs) for _ in range(repeats)]
    energy = monitor.end_window(name, tokens=repeats * batch * plan.output_len)
    step_s = statistics.median((r.end_ns - r.first_token_ns) / 1e9 for r in runs) / (
        plan.output_len - 1
    )
    # MBU's bytes per step: flops.decode_step_bytes, the weights as stored (quantized) + the cache
    stored = weight_bytes(arch, plan.dtype, q)
    useful = statistics.fmean(
        decode_step_bytes(arch, [plan.prompt_len + k] * batch, plan.dtype, q)
        for k in range(1, plan.output_len)
    )
    return {
        "case": name,
        "scheme": q.scheme,
        "group_size": q.group_size,
        "library": library_version(q),
        "batch": batch,
        "prompt_len": plan.prompt_len,
        "output_len": plan.output_len,
        "repeats": repeats,
        "ms_per_step": step_s * 1e3,
        "decode_tok_per_s": batch / step_s,
        "batch_s": statistics.median((r.end_ns - r.start_ns) / 1e9 for r in runs),
        "weight_bytes": stored,
        "mbu_vs_copy": useful / step_s / bandwidth["bytes_per_s"],
        "tokens_repeatable": all(r.token_ids == warm.token_ids for r in runs),
        "energy": energy.to_dict(),
        "j_per_token": energy.j_per_token,
    }


def verdicts(results: list[dict], plan: Plan) -> dict:
    """Issue 16's targets on the int4 batch-1 case, and every scheme's ratio to the unquantized."""
    by = {(r["scheme"], r["batch"]): r for r in results if "error" not in r}
    out: dict = {"ratios_vs_none": {}}
    for (scheme, batch), r in by.items():
        base = by.get(("none", batch))
        if scheme != "none" and base:
            out["ratios_vs_none"][f"{scheme}-bs{batch}"] = {
                "decode_tok_per_s": r["decode_tok_per_s"] / base["decode_tok_per_s"],
                "j_per_token": r["j_per_token"] / base["j_per_token"],
            }
    int4 = by.get(("int4_weight_only", 1))
    if int4 is not None and plan is GPU_PLAN:
        out["int4_bs1"] = {
            "decode_tok_per_s": int4["decode_tok_per_s"],
            "must_reach": int4["decode_tok_per_s"] >= TARGET_TOK_S["must"],
            "goal_met": int4["decode_tok_per_s"] >= TARGET_TOK_S["goal"],
        }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny-llama fp32 + int8 on the CPU")
    p.add_argument("--repeats", type=int, default=2, help="timed batches per case")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", help="default: $OUT, else benchmarks/results")
    args = p.parse_args(argv)
    cuda = torch.cuda.is_available() and not args.smoke
    device = torch.device("cuda" if cuda else "cpu")
    plan = GPU_PLAN if cuda else SMOKE_PLAN
    arch = load_architecture(plan.model)
    path = out_dir(args.out_dir) / f"{gpu_slug(device)}-quant{'-smoke' if args.smoke else ''}.json"
    record = {
        "benchmark": "quant_decode",
        "plan": {**asdict(plan), "schemes": [q.label() for q in plan.schemes]},
        "targets_int4_bs1_tok_s": TARGET_TOK_S,
        "anchor": ANCHOR,
        "machine": describe_machine(device),
        "bandwidth": copy_bandwidth(device, 4.0 if cuda else 0.25),
        "results": [],
    }
    source = {"kind": "nvml", "device_index": torch.cuda.current_device()} if cuda else None
    monitor = Monitor(source, interval_s=0.1 if cuda else None)
    try:
        for q in plan.schemes:
            engine, t0, graphs = None, time.monotonic(), cuda
            try:
                engine = TorchEngine(arch, plan.dtype, device, args.seed, quantization=q)
                build_s = time.monotonic() - t0
                allocated = torch.cuda.memory_allocated(device) if cuda else None
                for batch in plan.batches:
                    try:
                        r = measure_case(
                            engine, plan, q, batch, args.repeats, monitor, record["bandwidth"],
                            args.seed,
                        )  # fmt: skip
                    except Exception as exc:  # noqa: BLE001 - recorded, the next case runs
                        traceback.print_exc()
                        r = {"case": f"{q.label()}-bs{batch}", "scheme": q.scheme, "batch": batch,
                             "error": error_text(exc)}  # fmt: skip
                        if graphs:  # once per scheme: the same case without CUDA graphs
                            engine.release()
                            graphs = False
                            engine = TorchEngine(
                                arch, plan.dtype, device, args.seed, quantization=q,
                                cuda_graphs=False,
                            )  # fmt: skip
                            record["results"].append(r)
                            r = measure_case(
                                engine, plan, q, batch, args.repeats, monitor,
                                record["bandwidth"], args.seed,
                            )  # fmt: skip
                    r.update(engine_build_s=build_s, allocated_after_build_bytes=allocated,
                             cuda_graphs=graphs)  # fmt: skip
                    record["results"].append(r)
                    log(f"{r['case']}: " + (r.get("error") or
                        f"{r['decode_tok_per_s']:.1f} tok/s, {r['j_per_token']:.4f} J/token"))  # fmt: skip
                    record["verdicts"] = verdicts(record["results"], plan)
                    write_json(path, record)
            except Exception as exc:  # noqa: BLE001 - a scheme that cannot build is recorded
                traceback.print_exc()
                record["results"].append({"case": q.label(), "scheme": q.scheme, "error": error_text(exc)})
                write_json(path, record)
            finally:
                if engine is not None:
                    engine.release()
                del engine
                free_device_memory(device)
    finally:
        monitor.close()
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

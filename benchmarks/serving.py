"""Serving benchmark on one GPU: tokencarbon's continuous-batching engine (TorchServingEngine) beside
its static engine and transformers' continuous batching, on one seeded request set with ShareGPT-like
lengths; output tokens/s and J/token (NVML energy counter) over each whole run and its steady part,
every ratio, and a kernel profile of the decode step; docs/architecture.md records what it measured.

    python benchmarks/serving.py                  # the full record (one H200: about 8 minutes)
    python benchmarks/serving.py --quick          # a few hundred requests, with the profile
    python benchmarks/serving.py --smoke          # tiny models on the CPU: the code path only
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import math
import statistics
import sys
import tempfile
import time
import traceback
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from decode_roofline import (
    copy_bandwidth,
    describe_machine,
    device_name,
    error_text,
    free_device_memory,
    gpu_slug,
    log,
    out_dir,
)
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from tokencarbon.backends import Request, ServingResult
from tokencarbon.backends.serving import TorchServingEngine
from tokencarbon.backends.static import TorchEngine
from tokencarbon.energy import window_energy, windows_energy
from tokencarbon.files import write_json
from tokencarbon.models import load_architecture, weight_bytes
from tokencarbon.power.sidecar import PowerSidecar, read_samples
from tokencarbon.synthetic import synthetic_conversations
from tokencarbon.workload import extract_pairs

# Token bounds of config/paper.yaml's Llama family (workload.filter_pool keeps both sides within)
MIN_TOKENS, MAX_TOKENS = 4, 1000
MAX_MODEL_LEN = 2 * MAX_TOKENS + 48  # 2,048: the longest request fits; one pool, one graph
POWER_INTERVAL_S = 0.1  # NVML's energy counter moves about every 100 ms (shared/device/README.md)
PROFILE_TOP = 15
# issue 12: must reach / goal on one H200, Llama-3.1-8B bf16
TARGETS = {
    "cb64": {"must": {"tok_s": 6000.0, "j_per_tok": 0.10}, "goal": {"tok_s": 7500.0, "j_per_tok": 0.085}},
    "cb256": {"must": {"tok_s": 12000.0, "j_per_tok": 0.055}},
}  # fmt: skip
# ML.ENERGY leaderboard: vLLM 0.11.1, Llama-3.1-8B-Instruct bf16, one H100 SXM, chat prompts
# (as quoted in issue 12); the H200's memory bandwidth is 4.8 / 3.35 = 1.43x the H100's.
REFERENCE = {
    "source": "ML.ENERGY leaderboard, vLLM 0.11.1, Llama-3.1-8B bf16 on one H100 (issue 12)",
    "h100_bandwidth_tb_s": 3.35,
    "h200_bandwidth_tb_s": 4.8,
    "max_num_seqs": {"64": {"tok_s": 5147.0, "j_per_tok": 0.119}, "512": {"tok_s": 9806.0, "j_per_tok": 0.070}},
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    engine: str  # "continuous", "static" or "transformers"
    model: str
    concurrency: int  # max_num_seqs, or the static batch size
    n_requests: int  # the first n of the request set
    note: str = ""


def request_set(
    n: int, seed: int, vocab_size: int, max_tokens: int = MAX_TOKENS
) -> tuple[list[Request], dict]:
    """n offline requests (arrival 0) and a description. Lengths: the first exchange of
    tokencarbon's synthetic ShareGPT-like conversations (synthetic.synthetic_conversations, seeded),
    counted in words, which is their token count under the tokenizer trained on that text (one word
    one token); pairs with both sides within [MIN_TOKENS, MAX_TOKENS] kept; the first n of one
    seeded permutation (as workload.sample_workload). Token ids: seeded uniform in the vocabulary
    (dummy weights: what a token says does not change the work)."""
    pairs = extract_pairs(synthetic_conversations(int(n * 1.25) + 64, seed))
    if max_tokens < MAX_TOKENS:  # the smoke run's tiny models: lengths scaled down
        pairs["prompt"] = pairs["prompt"].str.split().str[: max_tokens].str.join(" ")
        pairs["answer"] = pairs["answer"].str.split().str[: max_tokens].str.join(" ")
    prompt_n = pairs["prompt"].str.split().str.len().to_numpy()
    output_n = pairs["answer"].str.split().str.len().to_numpy()
    keep = np.flatnonzero(
        (prompt_n >= MIN_TOKENS) & (prompt_n <= max_tokens)
        & (output_n >= MIN_TOKENS) & (output_n <= max_tokens)
    )  # fmt: skip
    rng = np.random.default_rng(seed)
    chosen = keep[rng.permutation(len(keep))[:n]]
    if len(chosen) < n:
        raise RuntimeError(f"only {len(chosen)} synthetic pairs within bounds; asked for {n}")
    requests = [
        Request(f"q{k}", tuple(rng.integers(0, vocab_size, prompt_n[i]).tolist()), int(output_n[i]))
        for k, i in enumerate(chosen)
    ]
    p, o = prompt_n[chosen], output_n[chosen]
    return requests, {
        "n": n,
        "seed": seed,
        "lengths": "tokencarbon.synthetic.synthetic_conversations first exchanges, words as tokens, "
        f"both sides within [{MIN_TOKENS}, {max_tokens}], first n of a seeded permutation",
        "prompt_tokens_mean": float(p.mean()),
        "output_tokens_mean": float(o.mean()),
        "prompt_tokens_max": int(p.max()),
        "output_tokens_max": int(o.max()),
        "output_tokens_total": int(o.sum()),
    }


def cases(
    quick: bool, smoke: bool, n_full: int, n_static: int, n_hf: int, n_llama2: int
) -> list[Case]:
    if smoke:
        return [
            Case("cb4", "continuous", "tiny-llama", 4, 24),
            Case("static4", "static", "tiny-llama", 4, 8),
            Case("bs1", "continuous", "tiny-llama", 1, 2, "decode rate at batch 1"),
        ]
    if quick:
        n_full, n_static, n_hf, n_llama2 = 256, 128, 0, 128
    # in order of priority: a run cut short keeps the first ones; transformers' engine last
    chosen = [
        Case("cb64", "continuous", "llama-3.1-8b", 64, n_full),
        Case("cb256", "continuous", "llama-3.1-8b", 256, max(n_full, 512)),
        Case("static64", "static", "llama-3.1-8b", 64, n_static),
        Case("static256", "static", "llama-3.1-8b", 256, n_static),
        Case("llama2-cb64", "continuous", "llama-2-7b", 64, n_llama2),
        Case("bs1", "continuous", "llama-3.1-8b", 1, 4, "decode rate at batch 1"),
        Case("llama2-bs1", "continuous", "llama-2-7b", 1, 4, "decode rate at batch 1"),
        Case("hf-cb64", "transformers", "llama-3.1-8b", 64, n_hf),
    ]
    return [c for c in chosen if c.n_requests > 0]


# ---------------------------------------------------------------- one case


def quantiles(values: list[float]) -> dict:
    if not values:
        return {}
    q = np.percentile(values, [50, 90, 99])
    return {"p50": float(q[0]), "p90": float(q[1]), "p99": float(q[2]), "mean": float(np.mean(values))}


def serving_stats(result: ServingResult, concurrency: int) -> dict:
    """Tokens, latencies, step times and the steady window of a served request set. Steady part:
    from the end of the first step after which every slot is taken to the end of the last prefill
    step (after it, no request joins: the tail drains)."""
    reqs, steps = result.requests, result.steps
    out_tokens = sum(r.output_tokens for r in reqs)
    ttft = [(r.first_token_ns - r.arrival_ns) / 1e9 for r in reqs]
    tpot = [
        (r.finish_ns - r.first_token_ns) / 1e9 / (r.output_tokens - 1)
        for r in reqs
        if r.output_tokens > 1
    ]
    decode_ms = [(s.end_ns - s.start_ns) / 1e6 for s in steps if s.kind == "decode"]
    prefill_ms = [(s.end_ns - s.start_ns) / 1e6 for s in steps if s.kind == "prefill"]
    finish = sorted(r.finish_ns for r in reqs)
    admitted, running, full_at = 0, [], None
    for s in steps:
        admitted += len(s.request_ids) if s.kind == "prefill" else 0
        running.append(admitted - int(np.searchsorted(finish, s.end_ns, side="right")))
        if full_at is None and running[-1] >= concurrency:
            full_at = s.step_index
    last_prefill = max(s.step_index for s in steps if s.kind == "prefill")
    stats = {
        "output_tokens": out_tokens,
        "input_tokens": sum(r.input_tokens for r in reqs),
        "n_steps": len(steps),
        "decode_steps": len(decode_ms),
        "prefill_steps": len(prefill_ms),
        "decode_step_ms": quantiles(decode_ms),
        "prefill_step_ms": quantiles(prefill_ms),
        "time_in_prefill_share": sum(prefill_ms) / ((result.end_ns - result.start_ns) / 1e6),
        "host_gap_share": 1 - (sum(decode_ms) + sum(prefill_ms)) / ((result.end_ns - result.start_ns) / 1e6),
        "mean_running": float(np.mean(running)),
        "ttft_s": quantiles(ttft),
        "tpot_s": quantiles(tpot),
        "steady": None,
    }  # fmt: skip
    if full_at is not None and last_prefill > full_at:
        a, b = steps[full_at], steps[last_prefill]
        window = [s for s in steps[full_at + 1 : last_prefill + 1]]
        tokens = sum(len(s.request_ids) for s in window)  # decode: 1 each; prefill: first tokens
        stats["steady"] = {
            "from_step": full_at + 1,
            "to_step": last_prefill,
            "start_wall_ns": a.end_wall_ns,
            "end_wall_ns": b.end_wall_ns,
            "seconds": (b.end_ns - a.end_ns) / 1e9,
            "output_tokens": tokens,
            "output_tok_per_s": tokens / ((b.end_ns - a.end_ns) / 1e9),
            "mean_running": float(np.mean(running[full_at + 1 : last_prefill + 1])),
        }
    return stats


def energy_of(samples, windows: list[tuple[int, int]]) -> dict:
    rec = windows_energy(samples, windows) if len(windows) > 1 else window_energy(samples, *windows[0])
    return {
        "energy_j": rec.energy_j,
        "method": rec.method,
        "energy_counter_j": rec.energy_counter_j,
        "energy_integrated_j": rec.energy_integrated_j,
        "relative_difference": rec.relative_difference,
        "qa_flags": list(rec.qa_flags),
        "window_s": rec.window_s,
        "n_samples": rec.n_samples,
    }


def build_engine(case: Case, device: torch.device, dtype: str, seed: int):
    arch = load_architecture(case.model)
    if case.engine == "continuous":
        max_len = min(MAX_MODEL_LEN, arch.max_positions)
        return TorchServingEngine(
            arch, dtype, device, seed, max_num_seqs=case.concurrency, max_model_len=max_len
        )
    if case.engine == "static":
        return TorchEngine(arch, dtype, device, seed)
    from tokencarbon.backends.transformers_backend import TransformersEngine

    return TransformersEngine(arch, dtype, device, seed, max_num_seqs=case.concurrency)


def run_case(case: Case, requests: list[Request], device, dtype, seed, power_dir: Path) -> dict:
    """Build, warm up (untimed), run under the power sidecar, and summarise one case."""
    record: dict = dataclasses.asdict(case)
    t0 = time.monotonic()
    engine = build_engine(case, device, dtype, seed)
    reqs = requests[: case.n_requests]
    if case.engine == "continuous":  # the pool, compiled layer and graph, and prefill kernels
        warm = reqs[: 2 * case.concurrency]
        engine.serve([dataclasses.replace(r, output_len=min(r.output_len, 8)) for r in warm])
    elif case.engine == "static":  # prefill kernels; each batch's graphs are captured untimed
        first = reqs[: case.concurrency]
        engine.run_batch([list(r.prompt) for r in first], [min(r.output_len, 8) for r in first])
    # transformers: its manager is created and warmed up (CUDA graphs) by serve() before its window
    record["setup_s"] = time.monotonic() - t0
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    power = power_dir / f"{case.name}.power.parquet"
    spec = {"kind": "nvml", "device_index": 0} if device.type == "cuda" else {"kind": "modeled_cpu", "tdp_w": 100.0}
    with PowerSidecar(spec, power, interval_s=POWER_INTERVAL_S):
        time.sleep(2 * POWER_INTERVAL_S)  # a counter reading before the window opens
        if case.engine == "static":
            batches = [reqs[i : i + case.concurrency] for i in range(0, len(reqs), case.concurrency)]
            results = [
                engine.run_batch([list(r.prompt) for r in b], [r.output_len for r in b])
                for b in batches
            ]
            windows = [(r.start_wall_ns, r.end_wall_ns) for r in results]
            seconds = sum(r.end_ns - r.start_ns for r in results) / 1e9
            record["stats"] = {
                "output_tokens": sum(r.output_tokens for r in results),
                "input_tokens": sum(r.input_tokens for r in results),
                "batches": len(results),
                "decode_slot_use": sum(r.output_tokens for r in results)
                / sum(r.n_requests * r.max_output_tokens for r in results),
            }
        else:
            result = engine.serve(reqs)
            windows = [(result.start_wall_ns, result.end_wall_ns)]
            seconds = (result.end_ns - result.start_ns) / 1e9
            if result.steps:
                record["stats"] = serving_stats(result, case.concurrency)
            else:
                record["stats"] = {"output_tokens": sum(r.output_tokens for r in result.requests),
                                   "input_tokens": sum(r.input_tokens for r in result.requests)}  # fmt: skip
            if hasattr(engine, "describe"):
                record["engine_description"] = engine.describe()
        time.sleep(2 * POWER_INTERVAL_S)  # and one after it closes
    samples = read_samples(power)
    stats = record["stats"]
    record["seconds"] = seconds
    record["output_tok_per_s"] = stats["output_tokens"] / seconds
    record["energy"] = energy_of(samples, windows)
    record["mean_power_w"] = record["energy"]["energy_j"] / record["energy"]["window_s"]
    record["j_per_output_token"] = record["energy"]["energy_j"] / stats["output_tokens"]
    steady = stats.get("steady")
    if steady and steady["seconds"] >= 5:
        e = energy_of(samples, [(steady["start_wall_ns"], steady["end_wall_ns"])])
        steady["energy"] = e
        steady["j_per_output_token"] = e["energy_j"] / steady["output_tokens"]
        steady["mean_power_w"] = e["energy_j"] / e["window_s"]
    if case.n_requests <= 8 and "decode_step_ms" in stats:  # batch-1 decode rate
        record["decode_tok_per_s"] = case.concurrency * 1e3 / stats["decode_step_ms"]["p50"]
    record["peak_memory_bytes"] = engine.peak_memory_bytes()
    return record, engine


# ---------------------------------------------------------------- kernel profile


def _kernels(prof) -> dict[str, list]:
    totals: dict[str, list] = defaultdict(lambda: [0, 0.0])
    for e in prof.events():
        if e.device_type == DeviceType.CUDA:
            totals[e.name][0] += 1
            totals[e.name][1] += e.time_range.elapsed_us()
    return totals


def profile_decode(engine: TorchServingEngine, prompt_len: int, seed: int, outs=(24, 88)) -> dict:
    """Kernels per decode step with every slot running: two request sets of max_num_seqs prompts of
    prompt_len tokens, whose outputs differ by outs[1] - outs[0] tokens, run under torch.profiler;
    their per-kernel totals subtract (the prefill steps, identical, cancel)."""
    rows_n = engine.max_num_seqs
    gen = torch.Generator().manual_seed(seed)
    prompts = torch.randint(0, engine.arch.vocab_size, (rows_n, prompt_len), generator=gen).tolist()
    totals, step_ms = [], []
    for n_out in outs:
        reqs = [Request(f"p{i}", tuple(p), n_out) for i, p in enumerate(prompts)]
        engine.serve(reqs)  # the same shapes once unprofiled
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            result = engine.serve(reqs)
        totals.append(_kernels(prof))
        step_ms.append([(s.end_ns - s.start_ns) / 1e6 for s in result.steps if s.kind == "decode"])
    steps = outs[1] - outs[0]
    short, long = totals
    rows = []
    for name, (calls, us) in long.items():
        c0, us0 = short.get(name, (0, 0.0))
        if calls > c0:
            rows.append({"name": name[:160], "calls_per_step": (calls - c0) / steps, "us_per_step": (us - us0) / steps})
    rows.sort(key=lambda r: -r["us_per_step"])
    busy = sum(r["us_per_step"] for r in rows)
    for r in rows:
        r["share"] = r["us_per_step"] / busy if busy else None
    groups = defaultdict(float)
    for r in rows:
        n = r["name"].lower()
        kind = ("attention (flex decoding template)" if "triton_tem" in n or "flex" in n
                else "matmul (cuBLAS/CUTLASS)" if any(k in n for k in ("gemm", "gemv", "sm90", "cutlass", "xmma", "nvjet"))
                else "fused element-wise (Triton)" if "triton" in n
                else "other")  # fmt: skip
        groups[kind] += r["us_per_step"]
    unprofiled = statistics.median(step_ms[1][-steps:]) if step_ms[1] else None
    return {
        "max_num_seqs": rows_n,
        "prompt_len": prompt_len,
        "profiled_steps": steps,
        "decode_step_ms_unprofiled_p50": unprofiled,
        "busy_us_per_step": busy,
        "n_kernels_per_step": sum(r["calls_per_step"] for r in rows),
        "by_kind_us_per_step": dict(groups),
        "top": rows[:PROFILE_TOP],
    }


# ---------------------------------------------------------------- driver


def ratios(results: dict[str, dict]) -> dict:
    def r(a, b, key):
        if a in results and b in results and key in results[a] and key in results[b]:
            return results[a][key] / results[b][key]
        return None

    out = {}
    for a, b in [("cb64", "static64"), ("cb256", "static256"), ("cb64", "hf-cb64"), ("cb256", "cb64")]:
        out[f"{a}/{b}"] = {
            "output_tok_per_s": r(a, b, "output_tok_per_s"),
            "j_per_output_token": r(a, b, "j_per_output_token"),
        }
    scale = REFERENCE["h200_bandwidth_tb_s"] / REFERENCE["h100_bandwidth_tb_s"]
    ref64 = REFERENCE["max_num_seqs"]["64"]
    if "cb64" in results:
        c = results["cb64"]
        out["cb64/vllm_h100_64"] = {"output_tok_per_s": c["output_tok_per_s"] / ref64["tok_s"],
                                    "j_per_output_token": c["j_per_output_token"] / ref64["j_per_tok"],
                                    "output_tok_per_s_vs_bandwidth_scaled": c["output_tok_per_s"] / (ref64["tok_s"] * scale)}  # fmt: skip
    return out


def verdicts(results: dict[str, dict]) -> dict:
    out = {}
    for name, levels in TARGETS.items():
        if name not in results or "output_tok_per_s" not in results[name]:
            continue
        c = results[name]
        out[name] = {}
        for level, t in levels.items():
            out[name][level] = {
                "tok_s_target": t["tok_s"],
                "tok_s": c["output_tok_per_s"],
                "tok_s_met": c["output_tok_per_s"] >= t["tok_s"],
                "j_per_tok_target": t["j_per_tok"],
                "j_per_tok": c["j_per_output_token"],
                "j_per_tok_met": c["j_per_output_token"] <= t["j_per_tok"],
            }
    return out


def line(r: dict) -> str:
    if "error" in r:
        return f"{r['name']:<12} ERROR {r['error'][:100]}"
    s = r["stats"]
    steady = s.get("steady") or {}
    extra = ""
    if "decode_step_ms" in s and s["decode_step_ms"]:
        extra = f" dec {s['decode_step_ms']['p50']:.2f} ms, prefill {s['time_in_prefill_share']:.0%} of time"
    if steady.get("j_per_output_token"):
        extra += f"; steady {steady['output_tok_per_s']:,.0f} tok/s {steady['j_per_output_token']:.4f} J/tok"
    return (f"{r['name']:<12} {r['n_requests']:>5} req {r['seconds']:7.1f} s {r['output_tok_per_s']:9,.0f} tok/s "
            f"{r['j_per_output_token']:.4f} J/tok {r['mean_power_w']:5.0f} W{extra}")  # fmt: skip


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="256 requests per engine, no transformers")
    p.add_argument("--smoke", action="store_true", help="tiny models on the CPU: the code path only")
    p.add_argument("--cases", nargs="+", help="case names (default: all)")
    p.add_argument("--requests", type=int, default=2048, help="request set size (continuous)")
    p.add_argument("--static-requests", type=int, default=256, help="the first n, static engine")
    p.add_argument("--transformers-requests", type=int, default=128, help="the first n, transformers")
    p.add_argument("--llama2-requests", type=int, default=512, help="the first n, Llama-2-7B")
    p.add_argument("--profile", action="store_true", help="kernel profile of the cb64 decode step")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="record path (default: $OUT or benchmarks/results, h200-serving.json)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device("cpu" if args.smoke else "cuda")
    dtype = "float32" if args.smoke else "bfloat16"
    todo = cases(
        args.quick, args.smoke, args.requests, args.static_requests,
        args.transformers_requests, args.llama2_requests,
    )  # fmt: skip
    if args.cases:
        todo = [c for c in todo if c.name in args.cases]
    suffix = "-smoke" if args.smoke else "-quick" if args.quick else ""
    path = Path(args.out) if args.out else out_dir(None) / f"{gpu_slug(device)}-serving{suffix}.json"
    power_dir = Path(tempfile.mkdtemp(prefix="tokencarbon-serving-power-"))  # raw samples stay here
    n_max = max(c.n_requests for c in todo)
    sets = {}
    record = {
        "benchmark": "serving",
        "command": " ".join(["python", "benchmarks/serving.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": describe_machine(device),
        "dtype": dtype,
        "max_model_len": MAX_MODEL_LEN,
        "power": f"tokencarbon.power.sidecar.PowerSidecar nvml every {POWER_INTERVAL_S} s; energy from "
        "tokencarbon.energy (NVML total-energy counter where plausible) over each timed window",
        "copy_bandwidth": copy_bandwidth(device, 0.25 if args.smoke else 4.0),
        "reference": REFERENCE,
        "cases": [],
    }  # fmt: skip
    log(f"serving benchmark on {device_name(device)}: {[c.name for c in todo]} -> {path}")
    results: dict[str, dict] = {}
    for case in todo:
        vocab = load_architecture(case.model).vocab_size
        if vocab not in sets:
            max_tokens = 24 if args.smoke else MAX_TOKENS
            sets[vocab], record[f"request_set_vocab_{vocab}"] = request_set(
                n_max, args.seed, vocab, max_tokens
            )
        reqs = sets[vocab]
        if "bs1" in case.name:  # batch-1 decode: 4 requests of 128 prompt and 256 output tokens
            reqs = [dataclasses.replace(r, prompt=r.prompt[:128] + (1,) * (128 - len(r.prompt[:128])), output_len=256) for r in reqs[:4]]  # fmt: skip
        engine = None
        try:
            result, engine = run_case(case, reqs, device, dtype, args.seed, power_dir)
            w = weight_bytes(load_architecture(case.model), dtype)
            result["weight_bytes"] = w
            if "decode_step_ms" in result.get("stats", {}) and result["stats"]["decode_step_ms"]:
                p50 = result["stats"]["decode_step_ms"]["p50"] / 1e3
                # copy bandwidth counts bytes read + written: the rate the memory moves bytes at
                bw = record["copy_bandwidth"]["bytes_per_s"]
                result["weight_read_floor_ms"] = w / bw * 1e3
                result["weight_read_share_of_decode_step"] = w / bw / p50
            if args.profile and case.name == "cb64":
                result["profile"] = profile_decode(engine, 160, args.seed)
        except Exception as exc:  # one failing case must not lose the others
            traceback.print_exc()
            result = {**dataclasses.asdict(case), "error": error_text(exc)}
        del engine
        if case.engine == "continuous":
            torch._dynamo.reset()
        gc.collect()
        free_device_memory(device)
        results[case.name] = result
        record["cases"].append(result)
        record["ratios"] = ratios(results)
        record["targets"] = verdicts(results)
        write_json(path, record)  # after every case: a run cut short keeps what it did
        log(line(result))
    print(f"\nserving on {record['machine']['device_name']} ({dtype}); record {path}")
    for r in record["cases"]:
        print(line(r))
    for name, v in record["targets"].items():
        print(name, {k: (x["tok_s_met"], x["j_per_tok_met"]) for k, x in v.items()})
    prof = results.get("cb64", {}).get("profile")
    if prof:
        print(f"\nprofile cb64: {prof['busy_us_per_step']:.0f} us kernels per {prof['decode_step_ms_unprofiled_p50']:.2f} ms step; {prof['by_kind_us_per_step']}")  # fmt: skip
        for r in prof["top"][:10]:
            print(f"{r['us_per_step']:9.1f} {r['calls_per_step']:6.1f}  {r['name'][:100]}")
    return 1 if any("error" in r for r in record["cases"]) else 0


if __name__ == "__main__":
    sys.exit(main())

"""Serving benchmark on one GPU: tokencarbon's continuous-batching engine (TorchServingEngine, paged
KV cache, and its slot engine to compare) beside its static engine and transformers' continuous
batching, on seeded request sets: ShareGPT-like first exchanges ("synthetic") or ML.ENERGY-like
chat ("mlenergy": output lengths drawn from ML.ENERGY's published lm-arena-chat histogram, prompts
carrying multi-turn history). Output tokens/s, J/token (NVML energy counter) and inter-token
latency over each whole run and over ML.ENERGY's steady window, beside ML.ENERGY's vLLM numbers at
the same max_num_seqs; every ratio; a kernel profile of the decode step. docs/architecture.md
records what it measured; benchmarks/plot_serving.py draws the comparison.

    python benchmarks/serving.py --cases cb64 cb256 cb512 slots-cb64      # issue 22's targets
    python benchmarks/serving.py --cases mle-cb64 mle-cb256 mle-cb512     # beside ML.ENERGY
    python benchmarks/serving.py --smoke          # tiny models on the CPU: the code path only

The mlenergy set reads ../shared/data/mlenergy/ (--mlenergy-dir): on a machine without it, copy
the two CSV files into an ignored folder that travels with the working tree and name it there.
"""

from __future__ import annotations

import argparse
import csv
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
from tokencarbon.errors import InputError
from tokencarbon.synthetic import synthetic_conversations
from tokencarbon.workload import extract_pairs

# Token bounds of config/paper.yaml's Llama family (workload.filter_pool keeps both sides within)
MIN_TOKENS, MAX_TOKENS = 4, 1000
MAX_MODEL_LEN = 2 * MAX_TOKENS + 48  # 2,048: the longest request fits; one pool, one graph
POWER_INTERVAL_S = 0.1  # NVML's energy counter moves about every 100 ms (shared/device/README.md)
PROFILE_TOP = 15
# issue 22: must reach / goal on one H100 80GB, Llama-3.1-8B bf16, the synthetic 2,048-request set
# (issue 12's H200 targets for the slot engine are in benchmarks/results/h200-serving.json)
TARGETS = {
    "cb64": {"must": {"tok_s": 7500.0, "j_per_tok": 0.075}},
    "cb256": {"must": {"tok_s": 13000.0, "j_per_tok": 0.050}},
    "cb512": {"must": {"tok_s": 15000.0, "j_per_tok": 0.048}, "goal": {"tok_s": 18000.0, "j_per_tok": 0.048}},
}  # fmt: skip
TARGET_DEVICE = "H100"  # targets are judged only on this card (the record names its device)
# ML.ENERGY leaderboard v3 (vLLM 0.11.1, Llama-3.1-8B-Instruct bf16, task lm-arena-chat):
# ../shared/data/SOURCES.md says where the files come from.
REPO = Path(__file__).resolve().parents[1]
MLENERGY_DIR = REPO.parent / "shared" / "data" / "mlenergy"
MLENERGY_TASK = "llama-3.1-8b-instruct_lm-arena-chat"
MLENERGY_CONFIG_COLUMNS = (
    "gpu_model", "max_num_seqs", "avg_batch_size", "avg_output_len",
    "output_throughput_tokens_per_sec", "energy_per_token_joules", "avg_power_watts",
    "median_itl_ms", "p90_itl_ms", "p99_itl_ms",
)  # fmt: skip
# ML.ENERGY's steady state: from the moment max_num_seqs requests have their first token until
# n - max_num_seqs - 1 have finished; a run with less than 20 s of it, or a mean batch below 85 %
# of max_num_seqs, is dropped from their leaderboard (SOURCES.md). We flag, and keep, such runs.
STEADY_MIN_S = 20.0
STEADY_MIN_BATCH_SHARE = 0.85
# The mlenergy set: a prompt keeps at most its last 4,096 tokens of history (outputs reach 4,096 in
# the histogram), so a request holds at most 8,192 tokens.
MLE_MAX_PROMPT = 4096
MLE_MAX_MODEL_LEN = 8192


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    engine: str  # "continuous", "static" or "transformers"
    model: str
    concurrency: int  # max_num_seqs, or the static batch size
    n_requests: int  # the first n of the request set
    note: str = ""
    kv_layout: str = "paged"  # continuous: "paged" or "slots"
    request_set: str = "synthetic"  # or "mlenergy"


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
        pairs["prompt"] = pairs["prompt"].str.split().str[:max_tokens].str.join(" ")
        pairs["answer"] = pairs["answer"].str.split().str[:max_tokens].str.join(" ")
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


def read_output_histogram(directory: Path) -> list[tuple[float, float, int]]:
    """(bin_low_tokens, bin_high_tokens, count) rows of ML.ENERGY's lm-arena-chat output-length
    histogram, <directory>/<MLENERGY_TASK>_output_lengths.csv. InputError naming the file when it
    is missing, lacks a column, or has a bin that is empty, negative or out of order."""
    path = Path(directory) / f"{MLENERGY_TASK}_output_lengths.csv"
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except OSError as exc:
        raise InputError(f"{path}: cannot read ML.ENERGY's output-length histogram ({exc}); "
                         "pass --mlenergy-dir") from exc  # fmt: skip
    need = ("bin_low_tokens", "bin_high_tokens", "count")
    if not rows or any(c not in rows[0] for c in need):
        raise InputError(
            f"{path}: expected columns {list(need)}, found {list(rows[0]) if rows else []}"
        )
    bins, previous = [], 0.0
    for i, row in enumerate(rows):
        low, high, count = (
            float(row["bin_low_tokens"]),
            float(row["bin_high_tokens"]),
            int(row["count"]),
        )
        if not (previous <= low < high) or count < 0:
            raise InputError(f"{path}: row {i + 2}: bin [{low}, {high}) with count {count}; bins "
                             "must be non-empty, in order, with counts >= 0")  # fmt: skip
        bins.append((low, high, count))
        previous = high
    return bins


def sample_output_lengths(bins: list[tuple[float, float, int]], n: int, rng) -> np.ndarray:
    """n output lengths (tokens) following the histogram: a bin drawn with probability count /
    total, then a length uniform over the integers in it, [ceil(low), ceil(high)); the last bin
    gives its top, rounded (ML.ENERGY's outputs are capped at 4,096 tokens and that bin holds the
    capped responses: SOURCES.md). Integers: ceil of bin edges; a bin holding none gives its
    ceil(low)."""
    counts = np.array([c for _, _, c in bins], dtype=float)
    chosen = rng.choice(len(bins), size=n, p=counts / counts.sum())
    out = np.empty(n, dtype=np.int64)
    for k, b in enumerate(chosen):
        low, high, _ = bins[b]
        if b == len(bins) - 1:
            out[k] = round(high)
            continue
        lo, hi = math.ceil(low), max(math.ceil(high), math.ceil(low) + 1)
        out[k] = rng.integers(lo, hi)
    return out


def history_prompt_lengths(n: int, seed: int, max_prompt: int = MLE_MAX_PROMPT) -> np.ndarray:
    """n prompt lengths (tokens) that carry multi-turn history, from tokencarbon's synthetic
    ShareGPT-like conversations (seeded; words are tokens): each conversation is cut at one of its
    human turns, drawn uniformly, and the prompt is that turn with every turn before it (human and
    model), as a chat prompt carries its history; the oldest tokens are dropped past max_prompt.
    A conversation's first turn gives a first-exchange prompt, as the synthetic set's."""
    rng = np.random.default_rng(seed)
    out = []
    for conv in synthetic_conversations(n, seed):
        turns = [len(t["value"].split()) for t in conv["conversations"]]
        humans = [i for i, t in enumerate(conv["conversations"]) if t["from"] == "human"]
        cut = humans[int(rng.integers(len(humans)))]
        out.append(max(1, min(max_prompt, sum(turns[: cut + 1]))))
    return np.array(out, dtype=np.int64)


def mlenergy_request_set(
    n: int, seed: int, vocab_size: int, directory: Path, max_tokens: int | None = None
) -> tuple[list[Request], dict]:
    """n offline requests like ML.ENERGY's lm-arena-chat runs: output lengths from their
    histogram (sample_output_lengths), prompts carrying multi-turn history
    (history_prompt_lengths); token ids seeded uniform in the vocabulary. max_tokens (the smoke
    run's tiny models): both sides clipped to it."""
    rng = np.random.default_rng(seed + 1)
    o = sample_output_lengths(read_output_histogram(directory), n, rng)
    p = history_prompt_lengths(n, seed)
    if max_tokens is not None:
        o, p = np.minimum(o, max_tokens), np.minimum(p, max_tokens)
    requests = [
        Request(f"m{k}", tuple(rng.integers(0, vocab_size, int(p[k])).tolist()), int(o[k]))
        for k in range(n)
    ]
    return requests, {
        "n": n,
        "seed": seed,
        "lengths": f"outputs: ML.ENERGY {MLENERGY_TASK} histogram (bin by count, uniform integer "
        "within it, the last bin its cap); prompts: synthetic conversations cut at a uniformly "
        f"drawn human turn with all earlier turns, at most the last {MLE_MAX_PROMPT} tokens",
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
            Case("slots-cb4", "continuous", "tiny-llama", 4, 24, kv_layout="slots"),
            Case("mle-cb4", "continuous", "tiny-llama", 4, 24, request_set="mlenergy"),
            Case("static4", "static", "tiny-llama", 4, 8),
            Case("bs1", "continuous", "tiny-llama", 1, 2, "decode rate at batch 1"),
        ]
    if quick:
        n_full, n_static, n_hf, n_llama2 = 256, 128, 0, 128
    # in order of priority: a run cut short keeps the first ones; transformers' engine last
    chosen = [
        Case("cb64", "continuous", "llama-3.1-8b", 64, n_full),
        Case("cb256", "continuous", "llama-3.1-8b", 256, max(n_full, 512)),
        Case("cb512", "continuous", "llama-3.1-8b", 512, max(n_full, 1024)),
        Case("slots-cb64", "continuous", "llama-3.1-8b", 64, n_full, kv_layout="slots"),
        Case("mle-cb64", "continuous", "llama-3.1-8b", 64, n_full, request_set="mlenergy"),
        Case("mle-cb256", "continuous", "llama-3.1-8b", 256, max(n_full, 512), request_set="mlenergy"),
        Case("mle-cb512", "continuous", "llama-3.1-8b", 512, max(n_full, 1024), request_set="mlenergy"),
        Case("slots-cb256", "continuous", "llama-3.1-8b", 256, max(n_full, 512), kv_layout="slots"),
        Case("static64", "static", "llama-3.1-8b", 64, n_static),
        Case("static256", "static", "llama-3.1-8b", 256, n_static),
        Case("llama2-cb64", "continuous", "llama-2-7b", 64, n_llama2),
        Case("bs1", "continuous", "llama-3.1-8b", 1, 4, "decode rate at batch 1"),
        Case("llama2-bs1", "continuous", "llama-2-7b", 1, 4, "decode rate at batch 1"),
        Case("hf-cb64", "transformers", "llama-3.1-8b", 64, n_hf),
    ]  # fmt: skip
    return [c for c in chosen if c.n_requests > 0]


# ---------------------------------------------------------------- one case


def quantiles(values: list[float]) -> dict:
    if not values:
        return {}
    q = np.percentile(values, [50, 90, 99])
    return {
        "p50": float(q[0]),
        "p90": float(q[1]),
        "p99": float(q[2]),
        "mean": float(np.mean(values)),
    }


def new_tokens_of(step) -> tuple[int, ...]:
    """Output tokens a step made per request: its new_tokens, or (engines that leave them None)
    one per request it carried."""
    return step.new_tokens if step.new_tokens is not None else (1,) * len(step.request_ids)


def token_times(result: ServingResult) -> dict[str, list[int]]:
    """Per request, the monotonic ns at which each of its output tokens existed (the end of the step
    that made it), in order."""
    times: dict[str, list[int]] = defaultdict(list)
    for s in result.steps:
        for rid, new in zip(s.request_ids, new_tokens_of(s)):
            if new:
                times[rid].append(s.end_ns)
    return times


def steady_window(result: ServingResult, max_num_seqs: int) -> dict | None:
    """ML.ENERGY's steady state of a served request set: from the moment max_num_seqs requests have
    their first token (the max_num_seqs-th first token) until n - max_num_seqs - 1 requests have
    finished (the (n - max_num_seqs - 1)-th finish); None when that is empty (n <= 2 max_num_seqs
    + 1 can leave it so). Inside it: output tokens of the steps that end in (start, end] (steps end
    where tokens exist, and both bounds are step ends), their rate, the mean batch (requests with
    tokens in each step, weighted by the step's duration) and its share of max_num_seqs, ITL
    (between consecutive tokens of a request, both inside) and ML.ENERGY's two drop flags."""
    reqs, steps = result.requests, result.steps
    n = len(reqs)
    done_at = n - max_num_seqs - 1
    if max_num_seqs > n or done_at < 1:
        return None
    start = sorted(r.first_token_ns for r in reqs)[max_num_seqs - 1]
    end = sorted(r.finish_ns for r in reqs)[done_at - 1]
    if end <= start:
        return None
    inside = [s for s in steps if start < s.end_ns <= end]
    wall = {s.end_ns: s.end_wall_ns for s in steps}
    tokens = sum(sum(new_tokens_of(s)) for s in inside)
    seconds = (end - start) / 1e9
    busy = sum(s.end_ns - s.start_ns for s in inside)
    batch = (
        sum(len(s.request_ids) * (s.end_ns - s.start_ns) for s in inside) / busy if busy else 0.0
    )
    itl = [
        (b - a) / 1e6
        for times in token_times(result).values()
        for a, b in zip(times, times[1:])
        if start <= a and b <= end
    ]
    flags = []
    if seconds < STEADY_MIN_S:
        flags.append(f"steady state {seconds:.1f} s < {STEADY_MIN_S:.0f} s")
    if batch < STEADY_MIN_BATCH_SHARE * max_num_seqs:
        flags.append(f"mean batch {batch:.1f} < {STEADY_MIN_BATCH_SHARE:.0%} of {max_num_seqs}")
    return {
        "rule": "ML.ENERGY: from max_num_seqs first tokens until n - max_num_seqs - 1 finished",
        "start_ns": start,
        "end_ns": end,
        "start_wall_ns": wall[start],
        "end_wall_ns": wall[end],
        "seconds": seconds,
        "output_tokens": tokens,
        "output_tok_per_s": tokens / seconds,
        "mean_batch": batch,
        "mean_batch_share": batch / max_num_seqs,
        "itl_ms": quantiles(itl),
        "flags": flags,
    }


def serving_stats(result: ServingResult, concurrency: int) -> dict:
    """Tokens, latencies (TTFT, TPOT, ITL), step times by kind, preemptions and ML.ENERGY's steady
    window (steady_window) of a served request set."""
    reqs, steps = result.requests, result.steps
    window_ms = (result.end_ns - result.start_ns) / 1e6
    ttft = [(r.first_token_ns - r.arrival_ns) / 1e9 for r in reqs]
    tpot = [
        (r.finish_ns - r.first_token_ns) / 1e9 / (r.output_tokens - 1)
        for r in reqs
        if r.output_tokens > 1
    ]
    itl = [(b - a) / 1e6 for t in token_times(result).values() for a, b in zip(t, t[1:])]
    ms = defaultdict(list)
    for s in steps:
        ms[s.kind].append((s.end_ns - s.start_ns) / 1e6)
    busy = sum(sum(v) for v in ms.values())
    preempted = [r.preemptions for r in reqs if r.preemptions]
    return {
        "output_tokens": sum(r.output_tokens for r in reqs),
        "input_tokens": sum(r.input_tokens for r in reqs),
        "n_steps": len(steps),
        **{f"{kind}_steps": len(v) for kind, v in ms.items()},
        **{f"{kind}_step_ms": quantiles(v) for kind, v in ms.items()},
        **{f"time_in_{kind}_share": sum(v) / window_ms for kind, v in ms.items()},
        "gap_share": 1 - busy / window_ms,  # no step on the device: the host was late
        "mean_batch": sum(len(s.request_ids) * (s.end_ns - s.start_ns) / 1e6 for s in steps) / busy,
        "ttft_s": quantiles(ttft),
        "tpot_s": quantiles(tpot),
        "itl_ms": quantiles(itl),
        "preemptions": sum(preempted),
        "requests_preempted": len(preempted),
        "steady": steady_window(result, concurrency),
    }


def energy_of(samples, windows: list[tuple[int, int]]) -> dict:
    rec = (
        windows_energy(samples, windows)
        if len(windows) > 1
        else window_energy(samples, *windows[0])
    )
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


def build_engine(case: Case, device: torch.device, dtype: str, seed: int, options: dict):
    """The case's engine; options: the paged engine's settings from the command line."""
    arch = load_architecture(case.model)
    if case.engine == "continuous":
        longest = MLE_MAX_MODEL_LEN if case.request_set == "mlenergy" else MAX_MODEL_LEN
        max_len = min(longest, arch.max_positions)
        paged = options if case.kv_layout == "paged" else {}
        return TorchServingEngine(
            arch, dtype, device, seed, max_num_seqs=case.concurrency, max_model_len=max_len,
            kv_layout=case.kv_layout, **paged,
        )  # fmt: skip
    if case.engine == "static":
        return TorchEngine(arch, dtype, device, seed)
    from tokencarbon.backends.transformers_backend import TransformersEngine

    return TransformersEngine(arch, dtype, device, seed, max_num_seqs=case.concurrency)


def run_case(
    case: Case, requests: list[Request], device, dtype, seed, power_dir: Path, options: dict
) -> dict:
    """Build, warm up (untimed), run under the power sidecar, and summarise one case."""
    record: dict = dataclasses.asdict(case)
    t0 = time.monotonic()
    engine = build_engine(case, device, dtype, seed, options)
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
    spec = (
        {"kind": "nvml", "device_index": 0}
        if device.type == "cuda"
        else {"kind": "modeled_cpu", "tdp_w": 100.0}
    )
    with PowerSidecar(spec, power, interval_s=POWER_INTERVAL_S):
        time.sleep(2 * POWER_INTERVAL_S)  # a counter reading before the window opens
        if case.engine == "static":
            batches = [
                reqs[i : i + case.concurrency] for i in range(0, len(reqs), case.concurrency)
            ]
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
    if steady and steady["seconds"] >= 2 * POWER_INTERVAL_S:
        e = energy_of(samples, [(steady["start_wall_ns"], steady["end_wall_ns"])])
        steady["energy"] = e
        steady["j_per_output_token"] = e["energy_j"] / steady["output_tokens"]
        steady["mean_power_w"] = e["energy_j"] / e["window_s"]
    if case.n_requests <= 8 and stats.get("decode_step_ms"):  # batch-1 decode rate
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
            rows.append(
                {
                    "name": name[:160],
                    "calls_per_step": (calls - c0) / steps,
                    "us_per_step": (us - us0) / steps,
                }
            )
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


def read_mlenergy_configs(directory: Path) -> list[dict] | None:
    """ML.ENERGY's rows (one per GPU and max_num_seqs) from <directory>/<MLENERGY_TASK>_configs.csv,
    numbers as floats and max_num_seqs as int; None when the file is absent (a GPU machine the
    shared data did not travel to). InputError naming the file for a missing column."""
    path = Path(directory) / f"{MLENERGY_TASK}_configs.csv"
    if not path.exists():
        return None
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    missing = [c for c in MLENERGY_CONFIG_COLUMNS if not rows or c not in rows[0]]
    if missing:
        raise InputError(
            f"{path}: missing column(s) {missing}; expected {list(MLENERGY_CONFIG_COLUMNS)}"
        )
    return [
        {c: (r[c] if c == "gpu_model" else int(r[c]) if c == "max_num_seqs" else float(r[c]))
         for c in MLENERGY_CONFIG_COLUMNS}
        for r in rows
    ]  # fmt: skip


def ratios(results: dict[str, dict], reference: list[dict] | None) -> dict:
    """Ours over ours (paged over slots, continuous over static and transformers) and ours over
    vLLM's (ML.ENERGY, H100 and B200, the same max_num_seqs): tok/s and J/token, whole run and
    steady window."""

    def r(a, b, key):
        if a in results and b in results and key in results[a] and key in results[b]:
            return results[a][key] / results[b][key]
        return None

    out = {}
    pairs = [("cb64", "slots-cb64"), ("cb256", "slots-cb256"), ("cb64", "static64"),
             ("cb256", "static256"), ("cb64", "hf-cb64"), ("cb256", "cb64"), ("cb512", "cb256")]  # fmt: skip
    for a, b in pairs:
        if a in results and b in results:
            out[f"{a}/{b}"] = {
                "output_tok_per_s": r(a, b, "output_tok_per_s"),
                "j_per_output_token": r(a, b, "j_per_output_token"),
            }
    for name, c in results.items():
        if reference is None or c.get("engine") != "continuous" or "output_tok_per_s" not in c:
            continue
        steady = c["stats"].get("steady") or {}
        for row in reference:
            if row["max_num_seqs"] != c["concurrency"]:
                continue
            key = f"{name}/vllm_{row['gpu_model'].lower()}_{row['max_num_seqs']}"
            out[key] = {
                "output_tok_per_s": c["output_tok_per_s"] / row["output_throughput_tokens_per_sec"],
                "j_per_output_token": c["j_per_output_token"] / row["energy_per_token_joules"],
                "steady_output_tok_per_s": steady["output_tok_per_s"] / row["output_throughput_tokens_per_sec"]
                if steady else None,
                "steady_j_per_output_token": steady["j_per_output_token"] / row["energy_per_token_joules"]
                if steady.get("j_per_output_token") else None,
            }  # fmt: skip
    return out


def verdicts(results: dict[str, dict], device_name_: str) -> dict:
    """Issue 22's targets, whole-run window, on the card they were set for (TARGET_DEVICE)."""
    out = {}
    if TARGET_DEVICE not in device_name_:
        return {
            "note": f"targets are set for one {TARGET_DEVICE}; this record's device is {device_name_}"
        }
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
    if s.get("decode_step_ms"):
        extra = f" dec {s['decode_step_ms']['p50']:.2f} ms"
    if s.get("itl_ms"):
        extra += f", ITL p50 {s['itl_ms']['p50']:.1f} ms"
    if "preemptions" in s:
        extra += f", {s['preemptions']} preemptions"
    if steady.get("j_per_output_token"):
        extra += (f"; steady {steady['seconds']:.0f} s {steady['output_tok_per_s']:,.0f} tok/s "
                  f"{steady['j_per_output_token']:.4f} J/tok batch {steady['mean_batch']:.0f}"
                  + (f" FLAGS {steady['flags']}" if steady["flags"] else ""))  # fmt: skip
    return (f"{r['name']:<12} {r['n_requests']:>5} req {r['seconds']:7.1f} s {r['output_tok_per_s']:9,.0f} tok/s "
            f"{r['j_per_output_token']:.4f} J/tok {r['mean_power_w']:5.0f} W{extra}")  # fmt: skip


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="256 requests per engine, no transformers")
    p.add_argument(
        "--smoke", action="store_true", help="tiny models on the CPU: the code path only"
    )
    p.add_argument("--cases", nargs="+", help="case names (default: cb64 cb256 cb512 slots-cb64)")
    p.add_argument("--requests", type=int, default=2048, help="request set size (continuous)")
    p.add_argument("--static-requests", type=int, default=256, help="the first n, static engine")
    p.add_argument(
        "--transformers-requests", type=int, default=128, help="the first n, transformers"
    )
    p.add_argument("--llama2-requests", type=int, default=512, help="the first n, Llama-2-7B")
    p.add_argument("--profile", action="store_true", help="kernel profile of the cb64 decode step")
    p.add_argument("--mlenergy-dir", type=Path, default=MLENERGY_DIR,
                   help="folder of ML.ENERGY's lm-arena-chat CSV files")  # fmt: skip
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9, help="paged engine")
    p.add_argument("--block-size", type=int, default=64, help="paged engine: tokens per KV block")
    p.add_argument("--max-num-batched-tokens", type=int, default=2048, help="paged engine")
    p.add_argument("--no-mixed-steps", action="store_true", help="paged engine: prompt steps apart")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--out", help="record path (default: $OUT or benchmarks/results, <gpu>-serving.json)"
    )
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device("cpu" if args.smoke else "cuda")
    dtype = "float32" if args.smoke else "bfloat16"
    todo = cases(
        args.quick, args.smoke, args.requests, args.static_requests,
        args.transformers_requests, args.llama2_requests,
    )  # fmt: skip
    wanted = args.cases or (None if args.smoke else ["cb64", "cb256", "cb512", "slots-cb64"])
    if wanted:
        unknown = sorted(set(wanted) - {c.name for c in todo})
        if unknown:
            raise SystemExit(f"--cases: unknown {unknown}; valid: {[c.name for c in todo]}")
        todo = [c for c in todo if c.name in wanted]
    options = {
        "gpu_memory_utilization": args.gpu_memory_utilization,
        "block_size": args.block_size,
        "max_num_batched_tokens": args.max_num_batched_tokens,
        "mixed_steps": not args.no_mixed_steps,
    }
    suffix = "-smoke" if args.smoke else "-quick" if args.quick else ""
    path = (
        Path(args.out) if args.out else out_dir(None) / f"{gpu_slug(device)}-serving{suffix}.json"
    )
    power_dir = Path(tempfile.mkdtemp(prefix="tokencarbon-serving-power-"))  # raw samples stay here
    n_max = max(c.n_requests for c in todo)
    reference = read_mlenergy_configs(args.mlenergy_dir)
    sets = {}
    record = {
        "benchmark": "serving",
        "command": " ".join(["python", "benchmarks/serving.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": describe_machine(device),
        "dtype": dtype,
        "paged_options": options,
        "power": f"tokencarbon.power.sidecar.PowerSidecar nvml every {POWER_INTERVAL_S} s; energy from "
        "tokencarbon.energy (NVML total-energy counter where plausible) over each timed window",
        "copy_bandwidth": copy_bandwidth(device, 0.25 if args.smoke else 4.0),
        "reference": {"source": f"ML.ENERGY leaderboard v3, vLLM 0.11.1, {MLENERGY_TASK} "
                                "(../shared/data/SOURCES.md)", "rows": reference},  # fmt: skip
        "steady_rule": {"min_seconds": STEADY_MIN_S, "min_mean_batch_share": STEADY_MIN_BATCH_SHARE},
        "cases": [],
    }  # fmt: skip
    log(f"serving benchmark on {device_name(device)}: {[c.name for c in todo]} -> {path}")
    results: dict[str, dict] = {}
    for case in todo:
        vocab = load_architecture(case.model).vocab_size
        key = (case.request_set, vocab)
        if key not in sets:
            if case.request_set == "mlenergy":
                made = mlenergy_request_set(n_max, args.seed, vocab, args.mlenergy_dir,
                                            24 if args.smoke else None)  # fmt: skip
            else:
                made = request_set(n_max, args.seed, vocab, 24 if args.smoke else MAX_TOKENS)
            sets[key], record[f"request_set_{case.request_set}_vocab_{vocab}"] = made
        reqs = sets[key]
        if "bs1" in case.name:  # batch-1 decode: 4 requests of 128 prompt and 256 output tokens
            reqs = [dataclasses.replace(r, prompt=r.prompt[:128] + (1,) * (128 - len(r.prompt[:128])), output_len=256) for r in reqs[:4]]  # fmt: skip
        engine = None
        try:
            result, engine = run_case(case, reqs, device, dtype, args.seed, power_dir, options)
            w = weight_bytes(load_architecture(case.model), dtype)
            result["weight_bytes"] = w
            if result.get("stats", {}).get("decode_step_ms"):
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
        record["ratios"] = ratios(results, reference)
        record["targets"] = verdicts(results, record["machine"]["device_name"])
        write_json(path, record)  # after every case: a run cut short keeps what it did
        log(line(result))
    print(f"\nserving on {record['machine']['device_name']} ({dtype}); record {path}")
    for r in record["cases"]:
        print(line(r))
    for name, v in record["targets"].items():
        if isinstance(v, dict):
            print(name, {k: (x["tok_s_met"], x["j_per_tok_met"]) for k, x in v.items()})
    prof = results.get("cb64", {}).get("profile")
    if prof:
        print(f"\nprofile cb64: {prof['busy_us_per_step']:.0f} us kernels per {prof['decode_step_ms_unprofiled_p50']:.2f} ms step; {prof['by_kind_us_per_step']}")  # fmt: skip
        for r in prof["top"][:10]:
            print(f"{r['us_per_step']:9.1f} {r['calls_per_step']:6.1f}  {r['name'][:100]}")
    return 1 if any("error" in r for r in record["cases"]) else 0


if __name__ == "__main__":
    sys.exit(main())

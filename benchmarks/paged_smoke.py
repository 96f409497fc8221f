"""GPU smoke test of the paged engine (issue 22), well under a minute on one H100: on CUDA, tiny-llama
float32, the paged engine (compiled layer, CUDA graphs) gives the slot engine's tokens and its own
eager reference's, with a pool small enough to preempt and a token budget small enough to chunk
prompts; its graphs are captured once and replayed by a second serve; every block comes back.
Exits 1 on the first failed check, printing what differs; writes $OUT/paged-smoke.json (or
benchmarks/results) with what it saw.

    python benchmarks/paged_smoke.py          # the checks above
    python benchmarks/paged_smoke.py --big    # and Llama-3.1-8B bf16 at max_num_seqs 64, 256
                                              # requests of <= 64 output tokens (about 1 more min)
    python benchmarks/paged_smoke.py --cpu    # the same checks' code on the CPU (eager, no graphs)
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch
from decode_roofline import describe_machine, log, out_dir

from tokencarbon.backends import Request
from tokencarbon.backends.serving import TorchServingEngine
from tokencarbon.files import write_json
from tokencarbon.models import load_architecture

# 12 requests: prompts of 1..150 tokens, outputs of 1..40; in blocks of 16 the longest holds 11
SEED = 0


def tiny_requests(vocab: int) -> list[Request]:
    rng = np.random.default_rng(SEED)
    prompts = [7, 4, 1, 59, 2, 6, 30, 3, 150, 90, 17, 64]
    outputs = [6, 3, 5, 20, 1, 9, 12, 7, 40, 25, 33, 16]
    return [
        Request(f"r{i}", tuple(rng.integers(0, vocab, p).tolist()), o)
        for i, (p, o) in enumerate(zip(prompts, outputs))
    ]


def check(ok: bool, what: str, seen: dict) -> None:
    seen.setdefault("checks", []).append({"check": what, "ok": bool(ok)})
    log(("ok   " if ok else "FAIL ") + what)
    if not ok:
        raise SystemExit(1)


def tiny(seen: dict, device: str) -> None:
    arch = load_architecture("tiny-llama")
    reqs = tiny_requests(arch.vocab_size)
    t0 = time.monotonic()
    slots = TorchServingEngine(arch, "float32", device, SEED, max_num_seqs=4, kv_layout="slots")
    want = slots.serve(reqs).token_ids
    seen["slots_s"] = time.monotonic() - t0
    # 14 blocks of 16 for 4 rows: r8 alone holds 189 positions = 12 blocks, so its neighbours
    # run out and are preempted; 24 tokens a step: prompts of 30..150 go in chunks
    paged_kwargs = dict(max_num_seqs=4, block_size=16, num_blocks=14, max_num_batched_tokens=24)
    t0 = time.monotonic()
    paged = TorchServingEngine(arch, "float32", device, SEED, **paged_kwargs)
    seen["paged_build_s"] = time.monotonic() - t0
    t0 = time.monotonic()
    result = paged.serve(reqs)
    seen["paged_serve_s"] = time.monotonic() - t0
    graphs = {rows: b.graph for rows, b in paged.engine._buckets.items()}
    if device == "cuda":
        check(
            all(g is not None for g in graphs.values()),
            f"decode graphs captured {list(graphs)}",
            seen,
        )
    diff = {
        rid: next(i for i, (a, b) in enumerate(zip(result.token_ids[rid], want[rid])) if a != b)
        for rid in want
        if result.token_ids[rid] != want[rid]
    }
    check(not diff, f"paged tokens equal the slot engine's (first differing index: {diff})", seen)
    preempted = sum(r.preemptions for r in result.requests)
    kinds = sorted({s.kind for s in result.steps})
    seen |= {"preemptions": preempted, "step_kinds": kinds, "describe": paged.describe()}
    check(preempted > 0, f"the small pool preempted ({preempted} preemptions)", seen)
    check(
        kinds == ["decode", "mixed", "prefill"], f"decode, mixed and prefill steps ({kinds})", seen
    )
    chunked = any(
        t < n for s in result.steps for rid, t in zip(s.request_ids, s.request_tokens)
        for n in [len(reqs[int(rid[1:])].prompt)] if t > 1
    )  # fmt: skip
    check(chunked, "some prompt went in chunks", seen)
    free, total = paged.engine.allocator.num_free, paged.engine.allocator.num_blocks
    check(free == total, f"every block back after serving ({free} of {total})", seen)
    again = paged.serve(list(reversed(reqs)))
    same = all(paged.engine._buckets[r].graph is g for r, g in graphs.items())
    check(
        same and again.token_ids == want,
        "a second serve replays the same graphs, same tokens",
        seen,
    )
    steps = result.steps
    tiled = all(a.end_ns <= b.start_ns and a.start_ns < a.end_ns for a, b in zip(steps, steps[1:]))
    check(tiled, "step timestamps (CUDA events) tile the window", seen)
    eager = TorchServingEngine(
        arch, "float32", device, SEED, cuda_graphs=False, compile_layers=False, **paged_kwargs
    )
    check(eager.serve(reqs).token_ids == want, "the eager paged reference agrees", seen)


def big(seen: dict) -> None:
    """Llama-3.1-8B bf16 dummy weights at max_num_seqs 64: build (profile, pool, compile,
    capture), then 256 synthetic-length requests capped at 64 output tokens, twice (warm, then
    measured); what the pool got and how long steps took."""
    arch = load_architecture("llama-3.1-8b")
    rng = np.random.default_rng(SEED)
    reqs = [
        Request(f"b{i}", tuple(rng.integers(0, arch.vocab_size, int(rng.integers(16, 600))).tolist()),
                int(rng.integers(1, 65)))  # fmt: skip
        for i in range(256)
    ]  # fmt: skip
    t0 = time.monotonic()
    engine = TorchServingEngine(arch, "bfloat16", "cuda", SEED, max_num_seqs=64, max_model_len=2048)
    seen["big_build_s"] = time.monotonic() - t0
    engine.serve(reqs[:64])
    t0 = time.monotonic()
    result = engine.serve(reqs)
    seen["big_serve_s"] = time.monotonic() - t0
    by_kind: dict[str, list[float]] = {}
    for s in result.steps:
        by_kind.setdefault(s.kind, []).append((s.end_ns - s.start_ns) / 1e6)
    window = (result.end_ns - result.start_ns) / 1e9
    seen["big"] = {
        "describe": engine.describe(),
        "output_tok_per_s": sum(r.output_tokens for r in result.requests) / window,
        "step_ms_p50": {k: float(np.median(v)) for k, v in by_kind.items()},
        "steps": {k: len(v) for k, v in by_kind.items()},
        "gap_share": 1 - sum(sum(v) for v in by_kind.values()) / 1e3 / window,
        "peak_memory_bytes": engine.peak_memory_bytes(),
    }
    free, total = engine.engine.allocator.num_free, engine.engine.allocator.num_blocks
    check(free == total, f"8B: every block back ({free} of {total})", seen)
    log(f"8B: {seen['big']}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--big", action="store_true", help="also Llama-3.1-8B bf16 at max_num_seqs 64")
    p.add_argument("--cpu", action="store_true", help="the tiny checks' code on the CPU")
    args = p.parse_args(argv)
    if not args.cpu and not torch.cuda.is_available():
        raise SystemExit("paged_smoke.py needs a CUDA GPU (or --cpu)")
    device = torch.device("cpu" if args.cpu else "cuda")
    seen: dict = {"benchmark": "paged_smoke", "machine": describe_machine(device)}
    path = out_dir(None) / f"paged-smoke{'-cpu' if args.cpu else ''}.json"
    try:
        tiny(seen, device.type)
        if args.big:
            big(seen)
    finally:
        write_json(path, seen)
    log(f"all checks passed; {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

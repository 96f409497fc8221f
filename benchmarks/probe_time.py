"""Time of the OOM probe per model (issue 19's target: <= 15 s per model on an H100/H200, engine build
included), each model probed in a fresh process as a Snakemake job would, with no probe cache.

    python benchmarks/probe_time.py OUT.json                     # the six study models, new probe
    python benchmarks/probe_time.py OUT.json --method bisect     # the search before calibration
    python benchmarks/probe_time.py OUT.json --models llama-2-7b gpt2-xl
    python benchmarks/probe_time.py OUT.json --smoke             # CPU: tiny models, a 0.05 GB cap

Models and lengths as config/paper-h200.yaml's study: Llama-2-7B, Llama-2-13B (fp16) and
Llama-3.1-8B (bf16) within 4..1000 tokens, GPT-2 124M, 774M and 1.5B (fp16) within 4..500; the
workload is 100 requests of the synthetic ShareGPT-like set within those bounds (serving.py's
request_set: at 4..1000 the longest prompt is 893 and the longest output 853 tokens, at 4..500
both 500), so the static probe runs at its longest prompt and output and the paged pool fit reads
every request, as the workflow's probe does (records before 2026-12-07 15:30 UTC probed one
request of 1000 / 1000 or 500 / 500); dummy weights; sweep limits max_batch 1024 and
max_num_seqs 100 (min(max_batch, num_prompts 100): what `max_num_seqs: auto` probes up to); the
whole card (no memory cap) unless --memory-limit-gb. torch.compile's inductor cache starts empty
(a fresh folder, as on a new machine) unless --inductor-cache names one.

The record (written after every model, so a timeout keeps what finished): per model the process's
wall time (start to exit: interpreter, imports, CUDA start, probe), the probe's own time, the
static engine build, seconds per phase (calibration, confirmation, search) of the static tries
and of the serving-engine builds (engine_builds_s: their constructors; the rest of a build's
seconds is torch.compile, graph capture and serving), each with the sizes tried, the limits found,
and each model's whole probe.json.

Expected on one H100, not yet measured: 10-30 s per model with the new probe (a process start of
a few seconds; the static confirmation's prefill of the predicted batch, e.g. ~58 x 1000 tokens
for Llama-2-7B; one cold torch.compile per serving engine, and a second engine only where the
limit is below max_num_seqs 100), about 3 minutes for the six. The search before calibration
took 45-70 s per model in issue 19's run: time it on two models (--models llama-2-7b gpt2-xl).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# config/paper-h200.yaml: (model, dtype, longest prompt, longest output)
STUDY = {
    "llama-2-7b": ("float16", 1000, 1000),
    "llama-2-13b": ("float16", 1000, 1000),
    "gpt2": ("float16", 500, 500),
    "gpt2-large": ("float16", 500, 500),
    "gpt2-xl": ("float16", 500, 500),
    "llama-3.1-8b": ("bfloat16", 1000, 1000),
}
SMOKE = {"tiny-llama": ("float32", 64, 64), "tiny-gpt2": ("float32", 64, 64)}
PHASES = ("calibration", "confirmation", "search")
WORKLOAD_REQUESTS = 100  # config/paper-h200.yaml workload.num_prompts


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def phase_times(part: dict | None) -> dict | None:
    """{phase: {"seconds", "sizes"}} of one search's tries, plus the serving builds' seconds."""
    if not part:
        return None
    if "tries" not in part:  # the paged pool fit (method "paged pool"): one engine, one serve
        return {"paged_pool": {"seconds": round(part["seconds"], 3),
                               "engine_build_s": round(part["build_s"] or 0.0, 3),
                               "served": part.get("served"), "fits": part["fits"]}}  # fmt: skip
    out = {}
    for phase in PHASES + ("",):
        tries = [t for t in part["tries"] if t["phase"] == phase]
        if tries:
            out[phase or "bisect"] = {
                "seconds": round(sum(t["seconds"] for t in tries), 3),
                "sizes": [[t["size"], t["fits"]] for t in tries],
            }
    builds = [t["build_s"] for t in part["tries"] if t.get("build_s") is not None]
    if builds:
        out["engine_builds_s"] = round(sum(builds), 3)
    return out


def one(args: argparse.Namespace) -> int:
    """Probe one model in this process (the child of main); its probe.json to args.probe_out."""
    import pandas as pd

    from tokencarbon.probe import run_probe

    dtype, prompt_len, output_len = (SMOKE if args.smoke else STUDY)[args.one]
    if args.smoke:
        workload = pd.DataFrame({"prompt_token_ids": [[1] * prompt_len],
                                 "output_tokens": [output_len]})  # fmt: skip
    else:
        # what the workflow's probe gets: the study's 100 requests within the family's bounds
        # (serving.request_set: the synthetic ShareGPT-like set), whose longest prompt and output
        # size the static probe and whose lengths the paged pool fit reads
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from serving import request_set

        requests, _ = request_set(WORKLOAD_REQUESTS, 0, 32000, max_tokens=prompt_len)
        workload = pd.DataFrame({"prompt_token_ids": [list(r.prompt) for r in requests],
                                 "output_tokens": [r.output_len for r in requests]})  # fmt: skip
    kind = "cpu" if args.smoke else "gpu"
    limits = {"memory_limit_gb": args.memory_limit_gb, "max_batch": args.max_batch}
    if args.max_num_seqs:
        limits["max_num_seqs"] = args.max_num_seqs
    run_probe(
        model={"name": args.one, "architecture": args.one, "dtype": dtype, "checkpoint": None,
               "seed": 0},
        platform={"name": f"bench-{kind}", "kind": kind, "device_name_pattern": ".*"},
        limits=limits,
        workload=workload,
        out_path=args.probe_out,
        cache_dir=None,  # every model really probed: this measures the probe, not the cache
        method=args.method,
        log=log,
    )  # fmt: skip
    return 0


def early_device_name(smoke: bool) -> str | None:
    """The device's name without starting CUDA: the CPU's model (smoke) or the first GPU NVML
    shows this process (hardware.visible_devices); None where NVML sees none."""
    from tokencarbon.hardware import cpu_model_name, visible_devices

    if smoke:
        return cpu_model_name()
    gpus = visible_devices()["gpus"]
    return gpus[0] if gpus else None


def machine(smoke: bool) -> dict:
    """The device and software, from the project's own description (benchmarks/decode_roofline)."""
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from decode_roofline import describe_machine

    return describe_machine(torch.device("cpu" if smoke else "cuda"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", nargs="?", help="the JSON record to write")
    p.add_argument("--models", nargs="+", help="default: the six study models (--smoke: tiny)")
    p.add_argument("--method", choices=["calibrated", "bisect"], default="calibrated")
    p.add_argument("--memory-limit-gb", type=float, default=None)
    p.add_argument("--max-batch", type=int, default=1024)
    p.add_argument("--max-num-seqs", type=int, default=100, help="0: no continuous probe")
    p.add_argument("--smoke", action="store_true", help="CPU, tiny models, a 0.05 GB cap")
    p.add_argument("--inductor-cache", help="TORCHINDUCTOR_CACHE_DIR; default: a fresh folder")
    p.add_argument("--timeout-s", type=float, default=150.0, help="per model")
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--probe-out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.smoke and args.memory_limit_gb is None:
        args.memory_limit_gb = 0.05
    if args.one:
        return one(args)
    if not args.out:
        p.error("give the path of the JSON record to write")
    table = SMOKE if args.smoke else STUDY
    models = args.models or list(table)
    unknown = [m for m in models if m not in table]
    if unknown:
        p.error(f"unknown model(s) {unknown}; valid: {list(table)}")
    if not args.smoke:
        import torch

        if not torch.cuda.is_available():
            log("probe_time.py needs a CUDA GPU (or --smoke on the CPU)")
            return 2
    from tokencarbon.files import write_json

    out = Path(args.out)
    scratch = Path(tempfile.mkdtemp(prefix="probe-time-"))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        x for x in (str(REPO / "workflow"), env.get("PYTHONPATH")) if x
    )
    cache = args.inductor_cache or str(scratch / "inductor")
    env["TORCHINDUCTOR_CACHE_DIR"] = cache
    record = {
        "benchmark": "probe_time",
        "method": args.method,
        "limits": {"memory_limit_gb": args.memory_limit_gb, "max_batch": args.max_batch,
                   "max_num_seqs": args.max_num_seqs or None},
        "inductor_cache": {"dir": cache, "fresh": args.inductor_cache is None},
        "target_s_per_model": 15.0,
        "results": [],
        # the device's name now, from NVML (no CUDA context beside the probes), so a run cut
        # short still says where it ran; the full description replaces it at the end
        "machine": {"device_name": early_device_name(args.smoke), "partial": True},
    }  # fmt: skip
    t_all = time.monotonic()
    for name in models:
        dtype, prompt_len, output_len = table[name]
        probe_out = scratch / f"{name}.json"
        cmd = [sys.executable, __file__, "--one", name, "--probe-out", str(probe_out),
               "--method", args.method, "--max-batch", str(args.max_batch),
               "--max-num-seqs", str(args.max_num_seqs)]  # fmt: skip
        if args.memory_limit_gb is not None:
            cmd += ["--memory-limit-gb", str(args.memory_limit_gb)]
        if args.smoke:
            cmd.append("--smoke")
        log(f"{name} {dtype} {prompt_len}/{output_len} ({args.method})")
        t0 = time.monotonic()
        try:
            proc = subprocess.run(cmd, env=env, timeout=args.timeout_s, cwd=REPO)
            status = proc.returncode
        except subprocess.TimeoutExpired:
            status = "timeout"
        wall = round(time.monotonic() - t0, 3)
        row = {"model": name, "dtype": dtype, "prompt_len": prompt_len, "output_len": output_len,
               "process_wall_s": wall, "status": status}  # fmt: skip
        if status == 0:
            probe = json.loads(probe_out.read_text())
            row |= {
                "probe_s": probe["probe_s"],
                "process_overhead_s": round(wall - probe["probe_s"], 3),
                "engine_build_s": probe["static"]["engine_build_s"],
                "budget_bytes": probe["budget_bytes"],
                "max_ok": probe["max_ok"],
                "min_failed": probe["min_failed"],
                "static": phase_times(probe["static"]),
                "static_predicted": probe["static"].get("predicted"),
                "static_model_predicted": probe["static"].get("memory_model", {}).get("predicted"),
                "static_confirmed": probe["static"].get("confirmed"),
                "max_num_seqs_ok": probe.get("max_num_seqs_ok"),
                "max_num_seqs_min_failed": probe.get("max_num_seqs_min_failed"),
                "continuous": phase_times(probe.get("continuous")),
                "continuous_predicted": (probe.get("continuous") or {}).get("predicted"),
                "continuous_confirmed": (probe.get("continuous") or {}).get("confirmed"),
                "within_target": wall <= record["target_s_per_model"],
                "probe_json": probe,
            }
        record["results"].append(row)
        record["total_s"] = round(time.monotonic() - t_all, 3)
        write_json(out, record)
        log(f"  {status}: {wall:.1f} s in all; max batch {row.get('max_ok')}, max_num_seqs "
            f"{row.get('max_num_seqs_ok')}")  # fmt: skip
    # described last: starting CUDA here first would hold a context beside every model's probe
    record["machine"] = machine(args.smoke)
    write_json(out, record)
    print(f"{'model':<14} {'wall s':>7} {'probe s':>8} {'build s':>8} {'max_ok':>7} {'seqs':>5}")
    for r in record["results"]:
        print(
            f"{r['model']:<14} {r['process_wall_s']:>7.1f} {r.get('probe_s', float('nan')):>8.1f} "
            f"{r.get('engine_build_s', float('nan')):>8.1f} {r.get('max_ok', '-')!s:>7} "
            f"{r.get('max_num_seqs_ok', '-')!s:>5}"
        )
    print(f"record: {out} ({record['total_s']:.0f} s)")
    return 0 if all(r["status"] == 0 for r in record["results"]) else 1


if __name__ == "__main__":
    sys.exit(main())

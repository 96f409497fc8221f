"""Decode roofline of the torch backend: ms per decode step, tokens/s, achieved memory bandwidth and
MBU per model, batch and decode mode, against a copy bandwidth measured in the same run and against
the datasheet. benchmarks/README.md says what is measured and how to run it."""

from __future__ import annotations

import argparse
import gc
import os
import re
import statistics
import sys
import time
import traceback
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from tokencarbon import hardware
from tokencarbon.backends.static import CACHE_ALIGN, TorchEngine
from tokencarbon.errors import ConfigError
from tokencarbon.files import write_json
from tokencarbon.flops import decode_step_bytes
from tokencarbon.models import Architecture, kv_cache_bytes, load_architecture, weight_bytes
from tokencarbon.platforms import load_platforms, peak_bandwidth_bytes_per_s

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DECODE_TOK = "decode_tok_per_s"  # batch / decode step time: the steady decode rate
OUTPUT_TOK = "output_tok_per_s"  # output tokens / whole batch time, prefill included
# engine constructor arguments per mode; "graph" is what the cells run
MODES = {
    "graph": {"cuda_graphs": True, "compile_decode": False},
    "compile": {"cuda_graphs": True, "compile_decode": True},
    "eager": {"cuda_graphs": False, "compile_decode": False},
}
PROFILE_TOP = 15


@dataclass(frozen=True)
class Case:
    name: str
    model: str
    batch: int
    prompt_len: int
    output_len: int
    target: float | None = None  # tok/s, in target_metric
    target_metric: str | None = None

    def __post_init__(self) -> None:
        if self.output_len < 2:  # a decode step time needs at least one decode step
            raise ConfigError(f"case {self.name}: output_len={self.output_len}; must be >= 2")


GPU_CASES = [
    Case("7b-bs1", "llama-2-7b", 1, 128, 128, 175.0, DECODE_TOK),
    Case("13b-bs1", "llama-2-13b", 1, 128, 128, 90.0, DECODE_TOK),
    Case("7b-bs64", "llama-2-7b", 64, 128, 128),
    Case("7b-bs128", "llama-2-7b", 128, 128, 128),
    Case("7b-bs256", "llama-2-7b", 256, 128, 128, 10_000.0, OUTPUT_TOK),
    # only a 141 GB card holds it (weights 13.5 GB + a 64 GiB cache); default where it fits
    Case("7b-bs512", "llama-2-7b", 512, 128, 128, 10_000.0, OUTPUT_TOK),
]
SMOKE_CASES = [
    Case("tiny-llama-bs1", "tiny-llama", 1, 32, 32),
    Case("tiny-llama-bs8", "tiny-llama", 8, 32, 32),
    Case("tiny-gpt2-bs1", "tiny-gpt2", 1, 32, 32),
]


def cache_len(prompt_len: int, output_len: int) -> int:
    """The static KV cache length TorchEngine.run_batch allocates for this shape."""
    return -(-(prompt_len + output_len) // CACHE_ALIGN) * CACHE_ALIGN


def step_bytes(engine: TorchEngine, case: Case) -> tuple[float, float]:
    """(useful, read) bytes of the mean decode step, on an engine that has just run the case. useful
    is what MBU counts (flops.decode_step_bytes: every weight, each request's cache up to its
    context P + k, and the new K/V) averaged over steps k = 1..N-1; read is what the step attends
    over instead: every weight, each request's cache up to the step's key bucket (the whole cache
    under compile_decode), and the new K/V."""
    arch, dtype = engine.arch, engine.dtype
    useful = statistics.fmean(
        decode_step_bytes(arch, [case.prompt_len + k] * case.batch, dtype)
        for k in range(1, case.output_len)
    )
    cache = cache_len(case.prompt_len, case.output_len)
    # step k feeds the token at slot P + k - 1
    keys = [engine.key_bucket(case.prompt_len + k - 1) or cache for k in range(1, case.output_len)]
    read = weight_bytes(arch, dtype) + statistics.fmean(
        kv_cache_bytes(arch, case.batch, n + 1, dtype) for n in keys
    )
    return useful, read


# ---------------------------------------------------------------- machine and records


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return hardware.cpu_model_name()


def gpu_slug(device: torch.device) -> str:
    """'h100', 'h200', ... from the device name (the record's file name); 'cpu' on a CPU."""
    if device.type != "cuda":
        return "cpu"
    m = re.search(r"\b([A-Z]+\d{2,4}[A-Z]?)\b", device_name(device))
    return m[1].lower() if m else re.sub(r"\W+", "-", device_name(device).lower()).strip("-")


def describe_machine(device: torch.device) -> dict:
    """Device name, driver, torch and CUDA versions, GPU clocks and power limit, git commit."""
    info = hardware.detect("gpu" if device.type == "cuda" else "cpu")
    return {
        "device_name": device_name(device),
        "driver_version": info.get("gpu", {}).get("driver_version"),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "hardware": info,
        "software": hardware.software_versions(),
    }


def datasheet_bandwidth(device: torch.device) -> dict | None:
    """The platforms.csv row whose device_name_pattern matches this device, and its GB/s."""
    kind, name = ("gpu" if device.type == "cuda" else "cpu"), device_name(device)
    for p in load_platforms().values():
        if p.kind == kind and re.search(p.device_name_pattern, name):
            return {"platform": p.platform, "bytes_per_s": peak_bandwidth_bytes_per_s(p)}
    return None


def out_dir(arg: str | None) -> Path:
    """--out-dir, else $OUT (the GPU machine's returned folder), else benchmarks/results."""
    return Path(arg or os.environ.get("OUT") or RESULTS_DIR)


def free_device_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc)[:500]}"


# ---------------------------------------------------------------- measurements


def copy_bandwidth(device: torch.device, gib: float, repeats: int = 10) -> dict:
    """Bytes read + written per second by a device-to-device copy of `gib` GiB, median of
    `repeats`: what this machine's memory really delivers, the fair denominator of MBU."""
    n_bytes = int(gib * 2**30)
    src = torch.ones(n_bytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)  # warm-up: first-touch page faults on CPU, lazy kernel loading on CUDA
    times_s = []
    for _ in range(repeats):
        if device.type == "cuda":
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            dst.copy_(src)
            end.record()
            end.synchronize()
            times_s.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            dst.copy_(src)
            times_s.append(time.perf_counter() - t0)
    del src, dst
    free_device_memory(device)
    median_s = statistics.median(times_s)
    return {
        "copy_bytes": n_bytes,
        "repeats": repeats,
        "median_s": median_s,
        "bytes_per_s": 2 * n_bytes / median_s,
    }


def seeded_prompts(case: Case, vocab_size: int, seed: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (case.batch, case.prompt_len), generator=gen).tolist()


def measure(
    engine: TorchEngine, case: Case, mode: str, dtype: str, repeats: int, bandwidth: dict, seed: int
) -> dict:
    """One warm-up batch (cache allocation, graph capture or compile), then `repeats` timed
    batches; decode step time = (end - first token) / (N - 1), median over the timed batches."""
    arch, device = engine.arch, engine.device
    prompts, outputs = seeded_prompts(case, arch.vocab_size, seed), [case.output_len] * case.batch
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.monotonic_ns()
    warm = engine.run_batch(prompts, outputs)
    first_batch_s = (time.monotonic_ns() - t0) / 1e9
    runs = [engine.run_batch(prompts, outputs) for _ in range(repeats)]
    step_s = statistics.median((r.end_ns - r.first_token_ns) / 1e9 for r in runs) / (
        case.output_len - 1
    )
    batch_s = statistics.median((r.end_ns - r.start_ns) / 1e9 for r in runs)
    useful_bytes, read_bytes = step_bytes(engine, case)
    result = {
        "case": case.name,
        "mode": mode,
        **{k: v for k, v in asdict(case).items() if k != "name"},
        "dtype": dtype,
        "repeats": repeats,
        "ms_per_step": step_s * 1e3,
        "prefill_s": statistics.median((r.first_token_ns - r.start_ns) / 1e9 for r in runs),
        "batch_s": batch_s,
        DECODE_TOK: case.batch / step_s,
        OUTPUT_TOK: case.batch * case.output_len / batch_s,
        # first batch minus a timed one: graph capture, plus compilation in mode "compile"
        "setup_s": first_batch_s - batch_s,
        # greedy decoding of the same prompts must give the same tokens every time
        "tokens_repeatable": all(r.token_ids == warm.token_ids for r in runs),
        "peak_memory_bytes": engine.peak_memory_bytes(),
        "useful_bytes_per_step": useful_bytes,
        "read_bytes_per_step": read_bytes,
        "achieved_bytes_per_s": useful_bytes / step_s,
        "achieved_read_bytes_per_s": read_bytes / step_s,
        "mbu_vs_copy": useful_bytes / step_s / bandwidth["copy"]["bytes_per_s"],
        "mbu_vs_datasheet": (
            useful_bytes / step_s / bandwidth["datasheet"]["bytes_per_s"]
            if bandwidth["datasheet"]
            else None
        ),
    }
    if case.target is not None:
        value = result[case.target_metric]
        result["target_met"] = value >= case.target
        result["target_margin_pct"] = 100.0 * (value / case.target - 1.0)
    return result


def _time_by_name(prof: profile, cuda: bool) -> dict[str, list]:
    """name -> [calls, microseconds]: device kernels (and copies) on CUDA, ops' self time on CPU."""
    totals: dict[str, list] = defaultdict(lambda: [0, 0.0])
    for e in prof.events():
        if cuda and e.device_type == DeviceType.CUDA:
            us = e.time_range.elapsed_us()
        elif not cuda and e.device_type == DeviceType.CPU:
            us = e.self_cpu_time_total
        else:
            continue
        totals[e.name][0] += 1
        totals[e.name][1] += us
    return totals


def profile_decode(
    engine: TorchEngine, case: Case, mode: str, ms_per_step: float, seed: int
) -> dict:
    """Top kernels by device time per decode step. Two batches of the case's cache shape, whose
    outputs differ by `steps` tokens, run under torch.profiler and their per-kernel totals are
    subtracted: the prefill, the same in both, cancels, and `steps` decode steps remain."""
    cache = cache_len(case.prompt_len, case.output_len)
    n_short = max(1, cache - CACHE_ALIGN - case.prompt_len + 1)  # fewest outputs, same cache
    if n_short >= case.output_len or cache_len(case.prompt_len, n_short) != cache:
        raise ConfigError(
            f"case {case.name}: prompt_len + output_len = {case.prompt_len + case.output_len} "
            f"fills too little of its {cache}-slot cache to profile decode steps; --profile needs "
            f"a case whose output_len exceeds {n_short}"
        )
    cuda = engine.device.type == "cuda"
    prompts = seeded_prompts(case, engine.arch.vocab_size, seed)
    activities = [ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]
    totals = []
    for n_out in (n_short, case.output_len):  # the measured shape: nothing new to capture
        with profile(activities=activities) as prof:
            engine.run_batch(prompts, [n_out] * case.batch)
        totals.append(_time_by_name(prof, cuda))
    short, long = totals
    steps = case.output_len - n_short
    rows = []
    for name, (calls, us) in long.items():
        short_calls, short_us = short.get(name, (0, 0.0))
        if calls > short_calls:  # a decode kernel; prefill-only ones cancel exactly
            rows.append(
                {
                    "name": name[:200],
                    "calls_per_step": (calls - short_calls) / steps,
                    "us_per_step": (us - short_us) / steps,
                }
            )
    rows.sort(key=lambda r: -r["us_per_step"])
    busy_us = sum(r["us_per_step"] for r in rows)
    for r in rows:
        r["share"] = r["us_per_step"] / busy_us if busy_us > 0 else None
    lines = [f"{'us/step':>9} {'calls':>6} {'share':>6}  {'kernel' if cuda else 'op (self CPU)'}"]
    lines += [
        f"{r['us_per_step']:9.1f} {r['calls_per_step']:6.1f} {r['share'] or 0:6.1%}  "
        f"{r['name'][:100]}"
        for r in rows[:PROFILE_TOP]
    ]
    return {
        "case": case.name,
        "mode": mode,
        "profiled_steps": steps,
        "step_us_unprofiled": ms_per_step * 1e3,
        # kernel time summed per step; well below the step time means the GPU waits on launches
        "busy_us_per_step": busy_us,
        "busy_share_of_step": busy_us / (ms_per_step * 1e3),
        "n_kernels_per_step": sum(r["calls_per_step"] for r in rows),
        "top": rows[:PROFILE_TOP],
        "table": "\n".join(lines),
        "note": (
            "the profiler recorded no kernel in these decode steps"
            if not rows
            else (
                "fractional calls per step: the profiler dropped events, shares are approximate"
                if any(r["calls_per_step"] % 1 for r in rows)
                else None
            )
        ),
    }


# ---------------------------------------------------------------- driver


def default_cases(device: torch.device, dtype: str) -> list[Case]:
    """The GPU cases whose weights and cache take under 90 % of this card's memory."""
    total = torch.cuda.get_device_properties(device).total_memory
    fits = []
    for c in GPU_CASES:
        arch = load_architecture(c.model)
        need = weight_bytes(arch, dtype) + kv_cache_bytes(
            arch, c.batch, cache_len(c.prompt_len, c.output_len), dtype
        )
        if need < 0.9 * total:
            fits.append(c)
    return fits


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny models, no targets (runs on CPU)")
    p.add_argument("--device", help="cuda or cpu (default: cuda where torch sees one)")
    p.add_argument("--cases", nargs="+", help="case names (default: all that fit the device)")
    p.add_argument(
        "--modes",
        nargs="+",
        choices=list(MODES),
        help="default: graph compile on CUDA, eager on CPU",
    )
    p.add_argument(
        "--compile-max-batch",
        type=int,
        default=1,
        help="mode compile only up to this batch (compiling a 7B shape takes 15-60 s)",
    )
    p.add_argument("--repeats", type=int, default=3, help="timed batches per case")
    p.add_argument(
        "--copy-gib", type=float, help="copy size for the bandwidth (default 4, smoke 0.25)"
    )
    p.add_argument(
        "--profile",
        nargs="+",
        default=[],
        metavar="CASE:MODE",
        help="profile the decode steps of these cells",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", help="default: $OUT, else benchmarks/results")
    return p.parse_args(argv)


def plan(args: argparse.Namespace) -> tuple[torch.device, str, list[Case], list[str], set]:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: torch sees no CUDA device; use --device cpu")
    dtype = "bfloat16" if device.type == "cuda" else "float32"
    catalogue = SMOKE_CASES if args.smoke else GPU_CASES
    by_name = {c.name: c for c in catalogue}
    if args.cases:
        unknown = [n for n in args.cases if n not in by_name]
        if unknown:
            raise ConfigError(f"--cases {unknown}: unknown; valid: {list(by_name)}")
        cases = [by_name[n] for n in args.cases]
    elif device.type == "cuda":
        cases = catalogue if args.smoke else default_cases(device, dtype)
    elif args.smoke:
        cases = catalogue
    else:
        raise ConfigError("no CUDA device: pass --smoke (tiny models on CPU) or name --cases")
    modes = args.modes or (["graph", "compile"] if device.type == "cuda" else ["eager"])
    if device.type != "cuda" and set(modes) - {"eager"}:
        raise ConfigError(f"--modes {modes}: graph and compile need a CUDA device; valid: eager")
    profiles = set()
    for item in args.profile:
        name, _, mode = item.partition(":")
        if name not in {c.name for c in cases} or mode not in modes:
            raise ConfigError(
                f"--profile {item!r}: expected CASE:MODE with CASE one of "
                f"{[c.name for c in cases]} and MODE one of {modes}"
            )
        profiles.add((name, mode))
    return device, dtype, cases, modes, profiles


def run_model(
    arch: Architecture,
    cases: list[Case],
    mode: str,
    device: torch.device,
    dtype: str,
    args: argparse.Namespace,
    bandwidth: dict,
    profiling: bool,
) -> Iterator[tuple[dict, dict | None]]:
    """Yield (result, profile or None) per case: one engine per model and mode, cases in order of
    batch; with `profiling`, each case is profiled right after it is measured. Any error is
    yielded as that case's result: one run on a GPU machine must bring back every case that
    worked."""
    try:
        t0 = time.monotonic()
        engine = TorchEngine(arch, dtype, device, args.seed, **MODES[mode])
        build_s = time.monotonic() - t0
    except Exception as exc:
        traceback.print_exc()
        for case in cases:
            yield {"case": case.name, "mode": mode, "error": error_text(exc)}, None
        return
    for case in sorted(cases, key=lambda c: c.batch):
        result, prof = {"case": case.name, "mode": mode}, None
        try:
            repeats = 1 if profiling else args.repeats
            result = measure(engine, case, mode, dtype, repeats, bandwidth, args.seed)
            result["engine_build_s"] = build_s
            if profiling:
                prof = profile_decode(engine, case, mode, result["ms_per_step"], args.seed)
        except Exception as exc:
            traceback.print_exc()
            result["error"] = error_text(exc)
        engine.release()
        free_device_memory(device)
        yield result, prof
    del engine
    if mode == "compile":
        torch._dynamo.reset()  # drops the compiled graphs and their CUDA graph memory pools
    free_device_memory(device)


def planned_runs(
    cases: list[Case], modes: list[str], profiles: set, compile_max_batch: int
) -> list[tuple[str, str, list[Case], bool]]:
    """(mode, model, its cases, profiling) per engine, in the order they run. Profiles come last,
    in engines of their own: once the profiler has attached to the CUDA driver it stays loaded,
    and no measurement should run beside it."""
    runs = []
    for profiling in (False, True):
        for mode in modes:
            for model in dict.fromkeys(c.model for c in cases):
                todo = [
                    c
                    for c in cases
                    if c.model == model
                    and (mode != "compile" or c.batch <= compile_max_batch)
                    and (not profiling or (c.name, mode) in profiles)
                ]
                if todo:
                    runs.append((mode, model, todo, profiling))
    return runs


def table(results: list[dict]) -> str:
    head = (
        f"{'case':<15} {'mode':<7} {'ms/step':>8} {'dec tok/s':>10} {'out tok/s':>10} "
        f"{'GB/s':>7} {'MBU copy':>8} {'MBU sheet':>9} {'setup s':>8}  target"
    )
    lines = [head]
    for r in results:
        if "error" in r:
            lines.append(f"{r['case']:<15} {r['mode']:<7} ERROR {r['error'][:90]}")
            continue
        target = ""
        if r["target"] is not None:
            verdict = "met" if r["target_met"] else "MISSED"
            target = (
                f"{r['target_metric'].split('_')[0]} >= {r['target']:,.0f}: {verdict} "
                f"({r['target_margin_pct']:+.1f} %)"
            )
        sheet = f"{r['mbu_vs_datasheet']:9.1%}" if r["mbu_vs_datasheet"] is not None else " " * 9
        lines.append(
            f"{r['case']:<15} {r['mode']:<7} {r['ms_per_step']:8.3f} {r[DECODE_TOK]:10.1f} "
            f"{r[OUTPUT_TOK]:10.1f} {r['achieved_bytes_per_s'] / 1e9:7.0f} "
            f"{r['mbu_vs_copy']:8.1%} {sheet} {r['setup_s']:8.1f}  {target}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device, dtype, cases, modes, profiles = plan(args)
    path = out_dir(args.out_dir) / f"{gpu_slug(device)}-decode.json"
    log(f"decode_roofline: {device_name(device)}, {len(cases)} case(s) x {modes} -> {path}")
    copy_gib = args.copy_gib or (0.25 if args.smoke or device.type != "cuda" else 4.0)
    bandwidth = {"copy": copy_bandwidth(device, copy_gib), "datasheet": datasheet_bandwidth(device)}
    log(f"copy bandwidth: {bandwidth['copy']['bytes_per_s'] / 1e9:.0f} GB/s (read + written)")
    record = {
        "benchmark": "decode_roofline",
        "smoke": args.smoke,
        "machine": describe_machine(device),
        "dtype": dtype,
        "bandwidth": bandwidth,
        "compile_max_batch": args.compile_max_batch,
        "results": [],
        "profiles": [],
    }
    write_json(path, record)
    for mode, model, todo, profiling in planned_runs(
        cases, modes, profiles, args.compile_max_batch
    ):
        arch = load_architecture(model)
        for result, prof in run_model(arch, todo, mode, device, dtype, args, bandwidth, profiling):
            if profiling:
                record["profiles"].append(prof or result)
            else:
                record["results"].append(result)
                log(table([result]).splitlines()[1])
            write_json(path, record)  # after every case: a run cut short keeps what it did
    for prof in record["profiles"]:
        if "error" in prof:
            print(f"\nprofile {prof['case']} {prof['mode']}: ERROR {prof['error']}")
            continue
        print(f"\nprofile {prof['case']} {prof['mode']}: {prof['busy_us_per_step']:.0f} us of "
              f"kernels in a {prof['step_us_unprofiled']:.0f} us step "
              f"({prof['n_kernels_per_step']:.0f} kernels)\n{prof['table']}")  # fmt: skip
    print(f"\ndecode roofline on {record['machine']['device_name']} ({dtype}); copy bandwidth "
          f"{bandwidth['copy']['bytes_per_s'] / 1e9:.0f} GB/s; record {path}")  # fmt: skip
    print(table(record["results"]))
    return 1 if any("error" in r for r in record["results"] + record["profiles"]) else 0


if __name__ == "__main__":
    sys.exit(main())

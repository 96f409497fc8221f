"""Sidecar overhead: one cell run with the power sidecar on and off (tokens/s must differ by < 1 %),
and the NVML energy counter against integrated instant power over each sidecar window (< 2 %).
benchmarks/README.md says what is measured and how to run it."""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from decode_roofline import Case, describe_machine, gpu_slug, log, out_dir, seeded_prompts

from tokencarbon.backends.static import TorchEngine
from tokencarbon.energy import cell_energy
from tokencarbon.files import write_json
from tokencarbon.models import load_architecture
from tokencarbon.platforms import get_platform
from tokencarbon.power import DEFAULT_INTERVAL_S
from tokencarbon.power.sidecar import PowerSidecar, read_samples

# Off and on in ABBA order: a steady drift (clocks settling, the card warming) shifts both sides
# about alike instead of all of it landing on whichever runs last.
ORDER = ["off", "on", "on", "off", "off", "on"]
MAX_TOK_DIFF_PCT = 1.0
MAX_ENERGY_DIFF = 0.02
MIN_ENERGY_WINDOW_S = 10.0  # the counter steps every ~100 ms: shorter windows are mostly edges


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny-llama on CPU, modeled power")
    p.add_argument("--model", help="default llama-2-7b (smoke: tiny-llama)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--prompt-len", type=int, help="default 128 (smoke: 32)")
    p.add_argument("--output-len", type=int, help="default 128 (smoke: 32)")
    p.add_argument(
        "--window-s", type=float, help="workload per repetition, default 11 s (smoke: 2 s)"
    )
    p.add_argument(
        "--interval-s", type=float, help="sampling interval (default: 0.05 s NVML, 0.1 s modeled)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", help="default: $OUT, else benchmarks/results")
    return p.parse_args(argv)


def repetition(
    engine: TorchEngine,
    case: Case,
    prompts: list[list[int]],
    n_batches: int,
    sidecar: PowerSidecar | None,
) -> dict:
    """n_batches of the cell back to back, the sidecar (if any) sampling around them."""
    outputs = [case.output_len] * case.batch
    if sidecar is not None:
        sidecar.start()  # outside the window: its first sample is taken before start() returns
    try:
        runs = [engine.run_batch(prompts, outputs) for _ in range(n_batches)]
    finally:
        if sidecar is not None:
            sidecar.stop()
    window_s = (runs[-1].end_ns - runs[0].start_ns) / 1e9
    rep = {
        "sidecar": "on" if sidecar else "off",
        "batches": n_batches,
        "window_s": window_s,
        "tok_per_s": sum(r.output_tokens for r in runs) / window_s,
    }
    if sidecar is not None:
        samples = read_samples(sidecar.out_path)
        e = cell_energy(samples, runs[0].start_wall_ns, runs[-1].end_wall_ns, math.nan)
        has_counter = not math.isnan(e.energy_counter_j)  # None, not NaN, keeps the JSON strict
        rep |= {
            "n_samples": e.n_samples,
            "energy_counter_j": e.energy_counter_j if has_counter else None,
            "energy_integrated_j": e.energy_integrated_j,
            "mean_power_w": e.energy_j / e.window_s,
            "method": e.method,
            # (integrated - counter) / counter
            "relative_difference": e.relative_difference if has_counter else None,
        }
    return rep


def summarise(reps: list[dict]) -> dict:
    off = [r["tok_per_s"] for r in reps if r["sidecar"] == "off"]
    on = [r["tok_per_s"] for r in reps if r["sidecar"] == "on"]
    diff_pct = 100.0 * (statistics.median(on) / statistics.median(off) - 1.0)
    energy = [r for r in reps if r["sidecar"] == "on"]
    has_counter = all(r["energy_counter_j"] is not None for r in energy)
    long_enough = all(r["window_s"] >= MIN_ENERGY_WINDOW_S for r in energy)
    worst = max(abs(r["relative_difference"]) for r in energy) if has_counter else None
    if not has_counter:
        energy_verdict = "not checked: the source has no energy counter (integrated only)"
    elif not long_enough:
        energy_verdict = f"not checked: a window is under {MIN_ENERGY_WINDOW_S:.0f} s"
    else:
        energy_verdict = "pass" if worst < MAX_ENERGY_DIFF else "FAIL"
    return {
        "tok_per_s_off_median": statistics.median(off),
        "tok_per_s_on_median": statistics.median(on),
        "tok_diff_pct": diff_pct,
        # run-to-run spread without the sidecar: how small a difference this machine can resolve
        "tok_spread_off_pct": 100.0 * (max(off) - min(off)) / statistics.median(off),
        "tok_verdict": "pass" if abs(diff_pct) < MAX_TOK_DIFF_PCT else "FAIL",
        "max_abs_energy_relative_difference": worst,
        "energy_verdict": energy_verdict,
        "criteria": {
            "tok_diff_pct_below": MAX_TOK_DIFF_PCT,
            "energy_relative_difference_below": MAX_ENERGY_DIFF,
            "energy_window_s_at_least": MIN_ENERGY_WINDOW_S,
        },
    }


def table(reps: list[dict], summary: dict) -> str:
    lines = [f"{'rep':>3} {'sidecar':<7} {'window s':>8} {'tok/s':>9} {'samples':>7} "
             f"{'counter J':>10} {'integr. J':>10} {'diff':>7}"]  # fmt: skip
    for i, r in enumerate(reps):
        line = f"{i:>3} {r['sidecar']:<7} {r['window_s']:8.2f} {r['tok_per_s']:9.1f}"
        if r["sidecar"] == "on":
            counter, diff = r["energy_counter_j"], r["relative_difference"]
            line += (
                f" {r['n_samples']:7d} {'-' if counter is None else f'{counter:.1f}':>10} "
                f"{r['energy_integrated_j']:10.1f} {'-' if diff is None else f'{diff:.2%}':>7}"
            )
        lines.append(line)
    s = summary
    lines.append(
        f"tokens/s on vs off (medians): {s['tok_diff_pct']:+.2f} % (spread off "
        f"{s['tok_spread_off_pct']:.2f} %; must be < {MAX_TOK_DIFF_PCT} %): {s['tok_verdict']}"
    )
    worst = s["max_abs_energy_relative_difference"]
    lines.append(
        "energy counter vs integral: "
        + (f"worst {worst:.2%} (must be < {MAX_ENERGY_DIFF:.0%}): " if worst is not None else "")
        + s["energy_verdict"]
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cuda = torch.cuda.is_available() and not args.smoke
    device = torch.device("cuda" if cuda else "cpu")
    case = Case(
        "sidecar",
        args.model or ("llama-2-7b" if cuda else "tiny-llama"),
        args.batch,
        args.prompt_len or (128 if cuda else 32),
        args.output_len or (128 if cuda else 32),
    )
    spec = (
        {"kind": "nvml", "device_index": 0}
        if cuda
        else {"kind": "modeled_cpu", "tdp_w": get_platform("cpu").tdp_w}
    )
    interval_s = args.interval_s or DEFAULT_INTERVAL_S[spec["kind"]]
    window_s = args.window_s or (11.0 if cuda else 2.0)
    dtype = "bfloat16" if cuda else "float32"
    path = out_dir(args.out_dir) / f"{gpu_slug(device)}-sidecar.json"

    arch = load_architecture(case.model)
    engine = TorchEngine(arch, dtype, device, args.seed)  # the cells' default: manual CUDA graph
    prompts = seeded_prompts(case, arch.vocab_size, args.seed)
    outputs = [case.output_len] * case.batch
    engine.run_batch(prompts, outputs)  # warm-up: cache allocation and graph capture
    t0 = time.monotonic()
    engine.run_batch(prompts, outputs)
    n_batches = max(1, math.ceil(window_s / (time.monotonic() - t0)))
    log(f"sidecar_overhead: {case.model} bs{case.batch} on {device}, {n_batches} batches "
        f"(~{window_s:.0f} s) per repetition, order {ORDER}, {spec} every {interval_s} s")  # fmt: skip

    reps: list[dict] = []
    record = {
        "benchmark": "sidecar_overhead",
        "smoke": args.smoke,
        "machine": describe_machine(device),
        "cell": {k: getattr(case, k) for k in ("model", "batch", "prompt_len", "output_len")}
        | {"dtype": dtype, "decode": "graph" if cuda else "eager"},
        "power_source": spec,
        "interval_s": interval_s,
        "order": ORDER,
        "repetitions": reps,
        "summary": None,
    }
    with tempfile.TemporaryDirectory(prefix="sidecar-overhead-") as tmp:
        for i, state in enumerate(ORDER):
            sidecar = (
                PowerSidecar(spec, Path(tmp) / f"power-{i}.parquet", interval_s)
                if state == "on"
                else None
            )
            reps.append(repetition(engine, case, prompts, n_batches, sidecar))
            log(f"rep {i} sidecar {state}: {reps[-1]['tok_per_s']:.1f} tok/s over "
                f"{reps[-1]['window_s']:.1f} s")  # fmt: skip
            if {r["sidecar"] for r in reps} == {"on", "off"}:
                record["summary"] = summarise(reps)
            write_json(path, record)  # after every repetition: a run cut short keeps what it did
    summary = record["summary"]
    print(f"\nsidecar overhead on {record['machine']['device_name']}: {case.model} bs{case.batch}, "
          f"{n_batches} batches per repetition; record {path}")  # fmt: skip
    print(table(reps, summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())

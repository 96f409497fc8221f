"""Measured CPU peaks: the matmul FLOP/s and copy bandwidth a platform row may take from this
machine when no datasheet describes its CPU (platforms.resolve_platform, spec_source "measured").

A measured peak is what torch reaches here, not the silicon's theoretical one: MFU against it reads
higher than against a datasheet peak, which is why spec_source labels it.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from tokencarbon.errors import ConfigError, InputError
from tokencarbon.units import BYTES_PER_GB, FLOPS_PER_TFLOPS

# A 1024^3 fp32 matmul is 2.1 GFLOP: long enough to time (>= ~10 ms on a core), short enough to
# repeat. The copy moves 2 x 64 MiB (read + write), well beyond any last-level cache of a slice.
MATMUL_N = 1024
COPY_BYTES = 64 * 2**20
REPEATS = 5
# What rule measure_platform measures: every dtype a model may run in (platforms._DTYPE_PEAK), so
# that no model's dtype is left without a peak and adding a model never re-measures.
MEASURED_DTYPES = ("float32", "float16", "bfloat16")


def measure_cpu_peaks(
    logical_cpus: int, dtypes: tuple[str, ...] = ("float32",), repeats: int = REPEATS
) -> dict[str, float]:
    """Best-of-`repeats` matmul TFLOP/s per dtype and copy GB/s on `logical_cpus` torch threads.

    Returns {"peak_tflops_<fp32|fp16|bf16>": TFLOP/s, "memory_gb_per_s": GB/s (decimal)}, the keys
    of platforms.MEASURABLE_FIELDS. A matmul of n x n by n x n is 2 n^3 FLOPs; a copy of B bytes
    moves 2 B (read and write). The best run is kept: slower ones measure interference, not the
    machine. Raises ConfigError for a dtype torch cannot multiply on the CPU or logical_cpus < 1.
    """
    import torch

    names = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}
    if logical_cpus < 1:
        raise ConfigError(f"logical_cpus {logical_cpus!r}: must be >= 1")
    previous = torch.get_num_threads()
    torch.set_num_threads(int(logical_cpus))
    try:
        out: dict[str, float] = {}
        for dtype in dtypes:
            if dtype not in names:
                raise ConfigError(f"dtype {dtype!r}: measurable dtypes are {list(names)}")
            a = torch.randn(MATMUL_N, MATMUL_N).to(getattr(torch, dtype))
            b = torch.randn(MATMUL_N, MATMUL_N).to(getattr(torch, dtype))
            torch.mm(a, b)  # warm-up: thread pool, packing buffers
            best_s = min(_timed(lambda: torch.mm(a, b)) for _ in range(repeats))
            out[f"peak_tflops_{names[dtype]}"] = 2 * MATMUL_N**3 / best_s / FLOPS_PER_TFLOPS
        src = torch.ones(COPY_BYTES // 4, dtype=torch.float32)
        dst = torch.empty_like(src)
        dst.copy_(src)
        best_s = min(_timed(lambda: dst.copy_(src)) for _ in range(repeats))
        out["memory_gb_per_s"] = 2 * COPY_BYTES / best_s / BYTES_PER_GB
        return out
    finally:
        torch.set_num_threads(previous)


def measure_platform(
    platform: dict[str, Any],
    out: str | Path,
    *,
    lock_dir: str | Path | None = None,
    repeats: int = REPEATS,
    dtypes: tuple[str, ...] = MEASURED_DTYPES,
) -> dict[str, Any]:
    """Rule measure_platform: this machine's peaks for a cpu platform with spec.measure, written
    to `out` (JSON, atomically) and returned.

    platform: plan.measure_slice ({"name", "kind", "device_name_pattern", "spec",
    "logical_cpus"}). The platform's logical CPUs are leased as a cell leases them (never beside a
    cell on the same CPUs) and the detected CPU is checked as a cell checks it; then
    measure_cpu_peaks on that many threads, with the foreign CPU use of those CPUs meanwhile
    (occupancy.CpuWatch). Returns {"platform", "device_name", "logical_cpus", "cpus", "measured":
    {MEASURABLE_FIELDS: TFLOP/s or GB/s}, "foreign_cpu_share", "cpu_steal_share", "foreign_use",
    "method",
    "versions", "measured_wall_ns"}. Raises HardwareMismatchError for another CPU, ConfigError for a
    platform that is no CPU, LeaseTimeoutError while the CPUs stay taken.
    """
    import torch

    from tokencarbon.files import write_json
    from tokencarbon.hardware import check_platform, detect
    from tokencarbon.lease import cell_leases
    from tokencarbon.occupancy import CpuWatch

    if platform["kind"] != "cpu":
        raise ConfigError(
            f"platform {platform['name']!r} is a {platform['kind']}: tokencarbon.peak measures CPUs"
        )
    name = platform["name"]
    with cell_leases(platform, cell=f"{name}/measure_platform", lock_dir=lock_dir, log=print) as lease:
        hardware = detect("cpu")
        check_platform(platform, hardware)
        watch = CpuWatch(lease["cpus"])
        watch.start()
        measured = measure_cpu_peaks(len(lease["cpus"]), dtypes, repeats)
        foreign = watch.stop()
    record = {
        "platform": name,
        "device_name": hardware["device_name"],
        "logical_cpus": len(lease["cpus"]),
        "cpus": list(lease["cpus"]),
        "measured": measured,
        "foreign_cpu_share": foreign.get("foreign_cpu_share", math.nan),
        "cpu_steal_share": foreign.get("cpu_steal_share", math.nan),
        "foreign_use": foreign,
        "method": (
            f"tokencarbon.peak: best of {repeats} {MATMUL_N}^3 torch.mm per dtype "
            f"({', '.join(dtypes)}; 2 n^3 FLOPs) and a {COPY_BYTES} B copy (2 x bytes moved), "
            f"on {len(lease['cpus'])} torch threads pinned to the leased CPUs"
        ),
        "versions": {"torch": torch.__version__},
        "measured_wall_ns": time.time_ns(),
    }
    write_json(out, record)
    print(f"[tokencarbon] {name}: measured on {hardware['device_name']!r}, CPUs {record['cpus']}: "
          + ", ".join(f"{k} {v:.4g}" for k, v in measured.items())
          + f" (foreign CPU share {record['foreign_cpu_share']:.3f}, "
          + f"steal {record['cpu_steal_share']:.3f})")  # fmt: skip
    return record


def read_measurement(path: str | Path, platform: str) -> dict[str, Any]:
    """A spec.json that measure_platform wrote, checked: its platform is `platform` and it holds a
    device name and the measured fields. Raises InputError naming the file and what to do."""
    import json

    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: cannot read a platform measurement ({e}); delete it to measure again") from None
    missing = [k for k in ("platform", "device_name", "measured") if k not in record]
    if missing or record.get("platform") != platform or not isinstance(record.get("measured"), dict):
        raise InputError(
            f"{path}: not a measurement of platform {platform!r} by rule measure_platform "
            f"(missing {missing}, platform {record.get('platform')!r}); delete it to measure again"
        )
    return record


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    """`python -m tokencarbon.peak [--logical-cpus N] [--platform NAME]`: measure this CPU's peaks
    and print them as the config lines platforms.<NAME>.spec takes (resolve_platform's error for a
    CPU its row does not describe points here). TDP is not measurable here: the lines say so."""
    import argparse
    import os

    parser = argparse.ArgumentParser(prog="python -m tokencarbon.peak", description=main.__doc__)
    parser.add_argument("--logical-cpus", type=int, default=len(os.sched_getaffinity(0)),
                        help="torch threads, the platform's logical_cpus (default: this process's CPUs)")  # fmt: skip
    parser.add_argument("--platform", default="cpu", help="platform name in config (default: cpu)")
    a = parser.parse_args(argv)
    from tokencarbon.hardware import cpu_model_name

    peaks = measure_cpu_peaks(a.logical_cpus)
    print(f"# measured by tokencarbon.peak on {cpu_model_name()!r}, {a.logical_cpus} logical CPUs "
          f"(best of {REPEATS}; what torch reaches, not a datasheet peak)")  # fmt: skip
    print(f"platforms:\n  {a.platform}:\n    spec:")
    print(f"      logical_cpus: {a.logical_cpus}")
    for key, value in peaks.items():
        print(f"      {key}: {value:.4g}")
    print("      # tdp_w: W, the TDP share of these logical CPUs, from this CPU's datasheet (not measurable here)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Measured CPU peaks: the matmul FLOP/s and copy bandwidth a platform row may take from this
machine when no datasheet describes its CPU (platforms.resolve_platform, spec_source "measured").

A measured peak is what torch reaches here, not the silicon's theoretical one: MFU against it reads
higher than against a datasheet peak, which is why spec_source labels it.
"""

from __future__ import annotations

import time

from tokencarbon.errors import ConfigError
from tokencarbon.units import BYTES_PER_GB, FLOPS_PER_TFLOPS

# A 1024^3 fp32 matmul is 2.1 GFLOP: long enough to time (>= ~10 ms on a core), short enough to
# repeat. The copy moves 2 x 64 MiB (read + write), well beyond any last-level cache of a slice.
MATMUL_N = 1024
COPY_BYTES = 64 * 2**20
REPEATS = 5


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

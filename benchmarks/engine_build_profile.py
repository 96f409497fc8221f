"""Where a static engine's build goes (issue 19): cProfile of TorchEngine's constructor, in a fresh
process, twice (the first build pays the process's one-time CUDA costs, the second does not).

    python benchmarks/engine_build_profile.py --models gpt2 llama-2-7b --out DIR

The cells of the first GPU chunk (benchmarks/results/paper-h100/) recorded 2.4-3.4 s for the
weights alone ("engine_parts_s": model), GPT-2 124M included, so the time is not the weights'
size. Writes DIR/engine-build-profile.json (per model and build: seconds, and the 30 functions
with the largest cumulative time) and prints a summary. Nothing is measured for a result.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "workflow"))


def top(profile: cProfile.Profile, n: int = 30) -> list[dict]:
    """The n entries with the largest cumulative time: function, calls, tottime and cumtime (s)."""
    stats = pstats.Stats(profile)
    rows = []
    for (file, line, name), (cc, nc, tt, ct, _) in stats.stats.items():
        rows.append({"function": f"{Path(file).name}:{line}({name})", "calls": nc,
                     "tottime_s": round(tt, 4), "cumtime_s": round(ct, 4)})  # fmt: skip
    return sorted(rows, key=lambda r: -r["cumtime_s"])[:n]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["gpt2", "llama-2-7b"], help="architectures")
    p.add_argument("--dtype", default="float16")
    p.add_argument("--out", type=Path, required=True, help="folder for the JSON record")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    import torch

    record: dict = {"import_torch_s": time.perf_counter() - t0, "builds": []}
    from tokencarbon.backends.static import TorchEngine
    from tokencarbon.models import load_architecture

    record["import_engine_s"] = time.perf_counter() - t0 - record["import_torch_s"]
    record["device_name"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    for name in args.models:
        for k in range(2):
            profile = cProfile.Profile()
            start = time.perf_counter()
            profile.enable()
            engine = TorchEngine(load_architecture(name), args.dtype, "cuda", seed=0)
            torch.cuda.synchronize()
            profile.disable()
            seconds = time.perf_counter() - start
            record["builds"].append({"model": name, "build": k, "seconds": seconds,
                                     "engine_parts_s": engine.build_s, "top": top(profile)})  # fmt: skip
            print(f"{name} build {k}: {seconds:.2f} s", flush=True)
            for row in top(profile, 12):
                print(f"   {row['cumtime_s']:8.3f} {row['tottime_s']:8.3f} {row['calls']:6d} "
                      f"{row['function']}")  # fmt: skip
            del engine
            torch.cuda.empty_cache()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "engine-build-profile.json").write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

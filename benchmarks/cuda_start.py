"""Where a GPU cell's first seconds go before its engine builds (issue 19): CUDA's start, timed
in fresh processes, alone and while another process holds NVML open.

    python benchmarks/cuda_start.py --out benchmarks/results/h100-cuda-start.json [--runs 3]

Each run is a new Python process that times, in order: `import torch`; `torch.cuda.is_available()`
(the driver's cuInit); the primary context (`torch.empty(1, device="cuda")`); the device's name;
NVML's init and the five reads of tokencarbon.power.nvml.describe_gpu; the first fp16 matmul
(cuBLAS's handle and workspace); the first `torch.cuda.synchronize()`. The cell's
"hardware_check" phase (tokencarbon.cell) is the second to fifth of these.

Conditions, `--runs` processes each:
- "alone": nothing else of ours has NVML or CUDA open;
- "nvml_held": a second process holds NVML initialised (nvmlInit, a handle) for the whole run.
  With persistence mode off, the driver tears the GPU's state down when its last client closes
  and builds it again for the next one (NVIDIA's driver persistence documentation); a client that
  stays open keeps it. The record says the persistence mode NVML reports, so the two conditions
  can be read against it.

Nothing here changes a device setting. Writes one JSON record (--out); prints it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

CHILD = r"""
import json, time
t0 = time.perf_counter()
import torch
t1 = time.perf_counter()
ok = torch.cuda.is_available()
t2 = time.perf_counter()
x = torch.empty(1, device="cuda")
torch.cuda.synchronize()
t3 = time.perf_counter()
name = torch.cuda.get_device_name(0)
t4 = time.perf_counter()
import pynvml
pynvml.nvmlInit()
h = pynvml.nvmlDeviceGetHandleByIndex(0)
pynvml.nvmlDeviceGetName(h); pynvml.nvmlDeviceGetUUID(h); pynvml.nvmlSystemGetDriverVersion()
pynvml.nvmlDeviceGetEnforcedPowerLimit(h); pynvml.nvmlDeviceGetMemoryInfo(h)
pynvml.nvmlShutdown()
t5 = time.perf_counter()
a = torch.ones(1024, 1024, device="cuda", dtype=torch.float16)
(a @ a).sum().item()
t6 = time.perf_counter()
torch.cuda.synchronize()
t7 = time.perf_counter()
print("CUDA-START " + json.dumps({"device_name": name, "available": ok, "phases_s": {
    "import_torch": t1 - t0, "cuinit": t2 - t1, "context": t3 - t2, "device_name": t4 - t3,
    "nvml_describe": t5 - t4, "first_matmul": t6 - t5, "synchronize": t7 - t6,
    "hardware_check_like": t5 - t1}}))
"""

HOLDER = r"""
import sys, time, pynvml
pynvml.nvmlInit()
pynvml.nvmlDeviceGetHandleByIndex(0)
print("held", flush=True)
sys.stdin.read()
pynvml.nvmlShutdown()
"""


def child_run() -> dict:
    """One fresh process's phases (seconds, time.perf_counter). Raises RuntimeError if it fails."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=300)
    wall = time.perf_counter() - start
    line = next((x for x in proc.stdout.splitlines() if x.startswith("CUDA-START ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"child failed ({proc.returncode}): {proc.stderr[-2000:]}")
    out = json.loads(line.removeprefix("CUDA-START "))
    out["process_wall_s"] = wall
    return out


def persistence_mode() -> str | None:
    """NVML's persistence mode of GPU 0 ("enabled", "disabled") or None where NVML cannot say."""
    import pynvml

    try:
        pynvml.nvmlInit()
        try:
            mode = pynvml.nvmlDeviceGetPersistenceMode(pynvml.nvmlDeviceGetHandleByIndex(0))
        finally:
            pynvml.nvmlShutdown()
    except pynvml.NVMLError:
        return None
    return "enabled" if mode == pynvml.NVML_FEATURE_ENABLED else "disabled"


def bytecode_state() -> dict:
    """sys.dont_write_bytecode, PYTHONPYCACHEPREFIX, and whether torch/__init__.py has a cached
    .pyc for this Python where the import system would look (importlib.util.cache_from_source)."""
    import importlib.util

    spec = importlib.util.find_spec("torch")
    pyc = None
    if spec is not None and spec.origin:
        pyc = Path(importlib.util.cache_from_source(spec.origin)).is_file()
    return {"dont_write_bytecode": sys.dont_write_bytecode,
            "pycache_prefix": sys.pycache_prefix, "torch_init_pyc_cached": pyc}  # fmt: skip


def condition(runs: int, hold: bool) -> list[dict]:
    """`runs` fresh processes, with an NVML holder process alive around them when `hold`."""
    holder = None
    if hold:
        holder = subprocess.Popen([sys.executable, "-c", HOLDER], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)  # fmt: skip
        if holder.stdout.readline().strip() != "held":
            raise RuntimeError("the NVML holder did not start")
        time.sleep(1.0)
    try:
        return [child_run() for _ in range(runs)]
    finally:
        if holder is not None:
            holder.stdin.close()
            holder.wait(timeout=30)


def summary(rows: list[dict]) -> dict:
    """Median per phase over the runs (seconds)."""
    phases = rows[0]["phases_s"].keys()
    return {p: statistics.median(r["phases_s"][p] for r in rows) for p in phases} | {
        "process_wall_s": statistics.median(r["process_wall_s"] for r in rows)
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="the JSON record to write")
    p.add_argument("--runs", type=int, default=3, help="fresh processes per condition")
    args = p.parse_args(argv)
    if args.runs < 1:
        p.error(f"--runs {args.runs}: give 1 or more")
    record = {
        "benchmark": "cuda_start",
        "host": platform.node(),
        "python": sys.version.split()[0],
        "persistence_mode": persistence_mode(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        # whether this Python may cache bytecode, and whether torch's own is cached: the H100
        # machine's processes compiled torch.fx and sympy from source on every start
        # (h100-engine-build-profile.json: 3.1 s in builtins.compile)
        "bytecode": bytecode_state(),
        "conditions": {},
    }
    # alone first, then held, then alone again: a first-ever start (driver load) shows as an
    # outlier of the first "alone" run and not of the second set
    for label, hold in (("alone", False), ("nvml_held", True), ("alone_again", False)):
        rows = condition(args.runs, hold)
        record["conditions"][label] = {"runs": rows, "median_s": summary(rows)}
    record["device_name"] = record["conditions"]["alone"]["runs"][0]["device_name"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps({k: v["median_s"] for k, v in record["conditions"].items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

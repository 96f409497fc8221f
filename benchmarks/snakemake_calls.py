"""What a Snakemake call costs beside its cell jobs: the same cells measured again, one call per
cell and then one call for all of them (one job at a time, as run_chunks groups small cells),
in a study whose other outputs are already made. Per call: its wall seconds, the seconds of its
jobs' own timelines (meta.json "timeline": process start to meta.json written), and the rest,
"outside" the jobs (Snakemake's start, DAG, scheduling and exit). Writes a JSON record.

    make run    # once: the default study, whose cells are then measured again here
    python benchmarks/snakemake_calls.py --cells cpu/tiny-gpt2/bs2 cpu/tiny-gpt2/bs4 \
        cpu/tiny-llama/bs2 cpu/tiny-llama/bs4 --rounds 2 --out benchmarks/results/cpu-chunk-calls.json

Each round removes the cells' outputs and measures them in both ways; the cells' files are
measured again each time (the study's tables are not rebuilt).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from tokencarbon import hardware
from tokencarbon.files import write_json

HERE = Path(__file__).resolve().parent

OUTPUTS = ("batches.parquet", "power.parquet", "meta.json", "requests.parquet", "steps.parquet")


def call(workdir: Path, snakemake: str, study: str, cells: list[str]) -> dict:
    """One Snakemake call (--cores 1) for `cells`' meta.json after removing their outputs: its
    wall seconds, its jobs' timeline seconds and the difference."""
    folders = [workdir / "results" / study / "cells" / c for c in cells]
    for folder in folders:
        for name in OUTPUTS:
            (folder / name).unlink(missing_ok=True)
    targets = [str(f.relative_to(workdir) / "meta.json") for f in folders]
    start = time.perf_counter()
    done = subprocess.run([snakemake, "--cores", "1", *targets], cwd=workdir,
                          capture_output=True, text=True)  # fmt: skip
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"snakemake failed for {cells}:\n{done.stderr[-3000:]}")
    jobs = 0.0
    for folder in folders:
        phases = json.loads((folder / "meta.json").read_text())["timeline"]["phases"]
        jobs += (phases[-1]["end_wall_ns"] - phases[0]["start_wall_ns"]) / 1e9
    return {"cells": cells, "wall_s": round(wall, 3), "jobs_s": round(jobs, 3),
            "outside_s": round(wall - jobs, 3)}  # fmt: skip


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cells", nargs="+", required=True, help="platform/model/cell names")
    p.add_argument("--study", default="default")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--workdir", type=Path, default=HERE.parent)
    p.add_argument("--snakemake", default=str(Path(sys.executable).with_name("snakemake")))
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    single, grouped = [], []
    for r in range(a.rounds):
        for cell in a.cells:
            single.append(call(a.workdir, a.snakemake, a.study, [cell]))
            print(f"round {r + 1}, {cell} alone: {single[-1]}", flush=True)
        grouped.append(call(a.workdir, a.snakemake, a.study, list(a.cells)))
        print(f"round {r + 1}, all in one call: {grouped[-1]}", flush=True)
    n = len(a.cells)
    record = {
        "benchmark": "snakemake_calls",
        "command": " ".join(sys.argv),
        "machine": {"hardware": hardware.detect("cpu"), "software": hardware.software_versions()},
        "cells": a.cells,
        "one_call_per_cell": single,
        "one_call_for_all": grouped,
        "outside_per_cell_s": {
            "one_call_per_cell_median": round(statistics.median(c["outside_s"] for c in single), 3),
            "one_call_for_all_median": round(statistics.median(c["outside_s"] / n for c in grouped), 3),
        },
    }
    write_json(a.out, record)
    print(json.dumps(record["outside_per_cell_s"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""How long the embedded default's DAG takes on this machine, and a no-op rerun.

Runs `snakemake --cores 1 all` in a fresh copy of the project (installation excluded: the venv
exists), then again with nothing changed. Targets (issue 19): <= 240 s for the first run on a 2-core
machine, <= 5 s for the no-op rerun (records before 2026-12-07 evening held the earlier 180 s).
Appends a record to benchmarks/results/dag_runtime.jsonl and prints the figures.

The record names the Snakemake executor plugins installed: Snakemake imports every one when it
starts, and the SLURM plugin (the `slurm` extra, `make test-slurm`) runs `scontrol show config`
while it is imported, which waits 9 s on a machine whose SLURM controller is down (seen here): each
Snakemake start pays that, a no-op rerun included.

    .venv/bin/python benchmarks/dag_runtime.py
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECORD = REPO / "benchmarks/results/dag_runtime.jsonl"
TARGETS_S = {"full_run_s": 240.0, "noop_rerun_s": 5.0}


def timed(cmd: list[str], cwd: Path) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return elapsed


def main() -> None:
    import argparse

    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    snakemake = [sys.executable, "-m", "snakemake", "--cores", "1", "all"]
    with tempfile.TemporaryDirectory(prefix="tokencarbon-bench-") as tmp:
        project = Path(tmp)
        for name in ["Snakefile", "workflow", "resources", "profiles", "config"]:
            (project / name).symlink_to(REPO / name)
        full_s = timed(snakemake, project)
        noop_s = timed(snakemake, project)
        # the default study's folder (config/config.yaml: study default)
        cells = len(list((project / "results/default/cells").glob("*/*/*/meta.json")))  # bs and cb
    git = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    record = {
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "git_commit": git.stdout.strip(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs",
        "cells": cells,
        "executor_plugins": sorted(
            d.metadata["Name"] for d in metadata.distributions()
            if (d.metadata["Name"] or "").lower().startswith("snakemake-executor-plugin-")
        ),
        "full_run_s": round(full_s, 2),
        "noop_rerun_s": round(noop_s, 2),
        "targets_s": TARGETS_S,
        "met": {k: record_value <= TARGETS_S[k] for k, record_value in
                [("full_run_s", full_s), ("noop_rerun_s", noop_s)]},
    }
    RECORD.parent.mkdir(parents=True, exist_ok=True)
    with RECORD.open("a") as f:
        f.write(json.dumps(record) + "\n")
    print(f"{'measure':<16}{'seconds':>10}{'target':>10}{'met':>6}")
    for key in ["full_run_s", "noop_rerun_s"]:
        print(f"{key:<16}{record[key]:>10.2f}{TARGETS_S[key]:>10.0f}{str(record['met'][key]):>6}")
    print(f"{cells} cells; record appended to {RECORD.relative_to(REPO)}")


if __name__ == "__main__":
    main()

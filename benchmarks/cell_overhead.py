"""Where a cell job's time goes (issue 19): runs cells through Snakemake and times each job from its
process start to its exit, against its measured windows.

    python benchmarks/cell_overhead.py --out benchmarks/results/cpu-cell-overhead.json \
        --label after --targets results/default/cells/cpu/tiny-llama/bs4/meta.json \
                                results/default/cells/cpu/tiny-llama/cb4/meta.json

For each target the script first runs Snakemake once to make what the cells need and not the cells
(`--omit-from` the cell rules: dataset, workload, engine manifest; timed as "setup"; --setup-from
copies those results from another checkout instead, so a before/after pair shares one workload),
then runs the target's own job `--passes` times (`snakemake --force <target>`: only that cell). Before a "cold" pass the study's
compilation cache (results/.cache/compile) is removed; later passes find it warm. While Snakemake
runs, a thread polls its process tree every 10 ms for the job's script process (Snakemake writes
it as .snakemake/scripts/tmp*.run_cell.py), taking its start from the kernel (/proc) and its end
as the first poll that no longer sees it.

Per job the record holds: the job's wall time; its measured span (first window start to last
window end, from batches.parquet's wall clocks, which every version of a cell writes); the time
before that span opened and after it closed; the cell's own timeline (meta.json "timeline",
phase by phase, where the code records one); the token digests and J/token of the windows
(energy from the cell's power samples through tokencarbon.energy, the integrator metrics use),
so cold and warm passes can be compared. Fixed cost = job wall - measured span - the configured
idle window (power.idle_s, or 0 where the cell reused a shared window).

--repo runs another checkout's workflow (e.g. an older commit, for a before/after record);
its own package is used, this script only reads the files cells write.
"""

from __future__ import annotations

import argparse
import json
import os
import platform as pyplatform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "workflow"))

from tokencarbon import tables  # noqa: E402
from tokencarbon.energy import window_energy  # noqa: E402
from tokencarbon.timeline import process_start_wall_ns  # noqa: E402
from tokencarbon.units import NS_PER_S  # noqa: E402

POLL_S = 0.01


class JobWatch:
    """Polls the process tree of `root_pid` for processes whose command line holds `marker`;
    records each one's start (from /proc) and end (first poll without it), wall-clock ns."""

    def __init__(self, root_pid: int, marker: str):
        self.root, self.marker = psutil.Process(root_pid), marker
        self.jobs: dict[int, dict] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            seen = set()
            try:
                children = self.root.children(recursive=True)
            except psutil.Error:
                children = []
            for proc in children:
                try:
                    cmdline = " ".join(proc.cmdline())
                except psutil.Error:
                    continue
                if self.marker in cmdline:
                    seen.add(proc.pid)
                    if proc.pid not in self.jobs:
                        self.jobs[proc.pid] = {"start_wall_ns": process_start_wall_ns(proc.pid),
                                               "end_wall_ns": None}  # fmt: skip
            now = time.time_ns()
            for pid, job in self.jobs.items():
                if job["end_wall_ns"] is None and pid not in seen:
                    job["end_wall_ns"] = now
            time.sleep(POLL_S)

    def __enter__(self) -> JobWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        now = time.time_ns()
        for job in self.jobs.values():
            if job["end_wall_ns"] is None:
                job["end_wall_ns"] = now


def snakemake(repo: Path, args: list[str], snakemake_bin: str, marker: str | None = None):
    """Run Snakemake in `repo`; returns (seconds, the watched jobs or {}); raises on failure."""
    cmd = [snakemake_bin, *args]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)  # fmt: skip
    jobs: dict = {}
    if marker:
        with JobWatch(proc.pid, marker) as watch:
            out, _ = proc.communicate()
        jobs = watch.jobs
    else:
        out, _ = proc.communicate()
    seconds = time.monotonic() - start
    if proc.returncode != 0:
        sys.stderr.write(out[-6000:])
        raise SystemExit(f"snakemake {' '.join(args)} failed ({proc.returncode})")
    return seconds, jobs


def cell_facts(cell_dir: Path, job: dict) -> dict:
    """What one finished job measured and cost (see the module docstring)."""
    meta = json.loads((cell_dir / "meta.json").read_text())
    batches = tables.read(cell_dir / "batches.parquet", tables.BATCHES)
    power = tables.read(cell_dir / "power.parquet", tables.POWER)
    run = power[power["phase"] == "run"]
    first, last = int(batches["start_wall_ns"].min()), int(batches["end_wall_ns"].max())
    energy_j = sum(
        window_energy(run, int(b.start_wall_ns), int(b.end_wall_ns)).energy_j
        for b in batches.itertuples()
    )
    tokens = int(batches["output_tokens"].sum())
    idle = meta.get("idle_window") or {}
    idle_s = 0.0 if idle.get("shared") else float(meta["config"]["platform"]["idle_s"])
    job_s = (job["end_wall_ns"] - job["start_wall_ns"]) / NS_PER_S
    measured_s = (last - first) / NS_PER_S
    timeline = meta.get("timeline")
    return {
        "cell": str(cell_dir),
        "git_commit": meta.get("git_commit"),
        "device_name": meta.get("device_name"),
        "job_s": job_s,
        "before_window_s": (first - job["start_wall_ns"]) / NS_PER_S,
        "after_window_s": (job["end_wall_ns"] - last) / NS_PER_S,
        "measured_span_s": measured_s,
        "idle_window_s": idle_s,
        "fixed_s": job_s - measured_s - idle_s,
        "output_tokens": tokens,
        "energy_j": energy_j,
        "j_per_token": energy_j / tokens,
        "token_digests": meta.get("token_digests"),
        "compile_cache": meta.get("compile_cache"),
        "engine_parts_s": meta.get("engine_parts_s"),
        "warmup": meta.get("warmup"),
        "phases_s": (
            None if timeline is None
            else {p["phase"]: round(p["seconds"], 4) for p in timeline["phases"]}
        ),  # fmt: skip
        "exit_after_meta_s": (
            None if timeline is None
            else (job["end_wall_ns"] - meta["finished_wall_ns"]) / NS_PER_S
        ),  # fmt: skip
    }


def study_folder(checkout: Path, configfile: str | None, study: str | None = None) -> Path:
    """Where `checkout` puts the study's outputs: results/<study>/ (`study`, else the config's
    `study`, else "default") where its layout has study folders (tokencarbon/study.py exists,
    from issue 24), else results/ (older trees, e.g. a .before/ copy)."""
    if not (checkout / "workflow" / "tokencarbon" / "study.py").exists():
        return checkout / "results"
    if study is None and configfile:
        import yaml

        study = (yaml.safe_load(Path(configfile).read_text()) or {}).get("study")
    return checkout / "results" / (study or "default")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--targets", nargs="+", required=True, help="cells' meta.json paths")
    p.add_argument("--out", required=True, type=Path, help="the JSON record to write")
    p.add_argument("--label", required=True, help="e.g. before / after")
    p.add_argument("--repo", type=Path, default=HERE.parent, help="checkout whose workflow runs")
    p.add_argument("--configfile", default=None)
    p.add_argument("--config", nargs="*", default=[], help="passed to snakemake --config")
    p.add_argument("--passes", type=int, default=2, help="runs per cell; the first is cold")
    p.add_argument("--cores", type=int, default=1)
    p.add_argument("--snakemake", default=shutil.which("snakemake") or "snakemake")
    p.add_argument("--setup-from", type=Path, default=None,
                   help="a checkout whose study folder's dataset, tokenizer, workload, engines to copy")
    p.add_argument("--setup-from-study", default=None,
                   help="the study folder to copy from in --setup-from (default: this config's)")
    a = p.parse_args()

    repo = a.repo.resolve()
    common = ["--cores", str(a.cores)]
    if a.configfile:
        common += ["--configfile", a.configfile]
    if a.config:
        common += ["--config", *a.config]
    record = {
        "label": a.label,
        "repo": str(repo),
        "host": pyplatform.node(),
        "cpus": os.cpu_count(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "snakemake_args": common,
        "passes": a.passes,
        "cells": [],
    }
    # Setup: everything the cells need, not the cells.
    if a.setup_from is not None:
        for part in ("dataset", "tokenizer", "workload", "engines"):
            src = study_folder(a.setup_from.resolve(), a.configfile, a.setup_from_study) / part
            if src.exists():
                shutil.copytree(src, study_folder(repo, a.configfile) / part, dirs_exist_ok=True)
    setup_s, _ = snakemake(  # targets first: --configfile and --config take every word after them
        repo, [*a.targets, *common, "--omit-from", "run_cell", "run_continuous_cell"], a.snakemake
    )
    record["setup_s"] = setup_s

    def save() -> None:  # after every job: a run stopped part-way keeps what it measured
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(record, indent=2) + "\n")

    for target in a.targets:
        cell_dir = repo / Path(target).parent
        for n in range(a.passes):
            cold = n == 0
            if cold:
                shutil.rmtree(repo / "results" / ".cache" / "compile", ignore_errors=True)
            seconds, jobs = snakemake(
                repo, [target, "--force", *common], a.snakemake, marker="run_cell.py"
            )
            if len(jobs) != 1:
                raise SystemExit(f"{target}: expected one cell job, saw {len(jobs)}: {jobs}")
            facts = cell_facts(cell_dir, next(iter(jobs.values())))
            facts |= {"pass": n, "cache": "cold" if cold else "warm", "snakemake_s": seconds}
            record["cells"].append(facts)
            save()
            print(json.dumps({k: facts[k] for k in ("cell", "pass", "job_s", "before_window_s",
                  "measured_span_s", "fixed_s", "j_per_token")}), flush=True)  # fmt: skip
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())

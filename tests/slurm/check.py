"""Helpers for tests/slurm/run.sh: lay out a project copy, and check that a run went through SLURM
and built what a local run builds. Each subcommand exits 1 with a message naming what is wrong."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import NoReturn

import pyarrow.parquet as pq
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from harness import Project, tiny_study  # noqa: E402  (the DAG tests' tiny study, .test/config-cpu)

# Its two unquantized models, one repeat: a small grid that still has static and continuous cells.
SMALL = tiny_study(models=["tiny-llama", "tiny-gpt2"], run={"repeats": 1})

# Snakemake's line for each job the slurm executor submitted (snakemake-executor-plugin-slurm 2.8.0).
SUBMITTED = re.compile(r"Job \d+ has been submitted with SLURM jobid (\d+) \(log: \S*/rule_(\w+)/")
# Snakemake's line for a job it ran in its own process instead of submitting it.
LOCAL = re.compile(r"^local(?:rule|checkpoint) (\w+):", re.M)


def fail(message: str) -> NoReturn:
    print(f"FAIL: {message}", file=sys.stderr)
    sys.exit(1)


def outputs(project: Path) -> dict[str, list[str] | None]:
    """Every file under results/ (the study's folder, results/<study>/; .cache left out) by
    relative path, with its column names where it is a table."""
    found: dict[str, list[str] | None] = {}
    for path in sorted((project / "results").rglob("*")):
        if path.is_file() and not any(part.startswith(".") for part in path.parts):
            rel = str(path.relative_to(project))
            found[rel] = pq.read_schema(path).names if path.suffix == ".parquet" else None
    return found


def cells(project: Path) -> set[tuple[str, str, int]]:
    table = pq.read_table(Project(project).results / "tables/cells.parquet",
                          columns=["platform", "model", "batch_size"])  # fmt: skip
    return set(zip(*(table.column(c).to_pylist() for c in ["platform", "model", "batch_size"])))


def compare(local: Path, slurm: Path) -> None:
    """The SLURM run built the same files, tables with the same columns, and the same cells."""
    mine, theirs = outputs(slurm), outputs(local)
    if mine.keys() != theirs.keys():
        fail(f"results/ differ: only in the SLURM run {sorted(mine.keys() - theirs.keys())}, "
             f"only in the local run {sorted(theirs.keys() - mine.keys())}")
    for rel, columns in mine.items():
        if columns != theirs[rel]:
            fail(f"{rel}: columns {columns} in the SLURM run, {theirs[rel]} in the local run")
    if cells(slurm) != cells(local):
        fail(f"cells.parquet: {sorted(cells(slurm))} in the SLURM run, {sorted(cells(local))} locally")
    print(f"same {len(mine)} files under results/ and {len(cells(slurm))} cells as the local run")


def submitted(snakemake_log: Path) -> list[tuple[str, str]]:
    """(SLURM job id, rule) of every job the run submitted, in order."""
    return SUBMITTED.findall(snakemake_log.read_text())


def _profile_cpus() -> dict[str, int]:
    """rule -> cpus_per_task as profiles/slurm/config.yaml's set-resources gives it (a number)."""
    profile = Path(__file__).resolve().parents[2] / "profiles/slurm/config.yaml"
    resources = yaml.safe_load(profile.read_text())["set-resources"]
    return {r: int(v["cpus_per_task"]) for r, v in resources.items() if "cpus_per_task" in v}


PROFILE_CPUS = _profile_cpus()


def evidence(snakemake_log: Path, slurmctld_log: Path, squeue_out: Path, local_log: Path) -> None:
    """Every job but `all` went through sbatch, ended COMPLETED with exit 0 in slurmctld's own
    records, and got what profiles/slurm asks; the rules and job counts are the local run's."""
    jobs = submitted(snakemake_log)
    ran_here = LOCAL.findall(snakemake_log.read_text())
    if ran_here != ["all"]:
        fail(f"{snakemake_log}: jobs run outside SLURM: {ran_here} (only the target rule `all` may be)")
    local_rules = sorted(r for r in LOCAL.findall(local_log.read_text()) if r != "all")
    if sorted(rule for _, rule in jobs) != local_rules:
        fail(f"{snakemake_log}: submitted rules {sorted(r for _, r in jobs)}, the local run ran {local_rules}")
    ctld = slurmctld_log.read_text()
    # squeue --states=all keeps finished jobs for MinJobAge: id|state|comment|partition|cpus|mem|limit
    queue = {row[0]: row[1:] for row in (line.split("|") for line in squeue_out.read_text().split())}
    for job_id, rule in jobs:
        if not re.search(rf"_job_complete: JobId={job_id} WEXITSTATUS 0\b", ctld):
            fail(f"{slurmctld_log}: no 'WEXITSTATUS 0' for SLURM job {job_id} (rule {rule})")
        state, comment, partition, cpus, mem, limit = queue.get(job_id, ["missing"] * 6)
        # profiles/slurm on the cpu platform: the rules it gives cpus_per_task (cells, probes,
        # measure_platform: 2), every other job 1; all 4000 MB and 30 min on the default
        # partition (named main in run.sh's slurm.conf)
        cpus = str(PROFILE_CPUS.get(rule, 1))
        wanted = ["COMPLETED", f"rule_{rule}", "main", cpus, "4000M", "30:00"]
        got = [state, comment.split("_wildcards_")[0], partition, cpus, mem, limit]
        if got != wanted:
            fail(f"{squeue_out}: SLURM job {job_id} (rule {rule}) has {got}, expected {wanted}")
    n_cells = sum(rule == "run_cell" for _, rule in jobs)
    print(f"{len(jobs)} SLURM jobs COMPLETED with exit 0 and the profile's resources, {n_cells} of them cells")


def gpu_cell(snakemake_log: Path, scontrol_out: Path, cell_log: Path) -> None:
    """A GPU-platform cell went out as a GPU job on the mapped partition and GRES type, and, given
    no such GPU, the cell itself refused to run (HardwareMismatchError) rather than measuring a CPU."""
    jobs = [job_id for job_id, rule in submitted(snakemake_log) if rule == "run_cell"]
    if len(jobs) != 1:
        fail(f"{snakemake_log}: expected one run_cell submission, found SLURM jobs {jobs}")
    job = scontrol_out.read_text()
    # profiles/slurm on h100-sxm-80gb: 2 CPUs, 64000 MB (= 62.5 GiB), 240 min, one H100
    for wanted in ["Partition=gpu", "TRES=cpu=2,mem=62.50G,", "TimeLimit=04:00:00", "TresPerJob=gres:gpu:h100:1"]:
        if wanted not in job:
            fail(f"{scontrol_out}: SLURM job {jobs[0]} lacks {wanted}:\n{job}")
    if "HardwareMismatchError" not in cell_log.read_text():
        fail(f"{cell_log}: the cell did not stop with HardwareMismatchError")
    print(f"GPU cell: SLURM job {jobs[0]} on partition gpu with gres gpu:h100:1; the cell refused a non-H100")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("make").add_argument("project", type=Path)
    p = sub.add_parser("compare")
    p.add_argument("local", type=Path)
    p.add_argument("slurm", type=Path)
    p = sub.add_parser("evidence")
    for name in ["snakemake_log", "slurmctld_log", "squeue_out", "local_log"]:
        p.add_argument(name, type=Path)
    p = sub.add_parser("gpu-cell")
    for name in ["snakemake_log", "scontrol_out", "cell_log"]:
        p.add_argument(name, type=Path)
    args = parser.parse_args()
    if args.command == "make":
        args.project.mkdir(parents=True, exist_ok=True)
        Project.make(args.project, SMALL, copy_code=True)  # jobs run the copy's package
    elif args.command == "compare":
        compare(args.local, args.slurm)
    elif args.command == "evidence":
        evidence(args.snakemake_log, args.slurmctld_log, args.squeue_out, args.local_log)
    else:
        gpu_cell(args.snakemake_log, args.scontrol_out, args.cell_log)


if __name__ == "__main__":
    main()

"""Faults of a real Snakemake run (slow): Snakemake SIGKILLed mid-cell, then --unlock and the rerun
its lock message suggests; and two CPU cells under --cores 2. Issue 10 §7: a cell dies with its
Snakemake (no orphan measuring beside the rerun), the rerun's numbers equal an undisturbed run's
within the spread between processes or the cell is flagged (foreign CPU use, steal), and cells
never share CPUs at the same time."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
from harness import SNAKEMAKE, Project, tiny_study

from tokencarbon.layout import study_name, study_root

pytestmark = pytest.mark.slow

# The tiny CPU study (.test/config-cpu) on one model, 16 prompts, static batches 1 and 2, two
# repeats in one process (each cell's time per token is their mean).
CONFIG = tiny_study(models=["tiny-llama"], workload={"num_prompts": 16, "synthetic_conversations": 2000},
                    sweep={"max_num_seqs": []}, run={"repeats": 2})  # fmt: skip
# the study's folder (results/<study>/, tokencarbon.layout): where its cells lie
ROOT = study_root(study_name(CONFIG))
CELL = f"{ROOT}/cells/cpu/tiny-llama/bs1"
# A cell is flagged as disturbed when other processes took more than this share of its CPUs
# (the value HA's QA flag uses is its own; this test only needs "clearly disturbed").
FLAG_SHARE = 0.05


def project(tmp: Path) -> tuple[Path, dict]:
    where = Project.make(tmp, CONFIG).path
    return where, os.environ | {"TOKENCARBON_LEASE_DIR": str(where / "leases")}


def snakemake(where: Path, env: dict, *args: str) -> None:
    Project(where).run(*args, env=env)


def s_per_token(cell: Path) -> list[float]:
    """Measured time per output token of each repeat, over its batches."""
    b = pd.read_parquet(cell / "batches.parquet")
    b["s"] = (b["end_ns"] - b["start_ns"]) / 1e9
    per_repeat = b.groupby("repeat")[["s", "output_tokens"]].sum()
    return (per_repeat["s"] / per_repeat["output_tokens"]).tolist()


def holder_pid(lock: Path) -> int | None:
    try:
        return json.loads(lock.read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return None


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, dict]:
    """A project with its workload and engine built (the cells' inputs), shared by the tests."""
    where, env = project(tmp_path_factory.mktemp("fault"))
    snakemake(where, env, "results/workload/tiny-llama.parquet",
              "results/engines/cpu/tiny-llama/torch/manifest.json")  # fmt: skip
    return where, env


def test_snakemake_sigkilled_mid_cell_leaves_no_orphan_and_the_rerun_is_true(built):
    where, env = built
    cell = where / CELL
    target = f"{CELL}/meta.json"
    # An undisturbed run: the reference time per token on this machine.
    snakemake(where, env, target, "--forcerun", "run_cell")
    reference = s_per_token(cell)

    proc = subprocess.Popen(SNAKEMAKE + ["--cores", "2", target, "--forcerun", "run_cell"],
                            cwd=where, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    lock = where / "leases" / f"cpu{min(os.sched_getaffinity(0))}.lock"
    deadline = time.time() + 300
    # mid-cell: the sidecar's samples flowing (its one process samples the idle and the run
    # windows into .power.parquet.parts), the cell holding its CPU lease
    while not list(cell.glob(".power.parquet.parts/part-*.parquet")):
        assert proc.poll() is None and time.time() < deadline, "the cell ended before the kill"
        time.sleep(0.05)
    cell_pid = holder_pid(lock)
    assert cell_pid is not None and alive(cell_pid)
    tree = [cell_pid] + [p.pid for p in psutil.Process(cell_pid).children(recursive=True)]
    assert len(tree) >= 2  # the cell and its power sidecar
    os.kill(proc.pid, signal.SIGKILL)  # Snakemake only: nothing tells its job
    proc.wait()
    deadline = time.time() + 15
    while any(alive(pid) for pid in tree) and time.time() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in tree if alive(pid)], "the cell or its sidecar outlived Snakemake"
    assert holder_pid(lock) is None or not alive(holder_pid(lock))  # the lease is free
    assert not (cell / "meta.json").exists(), "a killed cell must not look finished"

    # What the user does next: unlock, then rerun (the profile reruns incomplete jobs).
    snakemake(where, env, "--unlock")
    snakemake(where, env, target)
    meta = json.loads((cell / "meta.json").read_text())
    rerun = s_per_token(cell)
    # The rerun's time per token equal to the undisturbed run's within a factor of 2, or the cell
    # flagged as disturbed (other processes on its CPUs, or the hypervisor's steal). Between two
    # processes these 2-core VMs disagree far more than two repeats in one process do, both ways
    # and with neither flag: CI measured a rerun's repeats 19 % and 57 % slower than the reference
    # (foreign share 0.001, 2026-12-01), this machine a reference 1.25x slower than its rerun
    # (foreign 0.001, steal 0.0006, the same day). The fault this guards against is far outside a
    # factor of 2: the orphan measuring beside the rerun made it 6.5x slower (10.7 vs 1.65
    # ms/token, issue 10 §7).
    ratio = (sum(rerun) / len(rerun)) / (sum(reference) / len(reference))
    within = 0.5 <= ratio <= 2.0
    flagged = meta["foreign_cpu_share"] > FLAG_SHARE or meta["cpu_steal_share"] > FLAG_SHARE
    assert within or flagged, (reference, rerun, meta["foreign_cpu_share"],
                               meta["cpu_steal_share"], meta["foreign_use"])  # fmt: skip
    assert meta["n_batches"] == 16 and meta["repeats"] == 2 and meta["cpu_lease"]["cpus"]


def test_two_cpu_cells_under_cores_2_never_share_a_cpu_at_once(built):
    where, env = built
    snakemake(where, env, f"{CELL}/meta.json", f"{ROOT}/cells/cpu/tiny-llama/bs2/meta.json",
              "--forcerun", "run_cell")  # fmt: skip
    metas = [json.loads((where / f"{ROOT}/cells/cpu/tiny-llama/bs{b}/meta.json").read_text())
             for b in (1, 2)]  # fmt: skip
    a, b = metas
    overlap_ns = min(a["window_end_wall_ns"], b["window_end_wall_ns"]) - max(
        a["window_start_wall_ns"], b["window_start_wall_ns"]
    )
    shared = set(a["cpu_lease"]["cpus"]) & set(b["cpu_lease"]["cpus"])
    # The platform describes 2 logical CPUs: on a 2-CPU machine both cells need both, so the
    # lease runs them one after the other; with more CPUs they get disjoint ones.
    assert overlap_ns <= 0 or not shared, (a["cpu_lease"], b["cpu_lease"], overlap_ns)

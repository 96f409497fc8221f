"""Adapter for rule run_cell (workflow/rules/inference.smk)."""

import os
import time

script_start_wall_ns = time.time_ns()  # the cell's timeline: Python and Snakemake's preamble end

import sys
from pathlib import Path

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from tokencarbon.lease import die_with_supervisor

# A SIGKILLed Snakemake must not leave its cell measuring, and holding its devices, as an orphan.
watched = die_with_supervisor(
    on_death=lambda pid: print(f"process {pid} that ran this cell exited: ending it", file=sys.stderr)
)
print(f"this cell ends when any of {watched} exits", file=sys.stderr)

from tokencarbon import tables
from tokencarbon.cell import run_cell
from tokencarbon.layout import CACHE

# The cell leases its devices itself (tokencarbon.lease: a GPU, or the platform's logical CPUs),
# before CUDA starts; the lease goes to the log and meta.json, never to params.
run_cell(
    model=snakemake.params.model,
    platform=snakemake.params.platform,
    run=snakemake.params.run,
    batch_size=int(snakemake.wildcards.batch),
    serving=getattr(snakemake.params, "serving", None),  # absent: a static cell
    server=getattr(snakemake.params, "server", None),  # backend openai_server only
    # which processes are the server's: from the config, not params (a restart reruns no cell)
    server_runtime={k: (snakemake.config["backend"].get("openai_server") or {}).get(k)
                    for k in ("server_pid", "server_cgroup")},
    workload=tables.read(snakemake.input.workload, tables.WORKLOAD),
    engine_manifest=getattr(snakemake.input, "engine", None),  # absent: a server cell
    out_batches=snakemake.output.batches,
    out_power=snakemake.output.power,
    out_meta=snakemake.output.meta,
    out_requests=getattr(snakemake.output, "requests", None),
    out_steps=getattr(snakemake.output, "steps", None),
    # results/.cache (layout.CACHE, beside every study's folder, shared by them): compilation
    # caches and shared idle windows survive between jobs and studies
    cache_root=Path(CACHE),
    script_start_wall_ns=script_start_wall_ns,
)
# Every file is written and closed (meta.json last): leave without the interpreter's teardown.
# Destroying the CUDA context, torch's compile workers and loaded Triton modules took 0.7-3.4 s
# per job on an H100 (benchmarks/results/h100-cell-overhead-*.json, "exit_after_meta_s"), time
# in which the card measures nothing and the next cell cannot start.
sys.stdout.flush()
sys.stderr.flush()
os._exit(0)


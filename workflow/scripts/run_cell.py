"""Adapter for rule run_cell (workflow/rules/inference.smk)."""

import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

import contextlib
import os

from tokencarbon import tables
from tokencarbon.cell import run_cell
from tokencarbon.lease import apply, lease_gpu

platform = snakemake.params.platform
cell = f"{platform['name']}/{snakemake.wildcards.model}/bs{snakemake.wildcards.batch}"
with contextlib.ExitStack() as stack:
    gpu = None
    if platform["kind"] == "gpu":
        # Concurrent cells on one node each take their own GPU; CUDA_VISIBLE_DEVICES is set
        # before CUDA starts. The index is host-specific: it goes to the log and meta.json only.
        lease = stack.enter_context(lease_gpu(f"/tmp/tokencarbon-gpu-leases-{os.getuid()}", cell=cell))
        gpu = apply(lease)
        print(f"{cell}: leased GPU {gpu}", file=sys.stderr)
    run_cell(
        model=snakemake.params.model,
        platform=platform,
        run=snakemake.params.run,
        batch_size=int(snakemake.wildcards.batch),
        workload=tables.read(snakemake.input.workload, tables.WORKLOAD),
        engine_manifest=snakemake.input.engine,
        out_batches=snakemake.output.batches,
        out_power=snakemake.output.power,
        out_meta=snakemake.output.meta,
        gpu_lease=gpu,
    )

"""Adapter for rule run_cell (workflow/rules/inference.smk)."""

import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from tokencarbon import tables
from tokencarbon.cell import run_cell

run_cell(
    model=snakemake.params.model,
    platform=snakemake.params.platform,
    run=snakemake.params.run,
    batch_size=int(snakemake.wildcards.batch),
    workload=tables.read(snakemake.input.workload, tables.WORKLOAD),
    out_batches=snakemake.output.batches,
    out_power=snakemake.output.power,
    out_meta=snakemake.output.meta,
)

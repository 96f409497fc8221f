"""Adapter for rule sample_workload (workflow/rules/dataset.smk)."""

import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from tokencarbon import tables
from tokencarbon.workload import sample_workload

pool = tables.read(snakemake.input.pool, tables.WORKLOAD)
sample = sample_workload(
    pool, snakemake.params.num_prompts, snakemake.params.seed, source=snakemake.input.pool
)
tables.write(sample, snakemake.output[0], tables.WORKLOAD)
print(
    f"{snakemake.input.pool}: sampled {len(sample)} of {len(pool)} requests "
    f"(seed {snakemake.params.seed})",
    file=sys.stderr,
)

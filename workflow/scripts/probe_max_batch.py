"""Adapter for checkpoint probe_max_batch (workflow/rules/probe.smk)."""

import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from tokencarbon import tables
from tokencarbon.probe import run_probe

result = run_probe(
    model=snakemake.params.model,
    platform=snakemake.params.platform,
    limits=snakemake.params.limits,
    workload=tables.read(snakemake.input.workload, tables.WORKLOAD),
    out_path=snakemake.output[0],
)
print(f"max batch {result['max_ok']}, first failure {result['min_failed']}", file=sys.stderr)

"""Adapter for rule compute_timeshift (workflow/rules/metrics.smk)."""

import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from tokencarbon import tables
from tokencarbon.carbon import CarbonAccounting
from tokencarbon.timeshift import study_timeshift

carbon = snakemake.params.carbon
accounting = CarbonAccounting.from_config(carbon, snakemake.input.trace)
df = study_timeshift(
    tables.read(snakemake.input.metrics, tables.METRICS),
    tables.read(snakemake.input.cells, tables.CELLS),
    accounting.intensity,
    carbon["trace_day"],
    pue=accounting.pue,
    fill=accounting.fill,
    max_fill_s=accounting.max_fill_s,
)
tables.write(df, snakemake.output[0], tables.TIMESHIFT)

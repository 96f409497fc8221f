"""Adapter for rule compute_timeshift (workflow/rules/metrics.smk)."""

import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from tokencarbon import tables
from tokencarbon.carbon import DEFAULT_MAX_FILL_S, load_trace
from tokencarbon.timeshift import study_timeshift

carbon = snakemake.params.carbon
df = study_timeshift(
    tables.read(snakemake.input.metrics, tables.METRICS),
    tables.read(snakemake.input.cells, tables.CELLS),
    load_trace(snakemake.input.trace, carbon["basis"]),
    carbon["trace_day"],
    pue=carbon["pue"],
    fill=carbon["fill"],
    max_fill_s=carbon.get("max_fill_s", DEFAULT_MAX_FILL_S),
)
tables.write(df, snakemake.output[0], tables.TIMESHIFT)

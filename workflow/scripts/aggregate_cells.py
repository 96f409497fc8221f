"""Adapter for rule aggregate_cells (workflow/rules/aggregate.smk)."""

import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from pathlib import Path

from tokencarbon import tables
from tokencarbon.aggregate import aggregate

cell_dirs = [Path(p).parent for p in snakemake.input.meta]
out = aggregate(cell_dirs)
tables.write(out.batches, snakemake.output.batches, tables.with_cell_keys(tables.BATCHES))
tables.write(out.power, snakemake.output.power, tables.with_cell_keys(tables.POWER))
tables.write(out.cells, snakemake.output.cells, tables.CELLS)
# requests.parquet and steps.parquet (continuous cells) where the rule names them as outputs.
for name, schema in [("requests", tables.REQUESTS), ("steps", tables.STEPS)]:
    if hasattr(snakemake.output, name):
        tables.write(getattr(out, name), getattr(snakemake.output, name), tables.with_cell_keys(schema))
print(
    f"aggregated {len(out.cells)} cells, {len(out.batches)} batches, {len(out.power)} samples, "
    f"{len(out.requests)} requests, {len(out.steps)} steps",
    file=sys.stderr,
)

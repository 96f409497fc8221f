"""Adapter for rule aggregate_cells (workflow/rules/aggregate.smk)."""

import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from pathlib import Path

from tokencarbon import tables
from tokencarbon.aggregate import aggregate

cell_dirs = [Path(p).parent for p in snakemake.input.meta]
batches, power, cells = aggregate(cell_dirs)
tables.write(batches, snakemake.output.batches, tables.with_cell_keys(tables.BATCHES))
tables.write(power, snakemake.output.power, tables.with_cell_keys(tables.POWER))
tables.write(cells, snakemake.output.cells, tables.CELLS)
print(f"aggregated {len(cells)} cells, {len(batches)} batches, {len(power)} samples", file=sys.stderr)

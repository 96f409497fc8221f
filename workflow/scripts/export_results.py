"""Adapter for rule export_results (workflow/rules/export.smk)."""

import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from pathlib import Path

from tokencarbon import tables
from tokencarbon.records import CellMeta
from tokencarbon.export import export
from tokencarbon.platforms import load_platforms

metrics = tables.read(snakemake.input.metrics, tables.METRICS)
cells = tables.read(snakemake.input.cells, tables.CELLS)
keys = [name for name, _ in tables.CELL_KEYS]
metas = {}
for path in snakemake.input.meta:
    meta = CellMeta.read(path).to_json()
    metas[tuple(meta[k] for k in keys)] = meta
kinds = {name: p.kind for name, p in load_platforms().items()}
out_dir = Path(snakemake.output.csv).parent
written = export(metrics, cells, out_dir, metas=metas, device_kinds=kinds)
print(f"wrote {len(written)} cell JSON files and {snakemake.output.csv}", file=sys.stderr)

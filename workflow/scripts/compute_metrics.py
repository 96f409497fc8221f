"""Adapter for rule compute_metrics (workflow/rules/metrics.smk)."""

import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from tokencarbon import tables
from tokencarbon.carbon import DEFAULT_MAX_FILL_S, ConstantIntensity, load_trace
from tokencarbon.metrics import all_metrics
from tokencarbon.models import load_architecture
from tokencarbon.platforms import load_platforms

carbon = snakemake.params.carbon
if carbon["source"] == "trace":
    intensity = load_trace(snakemake.input.trace, carbon["basis"])
else:
    intensity = ConstantIntensity(carbon["intensity_g_per_kwh"])
cells = tables.read(snakemake.input.cells, tables.CELLS)
metrics = all_metrics(
    cells,
    tables.read(snakemake.input.batches, tables.with_cell_keys(tables.BATCHES)),
    tables.read(snakemake.input.power, tables.with_cell_keys(tables.POWER)),
    {a: load_architecture(a) for a in cells["architecture"].unique()},
    load_platforms(),
    intensity,
    pue=carbon["pue"],
    fill=carbon["fill"],
    # carbon.max_fill_s (seconds, null = no limit); the default until the config schema has it.
    max_fill_s=carbon.get("max_fill_s", DEFAULT_MAX_FILL_S),
)
tables.write(metrics, snakemake.output[0], tables.METRICS)

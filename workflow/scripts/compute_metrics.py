"""Adapter for rule compute_metrics (workflow/rules/metrics.smk)."""

import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from pathlib import Path

from tokencarbon import tables
from tokencarbon.carbon import CarbonAccounting
from tokencarbon.metrics import MetricsSettings, compute_all, resolve_cell_platforms
from tokencarbon.models import architecture_from_dict, load_architecture
from tokencarbon.peak import read_measurement

accounting = CarbonAccounting.from_config(
    snakemake.params.carbon, getattr(snakemake.input, "trace", None)
)
cells = tables.read(snakemake.input.cells, tables.CELLS)
# Configured models' architectures come as params (an `auto` one, read from its checkpoint, has
# no file in resources/models); cells of models not configured here (copied in) by name.
configured = snakemake.params.architectures
archs = {
    a: (
        architecture_from_dict(configured[a], f"params architectures.{a} of compute_metrics")
        if a in configured
        else load_architecture(a)
    )
    for a in cells["architecture"].unique()
}
# Peaks measured on this machine (rule measure_platform), by the platform each file names.
paths = getattr(snakemake.input, "measurements", [])
measurements = {
    Path(path).parent.name: read_measurement(path, Path(path).parent.name)
    for path in ([paths] if isinstance(paths, str) else paths)
}
serving = {
    name: tables.read(getattr(snakemake.input, name), tables.with_cell_keys(schema))
    for name, schema in (("requests", tables.REQUESTS), ("steps", tables.STEPS))
    if hasattr(snakemake.input, name)
}
metrics, repeats = compute_all(
    cells,
    tables.read(snakemake.input.batches, tables.with_cell_keys(tables.BATCHES)),
    tables.read(snakemake.input.power, tables.with_cell_keys(tables.POWER)),
    archs,
    resolve_cell_platforms(cells, snakemake.params.platform_specs, measurements=measurements,
                           rows=snakemake.params.platform_rows),  # fmt: skip
    accounting,
    settings=MetricsSettings.from_params(snakemake.params.metrics),
    **serving,
)
tables.write(metrics, snakemake.output.metrics, tables.METRICS)
tables.write(repeats, snakemake.output.repeats, tables.METRICS_REPEATS)

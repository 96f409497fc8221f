"""Adapter for rule import_cell (workflow/rules/imported.smk)."""

import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from pathlib import Path

import pandas as pd

from tokencarbon.errors import InputError
from tokencarbon.importing import load_power_log, read_timing, write_cell
from tokencarbon.power.timestamps import parse_times

spec = snakemake.params.spec
imported = spec["imported"]
platform, model = snakemake.wildcards.platform, snakemake.wildcards.model
batch = int(snakemake.wildcards.batch)
tz = imported.get("tz")
log = load_power_log(
    snakemake.input.power_log,
    imported.get("format", "auto"),
    tz=tz,
    gpu=imported.get("gpu"),
    power_draw=imported.get("power_draw", "average"),
    component=imported.get("component", "gpu"),
    all_gpus=imported.get("all_gpus", False),
    run_id=imported.get("run_id"),
    start=imported.get("start"),
    delay_ms=imported.get("delay_ms"),
)
windows = read_timing(
    snakemake.input.timing,
    tz,
    model=imported.get("model"),
    platform=platform,
    batch_size=imported.get("batch_size"),
)
windows = windows[(windows["model"] == model) & (windows["batch_size"] == batch)]
idle = None
if imported.get("idle"):
    t = parse_times(pd.Series(imported["idle"]), tz, f"platforms.{platform}.imported.idle")
    idle = (int(t[0]), int(t[1]))
write_cell(
    Path(snakemake.output.meta).parent,
    log,
    windows,
    timing_path=snakemake.input.timing,
    tz=tz,
    architecture=spec["architecture"],
    dtype=spec["dtype"],
    idle=idle,
    device_name=imported.get("device_name"),
    device_name_as=f"config key platforms.{platform}.imported.device_name",
    quantization=spec.get("quantization"),
    force=True,  # Snakemake removed the old outputs; this job owns the folder
)
print(
    f"{platform}/{model}/bs{batch}: {len(windows)} windows from {snakemake.input.timing}, power "
    f"from {log.power_field} ({log.power_kind}) of {snakemake.input.power_log}",
    file=sys.stderr,
)

"""Adapter for rule build_report (workflow/rules/report.smk)."""

import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from pathlib import Path

from tokencarbon import tables
from tokencarbon.figures.inputs import read_metrics
from tokencarbon.records import CellMeta
from tokencarbon.report import ReportInputs, write_report

figures = {Path(p).stem: p for p in snakemake.input.figures}
captions = {Path(p).stem: Path(p).read_text() for p in snakemake.input.captions}
inputs = ReportInputs(
    metrics=read_metrics(snakemake.input.metrics),
    cells=tables.read(snakemake.input.cells, tables.CELLS),
    metas=[CellMeta.read(p).to_json() for p in snakemake.input.meta],
    carbon=dict(snakemake.params.carbon),
    slos_s_per_token=list(snakemake.params.slos_s_per_token),
    figures=figures,
    captions=captions,
)
write_report(inputs, snakemake.output.html)
print(f"wrote {snakemake.output.html}", file=sys.stderr)

"""Adapter for rule summarize_headlines (workflow/rules/figures.smk)."""

import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from tokencarbon import tables
from tokencarbon.figures import summary_markdown
from tokencarbon.figures.render import read_probes
from tokencarbon.files import write_text

metrics = tables.read(snakemake.input.metrics, tables.METRICS)
probes = read_probes(snakemake.input.probes)
write_text(snakemake.output[0], summary_markdown(metrics, probes, snakemake.params.slos_s_per_token))

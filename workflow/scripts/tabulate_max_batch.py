"""Adapter for rules tabulate_table3 and tabulate_table4 (workflow/rules/figures.smk)."""

import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from tokencarbon.figures import write_max_batch_csv, write_max_batch_markdown
from tokencarbon.figures.render import read_probes

probes = read_probes(snakemake.input.probes)
write_max_batch_csv(probes, snakemake.output.csv)
write_max_batch_markdown(probes, snakemake.output.md, title=snakemake.params.title)

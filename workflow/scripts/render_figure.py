"""Adapter for the plot_fig* rules (workflow/rules/figures.smk)."""

import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from pathlib import Path

from tokencarbon.figures.render import render

params = {k: v for k, v in snakemake.params.items()}
inputs = {k: v for k, v in snakemake.input.items()}
render(params.pop("figure"), inputs, params, Path(snakemake.output.png).with_suffix(""))

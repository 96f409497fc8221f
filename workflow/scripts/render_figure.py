"""Adapter for the figures stage's rules (workflow/rules/figures.smk): builds the artifact named in
params.artifact (tokencarbon.figures.registry) from the rule's inputs into its outputs."""

import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from tokencarbon.figures.registry import build

params = dict(snakemake.params.items())
build(params.pop("artifact"), dict(snakemake.input.items()), params, dict(snakemake.output.items()))

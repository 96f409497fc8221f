"""Adapter for rule build_torch_engine (workflow/rules/engine.smk)."""

import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from tokencarbon.engine import torch_manifest
from tokencarbon.files import write_json

write_json(snakemake.output[0], torch_manifest(snakemake.params.model))

"""Adapter for rule build_transformers_engine (workflow/rules/engine.smk): params.model is the
model slice (plan.model_slice), params.options the transformers backend options
(engine.TRANSFORMERS_OPTIONS); the output is the engine manifest (JSON)."""

import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from tokencarbon.engine import transformers_manifest
from tokencarbon.files import write_json

options = getattr(snakemake.params, "options", None)
write_json(snakemake.output[0], transformers_manifest(snakemake.params.model, options))

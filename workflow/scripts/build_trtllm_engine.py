"""Adapter for rule build_trtllm_engine (workflow/rules/engine.smk)."""

import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from tokencarbon.backends.tensorrt_llm import build_engine

build_engine(
    snakemake.params.model,
    snakemake.params.build,
    engine_dir=snakemake.output.engine,
    manifest_path=snakemake.output.manifest,
    log=sys.stderr,
)

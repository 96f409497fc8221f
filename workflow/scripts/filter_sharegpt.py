"""Adapter for rule filter_sharegpt (workflow/rules/dataset.smk)."""

import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from tokencarbon import tables
from tokencarbon.tokenizer import load_tokenizer
from tokencarbon.workload import build_pool_report, synthetic_pool_report

spec = snakemake.params.spec
source = snakemake.input.get("source", spec["source"])
tokenizer = load_tokenizer(snakemake.input.get("tokenizer", spec["tokenizer"]))
bounds = {"min_tokens": spec["min_tokens"], "max_tokens": spec["max_tokens"]}
if spec["source"] == "synthetic":  # grown along its seeded stream until it holds num_prompts
    pool, report = synthetic_pool_report(
        source, tokenizer, needed=spec["needed"], seed=spec["seed"], **bounds
    )
else:
    pool, report = build_pool_report(source, tokenizer, split=spec["split"] or "train", **bounds)
tables.write(pool, snakemake.output[0], tables.WORKLOAD)
# Read, dropped by reason, kept: the log says what the token bounds and the 2-turn rule did.
print(report.text(), file=sys.stderr)

"""Adapter for rule train_tokenizer (workflow/rules/dataset.smk)."""

import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from pathlib import Path

from tokencarbon.tokenizer import train_builtin_tokenizer
from tokencarbon.workload import load_sharegpt

conversations = load_sharegpt(snakemake.input.corpus)
texts = (turn["value"] for conv in conversations for turn in conv["conversations"])
train_builtin_tokenizer(texts, snakemake.params.vocab_size, Path(snakemake.output[0]))

"""Adapter for rule generate_synthetic_sharegpt (workflow/rules/dataset.smk)."""

import json
import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from tokencarbon.files import write_text
from tokencarbon.synthetic import synthetic_conversations

conversations = synthetic_conversations(snakemake.params.conversations, snakemake.params.seed)
write_text(snakemake.output[0], json.dumps(conversations, ensure_ascii=False))
print(f"wrote {len(conversations)} synthetic conversations", file=sys.stderr)

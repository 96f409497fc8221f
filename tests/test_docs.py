"""docs/data.md documents exactly the columns tables.py defines."""

import re
from pathlib import Path

from tokencarbon import tables

REPO = Path(__file__).resolve().parents[1]


def test_every_schema_column_is_documented_and_nothing_else():
    text = (REPO / "docs/data.md").read_text()
    documented = set()
    for cell in re.findall(r"^\| (`[^|]+`) \|", text, flags=re.M):
        documented |= set(re.findall(r"`(\w+)`", cell))
    defined = set()
    for schema in [
        tables.WORKLOAD, tables.BATCHES, tables.POWER, tables.CELLS, tables.METRICS,
        tables.METRICS_REPEATS, tables.TIMESHIFT, tables.REQUESTS, tables.STEPS,
    ]:  # fmt: skip
        defined |= set(schema.names)
    assert defined - documented == set(), "columns without documentation"
    assert documented - defined == set(), "documented columns that no schema has"

#!/usr/bin/env bash
# Rebuilds a GPU study's tables and figures from its committed cells: the H100 and H200 cells that
# benchmarks/gpu_session.sh measured (benchmarks/results/<study>/cells/<platform>/), imported into a
# clean copy of the workflow (config/<study>.yaml: import_only, so nothing is rerun; its `study` is
# <study>, so the copy's folder is results/<study>/), aggregated there, and the small tables and
# figures copied back:
#   benchmarks/results/<study>/{tables/*.parquet,summary.md}   docs/figures/<study>/*.png
#   docs/reports/<study>.html (the study's self-contained report, tokencarbon/report.py)
#
#   bash benchmarks/gpu_study.sh [STUDY...]   (default: gpu-study; make gpu-study runs every study;
#                                               CPU only, about 30 s each)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
snakemake=${SNAKEMAKE:-$root/.venv/bin/snakemake}
python=$(dirname "$snakemake")/python
work=$(mktemp -d)
# The copy is no git checkout: the report names the commit it was built from through this.
TOKENCARBON_SOURCE_COMMIT=$(git -C "$root" rev-parse HEAD)$(git -C "$root" diff --quiet HEAD -- || echo +dirty)
export TOKENCARBON_SOURCE_COMMIT
trap 'rm -rf "$work"' EXIT

for name in "${@:-gpu-study}" ; do
    study=$root/benchmarks/results/$name
    if ! grep -qx "study: $name" "$root/config/$name.yaml"; then
        echo "config/$name.yaml: its study key must be $name (its outputs: results/$name/)" >&2
        exit 1
    fi
    out=$work/results/$name  # the study's folder in the copy (tokencarbon/layout.py)
    rm -rf "$work" && mkdir -p "$out"
    git -C "$root" ls-files -z | (cd "$root" && xargs -0 cp --parents -t "$work")
    cp -r "$study/cells" "$out/cells"
    # The copy's config: every platform import_only (the paper configs measure theirs; here their
    # cells are only read) and, for a study still being measured in chunks, only the models with
    # static cells committed (each left out is named); a study whose chunk runs left or failed
    # cells not in its pack yet (its manifest.json, every run: a run of a few --target cells lists
    # only those) is partial as well
    partial=$("$python" - "$work/config/$name.yaml" "$out/cells" "$study/manifest.json" <<'PY'
import json, sys, yaml
from pathlib import Path
path, cells, manifest = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
packed = json.loads(manifest.read_text()) if manifest.is_file() else {"runs": [], "cells": {}}
unmeasured = {c for r in packed["runs"] for c in r["left"] + r["failed"]} - set(packed["cells"])
if unmeasured:
    print(f"{manifest}: {len(unmeasured)} cell(s) not measured yet", file=sys.stderr)
c = yaml.safe_load(path.read_text())
c["platforms"] = {p: {**(v or {}), "import_only": True} for p, v in c["platforms"].items()}
have = {m for m in c["models"] if any(cells.glob(f"*/{m}/bs*/meta.json"))}
left = sorted(set(c["models"]) - have)
for m in left:
    print(f"{path.name}: {m} left out (no static cell committed yet)", file=sys.stderr)
c["models"] = {m: v for m, v in c["models"].items() if m in have}
path.write_text(yaml.safe_dump(c, sort_keys=False))
print("partial" if left or unmeasured else "")
PY
)
    (cd "$work" && "$snakemake" --cores 2 all --configfile "config/$name.yaml" --quiet rules)
    mkdir -p "$study/tables" "$root/docs/figures/$name" "$root/docs/reports"
    cp "$out"/tables/*.parquet "$study/tables/"
    cp "$out/summary.md" "$study/summary.md"
    cp "$out"/figures/*.png "$root/docs/figures/$name/"
    if [ -z "$partial" ]; then
        cp "$out/report.html" "$root/docs/reports/$name.html"
        echo "$name: tables in $study/tables, figures in docs/figures/$name, report docs/reports/$name.html"
    else  # a report is ~8 MB of the 64 MiB that travels to the GPU machine
        echo "$name: tables in $study/tables, figures in docs/figures/$name; no report until every cell is measured"
    fi
done

#!/usr/bin/env bash
# Rebuilds the GPU study's tables and figures from the committed cells: the H100 and H200 cells that
# benchmarks/gpu_session.sh measured (benchmarks/results/gpu-study/cells/<platform>/), imported into a
# clean copy of the workflow (config/gpu-study.yaml: import_only, so nothing is rerun), aggregated
# there, and the small tables and figures copied back:
#   benchmarks/results/gpu-study/{tables/*.parquet,summary.md}   docs/figures/gpu-study/*.png
#
#   bash benchmarks/gpu_study.sh        (make gpu-study; CPU only, about a minute)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
snakemake=${SNAKEMAKE:-$root/.venv/bin/snakemake}
study=$root/benchmarks/results/gpu-study
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

git -C "$root" ls-files -z | (cd "$root" && xargs -0 cp --parents -t "$work")
mkdir -p "$work/results"
cp -r "$study/cells" "$work/results/cells"
(cd "$work" && "$snakemake" --cores 2 all --configfile config/gpu-study.yaml --quiet rules)

mkdir -p "$study/tables" "$root/docs/figures/gpu-study"
cp "$work"/results/tables/*.parquet "$study/tables/"
cp "$work/results/summary.md" "$study/summary.md"
cp "$work"/results/figures/*.png "$root/docs/figures/gpu-study/"
echo "tables: $study/tables; figures: docs/figures/gpu-study"

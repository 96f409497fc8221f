#!/usr/bin/env bash
# Rebuilds a GPU study's tables and figures from its committed cells: the H100 and H200 cells that
# benchmarks/gpu_session.sh measured (benchmarks/results/<study>/cells/<platform>/), imported into a
# clean copy of the workflow (config/<study>.yaml: import_only, so nothing is rerun), aggregated
# there, and the small tables and figures copied back:
#   benchmarks/results/<study>/{tables/*.parquet,summary.md}   docs/figures/<study>/*.png
#
#   bash benchmarks/gpu_study.sh [STUDY...]   (default: gpu-study; make gpu-study runs every study;
#                                               CPU only, about 30 s each)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
snakemake=${SNAKEMAKE:-$root/.venv/bin/snakemake}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

for name in "${@:-gpu-study}" ; do
    study=$root/benchmarks/results/$name
    rm -rf "$work" && mkdir -p "$work/results"
    git -C "$root" ls-files -z | (cd "$root" && xargs -0 cp --parents -t "$work")
    cp -r "$study/cells" "$work/results/cells"
    (cd "$work" && "$snakemake" --cores 2 all --configfile "config/$name.yaml" --quiet rules)
    mkdir -p "$study/tables" "$root/docs/figures/$name"
    cp "$work"/results/tables/*.parquet "$study/tables/"
    cp "$work/results/summary.md" "$study/summary.md"
    cp "$work"/results/figures/*.png "$root/docs/figures/$name/"
    echo "$name: tables in $study/tables, figures in docs/figures/$name"
done

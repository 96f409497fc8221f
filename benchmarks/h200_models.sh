#!/usr/bin/env bash
# One GPU call for issue 11/12: config/h200-models.yaml's cells (transformers backend, Llama-3.1-8B)
# through Snakemake, the same grid with the torch backend beside it, then `pytest -m gpu`.
# Run from a clean clone carried beside .whl/ (DEVELOPERS.md); each step capped; what comes back:
# $OUT/cells.tar.gz (both grids' cells and logs), $OUT/gpu-tests.log, $OUT/session.log.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/workflow PATH=/tmp/site/bin:$PATH PYTHONUNBUFFERED=1
OUT=${OUT:-benchmarks/results/session}
mkdir -p "$OUT"
nvidia-smi --query-gpu=index,name,uuid,driver_version,power.limit,memory.total --format=csv | tee "$OUT/nvidia-smi.txt"
python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'
run_grid() {  # run_grid NAME CAP_S [--config ...]: all cells of the config in its own project dir
    local name=$1 cap=$2 t0=$SECONDS
    shift 2
    mkdir -p "grid-$name/config"
    for f in Snakefile workflow resources profiles; do ln -sfn "$PWD/$f" "grid-$name/$f"; done
    cp config/h200-models.yaml "grid-$name/config/config.yaml"
    (cd "grid-$name" && timeout -k 10 "$cap" python3 -m snakemake \
        results/h200-models/tables/metrics.parquet --cores 16 --resources gpu=1 "$@" > "../$name.log" 2>&1)
    echo "grid $name: exit $? after $((SECONDS - t0)) s"; tail -5 "$name.log"
}
run_grid transformers "${CAP_TRANSFORMERS_S:-300}"
run_grid torch "${CAP_TORCH_S:-150}" --config 'backend={"name": "torch"}'
t0=$SECONDS
timeout -k 10 "${CAP_TESTS_S:-120}" python3 -m pytest -q -m gpu -p no:cacheprovider tests \
    > "$OUT/gpu-tests.log" 2>&1
echo "gpu tests: exit $? after $((SECONDS - t0)) s"; tail -3 "$OUT/gpu-tests.log"
tar czf "$OUT/cells.tar.gz" transformers.log torch.log grid-*/results/h200-models/cells grid-*/results/h200-models/tables grid-*/results/h200-models/logs 2>/dev/null
ls -la "$OUT"

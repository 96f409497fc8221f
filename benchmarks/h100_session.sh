#!/usr/bin/env bash
# One call on the GPU machine (the session's device time is short): the reduced study grid through
# Snakemake (config/h100-reduced.yaml), then the decode benchmark, the GPU tests and the sidecar
# benchmark, each capped. Everything lands in $OUT; docs/results.md records what came back.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/workflow PATH=/tmp/site/bin:$PATH
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,power.limit,memory.total --format=csv | tee "$OUT/nvidia-smi.txt"
run() {  # run NAME CAP_S COMMAND...
    local name=$1 cap=$2 t0=$SECONDS
    shift 2
    timeout -k 10 "$cap" "$@" > "$OUT/$name.log" 2>&1
    echo "$name: exit $? after $((SECONDS - t0)) s"
}
run grid "${GRID_CAP_S:-230}" python3 -m snakemake --cores 8 all --configfile config/h100-reduced.yaml
tar czf "$OUT/grid.tar.gz" results/tables results/figures results/summary.md logs 2>/dev/null
run decode "${DECODE_CAP_S:-150}" python3 benchmarks/decode_roofline.py --cases 7b-bs1 13b-bs1 7b-bs64 7b-bs256 \
    --modes graph compile --compile-max-batch 1
run gpu_tests "${TESTS_CAP_S:-70}" python3 -m pytest -m gpu -q -p no:cacheprovider tests/
run sidecar "${SIDECAR_CAP_S:-80}" python3 benchmarks/sidecar_overhead.py
tail -3 "$OUT/grid.log"; tail -25 "$OUT/decode.log"; tail -3 "$OUT/gpu_tests.log"; tail -12 "$OUT/sidecar.log"

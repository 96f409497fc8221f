#!/usr/bin/env bash
# One GPU call for issue 16 (weight-only int4 on the torch backend), most important first, so that a
# call cut short by the session's device time still returns what it measured:
#   1. benchmarks/quant_decode.py: Llama-2-7B bf16 and int4 g128, batch 1/16/64, tok/s and J/token
#   2. config/h200-wq4.yaml through Snakemake: Llama-2-7B and -13B int4 g128, each model's probe at
#      1000/1000 tokens (the whole card) and its cells at batch 1 and 16
#   3. benchmarks/oom_table.py --quantization: the same probes under the study's 32 and 40 GB caps
# Run from a clean clone carried beside .whl/ (snakemake, calflops and torchao wheels; DEVELOPERS.md).
# What comes back in $OUT: h200-quant.json, h200-oom-int4_weight_only-g128.json, cells.tar.gz (the
# grid's cells, tables and logs), session.log lines on stdout.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/workflow PATH=/tmp/site/bin:$PATH PYTHONUNBUFFERED=1
OUT=${OUT:-benchmarks/results/session}
mkdir -p "$OUT"
nvidia-smi --query-gpu=index,name,uuid,driver_version,power.limit,memory.total --format=csv
python3 -c 'import torch, torchao; print("torch", torch.__version__, "torchao", torchao.__version__)'
t0=$SECONDS
timeout -k 10 "${CAP_DECODE_S:-120}" python3 benchmarks/quant_decode.py --out-dir "$OUT" > quant.log 2>&1
echo "quant_decode: exit $? after $((SECONDS - t0)) s"; grep -E "tok/s|Error|error" quant.log | tail -12
t0=$SECONDS
mkdir -p grid/config
for f in Snakefile workflow resources profiles; do ln -sfn "$PWD/$f" "grid/$f"; done
cp config/h200-wq4.yaml grid/config/config.yaml
targets=()
for m in llama-2-7b-wq4 llama-2-13b-wq4; do
    targets+=("results/cells/h200-141gb/$m/probe.json" "results/cells/h200-141gb/$m/bs1/meta.json"
              "results/cells/h200-141gb/$m/bs16/meta.json")
done
(cd grid && timeout -k 10 "${CAP_GRID_S:-300}" python3 -m snakemake "${targets[@]}" --cores 16 \
    --resources gpu=1 --keep-going > ../grid.log 2>&1)
echo "grid: exit $? after $((SECONDS - t0)) s"; tail -4 grid.log
tar czf "$OUT/cells.tar.gz" quant.log grid.log grid/results/cells grid/logs 2>/dev/null
t0=$SECONDS
timeout -k 10 "${CAP_OOM_S:-120}" python3 benchmarks/oom_table.py --dtype bfloat16 \
    --quantization int4_weight_only:128 --memory-limit-gb 32 40 --out-dir "$OUT" > oom.log 2>&1
echo "oom: exit $? after $((SECONDS - t0)) s"; tail -5 oom.log
tar czf "$OUT/cells.tar.gz" quant.log grid.log oom.log grid/results/cells grid/logs 2>/dev/null
ls -la "$OUT"

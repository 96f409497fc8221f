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
timeout -k 10 "${CAP_DECODE_S:-75}" python3 benchmarks/quant_decode.py --out-dir "$OUT" > quant.log 2>&1
echo "quant_decode: exit $? after $((SECONDS - t0)) s"; grep -E "tok/s|Error|error" quant.log | tail -12
t0=$SECONDS
mkdir -p grid/config
for f in Snakefile workflow resources profiles; do ln -sfn "$PWD/$f" "grid/$f"; done
cp config/h200-wq4.yaml grid/config/config.yaml
# quant_decode.py falls back to eager decode where int4 failed under CUDA graphs; the cells follow
extra=()
if grep -q '"cuda_graphs": false' "$OUT"/*-quant.json 2>/dev/null; then
    extra=(--config 'backend={"cuda_graphs": false}')
fi
pack() { tar czf "$OUT/cells.tar.gz" ./*.log grid/results/h200-wq4/cells grid/results/h200-wq4/logs 2>/dev/null; }
# one Snakemake call per model, 7B first: a call cut short keeps the earlier model's cells
for m in llama-2-7b-wq4 llama-2-13b-wq4; do
    t0=$SECONDS
    (cd grid && timeout -k 10 "${CAP_GRID_S:-110}" python3 -m snakemake \
        "results/h200-wq4/cells/h200-141gb/$m/probe.json" "results/h200-wq4/cells/h200-141gb/$m/bs1/meta.json" \
        "results/h200-wq4/cells/h200-141gb/$m/bs16/meta.json" --cores 16 --resources gpu=1 --keep-going \
        "${extra[@]}" > "../grid-$m.log" 2>&1)
    echo "grid $m: exit $? after $((SECONDS - t0)) s"; tail -3 "grid-$m.log"
    pack
done
t0=$SECONDS
timeout -k 10 "${CAP_OOM_S:-45}" python3 benchmarks/oom_table.py --dtype bfloat16 \
    --quantization int4_weight_only:128 --memory-limit-gb 32 40 --out-dir "$OUT" > oom.log 2>&1
echo "oom: exit $? after $((SECONDS - t0)) s"; tail -5 oom.log
pack
ls -la "$OUT"

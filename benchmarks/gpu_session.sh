#!/usr/bin/env bash
# One call on a GPU machine (the session's GPU time is short), from the repository root:
#
#   bash benchmarks/gpu_session.sh STEP...     steps: grid oom lease decode profile tests sidecar
#
# grid:    this card's platform of config/$STUDY.yaml (default gpu-study) through Snakemake, every visible GPU
#          leased to concurrent cells (--resources gpu=N); its cells, probes and logs come back as
#          $OUT/cells-<platform>.tar.gz, to merge with the other card's (docs/results.md)
# oom:     benchmarks/oom_table.py (Llama-2-7B/13B at 1000/1000 under a 40 GB cap and the whole card)
# lease:   benchmarks/lease_check.py on the grid's cells (which GPU each cell leased and sampled)
# decode:  benchmarks/decode_roofline.py, every case in graph mode, compile at batch 1
# profile: decode_roofline.py's kernel profile of the batch-1 and batch-256 graph steps
# tests:   pytest -m gpu;   sidecar: benchmarks/sidecar_overhead.py
# smoke:   benchmarks/paged_smoke.py;  serving: benchmarks/serving.py --cases $SERVING_CASES (the mle-*
#          cases read ML.ENERGY's histogram: ../shared does not travel to the GPU machine, so carry it
#          through an ignored link in the checkout, e.g. `ln -s ../shared/data/mlenergy .mlenergy` and
#          carry [".mlenergy/<file>", ...], then MLENERGY_DIR=.mlenergy)
# server_engine: benchmarks/server_vs_engine.py (transformers serve beside the in-process engine;
#          carry .whl-serve/ too, CAP_SERVER_ENGINE_S=500)
# probe:   benchmarks/probe_time.py, the six study models (PROBE_MODELS: some of them) (probe_bisect: the search before, Llama-2-7B)
# overhead: benchmarks/cell_overhead.py on Llama-2-7B bs8 and cb32 of config/paper-h200.yaml (this
#          card as its platform, one repeat): this tree (a cold and a warm compilation cache), then
#          the previous commit's workflow where a copy of it lies in .before/ (one pass)
# Each step is capped (CAP_<STEP>_S); logs and records land in $OUT (at most 8 files come back, so
# the step logs travel inside one tarball).
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
    $(ls .whl-serve/*.whl 2>/dev/null)  # .whl-serve/: transformers serve's wheels (server_vs_engine.py)
export PYTHONPATH=/tmp/site:$PWD/workflow PATH=/tmp/site/bin:$PATH PYTHONUNBUFFERED=1
OUT=${OUT:-benchmarks/results/session}
STUDY=${STUDY:-gpu-study}
mkdir -p "$OUT" session-logs

name=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
ngpu=$(nvidia-smi -L | wc -l)
case "$name" in
    *H100*80GB*) platform=h100-sxm-80gb ;;
    *H200*) platform=h200-141gb ;;
    *) echo "no platform of config/$STUDY.yaml matches '$name'" >&2; exit 2 ;;
esac
nvidia-smi --query-gpu=index,name,uuid,driver_version,power.limit,memory.total --format=csv \
    | tee "$OUT/nvidia-smi.txt"
echo "platform $platform, $ngpu GPU(s)"

step() {  # step NAME COMMAND...: capped by CAP_<NAME>_S, logged to session-logs/NAME.log
    local name=$1 cap_var="CAP_${1^^}_S" t0=$SECONDS
    shift
    timeout -k 10 "${!cap_var:-300}" "$@" > "session-logs/$name.log" 2>&1
    echo "$name: exit $? after $((SECONDS - t0)) s"
}

for s in "$@"; do
    case "$s" in
    grid)
        # every model's probe and cells of this platform (the config lists its batch sizes)
        mapfile -t targets < <(python3 -c 'import sys, yaml
c = yaml.safe_load(open(sys.argv[1]))
for m in c["models"]:
    print(f"results/{c['study']}/cells/{sys.argv[2]}/{m}/probe.json")
    for b in c["sweep"]["batch_sizes"]:
        print(f"results/{c['study']}/cells/{sys.argv[2]}/{m}/bs{b}/meta.json")' "config/$STUDY.yaml" "$platform")
        # targets first: --config takes every word after it
        step grid python3 -m snakemake "${targets[@]}" --cores 16 --resources gpu="$ngpu" \
            --configfile "config/$STUDY.yaml" \
            --config "platforms={\"$platform\": {\"import_only\": false}}"
        tail -4 session-logs/grid.log
        ;;
    oom) step oom python3 benchmarks/oom_table.py --memory-limit-gb 40 none ;;
    lease) step lease python3 benchmarks/lease_check.py "results/$STUDY/cells/$platform" \
        --out "$OUT/$platform-x$ngpu-lease.json"; cat session-logs/lease.log ;;
    decode) step decode python3 benchmarks/decode_roofline.py --modes graph compile \
        --compile-max-batch 1 ;;
    profile) step profile python3 benchmarks/decode_roofline.py --cases 7b-bs1 7b-bs256 \
        --modes graph --repeats 2 --profile 7b-bs1:graph 7b-bs256:graph --out-dir "$OUT/profile" ;;
    tests) step tests python3 -m pytest -m gpu -q -p no:cacheprovider tests/ ;;
    sidecar) step sidecar python3 benchmarks/sidecar_overhead.py ;;
    overhead)
        # OVERHEAD_PROMPTS / OVERHEAD_CONVERSATIONS shrink the workload (the fixed cost does not
        # depend on it), OVERHEAD_CELLS picks the cells (default "bs8 cb32"), OVERHEAD_BEFORE=0
        # skips the previous commit's run, OVERHEAD_PASSES (2) the passes of this tree (the first cold)
        python3 - "$platform" "${OVERHEAD_PROMPTS:-100}" "${OVERHEAD_CONVERSATIONS:-20000}" \
            > /tmp/overhead.yaml <<'PY'
import sys, yaml
c = yaml.safe_load(open("config/paper-h200.yaml"))
c["platforms"] = {sys.argv[1]: {}}
c["models"] = {"llama-2-7b": c["models"]["llama-2-7b"]}
c["study"] = "overhead"  # its own folder, results/overhead/ (older trees refuse the key: below)
c["run"]["repeats"] = 1
c["run"].pop("repeats_at_ends", None)  # one repeat at every size (and a key older trees refuse)
c["sweep"] |= {"batch_sizes": [1, 8], "max_num_seqs": [min(32, int(sys.argv[2]))]}
c["workload"] |= {"num_prompts": int(sys.argv[2]), "synthetic_conversations": int(sys.argv[3])}
print(yaml.safe_dump(c))
PY
        # the same config for a tree from before study folders (results/cells/...): no `study` key
        grep -v '^study: ' /tmp/overhead.yaml > /tmp/overhead-before.yaml
        targets=() before_targets=()
        for cell in ${OVERHEAD_CELLS:-bs8 cb32}; do
            targets+=("results/overhead/cells/$platform/llama-2-7b/$cell/meta.json")
            before_targets+=("results/cells/$platform/llama-2-7b/$cell/meta.json")
        done
        # this tree first (a cold and a warm compilation cache), then the previous commit's
        # workflow in .before/ on the same workload (copied: --setup-from)
        step overhead python3 benchmarks/cell_overhead.py --label after --passes "${OVERHEAD_PASSES:-2}" --cores 16 \
            --configfile /tmp/overhead.yaml --out "$OUT/$platform-cell-overhead-after.json" \
            --targets "${targets[@]}"
        tail -5 session-logs/overhead.log
        if [ -d .before ] && [ "${OVERHEAD_BEFORE:-1}" != 0 ]; then
            step overhead_before python3 benchmarks/cell_overhead.py --repo .before --label before \
                --setup-from . --setup-from-study overhead --passes 1 --cores 16 --configfile /tmp/overhead-before.yaml \
                --out "$OUT/$platform-cell-overhead-before.json" --targets "${before_targets[@]}"
            tail -3 session-logs/overhead_before.log
        fi
        ;;
    smoke) step smoke python3 benchmarks/paged_smoke.py; tail -5 session-logs/smoke.log ;;
    serving) step serving python3 benchmarks/serving.py --cases ${SERVING_CASES:-cb64 cb256} \
        ${MLENERGY_DIR:+--mlenergy-dir "$MLENERGY_DIR"} --out "$OUT/$platform-serving-paged.json"
        tail -25 session-logs/serving.log ;;
    server_engine) step server_engine python3 benchmarks/server_vs_engine.py
        tail -16 session-logs/server_engine.log ;;
    probe) step probe python3 benchmarks/probe_time.py "$OUT/$platform-probe-time.json" --timeout-s 60 \
        ${PROBE_MODELS:+--models $PROBE_MODELS} ;;
    probe_bisect) step probe_bisect python3 benchmarks/probe_time.py \
        "$OUT/$platform-probe-time-bisect.json" --method bisect --models llama-2-7b --timeout-s 75 ;;
    *) echo "unknown step $s (valid: grid oom lease decode profile tests sidecar overhead smoke serving server_engine probe probe_bisect)" >&2 ;;
    esac
done
tar czf "$OUT/cells-$STUDY-$platform.tar.gz" session-logs $(ls -d "results/$STUDY/cells/$platform" \
    "results/$STUDY/logs" results/overhead/cells results/overhead/logs 2>/dev/null)
for f in session-logs/*.log; do echo "== $f"; tail -n 15 "$f" | cut -c1-300; done

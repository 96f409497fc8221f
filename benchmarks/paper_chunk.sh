#!/usr/bin/env bash
# One call on the project's GPU machine: a chunk of a paper study (docs/chunks.md), from the
# repository root of the device copy, everything it writes under $OUT (at most 8 files come back):
#
#   bash benchmarks/paper_chunk.sh BUDGET [run_chunks.py options...]
#
# BUDGET: run_chunks.py's --budget (e.g. 7m): leave the call's last 1-2 minutes free. The config is
# the card's: config/paper-h100.yaml on an H100, config/paper-h200.yaml on an H200.
# Carry [".whl", ".snap"] (and ".whl-zeus" for ZEUS=1); before the call, here, after committing:
#   git config uploadpack.allowFilter true
#   rm -rf .snap && git clone -q --filter=blob:none --bare --depth 1 file://$PWD .snap/git
# The device copy's own .git (the session's base commit) is replaced by that clone, so each cell
# records the commit it ran.
#
# Environment:
#   ZEUS=1     record Zeus's energy counter beside the chunk (benchmarks/zeus_beside.py record, Zeus in
#              /tmp/zeus from .whl-zeus), then compare every packed cell inside its log
#              ($OUT/<gpu>-zeus-beside.json)
#   PYCACHE=0  do not cache bytecode in /tmp/pycache (default 1: PYTHONPYCACHEPREFIX set,
#              PYTHONDONTWRITEBYTECODE unset, for every process of the chunk). The GPU machine's
#              Python compiled torch.fx and sympy from source in each process
#              (benchmarks/results/h100-engine-build-profile.json: 3.1 s of builtins.compile in one
#              engine build), and each cell's Snakemake call spent ~9 s outside its job (the pack's
#              manifest seconds minus the cell's timeline). The wheels are installed compiled
#              (no --no-compile) for the same reason.
#   PREFLIGHT=0  skip the GPU tests of the static engine run before the chunk (default 1: `pytest -m
#              gpu tests/test_torch_static.py`, 49 s on an H100; if they fail, no cell runs and the call ends
#              with their output in chunk.log, instead of every cell failing until the budget ends)
#   START=1    time CUDA's start first (benchmarks/cuda_start.py --runs 1, $OUT/<gpu>-cuda-start.json)
#   SMK_PROFILE=1  after the chunk, where a Snakemake call's own time goes: cProfile of a dry run
#              of the grid's first cell (its 40 largest cumulative entries appended to chunk.log);
#              each cell's call spent 7.7-10.0 s outside its job on the H100 machine
#
# Files back: chunk.log, <study>.tar.gz (the pack, rewritten after each cell), and with ZEUS=1
# <gpu>-zeus.csv, <gpu>-zeus.json, <gpu>-zeus-beside.json, zeus.log; with START=1 <gpu>-cuda-start.json.
set -uo pipefail
budget=${1:?usage: paper_chunk.sh BUDGET [run_chunks.py options...]}
shift
OUT=${OUT:?OUT must name the folder whose files come back}

# A machine held from the call before still has /tmp/site: install again only if the wheels differ
# (pip into an existing --target only warns, once per file).
stamp=$(stat -c '%n %s' .whl/*.whl | sha256sum | cut -c1-16)  # names and sizes (copies get new mtimes)
if [ "$(cat /tmp/site/.wheels 2>/dev/null)" != "$stamp" ]; then
    rm -rf /tmp/site
    python3 -m pip install -q --no-index --no-deps --no-cache-dir --target /tmp/site .whl/*.whl \
        || { echo "pip install of .whl/ failed" >&2; exit 2; }
    echo "$stamp" > /tmp/site/.wheels
fi
export PYTHONPATH=/tmp/site PATH=/tmp/site/bin:$PATH PYTHONUNBUFFERED=1
if [ -d .snap/git ]; then
    rm -rf .git && mv .snap/git .git && git config core.bare false && git config core.fileMode false \
        && git reset -q || { echo "could not put .snap/git in place of .git" >&2; exit 2; }
fi
echo "commit $(git rev-parse --short HEAD) dirty=[$(git status --porcelain --untracked-files=no | head -3)]"

name=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
case "$name" in
    *H100*80GB*) gpu=h100 ;;
    *H200*) gpu=h200 ;;
    *) echo "no paper config for '$name'" >&2; exit 2 ;;
esac
study=paper-$gpu
echo "GPU: $name; config/$study.yaml"

if [ "${PYCACHE:-1}" = 1 ]; then
    unset PYTHONDONTWRITEBYTECODE
    export PYTHONPYCACHEPREFIX=/tmp/pycache
fi
if [ "${START:-0}" = 1 ]; then
    timeout -k 5 60 python3 benchmarks/cuda_start.py --runs 1 --out "$OUT/$gpu-cuda-start.json" \
        | tail -12
fi

if [ "${PREFLIGHT:-1}" = 1 ]; then
    PYTHONPATH=/tmp/site:$PWD/workflow timeout -k 5 150 python3 -m pytest -q -m gpu -p no:cacheprovider \
        tests/test_torch_static.py \
        > "$OUT/chunk.log" 2>&1
    prc=$?
    tail -3 "$OUT/chunk.log"
    [ "$prc" = 0 ] || { echo "preflight: the static engine's GPU tests failed (exit $prc): no chunk"; exit 3; }
fi

zpid=
if [ "${ZEUS:-0}" = 1 ]; then
    if [ ! -d /tmp/zeus/zeus ]; then
        python3 -m pip install -q --no-index --no-deps --no-cache-dir --target /tmp/zeus \
            .whl-zeus/*.whl || { echo "pip install of .whl-zeus/ failed" >&2; exit 2; }
    fi
    PYTHONPATH=/tmp/zeus:/tmp/site python3 benchmarks/zeus_beside.py record --out "$OUT/$gpu-zeus.csv" \
        > "$OUT/zeus.log" 2>&1 &
    zpid=$!
    sleep 2
    kill -0 "$zpid" 2>/dev/null || { cat "$OUT/zeus.log"; exit 2; }
fi

python3 benchmarks/run_chunks.py --configfile "config/$study.yaml" --budget "$budget" --cores 16 \
    --no-progress --tar "$OUT/$study.tar.gz" "$@" >> "$OUT/chunk.log" 2>&1
rc=$?
echo "run_chunks exit $rc"
grep '^\[chunks\]' "$OUT/chunk.log" | grep -v 'for the next chunk' | tail -25

if [ "${SMK_PROFILE:-0}" = 1 ]; then
    cell=$(ls -d results/$study/cells/*/*/bs*/ 2>/dev/null | head -1)
    if [ -n "$cell" ]; then
        { echo "== cProfile: snakemake -n ${cell}meta.json"
          timeout -k 5 120 python3 -m cProfile -s cumtime -m snakemake -n --cores 16 \
              --configfile "config/$study.yaml" "${cell}meta.json" 2>&1 \
              | grep -A40 'Ordered by'; } >> "$OUT/chunk.log"
    fi
fi

if [ -n "$zpid" ]; then
    kill -TERM "$zpid"
    wait "$zpid"
    echo "zeus record exit $?"
    python3 benchmarks/zeus_beside.py compare --pack "results/chunks/$study" \
        --zeus-log "$OUT/$gpu-zeus.csv" --out "$OUT/$gpu-zeus-beside.json" >> "$OUT/zeus.log" 2>&1
    echo "zeus compare exit $?"
    tail -15 "$OUT/zeus.log"
fi
exit $rc

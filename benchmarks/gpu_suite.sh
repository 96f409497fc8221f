#!/usr/bin/env bash
# The GPU suite in one call on an H100/H200 machine, from the repository root, after the wheel
# install step (../shared/device/README.md): nvidia-smi, the GPU tests, decode_roofline.py and
# sidecar_overhead.py. Records and logs land in $OUT (benchmarks/results without it); a compact
# summary comes last. Each step has a time cap, so the whole stays under ~9.5 minutes even when
# one hangs (not yet run as a whole: the H100 call of 2026-11-26 ran h100_session.sh instead).
#
#   bash benchmarks/gpu_suite.sh
set -uo pipefail

PYTHON=${PYTHON:-python3}
OUT=${OUT:-benchmarks/results}
export OUT
export PYTHONPATH="$PWD/workflow${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"
# seconds per step: a hung step costs its cap, not the whole call
PYTEST_CAP_S=120
DECODE_CAP_S=300
SIDECAR_CAP_S=130

declare -A rc
step() {  # step NAME CAP_S COMMAND...: run it capped, log to $OUT/NAME.log, keep its exit code
    local name=$1 cap=$2
    shift 2
    echo "=== $name (cap ${cap} s): $*"
    local t0=$SECONDS
    timeout -k 10 "$cap" "$@" 2>&1 | tee "$OUT/$name.log"
    rc[$name]=${PIPESTATUS[0]}
    echo "=== $name: exit ${rc[$name]} after $((SECONDS - t0)) s"
}

nvidia-smi -q | head -30

step gpu_tests "$PYTEST_CAP_S" "$PYTHON" -m pytest -m gpu -q -p no:cacheprovider tests/
# Every case in both modes, but compile only at batch 1 (7B and 13B): compiling one 7B shape takes
# 15-60 s. Profiles explain the batch-1 and large-batch numbers of the cells' graph mode.
step decode_roofline "$DECODE_CAP_S" "$PYTHON" benchmarks/decode_roofline.py \
    --modes graph compile --compile-max-batch 1 --profile 7b-bs1:graph 7b-bs256:graph
step sidecar_overhead "$SIDECAR_CAP_S" "$PYTHON" benchmarks/sidecar_overhead.py

echo
echo "=== summary ($((SECONDS)) s in all; records and logs in $OUT)"
echo "gpu tests: exit ${rc[gpu_tests]}: $(tail -1 "$OUT/gpu_tests.log")"
echo "decode_roofline: exit ${rc[decode_roofline]}; sidecar_overhead: exit ${rc[sidecar_overhead]}"
"$PYTHON" - "$OUT" <<'PY'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
for kind in ("decode", "sidecar"):
    if not list(out.glob(f"*-{kind}.json")):
        print(f"no *-{kind}.json record in {out}: see the step's log")
for path in sorted(out.glob("*-decode.json")):
    r = json.loads(path.read_text())
    bw = r["bandwidth"]["copy"]["bytes_per_s"] / 1e9
    print(f"{path.name}: {r['machine']['device_name']}, copy bandwidth {bw:.0f} GB/s")
    for c in r["results"]:
        if "error" in c:
            print(f"  {c['case']:<9} {c['mode']:<7} ERROR {c['error'][:100]}")
            continue
        target = ""
        if c["target"] is not None:
            verdict = "met" if c["target_met"] else "MISSED"
            target = f"target {c['target']:,.0f} {verdict} ({c['target_margin_pct']:+.1f} %)"
        print(f"  {c['case']:<9} {c['mode']:<7} {c['ms_per_step']:7.2f} ms/step "
              f"{c['decode_tok_per_s']:8.0f} dec tok/s {c['output_tok_per_s']:8.0f} out tok/s "
              f"MBU {c['mbu_vs_copy']:.0%} of copy  {target}")
    for p in r["profiles"]:
        if "busy_us_per_step" in p:
            top = p["top"][0]["name"][:60] if p["top"] else "-"
            print(f"  profile {p['case']} {p['mode']}: kernels busy {p['busy_share_of_step']:.0%} "
                  f"of the step; top: {top}")
        else:
            print(f"  profile {p['case']} {p['mode']}: ERROR {p.get('error', '')[:100]}")
for path in sorted(out.glob("*-sidecar.json")):
    s = json.loads(path.read_text())["summary"]
    worst = s["max_abs_energy_relative_difference"]
    print(f"{path.name}: tokens/s on vs off {s['tok_diff_pct']:+.2f} % "
          f"{s['tok_verdict']}; energy counter vs integral "
          f"{'' if worst is None else f'{worst:.2%} '}{s['energy_verdict']}")
PY

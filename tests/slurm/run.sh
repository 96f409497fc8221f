#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine (Debian, as root), and the workflow's small grid run
# through profiles/slurm on it: every job an sbatch job, the result compared with a local run.
# Usage: bash tests/slurm/run.sh    (docs/slurm.md). Ends with "slurm test: N passed, M failed".
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
# Checks run in other folders: a relative interpreter path must not depend on where they run.
case $PYTHON in */*) PYTHON=$(cd "$(dirname "$PYTHON")" && pwd)/$(basename "$PYTHON") ;; esac
# The `slurm` extra's pins in pyproject.toml (tests/test_slurm_profile.py checks they agree).
PLUGINS=(snakemake-executor-plugin-slurm==2.8.0 snakemake-executor-plugin-slurm-jobstep==0.6.1)
PLUGIN_SITE=/var/cache/tokencarbon-slurm/site # used only where the venv lacks the plugin
STATE=/var/lib/tokencarbon-slurm-test          # daemons' state, socket, logs, pids: wiped each run
# The default path, not $SLURM_CONF: the jobstep plugin drops SLURM_CONF before srun inside a job.
CONF=/etc/slurm/slurm.conf
GRES_CONF=/etc/slurm/gres.conf
MARK="# written by tokencarbon tests/slurm/run.sh, rewritten on each run"
# Seconds before the plugin's first status check (default 40): the small grid's jobs take ~7 s.
STATUS_S=7
NODE=$(hostname -s)
WORK=$(mktemp -d /tmp/tokencarbon-slurm.XXXXXX)
started=$SECONDS
passed=0
failed=0

log() { echo "[slurm test $((SECONDS - started))s] $*"; }

# Stops what this script started, by the PIDs it recorded: the running check's process group (its
# snakemake runs), the SLURM jobs, then slurmd, slurmctld and munged. Also what a previous run left
# when it was killed too hard for its trap (SIGKILL).
stop_all() {
    local pid name
    if [ -f "$STATE/pids/check" ]; then
        pid=$(cat "$STATE/pids/check")
        # Snakemake answers SIGTERM by waiting for its running jobs: SIGKILL after a grace period.
        kill -- "-$pid" 2>/dev/null
        for _ in $(seq 10); do kill -0 -- "-$pid" 2>/dev/null || break; sleep 0.3; done
        kill -9 -- "-$pid" 2>/dev/null
        rm -f "$STATE/pids/check"
    fi
    if [ -f "$STATE/pids/slurmctld" ] && kill -0 "$(cat "$STATE/pids/slurmctld")" 2>/dev/null; then
        squeue -h -o %i -t PENDING,RUNNING 2>/dev/null | xargs -r scancel 2>/dev/null || true
        # slurmstepd outlives slurmd: let the cancelled jobs' steps end first.
        for _ in $(seq 30); do [ -z "$(squeue -h -t RUNNING,COMPLETING 2>/dev/null)" ] && break; sleep 0.5; done
    fi
    for name in slurmd slurmctld munged; do
        [ -f "$STATE/pids/$name" ] || continue
        pid=$(cat "$STATE/pids/$name")
        # Only a process that is still the daemon we started (its PID not reused since).
        if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ]; then
            kill "$pid"
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
            kill -9 "$pid" 2>/dev/null
        fi
        rm -f "$STATE/pids/$name"
    done
}

finish() {
    local status=$?
    set +e # clean up as far as possible, whatever fails
    stop_all
    if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then
        failed=1 # the cluster could not be set up, or the run was interrupted
    fi
    if [ "$failed" -eq 0 ]; then rm -rf "$WORK"; else log "logs kept in $WORK and $STATE/log"; fi
    echo "slurm test runtime: $((SECONDS - started)) s"
    echo "slurm test: $passed passed, $failed failed"
    # An EXIT trap keeps the script's earlier status unless it exits explicitly.
    if [ "$failed" -eq 0 ]; then exit 0; else exit 1; fi
}
trap finish EXIT
trap 'log "interrupted"; exit 130' INT TERM
# Job control: each check runs as a background job in a process group of its own, so that a signal
# interrupts this script's `wait` at once and stop_all can end the check with all it started.
set -m

wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...: poll every 0.5 s until COMMAND succeeds
    local limit=$1 what=$2
    shift 2
    for _ in $(seq $((limit * 2))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.5; done
    echo "timed out after ${limit}s waiting for $what" >&2
    return 1
}

install_packages() {
    local tool missing=()
    for tool in slurmctld slurmd sinfo munged; do command -v "$tool" >/dev/null || missing+=("$tool"); done
    [ ${#missing[@]} -eq 0 ] && return
    log "installing Debian's slurmctld slurmd slurm-client munge (missing: ${missing[*]})"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
}

# The plugin from the venv (pip install -e ".[slurm]"), else the pinned wheels in a side folder on
# PYTHONPATH, which sbatch --export=ALL hands on to every job.
find_plugin() {
    if ! "$PYTHON" -c "import snakemake_executor_plugin_slurm" 2>/dev/null; then
        if ! PYTHONPATH=$PLUGIN_SITE "$PYTHON" -m pip show -q "${PLUGINS[@]%%==*}" >/dev/null 2>&1; then
            log "installing ${PLUGINS[*]} into $PLUGIN_SITE"
            "$PYTHON" -m pip install -q --no-deps --target "$PLUGIN_SITE" "${PLUGINS[@]}"
        fi
        export PYTHONPATH=$PLUGIN_SITE${PYTHONPATH:+:$PYTHONPATH}
    fi
    log "$("$PYTHON" -m pip show snakemake-executor-plugin-slurm | sed -n 's/^Version: /plugin version /p')"
}

write_config() {
    local file hw mem_mb
    for file in "$CONF" "$GRES_CONF"; do
        if [ -f "$file" ] && ! grep -qxF "$MARK" "$file"; then
            echo "$file exists and was not written by this script: not touching a real cluster's config" >&2
            return 1
        fi
    done
    # The node as slurmd sees it (CPUs, sockets, cores, memory), so slurmd accepts the config.
    hw=$(slurmd -C | head -1 | sed 's/^NodeName=[^ ]* //')
    mem_mb=${hw##*RealMemory=}
    mem_mb=${mem_mb%% *}
    # profiles/slurm asks 64000 MB for a GPU cell; the stand-in GPU node declares at least that
    # (config_overrides: slurmd takes the declared node as it is). CPU jobs ask for 4000 MB each.
    hw=${hw/RealMemory=$mem_mb/RealMemory=$((mem_mb > 64000 ? mem_mb : 64000))}
    mkdir -p /etc/slurm
    cat >"$CONF" <<EOF
$MARK
ClusterName=tokencarbon-test
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket=$STATE/munge/munge.socket
MpiDefault=none
# No cgroups in a container: track job processes through /proc, bind no tasks.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmdParameters=config_overrides
ReturnToService=2
# squeue keeps a finished job an hour: the plugin's squeue status checks need >= 3 x their first wait,
# and check_cpu_workflow reads every job of the run from squeue after it ends (a run on a loaded
# 2-core machine took 658 s, and its first jobs had left squeue at MinJobAge=300).
MinJobAge=3600
# No slurmdbd: sacct has nothing to read, as on clusters without accounting.
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
# One stand-in H100 (a GRES on /dev/null) so that a GPU-platform cell can be scheduled.
GresTypes=gpu
NodeName=$NODE NodeAddr=127.0.0.1 $hw Gres=gpu:h100:1 State=UNKNOWN
PartitionName=main Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$NODE MaxTime=INFINITE State=UP
EOF
    # gres/gpu wants a device file; /dev/null stands in for /dev/nvidia0.
    printf '%s\nNodeName=%s Name=gpu Type=h100 File=/dev/null\n' "$MARK" "$NODE" >"$GRES_CONF"
    chmod 0644 "$CONF" "$GRES_CONF"
}

start_daemons() {
    local socket=$STATE/munge/munge.socket
    if [ -d "$STATE/pids" ]; then stop_all || true; fi
    rm -rf "$STATE"
    mkdir -p "$STATE"/{ctld,spool,run,log,pids}
    # munged wants its key readable by the munge user alone and its folders writable by no one else.
    install -d -o munge -g munge -m 0755 "$STATE/munge"
    [ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
    setpriv --reuid=munge --regid=munge --init-groups /usr/sbin/munged --foreground \
        --socket="$socket" --pid-file="$STATE/munge/munged.pid" --seed-file="$STATE/munge/munged.seed" \
        --log-file="$STATE/munge/munged.log" >"$STATE/log/munged.out" 2>&1 &
    echo $! >"$STATE/pids/munged"
    wait_for 20 munged bash -c "munge -S '$socket' -n | unmunge -S '$socket'"
    slurmctld -D >"$STATE/log/slurmctld.out" 2>&1 &
    echo $! >"$STATE/pids/slurmctld"
    wait_for 30 slurmctld scontrol ping
    slurmd -D >"$STATE/log/slurmd.out" 2>&1 &
    echo $! >"$STATE/pids/slurmd"
    wait_for 60 "node $NODE idle" bash -c "sinfo -h -n '$NODE' -o %t | grep -qx idle"
    log "cluster up: $(sinfo -h -o '%P %N %t cpus=%c mem=%m gres=%G' | paste -sd';')"
}

# Check 1: the embedded default's small grid, every job but `all` an sbatch job on the CPU node.
check_cpu_workflow() {
    local local_run
    "$PYTHON" tests/slurm/check.py make "$WORK/local"
    "$PYTHON" tests/slurm/check.py make "$WORK/slurm"
    # Alongside each other: the SLURM run spends most of its time waiting between status checks.
    log "local run (snakemake --cores 1 all) and SLURM run (snakemake --workflow-profile profiles/slurm all)"
    (cd "$WORK/local" && exec "$PYTHON" -m snakemake --cores 1 all >"$WORK/local.log" 2>&1) &
    local_run=$!
    (cd "$WORK/slurm" && "$PYTHON" -m snakemake --workflow-profile profiles/slurm \
        --slurm-init-seconds-before-status-checks "$STATUS_S" all >"$WORK/slurm.log" 2>&1) ||
        { tail -40 "$WORK/slurm.log"; return 1; }
    log "SLURM run done"
    wait "$local_run" || { tail -40 "$WORK/local.log"; return 1; }
    log "local run done"
    squeue -h --states=all -o '%i|%T|%k|%P|%C|%m|%l' >"$WORK/squeue.txt"
    "$PYTHON" tests/slurm/check.py evidence "$WORK/slurm.log" "$STATE/log/slurmctld.log" \
        "$WORK/squeue.txt" "$WORK/local.log"
    "$PYTHON" tests/slurm/check.py compare "$WORK/local" "$WORK/slurm"
}

# Check 2: a GPU-platform cell goes out with the profile's GPU mapping (partition gpu, --gpus=h100:1),
# SLURM schedules it on the stand-in H100, and the cell refuses the CPU it really got.
check_gpu_cell() {
    # the small grid's study folder: .test/config-cpu's `study` (tests/harness.py)
    local study=results/test-cpu
    local cell=$study/cells/h100-sxm-80gb/tiny-llama/bs1 job
    if (cd "$WORK/slurm" && "$PYTHON" -m snakemake --workflow-profile profiles/slurm \
        --slurm-init-seconds-before-status-checks "$STATUS_S" \
        "$cell/meta.json" --config 'platforms={"h100-sxm-80gb": {}}' >"$WORK/gpu.log" 2>&1); then
        echo "the H100 cell ran on a machine with no H100" >&2
        return 1
    fi
    job=$(sed -n 's/.*rule_run_cell.*\/\([0-9]*\)\.log).*/\1/p' "$WORK/gpu.log" | head -1)
    scontrol show job "${job:-none}" >"$WORK/gpu_job.txt"
    "$PYTHON" tests/slurm/check.py gpu-cell "$WORK/gpu.log" "$WORK/gpu_job.txt" \
        "$WORK/slurm/$study/logs/run_cell/h100-sxm-80gb/tiny-llama/bs1.log"
}

run_check() { # run_check NAME: a failed check is counted, and the next one still runs
    local rc=0
    (set -e; "$1") &
    echo $! >"$STATE/pids/check"
    wait "$(cat "$STATE/pids/check")" || rc=$?
    rm -f "$STATE/pids/check"
    if [ "$rc" -eq 0 ]; then passed=$((passed + 1)); log "PASS $1"; else failed=$((failed + 1)); log "FAIL $1"; fi
}

cd "$REPO"
install_packages
find_plugin
write_config
start_daemons
run_check check_cpu_workflow
run_check check_gpu_cell

# OOM probe, per (platform, model): the largest batch that runs the workload's longest prompt plus
# longest output. A checkpoint: the sweep's input function (common.smk: cell_files, through the plan) is its only reader.
# A probe of an equal key measured before (results/.cache/probe, shared by every study; not an
# output) is reused; the job still writes its own probe.json, saying reused_from
# (docs/architecture.md).


checkpoint probe_max_batch:
    input:
        engine=engine_manifest,
        workload=PLAN.out("workload/{model}.parquet"),
        measured=measured_here,
        code=code_inputs("probe_max_batch"),
    output:
        PLAN.probe_pattern(),
    log:
        PLAN.log("probe_max_batch/{platform}/{model}.log"),
    wildcard_constraints:
        platform=choices(PLAN.measured),
    conda:
        "../envs/tokencarbon.yaml"
    resources:
        gpu=gpu_count,
    params:
        model=model_params,
        platform=probe_platform_params,
        limits=probe_limits,
        backend=PLAN.backend,
    script:
        "../scripts/probe_max_batch.py"


# A cpu platform's peaks measured on this machine (platforms.<name>.spec.measure: fp32/fp16/bf16
# matmul and copy bandwidth, tokencarbon.peak), on its leased CPUs, with every core Snakemake has
# locally (no other job of the workflow beside it; a few seconds; measure_threads). Only compute_metrics reads the result:
# a re-measurement reruns metrics and figures, never a cell (docs/metrics.md).
rule measure_platform:
    input:
        measured=measured_here,
        code=code_inputs("measure_platform"),
    output:
        PLAN.out("platforms/{platform}/spec.json"),
    log:
        PLAN.log("measure_platform/{platform}.log"),
    wildcard_constraints:
        platform=choices(PLAN.to_measure),
    conda:
        "../envs/tokencarbon.yaml"
    threads: measure_threads
    params:
        platform=measure_params,
    script:
        "../scripts/measure_platform.py"

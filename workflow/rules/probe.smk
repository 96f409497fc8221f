# OOM probe, per (platform, model): the largest batch that runs the workload's longest prompt plus
# longest output. A checkpoint: the sweep's input function (common.smk: batch_sizes) is its only reader.


checkpoint probe_max_batch:
    input:
        engine=engine_manifest,
        workload="results/workload/{model}.parquet",
        measured=measured_here,
        code=code_inputs("probe_max_batch"),
    output:
        "results/cells/{platform}/{model}/probe.json",
    log:
        "logs/probe_max_batch/{platform}/{model}.log",
    wildcard_constraints:
        platform=MEASURED_PATTERN,
    conda:
        "../envs/tokencarbon.yaml"
    resources:
        gpu=gpu_count,
    params:
        model=engine_params,
        platform=probe_platform_params,
        limits=probe_limits,
        backend=BACKEND,
    script:
        "../scripts/probe_max_batch.py"

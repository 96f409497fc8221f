# Cells, per (platform, model, n), with the power sidecar sampling alongside: static cells run the
# workload in batches of n (bs{n}, the study's method); continuous cells serve it with at most n
# requests at once (cb{n}, max_num_seqs). Cells never read the probe's output (it would tie every
# cell to it); static cells take no serving params, so a serving change never reruns them.


rule run_cell:
    input:
        engine=engine_manifest,
        workload="results/workload/{model}.parquet",
        measured=measured_here,
        code=code_inputs("run_cell"),
    output:
        batches="results/cells/{platform}/{model}/bs{batch}/batches.parquet",
        power="results/cells/{platform}/{model}/bs{batch}/power.parquet",
        meta="results/cells/{platform}/{model}/bs{batch}/meta.json",
    log:
        "logs/run_cell/{platform}/{model}/bs{batch}.log",
    wildcard_constraints:
        platform=MEASURED_PATTERN,
    conda:
        "../envs/tokencarbon.yaml"
    resources:
        gpu=gpu_count,
    params:
        model=engine_params,
        platform=cell_platform_params,
        run=run_params,
    script:
        "../scripts/run_cell.py"


rule run_continuous_cell:
    input:
        engine=engine_manifest,
        workload="results/workload/{model}.parquet",
        measured=measured_here,
        code=code_inputs("run_cell"),
    output:
        batches="results/cells/{platform}/{model}/cb{batch}/batches.parquet",
        requests="results/cells/{platform}/{model}/cb{batch}/requests.parquet",
        steps="results/cells/{platform}/{model}/cb{batch}/steps.parquet",
        power="results/cells/{platform}/{model}/cb{batch}/power.parquet",
        meta="results/cells/{platform}/{model}/cb{batch}/meta.json",
    log:
        "logs/run_continuous_cell/{platform}/{model}/cb{batch}.log",
    wildcard_constraints:
        platform=MEASURED_PATTERN,
    conda:
        "../envs/tokencarbon.yaml"
    resources:
        gpu=gpu_count,
    params:
        model=engine_params,
        platform=cell_platform_params,
        run=run_params,
        serving=serving_params,
    script:
        "../scripts/run_cell.py"

# Cells, per (platform, model, batch): the workload in static batches of that size, with the power
# sidecar sampling alongside. Cells never read the probe's output (it would tie every cell to it).


rule run_cell:
    input:
        engine=engine_manifest,
        workload="results/workload/{model}.parquet",
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

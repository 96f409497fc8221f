# Metrics: energy (counter and integral), carbon (constant or hourly trace, PUE, embodied),
# per-token figures, MFU and MBU, one row per cell (docs/metrics.md gives the formulas).


rule compute_metrics:
    input:
        unpack(metrics_inputs),
        batches="results/tables/batches.parquet",
        power="results/tables/power.parquet",
        cells="results/tables/cells.parquet",
        code=METRICS_CODE,
    output:
        "results/tables/metrics.parquet",
    log:
        "logs/compute_metrics.log",
    conda:
        "../envs/tokencarbon.yaml"
    params:
        carbon=carbon_params,
    script:
        "../scripts/compute_metrics.py"

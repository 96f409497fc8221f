# Metrics: energy (counter and integral), carbon (constant or hourly trace, PUE, embodied range),
# per-token figures, MFU and MBU, one row per cell and one per repeat of each cell, with bootstrap
# intervals over repeats (docs/metrics.md gives the formulas). Continuous cells' requests and
# steps tables come in through metrics_inputs (common.smk) as inputs named requests and steps.


rule compute_metrics:
    input:
        unpack(metrics_inputs),
        batches=PLAN.out("tables/batches.parquet"),
        power=PLAN.out("tables/power.parquet"),
        cells=PLAN.out("tables/cells.parquet"),
        # peaks rule measure_platform measured (platforms.<name>.spec.measure), if any
        measurements=measurement_files,
        code=code_inputs("compute_metrics"),
        platforms=PLAN.resource("platforms.csv"),
    output:
        metrics=PLAN.out("tables/metrics.parquet"),
        repeats=PLAN.out("tables/metrics_repeats.parquet"),
    log:
        PLAN.log("compute_metrics.log"),
    conda:
        "../envs/tokencarbon.yaml"
    # carbon, `metrics` (tokencarbon.metrics.MetricsSettings), per platform its config spec
    # overrides and its row of resources/platforms.csv, and {architecture name: fields} of every
    # configured model (an `auto` one has no file in resources/models): Plan.metrics_params
    params:
        **PLAN.metrics_params(),
    script:
        "../scripts/compute_metrics.py"


# Time-shift what-if (location-based): the study's measured energy started at every hour of
# carbon.trace_day (or the trace's first day), best start, forecast-free policy; needs a trace.
rule compute_timeshift:
    input:
        unpack(metrics_inputs),
        metrics=PLAN.out("tables/metrics.parquet"),
        cells=PLAN.out("tables/cells.parquet"),
        code=code_inputs("compute_timeshift"),
    output:
        PLAN.out("tables/timeshift.parquet"),
    log:
        PLAN.log("compute_timeshift.log"),
    conda:
        "../envs/tokencarbon.yaml"
    params:
        carbon=PLAN.carbon_params(trace_day=True),
    script:
        "../scripts/compute_timeshift.py"

# The study's report (tokencarbon.report): one self-contained HTML page to explore, the headline
# table beside the paper's, interactive charts with a latency-SLO slider, every cell, the figures
# `all` draws (their PNGs and captions) and the provenance (each cell's meta.json, with the config
# slices it ran with). Its path is the plan's (Plan.report_target). Its params are slices other
# jobs already depend on (the carbon accounting, the SLOs), so a config change that changes no
# number reruns no report.
rule build_report:
    input:
        metrics=PLAN.out("tables/metrics.parquet"),
        cells=PLAN.out("tables/cells.parquet"),
        meta=cell_metas,
        figures=report_figures(),
        captions=report_captions(),
        code=code_inputs("build_report"),
    output:
        html=PLAN.report_target(),
    log:
        PLAN.log("build_report.log"),
    conda:
        "../envs/tokencarbon.yaml"
    params:
        carbon=PLAN.carbon_params(),
        slos_s_per_token=[
            float(s) for s in config["summary"]["latency_slos_s_per_token"]
        ],
    script:
        "../scripts/build_report.py"

# Results out: one JSON per cell and metrics.csv under results/<study>/export/ (docs/export.md gives
# the schema, versioned, its field names close to ML.ENERGY's and optimum-benchmark's results).
# Every cell's meta.json is an input (imported cells' provenance goes into their JSON).


rule export_results:
    input:
        metrics=PLAN.out("tables/metrics.parquet"),
        cells=PLAN.out("tables/cells.parquet"),
        meta=cell_metas,
        code=code_inputs("export_results"),
    output:
        csv=PLAN.out("export/metrics.csv"),
        cells=directory(PLAN.out("export/cells")),
    log:
        PLAN.log("export_results.log"),
    conda:
        "../envs/tokencarbon.yaml"
    script:
        "../scripts/export_results.py"

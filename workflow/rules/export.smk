# Results out: one JSON per cell and metrics.csv under results/export/ (docs/export.md gives the
# schema, versioned, its field names close to ML.ENERGY's and optimum-benchmark's results). Every
# cell's meta.json is an input (imported cells' provenance goes into their JSON).


rule export_results:
    input:
        metrics="results/tables/metrics.parquet",
        cells="results/tables/cells.parquet",
        meta=cell_metas,
        code=code_inputs("export_results"),
    output:
        csv="results/export/metrics.csv",
        cells=directory("results/export/cells"),
    log:
        "logs/export_results.log",
    conda:
        "../envs/tokencarbon.yaml"
    script:
        "../scripts/export_results.py"

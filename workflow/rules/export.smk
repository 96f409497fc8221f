# Results out: one JSON per cell and metrics.csv under results/export/ (docs/export.md gives the
# schema, versioned, its field names close to ML.ENERGY's and optimum-benchmark's results).
# export_targets() lists the outputs for `all`; every cell's meta.json is an input (imported cells'
# provenance goes into their JSON).
import functools

from tokencarbon import export as _export

export_targets = functools.partial(list, _export.EXPORT_TARGETS)
export_meta_files = functools.partial(_export.meta_inputs, all_cell_files)


rule export_results:
    input:
        metrics="results/tables/metrics.parquet",
        cells="results/tables/cells.parquet",
        meta=export_meta_files,
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

# Results out: one JSON per cell and metrics.csv under results/export/ (docs/export.md gives the
# schema, versioned, its field names close to ML.ENERGY's and optimum-benchmark's results).


def export_targets():
    """The export stage's outputs, for `all` (common.smk's all_targets adds them)."""
    return ["results/export/metrics.csv", "results/export/cells"]


def export_meta_files(wildcards):
    """Every cell's meta.json (imported cells' provenance goes into their JSON)."""
    return all_cell_files(wildcards)["meta"]


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

# Aggregation: every cell of the configured platforms and models into three tables
# (docs/data.md documents their columns).


rule aggregate_cells:
    input:
        unpack(all_cell_files),
        code=code_inputs("aggregate_cells"),
    output:
        batches="results/tables/batches.parquet",
        power="results/tables/power.parquet",
        cells="results/tables/cells.parquet",
    log:
        "logs/aggregate_cells.log",
    conda:
        "../envs/tokencarbon.yaml"
    script:
        "../scripts/aggregate_cells.py"

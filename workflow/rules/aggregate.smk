# Aggregation: every cell of the configured platforms and models into tables (docs/data.md
# documents their columns); with continuous cells also their requests and steps.


rule aggregate_cells:
    input:
        unpack(all_cell_files),
        code=code_inputs("aggregate_cells"),
    output:
        **aggregate_outputs(),
    log:
        "logs/aggregate_cells.log",
    conda:
        "../envs/tokencarbon.yaml"
    script:
        "../scripts/aggregate_cells.py"

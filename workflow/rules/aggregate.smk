# Aggregation: every cell of the plan (tokencarbon.plan) into tables (docs/data.md documents their
# columns); with continuous cells also their requests and steps.


rule aggregate_cells:
    input:
        unpack(cell_files),
        code=code_inputs("aggregate_cells"),
    output:
        **PLAN.aggregate_outputs(),
    log:
        PLAN.log("aggregate_cells.log"),
    conda:
        "../envs/tokencarbon.yaml"
    script:
        "../scripts/aggregate_cells.py"

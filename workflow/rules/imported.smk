# Imported platforms: cells built from an external power log and a timing file
# (platforms.<name>.imported in the config; docs/import.md), never measured here. Their cells are in
# the measured cells' schemas, so aggregation, metrics, figures and export cover them. The plan
# (tokencarbon.plan) reads their batch sizes from the timing file and checked both files at DAG
# build (importing.check_imported_platform).


rule import_cell:
    input:
        unpack(import_inputs),
    output:
        **PLAN.cell_outputs(STATIC),
    log:
        PLAN.cell_log("import_cell", STATIC),
    wildcard_constraints:
        platform=choices(PLAN.imported),
    conda:
        "../envs/tokencarbon.yaml"
    params:
        spec=import_params,
    script:
        "../scripts/import_cell.py"

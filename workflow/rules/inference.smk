# Cells, per (platform, model, n), with the power sidecar sampling alongside: static cells run the
# workload in batches of n (bs{n}, the study's method); continuous cells serve it with at most n
# requests at once (cb{n}, max_num_seqs). Cells never read the probe's output (it would tie every
# cell to it); static cells take no serving params, so a serving change never reruns them. Their
# folders and files: tokencarbon.plan (CellKey, CELL_FILES).


rule run_cell:
    input:
        engine=engine_manifest,
        workload=PLAN.out("workload/{model}.parquet"),
        measured=measured_here,
        code=code_inputs("run_cell"),
    output:
        **PLAN.cell_outputs(STATIC),
    log:
        PLAN.cell_log("run_cell", STATIC),
    wildcard_constraints:
        platform=choices(PLAN.measured),
    conda:
        "../envs/tokencarbon.yaml"
    resources:
        gpu=gpu_count,
    params:
        model=model_params,
        platform=platform_params,
        run=cell_run(STATIC),
    script:
        "../scripts/run_cell.py"


if PLAN.backend == "openai_server":

    # A server cell: a continuous cell (cb{n}) whose engine is an OpenAI-compatible server already
    # running (backend.openai_server, docs/server.md): no engine job, the server checked when the
    # DAG is built (server_measured_here), params `server` its settings (no key) and tokenizer.
    rule run_continuous_cell:
        input:
            unpack(cell_inputs),
            measured=server_measured_here,
            code=code_inputs("run_cell"),
        output:
            **PLAN.cell_outputs(CONTINUOUS),
        log:
            PLAN.cell_log("run_continuous_cell", CONTINUOUS),
        wildcard_constraints:
            platform=choices(PLAN.measured),
        conda:
            "../envs/tokencarbon.yaml"
        resources:
            gpu=gpu_count,
        params:
            model=model_params,
            platform=platform_params,
            run=cell_run(CONTINUOUS),
            serving=serving_params,
            server=server_params,
        script:
            "../scripts/run_cell.py"

else:

    rule run_continuous_cell:
        input:
            engine=engine_manifest,
            workload=PLAN.out("workload/{model}.parquet"),
            measured=measured_here,
            code=code_inputs("run_cell"),
        output:
            **PLAN.cell_outputs(CONTINUOUS),
        log:
            PLAN.cell_log("run_continuous_cell", CONTINUOUS),
        wildcard_constraints:
            platform=choices(PLAN.measured),
        conda:
            "../envs/tokencarbon.yaml"
        resources:
            gpu=gpu_count,
        params:
            model=model_params,
            platform=platform_params,
            run=cell_run(CONTINUOUS),
            serving=serving_params,
        script:
            "../scripts/run_cell.py"

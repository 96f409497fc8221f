# Engine stage, per (platform, model): what a cell loads. The backend is chosen by config
# (backend.name); each backend has its own rule and output folder, so switching reruns cleanly.


rule build_torch_engine:
    input:
        unpack(engine_inputs),
        code=code_inputs("build_torch_engine"),
    output:
        PLAN.out("engines/{platform}/{model}/torch/manifest.json"),
    log:
        PLAN.log("build_torch_engine/{platform}/{model}.log"),
    wildcard_constraints:
        platform=choices(PLAN.measured),
    conda:
        "../envs/tokencarbon.yaml"
    params:
        model=model_params,
    script:
        "../scripts/build_torch_engine.py"


rule build_transformers_engine:
    input:
        unpack(engine_inputs),
        code=code_inputs("build_transformers_engine"),
    output:
        PLAN.out("engines/{platform}/{model}/transformers/manifest.json"),
    log:
        PLAN.log("build_transformers_engine/{platform}/{model}.log"),
    wildcard_constraints:
        platform=choices(PLAN.measured),
    conda:
        "../envs/tokencarbon.yaml"
    params:
        model=model_params,
        options=PLAN.transformers_options(),
    script:
        "../scripts/build_transformers_engine.py"


rule build_trtllm_engine:
    input:
        unpack(engine_inputs),
        code=code_inputs("build_trtllm_engine"),
    output:
        manifest=PLAN.out("engines/{platform}/{model}/tensorrt_llm/manifest.json"),
        engine=directory(PLAN.out("engines/{platform}/{model}/tensorrt_llm/engine")),
    log:
        PLAN.log("build_trtllm_engine/{platform}/{model}.log"),
    wildcard_constraints:
        platform=choices(PLAN.measured),
    conda:
        "../envs/tokencarbon.yaml"
    params:
        model=model_params,
        build=trtllm_build_params,
    script:
        "../scripts/build_trtllm_engine.py"

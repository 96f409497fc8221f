# Workload stage: ShareGPT-format conversations -> filtered pool per family -> seeded sample per model.


rule generate_synthetic_sharegpt:
    input:
        code=code_inputs("generate_synthetic_sharegpt"),
    output:
        PLAN.out("dataset/synthetic_sharegpt.json"),
    log:
        PLAN.log("generate_synthetic_sharegpt.log"),
    conda:
        "../envs/tokencarbon.yaml"
    params:
        conversations=config["workload"]["synthetic_conversations"],
        seed=config["seed"],
    script:
        "../scripts/generate_synthetic_sharegpt.py"


rule train_tokenizer:
    input:
        corpus=PLAN.tokenizer_corpus(),
        code=code_inputs("train_tokenizer"),
    output:
        directory(PLAN.out("tokenizer/builtin")),
    log:
        PLAN.log("train_tokenizer.log"),
    conda:
        "../envs/tokencarbon.yaml"
    params:
        vocab_size=config["workload"]["builtin_vocab_size"],
    script:
        "../scripts/train_tokenizer.py"


rule filter_sharegpt:
    input:
        unpack(filter_inputs),
    output:
        PLAN.out("dataset/{family}.parquet"),
    log:
        PLAN.log("filter_sharegpt/{family}.log"),
    conda:
        "../envs/tokencarbon.yaml"
    params:
        spec=filter_params,
    script:
        "../scripts/filter_sharegpt.py"


rule sample_workload:
    input:
        pool=workload_pool,
        code=code_inputs("sample_workload"),
    output:
        PLAN.out("workload/{model}.parquet"),
    log:
        PLAN.log("sample_workload/{model}.log"),
    conda:
        "../envs/tokencarbon.yaml"
    params:
        num_prompts=config["workload"]["num_prompts"],
        seed=config["seed"],
    script:
        "../scripts/sample_workload.py"

# Config validation, wildcard constraints and input functions shared by every stage.
import json
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

sys.path.insert(0, str(Path(workflow.basedir) / "workflow"))

from tokencarbon.config import (
    auto_batch_sizes,
    check_config,
    coerce_cli_strings,
    model_slice,
    platform_slice,
)
from tokencarbon.errors import ConfigError


def _validate_config():
    import yaml

    schema = yaml.safe_load((Path(workflow.basedir) / "workflow/schemas/config.schema.yaml").read_text())
    config.update(coerce_cli_strings(dict(config), schema))
    try:
        validate(config, schema="../schemas/config.schema.yaml")
    except WorkflowError as exc:
        # snakemake.utils.validate raises inside its `except ValidationError` block
        cause = exc.__context__
        if not hasattr(cause, "absolute_path"):
            raise
        key = ".".join(str(p) for p in cause.absolute_path) or "(top level)"
        raise ConfigError(
            f"invalid config at key {key}: {cause.message} "
            f"(schema: workflow/schemas/config.schema.yaml; keys: config/README.md)"
        ) from None
    check_config(config)


_validate_config()

PLATFORMS = sorted(config["platforms"])
MODELS = sorted(config["models"])
FAMILIES = sorted({config["models"][m]["family"] for m in MODELS})
BACKEND = config["backend"]["name"]

# Package modules each stage's results depend on: Snakemake's code trigger sees only the script
# adapters, so the modules they import are listed as inputs (style.md).
PKG = "workflow/tokencarbon"
WORKLOAD_CODE = [f"{PKG}/workload.py", f"{PKG}/tokenizer.py"]
ENGINE_CODE = [f"{PKG}/models.py", f"{PKG}/backends/torch_backend.py"]
CELL_CODE = ENGINE_CODE + [
    f"{PKG}/cell.py",
    f"{PKG}/hardware.py",
    f"{PKG}/power/sidecar.py",
    f"{PKG}/power/nvml.py",
    f"{PKG}/power/modeled.py",
]


wildcard_constraints:
    platform="|".join(PLATFORMS),
    model="|".join(MODELS),
    family="|".join(FAMILIES),
    batch=r"\d+",


def family_of(model):
    return config["models"][model]["family"]


def tokenizer_spec(family):
    """'builtin' means the tokenizer the workflow trains; anything else is a local HF dir or id."""
    return config["families"][family]["tokenizer"]


def workload_source():
    return config["workload"]["source"]


def filter_inputs(wildcards):
    inputs = {"code": WORKLOAD_CODE}
    source = workload_source()
    if source == "synthetic":
        inputs["source"] = "results/dataset/synthetic_sharegpt.json"
    elif not source.startswith("hf:"):
        inputs["source"] = source
    if tokenizer_spec(wildcards.family) == "builtin":
        inputs["tokenizer"] = "results/tokenizer/builtin"
    return inputs


def filter_params(wildcards):
    family = config["families"][wildcards.family]
    return {
        "source": workload_source(),
        "split": config["workload"]["split"],
        "tokenizer": family["tokenizer"],
        "min_tokens": family["min_tokens"],
        "max_tokens": family["max_tokens"],
    }


def family_pool(wildcards):
    return f"results/dataset/{family_of(wildcards.model)}.parquet"


def engine_manifest(wildcards):
    return f"results/engines/{wildcards.platform}/{wildcards.model}/{BACKEND}/manifest.json"


def architecture_file(wildcards):
    return f"resources/models/{config['models'][wildcards.model]['architecture']}.json"


def trtllm_build_params(wildcards):
    family = config["families"][family_of(wildcards.model)]
    return {
        "max_batch_size": config["sweep"]["max_batch"],
        "max_input_len": family["max_tokens"],
        "max_output_len": family["max_tokens"],
    }


def engine_params(wildcards):
    return model_slice(config, wildcards.model)


def cell_platform_params(wildcards):
    return platform_slice(config, wildcards.platform)


def run_params(wildcards):
    backend = config["backend"]
    return {
        "backend": BACKEND,
        "cuda_graphs": backend["cuda_graphs"],
        "warmup_batches": backend["warmup_batches"],
    }


def gpu_count(wildcards):
    return 0 if platform_slice(config, wildcards.platform)["kind"] == "cpu" else 1


def probe_limits(wildcards):
    limit = config["platforms"][wildcards.platform]["memory_limit_gb"]
    return {"memory_limit_gb": limit, "max_batch": config["sweep"]["max_batch"]}


def batch_sizes(platform, model):
    """The sweep: explicit, or read from the OOM probe (the only reader of the checkpoint)."""
    sizes = config["sweep"]["batch_sizes"]
    if sizes != "auto":
        return sorted(sizes)
    probe = checkpoints.probe_max_batch.get(platform=platform, model=model).output[0]
    return auto_batch_sizes(json.loads(Path(probe).read_text())["max_ok"])


def cell_dir(platform, model, batch):
    return f"results/cells/{platform}/{model}/bs{batch}"


def all_cell_dirs(wildcards):
    return [
        cell_dir(p, m, b) for p in PLATFORMS for m in MODELS for b in batch_sizes(p, m)
    ]


def all_cell_files(wildcards):
    return {
        name: [f"{d}/{name}.{ext}" for d in all_cell_dirs(wildcards)]
        for name, ext in [("batches", "parquet"), ("power", "parquet"), ("meta", "json")]
    }


def all_targets():
    return [f"results/workload/{m}.parquet" for m in MODELS] + [
        "results/tables/batches.parquet",
        "results/tables/power.parquet",
        "results/tables/cells.parquet",
    ]

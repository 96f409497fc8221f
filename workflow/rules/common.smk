# Config validation, wildcard constraints and input functions shared by every stage.
import functools
import json
import os
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

# The package this workflow's jobs run: the one beside this Snakefile, for the DAG (sys.path) and
# for every job (PYTHONPATH, inherited by script jobs, their subprocesses and cluster jobs, which
# re-read this file), ahead of any installed copy: a venv shared by several checkouts, or a
# non-editable install, still runs each checkout's own code and reads its own resources/.
PKG_ROOT = Path(workflow.basedir) / "workflow"
sys.path.insert(0, str(PKG_ROOT))
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(PKG_ROOT)]
    + [
        p
        for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
        if p and p != str(PKG_ROOT)
    ]
)


envvars:
    "PYTHONPATH",


from tokencarbon.config import (
    auto_batch_sizes,
    check_config,
    coerce_cli_strings,
    model_slice,
    platform_slice,
    probe_platform_slice,
)
from tokencarbon.errors import ConfigError


def _validate_config():
    import copy

    import yaml

    if workflow.overwrite_configfiles:
        # A --configfile is a whole study (config/paper.yaml): it replaces the embedded default
        # rather than being merged into it (which would add the default's tiny models to it).
        # --config key=value still updates single keys on top of it.
        config.clear()
        config.update(copy.deepcopy(workflow.config_settings.overwrite_config))

    schema = yaml.safe_load(
        (Path(workflow.basedir) / "workflow/schemas/config.schema.yaml").read_text()
    )
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
# Platforms measured on another machine: their cells are copied in, never run here.
IMPORTED = [p for p in PLATFORMS if config["platforms"][p]["import_only"]]
MEASURED = [p for p in PLATFORMS if p not in IMPORTED]
# A pattern no platform name matches when every platform is imported.
MEASURED_PATTERN = "|".join(MEASURED) or "(?!)"
MODELS = sorted(config["models"])
FAMILIES = sorted({config["models"][m]["family"] for m in MODELS})
BACKEND = config["backend"]["name"]


def workdir_path(path):
    """`path` relative to the working directory where it lies inside it, else absolute."""
    path = Path(path).absolute()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


@functools.cache
def code_inputs(script):
    """Package modules that workflow/scripts/<script>.py imports, transitively (an ast walk of its
    imports: tokencarbon/codedeps.py), as a rule's inputs: Snakemake's code trigger sees only the
    script, so these make a code change rerun exactly the jobs it can change (style.md).
    """
    from tokencarbon.codedeps import package_modules

    return [
        workdir_path(p)
        for p in package_modules(
            PKG_ROOT.parent / "workflow/scripts" / f"{script}.py", PKG_ROOT
        )
    ]


def resource_file(*parts):
    """A file under resources/ as jobs read it (tokencarbon.models.resources_dir: this workflow's
    resources/, or $TOKENCARBON_RESOURCES), for rules that list it as an input."""
    from tokencarbon.models import resources_dir

    return workdir_path(resources_dir().joinpath(*parts))


# Kept only while metrics.smk and figures.smk still name them; they are derived, not hand-kept.
METRICS_CODE = code_inputs("compute_metrics") + [resource_file("platforms.csv")]
FIGURE_CODE = sorted(
    set(code_inputs("render_figure"))
    | set(code_inputs("summarize_headlines"))
    | set(code_inputs("tabulate_max_batch"))
)


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


def tokenizer_corpus(wildcards):
    """The builtin tokenizer learns the text it will count: the synthetic corpus or the source file."""
    source = workload_source()
    return (
        "results/dataset/synthetic_sharegpt.json" if source == "synthetic" else source
    )


def filter_inputs(wildcards):
    inputs = {"code": code_inputs("filter_sharegpt")}
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
        # the split only means something for an "hf:" dataset; elsewhere it must not rerun the filter
        "split": (
            config["workload"]["split"] if workload_source().startswith("hf:") else None
        ),
        "tokenizer": family["tokenizer"],
        "min_tokens": family["min_tokens"],
        "max_tokens": family["max_tokens"],
    }


def family_pool(wildcards):
    return f"results/dataset/{family_of(wildcards.model)}.parquet"


def engine_manifest(wildcards):
    return f"results/engines/{wildcards.platform}/{wildcards.model}/{BACKEND}/manifest.json"


def architecture_file(wildcards):
    return resource_file(
        "models", f"{config['models'][wildcards.model]['architecture']}.json"
    )


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
        "compile_decode": backend["compile_decode"],
        "warmup_batches": backend["warmup_batches"],
    }


def gpu_count(wildcards):
    return 0 if platform_slice(config, wildcards.platform)["kind"] == "cpu" else 1


def probe_platform_params(wildcards):
    return probe_platform_slice(wildcards.platform)


def probe_limits(wildcards):
    limit = config["platforms"][wildcards.platform]["memory_limit_gb"]
    return {"memory_limit_gb": limit, "max_batch": config["sweep"]["max_batch"]}


def imported_batch_sizes(platform, model):
    """The cells another machine measured, as copied into results/cells/<platform>/<model>/."""
    found = sorted(
        int(p.parent.name[2:])
        for p in Path(f"results/cells/{platform}/{model}").glob("bs*/meta.json")
    )
    if not found:
        raise ConfigError(
            f"config key platforms.{platform}.import_only: no cells of {model} under "
            f"results/cells/{platform}/{model}/bs*/; copy that folder from the machine that "
            f"measured them, or set import_only to false to run them here"
        )
    return found


def batch_sizes(platform, model):
    """The sweep: explicit, or read from the OOM probe (the only reader of the checkpoint)."""
    if platform in IMPORTED:
        return imported_batch_sizes(platform, model)
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
        for name, ext in [
            ("batches", "parquet"),
            ("power", "parquet"),
            ("meta", "json"),
        ]
    }


def carbon_params(wildcards=None):
    """The carbon slice metrics read (trace_day only concerns figure 6a)."""
    return {k: v for k, v in config["carbon"].items() if k != "trace_day"}


def fig6a_params():
    return dict(config["carbon"])


def metrics_inputs(wildcards):
    if config["carbon"]["source"] == "trace":
        return {"trace": config["carbon"]["trace"]}
    return {}


def fig6a_inputs(wildcards):
    if config["carbon"]["source"] == "trace":
        return {"trace": config["carbon"]["trace"]}
    if config["carbon"]["trace_day"]:
        return {}
    # A constant intensity drawn for the day the cells ran (their first window).
    return {"cells": "results/tables/cells.parquet"}


def arch_family(model):
    from tokencarbon.models import load_architecture

    return load_architecture(config["models"][model]["architecture"]).family


def models_of(family):
    """Configured models of an architecture family ("llama" or "gpt2")."""
    return [m for m in MODELS if arch_family(m) == family]


def analytic_architectures():
    """The study's architectures plus the configured ones, for the analytic figures 1 and 2a."""
    study = [
        "gpt2",
        "gpt2-medium",
        "gpt2-large",
        "gpt2-xl",
        "llama-2-7b",
        "llama-2-13b",
    ]
    configured = [config["models"][m]["architecture"] for m in MODELS]
    return sorted(set(study) | set(configured))


def analytic_architecture_files(wildcards):
    return [resource_file("models", f"{a}.json") for a in analytic_architectures()]


def platform_limits():
    return {p: config["platforms"][p]["memory_limit_gb"] for p in PLATFORMS}


def probe_files(family):
    """OOM-probe results for tables 3/4 and the summary. The probe drives the torch
    backend: with another, only imported platforms (probed elsewhere) have one."""
    models = MODELS if family is None else models_of(family)
    platforms = PLATFORMS if BACKEND == "torch" else IMPORTED
    return [f"results/cells/{p}/{m}/probe.json" for p in platforms for m in models]


def all_targets():
    figures = [
        "fig1_flops_vs_seqlen",
        "fig2a_memory_vs_seqlen",
        "fig2b_gpu_generations",
        "fig5_mfu_batch1",
        "fig6a_intensity_day",
        "fig7_carbon_per_token",
    ]
    tabulated = []
    if models_of("llama"):
        figures += ["fig4a_throughput_latency", "fig6b_power_over_time"]
        if probe_files("llama"):
            tabulated.append("table3_max_batch")
    if models_of("gpt2"):
        figures += ["fig4b_throughput_latency", "fig6c_power_over_time"]
        if probe_files("gpt2"):
            tabulated.append("table4_max_batch")
    return (
        [f"results/workload/{m}.parquet" for m in MODELS]
        + [
            f"results/tables/{t}.parquet"
            for t in ["batches", "power", "cells", "metrics"]
        ]
        + [f"results/figures/{f}.{ext}" for f in figures for ext in ["png", "pdf"]]
        + [f"results/tables/{t}.{ext}" for t in tabulated for ext in ["csv", "md"]]
        + ["results/summary.md"]
    )

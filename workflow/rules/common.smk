# Config validation, wildcard constraints and input functions shared by every stage. The package
# path (PKG_ROOT) and the config files' YAML checks come first, in setup.smk.
import functools
import re
import json
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from tokencarbon.config import (
    CONTINUOUS,
    STATIC,
    auto_batch_sizes,
    check_config,
    check_copied_cells,
    check_hardware,
    check_model_vocabulary,
    check_pool_holds_num_prompts,
    coerce_cli_strings,
    measure_slice,
    measured_platforms,
    model_slice,
    normalize_config_values,
    platforms_to_measure,
    platform_row,
    platform_slice,
    probe_platform_slice,
    resolve_model_architecture,
    run_slice,
    schema_error_message,
    serving_slice,
)
from tokencarbon.errors import ConfigError
from tokencarbon.tables import CELL_DIR_PREFIX


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
    # keys and values YAML 1.1 reads otherwise (False for `no`, 8.0, dates), named at the door
    config.update(normalize_config_values(dict(config), schema))
    try:
        validate(config, schema="../schemas/config.schema.yaml")
    except WorkflowError as exc:
        # snakemake.utils.validate raises inside its `except ValidationError` block
        cause = exc.__context__
        if not hasattr(cause, "absolute_path"):
            raise
        raise ConfigError(schema_error_message(cause)) from None
    check_config(config, workflow.basedir)


_validate_config()


def _check_imported_sources():
    """What rule import_cell would refuse (a log or timing file the job cannot use, a window
    outside the log, a device that is not the platform's or is unnamed), refused here, before any
    job (tokencarbon.importing.check_imported_platform)."""
    from tokencarbon.importing import check_imported_platform

    for name, spec in sorted(config["platforms"].items()):
        if spec.get("imported"):
            check_imported_platform(config, sorted(config["models"]), name)


_check_imported_sources()

PLATFORMS = sorted(config["platforms"])
# Platforms measured on another machine: their cells are copied in, never run here.
IMPORTED = [p for p in PLATFORMS if config["platforms"][p]["import_only"]]
# Platforms whose cells rule import_cell (imported.smk) builds from an external power log.
IMPORTED_SOURCE = [p for p in PLATFORMS if config["platforms"][p].get("imported")]
MEASURED = measured_platforms(config)
# A pattern no platform name matches when every platform is imported.
MEASURED_PATTERN = "|".join(re.escape(p) for p in MEASURED) or "(?!)"
# Platforms whose peaks rule measure_platform measures here (platforms.<name>.spec.measure).
MEASURE = platforms_to_measure(config)
MEASURE_PATTERN = "|".join(re.escape(p) for p in MEASURE) or "(?!)"
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

    return workdir_path(resources_dir(workflow.basedir).joinpath(*parts))


wildcard_constraints:
    platform="|".join(re.escape(p) for p in PLATFORMS),
    model="|".join(re.escape(m) for m in MODELS),
    family="|".join(re.escape(f) for f in FAMILIES),
    batch=r"\d+",


@functools.cache
def _hardware_checked():
    """Each platform measured here is this machine's hardware (config.check_hardware), checked
    once, while the DAG is built for a local run or a dry run (-n): before any job, but not for
    --rulegraph or --report (no executor), nor on a cluster's submit host (jobs check themselves
    on their node)."""
    plugin = workflow.executor_plugin
    if plugin is None or not workflow.local_exec or not workflow.is_main_process:
        return
    from tokencarbon.hardware import visible_devices

    check_hardware(config, visible_devices())


def measured_here(wildcards):
    """No input: an input function every measuring job (engine, probe, cell) calls, so the DAG
    refuses a platform that is not this machine before planning any job of it."""
    _hardware_checked()
    return []


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
    """sample_workload's pool, with num_prompts checked against the pool on disk first
    (config.check_pool_holds_num_prompts: a failed sample job would delete the workload).
    """
    pool = f"results/dataset/{family_of(wildcards.model)}.parquet"
    check_pool_holds_num_prompts(config, family_of(wildcards.model), pool)
    return pool


def engine_manifest(wildcards):
    """The engine a probe or cell of this model runs, its vocabulary first checked against the
    builtin tokenizer's (config.check_model_vocabulary: the cells would refuse the token ids).
    """
    check_model_vocabulary(config, wildcards.model, workflow.basedir)
    return f"results/engines/{wildcards.platform}/{wildcards.model}/{BACKEND}/manifest.json"


def model_architecture(model):
    """The models.Architecture of a configured model (named, or `auto` from its checkpoint)."""
    return resolve_model_architecture(config, model, workflow.basedir)


def architecture_params(wildcards=None):
    """{architecture name: its fields (models.architecture_to_dict)} of every configured model, as
    params for jobs that need architectures by the name the cells record (metrics, figures): an
    `auto` architecture has no file in resources/models to load it from."""
    from tokencarbon.models import architecture_to_dict

    return {
        model_architecture(m).name: architecture_to_dict(model_architecture(m))
        for m in MODELS
    }


def engine_inputs(wildcards):
    """What an engine reads besides params: the architecture file of a named architecture, and a
    local checkpoint's config and weights (a changed checkpoint reruns its engine)."""
    _hardware_checked()
    model = config["models"][wildcards.model]
    inputs = {}
    if model["architecture"] != "auto":
        inputs["arch"] = resource_file("models", f"{model['architecture']}.json")
    folder = Path(model["checkpoint"] or "").expanduser()
    if model["checkpoint"] and folder.is_dir():
        inputs["checkpoint"] = sorted(
            str(p)
            for p in folder.iterdir()
            if p.suffix in {".json", ".safetensors", ".bin"}
        )
    return inputs


def trtllm_build_params(wildcards):
    family = config["families"][family_of(wildcards.model)]
    return {
        "max_batch_size": config["sweep"]["max_batch"],
        "max_input_len": family["max_tokens"],
        "max_output_len": family["max_tokens"],
    }


def transformers_options(wildcards=None):
    """The transformers backend's options (engine.TRANSFORMERS_OPTIONS), for its engine only."""
    return dict(config["backend"]["transformers"])


def engine_params(wildcards):
    return model_slice(config, wildcards.model, workflow.basedir)


def cell_platform_params(wildcards):
    return platform_slice(config, wildcards.platform)


def run_params(wildcards):
    return run_slice(config)


def serving_params(wildcards):
    return serving_slice(config, int(wildcards.batch))


def gpu_count(wildcards):
    return 0 if platform_slice(config, wildcards.platform)["kind"] == "cpu" else 1


def measure_params(wildcards):
    return measure_slice(config, wildcards.platform)


def measure_threads(wildcards):
    """measure_platform's threads: every core of a local run (--cores), so that no other job of
    the workflow runs beside the measurement; a cluster executor gives no --cores (each job has
    its own node slice), so there the platform's logical CPUs, what it measures on."""
    try:
        return workflow.cores
    except WorkflowError:  # no --cores: a cluster executor
        return measure_slice(config, wildcards.platform)["logical_cpus"]


def probe_platform_params(wildcards):
    return probe_platform_slice(wildcards.platform, config)


def probe_limits(wildcards):
    """The probe's search bounds; with `max_num_seqs: auto` also the concurrency to search up
    to (the sweep's cap: max_batch or num_prompts, whichever is smaller). Only then, so probes
    made for a listed sweep keep their params."""
    limit = config["platforms"][wildcards.platform]["memory_limit_gb"]
    limits = {"memory_limit_gb": limit, "max_batch": config["sweep"]["max_batch"]}
    if config["sweep"]["max_num_seqs"] == "auto":
        limits["max_num_seqs"] = min(
            config["sweep"]["max_batch"], config["workload"]["num_prompts"]
        )
    return limits


def copied_cell_sizes(platform, model, mode):
    """The cells another machine measured, as copied into results/cells/<platform>/<model>/."""
    prefix = CELL_DIR_PREFIX[mode]
    return sorted(
        int(p.parent.name[len(prefix) :])
        for p in Path(f"results/cells/{platform}/{model}").glob(f"{prefix}*/meta.json")
        if p.parent.name[len(prefix) :].isdigit()
    )


def imported_batch_sizes(platform, model):
    """The static cells another machine measured, as copied in (at least one is needed)."""
    found = copied_cell_sizes(platform, model, STATIC)
    if not found:
        raise ConfigError(
            f"config key platforms.{platform}.import_only: no cells of {model} under "
            f"results/cells/{platform}/{model}/bs*/; copy that folder from the machine that "
            f"measured them, or set import_only to false to run them here"
        )
    return found


def _probe(platform, model):
    probe = checkpoints.probe_max_batch.get(platform=platform, model=model).output[0]
    return json.loads(Path(probe).read_text())


def batch_sizes(platform, model):
    """The static sweep: explicit, or read from the OOM probe (the only reader of the checkpoint)
    and capped at workload.num_prompts (a larger batch never fills)."""
    if platform in IMPORTED:
        return imported_batch_sizes(platform, model)
    if platform in IMPORTED_SOURCE:
        return imported_source_batch_sizes(platform, model)  # imported.smk
    sizes = config["sweep"]["batch_sizes"]
    if sizes != "auto":
        return sorted(sizes)
    cap = config["workload"]["num_prompts"]
    return auto_batch_sizes(_probe(platform, model)["max_ok"], cap)


def num_seqs(platform, model):
    """The continuous sweep (sweep.max_num_seqs): explicit, or `auto`: powers of two up to the
    probe's max_num_seqs_ok (the most requests whose serving engine's KV pool fits), capped at
    workload.num_prompts, plus that maximum."""
    if platform in IMPORTED:
        return copied_cell_sizes(platform, model, CONTINUOUS)
    if platform in IMPORTED_SOURCE:
        return []
    sizes = config["sweep"]["max_num_seqs"]
    if sizes != "auto":
        return sorted(sizes)
    probe = _probe(platform, model)
    cap = config["workload"]["num_prompts"]
    if "max_num_seqs_ok" not in probe:
        raise ConfigError(
            f"config key sweep.max_num_seqs: 'auto' reads max_num_seqs_ok from the probe, and "
            f"results/cells/{platform}/{model}/probe.json has none (probed without it); delete "
            "that probe.json to probe again, or list max_num_seqs"
        )
    return auto_batch_sizes(probe["max_num_seqs_ok"], cap)


def cell_dir(platform, model, batch, mode=STATIC):
    return f"results/cells/{platform}/{model}/{CELL_DIR_PREFIX[mode]}{batch}"


def cell_keys():
    """(platform, model, mode, n) of every cell of the study."""
    return [
        (p, m, mode, n)
        for p in PLATFORMS
        for m in MODELS
        for mode, sizes in ((STATIC, batch_sizes), (CONTINUOUS, num_seqs))
        for n in sizes(p, m)
    ]


def all_cell_dirs(wildcards):
    return [cell_dir(p, m, n, mode) for p, m, mode, n in cell_keys()]


def all_cell_files(wildcards):
    keys = cell_keys()
    files = {
        name: [f"{cell_dir(p, m, n, mode)}/{name}.{ext}" for p, m, mode, n in keys]
        for name, ext in [
            ("batches", "parquet"),
            ("power", "parquet"),
            ("meta", "json"),
        ]
    }
    for name in ["requests", "steps"]:
        files[name] = [
            f"{cell_dir(p, m, n, mode)}/{name}.parquet"
            for p, m, mode, n in keys
            if mode == CONTINUOUS
        ]
    return files


def has_continuous_cells():
    """Whether the study has continuous cells (decidable without the probe's result: an `auto`
    max_num_seqs always gives at least cb1)."""
    return bool(config["sweep"]["max_num_seqs"]) or any(
        copied_cell_sizes(p, m, CONTINUOUS) for p in IMPORTED for m in MODELS
    )


def aggregate_outputs():
    """aggregate_cells' outputs: requests and steps only where there are continuous cells."""
    outputs = {
        "batches": "results/tables/batches.parquet",
        "power": "results/tables/power.parquet",
        "cells": "results/tables/cells.parquet",
    }
    if has_continuous_cells():
        outputs["requests"] = "results/tables/requests.parquet"
        outputs["steps"] = "results/tables/steps.parquet"
    return outputs


def carbon_params(wildcards=None):
    """The carbon slice metrics read (trace_day only concerns figure 6a)."""
    return {k: v for k, v in config["carbon"].items() if k != "trace_day"}


def fig6a_params(wildcards=None):
    """The whole carbon slice (figure 6a and the time-shift what-if read trace_day too)."""
    return dict(config["carbon"])


def copied_measurement(platform):
    """results/platforms/<platform>/spec.json of an import_only platform, where the machine that
    measured its cells (spec.measure) had it copied in beside them; else None."""
    path = Path(f"results/platforms/{platform}/spec.json")
    return str(path) if platform in IMPORTED and path.is_file() else None


def measurement_files(wildcards=None):
    """The platform measurements compute_metrics reads (only it: cells never take them, so a
    re-measurement reruns no cell): rule measure_platform's (spec.measure), and those copied in
    with import_only platforms' cells, which are checked here, at DAG build, against the devices
    the copied cells ran on (config.check_copied_cells)."""
    from tokencarbon.peak import read_measurement

    for p in IMPORTED:
        copied = copied_measurement(p)
        measured = read_measurement(copied, p)["measured"] if copied else None
        devices = [
            json.loads(meta.read_text())["device_name"]
            for meta in Path(f"results/cells/{p}").glob("*/*/meta.json")
        ]
        check_copied_cells(config, p, devices, measured)
    copied = [c for c in map(copied_measurement, IMPORTED) if c]
    return [f"results/platforms/{p}/spec.json" for p in MEASURE] + copied


def _sizes_on_disk(platform, model, mode):
    """The cell sizes of (platform, model, mode) as known before any job runs: copied or imported
    cells, an explicit sweep, or an auto sweep from a probe.json on disk; None where the probe
    has yet to run (its cells are measured in this run)."""
    if platform in IMPORTED:
        return copied_cell_sizes(platform, model, mode)
    if platform in IMPORTED_SOURCE:
        return imported_source_batch_sizes(platform, model) if mode == STATIC else []
    sizes = config["sweep"]["batch_sizes" if mode == STATIC else "max_num_seqs"]
    if sizes != "auto":
        return sorted(sizes)
    probe = Path(f"results/cells/{platform}/{model}/probe.json")
    if not probe.is_file():
        return None
    found = json.loads(probe.read_text())
    key = "max_ok" if mode == STATIC else "max_num_seqs_ok"
    if key not in found:
        return None
    return auto_batch_sizes(found[key], config["workload"]["num_prompts"])


@functools.cache
def _trace_covers_the_cells():
    """carbon.source trace: the trace covers every cell metrics will read (config.
    check_trace_coverage), checked when the DAG is built from what is known then: the windows of
    finished cells (their batches.parquet), an imported platform's timing file, and the present
    instant for cells this run will measure."""
    if config["carbon"]["source"] != "trace":
        return
    import time

    from tokencarbon.config import cell_windows, check_trace_coverage
    from tokencarbon.importing import imported_windows

    windows, measured_now = [], False
    for p in PLATFORMS:
        if p in IMPORTED_SOURCE:
            w = imported_windows(config, MODELS, p)
            windows += [
                (
                    f"imported platform {p}, timing row {r.row}",
                    r.start_wall_ns,
                    r.end_wall_ns,
                )
                for r in w.itertuples()
            ]
            continue
        for m in MODELS:
            for mode in (STATIC, CONTINUOUS):
                sizes = _sizes_on_disk(p, m, mode)
                if sizes is None:
                    measured_now = True
                    continue
                for n in sizes:
                    folder = Path(cell_dir(p, m, n, mode))
                    if (folder / "meta.json").is_file():
                        windows += cell_windows(folder)
                    else:
                        measured_now = measured_now or p in MEASURED
    if measured_now:
        now = time.time_ns()
        windows.append(("cells measured in this run (starting now)", now, now + 1))
    check_trace_coverage(config, windows)


def metrics_inputs(wildcards):
    _trace_covers_the_cells()
    inputs = {}
    if config["carbon"]["source"] == "trace":
        inputs["trace"] = config["carbon"]["trace"]
    if has_continuous_cells():
        inputs["requests"] = "results/tables/requests.parquet"
        inputs["steps"] = "results/tables/steps.parquet"
    return inputs


def arch_family(model):
    return model_architecture(model).family


def models_of(family):
    """Configured models of an architecture family ("llama" or "gpt2")."""
    return [m for m in MODELS if arch_family(m) == family]


def probe_files(family):
    """OOM-probe results for tables 3/4 and the summary. The probe drives the torch
    backend: with another, only imported platforms (probed elsewhere) have one; platforms built
    from an external power log have none."""
    models = MODELS if family is None else models_of(family)
    platforms = [p for p in PLATFORMS if p not in IMPORTED_SOURCE]
    if BACKEND != "torch":
        platforms = [p for p in platforms if p in IMPORTED]
    return [f"results/cells/{p}/{m}/probe.json" for p in platforms for m in models]


def table_targets():
    """The aggregated and metrics tables `all` builds."""
    tables = ["batches", "power", "cells", "metrics"]
    if has_continuous_cells():
        tables += ["requests", "steps"]
    made = _rule_outputs()
    if "metrics_repeats" in made:  # where the metrics stage makes them
        tables.append("metrics_repeats")
    if (
        "timeshift" in made and config["carbon"]["source"] == "trace"
    ):  # needs an hourly trace
        tables.append("timeshift")
    return [f"results/tables/{t}.parquet" for t in tables]


def _rule_outputs():
    """Stems of results/tables/*.parquet some rule of this workflow writes."""
    return {
        Path(str(f)).stem
        for r in workflow.rules
        for f in r.output
        if str(f).startswith("results/tables/") and str(f).endswith(".parquet")
    }


def all_targets():
    """What `all` builds: every model's workload, the tables, the figures, tables and summary of
    figures.smk's registry (figure_targets) and the export (export.smk's export_targets).
    """
    return (
        [f"results/workload/{m}.parquet" for m in MODELS]
        + table_targets()
        + list(figure_targets())
        + list(export_targets())
    )

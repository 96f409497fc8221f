# Config validation, the study's plan (tokencarbon.plan: which cells, probes, tables and figures,
# with which params) and the input functions rules call, each a thin call on the plan. The package
# path (PKG_ROOT) and the config files' YAML checks come first, in setup.smk.
import copy
import functools
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

from tokencarbon.config import prepare_config
from tokencarbon.layout import CONTINUOUS, STATIC, CellKey
from tokencarbon.plan import Plan, choices, workdir_path
from tokencarbon.records import read_probe
from tokencarbon.study import check_study_folder, config_files, study_record

if workflow.overwrite_configfiles:
    # A --configfile is a whole study (config/paper.yaml): it replaces the embedded default
    # rather than being merged into it (which would add the default's tiny models to it).
    # --config key=value still updates single keys on top of it.
    config.clear()
    config.update(copy.deepcopy(workflow.config_settings.overwrite_config))
config.update(prepare_config(config, workflow.basedir))

PLAN = Plan(config, workflow.basedir)
PLAN.check_imported_sources()

# Every output of this study lies in its folder, results/<study>/ (PLAN.root; tokencarbon.layout);
# the folder's record (study.json, written on success: study.smk) names the config file it was
# made from and the files `all` makes; what another config, or an older version of this one, left
# there is said here, before any job (tokencarbon.study).
STUDY_RECORD = study_record(
    PLAN.study,
    config,
    config_files(workflow.overwrite_configfiles or ["config/config.yaml"], Path.cwd()),
    [str(Path(p).relative_to(PLAN.root)) for p in PLAN.targets()],
)
if workflow.is_main_process:
    for _note in check_study_folder(PLAN.study_record(), STUDY_RECORD):
        print(f"tokencarbon: {_note}", file=sys.stderr)


wildcard_constraints:
    platform=choices(PLAN.platforms),
    model=choices(PLAN.models),
    family=choices(PLAN.families),
    batch=r"\d+",


@functools.cache
def code_inputs(script):
    """Package modules that workflow/scripts/<script>.py imports, transitively (an ast walk of its
    imports: tokencarbon/codedeps.py), as a rule's inputs: Snakemake's code trigger sees only the
    script, so these make a code change rerun exactly the jobs it can change (style.md).
    """
    from tokencarbon.codedeps import package_modules

    script_path = PKG_ROOT.parent / "workflow/scripts" / f"{script}.py"
    return [workdir_path(p) for p in package_modules(script_path, PKG_ROOT)]


@functools.cache
def _hardware_checked():
    """Each platform measured here is this machine's hardware (config.check_hardware), checked
    once, while the DAG is built for a local run or a dry run (-n): before any job, but not for
    --rulegraph or --report (no executor), nor on a cluster's submit host (jobs check themselves
    on their node)."""
    plugin = workflow.executor_plugin
    if plugin is None or not workflow.local_exec or not workflow.is_main_process:
        return
    from tokencarbon.config import check_hardware
    from tokencarbon.hardware import visible_devices

    check_hardware(config, visible_devices())


def measured_here(wildcards):
    """No input: an input function every measuring job (engine, probe, cell) calls, so the DAG
    refuses a platform that is not this machine before planning any job of it."""
    _hardware_checked()
    return []


@functools.cache
def _server_checked():
    """backend openai_server: the server answers at base_url, serves the model and takes the key
    (config.check_server_reachable), checked once where cells run here, as the hardware is (a
    local run or a dry run: before any job)."""
    plugin = workflow.executor_plugin
    if plugin is None or not workflow.local_exec or not workflow.is_main_process:
        return
    from tokencarbon.config import check_server_reachable

    check_server_reachable(config)


def server_measured_here(wildcards):
    """No input: measured_here, and the server checked (_server_checked), for server cells."""
    _hardware_checked()
    _server_checked()
    return []


def probe_record(platform, model):
    """An `auto` sweep's probe, through the checkpoint (its only reader)."""
    return read_probe(
        checkpoints.probe_max_batch.get(platform=platform, model=model).output[0]
    )


# --- inputs
def cell_files(wildcards):
    return PLAN.cell_files(probe_record)


def cell_inputs(wildcards):
    return PLAN.cell_inputs(wildcards.platform, wildcards.model)


def server_params(wildcards):
    return PLAN.server_params(wildcards.model)


def filter_inputs(wildcards):
    return PLAN.filter_inputs(wildcards.family) | {
        "code": code_inputs("filter_sharegpt")
    }


def filter_params(wildcards):
    return PLAN.filter_params(wildcards.family)


def workload_pool(wildcards):
    return PLAN.workload_pool(wildcards.model)


def engine_manifest(wildcards):
    return PLAN.engine_manifest(wildcards.platform, wildcards.model)


def engine_inputs(wildcards):
    _hardware_checked()
    return PLAN.engine_inputs(wildcards.model)


def measurement_files(wildcards):
    return PLAN.measurement_files()


def metrics_inputs(wildcards):
    return PLAN.metrics_inputs()


def cell_metas(wildcards):
    return cell_files(wildcards)["meta"]


def import_inputs(wildcards):
    return PLAN.import_inputs(wildcards.platform) | {"code": code_inputs("import_cell")}


# --- params
def model_params(wildcards):
    return PLAN.model_params(wildcards.model)


def trtllm_build_params(wildcards):
    return PLAN.trtllm_build_params(wildcards.model)


def import_params(wildcards):
    return PLAN.import_params(wildcards.platform, wildcards.model)


def platform_params(wildcards):
    return PLAN.platform_params(wildcards.platform)


def cell_run(mode):
    """Params `run` of the cells of `mode`, each cell's own (plan.cell_params; its repeats are
    run.repeats_at_ends at its sweep's smallest and largest n)."""

    def of_cell(wildcards):
        key = CellKey(wildcards.platform, wildcards.model, mode, int(wildcards.batch))
        return PLAN.cell_params(key)["run"]

    return of_cell


def serving_params(wildcards):
    return PLAN.serving_params(int(wildcards.batch))


def probe_platform_params(wildcards):
    return PLAN.probe_platform_params(wildcards.platform)


def probe_limits(wildcards):
    return PLAN.probe_limits(wildcards.platform)


def measure_params(wildcards):
    return PLAN.measure_params(wildcards.platform)


def gpu_count(wildcards):
    return PLAN.gpus(wildcards.platform)


def measure_threads(wildcards):
    """measure_platform's threads: every core of a local run (--cores), so that no other job of
    the workflow runs beside the measurement; a cluster executor gives no --cores (each job has
    its own node slice), so there the platform's logical CPUs, what it measures on."""
    try:
        return workflow.cores
    except WorkflowError:  # no --cores: a cluster executor
        return PLAN.measure_params(wildcards.platform)["logical_cpus"]


def report_figures():
    """The PNG of every figure `all` draws, in the registry's order."""
    return [p for p in PLAN.figure_targets() if p.endswith(".png")]


def report_captions():
    """Each figure's caption, workflow/report/<figure>.rst."""
    return [
        workdir_path(PKG_ROOT.parent / "workflow/report" / f"{Path(p).stem}.rst")
        for p in report_figures()
    ]

# tokencarbon: energy and carbon per token of LLM inference, as one DAG.
# Stages live in workflow/rules/<stage>.smk; the logic in the package workflow/tokencarbon.
from snakemake.utils import min_version

min_version("9.0")


# First, before the config is read: the package path and the config files' YAML checks.
include: "workflow/rules/setup.smk"


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/imported.smk"
include: "workflow/rules/dataset.smk"
include: "workflow/rules/engine.smk"
include: "workflow/rules/probe.smk"
include: "workflow/rules/inference.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/metrics.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/export.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/study.smk"


rule all:
    default_target: True
    input:
        PLAN.targets(),

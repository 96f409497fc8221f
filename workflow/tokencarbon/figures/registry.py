"""The one registry of what the figures stage makes: every figure, table and summary, with the data
it reads, the config it depends on, how it is built, its caption and its report category.

workflow/rules/figures.smk generates one rule per entry from ARTIFACTS and `all`'s targets from
targets(); the adapter scripts call build(). Nothing else lists figures.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from tokencarbon.errors import ConfigError, InputError
from tokencarbon.models import Architecture

# The study's architectures (Lim, Pan, Zhou 2024, figures 1 and 2a), drawn beside the configured ones.
STUDY_ARCHITECTURES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "llama-2-7b", "llama-2-13b")
STUDY_DTYPE = "float16"  # the study ran fp16
FAMILY_TITLES = {"llama": "Llama-architecture models", "gpt2": "GPT-2-architecture models"}

METRICS = "results/tables/metrics.parquet"
POWER = "results/tables/power.parquet"
CELLS = "results/tables/cells.parquet"
BATCHES = "results/tables/batches.parquet"
TIMESHIFT = "results/tables/timeshift.parquet"

# Report categories (snakemake --report): the headlines first, then the study's figures and tables.
HEADLINES = "Headlines"
STUDY_FIGURES = "Study figures"
CARBON_ANALYSIS = "Carbon analysis"
TABLES = "Tables"


def _is_resource_name(architecture: Any) -> bool:
    """Whether a config `architecture` value names a resources/models file (not `auto`, not a dict
    of fields)."""
    return isinstance(architecture, str) and architecture != "auto"


@dataclass(frozen=True)
class Study:
    """What the figure rules need to know of the configured study: its plan (tokencarbon.plan.Plan,
    the one answerer of which models, families, probes and resources the study has, for the DAG
    and everything else) and the figure-specific views of it below."""

    # a tokencarbon.plan.Plan; not imported here, so that a planner edit reruns no figure job
    # (code inputs follow imports: tokencarbon/codedeps.py)
    plan: Any

    @property
    def config(self) -> Mapping[str, Any]:
        return self.plan.config

    @property
    def models(self) -> list[str]:
        return self.plan.models

    @property
    def platforms(self) -> list[str]:
        return self.plan.platforms

    def architecture(self, model: str) -> Architecture:
        """The configured model's Architecture (Plan.architecture: a resources/models name, `auto`
        read from its checkpoint, or fields given inline)."""
        return self.plan.architecture(model)

    def family(self, model: str) -> str:
        return self.plan.family(model)

    def models_of(self, family: str) -> list[str]:
        return self.plan.models_of(family)

    def probes(self, family: str | None) -> list[str]:
        return self.plan.probes(family)

    def resource(self, *parts: str) -> str:
        return self.plan.resource(*parts)

    def configured_architectures(self) -> dict[str, str]:
        """architecture name -> dtype of every configured model (the first model's dtype where
        two share an architecture). An `auto` architecture is named after its model.

        Raises ConfigError when two models give one name to different architectures (figures 1
        and 2a draw one line per name)."""
        out: dict[str, str] = {}
        first: dict[str, str] = {}
        for m in self.models:
            arch = self.architecture(m)
            if arch.name in first and self.architecture(first[arch.name]) != arch:
                raise ConfigError(
                    f"config keys models.{first[arch.name]}.architecture and "
                    f"models.{m}.architecture: two different architectures are both named "
                    f"{arch.name!r}; rename one of the models (an `auto` architecture takes its "
                    "model's name)"
                )
            first.setdefault(arch.name, m)
            out.setdefault(arch.name, self.config["models"][m].get("dtype", STUDY_DTYPE))
        return out

    def inline_architectures(self) -> dict[str, dict[str, Any]]:
        """name -> fields (models.architecture_to_dict) of the configured architectures that have
        no file under resources/models: `auto` ones (read from a checkpoint) and ones given as
        fields. Figures 1 and 2a take these from their params; a change of the checkpoint's
        config.json changes the params and so redraws them."""
        from tokencarbon.models import architecture_to_dict

        return {
            self.architecture(m).name: architecture_to_dict(self.architecture(m))
            for m in self.models
            if not _is_resource_name(self.config["models"][m]["architecture"])
        }

    def analytic_architectures(self) -> dict[str, str]:
        """architecture name -> dtype for figures 1 and 2a: the study's at fp16, the configured
        ones (named, `auto` or inline) at their configured dtype; a configured architecture
        named as one of the study's replaces it."""
        return {a: STUDY_DTYPE for a in STUDY_ARCHITECTURES} | self.configured_architectures()

    def architecture_files(self) -> list[str]:
        """resources/models files of the analytic architectures that are read from a file."""
        inline = self.inline_architectures()
        return [
            self.resource("models", f"{a}.json")
            for a in self.analytic_architectures()
            if a not in inline
        ]

    def quantization(self, model: str) -> tuple[str, int | None]:
        """(scheme, group size or None) of the model's config `quantization` ("none" default;
        quantized.config_quantization)."""
        from tokencarbon.figures.quantized import config_quantization

        return config_quantization(self.config["models"][model])

    def quantized_fig2a(self) -> dict[str, dict[str, Any]]:
        """Figure 2a's quantized lines: model -> {architecture (name), dtype, quantization
        (Quantization.to_dict)} for each quantized model (none: {}, so figure 2a's params and
        outputs stay as before)."""
        from tokencarbon.quantization import of_model

        out = {}
        for m in self.quantized_models():
            info = self.model_info([m])[m]
            q = of_model({**self.config["models"][m], "name": m})
            out[m] = {"architecture": info["architecture"], "dtype": info["dtype"],
                      "quantization": q.to_dict()}  # fmt: skip
        return out

    def quantized_models(self) -> list[str]:
        """Configured models with quantized weights (quantization other than "none")."""
        from tokencarbon.figures.quantized import is_quantized_scheme

        return [m for m in self.models if is_quantized_scheme(self.quantization(m)[0])]

    def unquantized_siblings(self) -> list[str]:
        """Configured unquantized models of the same architecture (name) as a quantized one:
        figure 4c's reference lines."""
        quantized = self.quantized_models()
        architectures = {self.architecture(m).name for m in quantized}
        return [
            m
            for m in self.models
            if m not in quantized and self.architecture(m).name in architectures
        ]

    def model_info(self, models: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
        """model -> {architecture (name), dtype, quantization (scheme), quant_group_size (None
        where not given)} from the config, for the models given (all by default): what Tables 3
        and 4 order their rows by and name weights with where a probe result predates the
        quantization keys (summary.ModelInfo)."""
        out = {}
        for m in self.models if models is None else models:
            scheme, group = self.quantization(m)
            out[m] = {
                "architecture": self.architecture(m).name,
                "dtype": self.config["models"][m].get("dtype", STUDY_DTYPE),
                "quantization": scheme,
                "quant_group_size": group,
            }
        return out

    def platform_limits(self) -> dict[str, float | None]:
        return {p: self.config["platforms"][p].get("memory_limit_gb") for p in self.platforms}

    def platform_hardware(self) -> dict[str, str]:
        """platform name -> its row of resources/platforms.csv, for platforms whose config entry
        names another row (`hardware: <row>`: capped variants of one card, e.g. h200-32gb and
        h200-40gb emulating the study's V100 32GB and A100 40GB on one H200; config.platform_row).
        Empty while every platform is named after its row."""
        from tokencarbon.config import platform_row

        rows = {p: platform_row(self.config, p) for p in self.platforms}
        return {p: row for p, row in rows.items() if row != p}

    def slos(self) -> list[float]:
        return [float(s) for s in self.config["summary"]["latency_slos_s_per_token"]]


# (inputs, params) -> a Figure; (inputs, params, outputs) -> files written
Draw = Callable[[Mapping[str, Any], Mapping[str, Any]], Figure]
Build = Callable[[Mapping[str, Any], Mapping[str, Any], Mapping[str, str]], None]


def _always(study: Study) -> bool:
    return True


def _nothing(study: Study) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class Artifact:
    """One thing the figures stage makes: the rule that makes it, its outputs (key -> path), the
    output the report shows, the script that runs it, and functions of the Study giving its data
    inputs, its params (the config slice it reads) and whether `all` wants it."""

    name: str
    rule: str
    script: str  # workflow/scripts/<script>.py
    outputs: Mapping[str, str]
    shown: str  # the key of the output shown in snakemake --report
    caption: str  # workflow/report/<caption>
    category: str
    build: Build
    inputs: Callable[[Study], dict[str, Any]] = _nothing
    params: Callable[[Study], dict[str, Any]] = _nothing
    wanted: Callable[[Study], bool] = _always
    draw: Draw | None = None  # figures: the Figure build() saves, for tests and notebooks


def _save_figure(draw: Draw) -> Build:
    def build(inputs, params, outputs):
        from tokencarbon.figures.common import save

        save(draw(inputs, params), Path(outputs["png"]).with_suffix(""))

    return build


def figure(name: str, rule: str, draw: Draw, category: str = STUDY_FIGURES, **kw) -> Artifact:
    """A figure: results/figures/<name>.png (shown) and .pdf, drawn by `draw`."""
    return Artifact(
        name=name,
        rule=rule,
        script="render_figure",
        outputs={"png": f"results/figures/{name}.png", "pdf": f"results/figures/{name}.pdf"},
        shown="png",
        caption=f"{name}.rst",
        category=category,
        build=_save_figure(draw),
        draw=draw,
        **kw,
    )


# ------------------------------------------------------------------ the figures' draw functions


def _architectures(params):
    """params["architectures"] (name -> dtype) as Architectures: those in
    params["architecture_fields"] (auto or inline, name -> fields) from there, the others from
    resources/models."""
    from tokencarbon.models import architecture_from_dict, load_architecture

    fields = params.get("architecture_fields", {})
    return [
        architecture_from_dict(fields[a], f"params architecture_fields[{a!r}]")
        if a in fields
        else load_architecture(a)
        for a in params["architectures"]
    ]


def _draw_fig1(inputs, params):
    from tokencarbon.figures.analytic import fig1_flops_vs_seqlen

    return fig1_flops_vs_seqlen(_architectures(params))


def _draw_fig2a(inputs, params):
    from tokencarbon.figures.analytic import fig2a_memory_vs_seqlen
    from tokencarbon.platforms import get_platform, load_platforms
    from tokencarbon.quantization import parse_quantization

    import dataclasses

    platforms = load_platforms(inputs["platforms"])
    rows = params.get("platform_hardware", {})  # name -> row where a platform names another row
    for p in params["platforms"]:
        if rows.get(p, p) not in platforms:
            raise InputError(f"fig2a: platform {rows.get(p, p)!r} is not a row of {inputs['platforms']}")
    quantized = {
        m: (v["architecture"], v["dtype"], parse_quantization(v["quantization"], f"params quantized[{m!r}]"))
        for m, v in params.get("quantized", {}).items()
    }  # fmt: skip
    return fig2a_memory_vs_seqlen(
        _architectures(params),
        platforms=[
            dataclasses.replace(get_platform(rows.get(p, p), lim), platform=p)
            for p, lim in params["platforms"].items()
        ],
        dtypes=params["architectures"],
        quantized=quantized,
    )


def _draw_fig2b(inputs, params):
    from tokencarbon.figures.analytic import fig2b_gpu_generations
    from tokencarbon.platforms import load_platforms

    return fig2b_gpu_generations(list(load_platforms(inputs["platforms"]).values()))


def _family_title(params, what):
    title = FAMILY_TITLES.get(params.get("family"), "")
    return f"{what}: {title}" if title else what


def _draw_fig4(inputs, params):
    from tokencarbon.figures.inputs import read_metrics
    from tokencarbon.figures.measured import fig4_throughput_latency

    return fig4_throughput_latency(
        read_metrics(inputs["metrics"]),
        models=params["models"],
        title=_family_title(params, "Throughput vs E2E latency per output token"),
    )


def _draw_fig4c(inputs, params):
    """Figure 4c: throughput against user-perceived latency of the quantized models
    (params["models"]), their unquantized siblings (params["references"]) faded beside them;
    legend names with the weights that ran (the metrics' quantization columns), else the
    config's (params["model_info"])."""
    from tokencarbon.figures.inputs import read_metrics
    from tokencarbon.figures.measured import fig4_throughput_latency
    from tokencarbon.figures.quantized import is_quantized, metrics_weights_labels, weights_label

    metrics = read_metrics(inputs["metrics"])
    info = params["model_info"]
    weights = {
        m: weights_label(i["quantization"], i["quant_group_size"], "", i["dtype"])
        for m, i in info.items()
    }
    ran = metrics[is_quantized(metrics).to_numpy()]
    weights |= metrics_weights_labels(ran) if not ran.empty else {}
    return fig4_throughput_latency(
        metrics,
        models=params["models"],
        references=params["references"],
        labels={
            m: f"{m} ({w}, unquantized reference)" if m in params["references"] else f"{m} ({w})"
            for m, w in weights.items()
        },
        title="Throughput vs E2E latency per output token: weight-quantized models",
    )


def _draw_fig5(inputs, params):
    from tokencarbon.figures.inputs import read_cells, read_metrics
    from tokencarbon.figures.measured import fig5_mfu_batch1

    cells = read_cells(inputs["cells"]) if "cells" in inputs else None
    return fig5_mfu_batch1(read_metrics(inputs["metrics"]), cells=cells)


def intensity_series(carbon: Mapping[str, Any], cells_path: str | Path | None):
    """Figure 6a's 24-hour intensity series and its day, under the config's carbon accounting
    (carbon.CarbonAccounting: source, fill, max_fill_s): the trace's configured day (its first
    day when trace_day is null), or, for a constant intensity, trace_day when set, else the UTC
    day the first cell ran (read from cells_path)."""
    import pandas as pd

    from tokencarbon.carbon import CarbonAccounting
    from tokencarbon.figures.inputs import read_cells

    accounting = CarbonAccounting.from_config(carbon)
    day = carbon.get("trace_day")
    if carbon["source"] == "trace":
        series = accounting.day(day)
        if day is None:
            day = str(pd.Timestamp(int(accounting.intensity.start_ns[0]), unit="ns").date())
        return series, day
    if day is None:
        if cells_path is None:
            raise ConfigError(
                "fig6a: carbon.source is constant and carbon.trace_day is null, and no cells "
                "table was given to take the day from; set carbon.trace_day (YYYY-MM-DD)"
            )
        cells = read_cells(cells_path)
        if cells.empty:
            raise InputError(f"fig6a: {cells_path} holds no cells to take the day from")
        day = str(pd.Timestamp(int(cells["window_start_wall_ns"].min()), unit="ns").date())
    return accounting.day(day), day


def _draw_fig6a(inputs, params):
    from tokencarbon.figures.analytic import fig6a_intensity_day

    series, day = intensity_series(params["carbon"], inputs.get("cells"))
    return fig6a_intensity_day(series, day)


def _draw_fig6(inputs, params):
    from tokencarbon.figures.inputs import read_batches, read_power
    from tokencarbon.figures.measured import fig6_power_over_time

    return fig6_power_over_time(
        read_power(inputs["power"]),
        models=params["models"],
        title=_family_title(params, "Power over time"),
        batches=read_batches(inputs["batches"]) if "batches" in inputs else None,
    )


def _draw_fig7(inputs, params):
    from tokencarbon.figures.inputs import read_metrics
    from tokencarbon.figures.measured import fig7_carbon_per_token

    return fig7_carbon_per_token(read_metrics(inputs["metrics"]))


def _draw_pareto(inputs, params):
    from tokencarbon.figures.carbon_analysis import pareto_carbon_latency
    from tokencarbon.figures.inputs import read_metrics

    return pareto_carbon_latency(read_metrics(inputs["metrics"]), params["slos_s_per_token"])


# ------------------------------------------------------------------ tables and the summary


def _build_max_batch(inputs, params, outputs):
    from tokencarbon.figures.inputs import mapping_paths, read_probes
    from tokencarbon.figures.summary import write_max_batch_tables

    write_max_batch_tables(
        read_probes(mapping_paths(inputs, "probes")),
        outputs,
        title=params["title"],
        model_info=params.get("model_info"),
    )


def _build_metrics_table(inputs, params, outputs):
    from tokencarbon.figures.inputs import read_metrics
    from tokencarbon.figures.summary import write_metrics_html

    write_metrics_html(read_metrics(inputs["metrics"]), outputs["html"])


def _build_summary(inputs, params, outputs):
    from tokencarbon.figures.inputs import mapping_paths, read_metrics, read_probes, read_timeshift
    from tokencarbon.figures.summary import write_summary

    write_summary(
        read_metrics(inputs["metrics"]),
        read_probes(mapping_paths(inputs, "probes")),
        params["slos_s_per_token"],
        outputs,
        timeshift=read_timeshift(inputs["timeshift"]) if "timeshift" in inputs else None,
        model_info=params.get("model_info"),
    )


def _require_trace(params, name):
    if params["carbon"]["source"] != "trace":
        raise ConfigError(
            f"{name}: the time-shift what-if needs an hourly trace; set carbon.source: trace and "
            "carbon.trace (a constant intensity is the same at every hour)"
        )


def _draw_timeshift(inputs, params):
    from tokencarbon.carbon import CarbonAccounting
    from tokencarbon.figures.carbon_analysis import timeshift_day
    from tokencarbon.figures.inputs import read_timeshift

    _require_trace(params, "timeshift_day")
    carbon = params["carbon"]
    shifts = read_timeshift(inputs["timeshift"])
    day = shifts["day"].iloc[0] if len(shifts) else carbon.get("trace_day")
    return timeshift_day(shifts, CarbonAccounting.from_config(carbon, inputs["trace"]).day(day))


def _build_timeshift_table(inputs, params, outputs):
    from tokencarbon.figures.inputs import read_timeshift
    from tokencarbon.figures.summary import write_timeshift_tables

    _require_trace(params, "timeshift_table")
    write_timeshift_tables(read_timeshift(inputs["timeshift"]), outputs)


# ------------------------------------------------------------------ inputs and params


def _metrics(study):
    return {"metrics": METRICS}


def _family_models(family):
    def params(study):
        return {"family": family, "models": study.models_of(family)}

    return params


def _has_family(family):
    def wanted(study):
        return bool(study.models_of(family))

    return wanted


def _has_probes(family):
    def wanted(study):
        return bool(study.models_of(family)) and bool(study.probes(family))

    return wanted


def _has_static_cells(study):
    """Figures of static cells (MFU at batch 1) only where the study has some (Plan.
    has_static_cells: a server study's cells are all continuous)."""
    return study.plan.has_static_cells()


def _has_quantized(study):
    return bool(study.quantized_models())


def _fig4c_params(study):
    models = study.quantized_models()
    references = study.unquantized_siblings()
    return {
        "models": models,
        "references": references,
        "model_info": study.model_info(models + references),
    }


def _arch_files(study):
    return study.architecture_files()


def _analytic_params(study):
    return {
        "architectures": study.analytic_architectures(),
        "architecture_fields": study.inline_architectures(),
    }


def _uses_trace(study):
    return study.config["carbon"]["source"] == "trace"


def _timeshift_inputs(study):
    if not _uses_trace(study):
        return {}
    return {"timeshift": TIMESHIFT, "trace": study.config["carbon"]["trace"]}


def _summary_inputs(study):
    inputs = {"metrics": METRICS, "probes": study.probes(None)}
    if _uses_trace(study):
        inputs["timeshift"] = TIMESHIFT
    return inputs


def _carbon(study):
    return {"carbon": dict(study.config["carbon"])}


def _fig6a_inputs(study):
    carbon = study.config["carbon"]
    if carbon["source"] == "trace":
        return {"trace": carbon["trace"]}
    if carbon.get("trace_day"):
        return {}
    # A constant intensity drawn for the day the cells ran (their first window).
    return {"cells": CELLS}


def _max_batch_table(number: int, family: str, title: str) -> Artifact:
    name = f"table{number}_max_batch"
    return Artifact(
        name=name,
        rule=f"tabulate_table{number}",
        script="tabulate_max_batch",
        outputs={
            "csv": f"results/tables/{name}.csv",
            "md": f"results/tables/{name}.md",
            "html": f"results/tables/{name}.html",
        },
        shown="html",
        caption=f"{name}.rst",
        category=TABLES,
        build=_build_max_batch,
        inputs=lambda study: {"probes": study.probes(family)},
        params=lambda study: {"title": title, "model_info": study.model_info(study.models_of(family))},
        wanted=_has_probes(family),
    )


ARTIFACTS: tuple[Artifact, ...] = (
    Artifact(
        name="summary",
        rule="summarize_headlines",
        script="summarize_headlines",
        outputs={"md": "results/summary.md", "html": "results/summary.html"},
        shown="html",
        caption="summary.rst",
        category=HEADLINES,
        build=_build_summary,
        inputs=_summary_inputs,
        params=lambda study: {"slos_s_per_token": study.slos(), "model_info": study.model_info()},
    ),
    Artifact(
        name="metrics_table",
        rule="tabulate_metrics",
        script="summarize_headlines",
        outputs={"html": "results/tables/metrics.html"},
        shown="html",
        caption="metrics_table.rst",
        category=HEADLINES,
        build=_build_metrics_table,
        inputs=_metrics,
    ),
    figure(
        "fig1_flops_vs_seqlen",
        "plot_fig1",
        _draw_fig1,
        inputs=lambda study: {"arch": _arch_files(study)},
        params=_analytic_params,
    ),
    figure(
        "fig2a_memory_vs_seqlen",
        "plot_fig2a",
        _draw_fig2a,
        inputs=lambda study: {
            "arch": _arch_files(study),
            "platforms": study.resource("platforms.csv"),
        },
        params=lambda study: _analytic_params(study)
        | {"platforms": study.platform_limits()}
        | ({"platform_hardware": hw} if (hw := study.platform_hardware()) else {})
        | ({"quantized": q} if (q := study.quantized_fig2a()) else {}),
    ),
    figure(
        "fig2b_gpu_generations",
        "plot_fig2b",
        _draw_fig2b,
        inputs=lambda study: {"platforms": study.resource("platforms.csv")},
    ),
    figure(
        "fig4a_throughput_latency",
        "plot_fig4a",
        _draw_fig4,
        inputs=_metrics,
        params=_family_models("llama"),
        wanted=_has_family("llama"),
    ),
    figure(
        "fig4b_throughput_latency",
        "plot_fig4b",
        _draw_fig4,
        inputs=_metrics,
        params=_family_models("gpt2"),
        wanted=_has_family("gpt2"),
    ),
    figure(
        "fig4c_throughput_latency",
        "plot_fig4c",
        _draw_fig4c,
        inputs=_metrics,
        params=_fig4c_params,
        wanted=_has_quantized,
    ),
    figure(
        "fig5_mfu_batch1",
        "plot_fig5",
        _draw_fig5,
        inputs=lambda study: {"metrics": METRICS, "cells": CELLS},
        wanted=_has_static_cells,
    ),
    figure(
        "fig6a_intensity_day",
        "plot_fig6a",
        _draw_fig6a,
        inputs=_fig6a_inputs,
        params=lambda study: {"carbon": dict(study.config["carbon"])},
        # Only with an hourly trace: a constant intensity draws a flat line that carries no data
        # (issue 24); the constant is stated in every carbon figure's subtitle and in summary.md.
        # `snakemake results/figures/fig6a_intensity_day.png` still draws it on request.
        wanted=_uses_trace,
    ),
    figure(
        "fig6b_power_over_time",
        "plot_fig6b",
        _draw_fig6,
        inputs=lambda study: {"power": POWER, "batches": BATCHES},
        params=_family_models("llama"),
        wanted=_has_family("llama"),
    ),
    figure(
        "fig6c_power_over_time",
        "plot_fig6c",
        _draw_fig6,
        inputs=lambda study: {"power": POWER, "batches": BATCHES},
        params=_family_models("gpt2"),
        wanted=_has_family("gpt2"),
    ),
    figure("fig7_carbon_per_token", "plot_fig7", _draw_fig7, inputs=_metrics),
    figure(
        "pareto_carbon_latency",
        "plot_pareto",
        _draw_pareto,
        category=CARBON_ANALYSIS,
        inputs=_metrics,
        params=lambda study: {"slos_s_per_token": study.slos()},
    ),
    figure(
        "timeshift_day",
        "plot_timeshift",
        _draw_timeshift,
        category=CARBON_ANALYSIS,
        inputs=_timeshift_inputs,
        params=_carbon,
        wanted=_uses_trace,
    ),
    Artifact(
        name="timeshift_table",
        rule="tabulate_timeshift",
        script="summarize_headlines",
        outputs={"csv": "results/tables/timeshift.csv", "html": "results/tables/timeshift.html"},
        shown="html",
        caption="timeshift_table.rst",
        category=CARBON_ANALYSIS,
        build=_build_timeshift_table,
        inputs=_timeshift_inputs,
        params=_carbon,
        wanted=_uses_trace,
    ),
    _max_batch_table(3, "llama", "Table 3: maximum batch size before out-of-memory, Llama-2 family"),
    _max_batch_table(4, "gpt2", "Table 4: maximum batch size before out-of-memory, GPT-2 family"),
)

BY_NAME: dict[str, Artifact] = {a.name: a for a in ARTIFACTS}
if len(BY_NAME) != len(ARTIFACTS) or len({a.rule for a in ARTIFACTS}) != len(ARTIFACTS):
    raise AssertionError("figures.registry: artifact names and rules must be unique")


def get(name: str) -> Artifact:
    try:
        return BY_NAME[name]
    except KeyError:
        raise ConfigError(f"unknown figure or table {name!r}; known: {sorted(BY_NAME)}") from None


def targets(study: Study) -> list[str]:
    """Every output path of the artifacts `all` wants for this study."""
    return [p for a in ARTIFACTS if a.wanted(study) for p in a.outputs.values()]


def build(
    name: str,
    inputs: Mapping[str, Any],
    params: Mapping[str, Any],
    outputs: Mapping[str, str],
) -> None:
    """Make artifact `name` from its inputs (key -> path or list of paths) and params into its
    outputs (key -> path); what a rule's script calls."""
    artifact = get(name)
    missing = [k for k in artifact.outputs if k not in outputs]
    if missing:
        raise ConfigError(f"{name}: outputs {missing} not given; it writes {list(artifact.outputs)}")
    artifact.build(inputs, params, outputs)


def inputs_under(study_inputs: Mapping[str, Any], root: str | Path) -> dict[str, Any]:
    """The same inputs with results/... paths moved under `root` (a committed study's folder
    holding tables/ and cells/ as results/ does)."""

    def move(p):
        return str(Path(root) / Path(p).relative_to("results")) if str(p).startswith("results/") else p

    return {
        k: [move(p) for p in v] if isinstance(v, list | tuple) else move(v)
        for k, v in study_inputs.items()
    }


__all__: Sequence[str] = [
    "ARTIFACTS",
    "Artifact",
    "Study",
    "build",
    "get",
    "inputs_under",
    "intensity_series",
    "targets",
]

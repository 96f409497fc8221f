"""The plan of a study: what it makes (cells, probes, tables, figures), from which inputs and with
which parameters, answered once from a validated config.

The DAG (workflow/rules/*.smk: thin input functions over one Plan), the figure registry
(figures/registry.Study), `tokencarbon doctor`, a chunked study runner and the tests all ask a Plan;
nothing else decides which cells and probes a study has, or the slice of the config a job depends
on (tokencarbon.layout spells their names and paths). No job imports this module, so editing it
replans no job (code inputs follow the scripts' imports).

A cell is a CellKey (platform, model, mode, n): static cells (`bs{n}`, the workload in batches of
n, the study's method) and continuous-batching cells (`cb{n}`, at most n requests in flight; with
backend openai_server every cell is one, its engine a server already running, docs/server.md). A
platform's cells come from one of three sources: measured here (rules run_cell and
run_continuous_cell), copied from the machine that measured them (platforms.<name>.import_only), or
imported from an external power log and timing file (platforms.<name>.imported, rule import_cell).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from tokencarbon.config import (
    PAGED_DEFAULTS,
    check_copied_cells,
    check_model_vocabulary,
    check_pool_holds_num_prompts,
    measured_platforms,
    platform_overrides,
    platform_row,
    platform_spec,
    platforms_to_measure,
    resolve_model_architecture,
)
from tokencarbon.errors import ConfigError
from tokencarbon.layout import (
    CELL_FILES,
    CONTINUOUS,
    MODE_PREFIX,
    MODES,
    PROBE_KEY,
    STATIC,
    SWEEP_KEY,
    CellKey,
    cell_log,
    cell_outputs,
    in_study,
    log_path,
    probe_path,
    study_name,
    study_root,
)
from tokencarbon.records import CellMeta, read_probe

# backend.openai_server keys a server cell reads at run time but that are not its params.
SERVER_RUNTIME_KEYS = ("server_pid", "server_cgroup")
# Where a platform's cells come from.
MEASURED, COPIED, IMPORTED = "measured", "copied", "imported"


def workdir_path(path: str | Path) -> str:
    """`path` relative to the working directory where it lies inside it, else absolute."""
    path = Path(path).absolute()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def choices(names) -> str:
    """A regex matching exactly the given names (a wildcard constraint); one matching nothing for
    none."""
    return "|".join(re.escape(n) for n in names) or "(?!)"


# A probe record reader: (platform, model) -> probe.json's content, or None while not probed.
ProbeReader = Callable[[str, str], Mapping[str, Any] | None]


class Plan:
    """A validated config (defaults filled: config.prepare_config, or Snakemake's validate) as the
    study it plans. workflow_dir: the workflow's folder (resources/, `auto` architectures' relative
    checkpoints); root: the study's folder, where every output of the study lies (cells, probes,
    tables, figures, logs), relative to the working directory; default results/<study>
    (layout.study_root of the config's `study`), another for a committed study's folder
    (benchmarks/results/<study>). Raises ConfigError for a `study` that is no study name."""

    def __init__(self, config: Mapping[str, Any], workflow_dir: str | Path | None = None,
                 root: str | Path | None = None) -> None:  # fmt: skip
        self.config = config
        self.workflow_dir = workflow_dir
        self.study = study_name(config)
        self.root = str(root) if root is not None else study_root(self.study)
        self.platforms = sorted(config["platforms"])
        self.models = sorted(config["models"])
        self.families = sorted({config["models"][m]["family"] for m in self.models})
        self.backend = config["backend"]["name"]
        self.measured = measured_platforms(config)
        self.copied = [p for p in self.platforms if config["platforms"][p]["import_only"]]
        self.imported = [p for p in self.platforms if config["platforms"][p].get("imported")]
        self.to_measure = platforms_to_measure(config)

    @classmethod
    def from_configfile(cls, path: str | Path, workflow_dir: str | Path, **kw: Any) -> Plan:
        """The plan of a config file as `snakemake --configfile` reads it (config.load_config)."""
        from tokencarbon.config import load_config

        return cls(load_config(path, workflow_dir), workflow_dir, **kw)

    # ------------------------------------------------------------------ platforms and models

    def source(self, platform: str) -> str:
        """MEASURED, COPIED or IMPORTED: where the platform's cells come from."""
        if platform in self.copied:
            return COPIED
        return IMPORTED if platform in self.imported else MEASURED

    def architecture(self, model: str):
        """The models.Architecture of a configured model (a resources/models name, `auto` from its
        checkpoint's config.json, cached per process)."""
        return resolve_model_architecture(self.config, model, self.workflow_dir)

    def family(self, model: str) -> str:
        """The model's architecture family ("llama" or "gpt2"), which splits figures 4 and 6."""
        return self.architecture(model).family

    def models_of(self, family: str) -> list[str]:
        return [m for m in self.models if self.family(m) == family]

    def data_family(self, model: str) -> str:
        """The model's config family (families.<name>: tokenizer and token bounds)."""
        return self.config["models"][model]["family"]

    def resource(self, *parts: str) -> str:
        """A file under resources/ as jobs read it (models.resources_dir of the workflow)."""
        from tokencarbon.models import resources_dir

        return workdir_path(resources_dir(self.workflow_dir).joinpath(*parts))

    # ------------------------------------------------------------------ cells and probes

    def read_probe(self, platform: str, model: str) -> Mapping[str, Any] | None:
        """probe.json of (platform, model) under root, or None where it is not there yet."""
        path = Path(probe_path(platform, model, self.root))
        return read_probe(path) if path.is_file() else None

    def copied_sizes(self, platform: str, model: str, mode: str) -> list[int]:
        """The n of the finished cells of `mode` found under root/cells/<platform>/<model>/."""
        prefix = MODE_PREFIX[mode]
        folder = Path(self.root, "cells", platform, model)
        return sorted(
            int(p.parent.name[len(prefix) :])
            for p in folder.glob(f"{prefix}*/meta.json")
            if p.parent.name[len(prefix) :].isdigit()
        )

    def sizes(self, platform: str, model: str, mode: str,
              probe: ProbeReader | None = None) -> list[int] | None:  # fmt: skip
        """The n of (platform, model)'s cells of `mode`, ascending; None while an `auto` sweep
        waits for its OOM probe.

        Copied platforms: the cells found on disk (static ones required: ConfigError naming
        import_only). Imported: the timing file's batch sizes (no continuous cells). Measured: the
        sweep as listed, or `auto`: powers of two up to the probe's largest fit, capped at
        workload.num_prompts, plus that maximum (auto_batch_sizes). probe(platform, model): the
        probe's record or None (the DAG passes its checkpoint; default read_probe)."""
        source = self.source(platform)
        if source == COPIED:
            found = self.copied_sizes(platform, model, mode)
            if mode == STATIC and not found:
                raise ConfigError(
                    f"config key platforms.{platform}.import_only: no cells of {model} under "
                    f"{self.root}/cells/{platform}/{model}/bs*/; copy that folder from the machine "
                    "that measured them, or set import_only to false to run them here"
                )
            return found
        if source == IMPORTED:
            return self.imported_sizes(platform, model) if mode == STATIC else []
        listed = self.config["sweep"][SWEEP_KEY[mode]]
        if listed != "auto":
            return sorted(listed)
        record = (probe or self.read_probe)(platform, model)
        if record is None:
            return None
        if PROBE_KEY[mode] not in record:
            raise ConfigError(
                f"config key sweep.{SWEEP_KEY[mode]}: 'auto' reads {PROBE_KEY[mode]} from the "
                f"probe, and {probe_path(platform, model, self.root)} has none (probed without "
                "it); delete that probe.json to probe again, or list the sizes"
            )
        return auto_batch_sizes(record[PROBE_KEY[mode]], self.config["workload"]["num_prompts"])

    def imported_sizes(self, platform: str, model: str) -> list[int]:
        """Batch sizes of `model` in an imported platform's timing file."""
        from tokencarbon.importing import imported_windows

        windows = imported_windows(self.config, self.models, platform)
        return sorted(int(b) for b in set(windows.loc[windows["model"] == model, "batch_size"]))

    def _sweep(self, probe: ProbeReader | None) -> Iterator[tuple[str, str, str, list[int] | None]]:
        for p in self.platforms:
            for m in self.models:
                for mode in MODES:
                    yield p, m, mode, self.sizes(p, m, mode, probe)

    def cells(self, probe: ProbeReader | None = None) -> list[CellKey]:
        """Every cell of the study whose n is known (platform, model, then static before
        continuous, n ascending: the aggregated tables' row order)."""
        return [CellKey(p, m, mode, n) for p, m, mode, ns in self._sweep(probe) for n in ns or ()]

    def pending(self, probe: ProbeReader | None = None) -> list[tuple[str, str, str]]:
        """(platform, model, mode) whose `auto` sweep waits for a probe not yet run."""
        return [(p, m, mode) for p, m, mode, ns in self._sweep(probe) if ns is None]

    def cell_files(self, probe: ProbeReader | None = None) -> dict[str, list[str]]:
        """stem -> paths of every cell's files (requests and steps: continuous cells only), the
        aggregation's inputs."""
        out: dict[str, list[str]] = {stem: [] for stem in CELL_FILES[CONTINUOUS]}
        for key in self.cells(probe):
            for stem, path in key.files(self.root).items():
                out[stem].append(path)
        return out

    def has_continuous_cells(self) -> bool:
        """Whether the study has continuous cells, decidable before any probe: the config lists a
        continuous sweep (`auto` always gives at least cb1), or copied cb cells are there."""
        sweep = self.config["sweep"][SWEEP_KEY[CONTINUOUS]]
        return bool(sweep) or any(
            self.copied_sizes(p, m, CONTINUOUS) for p in self.copied for m in self.models
        )

    def has_static_cells(self) -> bool:
        """Whether the study has static cells, decidable before any probe: copied platforms
        (their bs cells are required) and imported ones (the timing file's batches) have them;
        measured platforms unless sweep.batch_sizes is [] (backend openai_server: continuous
        cells only)."""
        if self.copied or self.imported:
            return True
        return bool(self.measured) and self.config["sweep"]["batch_sizes"] != []

    def probes(self, family: str | None = None) -> list[str]:
        """probe.json of every (platform, model) that has one, for tables 3/4 and the summary:
        measured platforms with the torch backend (the probe drives it) and copied platforms (the
        other machine probed them); imported platforms never (a power log has no probe). family:
        only models of that architecture family."""
        models = self.models if family is None else self.models_of(family)
        platforms = [p for p in self.platforms if self.source(p) == COPIED
                     or (self.source(p) == MEASURED and self.backend == "torch")]  # fmt: skip
        return [probe_path(p, m, self.root) for p in platforms for m in models]

    def describe(self) -> dict[str, Any]:
        """What `tokencarbon doctor` shows of the plan: {"cells": names known now, "pending":
        "<platform>/<model> <mode>" sweeps waiting for their probe, "probes": probe files}."""
        return {
            "cells": [k.name for k in self.cells()],
            "pending": [f"{p}/{m} {mode}" for p, m, mode in self.pending()],
            "probes": self.probes(),
        }

    # ------------------------------------------------------------------ the study's folder

    def out(self, rel: str) -> str:
        """The path of `rel` (e.g. "tables/metrics.parquet") in the study's folder."""
        return f"{self.root}/{rel}"

    def log(self, name: str) -> str:
        """A job's log in the study's folder (<root>/logs/<name>)."""
        return log_path(self.root, name)

    def cell_outputs(self, mode: str) -> dict[str, str]:
        """A cell rule's output patterns in the study's folder (layout.cell_outputs)."""
        return cell_outputs(mode, self.root)

    def cell_log(self, rule: str, mode: str) -> str:
        """A cell rule's log pattern in the study's folder (layout.cell_log)."""
        return cell_log(rule, mode, self.root)

    def probe_pattern(self) -> str:
        """The OOM probe checkpoint's output pattern, <root>/cells/{platform}/{model}/probe.json."""
        return probe_path("{platform}", "{model}", self.root)

    def in_study(self, paths: Any) -> Any:
        """A path, or a list of paths, or a dict of either, with study-relative names spelled
        results/<rel> (the figure registry's, export's) moved into the study's folder
        (layout.in_study); other paths as they are."""
        if isinstance(paths, Mapping):
            return {k: self.in_study(v) for k, v in paths.items()}
        if isinstance(paths, list | tuple):
            return [in_study(p, self.root) for p in paths]
        return in_study(paths, self.root)

    def study_record(self) -> str:
        """The study folder's record of the config it was made from (tokencarbon.study)."""
        from tokencarbon.layout import STUDY_RECORD

        return self.out(STUDY_RECORD)

    # ------------------------------------------------------------------ tables and targets

    def aggregate_outputs(self) -> dict[str, str]:
        """aggregate_cells' outputs: requests and steps only where there are continuous cells."""
        names = ["batches", "power", "cells"]
        if self.has_continuous_cells():
            names += ["requests", "steps"]
        return {n: self.out(f"tables/{n}.parquet") for n in names}

    def uses_trace(self) -> bool:
        return self.config["carbon"]["source"] == "trace"

    def table_targets(self) -> list[str]:
        """The aggregated and metrics tables `all` builds (timeshift: with an hourly trace)."""
        names = ["batches", "power", "cells", "metrics"]
        if self.has_continuous_cells():
            names += ["requests", "steps"]
        names.append("metrics_repeats")
        if self.uses_trace():
            names.append("timeshift")
        return [self.out(f"tables/{n}.parquet") for n in names]

    def figure_targets(self) -> list[str]:
        """Every figure, table and summary file of the registry `all` wants (registry.targets)."""
        from tokencarbon.figures.registry import Study, targets

        return self.in_study(targets(Study(self)))

    def targets(self) -> list[str]:
        """What `all` builds, all in the study's folder: every model's workload, the tables, the
        figures' registry, the export and the report (the folder's record, study.json, is written
        after a successful run: workflow/rules/study.smk)."""
        from tokencarbon.export import EXPORT_TARGETS

        return (
            [self.out(f"workload/{m}.parquet") for m in self.models]
            + self.table_targets()
            + self.figure_targets()
            + self.in_study(list(EXPORT_TARGETS))
            + [self.report_target()]
        )

    def report_target(self) -> str:
        """The study's HTML report (rule build_report, tokencarbon.report)."""
        return self.out("report.html")

    # ------------------------------------------------------------------ inputs of jobs

    def tokenizer_corpus(self) -> str:
        """What the builtin tokenizer learns: the synthetic corpus or the workload source file."""
        source = self.config["workload"]["source"]
        return self.out("dataset/synthetic_sharegpt.json") if source == "synthetic" else source

    def filter_inputs(self, family: str) -> dict[str, str]:
        """filter_sharegpt's data inputs: the source file (not for an "hf:" dataset) and the
        builtin tokenizer where the family uses it."""
        inputs = {}
        source = self.config["workload"]["source"]
        if source == "synthetic":
            inputs["source"] = self.out("dataset/synthetic_sharegpt.json")
        elif not source.startswith("hf:"):
            inputs["source"] = source
        if self.config["families"][family]["tokenizer"] == "builtin":
            inputs["tokenizer"] = self.out("tokenizer/builtin")
        return inputs

    def workload_pool(self, model: str) -> str:
        """sample_workload's pool, num_prompts first checked against the pool on disk
        (config.check_pool_holds_num_prompts: a failed sample job would delete the workload)."""
        family = self.data_family(model)
        pool = self.out(f"dataset/{family}.parquet")
        check_pool_holds_num_prompts(self.config, family, pool)
        return pool

    def engine_manifest(self, platform: str, model: str) -> str:
        """The engine a probe or cell of this model runs, its vocabulary first checked against the
        builtin tokenizer's (config.check_model_vocabulary: the cells would refuse the ids)."""
        check_model_vocabulary(self.config, model, self.workflow_dir)
        return self.out(f"engines/{platform}/{model}/{self.backend}/manifest.json")

    def cell_inputs(self, platform: str, model: str) -> dict[str, str]:
        """A measured cell's data inputs: its model's workload and the engine it runs
        (engine_manifest); a server cell (backend openai_server) has no engine job, and reads the
        builtin tokenizer where its family uses it (prompts sent as text are decoded by it)."""
        inputs = {"workload": self.out(f"workload/{model}.parquet")}
        if self.backend != "openai_server":
            return {"engine": self.engine_manifest(platform, model)} | inputs
        check_model_vocabulary(self.config, model, self.workflow_dir)
        if self.config["families"][self.data_family(model)]["tokenizer"] == "builtin":
            inputs["tokenizer"] = self.out("tokenizer/builtin")
        return inputs

    def server_params(self, model: str) -> dict[str, Any]:
        """A server cell's params `server` (backend openai_server): {"settings": backend.
        openai_server with every default spelled (ServerSettings.record: the API key's variable
        name, never a key), "tokenizer": the model family's tokenizer (<root>/tokenizer/builtin,
        a local folder or a hub id), which decodes prompts sent as text}, without server_pid and
        server_cgroup (SERVER_RUNTIME_KEYS: a restarted server has another pid, and reruns no
        cell; the job reads them from the config, run_cell's `server_runtime`). Raises ConfigError
        for settings server_settings refuses."""
        from tokencarbon.backends.openai_server import server_settings

        tokenizer = self.config["families"][self.data_family(model)]["tokenizer"]
        if tokenizer == "builtin":
            tokenizer = self.out("tokenizer/builtin")
        settings = server_settings(self.config["backend"].get("openai_server")).record()
        for key in SERVER_RUNTIME_KEYS:  # which process is the server: not what a cell measures
            settings.pop(key)
        return {"settings": settings, "tokenizer": tokenizer}

    def engine_inputs(self, model: str) -> dict[str, Any]:
        """What an engine reads besides params: the architecture file of a named architecture,
        and a local checkpoint's config and weights (a changed checkpoint reruns its engine)."""
        m = self.config["models"][model]
        inputs: dict[str, Any] = {}
        if m["architecture"] != "auto":
            inputs["arch"] = self.resource("models", f"{m['architecture']}.json")
        folder = Path(m["checkpoint"] or "").expanduser()
        if m["checkpoint"] and folder.is_dir():
            inputs["checkpoint"] = sorted(
                str(p) for p in folder.iterdir() if p.suffix in {".json", ".safetensors", ".bin"}
            )
        return inputs

    def import_inputs(self, platform: str) -> dict[str, str]:
        """import_cell's inputs: the platform's power log and timing file."""
        spec = self.config["platforms"][platform]["imported"]
        return {"power_log": spec["power_log"], "timing": spec["timing"]}

    def measurement_files(self) -> list[str]:
        """The platform measurements compute_metrics reads (never cells, so a re-measurement
        reruns no cell): rule measure_platform's (spec.measure), and those copied in beside
        import_only platforms' cells, which are checked against the devices the copied cells ran
        on (config.check_copied_cells) first."""
        from tokencarbon.peak import read_measurement

        copied = []
        for p in self.copied:
            path = Path(self.root, "platforms", p, "spec.json")
            measured = read_measurement(str(path), p)["measured"] if path.is_file() else None
            devices = [
                CellMeta.read(meta).device_name
                for meta in Path(self.root, "cells", p).glob("*/*/meta.json")
            ]
            check_copied_cells(self.config, p, devices, measured)
            if path.is_file():
                copied.append(str(path))
        return [f"{self.root}/platforms/{p}/spec.json" for p in self.to_measure] + copied

    def metrics_inputs(self) -> dict[str, str]:
        """compute_metrics' inputs beyond the cell tables: the trace, and the continuous cells'
        requests and steps (the trace first checked to cover every cell, check_trace_coverage)."""
        self.check_trace_coverage()
        inputs = {}
        if self.uses_trace():
            inputs["trace"] = self.config["carbon"]["trace"]
        if self.has_continuous_cells():
            inputs |= {n: self.out(f"tables/{n}.parquet") for n in ("requests", "steps")}
        return inputs

    # ------------------------------------------------------------------ params of jobs

    def model_params(self, model: str) -> dict[str, Any]:
        """What the engine, probe and cells of `model` depend on (model_slice)."""
        return model_slice(self.config, model, self.workflow_dir)

    def platform_params(self, platform: str) -> dict[str, Any]:
        """What a measured cell needs of its platform (platform_slice)."""
        return platform_slice(self.config, platform)

    def probe_platform_params(self, platform: str) -> dict[str, Any]:
        """What the probe needs of its platform (probe_platform_slice)."""
        return probe_platform_slice(platform, self.config)

    def run_params(self) -> dict[str, Any]:
        return run_slice(self.config)

    def serving_params(self, n: int) -> dict[str, Any]:
        """A continuous cell's serving params (serving_slice)."""
        return serving_slice(self.config, n)

    def cell_params(self, key: CellKey) -> dict[str, Any]:
        """A measured cell's params: model, platform, run (its own repeats: cell_repeats) and,
        continuous, serving (static cells take none, so a serving change never reruns them)."""
        run = {k: v for k, v in self.run_params().items() if k != "repeats"}
        sizes = self.sizes(key.platform, key.model, key.mode) or [key.n]
        repeats = cell_repeats(self.config["run"], key.n, sizes)
        if repeats != 1:  # as run_slice: absent at 1, so cells measured before repeats stay
            run["repeats"] = repeats
        out = {
            "model": self.model_params(key.model),
            "platform": self.platform_params(key.platform),
            "run": run,
        }
        if key.mode == CONTINUOUS:
            out["serving"] = self.serving_params(key.n)
        return out

    def probe_params(self, platform: str, model: str) -> dict[str, Any]:
        """The probe's params: model, platform, limits (probe_limits) and the backend it refuses
        unless torch."""
        return {
            "model": self.model_params(model),
            "platform": self.probe_platform_params(platform),
            "limits": self.probe_limits(platform),
            "backend": self.backend,
        }

    def probe_limits(self, platform: str) -> dict[str, Any]:
        """The probe's search bounds; with `max_num_seqs: auto` also the concurrency to search up
        to (max_batch or num_prompts, whichever is smaller): only then, so probes made for a
        listed sweep keep their params."""
        sweep = self.config["sweep"]
        limits = {"memory_limit_gb": self.config["platforms"][platform]["memory_limit_gb"],
                  "max_batch": sweep["max_batch"]}  # fmt: skip
        if sweep["max_num_seqs"] == "auto":
            limits["max_num_seqs"] = min(sweep["max_batch"], self.config["workload"]["num_prompts"])
        return limits

    def measure_params(self, platform: str) -> dict[str, Any]:
        return measure_slice(self.config, platform)

    def gpus(self, platform: str) -> int:
        """GPUs a job of the platform holds (the `gpu` resource)."""
        return 0 if platform_spec(self.config, platform).kind == "cpu" else 1

    def filter_params(self, family: str) -> dict[str, Any]:
        f = self.config["families"][family]
        source = self.config["workload"]["source"]
        return {
            "source": source,
            # the split only means something for an "hf:" dataset; elsewhere it must not rerun
            "split": self.config["workload"]["split"] if source.startswith("hf:") else None,
            "tokenizer": f["tokenizer"],
            "min_tokens": f["min_tokens"],
            "max_tokens": f["max_tokens"],
            # the synthetic stream grows until the pool holds num_prompts (synthetic_pool_report)
            **({"needed": self.config["workload"]["num_prompts"], "seed": self.config["seed"]}
               if source == "synthetic" else {}),  # fmt: skip
        }

    def transformers_options(self) -> dict[str, Any]:
        """The transformers backend's options (engine.TRANSFORMERS_OPTIONS), for its engine only."""
        return dict(self.config["backend"]["transformers"])

    def trtllm_build_params(self, model: str) -> dict[str, int]:
        family = self.config["families"][self.data_family(model)]
        return {
            "max_batch_size": self.config["sweep"]["max_batch"],
            "max_input_len": family["max_tokens"],
            "max_output_len": family["max_tokens"],
        }

    def import_params(self, platform: str, model: str) -> dict[str, Any]:
        """What an imported cell depends on: the platform's imported slice and the model's
        architecture, dtype and (where set) quantization."""
        m = self.config["models"][model]
        out = {
            "imported": dict(self.config["platforms"][platform]["imported"]),
            "architecture": m["architecture"],
            "dtype": m["dtype"],
        }
        if m.get("quantization") not in (None, "none"):  # only where set: older params stay
            out["quantization"] = m["quantization"]
        return out

    def carbon_params(self, trace_day: bool = False) -> dict[str, Any]:
        """The carbon slice: what metrics read (trace_day only concerns figure 6a and the time
        shift, which pass trace_day=True)."""
        return {k: v for k, v in self.config["carbon"].items() if trace_day or k != "trace_day"}

    def metrics_params(self) -> dict[str, Any]:
        """compute_metrics' params: carbon, `metrics` settings, each platform's spec overrides and
        row, and the architectures of configured models by the name cells record (an `auto` one
        has no file in resources/models)."""
        from tokencarbon.models import architecture_to_dict

        platforms = self.config["platforms"]
        return {
            "carbon": self.carbon_params(),
            "metrics": self.config["metrics"],
            "platform_specs": {n: p["spec"] for n, p in platforms.items()},
            "platform_rows": {n: platform_row(self.config, n) for n in platforms},
            "architectures": {
                self.architecture(m).name: architecture_to_dict(self.architecture(m))
                for m in self.models
            },
        }

    # ------------------------------------------------------------------ checks at DAG build

    def check_imported_sources(self) -> None:
        """What rule import_cell would refuse (a log or timing file the job cannot use, a window
        outside the log, a device that is not the platform's), refused before any job
        (importing.check_imported_platform)."""
        from tokencarbon.importing import check_imported_platform

        for name in self.imported:
            check_imported_platform(self.config, self.models, name)

    def known_windows(self) -> tuple[list[tuple[str, int, int]], bool]:
        """(label, start_wall_ns, end_wall_ns) of every window known before any job runs (finished
        cells' batches, imported timing rows), and whether cells of this run are yet to be
        measured (their windows start now)."""
        from tokencarbon.config import cell_windows
        from tokencarbon.importing import imported_windows

        windows, measured_now = [], False
        for p in self.platforms:
            if self.source(p) == IMPORTED:
                w = imported_windows(self.config, self.models, p)
                windows += [(f"imported platform {p}, timing row {r.row}", r.start_wall_ns,
                             r.end_wall_ns) for r in w.itertuples()]  # fmt: skip
                continue
            for m in self.models:
                for mode in MODES:
                    sizes = self.sizes(p, m, mode)
                    if sizes is None:
                        measured_now = True
                    for n in sizes or ():
                        folder = Path(CellKey(p, m, mode, n).folder(self.root))
                        if (folder / "meta.json").is_file():
                            windows += cell_windows(folder)
                        else:
                            measured_now = measured_now or self.source(p) == MEASURED
        return windows, measured_now

    @functools.cache  # noqa: B019 (one Plan per DAG build)
    def check_trace_coverage(self) -> None:
        """With carbon.source trace, the trace covers every window metrics will read
        (config.check_trace_coverage): finished cells, imported timing rows and, for cells this
        run measures, the present instant."""
        if not self.uses_trace():
            return
        import time

        from tokencarbon.config import check_trace_coverage

        windows, measured_now = self.known_windows()
        if measured_now:
            now = time.time_ns()
            windows.append(("cells measured in this run (starting now)", now, now + 1))
        check_trace_coverage(self.config, windows)


# ---------------------------------------------------------------- sweeps


def auto_batch_sizes(max_ok: int, cap: int | None = None) -> list[int]:
    """Powers of two up to the probed maximum, plus the maximum itself; the maximum first capped
    at `cap` (workload.num_prompts: a batch larger than the workload never fills)."""
    top = max_ok if cap is None else min(max_ok, cap)
    sizes = []
    b = 1
    while b <= top:
        sizes.append(b)
        b *= 2
    if sizes[-1] != top:
        sizes.append(top)
    return sizes


# ---------------------------------------------------------------- slices (params)


def model_slice(config: dict[str, Any], model: str, workflow_dir=None) -> dict[str, Any]:
    """What the engine, probe and cells of `model` depend on (plain builtins). An `auto`
    architecture is passed resolved (models.architecture_to_dict), so a changed config.json is a
    params change of every job that uses it. A weight-only quantization other than none is
    included as {"scheme", "group_size"} (quantization.Quantization.to_dict), so changing it
    re-plans the model's engine, probe and cells."""
    from tokencarbon.models import architecture_to_dict
    from tokencarbon.quantization import parse_quantization

    m = config["models"][model]
    architecture = m["architecture"]
    if architecture == "auto":
        architecture = architecture_to_dict(resolve_model_architecture(config, model, workflow_dir))
    out = {
        "name": model,
        "architecture": architecture,
        "dtype": m["dtype"],
        "checkpoint": m["checkpoint"],
        "seed": config["seed"],
    }
    # Only where set: jobs of unquantized models keep the params they were planned with.
    quantization = parse_quantization(m.get("quantization"), f"models.{model}.quantization")
    if quantization.quantized:
        out["quantization"] = quantization.to_dict()
    return out


def measuring_spec(config: dict[str, Any], platform: str) -> dict[str, Any]:
    """The part of platforms.<name>.spec that changes what a cell, probe or measure_platform job
    measures, as their params carry it: on a cpu platform `measure`, `logical_cpus` (the CPUs
    leased and pinned) and `tdp_w` (modeled power) with their values, and, by name alone under
    platforms.METRICS_ONLY_KEY, the peak and bandwidth a cpu row needs given to describe another
    CPU (platforms.REQUIRED_FOR_OTHER_CPU; not those `measure` supplies), so that the job's
    hardware check counts them while correcting their values reruns no job that measures. Every
    other key (memory, embodied carbon, lifetime, other peaks: read by metrics and figures only) is
    left out, and so is everything of a gpu platform, whose power NVML reads. {} where none."""
    from tokencarbon.platforms import (
        MEASURE_KEY, MEASURED_ALWAYS, MEASURING_SPEC_FIELDS, METRICS_ONLY_KEY,
        REQUIRED_FOR_OTHER_CPU,
    )  # fmt: skip

    overrides = platform_overrides(config, platform)
    if not overrides or platform_spec(config, platform).kind != "cpu":
        return {}
    keep = (MEASURE_KEY, *MEASURING_SPEC_FIELDS)
    measured = MEASURED_ALWAYS if overrides.get(MEASURE_KEY) else ()
    out = {k: v for k, v in overrides.items() if k in keep}
    named = sorted(
        k for k in overrides if k in REQUIRED_FOR_OTHER_CPU and k not in keep and k not in measured
    )
    if named:
        out[METRICS_ONLY_KEY] = named
    return out


def probe_platform_slice(platform: str, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the OOM probe needs of its platform: enough to check the hardware (with the part of
    config's spec that changes a measurement, measuring_spec, and the row a variant names in
    `hardware`, each only where there is one, so that probes made without them are not rerun).
    Ignored: spec values only metrics read (correcting them reruns no probe or cell)."""
    from tokencarbon.platforms import get_platform

    row = platform_row(config, platform) if config is not None else platform
    p = get_platform(row)
    out = {"name": platform, "kind": p.kind, "device_name_pattern": p.device_name_pattern}
    if row != platform:
        out["hardware"] = row
    measuring = measuring_spec(config, platform) if config is not None else {}
    if measuring:  # only where some spec key changes a measurement: no key, no replanning
        spec = platform_spec(config, platform)
        out |= {"spec": measuring, "logical_cpus": spec.logical_cpus}
    return out


def measure_slice(config: dict[str, Any], platform: str) -> dict[str, Any]:
    """What rule measure_platform needs of its platform: the hardware check's fields (config's
    spec, `measure` included) and the logical CPUs to lease and measure on. Neither power nor
    models: changing them never re-measures."""
    cpus = platform_spec(config, platform).logical_cpus
    return {**probe_platform_slice(platform, config), "logical_cpus": cpus}


def platform_slice(config: dict[str, Any], platform: str) -> dict[str, Any]:
    """What a cell needs of its platform: the spec row with config's overrides (to check the
    hardware, model CPU power, pin CPUs) and the sidecar's settings."""
    spec = platform_spec(config, platform)
    interval = config["power"]["interval_s"]
    if interval is None:
        interval = 0.1 if spec.kind == "cpu" else 0.05
    # A GPU cell's power comes from NVML, not its TDP: its params take the row's TDP, never
    # config's, so that a TDP correction (read by nothing but the doctor) reruns no GPU cell.
    from tokencarbon.platforms import get_platform

    tdp_w = spec.tdp_w if spec.kind == "cpu" else get_platform(platform_row(config, platform)).tdp_w
    out = {
        **probe_platform_slice(platform, config),
        "logical_cpus": spec.logical_cpus,
        "tdp_w": float(tdp_w),
        "power_interval_s": float(interval),
        "idle_s": float(config["power"]["idle_s"]),
    }
    # only where set, so cells measured before the key existed keep their params
    if config["power"].get("idle_share_s", 0):
        out["idle_share_s"] = float(config["power"]["idle_share_s"])
    return out


def cell_repeats(run: Mapping[str, Any], n: int, sizes: Sequence[int]) -> int:
    """Times a cell of size n (batch size or max_num_seqs) repeats its measured work, in a sweep of
    `sizes` (its platform's, model's and mode's): run.repeats_at_ends for the sweep's smallest and
    largest n (the paper's headline pair, batch 1 and the largest batch, where the intervals
    matter most), where set; run.repeats otherwise. Raises ConfigError when n is not in sizes."""
    if n not in sizes:
        raise ConfigError(f"cell size {n} is not in its sweep {sorted(sizes)}")
    at_ends = run.get("repeats_at_ends")
    if at_ends is not None and n in (min(sizes), max(sizes)):
        return int(at_ends)
    return int(run["repeats"])


def run_slice(config: dict[str, Any]) -> dict[str, Any]:
    """What a cell runs with: the backend and its static-engine options, and run.repeats where it
    is not 1 (so cells measured before repeats existed are not rerun by its default)."""
    backend = config["backend"]
    out = {
        "backend": backend["name"],
        "cuda_graphs": backend["cuda_graphs"],
        "compile_decode": backend["compile_decode"],
        "warmup_batches": backend["warmup_batches"],
    }
    if config["run"]["repeats"] != 1:
        out["repeats"] = config["run"]["repeats"]
    return out


def serving_slice(config: dict[str, Any], max_num_seqs: int) -> dict[str, Any]:
    """Params `serving` of the continuous cell cb<max_num_seqs> (cell.serving_settings reads it);
    static cells have none, so a serving change never reruns them."""
    s = config["serving"]
    out = {
        "mode": CONTINUOUS,
        "max_num_seqs": int(max_num_seqs),
        "arrival": s["arrival"],
        "request_rate_per_s": s["request_rate_per_s"] if s["arrival"] == "poisson" else None,
        "seed": s["seed"] if s["arrival"] == "poisson" else 0,
    }
    # the paged engine's settings, only where they differ from its defaults (so a cell measured
    # with the defaults keeps its params)
    for key, default in PAGED_DEFAULTS.items():
        if s.get(key, default) != default:
            out[key] = s[key]
    return out

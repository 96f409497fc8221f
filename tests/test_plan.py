"""The study's plan (tokencarbon.plan): cell keys and names, sweeps from the config, a probe or the
disk, params of measuring jobs, and (slow) the DAG's own lists of cells, probes and figures against
the plan's for every committed config."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from harness import REPO, TEST_CONFIGS, TEST_DIR, Project, tiny_study

from tokencarbon.config import prepare_config
from tokencarbon.errors import ConfigError, InputError
from tokencarbon.layout import CONTINUOUS, STATIC, CellKey, probe_path, study_root
from tokencarbon.plan import Plan


def plan_of(config: dict, root: Path | str | None = None) -> Plan:
    return Plan(prepare_config(config, REPO), REPO, root=root)


# --- cell keys ----------------------------------------------------------------------------------


def test_a_cells_name_folder_and_files():
    key = CellKey("h100-sxm-80gb", "llama-2-7b", CONTINUOUS, 16)
    assert key.name == "h100-sxm-80gb/llama-2-7b/cb16"
    assert key.folder("results/paper") == "results/paper/cells/h100-sxm-80gb/llama-2-7b/cb16"
    assert key.folder() == "results/<study>/cells/h100-sxm-80gb/llama-2-7b/cb16"  # for messages
    assert list(key.files("r")) == ["batches", "power", "meta", "requests", "steps"]
    assert key.files("r")["meta"] == "r/cells/h100-sxm-80gb/llama-2-7b/cb16/meta.json"
    assert list(CellKey("cpu", "m", STATIC, 1).files()) == ["batches", "power", "meta"]
    assert CellKey.parse("results/cells/cpu/tiny-gpt2/bs8/") == CellKey("cpu", "tiny-gpt2", STATIC, 8)
    assert CellKey.parse(key.name) == key
    # a meta.json or CELLS row of before modes existed is static
    assert CellKey.of({"platform": "cpu", "model": "m", "batch_size": 4}) == CellKey("cpu", "m", STATIC, 4)
    assert probe_path("cpu", "m", "results/s") == "results/s/cells/cpu/m/probe.json"


@pytest.mark.parametrize("name", ["cpu/m/xb4", "cpu/m/bs", "m/bs4", "cpu/m/bs4x"])
def test_what_is_no_cell_is_refused_naming_the_form(name):
    with pytest.raises(ConfigError, match="is no cell: a cell is <platform>/<model>/<prefix><n>"):
        CellKey.parse(name)
    with pytest.raises(ConfigError, match="cell mode 'server'"):
        CellKey("cpu", "m", "server", 1)


# --- sweeps -------------------------------------------------------------------------------------


def test_an_auto_sweep_waits_for_its_probe_then_takes_powers_of_two(tmp_path):
    plan = plan_of(tiny_study(models=["tiny-llama"], workload={"num_prompts": 4},
                              sweep={"batch_sizes": "auto", "max_num_seqs": "auto"}), tmp_path)  # fmt: skip
    assert plan.cells() == [] and plan.pending() == [("cpu", "tiny-llama", STATIC),
                                                     ("cpu", "tiny-llama", CONTINUOUS)]  # fmt: skip
    probe = Path(probe_path("cpu", "tiny-llama", tmp_path))
    probe.parent.mkdir(parents=True)
    # 13 fit, capped at the 4 prompts: 1, 2, 4; 3 sequences fit: 1, 2 and 3 itself
    record = {"platform": "cpu", "model": "tiny-llama", "max_ok": 13, "min_failed": 14,
              "memory_limit_gb": 0.06}  # fmt: skip
    probe.write_text(json.dumps(record | {"max_num_seqs_ok": 3}))
    assert plan.pending() == []
    assert [k.name for k in plan.cells()] == [
        "cpu/tiny-llama/bs1", "cpu/tiny-llama/bs2", "cpu/tiny-llama/bs4",
        "cpu/tiny-llama/cb1", "cpu/tiny-llama/cb2", "cpu/tiny-llama/cb3",
    ]  # fmt: skip
    # the DAG's reader (the checkpoint) wins over the disk
    assert plan.sizes("cpu", "tiny-llama", STATIC, lambda p, m: {"max_ok": 2}) == [1, 2]
    probe.write_text(json.dumps(record))  # probed without the continuous search
    with pytest.raises(ConfigError, match="sweep.max_num_seqs: 'auto' reads max_num_seqs_ok"):
        plan.cells()
    probe.write_text(json.dumps({k: v for k, v in record.items() if k != "min_failed"}))
    with pytest.raises(InputError, match=r"probe.json: probe result lacks keys \['min_failed'\]"):
        plan.cells()


def test_copied_cells_are_the_finished_ones_on_disk(tmp_path):
    plan = plan_of(tiny_study(models=["tiny-llama"], platforms={"cpu": {"import_only": True,
                              "spec": {"measure": None}}}), tmp_path)  # fmt: skip
    with pytest.raises(ConfigError, match="platforms.cpu.import_only: no cells of tiny-llama"):
        plan.cells()
    for name in ["bs1", "bs4", "cb2"]:
        (tmp_path / "cells/cpu/tiny-llama" / name).mkdir(parents=True)
        (tmp_path / "cells/cpu/tiny-llama" / name / "meta.json").write_text("{}")
    (tmp_path / "cells/cpu/tiny-llama/bs8").mkdir()  # killed before its meta.json: not a cell
    assert [k.name for k in plan.cells()] == ["cpu/tiny-llama/bs1", "cpu/tiny-llama/bs4",
                                               "cpu/tiny-llama/cb2"]  # fmt: skip
    assert plan.has_continuous_cells()  # copied cb cells, though the config lists none
    assert list(plan.aggregate_outputs()) == ["batches", "power", "cells", "requests", "steps"]


def test_a_measured_and_an_imported_platform(monkeypatch):
    # Issue 20: the figures' fallback listed a probe.json for the imported platform that the DAG
    # excluded. One plan: the imported platform's cells come from its timing file (batch 2, its
    # model), and it has no probe.
    monkeypatch.chdir(TEST_DIR)  # the .test configs' files are relative to .test/
    plan = Plan.from_configfile(TEST_DIR / "config-imported/config.yaml", REPO)
    assert plan.measured == ["cpu"] and plan.imported == ["a100-sxm4-40gb"]
    assert [k.name for k in plan.cells()] == ["a100-sxm4-40gb/tiny-llama/bs2", "cpu/tiny-llama/bs1"]
    assert plan.probes() == ["results/test-imported/cells/cpu/tiny-llama/probe.json"]
    assert plan.probes("gpt2") == [] and plan.probes("llama") == plan.probes()
    from tokencarbon.figures.registry import Study

    assert Study(plan).probes(None) == plan.probes()
    # the import job's inputs and params: the platform's files and the model's slice
    assert plan.import_inputs("a100-sxm4-40gb") == {"power_log": "data/imported/smi.csv",
                                                     "timing": "data/imported/timing.csv"}  # fmt: skip
    assert plan.import_params("a100-sxm4-40gb", "tiny-llama")["dtype"] == "float32"


def test_cells_params_carry_serving_only_for_continuous_cells():
    plan = plan_of(tiny_study())
    static = plan.cell_params(CellKey("cpu", "tiny-llama", STATIC, 2))
    continuous = plan.cell_params(CellKey("cpu", "tiny-llama", CONTINUOUS, 2))
    assert list(static) == ["model", "platform", "run"]
    assert continuous["serving"] == {"mode": "continuous", "max_num_seqs": 2, "arrival": "offline",
                                     "request_rate_per_s": None, "seed": 0}  # fmt: skip
    assert static["run"]["repeats"] == 3 and static["model"]["name"] == "tiny-llama"
    assert "repeats" not in plan_of(tiny_study(run={"repeats": 1})).run_params()
    assert plan.table_targets() == [f"results/test-cpu/tables/{t}.parquet" for t in
                                    ("batches", "power", "cells", "metrics", "requests", "steps",
                                     "metrics_repeats")]  # fmt: skip


# --- the DAG's lists against the plan's, every committed config (slow) -------------------------

DAG_LISTS = """
import json, sys
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import ConfigSettings, DAGSettings, OutputSettings, ResourceSettings
with SnakemakeApi(OutputSettings(quiet={"all"})) as api:
    wf = api.workflow(resource_settings=ResourceSettings(cores=1), snakefile=Path("Snakefile"),
                      config_settings=ConfigSettings(configfiles=[Path(sys.argv[1])]),
                      workdir=Path("."))
    wf.dag(dag_settings=DAGSettings(targets={"all"}))
    workflow = wf._workflow
    workflow._prepare_dag(forceall=False, ignore_incomplete=True, lock_warn_only=True)
    workflow._build_dag()
    jobs = {}
    for job in workflow.dag.jobs:
        named = {n: getattr(job.input, n) for n in job.input._names}
        jobs.setdefault(job.rule.name, []).append(
            {"input": {n: [str(f) for f in (v if isinstance(v, list) else [v])] for n, v in named.items()},
             "files": [str(f) for f in job.input], "output": [str(f) for f in job.output],
             "wildcards": dict(job.wildcards_dict), "run": getattr(job.params, "run", None)})
    print("DAG-LISTS " + json.dumps(jobs))
"""

COMMITTED = [f"config/{p.name}" for p in sorted((REPO / "config").glob("*.yaml"))] + [
    f".test/config-{name}/config.yaml" for name in TEST_CONFIGS
]


def dag_lists(project: Project, configfile: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", DAG_LISTS, configfile], cwd=project.path,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("DAG-LISTS "))
    return json.loads(line.removeprefix("DAG-LISTS "))


@pytest.mark.slow
def test_the_dags_cells_repeat_as_their_sweep_position_says(tmp_path):
    # run.repeats_at_ends reaches the cell jobs' params (it once reached only the plan and the chunk
    # runner's estimate, and every cell of the paper configs ran once): a sweep of batch 1, 2, 4
    # and max_num_seqs 2, 4 with 1 repeat and 2 at the ends
    config = tiny_study(models=["tiny-llama"], sweep={"batch_sizes": [1, 2, 4], "max_num_seqs": [2, 4]},
                        run={"repeats": 1, "repeats_at_ends": 2})  # fmt: skip
    project = Project.make(tmp_path / "p", config)
    jobs = dag_lists(project, "config/config.yaml")
    runs = {(rule, int(j["wildcards"]["batch"])): (j["run"] or {}).get("repeats", 1)
            for rule in ("run_cell", "run_continuous_cell") for j in jobs[rule]}  # fmt: skip
    assert runs == {("run_cell", 1): 2, ("run_cell", 2): 1, ("run_cell", 4): 2,
                    ("run_continuous_cell", 2): 2, ("run_continuous_cell", 4): 2}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("configfile", COMMITTED)
def test_the_dags_cells_probes_and_figures_are_the_plans(configfile, tmp_path, monkeypatch):
    project = Project.make(tmp_path / "p")
    shutil.copy(REPO / configfile, project / "study.yaml")
    study = REPO / "benchmarks/results" / Path(configfile).stem
    platforms = yaml.safe_load((REPO / configfile).read_text())["platforms"].values()
    # a GPU study's committed cells, copied in where the config only reads them (gpu_study.sh); a
    # study still measured in chunks (paper-h100) restores its pack through benchmarks/run_chunks.py
    if (study / "cells").is_dir() and all((p or {}).get("import_only") for p in platforms):
        shutil.copytree(study / "cells", project.path / study_root(Path(configfile).stem) / "cells")
    jobs = dag_lists(project, "study.yaml")
    monkeypatch.chdir(project.path)
    plan = Plan.from_configfile("study.yaml", REPO)

    (aggregate,) = jobs["aggregate_cells"]
    code = set(aggregate["input"]["code"])
    inputs = [f for f in aggregate["files"] if f not in code]
    waiting = sorted(f for f in inputs if f.endswith("/probe.json"))
    if plan.pending():
        # the DAG waits for a probe the plan waits for (the checkpoint raises at the first)
        assert waiting and set(waiting) <= {probe_path(p, m, plan.root) for p, m, _ in plan.pending()}
    else:
        assert not waiting
        assert sorted({CellKey.parse(Path(f).parent) for f in inputs}) == sorted(plan.cells())
        assert aggregate["input"]["meta"] == [k.files(plan.root)["meta"] for k in plan.cells()]
    # the probes the tables and the summary read
    for rule, family in [("summarize_headlines", None), ("tabulate_table3", "llama"),
                         ("tabulate_table4", "gpt2")]:  # fmt: skip
        if rule in jobs:
            assert jobs[rule][0]["input"]["probes"] == plan.probes(family), rule
        else:
            assert family is not None and not (plan.probes(family) and plan.models_of(family))
    # every figure, table and summary file `all` builds
    from tokencarbon.figures.registry import ARTIFACTS

    rules = {a.rule for a in ARTIFACTS}
    made = sorted(f for r in rules for j in jobs.get(r, []) for f in j["output"])
    assert made == sorted(plan.figure_targets())
    (everything,) = jobs["all"]
    assert sorted(everything["files"]) == sorted(plan.targets())


def test_a_sweeps_smallest_and_largest_cells_take_repeats_at_ends():
    # Issue 23's grid: 3 repeats at batch 1 and at the largest batch, 1 elsewhere.
    from tokencarbon.plan import cell_repeats

    run = {"repeats": 1, "repeats_at_ends": 3}
    assert [cell_repeats(run, n, [1, 2, 4, 8]) for n in (1, 2, 4, 8)] == [3, 1, 1, 3]
    assert cell_repeats(run, 4, [4]) == 3  # one cell is both ends
    assert cell_repeats({"repeats": 2, "repeats_at_ends": None}, 8, [1, 8]) == 2
    with pytest.raises(ConfigError, match=r"cell size 3 is not in its sweep \[1, 2\]"):
        cell_repeats(run, 3, [2, 1])
    # in a cell's params: its own count, absent where 1 (as cells measured before repeats had)
    plan = plan_of(tiny_study(sweep={"batch_sizes": [1, 2, 4], "max_num_seqs": [2]},
                              run={"repeats": 1, "repeats_at_ends": 3}))  # fmt: skip
    runs = {n: plan.cell_params(CellKey("cpu", "tiny-llama", STATIC, n))["run"] for n in (1, 2, 4)}
    assert (runs[1]["repeats"], "repeats" in runs[2], runs[4]["repeats"]) == (3, False, 3)
    assert plan.cell_params(CellKey("cpu", "tiny-llama", CONTINUOUS, 2))["run"]["repeats"] == 3

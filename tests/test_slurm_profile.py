"""profiles/slurm without a cluster: it parses as Snakemake parses it, names the slurm executor, says
why for every key, and sends each platform's cells to the right GPU. tests/slurm/run.sh runs it on a
real one-node SLURM cluster."""

from __future__ import annotations

import csv
import re
import tomllib
from pathlib import Path
from types import SimpleNamespace

import yaml
from snakemake.cli import parse_set_resources
from snakemake.profiles import ProfileConfigFileParser

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "profiles/slurm/config.yaml"
RUN_SH = REPO / "tests/slurm/run.sh"
# What snakemake-executor-plugin-slurm 2.8.0 accepts as a GPU model (utils.set_gres_string).
GPU_MODEL = re.compile(r"^[a-zA-Z0-9_\.]+$")


def uncommented_keys(text: str) -> list[str]:
    """Mapping keys, at any depth, whose line is not directly below a comment line."""
    lines = text.splitlines()
    return [
        line.strip()
        for before, line in zip([""] + lines, lines)
        if re.match(r"^\s*[\w-]+:", line) and not before.strip().startswith("#")
    ]


def profile_args() -> dict:
    """The profile as Snakemake turns it into command-line arguments."""
    with PROFILE.open() as f:
        return dict(ProfileConfigFileParser().parse(f))


def resources_on(rule: str, platform: str) -> dict:
    """The profile's set-resources of one rule, evaluated by Snakemake for a job on platform."""
    rules = parse_set_resources(profile_args()["set-resources"])
    wildcards = SimpleNamespace(platform=platform, model="tiny-llama", batch="1")
    return {
        name: res.evaluate(wildcards=wildcards, input=None, attempt=1, threads=1, rulename=rule, async_run=None).value
        for name, res in rules[rule].items()
    }


def platforms() -> dict[str, str]:
    """resources/platforms.csv: platform -> kind ("cpu" or "gpu")."""
    with (REPO / "resources/platforms.csv").open() as f:
        return {row["platform"]: row["kind"] for row in csv.DictReader(f)}


def test_uncommented_keys_finds_a_key_without_its_reason():
    text = "# why a\na: 1\nb:\n  # why c\n  c: 2\n  d: 3\n"
    # a and c sit under a comment; b (top level) and d (nested) do not
    assert uncommented_keys(text) == ["b:", "d: 3"]


def test_every_key_says_why():
    assert uncommented_keys(PROFILE.read_text()) == []


def test_profile_names_the_slurm_executor_and_squeue_status():
    args = profile_args()
    assert args["executor"] == "slurm"
    # sacct fails without slurmdbd; squeue works wherever MinJobAge keeps finished jobs listed
    assert args["slurm-status-command"] == "squeue"


def test_profile_repeats_the_default_profile():
    # A workflow profile replaces profiles/default, so its behaviour must be repeated, except the
    # local cap of one GPU at a time, which would serialise a cluster's GPU cells.
    default = yaml.safe_load((REPO / "profiles/default/config.yaml").read_text())
    slurm = yaml.safe_load(PROFILE.read_text())
    assert {k: slurm.get(k) for k in default if k != "resources"} == {
        k: v for k, v in default.items() if k != "resources"
    }
    assert "resources" not in slurm


def rules_on_their_platform() -> set[str]:
    """Rules whose jobs run on their platform's hardware: those taking common.smk's measured_here
    input (the hardware check every measuring job makes: cells, probe, platform measurement; a
    server cell's server_measured_here, defined under an `if` and so indented), and the
    TensorRT-LLM engine build (it compiles for the GPU it runs on)."""
    smk = "".join(p.read_text() for p in (REPO / "workflow/rules").glob("*.smk"))
    blocks = re.split(r"^\s*(?:rule|checkpoint) (\w+):", smk, flags=re.M)[1:]
    on = re.compile(r"measured=(server_)?measured_here\b")
    return {r for r, body in zip(blocks[::2], blocks[1::2]) if on.search(body)} | {"build_trtllm_engine"}


def test_set_resources_name_rules_that_exist():
    # Snakemake ignores set-resources of an unknown rule: a typo would silently drop the GPU request.
    smk = "".join(p.read_text() for p in (REPO / "workflow/rules").glob("*.smk"))
    defined = set(re.findall(r"^\s*(?:rule|checkpoint) (\w+):", smk, flags=re.M))
    named = set(yaml.safe_load(PROFILE.read_text())["set-resources"])
    assert named <= defined, named - defined


def test_every_rule_on_its_platform_gets_the_cells_resources():
    # A rule missing here gets default-resources: no --gpus, so a GPU cell (run_continuous_cell
    # before it was added) would land on a node without its GPU and fail its hardware check.
    on_platform = rules_on_their_platform()
    assert {"run_cell", "run_continuous_cell", "probe_max_batch", "measure_platform"} <= on_platform
    assert set(yaml.safe_load(PROFILE.read_text())["set-resources"]) == on_platform
    for rule in on_platform:
        for platform in platforms():
            assert resources_on(rule, platform) == resources_on("run_cell", platform), (rule, platform)


def test_cpu_cell_is_a_cpu_job():
    res = resources_on("run_cell", "cpu")
    # no GPU, no GPU model, the cluster's default partition ('' = none named)
    assert (res["gpu"], res["gpu_model"], res["slurm_partition"]) == (0, "", "")
    assert (res["cpus_per_task"], res["mem_mb"], res["runtime"]) == (2, 4000, 30)


def test_h100_cell_asks_one_h100_on_the_gpu_partition():
    for rule in ["run_cell", "run_continuous_cell", "probe_max_batch", "build_trtllm_engine"]:
        res = resources_on(rule, "h100-sxm-80gb")
        # the plugin turns gpu=1, gpu_model=h100 into `sbatch --gpus=h100:1`
        assert (res["gpu"], res["gpu_model"], res["slurm_partition"]) == (1, "h100", "gpu"), rule
        assert (res["mem_mb"], res["runtime"]) == (64000, 240), rule


def test_every_platform_is_mapped():
    kinds = platforms()
    assert kinds["cpu"] == "cpu" and kinds["h200-141gb"] == "gpu"
    for platform, kind in kinds.items():
        res = resources_on("run_cell", platform)
        # one GPU exactly on GPU platforms, as the rule's own gpu_count gives it
        assert res["gpu"] == (0 if kind == "cpu" else 1), platform
        if kind == "gpu":
            assert GPU_MODEL.match(res["gpu_model"]), (platform, res["gpu_model"])
    models = [resources_on("run_cell", p)["gpu_model"] for p, k in kinds.items() if k == "gpu"]
    assert len(set(models)) == len(models), "two platforms share a GPU model: cells could land on either"


def test_test_cluster_keeps_jobs_long_enough_for_squeue():
    # The plugin trusts squeue only when MinJobAge >= 3 x the first status wait (plugin 2.8.0).
    text = RUN_SH.read_text()
    min_job_age = int(re.search(r"^MinJobAge=(\d+)$", text, flags=re.M)[1])
    status_s = int(re.search(r"^STATUS_S=(\d+)$", text, flags=re.M)[1])
    assert min_job_age >= 3 * status_s
    assert min_job_age >= 3 * 40  # also at the plugin's default wait of 40 s


def test_run_sh_pins_match_the_slurm_extra():
    pins = re.search(r"^PLUGINS=\((.*)\)$", RUN_SH.read_text(), flags=re.M)[1].split()
    assert pins == ["snakemake-executor-plugin-slurm==2.8.0", "snakemake-executor-plugin-slurm-jobstep==0.6.1"]
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert sorted(extras.get("slurm", [])) == sorted(pins), "pyproject.toml needs the extra: slurm = " + str(pins)

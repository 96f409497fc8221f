"""A study's outputs in its own folder, results/<study>/ (issue 24 item 2; tokencarbon.layout,
tokencarbon.study): the name's rules, the record study.json and what it says of files another
config left, and (slow) two configs run one after the other leaving two complete, unmixed folders.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from harness import REPO, Project, tiny_study

from tokencarbon.config import prepare_config
from tokencarbon.errors import ConfigError
from tokencarbon.layout import DEFAULT_STUDY, in_study, study_name, study_root
from tokencarbon.plan import Plan
from tokencarbon.study import (
    check_study_folder,
    config_digest,
    config_files,
    stale_files,
    study_record,
    write_record,
)

# --- the name and the layout -------------------------------------------------------------------


def test_a_study_is_named_by_its_config_and_lies_in_its_own_folder():
    assert study_name({"study": "my-model_2"}) == "my-model_2"
    assert study_name({}) == DEFAULT_STUDY == "default"
    assert study_root("paper") == "results/paper"
    plan = Plan(prepare_config(tiny_study(study="alpha"), REPO), REPO)
    assert plan.root == "results/alpha"
    assert plan.report_target() == "results/alpha/report.html"
    assert plan.study_record() == "results/alpha/study.json"  # written on success, no target
    # every file `all` makes lies in the folder: none in another study's, none at results/ itself
    assert all(t.startswith("results/alpha/") for t in plan.targets())
    assert "results/alpha/tables/metrics.parquet" in plan.targets()
    assert "results/alpha/summary.md" in plan.targets()


@pytest.mark.parametrize("bad", ["", "a b", "../x", "x/y", ".hidden", "-x", "tables", "cells", 3])
def test_a_study_name_that_is_no_plain_folder_or_is_one_of_the_layout_is_refused(bad):
    with pytest.raises(ConfigError, match=r"config key study: .* letters, digits"):
        study_name({"study": bad})


def test_the_schema_refuses_what_the_layout_refuses(repo):
    from jsonschema import Draft202012Validator

    schema = Draft202012Validator(
        __import__("yaml").safe_load((repo / "workflow/schemas/config.schema.yaml").read_text())
    ).schema["properties"]["study"]
    check = Draft202012Validator(schema)
    for good in ["default", "paper-h200", "a_1"]:
        assert check.is_valid(good), good
    for bad in ["", "a b", "x/y", ".cache", "-x", "tables", "logs"]:
        assert not check.is_valid(bad), bad


def test_in_study_moves_study_relative_names_only():
    root = "results/s"
    assert in_study("results/figures/fig7.png", root) == "results/s/figures/fig7.png"
    assert in_study("results/s/cells/cpu/m/probe.json", root) == "results/s/cells/cpu/m/probe.json"
    assert in_study("data/trace.csv", root) == "data/trace.csv"  # a config's file: not moved
    assert in_study("resources/platforms.csv", root) == "resources/platforms.csv"


def test_every_committed_config_names_its_study_after_its_file(repo):
    import yaml

    for path in sorted((repo / "config").glob("*.yaml")):
        study = yaml.safe_load(path.read_text())["study"]
        assert study == ("default" if path.stem == "config" else path.stem), path


# --- the record and what it says --------------------------------------------------------------


def test_config_digest_is_the_sha256_of_the_canonical_json():
    # by hand: keys sorted, no spaces
    expected = hashlib.sha256(b'{"a":[1,2],"b":{"c":"x"}}').hexdigest()
    assert config_digest({"b": {"c": "x"}, "a": [1, 2]}) == expected


def test_config_files_are_one_file_however_spelled(tmp_path):
    (tmp_path / "config").mkdir()
    spelled = ["config/a.yaml", "./config/a.yaml", str(tmp_path / "config/a.yaml")]
    assert {config_files([p], tmp_path)[0] for p in spelled} == {"config/a.yaml"}


def _folder(tmp_path, files):
    folder = tmp_path / "results/s"
    for f in files:
        (folder / f).parent.mkdir(parents=True, exist_ok=True)
        (folder / f).write_text("x")
    return folder


def test_a_new_folder_or_one_made_by_this_config_says_nothing(tmp_path):
    folder = _folder(tmp_path, ["figures/fig7.png", "summary.md"])
    record = study_record("s", {"k": 1}, ["config/a.yaml"], ["figures/fig7.png", "summary.md"])
    assert check_study_folder(folder / "study.json", record) == []  # no record yet
    write_record(folder / "study.json", record)
    assert check_study_folder(folder / "study.json", record) == []
    assert json.loads((folder / "study.json").read_text())["config_files"] == ["config/a.yaml"]


def test_another_config_file_an_edit_and_left_over_files_are_said(tmp_path):
    folder = _folder(tmp_path, ["figures/fig6b.png", "figures/fig7.png", "tables/cells.parquet"])
    write_record(folder / "study.json",
                 study_record("s", {"k": 1}, ["config/a.yaml"], ["figures/fig6b.png"]))  # fmt: skip
    other = study_record("s", {"k": 2}, ["config/b.yaml"],
                         ["figures/fig7.png", "tables/cells.parquet"])  # fmt: skip
    notes = check_study_folder(folder / "study.json", other)
    assert len(notes) == 2
    assert "made from config/a.yaml, this run reads config/b.yaml" in notes[0]
    assert "1 file(s)" in notes[1] and "figures/fig6b.png" in notes[1]
    edited = study_record("s", {"k": 2}, ["config/a.yaml"], ["figures/fig6b.png"])
    notes = check_study_folder(folder / "study.json", edited)
    assert notes[0].startswith("study 's': config/a.yaml changed since")
    # figures/fig7.png and tables/cells.parquet are no output of the edited config
    assert stale_files(folder, edited["outputs"]) == ["figures/fig7.png", "tables/cells.parquet"]


# --- two configs, one after the other (slow: Snakemake end to end) ----------------------------


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_two_configs_run_one_after_the_other_leave_two_complete_unmixed_folders(tmp_path):
    # the smallest grid that draws every stage: one model, one static cell (batch 1, which the
    # headlines need), one repeat; the two studies differ in their model
    small = dict(workload={"num_prompts": 2}, run={"repeats": 1},
                 sweep={"batch_sizes": [1], "max_num_seqs": []})  # fmt: skip
    alpha = tiny_study(models=["tiny-llama"], study="alpha", **small)
    beta = tiny_study(models=["tiny-gpt2"], study="beta", **small)
    project = Project.make(tmp_path / "p", alpha, copy_code=True)
    b_file = project.write_config("beta.yaml", lambda c: c.clear() or c.update(beta))
    project.run("all")
    project.run("all", "--configfile", b_file)

    results = project.path / "results"
    # two study folders beside the shared caches, nothing else
    assert {p.name for p in results.iterdir()} - {".cache"} == {"alpha", "beta"}
    a, b = _files(results / "alpha"), _files(results / "beta")
    # each folder holds its own cells and nothing of the other's model or cell
    assert {f for f in a if f.startswith("cells/") and f.endswith("meta.json")} == {
        "cells/cpu/tiny-llama/bs1/meta.json"}  # fmt: skip
    assert {f for f in b if f.startswith("cells/") and f.endswith("meta.json")} == {
        "cells/cpu/tiny-gpt2/bs1/meta.json"}  # fmt: skip
    assert not any("tiny-gpt2" in f for f in a) and not any("tiny-llama" in f for f in b)
    # complete: every file `all` makes for each, as its record lists them
    for name, files, model, cfg in [("alpha", a, "tiny-llama", "config/config.yaml"),
                                    ("beta", b, "tiny-gpt2", b_file)]:  # fmt: skip
        record = json.loads((results / name / "study.json").read_text())
        assert record["study"] == name and record["config_files"] == [cfg]
        assert list(record["config"]["models"]) == [model]
        missing = [o for o in record["outputs"] if not (results / name / o).exists()]
        assert missing == [], missing  # export/cells is a folder, the rest files
        assert {"summary.md", "report.html", "tables/metrics.parquet", "export/metrics.csv",
                "figures/fig7_carbon_per_token.png"} <= set(record["outputs"])  # fmt: skip
        summary = (results / name / "summary.md").read_text()
        other = "tiny-gpt2" if model == "tiny-llama" else "tiny-llama"
        assert model in summary and other not in summary
        metrics = (results / name / "export/metrics.csv").read_text()
        assert model in metrics and other not in metrics
    # fig6b is the Llama family's power trace, fig6c GPT-2's: each in its own study only
    assert "figures/fig6b_power_over_time.png" in a and "figures/fig6b_power_over_time.png" not in b
    assert "figures/fig6c_power_over_time.png" in b and "figures/fig6c_power_over_time.png" not in a
    # the second run left the first untouched: nothing of alpha is to be redone
    assert "Nothing to be done" in project.output("all", "--dry-run")
    # a copy of beta's file that keeps alpha's name: said before any job, with alpha's left-overs
    gamma = project.write_config("gamma.yaml", lambda c: c.clear() or c.update(beta, study="alpha"))
    out = project.output("all", "--dry-run", "--configfile", gamma)
    assert "made from config/config.yaml, this run reads config/gamma.yaml" in out
    assert "figures/fig6b_power_over_time.png" in out  # alpha's, no output of gamma
    # a dry run writes no record: alpha's still names the file that made it
    record = json.loads((results / "alpha/study.json").read_text())
    assert record["config_files"] == ["config/config.yaml"]


def test_tokencarbon_run_points_at_the_study_folder_of_its_config(tmp_path):
    from tokencarbon.cli import study_folder

    (tmp_path / "config").mkdir()
    (tmp_path / "config/config.yaml").write_text("study: default\nseed: 0\n")
    (tmp_path / "config/mine.yaml").write_text("study: mine\n")
    (tmp_path / "config/unnamed.yaml").write_text("seed: 1\n")
    assert study_folder(tmp_path, ["all"]) == tmp_path / "results/default"
    assert study_folder(tmp_path, ["--configfile", "config/mine.yaml"]) == tmp_path / "results/mine"
    unnamed = ["--configfile=config/unnamed.yaml"]
    assert study_folder(tmp_path, unnamed) == tmp_path / "results/default"
    over = ["--configfile", "config/mine.yaml", "--config", "seed=2", "study=other"]
    assert study_folder(tmp_path, over) == tmp_path / "results/other"
    with pytest.raises(ConfigError, match="config key study"):
        study_folder(tmp_path, ["--config", "study=../x"])

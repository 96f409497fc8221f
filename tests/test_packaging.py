"""The two-command set-up stays true: pins, environment.yml in step with pyproject.toml, layout."""

import os
import re
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[ ]", req, maxsplit=1)[0].lower()


def test_environment_yml_lists_the_same_dependencies_as_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["dev"]
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    listed = [r for r in pip if not r.startswith("-e")]
    assert sorted(listed) == sorted(wanted)  # same names AND same version specifiers


def test_torch_is_capped_at_2_14_1():
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    torch = next(d for d in deps if _name(d) == "torch")
    assert "<=2.14.1" in torch


def test_snakefile_holds_only_the_top_level():
    text = (REPO / "Snakefile").read_text()
    rules = re.findall(r"^(?:rule|checkpoint) (\w+):", text, flags=re.M)
    assert rules == ["all"]
    for needed in ["min_version(", "configfile:", "report:", "include:", "default_target: True"]:
        assert needed in text


def readme_quick_start_command(word: str) -> list[str]:
    """The quick-start command of README.md whose second word is `word` (`make test`), as argv."""
    text = (REPO / "README.md").read_text()
    quick = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = [line.split("#", 1)[0].split() for line in quick.splitlines() if line.startswith("    ")]
    found = [c for c in commands if len(c) > 1 and c[1] == word]
    assert len(found) == 1, f"README.md quick start: one `{word}` command expected, got {found}"
    return found[0]


# A stand-in for make on PATH: records where and how .ci/run called it (the real `make test` is
# the whole suite, this test among it). Fields: cwd, CI (or "unset"), HEAD there, ../shared exists.
MAKE_RECORDER = """#!/usr/bin/env bash
printf '%s\\t%s\\t%s\\t%s\\t%s\\n' "$PWD" "${CI-unset}" "$(git rev-parse HEAD 2>/dev/null)" \\
  "$([ -e ../shared ] && echo yes || echo no)" "$*" >> "$MAKE_RECORD"
"""


def test_ci_runs_the_readme_test_command(tmp_path):
    # The contract (.ci/run's header): README's test command in this checkout with CI=true (the
    # shared-data tests are required), then in a fresh `git clone` of it with CI unset and no
    # shared/ beside it (what a user gets). .ci/run runs for real, with make recorded, not run.
    if not (REPO / ".git").exists():
        pytest.skip(f"{REPO} is not a git checkout (an unpacked archive): .ci/run clones it")
    test_command = readme_quick_start_command("test")
    assert readme_quick_start_command("run")[0] == test_command[0]  # both through one tool
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    recorder = bin_dir / test_command[0]
    recorder.write_text(MAKE_RECORDER)
    recorder.chmod(0o755)
    record = tmp_path / "calls.tsv"
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", MAKE_RECORD=str(record), TMPDIR=str(tmp_path))
    proc = subprocess.run(["bash", str(REPO / ".ci/run")], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    calls = [line.split("\t") for line in record.read_text().splitlines()]
    wanted = " ".join(test_command[1:])
    here = [c for c in calls if c[4] == wanted and Path(c[0]) == REPO]
    assert [c[1] for c in here] == ["true"], calls
    clone = [c for c in calls if c[4] == wanted and Path(c[0]) != REPO]
    assert len(clone) == 1, calls
    cwd, ci, clone_head, shared_beside, _ = clone[0]
    assert Path(cwd).is_relative_to(tmp_path)  # a fresh folder (TMPDIR), removed afterwards
    assert (ci, clone_head, shared_beside) == ("unset", head, "no")
    assert not Path(cwd).exists()


def test_rules_are_verb_noun_and_each_has_a_log():
    for smk in (REPO / "workflow/rules").glob("*.smk"):
        text = smk.read_text()
        for block in re.split(r"^(?=rule |checkpoint )", text, flags=re.M)[1:]:
            name = re.match(r"(?:rule|checkpoint) (\w+):", block).group(1)
            assert "_" in name, f"{smk.name}: rule {name} is not verb_noun"
            assert re.search(r"^    log:", block, flags=re.M), f"{smk.name}: rule {name} has no log"
            assert "lambda" not in block, f"{smk.name}: rule {name} uses a lambda (use common.smk)"


def test_rule_conda_env_lists_the_same_dependencies():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["dev"]
    env = yaml.safe_load((REPO / "workflow/envs/tokencarbon.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert sorted(r for r in pip if not r.startswith("-e")) == sorted(wanted)


def test_snakemake_lint_and_snakefmt_are_clean():
    import subprocess
    import sys

    lint = subprocess.run([sys.executable, "-m", "snakemake", "--lint"], cwd=REPO, capture_output=True, text=True)
    assert lint.returncode == 0 and "Congratulations" in lint.stdout + lint.stderr, lint.stdout[-2000:]
    fmt = subprocess.run(
        [str(Path(sys.executable).with_name("snakefmt")), "--check", "Snakefile", "workflow/rules"],
        cwd=REPO, capture_output=True, text=True,
    )
    assert fmt.returncode == 0, fmt.stderr[-2000:]

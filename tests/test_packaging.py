"""The two-command set-up stays true: pins, environment.yml in step with pyproject.toml, layout."""

import re
import tomllib
from pathlib import Path

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


def test_ci_runs_the_readme_test_command():
    assert "make test" in (REPO / "README.md").read_text()
    assert "make run" in (REPO / "README.md").read_text()
    # .ci/run runs it with environment settings in front (CI=true: shared-data tests required).
    assert re.search(r"^(?:\w+=\S+ )*make test$", (REPO / ".ci/run").read_text(), flags=re.M)


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

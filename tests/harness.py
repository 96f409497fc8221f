"""The one Snakemake project harness of the tests, and the tiny CPU study defined once.

A Project is a working copy of the workflow in a temporary folder: Snakefile, workflow/, resources/
and profiles/ linked to this checkout (or copied, where a test edits code or must not replan when
the checkout is edited), .test/data linked as data/ (the .test configs' files), and a config written
as config/config.yaml. The tiny CPU study is .test/config-cpu/config.yaml (what CI runs, as
snakemake-workflows run their .test configs); tiny_study(...) is it with changes merged in.

Every output of a study lies in its folder, results/<study>/ (tokencarbon.layout; the config's
`study`, .test/config-cpu's `test-cpu`). Tests spell a study's file as results/<rel>, as the
figure registry does: `project / "results/tables/cells.parquet"`, a target "results/figures/x.png"
given to run() and a planned_outputs pattern "results/cells/..." all mean the file in the project's
study folder (Project.results: results/<study>/<rel>), and "logs/<rel>" its log,
results/<study>/logs/<rel>. results/.cache (shared by every study) is not moved; a test of the
layout itself names paths through project.path.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
TEST_DIR = REPO / ".test"
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
WORKFLOW = ("Snakefile", "workflow", "resources", "profiles")
# The .test configs (each .test/config-<name>/config.yaml; their files under .test/data/).
TEST_CONFIGS = sorted(p.parent.name.removeprefix("config-") for p in TEST_DIR.glob("config-*/config.yaml"))


def study_config(name: str = "cpu") -> dict[str, Any]:
    """The config of .test/config-<name>/config.yaml, as a fresh dict."""
    return yaml.safe_load((TEST_DIR / f"config-{name}" / "config.yaml").read_text())


def merged(base: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """base with changes merged in, mapping by mapping; a value None removes its key."""
    out = copy.deepcopy(dict(base))
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def tiny_study(**changes: Any) -> dict[str, Any]:
    """The tiny CPU study (.test/config-cpu) with `changes` merged in (merged(); models=[names]
    keeps only those models)."""
    config = study_config("cpu")
    models = changes.pop("models", None)
    if isinstance(models, list | tuple):
        config["models"] = {m: config["models"][m] for m in models}
    elif models is not None:
        changes["models"] = models
    return merged(config, changes)


class Project:
    """A working copy of the workflow (see the module docstring) at `path`."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def __truediv__(self, other: str | Path) -> Path:
        """The project's path of `other`, a study's file spelled results/<rel> or logs/<rel>
        placed in its study folder (see the module docstring)."""
        return self.path / self.in_study(other)

    @property
    def study(self) -> str:
        """The study of config/config.yaml (its `study`, else the default's name)."""
        from tokencarbon.layout import study_name

        return study_name(yaml.safe_load((self.path / "config/config.yaml").read_text()) or {})

    @property
    def results(self) -> Path:
        """The study's folder, results/<study>/."""
        from tokencarbon.layout import study_root

        return self.path / study_root(self.study)

    def in_study(self, rel: str | Path) -> str:
        """`rel` relative to the project with results/<rel> and logs/<rel> moved into the study's
        folder (tokencarbon.layout.in_study); results/.cache and other paths as they are."""
        from tokencarbon.layout import CACHE, in_study, study_root

        text = Path(rel).as_posix()
        root = study_root(self.study)
        if text == "results":
            return root
        if text == "logs" or text.startswith("logs/"):
            return f"{root}/{text}"
        if text == CACHE or text.startswith(f"{CACHE}/"):
            return text
        return in_study(text, root)

    def __fspath__(self) -> str:
        return str(self.path)

    @classmethod
    def make(cls, path: Path, config: Mapping[str, Any] | str | None = None, *,
             copy_code: bool = False) -> Project:  # fmt: skip
        """A project at `path` (created): the workflow linked (copy_code: Snakefile and workflow/
        copied, so that jobs run this copy's package and an edit of the checkout replans nothing),
        data/ linked to .test/data, config/config.yaml from `config` (a dict, YAML text, or None:
        the embedded default config/config.yaml)."""
        path.mkdir(parents=True, exist_ok=True)
        for name in WORKFLOW:
            if copy_code and name in ("Snakefile", "workflow"):
                if name == "Snakefile":
                    shutil.copy(REPO / name, path / name)
                else:
                    shutil.copytree(REPO / name, path / name,
                                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
            else:
                (path / name).symlink_to(REPO / name)
        (path / "data").symlink_to(TEST_DIR / "data")
        (path / "config").mkdir()
        if config is None:
            text = (REPO / "config/config.yaml").read_text()
        elif isinstance(config, str):
            text = config
        else:
            text = yaml.safe_dump(dict(config))
        (path / "config/config.yaml").write_text(text)
        return cls(path)

    def run(self, *args: str, cores: int = 2, timeout: int = 900, env: Mapping[str, str] | None = None,
            check: bool = True) -> subprocess.CompletedProcess:  # fmt: skip
        """snakemake --cores N ARGS here; asserts success (with the output's tail) unless not
        check."""
        args = [self.in_study(a) if a.startswith(("results/", "logs/")) else a for a in args]
        proc = subprocess.run(SNAKEMAKE + ["--cores", str(cores), *args], cwd=self.path,
                              env=None if env is None else dict(env), capture_output=True,
                              text=True, timeout=timeout)  # fmt: skip
        if check:
            assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc

    def output(self, *args: str, **kw: Any) -> str:
        """stdout and stderr of a successful run()."""
        proc = self.run(*args, **kw)
        return proc.stdout + proc.stderr

    def planned_jobs(self, *args: str) -> dict[str, int]:
        """Jobs a dry run plans, by rule (Snakemake's 'Job stats' table)."""
        text = self.output("--dry-run", *args)
        if "Nothing to be done" in text:
            return {}
        table = text.split("Job stats:", 1)[1].split("Reasons:", 1)[0]
        return {m[0]: int(m[1]) for m in re.findall(r"^(\w+)\s+(\d+)$", table, flags=re.M)
                if m[0] != "total"}  # fmt: skip

    def planned_outputs(self, pattern: str, *args: str) -> set[str]:
        """The `pattern` group of every job output a dry run plans; a pattern starting results/
        matches in the study's folder."""
        if pattern.startswith("results/"):
            pattern = re.escape(f"{self.in_study('results')}/") + pattern.removeprefix("results/")
        elif pattern.startswith("(results/"):
            prefix = re.escape(f"{self.in_study('results')}/")
            pattern = f"({prefix}" + pattern.removeprefix("(results/")
        return set(re.findall(r"output: " + pattern, self.output("--dry-run", *args)))

    def write_config(self, name: str, edit: Callable[[dict], Any]) -> str:
        """A variant of the project's config: `edit` changes a copy, written to config/<name>;
        returns its path for --configfile."""
        config = yaml.safe_load((self.path / "config/config.yaml").read_text())
        edit(config)
        (self.path / "config" / name).write_text(yaml.safe_dump(config))
        return f"config/{name}"

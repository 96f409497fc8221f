"""Code inputs derived from imports (tokencarbon/codedeps.py, common.smk: code_inputs): the walk on a
package built by hand, and, through Snakemake, that editing any package module replans exactly the
rules whose scripts import it (the expected set found independently, by the stdlib's modulefinder,
which reads bytecode rather than the source's syntax tree)."""

from __future__ import annotations

import json
import modulefinder
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from harness import Project, tiny_study

from tokencarbon.codedeps import package_modules

REPO = Path(__file__).resolve().parents[1]


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def test_walk_follows_every_import_form_and_nothing_else(tmp_path):
    root = tmp_path / "pkgroot"
    _write(root, {
        "tokencarbon/__init__.py": "",
        "tokencarbon/a.py": "from tokencarbon.b import VALUE\n",          # from-import of a name
        "tokencarbon/b.py": "VALUE = 1\n",
        "tokencarbon/c.py": "def f():\n    import tokencarbon.sub.d\n",   # lazy, dotted
        "tokencarbon/sub/__init__.py": "from . import e\n",              # relative, a submodule
        "tokencarbon/sub/d.py": "from ..b import VALUE\n",               # relative, two levels up
        "tokencarbon/sub/e.py": "",
        "tokencarbon/unused.py": "import tokencarbon.b\n",               # imported by nobody
        "scripts/run.py": "import os\nfrom tokencarbon import a, c\n",
    })  # fmt: skip
    found = {p.relative_to(root).as_posix() for p in package_modules(root / "scripts/run.py", root)}
    # By hand: run.py -> tokencarbon/__init__, a (a submodule named in a from-import), c;
    # a -> b; c -> sub/__init__ (a package above d), sub/d; sub/__init__ -> sub/e; d -> b.
    # os is outside the package, unused.py is imported by no one.
    assert found == {
        "tokencarbon/__init__.py", "tokencarbon/a.py", "tokencarbon/b.py", "tokencarbon/c.py",
        "tokencarbon/sub/__init__.py", "tokencarbon/sub/d.py", "tokencarbon/sub/e.py",
    }  # fmt: skip


def test_lazy_attributes_of_a_package_count_only_where_asked_for(tmp_path):
    _write(tmp_path, {
        "tokencarbon/__init__.py": "def __getattr__(name):\n    import tokencarbon.heavy\n    return 1\n",
        "tokencarbon/heavy.py": "",
        "tokencarbon/light.py": "",
        "plain.py": "import tokencarbon.light\n",
        "asks.py": "from tokencarbon import measure\n",
    })  # fmt: skip
    # PEP 562: __getattr__ runs only for a name the package does not define, so `plain` never
    # runs heavy.py; `asks` asks the package for a name that is no submodule, so it may.
    def rel(script):
        return {p.relative_to(tmp_path).as_posix() for p in package_modules(tmp_path / script, tmp_path)}

    assert rel("plain.py") == {"tokencarbon/__init__.py", "tokencarbon/light.py"}
    assert rel("asks.py") == {"tokencarbon/__init__.py", "tokencarbon/heavy.py"}


def test_walk_keeps_the_callers_spelling_of_a_symlinked_root(tmp_path):
    real = tmp_path / "real"
    _write(real, {"tokencarbon/__init__.py": "", "s.py": "import tokencarbon\n"})
    (tmp_path / "link").symlink_to(real)
    assert package_modules(tmp_path / "link/s.py", tmp_path / "link") == [
        tmp_path / "link/tokencarbon/__init__.py"
    ]


def test_a_relative_import_leaving_the_package_is_refused_naming_the_line(tmp_path):
    _write(tmp_path, {"tokencarbon/__init__.py": "", "tokencarbon/x.py": "\nfrom ... import y\n",
                      "s.py": "import tokencarbon.x\n"})  # fmt: skip
    with pytest.raises(ImportError, match=r"x.py line 2: relative import outside the package"):
        package_modules(tmp_path / "s.py", tmp_path)


class _PackageOnlyFinder(modulefinder.ModuleFinder):
    """The stdlib's bytecode scanner, kept inside tokencarbon (it would otherwise walk torch), and
    out of a module-level __getattr__ (PEP 562: it runs only for names asked of the package; no
    workflow script asks tokencarbon for one)."""

    def scan_code(self, co, m):
        if co.co_qualname != "__getattr__":
            super().scan_code(co, m)

    def find_module(self, name, path, parent=None):
        # path None: a top-level search (anything else searches inside a package already found)
        if path is None and parent is None and name != "tokencarbon":
            raise ImportError(name)
        return super().find_module(name, path, parent)


def imported_by(script: Path, root: Path) -> set[str]:
    """Package files `script` imports, by modulefinder (bytecode IMPORT_NAME, nested code too)."""
    finder = _PackageOnlyFinder(path=[str(root)])
    finder.run_script(str(script))
    pkg = root / "tokencarbon"
    files = {Path(m.__file__) for m in finder.modules.values() if m.__file__}
    return {  # a package's __file__ is its folder here; its __init__.py is what runs
        (f / "__init__.py" if f.is_dir() else f).relative_to(root).as_posix()
        for f in files
        if f.is_relative_to(pkg)
    }


def test_modulefinder_and_the_ast_walk_agree_on_every_script():
    # The independent oracle the DAG test relies on, checked on the real scripts first.
    root = REPO / "workflow"
    for script in sorted((root / "scripts").glob("*.py")):
        walked = {p.relative_to(root).as_posix() for p in package_modules(script, root)}
        assert walked == imported_by(script, root), script.name
        assert "tokencarbon/__init__.py" in walked  # every script imports the package


# --- through Snakemake -------------------------------------------------------------------------

# The tiny CPU study (.test/config-cpu), made smaller: two models, 2 prompts, batch 1 alone.
TINY = tiny_study(models=["tiny-gpt2", "tiny-llama"], workload={"num_prompts": 2},
                  sweep={"batch_sizes": [1], "max_batch": 2, "max_num_seqs": []},
                  power={"idle_s": 0.1}, run={"repeats": 1})  # fmt: skip


RULE_SCRIPTS = """
import json
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import OutputSettings, ResourceSettings
with SnakemakeApi(OutputSettings(quiet={"all"})) as api:
    wf = api.workflow(resource_settings=ResourceSettings(cores=1), snakefile=Path("Snakefile"), workdir=Path("."))
    print(json.dumps({r.name: Path(r.script).stem for r in wf._workflow.rules if r.script}))
"""


def rule_scripts(project: Path) -> dict[str, str]:
    """rule name -> script name, as Snakemake parsed the workflow (rules made in loops included)."""
    proc = subprocess.run([sys.executable, "-c", RULE_SCRIPTS], cwd=project, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def dry_run(project: Path, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--dry-run", "--cores", "1", *args, "all"],
        cwd=project, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def planned(out: str) -> tuple[set[str], set[str]]:
    """(rules with a planned job, rules planned because an input file of theirs is newer)."""
    if "Nothing to be done" in out:
        return set(), set()
    table = out.split("Job stats:", 1)[1].split("Reasons:", 1)[0]
    rules = {r for r in re.findall(r"^(\w+)\s+\d+$", table, flags=re.M) if r != "total"}
    updated = re.search(r"^\s+updated input files:\n\s+(.+)$", out.split("\nReasons:", 1)[1], flags=re.M)
    return rules, set(updated.group(1).split(", ")) if updated else set()


def downstream(edges: set[tuple[str, str]], rules: set[str]) -> set[str]:
    out, todo = set(), list(rules)
    while todo:
        r = todo.pop()
        for a, b in edges:
            if a == r and b not in out:
                out.add(b)
                todo.append(b)
    return out


@pytest.mark.slow
def test_editing_any_package_module_replans_exactly_the_rules_importing_it(tmp_path):
    project = copied_project(tmp_path, TINY)
    # A finished run, as far as Snakemake's mtime trigger sees one: every output of `all` present,
    # then `--touch` stamps them in DAG order (no job runs: what is tested is the DAG, and a real
    # run would tie this test to every stage's code working).
    outputs = re.findall(r"^\s+output: (.+)$", dry_run(project, "--forceall"), flags=re.M)
    for path in (project / f for line in outputs for f in line.split(", ")):
        if path.suffix:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
        else:  # the tokenizer, a directory() output
            path.mkdir(parents=True, exist_ok=True)
    touch = subprocess.run([sys.executable, "-m", "snakemake", "--touch", "--cores", "1", "all"],
                           cwd=project, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert touch.returncode == 0, touch.stderr[-3000:]
    assert planned(dry_run(project)) == (set(), set())

    root = project / "workflow"
    scripts = rule_scripts(project)
    graph = subprocess.run([sys.executable, "-m", "snakemake", "--rulegraph", "--cores", "1", "all"],
                           cwd=project, capture_output=True, text=True, timeout=300).stdout  # fmt: skip
    names = dict(re.findall(r'^\s*(\d+)\[label = "(\w+)"', graph, flags=re.M))
    edges = {(names[a], names[b]) for a, b in re.findall(r"^\s*(\d+) -> (\d+)$", graph, flags=re.M)}
    in_dag = set(names.values())
    # every stage of `all` is exercised (the TensorRT-LLM engine rule is not in this DAG)
    assert {"run_cell", "probe_max_batch", "compute_metrics", "plot_fig1", "summarize_headlines",
            "train_tokenizer", "aggregate_cells", "build_torch_engine"} <= in_dag  # fmt: skip
    importers = {s: imported_by(root / "scripts" / f"{s}.py", root) for s in set(scripts.values())}
    modules = sorted(p.relative_to(root).as_posix() for p in (root / "tokencarbon").rglob("*.py"))
    assert len(modules) > 25
    wrong = {}
    for module in modules:
        path = root / module
        before, stat = path.read_bytes(), path.stat()
        path.write_bytes(before + b"\n# edited by test_code_inputs\n")
        try:
            rules, updated = planned(dry_run(project))
        finally:
            path.write_bytes(before)
            os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        direct = {r for r in in_dag & set(scripts) if module in importers[scripts[r]]}
        # A job below another replanned job is reported with that reason, not its own.
        unmasked = direct - downstream(edges, direct)
        expected = direct | downstream(edges, direct)
        if (rules, updated) != (expected, unmasked):
            wrong[module] = {"planned": (sorted(rules ^ expected)), "updated": sorted(updated ^ unmasked)}
    assert not wrong, f"rules planned or updated unlike the imports (symmetric differences): {wrong}"


def copied_project(tmp_path: Path, config: dict) -> Path:
    """A second checkout: Snakefile and workflow/ copied (the venv's editable install points at
    the repository's), resources/ and profiles/ linked."""
    return Project.make(tmp_path / "p", config, copy_code=True).path


@pytest.mark.slow
def test_jobs_run_the_package_of_the_workflow_they_belong_to(tmp_path):
    # One venv for several checkouts: its editable install is this repository's, yet a job of the
    # copy must run the copy's code (else its code inputs would track files the job never ran).
    project = copied_project(tmp_path, TINY)
    marker = tmp_path / "imported_from.txt"
    init = project / "workflow/tokencarbon/__init__.py"
    # each process importing the package notes its script and where the package came from
    init.write_text(init.read_text() + "\nimport sys\n"
                    f"with open({str(marker)!r}, 'a') as f:\n    print(sys.argv[0], __file__, file=f)\n")
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1",
                           Project(project).in_study("results/dataset/synthetic_sharegpt.json")],
                          cwd=project, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = [line.split() for line in marker.read_text().splitlines() if ".snakemake/scripts/" in line]
    assert [file for _, file in jobs] == [str(init)]  # one job, which ran the copy's package


@pytest.mark.slow
def test_an_architecture_file_of_the_checkout_is_found_by_its_jobs(tmp_path):
    # issue 11: a hand-written resources/models/<name>.json inside a checkout was accepted by the
    # DAG and not found by the jobs, which read resources/ of the venv's install.
    config = dict(TINY, models={"mine": {"architecture": "my-arch", "family": "tiny", "dtype": "float32"}})
    project = copied_project(tmp_path, config)
    (project / "resources").unlink()
    shutil.copytree(REPO / "resources", project / "resources")
    arch = json.loads((REPO / "resources/models/tiny-llama.json").read_text())
    arch.update(name="my-arch", num_layers=3)
    (project / "resources/models/my-arch.json").write_text(json.dumps(arch))
    assert not (REPO / "resources/models/my-arch.json").exists()
    target = Project(project).in_study("results/engines/cpu/mine/torch/manifest.json")
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1", target], cwd=project,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((project / target).read_text())
    assert manifest["architecture"]["name"] == "my-arch" and manifest["architecture"]["num_layers"] == 3

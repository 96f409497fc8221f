"""Every committed record reads back to the same tables, before and after a change (issue 20).

    python tests/readback.py build TREE OUT [STUDY ...]   # gpu_study.sh's steps on TREE's committed
                                                          # files, outputs to OUT/<study>/
    python tests/readback.py cells TREE OUT CELLS         # a folder of cells (results/<study>/cells of a
                                                          # finished CPU run) aggregated, metrics,
                                                          # figures and export, as import_only
    python tests/readback.py compare BEFORE AFTER         # file by file: bytes, else values

`build` runs benchmarks/gpu_study.sh's steps (a clean copy of TREE's tracked files, the study's
committed cells under the study's folder, `snakemake all --configfile config/<study>.yaml`) with the
snakemake beside this Python, and keeps every table, the summary, the figures and the export.
`compare` says for each file of BEFORE whether AFTER has it byte for byte, or, for a Parquet table
whose bytes differ, value for value (pandas.testing.assert_frame_equal, exact), and exits 1 on any
difference. A script, not a test: it needs two trees, and minutes per study.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import yaml

SNAKEMAKE = [sys.executable, "-m", "snakemake"]
STUDIES = ("gpu-study", "gpu-large-batch")


def _copy_tree(tree: Path, work: Path) -> None:
    """TREE's tracked files (git ls-files) into work/, as gpu_study.sh copies them."""
    files = subprocess.run(["git", "-C", str(tree), "ls-files", "-z"], check=True,
                           capture_output=True).stdout.decode().split("\0")  # fmt: skip
    for name in filter(None, files):
        src = tree / name
        if src.is_file():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, work / name)


def _run(work: Path, configfile: str) -> None:
    env = {"PYTHONPATH": str(work / "workflow")}
    import os

    proc = subprocess.run(SNAKEMAKE + ["--cores", "2", "all", "--configfile", configfile, "--quiet",
                                       "rules"], cwd=work, env=os.environ | env)  # fmt: skip
    if proc.returncode:
        raise SystemExit(f"snakemake failed in {work} ({configfile})")


def _folder(work: Path, configfile: str) -> Path:
    """The study's folder in work: results/<study>/ (`study` the config's, else "default") where
    work's layout has study folders (since issue 24), else results/ (a tree from before them)."""
    if "def study_root" not in (work / "workflow/tokencarbon/layout.py").read_text():
        return work / "results"
    study = (yaml.safe_load((work / configfile).read_text()) or {}).get("study", "default")
    return work / "results" / study


def _keep(folder: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for pattern in ("tables/*", "summary.md", "figures/*.png"):
        for f in folder.glob(pattern):
            shutil.copy2(f, out / f.name)
    shutil.copytree(folder / "export", out / "export")


def build(tree: Path, out: Path, studies: list[str]) -> None:
    for study in studies or STUDIES:
        with tempfile.TemporaryDirectory(prefix="readback-") as tmp:
            work = Path(tmp)
            _copy_tree(tree, work)
            folder = _folder(work, f"config/{study}.yaml")
            shutil.copytree(tree / "benchmarks/results" / study / "cells", folder / "cells")
            _run(work, f"config/{study}.yaml")
            _keep(folder, out / study)


def cells(tree: Path, out: Path, cells_dir: Path) -> None:
    """A finished CPU run's cells (and its measured peaks, <study folder>/platforms) through
    aggregation, metrics, figures and export: its config with every platform import_only, measure
    dropped."""
    # <run>/results/<study>/cells, or <run>/results/cells before study folders
    run = next(p for p in cells_dir.parents if (p / "config/config.yaml").is_file())
    config = yaml.safe_load((run / "config/config.yaml").read_text())
    for spec in config["platforms"].values():
        spec["import_only"] = True
        (spec.get("spec") or {}).pop("measure", None)
    with tempfile.TemporaryDirectory(prefix="readback-") as tmp:
        work = Path(tmp)
        _copy_tree(tree, work)
        (work / "config/readback.yaml").write_text(yaml.safe_dump(config))
        folder = _folder(work, "config/readback.yaml")
        shutil.copytree(cells_dir, folder / "cells")
        if (cells_dir.parent / "platforms").is_dir():
            shutil.copytree(cells_dir.parent / "platforms", folder / "platforms")
        _run(work, "config/readback.yaml")
        _keep(folder, out / "cells")


def compare(before: Path, after: Path) -> int:
    differ = 0
    for a in sorted(p for p in before.rglob("*") if p.is_file()):
        rel = a.relative_to(before)
        b = after / rel
        if not b.is_file():
            print(f"MISSING  {rel}")
            differ += 1
        elif a.read_bytes() == b.read_bytes():
            print(f"bytes    {rel}")
        elif a.suffix == ".parquet":
            try:
                pd.testing.assert_frame_equal(pd.read_parquet(a), pd.read_parquet(b), check_exact=True)
                print(f"values   {rel}")
            except AssertionError as exc:
                print(f"DIFFERS  {rel}: {str(exc).splitlines()[:6]}")
                differ += 1
        else:
            print(f"DIFFERS  {rel}")
            differ += 1
    extra = sorted(p.relative_to(after) for p in after.rglob("*") if p.is_file()
                   and not (before / p.relative_to(after)).is_file())  # fmt: skip
    for rel in extra:
        print(f"NEW      {rel}")
    print(f"{differ} of the files differ" if differ else "every file equal")
    return 1 if differ else 0


if __name__ == "__main__":
    what, *args = sys.argv[1:]
    if what == "build":
        build(Path(args[0]).resolve(), Path(args[1]).resolve(), args[2:])
    elif what == "cells":
        cells(Path(args[0]).resolve(), Path(args[1]).resolve(), Path(args[2]).resolve())
    elif what == "compare":
        raise SystemExit(compare(Path(args[0]), Path(args[1])))
    else:
        raise SystemExit(__doc__)

"""Shared fixtures: the repository root and the real data files in ../shared/data.

The real files (ShareGPT JSON, nvidia-smi logs, Electricity Maps traces) lie beside the checkout,
never inside it. A user's clone usually has no ../shared: the tests that read it skip and say why.
Under CI (environment CI=true, as GitHub Actions and GitLab set it) they are required: a missing
../shared/data fails them, so CI can never pass by skipping them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
CI_ENV = "CI"
_TRUE = {"1", "true", "yes", "on"}


def ci_requires_shared_data(environ: Mapping[str, str]) -> bool:
    """True where environ says this is CI: CI set to 1/true/yes/on (any case)."""
    return environ.get(CI_ENV, "").strip().lower() in _TRUE


def locate_shared_data(path: Path = SHARED_DATA, environ: Mapping[str, str] = os.environ) -> Path:
    """`path` if it is a folder; otherwise fail the calling test under CI, skip it elsewhere.

    Raises pytest's Failed (CI) or Skipped (not CI) outcome, each naming the folder and the other
    case, so a skip on a user's machine and a failure on CI both say what to do.
    """
    if path.is_dir():
        return path
    if ci_requires_shared_data(environ):
        pytest.fail(
            f"{path} is missing and {CI_ENV}={environ[CI_ENV]!r}: under CI the tests that read real "
            f"files from ../shared/data are required; put the shared/ folder beside the clone"
        )
    pytest.skip(
        f"{path} is missing: this test reads real files from ../shared/data (ShareGPT, "
        f"nvidia-smi logs, Electricity Maps traces) beside the clone; CI ({CI_ENV}=true) requires them"
    )


@pytest.fixture(scope="session", autouse=True)
def _own_lease_dir(tmp_path_factory):
    """Device leases of this test session (and the Snakemake runs it starts, which inherit the
    environment) in a folder of their own: cells of concurrent test sessions on one machine, or a
    real study running beside the tests, then neither wait for nor block each other. Tests of
    leasing itself pass their own lock directories."""
    from tokencarbon.lease import LEASE_DIR_ENV

    previous = os.environ.get(LEASE_DIR_ENV)
    os.environ[LEASE_DIR_ENV] = str(tmp_path_factory.mktemp("leases"))
    yield
    if previous is None:
        os.environ.pop(LEASE_DIR_ENV, None)
    else:
        os.environ[LEASE_DIR_ENV] = previous


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return locate_shared_data()


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """The tiny CPU study (.test/config-cpu: tests/harness.py) run through Snakemake once per test
    session: `all`, every table, figure and the export (slow: minutes on 2 cores). Tests read it,
    dry-run variants of its config and build reports in it; none changes its results. Its code is
    a copy: a module edited in the checkout while the tests run would (rightly) replan the jobs
    importing it."""
    from harness import Project, tiny_study

    project = Project.make(tmp_path_factory.mktemp("tiny-run") / "p", tiny_study(), copy_code=True)
    project.run("all", timeout=1800)
    return project

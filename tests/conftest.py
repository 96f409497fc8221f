"""Shared fixtures: the repository root and the real data files in ../shared/data."""

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def shared_data() -> Path:
    # CI clones main into a folder with a copy of shared/ beside it, as on a developer's machine.
    if not SHARED_DATA.is_dir():
        pytest.fail(f"{SHARED_DATA} is missing: tests read real files from ../shared/data")
    return SHARED_DATA

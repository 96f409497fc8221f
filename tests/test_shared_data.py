"""The shared_data fixture: skips with a reason on a user's clone, fails under CI, returns the folder
where it exists. Checked on the function and on a real pytest session in a folder with no
../shared beside it (the fresh-clone case .ci/run also runs)."""

from pathlib import Path

import pytest
from conftest import REPO, ci_requires_shared_data, locate_shared_data

pytest_plugins = ["pytester"]


@pytest.mark.parametrize(
    ("value", "required"),
    [("true", True), ("TRUE", True), ("1", True), ("yes", True), ("false", False), ("0", False), ("", False)],
)
def test_ci_values(value, required):
    assert ci_requires_shared_data({"CI": value}) is required


def test_unset_ci_is_a_users_machine():
    assert ci_requires_shared_data({}) is False


def test_present_folder_is_returned_whatever_ci_says(tmp_path):
    assert locate_shared_data(tmp_path, {"CI": "true"}) == tmp_path
    assert locate_shared_data(tmp_path, {}) == tmp_path


def test_missing_folder_skips_off_ci_naming_it(tmp_path):
    missing = tmp_path / "shared" / "data"
    with pytest.raises(pytest.skip.Exception, match=rf"{missing} is missing.*CI \(CI=true\) requires"):
        locate_shared_data(missing, {"CI": "false"})


def test_missing_folder_fails_under_ci_naming_it(tmp_path):
    missing = tmp_path / "shared" / "data"
    with pytest.raises(pytest.fail.Exception, match=rf"{missing} is missing and CI='true'"):
        locate_shared_data(missing, {"CI": "true"})


INNER_TEST = """
def test_reads_shared(shared_data):
    assert (shared_data / "anything").parent == shared_data
"""


@pytest.mark.parametrize(("ci", "outcome"), [(None, "skipped"), ("true", "errors")])
def test_a_session_without_shared_skips_or_errors(pytester, monkeypatch, ci, outcome):
    # The project's own conftest in a folder with no ../shared beside it: a fresh clone.
    pytester.makeconftest((REPO / "tests" / "conftest.py").read_text())
    pytester.makepyfile(test_inner=INNER_TEST)
    assert not (Path(pytester.path).parent / "shared" / "data").exists()
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    result = pytester.runpytest_subprocess("-rs")
    result.assert_outcomes(**{outcome: 1})
    if outcome == "skipped":
        result.stdout.fnmatch_lines(["*SKIPPED*shared/data is missing: this test reads real files*"])
    else:
        result.stdout.fnmatch_lines(["*shared/data is missing and CI='true'*"])

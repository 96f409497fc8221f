"""docs/reliability.md names only tests that exist, and says how many rows it has."""

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs/reliability.md"
REF = re.compile(r"tests/(?P<file>[\w/]+\.py)::(?P<name>\w+)(?:\[(?P<param>[^\]]+)\])?")
NOT_TESTED = "not tested ("
GUARD = re.compile(r"guarded by code in `([^`]+)`")


def table_rows(text: str) -> list[tuple[str, list[str]]]:
    """(section heading, [area, input, what the user gets, test]) for every data row of the page."""
    rows, section = [], ""
    for line in text.splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
        elif line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if cells[0] == "area" or set("".join(cells)) <= set("-"):
                continue  # header or separator
            rows.append((section, cells))
    return rows


def functions_in(path: Path) -> set[str]:
    """Names of every function defined in a module (module level or inside classes)."""
    tree = ast.parse(path.read_text())
    return {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}


def test_the_page_has_its_sections_in_order_and_at_least_60_rows():
    rows = table_rows(DOC.read_text())
    assert len(rows) >= 60, len(rows)
    assert all(len(cells) == 4 for _, cells in rows), [c for _, c in rows if len(c) != 4]
    sections = list(dict.fromkeys(s for s, _ in rows))
    assert sections == [
        "Config", "Resources (models, platforms)", "Workload", "Hardware",
        "Power logs and importers", "Energy", "Carbon and traces", "Metrics",
        "Cells and leases (killed processes, concurrent runs, foreign processes)",
        "Continuous batching", "Figures and report", "Command line",
    ]  # fmt: skip


def test_the_stated_row_count_is_the_number_of_rows():
    text = DOC.read_text()
    stated = re.search(r"(\d+) rows\.", text)
    assert stated, "the intro states the number of rows"
    assert int(stated.group(1)) == len(table_rows(text))


def test_every_named_test_is_a_function_in_its_file():
    missing, untested_without_reason = [], []
    defined: dict[str, set[str]] = {}
    for _, cells in table_rows(DOC.read_text()):
        test_cell = cells[3]
        refs = list(REF.finditer(test_cell))
        if not refs:
            if not test_cell.startswith(NOT_TESTED):
                untested_without_reason.append(test_cell)
            for module in GUARD.findall(test_cell):
                if not (REPO / module).is_file():
                    missing.append(f"guarding module {module}")
            continue
        for ref in refs:
            path = REPO / "tests" / ref["file"]
            if not path.is_file():
                missing.append(ref.group(0))
                continue
            if ref["file"] not in defined:
                defined[ref["file"]] = functions_in(path)
            if ref["name"] not in defined[ref["file"]]:
                missing.append(ref.group(0))
            elif ref["param"] and ref["param"] not in path.read_text():
                missing.append(ref.group(0))  # the parameter id is a value written in the file
    assert not missing, missing
    assert not untested_without_reason, untested_without_reason


def test_a_wrong_reference_is_caught():
    # The check above must be able to fail: a made-up name in a real file is not a function there.
    assert "test_does_not_exist" not in functions_in(REPO / "tests/test_energy.py")
    row = "| a | b | c | `tests/test_energy.py::test_does_not_exist` |"
    [(_, cells)] = table_rows(row)
    [ref] = REF.finditer(cells[3])
    assert (ref["file"], ref["name"]) == ("test_energy.py", "test_does_not_exist")

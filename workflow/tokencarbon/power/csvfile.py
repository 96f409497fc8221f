"""CSV files of measurements read line by line, so that every error names the file's own line.

pandas' read_csv takes a line with one field more than the header as an index column (a comma
decimal, '150,00 W', shifts every value of the row), names no line of a byte it cannot decode, and
reads a line the logger was killed in the middle of (`..., 15` cut from `150.00 W`) as a value.
read_csv_lines refuses the first two naming the line, and drops the third (a machine-written log
ends every line with a newline; one that does not was cut) with a note the caller keeps.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from tokencarbon.errors import InputError

_DIGITS = re.compile(r"^[-+]?\d+$")
_FRACTION = re.compile(r"^\d{1,6}(?: \S+)?$")  # a decimal comma's fraction, maybe with a unit


@dataclass(frozen=True)
class CsvLines:
    """A CSV file's header and rows, as text.

    header: the header's fields, stripped. rows: one row per data line, every field stripped,
    columns named by the header, the index (named "line") the row's 1-based line in the file.
    notes: what was dropped (a last line cut mid-way), for PowerLog.notes and meta.json.
    """

    header: list[str]
    rows: pd.DataFrame
    notes: tuple[str, ...] = ()


def decode_text(path: Path, what: str) -> str:
    """The file's text as UTF-8 (a leading byte-order mark dropped); InputError naming the line and
    byte that are not UTF-8, or why the file cannot be read."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read {what} ({exc})") from exc
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise InputError(
            f"{path}, line {line}: byte {data[exc.start:exc.start + 1]!r} (offset {exc.start}) "
            f"is not UTF-8 ({exc.reason}); {what} must be UTF-8 text: save it as UTF-8"
        ) from None


def read_csv_lines(
    path: str | Path,
    what: str,
    *,
    cut_last_line: bool = True,
    check_header: Callable[[list[str]], None] | None = None,
) -> CsvLines:
    """Read a CSV file whose first line is its header.

    what: the kind of file, for messages ("an nvidia-smi CSV log"). cut_last_line: the file is
    written by a program that ends every line with a newline (a logger), so a last line without
    one was cut when the program was stopped: it is dropped, with a note. Files people write
    (timing files) pass False: their last line is kept.
    Raises InputError naming the file and line: bytes that are not UTF-8, a row with more or fewer
    fields than the header (with a hint where a comma decimal split a value), a second header.
    Blank lines are skipped. check_header, if given, is called with the header's fields before
    any row is read (so that a missing or unknown column is named before a row's field count).
    """
    path = Path(path)
    text = decode_text(path, what)
    notes: list[str] = []
    if cut_last_line and text and not text.endswith(("\n", "\r")):
        start = max(text.rfind("\n"), text.rfind("\r")) + 1
        if start > 0:  # a header line alone is whole
            cut = text[start:]
            line = text.count("\n", 0, start) + 1
            notes.append(
                f"line {line} dropped: the file ends in the middle of it ({cut[-60:]!r}, no "
                "newline): the logger was stopped while writing it; its values are not read"
            )
            text = text[:start]
    reader = csv.reader(io.StringIO(text, newline=""), skipinitialspace=True)
    header: list[str] | None = None
    rows: list[list[str]] = []
    lines: list[int] = []
    for fields in reader:
        line = reader.line_num
        if not fields or all(not f.strip() for f in fields):
            continue
        fields = [f.strip() for f in fields]
        if header is None:
            header = fields
            if check_header is not None:
                check_header(header)
            continue
        if fields == header:
            raise InputError(
                f"{path}, line {line}: the header again ({', '.join(fields)[:120]}): two logs "
                "appended into one file? Split them at this line (each is one log), or remove it"
            )
        if len(fields) != len(header):
            raise InputError(
                f"{path}, line {line}: {len(fields)} fields for the {len(header)} columns of the "
                f"header {header}: {fields}" + _field_count_hint(fields, header)
            )
        rows.append(fields)
        lines.append(line)
    if header is None:
        raise InputError(f"{path}: empty; {what} starts with a header line")
    frame = pd.DataFrame(rows, columns=header, dtype=str, index=pd.Index(lines, name="line"))
    return CsvLines(header, frame, tuple(notes))


def _field_count_hint(fields: list[str], header: list[str]) -> str:
    if len(fields) > len(header):
        for a, b in reversed(list(zip(fields, fields[1:]))):  # values come after times
            if _DIGITS.match(a) and _FRACTION.match(b):
                return (
                    f" ('{a},{b}' looks like a number written with a decimal comma; this file "
                    "must use a decimal point: log with LC_NUMERIC=C, or convert it)"
                )
        return " (a value holding a comma must be quoted)"
    return " (a line cut short, or a column missing)"

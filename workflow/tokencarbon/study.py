"""A study folder's record of the config it was made from, and the check that says when another
config, or an older version of this one, left files there.

Every output of a study lies under results/<study>/ (tokencarbon.layout): two configs with two study
names never share a file. Its record, results/<study>/study.json (written after every successful run
that ran jobs: workflow/rules/study.smk), holds the study's name, the config file(s) it was made
from (relative to the working directory), the SHA-256 of the config as the workflow read it
(defaults filled, --config overrides applied), that config, and the files `all` makes for it
(relative to the folder). When the DAG is built, check_study_folder compares the record with this
run and says on stderr:

- another config file naming the same study (a copy of a config whose `study` was not renamed, or
  a variant given with --configfile): its outputs go into the same folder; Snakemake's params
  trigger reruns every job whose settings differ, so nothing this run makes is stale, but files
  only the other config made stay, and are listed;
- the same file with other content (an edited config): the same, for files of its older version;
- a figure, table, summary or report in the folder that this config does not make (listed).

It does not refuse: a variant of a study with --configfile (what would rerun if ...) is a use of
one folder by two files that the tests and users make on purpose. After a run, study.json names
that run's config and the files `all` makes for it, so a file of the folder not listed there is
no output of it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tokencarbon.errors import InputError

RECORD_VERSION = 1


def config_digest(config: Mapping[str, Any]) -> str:
    """SHA-256 (hex, 64 characters) of the config as canonical JSON (keys sorted, no spaces;
    values JSON cannot spell, such as dates, as their str())."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def config_files(paths: Sequence[str | os.PathLike], workdir: str | Path) -> list[str]:
    """The config files a run reads, each relative to workdir where it lies inside it (so that
    config/a.yaml, ./config/a.yaml and its absolute path are one file), else absolute."""
    out = []
    for p in paths:
        path = (Path(workdir) / p).resolve()
        try:
            out.append(path.relative_to(Path(workdir).resolve()).as_posix())
        except ValueError:
            out.append(str(path))
    return out


def study_record(study: str, config: Mapping[str, Any], files: Sequence[str],
                 outputs: Sequence[str] = ()) -> dict[str, Any]:  # fmt: skip
    """What results/<study>/study.json holds: {"version", "study", "config_files", "config_sha256",
    "config", "outputs"}; files: config_files() of the run; outputs: the files `all` makes, relative
    to the study folder (sorted)."""
    plain = json.loads(json.dumps(config, sort_keys=True, default=str))
    return {
        "version": RECORD_VERSION,
        "study": study,
        "config_files": list(files),
        "config_sha256": config_digest(config),
        "config": plain,
        "outputs": sorted(outputs),
    }


def read_record(path: str | Path) -> dict[str, Any] | None:
    """The record at path, or None where there is none. Raises InputError for a file that is not
    a record (not JSON, or without study, config_files and config_sha256)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not JSON ({e}); delete it, `all` writes it again") from None
    missing = [k for k in ("study", "config_files", "config_sha256") if k not in record]
    if missing:
        raise InputError(f"{path}: no {missing}; delete it, `all` writes it again")
    return record


# The files of a study folder a reader opens, checked against the config's outputs (stale_files).
SHOWN = ("figures/*", "tables/*", "summary.*", "report.html")


def stale_files(folder: str | Path, outputs: Sequence[str]) -> list[str]:
    """The figures, tables, summary and report in folder (SHOWN) that are not among outputs (paths
    relative to folder), sorted: files an earlier config of this study made that this one does
    not."""
    folder = Path(folder)
    wanted = set(outputs)
    found = {p.relative_to(folder).as_posix() for g in SHOWN for p in folder.glob(g) if p.is_file()}
    return sorted(found - wanted)


def check_study_folder(path: str | Path, record: Mapping[str, Any]) -> list[str]:
    """What to say of the study folder of the record at path (read_record) before this run, whose
    record is `record` (study_record): one line per finding (see the module docstring), none where
    the folder is new or was made by this very config with nothing left over."""
    folder = Path(path).parent
    notes = []
    old = read_record(path)
    if old is not None:
        if list(old["config_files"]) != list(record["config_files"]):
            notes.append(
                f"study {record['study']!r}: {folder}/ was made from "
                f"{' + '.join(old['config_files'])}, this run reads "
                f"{' + '.join(record['config_files'])}, which names the same study: its outputs go "
                f"into the same folder (jobs whose settings differ rerun). For a study of its own, "
                f"give it another `study` name"
            )
        elif old["config_sha256"] != record["config_sha256"]:
            notes.append(
                f"study {record['study']!r}: {' + '.join(record['config_files'])} changed since "
                f"{path} was written (config SHA-256 {old['config_sha256'][:12]} -> "
                f"{record['config_sha256'][:12]}); the jobs whose settings changed rerun"
            )
    stale = stale_files(folder, record.get("outputs", ()))
    if stale:
        shown = ", ".join(stale[:8]) + (f" and {len(stale) - 8} more" if len(stale) > 8 else "")
        notes.append(
            f"study {record['study']!r}: {len(stale)} file(s) in {folder}/ are no output of this "
            f"config (an earlier config of the study made them; {path} lists this one's): "
            f"{shown}; delete them, or the folder, so that none passes for this config's"
        )
    return notes


def write_record(path: str | Path, record: Mapping[str, Any]) -> None:
    """Write the record as JSON (indented), through a temporary file renamed into place, so that
    no half-written record is read."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)

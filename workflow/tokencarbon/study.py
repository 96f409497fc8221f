"""A study folder's record of the config it was made from, and the check that keeps a second config
out of it.

Every output of a study lies under results/<study>/ (tokencarbon.layout). Its record,
results/<study>/study.json (rule record_study, in `all`), holds the study's name, the config file(s)
it was made from (relative to the working directory), the SHA-256 of the config as the workflow
read it (defaults filled, --config overrides applied) and that config. When the DAG is built,
check_study_folder compares the record with the config of this run:

- another config file naming the same study: refused (ConfigError), before any job, since its
  outputs would be written beside the first config's and pass for them;
- the same file with other content (an edited config, --config overrides): said on stderr, not
  refused; Snakemake's params trigger reruns the jobs whose slice of the config changed, and the
  record is rewritten with the new digest.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tokencarbon.errors import ConfigError, InputError

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


def study_record(study: str, config: Mapping[str, Any], files: Sequence[str]) -> dict[str, Any]:
    """What results/<study>/study.json holds: {"version", "study", "config_files", "config_sha256",
    "config"}; files: config_files() of the run."""
    plain = json.loads(json.dumps(config, sort_keys=True, default=str))
    return {
        "version": RECORD_VERSION,
        "study": study,
        "config_files": list(files),
        "config_sha256": config_digest(config),
        "config": plain,
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


def check_study_folder(path: str | Path, record: Mapping[str, Any]) -> str | None:
    """Compare the study folder's record at path (read_record) with this run's (study_record).

    Returns None where there is no record yet or it matches; a note (for stderr) where the same
    config file now has other content. Raises ConfigError where another config file made the
    folder (two configs naming one study would mix their outputs).
    """
    old = read_record(path)
    if old is None:
        return None
    folder = Path(path).parent
    if list(old["config_files"]) != list(record["config_files"]):
        raise ConfigError(
            f"config key study: {record['study']!r} names the study folder {folder}/, which "
            f"{' + '.join(old['config_files'])} made ({path}); this run reads "
            f"{' + '.join(record['config_files'])}. Two configs in one folder would mix their "
            f"outputs: give this config its own `study` name, or delete {folder}/ to remake it"
        )
    if old["config_sha256"] != record["config_sha256"]:
        return (
            f"study {record['study']!r}: {' + '.join(record['config_files'])} changed since "
            f"{folder}/ was made (config SHA-256 {old['config_sha256'][:12]} -> "
            f"{record['config_sha256'][:12]}); the jobs whose settings changed rerun, and "
            f"{path} is rewritten"
        )
    return None


def write_record(path: str | Path, record: Mapping[str, Any]) -> None:
    """Write the record as JSON (indented), through a temporary file renamed into place, so that
    no half-written record is read."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)

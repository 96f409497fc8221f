"""Where a study's files lie: its folder results/<study>/ (the config's `study` key), a cell's
key (platform, model, mode, n), its name `<platform>/<model>/<prefix><n>` and folder, the files it
holds, the OOM probe's path and the jobs' logs. The one place these are spelled; small and stable,
since jobs import it (a change here reruns them).

Every output of a study lies under results/<study>/ (cells/, tables/, figures/, summary.md,
report.html, export/, the workload, engines and logs/), so two configs never write into one
folder; results/.cache/ (compilation and probe caches, keyed by what changes them) is shared by
all studies on purpose (docs/architecture.md).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokencarbon.errors import ConfigError

STATIC, CONTINUOUS = "static", "continuous"
# A cell's folder prefix per mode, results/<study>/cells/<platform>/<model>/<prefix><n>; in this
# order the cells of one (platform, model) are listed. A server cell (backend openai_server, issue
# 25) is a continuous cell whose engine is the server (cell.ServerMode), not a mode of its own.
MODE_PREFIX = {STATIC: "bs", CONTINUOUS: "cb"}
MODES = tuple(MODE_PREFIX)
# The config key under `sweep` listing each mode's n, and the probe.json key an `auto` sweep reads.
SWEEP_KEY = {STATIC: "batch_sizes", CONTINUOUS: "max_num_seqs"}
PROBE_KEY = {STATIC: "max_ok", CONTINUOUS: "max_num_seqs_ok"}
# The files a finished cell holds (stem -> file name), in the order the aggregation lists them.
CELL_FILES = {
    STATIC: {"batches": "batches.parquet", "power": "power.parquet", "meta": "meta.json"},
    CONTINUOUS: {
        "batches": "batches.parquet",
        "power": "power.parquet",
        "meta": "meta.json",
        "requests": "requests.parquet",
        "steps": "steps.parquet",
    },
}
RESULTS = "results"
# Shared by every study: caches keyed by what changes their content (tokencarbon.compile_cache,
# tokencarbon.probe.cache), so a second study reuses the first's compilations and probes.
CACHE = f"{RESULTS}/.cache"
# The study a config without a `study` key writes (config/config.yaml names it).
DEFAULT_STUDY = "default"
# A study's name: a folder name that is no file or folder of the layout itself (a study named
# "tables" would lie at results/tables, where an old layout's tables were). The schema
# (workflow/schemas/config.schema.yaml, key `study`) spells the same rule.
STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
RESERVED_STUDY_NAMES = frozenset(
    {"cells", "tables", "figures", "export", "dataset", "tokenizer", "workload", "engines",
     "platforms", "logs", "chunks", "cache"}
)  # fmt: skip
# A study folder's name where the study is not known (a message of a module that has only a cell).
ANY_STUDY = f"{RESULTS}/<study>"
# The record a study folder holds of the config it was made from (tokencarbon.study).
STUDY_RECORD = "study.json"


def study_name(config: Mapping[str, Any]) -> str:
    """The config's `study` (DEFAULT_STUDY where absent). Raises ConfigError for a name that is no
    plain folder name or is one of RESERVED_STUDY_NAMES."""
    name = config.get("study", DEFAULT_STUDY)
    if not isinstance(name, str) or not STUDY_NAME.fullmatch(name) or name in RESERVED_STUDY_NAMES:
        raise ConfigError(
            f"config key study: {name!r} is no study name; use letters, digits, '-' and '_' "
            f"(starting with a letter or digit), none of {sorted(RESERVED_STUDY_NAMES)}"
        )
    return name


def study_root(study: str) -> str:
    """The folder of study `study`'s outputs, relative to the working directory: results/<study>."""
    return f"{RESULTS}/{study}"


def in_study(path: str, root: str) -> str:
    """`path` as it lies in the study folder `root`: a study-relative path spelled results/<rel>
    (the figure registry's and export's names, tokencarbon.figures.registry) becomes <root>/<rel>;
    a path already under root, or not under results/ (a config's trace, resources/...), is
    returned as it is."""
    path = str(path)
    if path == root or path.startswith(f"{root}/") or not path.startswith(f"{RESULTS}/"):
        return path
    return f"{root}/{path.removeprefix(f'{RESULTS}/')}"


@dataclass(frozen=True, order=True)
class CellKey:
    """One cell of a study: (platform, model, mode, n), n the batch size of a static cell or the
    max_num_seqs of a continuous one (the CELLS table's batch_size). Its name is
    `<platform>/<model>/<prefix><n>` (MODE_PREFIX), its folder <root>/cells/<name>, root a study
    folder (study_root)."""

    platform: str
    model: str
    mode: str
    n: int

    def __post_init__(self) -> None:
        if self.mode not in MODE_PREFIX:
            raise ConfigError(f"cell mode {self.mode!r}: one of {list(MODE_PREFIX)}")

    @property
    def name(self) -> str:
        return f"{self.platform}/{self.model}/{MODE_PREFIX[self.mode]}{self.n}"

    def folder(self, root: str | Path = ANY_STUDY) -> str:
        """<root>/cells/<name>; without root, spelled for any study (results/<study>/cells/...),
        for messages."""
        return f"{root}/cells/{self.name}"

    def files(self, root: str | Path = ANY_STUDY) -> dict[str, str]:
        """stem -> path of each file the finished cell holds (CELL_FILES)."""
        return {stem: f"{self.folder(root)}/{name}" for stem, name in CELL_FILES[self.mode].items()}

    @classmethod
    def of(cls, record: Mapping[str, Any]) -> CellKey:
        """The key of a CELLS row or meta.json (platform, model, mode, batch_size); a record
        written before modes existed is static."""
        return cls(str(record["platform"]), str(record["model"]),
                   str(record.get("mode") or STATIC), int(record["batch_size"]))  # fmt: skip

    @classmethod
    def parse(cls, name: str) -> CellKey:
        """The key of a cell's name or folder (`.../<platform>/<model>/<prefix><n>`). Raises
        ConfigError for anything else."""
        parts = Path(name).parts[-3:]
        prefixes = "|".join(MODE_PREFIX.values())
        m = re.fullmatch(rf"({prefixes})(\d+)", parts[-1]) if len(parts) == 3 else None
        if m is None:
            raise ConfigError(
                f"{name!r} is no cell: a cell is <platform>/<model>/<prefix><n>, prefix one of "
                f"{list(MODE_PREFIX.values())}"
            )
        mode = next(k for k, v in MODE_PREFIX.items() if v == m[1])
        return cls(parts[0], parts[1], mode, int(m[2]))


def cell_pattern(mode: str, stem: str, root: str) -> str:
    """The rule output pattern of a cell's file `stem` in study folder `root`
    (<root>/cells/{platform}/{model}/bs{batch}/batches.parquet, ...)."""
    folder = f"{root}/cells/{{platform}}/{{model}}/{MODE_PREFIX[mode]}{{batch}}"
    return f"{folder}/{CELL_FILES[mode][stem]}"


def cell_outputs(mode: str, root: str) -> dict[str, str]:
    """stem -> output pattern of every file a cell of `mode` writes (a rule's outputs)."""
    return {stem: cell_pattern(mode, stem, root) for stem in CELL_FILES[mode]}


def log_path(root: str, name: str) -> str:
    """A job's log in study folder `root`: <root>/logs/<name> (name e.g. "aggregate_cells.log")."""
    return f"{root}/logs/{name}"


def cell_log(rule: str, mode: str, root: str) -> str:
    return log_path(root, f"{rule}/{{platform}}/{{model}}/{MODE_PREFIX[mode]}{{batch}}.log")


def probe_path(platform: str, model: str, root: str | Path) -> str:
    """Where the OOM probe of (platform, model) lies: inside the cell tree, so that copying
    <root>/cells/<platform>/ carries it (docs/architecture.md)."""
    return f"{root}/cells/{platform}/{model}/probe.json"

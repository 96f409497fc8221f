"""Where a study's files lie: a cell's key (platform, model, mode, n), its name
`<platform>/<model>/<prefix><n>` and folder, the files it holds, and the OOM probe's path. The one
place these are spelled; small and stable, since jobs import it (a change here reruns them).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokencarbon.errors import ConfigError

STATIC, CONTINUOUS = "static", "continuous"
# A cell's folder prefix per mode, results/cells/<platform>/<model>/<prefix><n>; in this order the
# cells of one (platform, model) are listed. A server cell (backend openai_server, issue 25) is a
# continuous cell whose engine is the server (cell.ServerMode), not a mode of its own.
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
TABLES = f"{RESULTS}/tables"


@dataclass(frozen=True, order=True)
class CellKey:
    """One cell of a study: (platform, model, mode, n), n the batch size of a static cell or the
    max_num_seqs of a continuous one (the CELLS table's batch_size). Its name is
    `<platform>/<model>/<prefix><n>` (MODE_PREFIX), its folder results/cells/<name>."""

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

    def folder(self, root: str | Path = RESULTS) -> str:
        return f"{root}/cells/{self.name}"

    def files(self, root: str | Path = RESULTS) -> dict[str, str]:
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


def cell_pattern(mode: str, stem: str) -> str:
    """The rule output pattern of a cell's file `stem` (results/cells/{platform}/{model}/bs{batch}/
    batches.parquet, ...)."""
    folder = f"{RESULTS}/cells/{{platform}}/{{model}}/{MODE_PREFIX[mode]}{{batch}}"
    return f"{folder}/{CELL_FILES[mode][stem]}"


def cell_outputs(mode: str) -> dict[str, str]:
    """stem -> output pattern of every file a cell of `mode` writes (a rule's outputs)."""
    return {stem: cell_pattern(mode, stem) for stem in CELL_FILES[mode]}


def cell_log(rule: str, mode: str) -> str:
    return f"logs/{rule}/{{platform}}/{{model}}/{MODE_PREFIX[mode]}{{batch}}.log"


def probe_path(platform: str, model: str, root: str | Path = RESULTS) -> str:
    """Where the OOM probe of (platform, model) lies: inside the cell tree, so that copying
    results/cells/<platform>/ carries it (docs/architecture.md)."""
    return f"{root}/cells/{platform}/{model}/probe.json"


PROBE_PATTERN = probe_path("{platform}", "{model}")

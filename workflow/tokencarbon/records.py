"""A cell's meta.json and an OOM probe's probe.json as typed records: their schema in one place,
beside their producers (tokencarbon.cell and tokencarbon.importing build a CellMeta and write it
here, the only writer of meta.json; tokencarbon.probe writes probe.json, read here), and the one
upgrade of records that older versions wrote (upgrade_meta).

docs/data.md documents every key.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokencarbon.errors import InputError
from tokencarbon.files import write_json

# meta.json keys added after the first cells were measured, and what an older meta.json means by
# their absence: static batches, all there at the start, run once, no watch for other processes,
# unquantized weights (issue 16), its own idle window (issue 19). max_batch_requests, absent too,
# is read from the cell's own batches.parquet (its largest batch).
META_ADDED = {
    "mode": "static",
    "arrival": "offline",
    "request_rate_per_s": math.nan,
    "repeats": 1,
    "foreign_cpu_share": math.nan,
    "cpu_steal_share": math.nan,
    "foreign_gpu_processes": -1,
    "quantization": "none",
    "quant_group_size": None,
    "quant_library": "",
    "idle_shared": False,
}
# Keys an older or imported meta.json writes as null where "not applicable" is NaN in CELLS.
NAN_WHEN_NULL = ("request_rate_per_s", "foreign_cpu_share", "cpu_steal_share")


@dataclass(frozen=True)
class CellMeta:
    """A cell's meta.json: the CELLS row (tables.CELLS, in its order: these fields) and `details`,
    everything else the producer recorded (a measured cell: serving settings, warm-up, engine
    description, hardware, leases, versions, config slices, token digests, timeline, ...; an
    imported cell: its power log and timing file, `imported`)."""

    platform: str
    model: str
    mode: str
    batch_size: int
    architecture: str
    dtype: str
    quantization: str
    quant_group_size: int | None
    quant_library: str
    backend: str
    device_name: str
    gpu_uuid: str | None
    arrival: str
    request_rate_per_s: float | None
    n_requests: int
    n_batches: int
    repeats: int
    max_batch_requests: int | None
    warmup_batches: int
    window_start_wall_ns: int
    window_end_wall_ns: int
    idle_power_w: float | None
    idle_shared: bool
    power_source: str
    power_interval_s: float
    peak_memory_bytes: float | None
    foreign_cpu_share: float | None
    cpu_steal_share: float | None
    foreign_gpu_processes: int
    git_commit: str | None
    details: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, record: Mapping[str, Any]) -> CellMeta:
        """The CellMeta of a meta.json's content (every CELLS key present: upgrade_meta first
        for older ones); keys beyond CELLS go to details."""
        names = [f.name for f in dataclasses.fields(cls) if f.name != "details"]
        return cls(**{n: record[n] for n in names},
                   details={k: v for k, v in record.items() if k not in names})  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        """What meta.json holds: the CELLS keys, then the details."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "details"}
        return {**out, **self.details}

    def cells_row(self) -> dict[str, Any]:
        """The CELLS row (tables.CELLS's columns, in order)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "details"}

    def write(self, path: str | Path) -> None:
        """Write meta.json atomically (files.write_json): a cell's last file, the one whose presence
        says the cell is finished."""
        write_json(path, self.to_json())

    @classmethod
    def read(cls, path: str | Path) -> CellMeta:
        """A cell's meta.json, upgraded (upgrade_meta). Raises InputError naming the file for an
        unreadable file or a missing key."""
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"{path}: not a readable cell meta.json ({exc})") from exc
        if not isinstance(raw, dict):
            raise InputError(f"{path}: a cell meta.json holds one JSON object, not {type(raw).__name__}")
        return cls.of(upgrade_meta(raw, path))


def gpu_uuid(hardware: Mapping[str, Any] | None) -> str | None:
    """The GPU's UUID in a cell's hardware record (hardware.detect: gpu.uuid), else None."""
    return ((hardware or {}).get("gpu") or {}).get("uuid") or None


def upgrade_meta(raw: Mapping[str, Any], path: str | Path) -> dict[str, Any]:
    """A meta.json of any version as this version reads it: the keys added later as META_ADDED
    says, max_batch_requests, where absent, the largest batch of the cell's own batches.parquet
    (beside `path`), and NaN for null where null means "not applicable" (NAN_WHEN_NULL: imported
    cells write null). Raises InputError naming the file and the keys still missing."""
    from tokencarbon import tables

    meta = {**raw, **{k: v for k, v in META_ADDED.items() if k not in raw}}
    if "gpu_uuid" not in meta:  # cells before the column: the UUID their hardware record holds
        meta["gpu_uuid"] = gpu_uuid(meta.get("hardware"))
    if meta.get("max_batch_requests") is None:  # (SchemaError naming a broken batches file)
        batches = tables.read(Path(path).with_name("batches.parquet"), tables.BATCHES)
        meta["max_batch_requests"] = int(batches["n_requests"].max())
    missing = [k for k in tables.CELLS.names if k not in meta]
    if missing:
        raise InputError(f"{path}: cell meta.json lacks keys {missing}; rerun the cell")
    return meta | {k: math.nan for k in NAN_WHEN_NULL if meta[k] is None}


# ---------------------------------------------------------------- probe.json

# The keys every probe.json holds (tokencarbon.probe.run_probe writes it; the committed GPU
# studies' older probes too): the largest batch that fit and the first that failed (None: none
# failed up to max_batch), under memory_limit_gb.
PROBE_KEYS = ("platform", "model", "max_ok", "min_failed", "memory_limit_gb")


def read_probe(path: str | Path) -> dict[str, Any]:
    """An OOM probe's record (probe.json: run_probe's keys, docs/data.md), checked to hold
    PROBE_KEYS with a max_ok of at least 1. Raises InputError naming the file otherwise."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not a readable probe result ({exc}); rerun its probe") from exc
    if not isinstance(record, dict):
        raise InputError(f"{path}: a probe result holds one JSON object; rerun its probe")
    missing = [k for k in PROBE_KEYS if k not in record]
    if missing:
        raise InputError(f"{path}: probe result lacks keys {missing}; rerun its probe")
    if not (isinstance(record["max_ok"], int) and record["max_ok"] >= 1):
        raise InputError(f"{path}: max_ok {record['max_ok']!r}; a probe's largest fit is >= 1")
    return record

"""Repeats kept across jobs: a cell whose repeats do not fit one job's time finishes in several.

A study's longest cells (Llama batch 1: 3.5-6.3 min a repeat on an H100, 3 repeats) do not fit
one call of a lent GPU machine (10 minutes). When the job that runs a cell has a deadline
(DEADLINE_ENV, Unix seconds, set by whoever runs the job: benchmarks/run_chunks.py sets the end
of its budget), the cell starts a repeat only if the longest repeat it has seen so far would end
before it; otherwise it writes the repeats it finished, with their power samples and what
meta.json records of its process, as one part under the cell's folder (`.parts/part-<k>/`,
written under a temporary name and renamed whole: a part is there complete or not at all), and
the job fails with RepeatsKept. The next job of the cell loads the parts that are valid here and
measures only the repeats left; the cell's files then hold every repeat, as one job's would.

A part is valid only where it was measured: on the same device (the GPU's UUID; on a CPU the
host and its boot), by the same code (SHA-256 of the tokencarbon package's Python sources: a
commit that changes none of them keeps the parts valid) and for the same cell (its settings,
workload and engine manifest). Parts that do not match are removed, saying why, and their
repeats measured again: energy per token depends on the card (the idle power of two H100s
differed by 10-18 W, docs/results.md), so repeats of one cell never mix cards.

What the cell's files hold when it ran in parts (tokencarbon.cell writes them):
- batches, requests, steps: every repeat's rows, repeat indices 0..repeats-1 in the order run;
- power: the first part's idle window (the cell's idle power, as a cell in one job has it) and
  every part's run samples; the run samples of two parts are minutes apart and no BATCHES window
  spans the gap;
- meta.json: as one job's, with the idle window's facts (idle_power_w, idle_shared, idle_window)
  and device_state's start from the first part, the foreign-use shares (foreign_cpu_share,
  cpu_steal_share, foreign_gpu_processes) the most any job saw (the foreign_use record is the last
  job's; each job's is in its entry), and "parts": one entry per job (job_facts: "repeats",
  "device", "git_commit", "idle_power_w", "idle_window_wall_ns", "idle_window",
  "window_start_wall_ns", "window_end_wall_ns", "device_state", "foreign_use",
  "peak_memory_bytes", "timeline", "repeat_seconds"); a cell measured in one job has "parts": null.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from tokencarbon import tables
from tokencarbon.errors import ConfigError, TokencarbonError
from tokencarbon.files import write_json
from tokencarbon.records import gpu_uuid

# The job's deadline, Unix seconds (time.time()); unset or empty: no deadline, every repeat runs.
DEADLINE_ENV = "TOKENCARBON_CELL_DEADLINE"
# Unix seconds after which a job measures nothing at all (DeadlinePassed, before its engine is
# built): run_chunks sets it for the cells of a call of several, whose later jobs start whenever
# the earlier ones end, possibly after the budget's end; unset: every job runs its first repeat.
START_BY_ENV = "TOKENCARBON_CELL_START_BY"
# Under the cell's folder; Snakemake removes only a job's declared outputs, so parts outlive a
# failed job.
PARTS_DIR = ".parts"
PART_FILE = "part.json"  # written last in a part's folder
_TABLES = {"batches": tables.BATCHES, "requests": tables.REQUESTS, "steps": tables.STEPS,
           "power": tables.POWER}  # fmt: skip


class DeadlinePassed(TokencarbonError):
    """A job started after START_BY_ENV's time: it measured nothing and kept nothing; the cell is
    left for the next chunk."""


def check_start(environ: Mapping[str, str] = os.environ, now: float | None = None) -> None:
    """Raise DeadlinePassed when START_BY_ENV is set and its time has passed (ConfigError for a
    value that is not a finite number)."""
    start_by = deadline(environ, START_BY_ENV)
    now = time.time() if now is None else now
    if start_by is not None and now > start_by:
        raise DeadlinePassed(
            f"this job started {now - start_by:.0f} s after {START_BY_ENV} (the chunk's budget "
            "ended while the cells before it in its Snakemake call ran): nothing measured, the "
            "cell is left for the next chunk"
        )


class RepeatsKept(TokencarbonError):
    """A job stopped at its deadline after keeping its finished repeats as a part: the next job of
    the cell, on the same device with the same code, measures the repeats left."""


def deadline(environ: Mapping[str, str] = os.environ, name: str = DEADLINE_ENV) -> float | None:
    """The job's deadline in Unix seconds from the variable `name` (DEADLINE_ENV, or
    START_BY_ENV), or None where it is unset or empty. Raises ConfigError naming the variable for
    a value that is not a finite number."""
    raw = environ.get(name, "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ConfigError(
            f"environment variable {name}={raw!r}: expected the job's deadline as Unix "
            "seconds (e.g. the output of `date +%s`), or unset for none"
        )
    return value


def fits(deadline_s: float | None, repeat_seconds: Sequence[float], now: float | None = None) -> bool:
    """Whether the next repeat may start: True without a deadline or before any repeat was timed
    (a job always runs its first repeat: whoever set the deadline started the job because one
    fits), else whether now + the longest repeat timed so far (seconds) ends by the deadline."""
    if deadline_s is None or not repeat_seconds:
        return True
    return (time.time() if now is None else now) + max(repeat_seconds) <= deadline_s


def device_identity(hardware: Mapping[str, Any]) -> str:
    """Which device measured a part: 'gpu <UUID>' for a GPU (hardware.describe_gpu's uuid), else
    'cpu <hostname> boot <boot id>' (/proc/sys/kernel/random/boot_id where Linux has it)."""
    uuid = gpu_uuid(hardware)
    if uuid:
        return f"gpu {uuid}"
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = "unknown"
    return f"cpu {socket.gethostname()} boot {boot}"


def code_digest() -> str:
    """SHA-256 (hex) of the tokencarbon package's Python sources, path and bytes, in path order:
    the code that measured a part, also in an uncommitted tree (whose commit reads '+dirty')."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def cell_fingerprint(settings: Mapping[str, Any], workload: pd.DataFrame,
                     engine_manifest: str | Path | None) -> str:  # fmt: skip
    """SHA-256 (hex) of what a cell is: its settings (config slices, serving settings, batch size,
    repeats; JSON with sorted keys), its workload (request ids, prompt token ids, output lengths)
    and its engine manifest's bytes (None: no manifest)."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for rid, ids, n in zip(workload["request_id"], workload["prompt_token_ids"],
                           workload["output_tokens"]):  # fmt: skip
        h.update(f"{rid}:{','.join(str(int(t)) for t in ids)}:{int(n)};".encode())
    if engine_manifest is not None and Path(engine_manifest).is_file():
        h.update(Path(engine_manifest).read_bytes())
    return h.hexdigest()


@dataclasses.dataclass
class Part:
    """One job's finished repeats of a cell: `rows` its BATCHES, REQUESTS and STEPS rows (dicts,
    each with its "repeat"), `power` its POWER samples (idle window and run), `repeats` one dict
    per repeat ({"repeat", "most_at_once", "tokens", "token_digest", "seconds"}), `facts` what the
    cell's meta.json "parts" entry records of the job."""

    rows: dict[str, list[dict[str, Any]]]
    power: pd.DataFrame
    repeats: list[dict[str, Any]]
    facts: dict[str, Any]


def parts_dir(out_meta: str | Path) -> Path:
    """The folder of a cell's parts: `.parts` beside its meta.json."""
    return Path(out_meta).parent / PARTS_DIR


def save(folder: Path, part: Part, key: Mapping[str, str]) -> Path:
    """Write `part` as folder/part-<k> (k: one more than the parts there), its tables as Parquet
    (tables' schemas) and part.json last, under a temporary name renamed whole. key: the
    {"device", "code", "cell"} it is valid for (load)."""
    folder.mkdir(parents=True, exist_ok=True)
    k = len(sorted(folder.glob("part-*[0-9]")))
    final = folder / f"part-{k}"
    tmp = folder / f".part-{k}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for name, schema in _TABLES.items():
        df = part.power if name == "power" else pd.DataFrame(part.rows[name], columns=schema.names)
        tables.write(df, tmp / f"{name}.parquet", schema)
    write_json(tmp / PART_FILE, {"key": dict(key), "repeats": part.repeats, "facts": part.facts})
    tmp.rename(final)
    return final


def load(folder: Path, key: Mapping[str, str], say: Callable[[str], None]) -> list[Part]:
    """The parts under `folder` for `key` ({"device", "code", "cell"}: device_identity,
    code_digest, cell_fingerprint), in the order written; [] where there are none. If any part was
    measured elsewhere, by other code or for another cell, or cannot be read, every part is removed
    with a line to `say` naming what differs, and the cell's repeats are measured again from the
    first (the parts' repeat indices follow each other). Temporary folders of jobs that died
    writing a part are removed."""
    if not folder.is_dir():
        return []
    for tmp in folder.glob(".part-*.tmp*"):
        shutil.rmtree(tmp, ignore_errors=True)
    parts: list[Part] = []
    paths = sorted(folder.glob("part-*[0-9]"), key=lambda p: int(p.name.split("-")[1]))
    for path in paths:
        try:
            record = json.loads((path / PART_FILE).read_text())
            differ = [k for k in ("device", "code", "cell") if record["key"].get(k) != key[k]]
            if differ:
                names = {"device": "device", "code": "code", "cell": "cell definition"}
                why = "measured with another " + " and ".join(names[k] for k in differ)
            else:
                rows = {n: tables.read(path / f"{n}.parquet", s).to_dict("records")
                        for n, s in _TABLES.items() if n != "power"}  # fmt: skip
                power = tables.read(path / "power.parquet", tables.POWER)
                parts.append(Part(rows, power, record["repeats"], record["facts"]))
                continue
        except (OSError, KeyError, ValueError, TokencarbonError) as e:
            why = f"unreadable ({type(e).__name__}: {e})"
        say(f"kept repeats in {path} {why} ({key['device']} here): every part of the cell "
            "removed, its repeats measured again")  # fmt: skip
        clear(folder)
        return []
    return parts


def rows_of(repeats: Sequence[Any]) -> dict[str, list[dict[str, Any]]]:
    """The BATCHES, REQUESTS and STEPS rows of a job's repeats (cell.Repeat), as a Part keeps them."""
    return {"batches": [row for r in repeats for row in r.batch_rows],
            "requests": [row for r in repeats for row in r.request_rows],
            "steps": [row for r in repeats for row in r.step_rows]}  # fmt: skip


def repeats_of(part: Part, repeat_type: Callable[..., Any]) -> list[Any]:
    """A part's repeats as `repeat_type` (cell.Repeat) in the order run: each repeat's rows, the
    most requests at once, its output tokens, no token ids and the digest the job computed."""
    out = []
    for r in part.repeats:
        k = r["repeat"]
        rows = {name: [row for row in part.rows[name] if row["repeat"] == k] for name in part.rows}
        out.append(repeat_type(rows["batches"], rows["requests"], rows["steps"],
                               int(r["most_at_once"]), int(r["tokens"]), None,
                               r["token_digest"]))  # fmt: skip
    return out


def job_facts(repeat_records: Sequence[Mapping[str, Any]], key: Mapping[str, str],
              git_commit: str, idle_samples: pd.DataFrame, idle_power_w: float,
              states: tuple[Any, Any], foreign: Mapping[str, Any], peak_memory_bytes: float,
              timeline: Mapping[str, Any], idle_window: Mapping[str, Any]) -> dict[str, Any]:  # fmt: skip
    """What meta.json's "parts" entry records of one job: the repeats it measured (indices), its
    device (device_identity), commit, idle window (W; first and last sample, wall ns), measured
    windows (first and last BATCHES row of its repeats, wall ns, from repeat_records'
    "window_wall_ns"), device state at its start and end, foreign use, peak memory (bytes), its
    timeline (tokencarbon.timeline's record) and each repeat's seconds."""
    t = idle_samples["t_wall_ns"]
    return {
        "repeats": [int(r["repeat"]) for r in repeat_records],
        "device": key.get("device"),
        "git_commit": git_commit,
        "idle_power_w": float(idle_power_w),
        "idle_window_wall_ns": [int(t.min()), int(t.max())] if len(t) else None,
        "idle_window": dict(idle_window),  # meta.json's idle_window (idle_share.describe)
        "window_start_wall_ns": int(repeat_records[0]["window_wall_ns"][0]),
        "window_end_wall_ns": int(repeat_records[-1]["window_wall_ns"][1]),
        "device_state": {"start": states[0], "end": states[1]},
        "foreign_use": dict(foreign),
        "peak_memory_bytes": float(peak_memory_bytes),
        "timeline": dict(timeline),
        "repeat_seconds": [round(float(r["seconds"]), 3) for r in repeat_records],
    }


# meta.json keys of foreign use: the most any job of the cell saw
_FOREIGN_KEYS = ("foreign_cpu_share", "cpu_steal_share", "foreign_gpu_processes")


def merged_meta(record: dict[str, Any], kept: Sequence[Part], job: Mapping[str, Any]) -> dict[str, Any]:
    """meta.json's content for a cell whose earlier jobs kept parts: `record` (what the last job
    would write, its repeats already merged) with "parts" (each job's facts, the last job's
    `job` last), foreign use and peak memory the most any job saw. Without parts: "parts" null."""
    if not kept:
        return {**record, "parts": None}
    facts = [*(p.facts for p in kept), dict(job)]
    out = {**record, "parts": facts}
    # the cell's idle window (POWER's idle rows, idle_power_w) is its first job's
    out["idle_window"] = facts[0]["idle_window"]
    out["idle_shared"] = bool(facts[0]["idle_window"].get("shared", False))
    for k in _FOREIGN_KEYS:
        values = [f["foreign_use"].get(k) for f in facts if f["foreign_use"].get(k) is not None]
        finite = [v for v in values if not (isinstance(v, float) and math.isnan(v))]
        if finite:
            out[k] = max(finite)
    out["peak_memory_bytes"] = max(f["peak_memory_bytes"] for f in facts)
    return out


def kept_repeats(folder: Path) -> int:
    """How many repeats the parts under `folder` hold (their part.json files; whether they are
    valid on this device is the cell job's to decide: load); 0 where there are none."""
    n = 0
    for record in sorted(Path(folder).glob(f"part-*[0-9]/{PART_FILE}")):
        try:
            n += len(json.loads(record.read_text())["repeats"])
        except (OSError, KeyError, ValueError):
            continue
    return n


def written_since(folder: Path, since_wall_s: float) -> bool:
    """Whether a part under `folder` was completed (its part.json written) at or after
    `since_wall_s` (Unix seconds): a job of the call that began then kept repeats."""
    return any(p.stat().st_mtime >= since_wall_s
               for p in Path(folder).glob(f"part-*[0-9]/{PART_FILE}"))  # fmt: skip


def clear(folder: Path) -> None:
    """Remove a cell's parts once its files hold every repeat."""
    shutil.rmtree(folder, ignore_errors=True)

"""tokencarbon's cell energy beside Zeus's counter over the same windows (issue 23, item 4).

    python benchmarks/zeus_beside.py record --out zeus.csv &        # beside a chunk, own process
    python benchmarks/run_chunks.py --configfile config/paper-h100.yaml --budget 7m ...
    kill -TERM %1                                                   # the recorder stops cleanly
    python benchmarks/zeus_beside.py compare --pack results/chunks/paper-h100 \\
        --zeus-log zeus.csv --out benchmarks/results/h100-zeus-beside.json

`record` polls one GPU's total energy counter through Zeus's own device layer
(`zeus.device.get_gpus()`, then `get_total_energy_consumption(i)`, the method Zeus named
`getTotalEnergyConsumption` before 0.16 and still answers to; NVML's total energy since the driver
loaded, mJ) every --interval-s, and appends one CSV row per reading (t_wall_ns, energy_mj, read_ns),
flushed at once, until SIGTERM, SIGINT or --duration-s. Index i is Zeus's: with
CUDA_VISIBLE_DEVICES set, Zeus tracks only the GPUs it names, in its order. A JSON file beside the
CSV (the CSV's name with .json) says which Zeus, which GPU (name, UUID, NVML index), the interval,
and, once stopped, how it stopped; it is written before the first row, so a killed recorder
leaves both files with everything logged up to the kill. The recorder imports nothing of
tokencarbon and creates no CUDA context (NVML only), so the cells never see it as a process on
their GPU.

`compare` takes every finished cell of a pack (DIR/cells/<platform>/<model>/<cell>/meta.json)
whose measured window [window_start_wall_ns, window_end_wall_ns] lies inside the Zeus log's span.
tokencarbon's energy is the cell's METRICS energy_j, computed by the package itself
(tokencarbon.aggregate on the cell's own files, then tokencarbon.metrics.compute_all): the sum
over the cell's measured windows (BATCHES rows: each static batch, each continuous repeat; the
set-up between them excluded) of the NVML counter delta where it is plausible, else the integral.
Zeus's energy is taken over exactly those windows: the Zeus counter linearly interpolated at each
window's start and end, the differences summed. relative_difference = (tokencarbon - Zeus) / Zeus.
A window whose bracketing Zeus samples hold a counter decrease (a wrap or a driver reset) or two
consecutive samples further apart than --max-gap-s (default 5 intervals) flags its cell; flagged
cells are listed with their values but left out of the summary (median and max |relative
difference|). Cells outside the log, or not measured with NVML, are listed as skipped with the
reason. Exit status: 0 record written with at least one cell compared, 1 none compared, 2 bad input
(a clear error naming the file and what is wrong), also for `record` where Zeus or its GPU is
missing.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "workflow"))

CSV_COLUMNS = ("t_wall_ns", "energy_mj", "read_ns")
DEFAULT_INTERVAL_S = 0.1
# A gap longer than this many poll intervals in the Zeus log flags the windows it touches.
GAP_INTERVALS = 5.0
NS_PER_S = 1_000_000_000
MJ_PER_J = 1000.0
ZEUS_PIP = "pip install --no-deps zeus==0.16.0 httpx httpcore (and nvidia-ml-py for NVIDIA GPUs)"
FLAG_GAP = "zeus_gap"
FLAG_DECREASE = "zeus_counter_decrease"
FLAG_OTHER_GPU = "zeus_other_gpu"
FLAG_OTHER_MODEL = "zeus_other_gpu_model"
FLAG_FROZEN = "zeus_counter_frozen"
# What the comparison record repeats of the Zeus log's sidecar.
SIDECAR_KEYS = ("zeus_version", "gpu_name", "gpu_uuid", "nvml_index", "zeus_gpu_index",
                "cuda_visible_devices", "interval_s", "host", "state", "stop_reason",
                "n_read_errors", "n_late_polls")  # fmt: skip


class BesideError(Exception):
    """Bad input or a missing prerequisite; the message names the file or package and the fix."""


def sidecar_path(csv_path: str | Path) -> Path:
    """The JSON file beside a Zeus log: zeus.csv -> zeus.json."""
    return Path(csv_path).with_suffix(".json")


def _write_json(path: Path, obj: Any) -> None:
    """Atomic: a temporary file renamed into place (a reader never sees half a file)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)


# ------------------------------------------------------------------------------------------ record


def open_zeus_gpu(gpu_index: int) -> tuple[Any, dict[str, Any]]:
    """(Zeus's GPUs object, what identifies GPU `gpu_index`) through zeus.device.get_gpus().

    gpu_index: Zeus's index (the i-th GPU of CUDA_VISIBLE_DEVICES where it is set). The dict holds
    zeus_version, gpu_name, zeus_gpu_index, nvml_index (the NVML index Zeus's GPU object holds),
    gpu_uuid (NVML's, read by pynvml for identification only; None where that fails),
    cuda_visible_devices. Raises BesideError when Zeus is not installed, finds no GPU, has no GPU
    `gpu_index`, or the GPU has no total energy counter (NVIDIA: Volta and newer).
    """
    try:
        import zeus
        from zeus.device import get_gpus
    except ImportError as exc:
        raise BesideError(
            f"record reads the GPU through Zeus's device layer, and `zeus` cannot be imported here "
            f"({exc}): {ZEUS_PIP}"
        ) from exc
    try:
        gpus = get_gpus()
    except Exception as exc:
        # ZeusBaseError (no NVML/AMDSMI, an NVML error), ImportError (Zeus refuses an unofficial
        # pynvml), ValueError (CUDA_VISIBLE_DEVICES that is not integer indices), AttributeError
        # (an nvidia-ml-py older than the calls Zeus makes): all mean Zeus cannot read a GPU here
        raise BesideError(
            f"Zeus {zeus.__version__} finds no GPU to read here ({type(exc).__name__}: {exc}); "
            "record runs on a machine with an NVIDIA GPU and its driver (NVML), "
            f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}"
        ) from exc
    n = len(gpus)
    if not 0 <= gpu_index < n:
        raise BesideError(
            f"--gpu-index {gpu_index}: Zeus tracks {n} GPU(s) here (CUDA_VISIBLE_DEVICES="
            f"{os.environ.get('CUDA_VISIBLE_DEVICES')!r}); valid: 0..{n - 1}"
        )
    name = gpus.get_name(gpu_index)
    if not gpus.supports_get_total_energy_consumption(gpu_index):
        raise BesideError(
            f"GPU {gpu_index} ({name}) has no total energy counter Zeus can read "
            "(NVML's needs Volta or newer)"
        )
    nvml_index = getattr(gpus.gpus[gpu_index], "gpu_index", None)
    uuid = None
    try:
        import pynvml

        uuid = pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(int(nvml_index)))
    except Exception:  # identification only; the energy is Zeus's reading
        uuid = None
    return gpus, {
        "zeus_version": zeus.__version__,
        "gpu_name": name,
        "zeus_gpu_index": gpu_index,
        "nvml_index": nvml_index,
        "gpu_uuid": uuid,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }


def record(out: Path, gpu_index: int, interval_s: float, duration_s: float | None) -> dict:
    """Poll Zeus's energy counter of GPU `gpu_index` into `out` (CSV) until SIGTERM/SIGINT or
    `duration_s`; returns the final sidecar dict (also written to sidecar_path(out)).

    Rows: t_wall_ns (time.time_ns() at the middle of the reading, as tokencarbon's NVML source
    stamps its samples), energy_mj (int, Zeus's get_total_energy_consumption), read_ns (how long
    the reading took). Polls are scheduled on a fixed grid of `interval_s` from the start; a poll
    more than one interval late is counted (n_late_polls) and the grid restarts from it. A reading
    that raises is counted (n_read_errors, the first kept) and logs no row: compare flags the gap.
    Raises BesideError for a missing Zeus or GPU (open_zeus_gpu), an existing `out`, or a bad
    interval; nothing is written then.
    """
    if not interval_s > 0:
        raise BesideError(f"--interval-s {interval_s}: must be > 0 seconds")
    for path in (out, sidecar_path(out)):
        if path.exists():
            raise BesideError(
                f"{path} exists; record writes a new log only (move it or pick --out)"
            )
    gpus, info = open_zeus_gpu(gpu_index)
    from zeus.exception import ZeusBaseError

    stop = {"reason": None}

    def on_signal(signum, _frame):
        stop["reason"] = signal.Signals(signum).name

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    meta = {
        "tool": "benchmarks/zeus_beside.py record",
        **info,
        "interval_s": interval_s,
        "duration_s": duration_s,
        "csv": out.name,
        "columns": list(CSV_COLUMNS),
        "counter": "zeus.device.get_gpus().get_total_energy_consumption(zeus_gpu_index), mJ",
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started_wall_ns": time.time_ns(),
        "state": "recording",
    }
    side = sidecar_path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _write_json(side, meta)
    n_rows = n_errors = n_late = 0
    first_error = None
    interval_ns = int(round(interval_s * NS_PER_S))
    start_mono = time.monotonic_ns()
    end_mono = start_mono + int(duration_s * NS_PER_S) if duration_s else None
    next_mono = start_mono
    with open(out, "x", newline="", encoding="utf-8") as f:
        f.write(",".join(CSV_COLUMNS) + "\n")
        f.flush()
        while stop["reason"] is None:
            before = time.time_ns()
            try:
                mj = int(gpus.get_total_energy_consumption(gpu_index))
            except ZeusBaseError as exc:
                n_errors += 1
                first_error = first_error or f"{type(exc).__name__}: {exc}"
            else:
                after = time.time_ns()
                f.write(f"{(before + after) // 2},{mj},{after - before}\n")
                f.flush()
                n_rows += 1
            now = time.monotonic_ns()
            if end_mono is not None and now >= end_mono:
                stop["reason"] = "duration"
                break
            next_mono += interval_ns
            if now > next_mono + interval_ns:
                n_late += 1
                next_mono = now
            while stop["reason"] is None:
                left_ns = next_mono - time.monotonic_ns()
                if left_ns <= 0:
                    break
                time.sleep(min(left_ns, interval_ns) / NS_PER_S)
    meta.update(
        state="stopped",
        stop_reason=stop["reason"],
        stopped_wall_ns=time.time_ns(),
        n_rows=n_rows,
        n_read_errors=n_errors,
        first_read_error=first_error,
        n_late_polls=n_late,
    )
    _write_json(side, meta)
    return meta


# ----------------------------------------------------------------------------------------- compare


@dataclass(frozen=True)
class ZeusLog:
    """A Zeus log as read: t_wall_ns int64 (n,) strictly increasing, energy_mj float64 (n,) (mJ),
    meta (the sidecar JSON), notes (what was dropped or is odd, in words)."""

    t_wall_ns: Any
    energy_mj: Any
    meta: dict
    notes: list[str] = field(default_factory=list)


def read_zeus_log(path: str | Path, meta_path: str | Path | None = None) -> ZeusLog:
    """Read a `record` CSV and its sidecar JSON (default sidecar_path(path)).

    A last line without its newline (the recorder killed mid-write) is dropped, with a note.
    Raises BesideError naming the file and line for: a missing file, a header other than
    CSV_COLUMNS, a row that is not integers, times that do not increase strictly, fewer than 2
    rows, a sidecar without zeus_version / gpu_name / interval_s.
    """
    import numpy as np

    path = Path(path)
    meta_path = Path(meta_path) if meta_path else sidecar_path(path)
    for p in (path, meta_path):
        if not p.is_file():
            raise BesideError(
                f"{p}: missing; `record --out {path}` writes the CSV and {meta_path.name}"
            )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise BesideError(f"{meta_path}: not JSON ({exc})") from exc
    missing = [k for k in ("zeus_version", "gpu_name", "interval_s") if k not in meta]
    if missing:
        raise BesideError(f"{meta_path}: missing key(s) {missing}; a `record` sidecar holds them")
    text = path.read_text(encoding="utf-8")
    notes = []
    lines = text.split("\n")
    if lines and lines[-1] != "":
        notes.append(f"last line {lines[-1]!r} has no newline (recorder killed mid-write): dropped")
    lines = lines[:-1]
    if not lines or tuple(lines[0].split(",")) != CSV_COLUMNS:
        head = lines[0] if lines else ""
        raise BesideError(f"{path}:1: header {head!r}; expected {','.join(CSV_COLUMNS)}")
    t, e = [], []
    for n, row in enumerate(csv.reader(lines[1:]), start=2):
        try:
            if len(row) != len(CSV_COLUMNS):
                raise ValueError(f"{len(row)} fields")
            t.append(int(row[0]))
            e.append(int(row[1]))
        except ValueError as exc:
            raise BesideError(
                f"{path}:{n}: {','.join(row)!r} is not a row of integers {CSV_COLUMNS} ({exc})"
            ) from exc
    t_ns, e_mj = np.asarray(t, dtype=np.int64), np.asarray(e, dtype=np.float64)
    if len(t_ns) < 2:
        raise BesideError(f"{path}: {len(t_ns)} reading(s); a window needs readings on both sides")
    bad = np.flatnonzero(np.diff(t_ns) <= 0)
    if len(bad):
        raise BesideError(
            f"{path}:{bad[0] + 3}: t_wall_ns {t_ns[bad[0] + 1]} does not follow "
            f"{t_ns[bad[0]]} (line {bad[0] + 2}); times must increase (did the wall clock step "
            "back?)"
        )
    if meta.get("state") != "stopped":
        notes.append("the sidecar says the recorder did not stop cleanly (killed): the log ends "
                     "at its last row")  # fmt: skip
    return ZeusLog(t_ns, e_mj, meta, notes)


def zeus_window_energy(log: ZeusLog, start_ns: int, end_ns: int, max_gap_ns: int):
    """Zeus's energy over [start_ns, end_ns] (J): the counter linearly interpolated at both edges.

    Returns (energy_j, flags, largest gap between the samples that bracket the window, s);
    energy_j is None when the counter decreases there (FLAG_DECREASE: a wrap or a driver reset;
    no difference of it is energy). FLAG_GAP when two consecutive bracketing samples lie more
    than max_gap_ns apart. Times are made relative to start_ns in int64 before any float step.
    Raises BesideError when the log does not span the window (callers check first).
    """
    import numpy as np

    t = log.t_wall_ns
    lo = int(np.searchsorted(t, start_ns, side="right")) - 1
    hi = int(np.searchsorted(t, end_ns, side="left"))
    if lo < 0 or hi >= len(t) or end_ns <= start_ns:
        raise BesideError(
            f"window [{start_ns}, {end_ns}] ns is not inside the Zeus log [{t[0]}, {t[-1]}] ns"
        )
    t_s = (t[lo : hi + 1] - start_ns) / NS_PER_S
    e = log.energy_mj[lo : hi + 1]
    gaps_ns = np.diff(t[lo : hi + 1])
    largest_gap_s = float(gaps_ns.max() / NS_PER_S)
    flags = [FLAG_GAP] if gaps_ns.max() > max_gap_ns else []
    if (np.diff(e) < 0).any():
        return None, flags + [FLAG_DECREASE], largest_gap_s
    at = np.interp([0.0, (end_ns - start_ns) / NS_PER_S], t_s, e)
    return float(at[1] - at[0]) / MJ_PER_J, flags, largest_gap_s


def tokencarbon_energy(cell_dir: Path) -> dict[str, Any]:
    """The cell's METRICS energy as tokencarbon's pipeline computes it, from the cell's own files.

    tokencarbon.aggregate.aggregate([cell_dir]) reads meta.json, batches.parquet, power.parquet
    (and a continuous cell's requests/steps) as rule aggregate_cells does; compute_all gives the
    METRICS row as rule compute_metrics does (architecture from resources/models, platform row
    from resources/platforms.csv for the cell's device, a constant intensity: energy does not
    depend on it). Returns energy_j, energy_method, energy_counter_j, energy_integrated_j,
    window_s, qa_flags, and the windows (start_wall_ns, end_wall_ns) of the BATCHES rows those
    energies sum over. Raises tokencarbon's errors (TokencarbonError) where it cannot.
    """
    from tokencarbon.aggregate import aggregate
    from tokencarbon.carbon import CarbonAccounting, ConstantIntensity
    from tokencarbon.metrics import compute_all, resolve_cell_platforms
    from tokencarbon.models import load_architecture

    t = aggregate([cell_dir])
    archs = {a: load_architecture(a) for a in t.cells["architecture"].unique()}
    metrics, _ = compute_all(
        t.cells, t.batches, t.power, archs, resolve_cell_platforms(t.cells),
        CarbonAccounting(ConstantIntensity(413.0)), requests=t.requests, steps=t.steps,
    )  # fmt: skip
    row = metrics.iloc[0]
    batches = t.batches.sort_values(["repeat", "batch_index"])
    windows = [(int(s), int(e)) for s, e in zip(batches["start_wall_ns"], batches["end_wall_ns"])]
    return {
        "energy_j": float(row["energy_j"]),
        "energy_method": str(row["energy_method"]),
        "energy_counter_j": float(row["energy_counter_j"]),
        "energy_integrated_j": float(row["energy_integrated_j"]),
        "window_s": float(row["window_s"]),
        "qa_flags": [f for f in str(row["qa_flags"]).split(";") if f],
        "windows": windows,
    }


def _clean(value):
    """JSON without NaN: NaN and inf become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _outside(meta_start: int, meta_end: int, log: ZeusLog) -> str | None:
    t0, t1 = int(log.t_wall_ns[0]), int(log.t_wall_ns[-1])
    if meta_end < t0:
        return f"measured {(t0 - meta_end) / NS_PER_S:.1f} s before the Zeus log starts"
    if meta_start > t1:
        return f"measured {(meta_start - t1) / NS_PER_S:.1f} s after the Zeus log ends"
    if meta_start < t0:
        return (f"window starts {(t0 - meta_start) / NS_PER_S:.3f} s before the Zeus log's first "
                "reading")  # fmt: skip
    if meta_end > t1:
        return (f"window ends {(meta_end - t1) / NS_PER_S:.3f} s after the Zeus log's last "
                "reading")  # fmt: skip
    return None


def compare(pack: Path, log: ZeusLog, max_gap_s: float | None = None) -> dict[str, Any]:
    """The comparison record of every cell under pack/cells/*/*/*/meta.json (see the module doc).

    Per compared cell: cell (platform/model/cell folder), device (device_name, gpu_index and
    gpu_uuid of its lease), n_windows, window_s, tokencarbon's energy_j / method / counter /
    integral / qa_flags, zeus_energy_j (J), relative_difference ((tokencarbon - Zeus) / Zeus),
    flags (FLAG_GAP, FLAG_DECREASE, FLAG_OTHER_GPU where the cell's GPU UUID is not the log's,
    FLAG_OTHER_MODEL where its device name is not the log's GPU name, FLAG_FROZEN where Zeus's
    counter did not advance over the windows), largest_zeus_gap_s.
    summary: over the unflagged cells. Raises BesideError when the pack has no cells/ tree,
    and RuntimeError when the windows do not add up to tokencarbon's window_s (they are the same
    BATCHES rows; a mismatch would mean the two energies cover different time).
    """
    import numpy as np

    from tokencarbon.errors import TokencarbonError
    from tokencarbon.hardware import git_commit
    from tokencarbon.records import CellMeta

    if not (Path(pack) / "cells").is_dir():
        raise BesideError(f"{pack}: no cells/ folder; --pack is a chunk's pack or a study folder")
    metas = sorted(Path(pack).glob("cells/*/*/*/meta.json"))
    interval_s = float(log.meta["interval_s"])
    max_gap_s = GAP_INTERVALS * interval_s if max_gap_s is None else float(max_gap_s)
    max_gap_ns = int(round(max_gap_s * NS_PER_S))
    cells, skipped = [], []
    for meta_path in metas:
        cell_dir = meta_path.parent
        name = str(cell_dir.relative_to(Path(pack) / "cells"))
        try:
            meta = CellMeta.read(meta_path)
        except TokencarbonError as exc:
            skipped.append({"cell": name, "reason": f"meta.json unreadable: {exc}"})
            continue
        reason = _outside(int(meta.window_start_wall_ns), int(meta.window_end_wall_ns), log)
        if reason is None and meta.power_source != "nvml":
            reason = f"power_source {meta.power_source!r}: only NVML GPU cells read this counter"
        if reason is not None:
            skipped.append({"cell": name, "reason": reason})
            continue
        try:
            tc = tokencarbon_energy(cell_dir)
        except TokencarbonError as exc:
            skipped.append({"cell": name, "reason": f"tokencarbon's metrics failed: {exc}"})
            continue
        windows = tc.pop("windows")
        outside = [w for w in windows if _outside(w[0], w[1], log)]
        if outside:
            skipped.append({"cell": name, "reason": f"{len(outside)} measured window(s) outside "
                            f"the Zeus log, first {list(outside[0])} ns"})  # fmt: skip
            continue
        window_s = sum(e - s for s, e in windows) / NS_PER_S
        if not math.isclose(window_s, tc["window_s"], rel_tol=1e-9, abs_tol=1e-6):
            raise RuntimeError(
                f"{name}: BATCHES windows sum to {window_s} s, tokencarbon's window_s is "
                f"{tc['window_s']} s; the two energies would cover different time"
            )
        zeus_j, flags, largest_gap_s = 0.0, [], 0.0
        for s, e in windows:
            j, f, gap_s = zeus_window_energy(log, s, e, max_gap_ns)
            zeus_j = None if (j is None or zeus_j is None) else zeus_j + j
            flags += [x for x in f if x not in flags]
            largest_gap_s = max(largest_gap_s, gap_s)
        lease = meta.details.get("gpu_lease") or {}
        uuid = lease.get("gpu_uuid")
        if uuid and log.meta.get("gpu_uuid") and uuid != log.meta["gpu_uuid"]:
            flags.append(FLAG_OTHER_GPU)
        if meta.device_name != log.meta["gpu_name"]:
            flags.append(FLAG_OTHER_MODEL)
        if zeus_j == 0.0:
            flags.append(FLAG_FROZEN)
        rel = (tc["energy_j"] - zeus_j) / zeus_j if zeus_j else None
        cells.append({
            "cell": name,
            "device_name": meta.device_name,
            "gpu_index": lease.get("gpu_index"),
            "gpu_uuid": uuid,
            "git_commit": meta.git_commit,
            "n_windows": len(windows),
            "window_s": tc["window_s"],
            "tokencarbon_energy_j": tc["energy_j"],
            "tokencarbon_method": tc["energy_method"],
            "tokencarbon_counter_j": tc["energy_counter_j"],
            "tokencarbon_integrated_j": tc["energy_integrated_j"],
            "tokencarbon_qa_flags": tc["qa_flags"],
            "zeus_energy_j": zeus_j,
            "relative_difference": rel,
            "largest_zeus_gap_s": largest_gap_s,
            "flags": flags,
        })  # fmt: skip
    clean = [c for c in cells if not c["flags"] and c["relative_difference"] is not None]
    abs_rel = np.array([abs(c["relative_difference"]) for c in clean])
    worst = clean[int(abs_rel.argmax())]["cell"] if len(clean) else None
    gaps = np.diff(log.t_wall_ns) / NS_PER_S
    return _clean(
        {
            "kind": "zeus-beside",
            "definition": "relative_difference = (tokencarbon energy_j - Zeus energy_j) / Zeus "
            "energy_j over the same measured windows (a cell's BATCHES rows); Zeus's energy: its "
            "counter linearly interpolated at each window's edges",
            "commit": git_commit(),
            "created_wall_ns": time.time_ns(),
            "pack": str(pack),
            "zeus": {
                **{k: log.meta.get(k) for k in SIDECAR_KEYS},
                "n_readings": int(len(log.t_wall_ns)),
                "span_wall_ns": [int(log.t_wall_ns[0]), int(log.t_wall_ns[-1])],
                "median_interval_s": float(np.median(gaps)),
                "max_interval_s": float(gaps.max()),
                "notes": log.notes,
            },
            "max_gap_s": max_gap_s,
            "cells": cells,
            "skipped": skipped,
            "summary": {
                "over": "compared cells without flags",
                "n_compared": len(cells),
                "n_flagged": len(cells) - len(clean),
                "n_skipped": len(skipped),
                "median_abs_relative_difference": float(np.median(abs_rel)) if len(clean) else None,
                "max_abs_relative_difference": float(abs_rel.max()) if len(clean) else None,
                "max_cell": worst,
            },
        }
    )


def _print_table(rec: dict) -> None:
    print(f"{'cell':44} {'window s':>9} {'tokencarbon J':>14} {'Zeus J':>12} {'diff %':>8}  flags")
    nan = float("nan")
    for c in rec["cells"]:
        z, rel = c["zeus_energy_j"], c["relative_difference"]
        z, pct = (nan if z is None else z), (nan if rel is None else 100 * rel)
        print(f"{c['cell']:44} {c['window_s']:9.2f} {c['tokencarbon_energy_j']:14.1f} {z:12.1f} "
              f"{pct:8.2f}  {';'.join(c['flags'])}")  # fmt: skip
    s = rec["summary"]
    med, mx = s["median_abs_relative_difference"], s["max_abs_relative_difference"]
    print(f"{s['n_compared']} compared ({s['n_flagged']} flagged), {s['n_skipped']} skipped; "
          + (f"|difference| median {100 * med:.2f} %, max {100 * mx:.2f} % ({s['max_cell']}), "
             if med is not None else "no unflagged cell; ")
          + f"Zeus {rec['zeus']['zeus_version']}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("record", help="poll Zeus's energy counter of one GPU into a CSV")
    r.add_argument(
        "--out", type=Path, required=True, help="the CSV (its sidecar: same name, .json)"
    )
    r.add_argument("--gpu-index", type=int, default=0, help="Zeus's GPU index (default 0)")
    r.add_argument("--interval-s", type=float, default=DEFAULT_INTERVAL_S, help="default 0.1")
    r.add_argument("--duration-s", type=float, default=None, help="stop after (default: a signal)")
    c = sub.add_parser("compare", help="tokencarbon's cell energies beside the Zeus log")
    c.add_argument("--pack", type=Path, required=True, help="folder holding cells/<p>/<m>/<cell>/")
    c.add_argument("--zeus-log", type=Path, required=True, help="the CSV `record` wrote")
    c.add_argument("--zeus-meta", type=Path, default=None, help="its sidecar (default: beside it)")
    c.add_argument("--out", type=Path, required=True, help="the JSON record")
    c.add_argument("--max-gap-s", type=float, default=None,
                   help=f"flag windows with a longer gap in the log (default {GAP_INTERVALS:g} "
                   "intervals)")  # fmt: skip
    args = p.parse_args(argv)
    try:
        if args.command == "record":
            meta = record(args.out, args.gpu_index, args.interval_s, args.duration_s)
            print(f"{meta['n_rows']} readings of {meta['gpu_name']} (Zeus {meta['zeus_version']}) "
                  f"in {args.out}; stopped by {meta['stop_reason']}")  # fmt: skip
            return 0
        rec = compare(args.pack, read_zeus_log(args.zeus_log, args.zeus_meta), args.max_gap_s)
    except BesideError as exc:
        print(f"zeus_beside {args.command}: {exc}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    _write_json(args.out, rec)
    _print_table(rec)
    print(f"record: {args.out}")
    return 0 if rec["summary"]["n_compared"] else 1


if __name__ == "__main__":
    sys.exit(main())

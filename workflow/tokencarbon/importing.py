"""Measurements made elsewhere -> cells: an external power log plus a timing file become
results/cells/<platform>/<model>/bs<n>/{batches.parquet, power.parquet, meta.json}, in the same
schemas (tokencarbon.tables) as measured cells, so metrics, tables, figures and export cover them.

The timing file (CSV, one row per measured window; docs/import.md):

    start,end,output_tokens,input_tokens,batch_size,model,platform
    2025-04-24T16:02:13.000+02:00,2025-04-24T16:02:15.500+02:00,2048,512,8,llama-2-7b,h100-sxm-80gb

start, end (required): wall times of the window, ISO-8601 (with an offset, or local in tz) or
epoch seconds. output_tokens (required): tokens generated in the window. Optional: input_tokens,
batch_size and n_requests (requests in the window; default batch_size), model, platform (or given
once for the file), first_token (when every request of the window had its first token; without
it the window's first token time is written as metrics.UNKNOWN_TIME_NS, -1: NaN TTFT and TPOT),
max_output_tokens (the longest request's output; default output_tokens / n_requests, rounded up),
repeat.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tokencarbon import tables
from tokencarbon.carbon import DEFAULT_MAX_FILL_S
from tokencarbon.errors import ConfigError, HardwareMismatchError, InputError
from tokencarbon.layout import STATIC, CellKey
from tokencarbon.records import CellMeta
from tokencarbon.power.csvfile import read_csv_lines
from tokencarbon.power.nvidia_smi import PowerLog
from tokencarbon.power.timestamps import parse_times

FORMATS = ("nvidia-smi", "codecarbon", "dmon", "dcgmi")
REQUIRED = ("start", "end", "output_tokens")
OPTIONAL = (
    "input_tokens", "batch_size", "n_requests", "model", "platform", "first_token",
    "max_output_tokens", "repeat",
)  # fmt: skip
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # usable as a path part and a wildcard
_EPOCH_S = re.compile(r"^\d{9,11}(?:\.\d+)?$")
BACKEND = "imported"


def detect_format(path: str | Path) -> str:
    """Which importer reads `path`, from its first lines; InputError naming what was seen."""
    path = Path(path)
    try:
        # Bytes that are not UTF-8 do not hide the format: the reader names their line.
        with open(path, encoding="utf-8", errors="replace") as f:
            head = [line for _, line in zip(range(5), f)]
    except OSError as exc:
        raise InputError(f"{path}: cannot be read as a text power log ({exc})") from exc
    text = "".join(head)
    first = head[0].strip() if head else ""
    if "project_name" in first and "energy_consumed" in first:
        return "codecarbon"
    if first.startswith("timestamp") or "power.draw" in first:
        return "nvidia-smi"
    if "#Entity" in text:
        return "dcgmi"
    if first.startswith("#") and re.search(r"(^#|\s)gpu\b", first):
        return "dmon"
    raise InputError(
        f"{path}: not a power log tokencarbon knows; first line {first[:120]!r}. Known: an "
        "nvidia-smi --query-gpu CSV (header 'timestamp, ... power.draw [W]'), CodeCarbon's "
        "emissions.csv, `nvidia-smi dmon -o DT` and `dcgmi dmon` text logs"
    )


def load_power_log(
    path: str | Path,
    fmt: str = "auto",
    *,
    tz: str | None = None,
    gpu: str | int | None = None,
    power_draw: str = "average",
    component: str = "gpu",
    all_gpus: bool = False,
    run_id: str | None = None,
    start: str | None = None,
    delay_ms: float | None = None,
) -> PowerLog:
    """One device's samples from any supported log (fmt "auto" detects it; see FORMATS).

    tz, gpu, power_draw: as tokencarbon.power.nvidia_smi.import_nvidia_smi. component, all_gpus,
    run_id: CodeCarbon only (tokencarbon.power.codecarbon). start, delay_ms: dcgmi logs without
    time prefixes (tokencarbon.power.dmon). Raises InputError / ConfigError from the importers.
    """
    from tokencarbon.power.codecarbon import import_codecarbon
    from tokencarbon.power.dmon import import_dcgmi_dmon, import_nvidia_smi_dmon
    from tokencarbon.power.nvidia_smi import import_nvidia_smi

    if fmt == "auto":
        fmt = detect_format(path)
    if fmt == "nvidia-smi":
        return import_nvidia_smi(path, tz, gpu=gpu, power_draw=power_draw)
    if fmt == "codecarbon":
        return import_codecarbon(path, tz, component=component, run_id=run_id, all_gpus=all_gpus)
    if fmt == "dmon":
        return import_nvidia_smi_dmon(path, tz, gpu=gpu, power_draw=power_draw)
    if fmt == "dcgmi":
        return import_dcgmi_dmon(
            path, tz, gpu=gpu, power_draw=power_draw, start=start, delay_ms=delay_ms
        )
    raise ConfigError(f"power log format {fmt!r}: one of {('auto',) + FORMATS}")


# --- timing files ------------------------------------------------------------------------------


def _times(raw: pd.Series, tz: str | None, where: str) -> np.ndarray:
    """Epoch seconds (exactly, via Decimal) or text times -> int64 UTC ns."""
    text = raw.astype(str).str.strip()
    if text.str.match(_EPOCH_S).all():
        return np.array([int(Decimal(v) * 10**9) for v in text], dtype=np.int64)
    return parse_times(text, tz, where, local_format="%Y/%m/%d %H:%M:%S.%f")


# The largest count a table column holds (int64), far beyond any real token count.
MAX_COUNT = 2**63 - 1


def _ints(raw: pd.Series, name: str, where: Path, minimum: int) -> np.ndarray:
    """Whole numbers >= minimum (written '512', '512.0' or '5.12e2'); InputError naming the file,
    row, column and value for anything else: text, a fraction, NaN, infinity, or a number beyond
    MAX_COUNT."""
    out = np.empty(len(raw), dtype=np.int64)
    for i, v in enumerate(raw.astype(str).str.strip()):
        try:
            d = Decimal(v)
            ok = d.is_finite() and d == d.to_integral_value() and d >= minimum
        except InvalidOperation:
            ok = False
        if not ok:
            raise InputError(
                f"{where}, row {i + 1}, column {name!r}: {v!r} is not a whole number >= {minimum}"
            )
        if d > MAX_COUNT:
            raise InputError(
                f"{where}, row {i + 1}, column {name!r}: {v!r} is beyond any count a cell can "
                f"hold ({MAX_COUNT}, 2^63 - 1): a unit slip or a corrupted value? Correct it"
            )
        out[i] = int(d)
    return out


def _check_counts(out: pd.DataFrame, path: Path) -> None:
    """Counts no window can have: fewer output tokens than requests (each request generates at
    least one), more requests than the batch holds, a longest request shorter than the even share
    or longer than what the others leave it (each of the other n - 1 has at least one token)."""
    n, tokens, longest = out["n_requests"], out["output_tokens"], out["max_output_tokens"]
    checks = [
        (tokens < n, lambda r: f"output_tokens {r.output_tokens} for {r.n_requests} requests; "
         "every request generates at least one token"),
        (n > out["batch_size"], lambda r: f"n_requests {r.n_requests} in a window of batch size "
         f"{r.batch_size}; a static batch holds at most batch_size requests"),
        (longest * n < tokens, lambda r: f"max_output_tokens {r.max_output_tokens} for "
         f"{r.output_tokens} tokens over {r.n_requests} requests; the longest request has at "
         f"least {-(-r.output_tokens // r.n_requests)}"),
        (longest > tokens - (n - 1), lambda r: f"max_output_tokens {r.max_output_tokens} with "
         f"{r.output_tokens} tokens over {r.n_requests} requests; the longest has at most "
         f"{r.output_tokens - r.n_requests + 1} (each other request at least 1)"),
    ]  # fmt: skip
    for bad, say in checks:
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise InputError(f"{path}, row {i + 1}: {say(out.iloc[i])}")


def read_timing(
    path: str | Path,
    tz: str | None = None,
    *,
    model: str | None = None,
    platform: str | None = None,
    batch_size: int | None = None,
) -> pd.DataFrame:
    """The windows of a timing file (see the module docstring), one row each, checked.

    Columns out: row (1-based data row), platform, model, batch_size, n_requests, repeat,
    start_wall_ns, end_wall_ns, first_token_wall_ns (-1 where unknown), input_tokens (-1 where
    unknown), output_tokens, max_output_tokens. model / platform / batch_size fill columns the
    file lacks (a file column wins only where the argument is None). Raises InputError naming the
    file, row and column: counts no window can have (_check_counts: fewer output tokens than
    requests, ...), numbers beyond MAX_COUNT, a row with more fields than the header (a comma
    decimal), bytes that are not UTF-8; windows of one cell that overlap are refused.
    """
    path = Path(path)

    def check_header(columns: list[str]) -> None:
        unknown = [c for c in columns if c not in REQUIRED + OPTIONAL]
        missing = [c for c in REQUIRED if c not in columns]
        if missing or unknown:
            raise InputError(
                f"{path}: timing columns "
                + (f"missing {missing}" if missing else "")
                + ("; " if missing and unknown else "")
                + (f"unknown {unknown}" if unknown else "")
                + f"; required {list(REQUIRED)}, optional {list(OPTIONAL)}"
            )

    # People write timing files: a last line without a newline is kept (read_csv_lines).
    raw = read_csv_lines(path, "a timing CSV", cut_last_line=False, check_header=check_header).rows
    check_header(list(raw.columns))  # a file of no line at all has no header to check
    if raw.empty:
        raise InputError(f"{path}: a header but no windows")
    raw = raw.reset_index(drop=True)  # rows are named 1-based, as the "row" column counts them
    out = pd.DataFrame({"row": np.arange(1, len(raw) + 1)})
    for name, given in (("model", model), ("platform", platform)):
        if given is not None:
            out[name] = str(given)
        elif name in raw.columns:
            out[name] = raw[name].str.strip()
        else:
            raise InputError(
                f"{path}: no {name!r} column; add one or give the {name} of every window "
                f"(--{name})"
            )
        bad = ~out[name].str.match(_NAME)
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise InputError(
                f"{path}, row {i + 1}, {name} {out[name].iloc[i]!r}: use letters, digits, '.', "
                "'_' and '-' only (it becomes a folder name)"
            )
    if batch_size is not None:
        out["batch_size"] = int(batch_size)
    elif "batch_size" in raw.columns:
        out["batch_size"] = _ints(raw["batch_size"], "batch_size", path, 1)
    else:
        raise InputError(f"{path}: no 'batch_size' column; add one or give --batch-size")
    out["n_requests"] = (
        _ints(raw["n_requests"], "n_requests", path, 1)
        if "n_requests" in raw.columns
        else out["batch_size"].to_numpy()
    )
    out["repeat"] = _ints(raw["repeat"], "repeat", path, 0) if "repeat" in raw.columns else 0
    out["start_wall_ns"] = _times(raw["start"], tz, f"{path}, column 'start'")
    out["end_wall_ns"] = _times(raw["end"], tz, f"{path}, column 'end'")
    out["first_token_wall_ns"] = (
        _times(raw["first_token"], tz, f"{path}, column 'first_token'")
        if "first_token" in raw.columns
        else -1
    )
    out["output_tokens"] = _ints(raw["output_tokens"], "output_tokens", path, 1)
    out["input_tokens"] = (
        _ints(raw["input_tokens"], "input_tokens", path, 0) if "input_tokens" in raw.columns else -1
    )
    out["max_output_tokens"] = (
        _ints(raw["max_output_tokens"], "max_output_tokens", path, 1)
        if "max_output_tokens" in raw.columns
        else -(-out["output_tokens"] // out["n_requests"])
    )
    if "input_tokens" in raw.columns:
        bad = out["input_tokens"] < out["n_requests"]
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise InputError(
                f"{path}, row {i + 1}: input_tokens {int(out['input_tokens'].iloc[i])} for "
                f"{int(out['n_requests'].iloc[i])} requests; every request has a prompt of at "
                "least one token"
            )
    _check_counts(out, path)
    bad = out["end_wall_ns"] <= out["start_wall_ns"]
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise InputError(f"{path}, row {i + 1}: end {raw['end'].iloc[i]!r} is not after start")
    if "first_token" in raw.columns:
        ft = out["first_token_wall_ns"]
        bad = (ft < out["start_wall_ns"]) | (ft > out["end_wall_ns"])
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise InputError(f"{path}, row {i + 1}: first_token is not within [start, end]")
    for key, cell in out.groupby(["platform", "model", "batch_size"]):
        w = cell.sort_values("start_wall_ns")
        overlap = np.flatnonzero(
            w["start_wall_ns"].to_numpy()[1:] < w["end_wall_ns"].to_numpy()[:-1]
        )
        if len(overlap):
            a, b = w["row"].iloc[overlap[0]], w["row"].iloc[overlap[0] + 1]
            cell = CellKey(key[0], key[1], STATIC, int(key[2])).name
            raise InputError(
                f"{path}: rows {a} and {b} of cell {cell} overlap in time; "
                "a cell's windows must be disjoint (their energies are summed)"
            )
    return out


# --- cells --------------------------------------------------------------------------------------


def _utc(t_ns: int) -> str:
    return pd.Timestamp(int(t_ns), unit="ns", tz="UTC").isoformat()


def check_coverage(log: PowerLog, windows: pd.DataFrame, timing_path: str | Path) -> None:
    """Every window lies inside the log's span; otherwise InputError naming the row, both spans in
    UTC, and, where the gap is close to whole hours, the likely time-zone mix-up."""
    t = log.samples["t_wall_ns"].to_numpy()
    first, last = int(t.min()), int(t.max())
    for w in windows.itertuples():
        if w.start_wall_ns >= first and w.end_wall_ns <= last:
            continue
        shift_ns = (w.start_wall_ns - first) if w.start_wall_ns < first else (w.end_wall_ns - last)
        hours = shift_ns / 3.6e12
        hint = ""
        if abs(hours) >= 0.9 and abs(hours - round(hours)) < 0.1:
            hint = (
                f"; the window is about {abs(round(hours))} h "
                f"{'before' if hours < 0 else 'after'} the log: are both read in the same zone "
                "(tz of the log's local times, offsets of the timing file)?"
            )
        raise InputError(
            f"{timing_path}, row {w.row}: window [{_utc(w.start_wall_ns)}, {_utc(w.end_wall_ns)}] "
            f"is not inside the power log {log.path} [{_utc(first)}, {_utc(last)}]; the log must "
            f"run from before each window to after it{hint}"
        )


def _split(total: int, n: int) -> list[int]:
    """total as n whole parts differing by at most one (the larger first)."""
    base, extra = divmod(int(total), n)
    return [base + 1] * extra + [base] * (n - extra)


def cell_batches(windows: pd.DataFrame) -> pd.DataFrame:
    """A BATCHES table of one cell's windows. Per-request lengths are not in a timing file: the
    window's totals are split evenly over its requests (for FLOPs and bytes). A window without
    input_tokens has input_tokens 0 and prompt_lens [] (unknown: no FLOPs can be counted); one
    without first_token has first_token_ns = first_token_wall_ns = metrics.UNKNOWN_TIME_NS (-1),
    which metrics reads as unknown (NaN TTFT and TPOT, flag first_token_unknown), never as a
    latency. meta.json's imported.first_token_known / input_tokens_known say which."""
    from tokencarbon.metrics import UNKNOWN_TIME_NS

    rows = []
    for batch_index, w in enumerate(windows.sort_values(["repeat", "start_wall_ns"]).itertuples()):
        first = w.first_token_wall_ns if w.first_token_wall_ns >= 0 else UNKNOWN_TIME_NS
        input_tokens = max(int(w.input_tokens), 0)
        rows.append(
            {
                "repeat": int(w.repeat),
                "batch_index": batch_index,
                "n_requests": int(w.n_requests),
                "input_tokens": input_tokens,
                "output_tokens": int(w.output_tokens),
                "padded_input_len": 0,
                "max_output_tokens": int(w.max_output_tokens),
                # No monotonic clock was recorded: the wall clock stands in for it.
                "start_ns": int(w.start_wall_ns),
                "first_token_ns": int(first),
                "end_ns": int(w.end_wall_ns),
                "start_wall_ns": int(w.start_wall_ns),
                "first_token_wall_ns": int(first),
                "end_wall_ns": int(w.end_wall_ns),
                "prompt_lens": (
                    _split(input_tokens, int(w.n_requests)) if w.input_tokens >= 0 else []
                ),
                "output_lens": _split(int(w.output_tokens), int(w.n_requests)),
            }
        )
    for _, rep in pd.DataFrame(rows).groupby("repeat"):
        for k, i in enumerate(rep.index):
            rows[i]["batch_index"] = k
    return tables.check(pd.DataFrame(rows), tables.BATCHES, "imported windows")


def cell_power(
    log: PowerLog, windows: pd.DataFrame, idle: tuple[int, int] | None = None
) -> pd.DataFrame:
    """The POWER rows of one cell: run samples from the last before its first window to the first
    after its last, and (given an idle window) the samples inside it as phase "idle"."""
    s = log.samples.sort_values("t_wall_ns").reset_index(drop=True)
    t = s["t_wall_ns"].to_numpy()
    lo = max(int(np.searchsorted(t, windows["start_wall_ns"].min(), side="right")) - 1, 0)
    hi = min(int(np.searchsorted(t, windows["end_wall_ns"].max(), side="left")), len(t) - 1)
    run = s.iloc[lo : hi + 1].assign(phase="run")
    parts = []
    if idle is not None:
        start, end = idle
        inside = s[(s["t_wall_ns"] >= start) & (s["t_wall_ns"] <= end)]
        if len(inside) < 2:
            raise InputError(
                f"{log.path}: the idle window [{_utc(start)}, {_utc(end)}] holds {len(inside)} "
                "sample(s); idle power needs at least 2"
            )
        if end >= windows["start_wall_ns"].min() and start <= windows["end_wall_ns"].max():
            raise InputError(
                f"idle window [{_utc(start)}, {_utc(end)}] overlaps the measured windows; give a "
                "time when the device ran nothing"
            )
        parts.append(inside.assign(phase="idle"))
    parts.append(run)
    return tables.check(pd.concat(parts, ignore_index=True), tables.POWER, log.path)


def _sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


UNKNOWN_DEVICE = "unknown (imported)"


def logged_device_name(log: PowerLog) -> str | None:
    """The GPU name a log records: nvidia-smi's `name` column, CodeCarbon's gpu_model without its
    "N x " prefix; None where the log names none (dmon and dcgmi logs, a CSV without `name`)."""
    name = log.device.get("name") or log.device.get("gpu_model")
    return re.sub(r"^\d+ x ", "", str(name).strip()) if name else None


def cell_device_name(
    log: PowerLog, platform: str, given: str | None = None, given_as: str = "--device-name"
) -> str:
    """The device a cell of `platform` ran on: `given` (where the log names none), else the GPU
    name the log records (logged_device_name), else UNKNOWN_DEVICE.

    platform must be a row of resources/platforms.csv (ConfigError naming the valid rows), and a
    known name must match that row and no other (platforms.check_device: HardwareMismatchError
    naming the device, the row's pattern and the row it is; InputError where rows are ambiguous):
    metrics judge a cell against its row by this name. `given` contradicting the log's own name is
    refused naming both (given_as: how it was given, "--device-name" or a config key). An unknown
    name is accepted here (a bare import); the workflow asks for it (check_imported_platform).
    """
    from tokencarbon.platforms import check_device, load_platforms

    table = load_platforms()
    if platform not in table:
        raise ConfigError(
            f"platform {platform!r} is no row of resources/platforms.csv; valid rows: "
            f"{', '.join(table)} (a device without a row needs one: its peaks, memory, TDP and "
            "embodied carbon)"
        )
    logged = logged_device_name(log)
    given = str(given).strip() if given else None
    if given and logged and given != logged:
        raise InputError(
            f"{given_as} {given!r} contradicts the power log {log.path}, whose device is "
            f"{logged!r} ({_device_fields(log)}); the log's own name is the device that was "
            f"measured: leave {given_as} out, or import the log of that device"
        )
    name = given or logged
    if name:
        check_device(name, platform, table, where=given_as if given else str(log.path))
    return name or UNKNOWN_DEVICE


def _device_fields(log: PowerLog) -> str:
    return ", ".join(f"{k} {v}" for k, v in log.device.items()) or "no identifying column"


@dataclass(frozen=True)
class ImportedCell:
    platform: str
    model: str
    batch_size: int
    directory: Path
    windows: pd.DataFrame  # read_timing rows of this cell


def cell_directory(out_dir: str | Path, platform: str, model: str, batch_size: int) -> Path:
    """A static cell's folder under out_dir, a results/cells tree (plan.CellKey)."""
    return Path(out_dir) / CellKey(str(platform), str(model), STATIC, int(batch_size)).name


def write_cell(
    directory: str | Path,
    log: PowerLog,
    windows: pd.DataFrame,
    *,
    timing_path: str | Path,
    tz: str | None,
    architecture: str | None = None,
    dtype: str | None = None,
    idle: tuple[int, int] | None = None,
    device_name: str | None = None,
    force: bool = False,
    quantization: Any = None,
    device_name_as: str = "--device-name",
) -> Path:
    """Write one cell (batches.parquet, power.parquet, then meta.json, each atomically) from the
    windows of one (platform, model, batch_size). device_name, device_name_as: see
    cell_device_name (its `given` and `given_as`), checked before anything is written. quantization:
    the model's weight-only scheme as config gives it (models.<name>.quantization; None: none),
    recorded in meta.json as a measured cell records it. Refuses to replace a finished cell unless
    force.
    """
    from tokencarbon.quantization import parse_quantization, record
    from tokencarbon.energy import idle_power
    from tokencarbon.hardware import git_commit

    directory = Path(directory)
    if (directory / "meta.json").exists() and not force:
        raise InputError(
            f"{directory} already holds a finished cell; a cell is never replaced by accident: "
            "remove it, choose another --out, or pass --force"
        )
    platform, model, batch_size = (windows[c].iloc[0] for c in ("platform", "model", "batch_size"))
    device_name = cell_device_name(log, str(platform), device_name, device_name_as)
    check_coverage(log, windows, timing_path)
    batches = cell_batches(windows)
    power = cell_power(log, windows, idle)
    idle_power_w = math.nan
    if idle is not None:
        idle_rows = power[power["phase"] == "idle"]
        idle_power_w = idle_power(idle_rows, where=f"{log.path} (idle window)")[0]
    t = log.samples["t_wall_ns"].to_numpy()
    interval_s = float(np.median(np.diff(t)) / 1e9) if len(t) > 1 else math.nan
    mem = power.loc[power["phase"] == "run", "mem_used_bytes"]
    tables.write(batches, directory / "batches.parquet", tables.BATCHES)
    tables.write(power, directory / "power.parquet", tables.POWER)
    CellMeta.of(
        {
            "platform": str(platform),
            "model": str(model),
            "mode": "static",
            "batch_size": int(batch_size),
            "architecture": architecture or "unknown",
            "dtype": dtype or "unknown",
            **record(parse_quantization(quantization, f"models.{model}.quantization")),
            "backend": BACKEND,
            "engine": None,
            "device_name": device_name,
            "gpu_uuid": None,  # a power log names no card's UUID
            "arrival": "offline",
            "request_rate_per_s": None,
            # Requests of one repeat; windows per repeat (a timing file's repeats need not be
            # alike: the largest counts are kept).
            "n_requests": int(batches.groupby("repeat")["n_requests"].sum().max()),
            "n_batches": int(batches.groupby("repeat").size().max()),
            "repeats": int(batches["repeat"].nunique()),
            "max_batch_requests": int(batches["n_requests"].max()),
            "warmup_batches": 0,
            "window_start_wall_ns": int(batches["start_wall_ns"].min()),
            "window_end_wall_ns": int(batches["end_wall_ns"].max()),
            "idle_power_w": None if math.isnan(idle_power_w) else idle_power_w,
            "power_source": log.source,
            "power_interval_s": interval_s,
            "peak_memory_bytes": float(mem.max()) if mem.notna().any() else None,
            "foreign_cpu_share": None,  # not measured: the log holds only the device's power
            "cpu_steal_share": None,
            "foreign_gpu_processes": -1,
            "idle_shared": False,  # no idle window: the log is the device's power only
            "git_commit": git_commit(),
            "imported": {
                "power_log": str(Path(log.path).resolve()),
                "power_log_sha256": _sha256(log.path),
                "power_field": log.power_field,
                "power_kind": log.power_kind,
                "device": log.device,
                "devices_in_log": list(log.devices),
                "notes": list(log.notes),
                "timing": str(Path(timing_path).resolve()),
                "timing_sha256": _sha256(timing_path),
                "timing_rows": [int(r) for r in windows["row"]],
                "tz": tz,
                "first_token_known": bool((windows["first_token_wall_ns"] >= 0).all()),
                "input_tokens_known": bool((windows["input_tokens"] >= 0).all()),
                "per_request_lengths": "window totals split evenly over its requests",
            },
        }
    ).write(directory / "meta.json")
    return directory


def import_cells(
    log: PowerLog,
    timing: pd.DataFrame,
    out_dir: str | Path,
    *,
    timing_path: str | Path,
    tz: str | None = None,
    architecture: str | None = None,
    dtype: str | None = None,
    idle: tuple[int, int] | None = None,
    device_name: str | None = None,
    force: bool = False,
) -> list[ImportedCell]:
    """Write one cell per (platform, model, batch_size) of the timing windows under out_dir
    (results/cells layout). Every cell is checked (coverage, device name, existing cells) before
    any is written.
    """
    groups = list(timing.groupby(["platform", "model", "batch_size"], sort=True))
    for (platform, model, bs), windows in groups:
        check_coverage(log, windows, timing_path)
        cell_device_name(log, str(platform), device_name)
        d = cell_directory(out_dir, platform, model, int(bs))
        if (d / "meta.json").exists() and not force:
            raise InputError(
                f"{d} already holds a finished cell; a cell is never replaced by accident: "
                "remove it, choose another --out, or pass --force"
            )
    cells = []
    for (platform, model, bs), windows in groups:
        d = cell_directory(out_dir, platform, model, int(bs))
        write_cell(
            d, log, windows, timing_path=timing_path, tz=tz, architecture=architecture,
            dtype=dtype, idle=idle, device_name=device_name, force=True,
        )  # fmt: skip
        cells.append(ImportedCell(str(platform), str(model), int(bs), d, windows))
    return cells


def cell_measurement(
    log: PowerLog,
    windows: pd.DataFrame,
    *,
    intensity,
    pue: float = 1.0,
    fill=None,
    max_fill_s: float | None = DEFAULT_MAX_FILL_S,
) -> Any:
    """The Measurement (tokencarbon.monitor) of one cell's windows: energy summed over them by
    tokencarbon.energy, carbon by tokencarbon.carbon (fill and max_fill_s, s, as carbon.fill and
    carbon.max_fill_s), per output token."""
    from tokencarbon.monitor import measure_windows

    spans = [(int(s), int(e)) for s, e in zip(windows["start_wall_ns"], windows["end_wall_ns"])]
    first = windows.iloc[0]
    key = CellKey(str(first["platform"]), str(first["model"]), STATIC, int(first["batch_size"])).name
    return measure_windows(
        log.samples, spans, name=key, device=str(log.device or log.path), intensity=intensity,
        pue=pue, fill=fill, tokens=int(windows["output_tokens"].sum()),
        where=f"{log.path} (cell {key})", max_fill_s=max_fill_s,
    )  # fmt: skip


# --- the workflow's imported platforms (tokencarbon.plan reads them for the DAG) ---------------


def imported_windows(config: dict, models: list[str], platform: str) -> pd.DataFrame:
    """The timing file's windows of an imported platform, read when the DAG is built; ConfigError
    naming the key where it names models the config lacks."""
    spec = config["platforms"][platform]["imported"]
    windows = read_timing(
        spec["timing"],
        spec.get("tz"),
        model=spec.get("model"),
        platform=platform,
        batch_size=spec.get("batch_size"),
    )
    unknown = sorted(set(windows["model"]) - set(models))
    if unknown:
        raise ConfigError(
            f"config key platforms.{platform}.imported.timing: {spec['timing']} names models "
            f"{unknown} that are not keys of models ({', '.join(models)}); add them to models "
            "(architecture and dtype) or fix the timing file"
        )
    return windows


@functools.lru_cache(maxsize=8)
def _cached_log(path: str, stamp: tuple, options: tuple) -> PowerLog:
    return load_power_log(path, **dict(options))


def imported_power_log(config: dict, platform: str) -> PowerLog:
    """The power log of an imported platform, read with its platforms.<name>.imported options
    (cached per file version: the DAG build reads it once)."""
    spec = config["platforms"][platform]["imported"]
    path = Path(spec["power_log"])
    st = path.stat()
    options = (
        ("fmt", spec.get("format") or "auto"), ("tz", spec.get("tz")), ("gpu", spec.get("gpu")),
        ("power_draw", spec.get("power_draw") or "average"),
        ("component", spec.get("component") or "gpu"), ("all_gpus", bool(spec.get("all_gpus"))),
        ("run_id", spec.get("run_id")), ("start", spec.get("start")),
        ("delay_ms", spec.get("delay_ms")),
    )  # fmt: skip
    return _cached_log(str(path), (st.st_mtime_ns, st.st_size), options)


def imported_idle(config: dict, platform: str) -> tuple[int, int] | None:
    """platforms.<name>.imported.idle as (start, end) UTC ns, or None."""
    spec = config["platforms"][platform]["imported"]
    if not spec.get("idle"):
        return None
    t = parse_times(pd.Series(spec["idle"]), spec.get("tz"), f"platforms.{platform}.imported.idle")
    return int(t[0]), int(t[1])


def check_imported_platform(config: dict, models: list[str], platform: str) -> None:
    """What rule import_cell would refuse, refused when the DAG is built (a failed job would have
    Snakemake delete the cell it had built before): the power log and timing file read with the
    platform's options; every window inside the log; the idle span (if any) valid; and a device
    name, from the log or platforms.<name>.imported.device_name, that is the platform's row
    (compute_metrics judges the cells against their row by it: without one it cannot).
    Raises ConfigError naming the key and what would be valid.
    """
    key = f"config key platforms.{platform}.imported"
    spec = config["platforms"][platform]["imported"]
    try:
        log = imported_power_log(config, platform)
        windows = imported_windows(config, models, platform)
        device = cell_device_name(log, platform, spec.get("device_name"), f"{key}.device_name")
        idle = imported_idle(config, platform)
        for _, group in windows.groupby(["model", "batch_size"]):
            check_coverage(log, group, spec["timing"])
            if idle is not None:
                cell_power(log, group, idle)
    except (InputError, HardwareMismatchError) as exc:
        raise ConfigError(f"{key}: {exc}") from None
    if device == UNKNOWN_DEVICE:
        from tokencarbon.platforms import get_platform

        raise ConfigError(
            f"{key}: the power log {spec['power_log']} names no device ({log.source}: "
            f"{_device_fields(log)}), and compute_metrics judges imported cells against their "
            f"platform row by the device's name; give {key}.device_name, the GPU's name as "
            f"`nvidia-smi -L` prints it (row {platform!r} takes names matching "
            f"{get_platform(platform).device_name_pattern!r}), or log with a name column "
            "(--query-gpu=timestamp,name,power.draw,...)"
        )

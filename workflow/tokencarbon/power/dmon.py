"""Import `nvidia-smi dmon` and DCGM `dcgmi dmon` text logs as a POWER table of one GPU.

Both print whitespace-aligned columns under '#' (nvidia-smi) or '#Entity' (dcgmi) header lines that
repeat every screenful, one row per GPU per interval:

    nvidia-smi dmon -s pucm -o DT        #Date       Time        gpu    pwr  gtemp ...  mclk  pclk
                                         #YYYYMMDD   HH:MM:SS    Idx      W      C ...   MHz   MHz
                                          20250115   12:00:00      0     70     35 ...  2619  1980
    dcgmi dmon -e 155,156,150 -d 100     #Entity   POWER   TOTEC   GTEMP
                                         ID        W       mJ      C
                                         GPU 0     63.152  1234567 35

Power ('pwr', DCGM field 155 'POWER') is the driver's power usage, the same reading as nvidia-smi's
power.draw: a 1 s average on Ampere and newer (see power/nvidia_smi.py), so it goes to power_avg_w
unless the caller states power_draw="instant". DCGM's field 156 'TOTEC' (total energy since the
driver loaded, mJ) becomes energy_counter_j. nvidia-smi dmon times come from its -o DT columns
(local time, 1 s resolution); dcgmi prints no time at all, so each line must carry one (a wrapper
such as `dcgmi dmon ... | ts '%Y-%m-%dT%H:%M:%.S%z'` or an epoch-seconds prefix), or the caller
gives the start time and the -d delay and times are reconstructed (noted in PowerLog.notes).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from tokencarbon.errors import ConfigError, InputError
from tokencarbon.power.csvfile import decode_text
from tokencarbon.power.nvidia_smi import MAX_DEVICE_POWER_W, POWER_DRAW_KINDS, PowerLog
from tokencarbon.power.timestamps import parse_times
from tokencarbon.tables import POWER, check

# column name -> (POWER column, factor to SI); "power" is placed by power_draw.
_SMI_COLUMNS = {
    "pwr": ("power", 1.0),
    "gtemp": ("temperature_c", 1.0),
    "sm": ("util_pct", 1.0),
    "fb": ("mem_used_bytes", 2.0**20),  # dmon prints MB meaning MiB, as memory.used
    "mclk": ("mem_clock_mhz", 1.0),
    "pclk": ("sm_clock_mhz", 1.0),
}
_DCGM_COLUMNS = {
    "POWER": ("power", 1.0),  # field 155, W
    "TOTEC": ("energy_counter_j", 1e-3),  # field 156, mJ
    "GTEMP": ("temperature_c", 1.0),  # field 150
    "SMCLK": ("sm_clock_mhz", 1.0),  # field 100
    "MMCLK": ("mem_clock_mhz", 1.0),  # field 101
    "GPUTL": ("util_pct", 1.0),  # field 203
    "FBUSD": ("mem_used_bytes", 2.0**20),  # field 252, MiB
}
_EPOCH = re.compile(r"^\d{9,11}(?:\.\d+)?$")
_ISO_START = re.compile(r"^\d{4}-\d{2}-\d{2}T\S+$")


def _power_column(power_draw: str) -> str:
    if power_draw not in POWER_DRAW_KINDS:
        raise ConfigError(
            f"power_draw={power_draw!r}: say what the log's power reading is, one of "
            f"{POWER_DRAW_KINDS} ('average' on Ampere (except A100) and newer, 'instant' on A100 "
            "and older)"
        )
    return "power_avg_w" if power_draw == "average" else "power_w"


def _value(text: str, where: str, *, power: bool = False) -> float:
    """A dmon value as a float ('-' and 'N/A' as NaN); InputError naming where for text, a value
    that is not finite or below 0, and (power) above MAX_DEVICE_POWER_W."""
    if text in ("-", "N/A", "NA", "[N/A]"):
        return np.nan
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"{where}: {text!r} is not a number (or '-' / 'N/A')") from None
    if not (math.isfinite(value) and value >= 0):
        raise InputError(f"{where}: {text!r} is not a finite number >= 0")
    if power and value > MAX_DEVICE_POWER_W:
        raise InputError(
            f"{where}: {text!r} W is not a power one GPU can draw (0 to {MAX_DEVICE_POWER_W:g} W)"
        )
    return value


def _lines(path: Path, what: str) -> tuple[list[str], tuple[str, ...]]:
    """The log's lines; a last line without its newline (the logger stopped mid-line) dropped,
    with a note."""
    text = decode_text(path, what)
    lines = text.splitlines()
    if lines and not text.endswith(("\n", "\r")) and len(lines) > 1:
        note = (
            f"line {len(lines)} dropped: the file ends in the middle of it "
            f"({lines[-1][-60:]!r}, no newline): the logger was stopped while writing it"
        )
        return lines[:-1], (note,)
    return lines, ()


def _frame(rows: list[dict], power_column: str, source: str, path: Path) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    for column in POWER.names:
        if column not in df:
            df[column] = np.nan
    if "power" in df:
        df[power_column] = df.pop("power")
    df["phase"], df["source"], df["modeled"] = "run", source, False
    df["throttle_reasons"] = -1
    df["device_index"] = df["device_index"].fillna(-1).astype("int64")
    t = df["t_wall_ns"].to_numpy()
    bad = np.flatnonzero(np.diff(t) <= 0)
    if len(bad):
        raise InputError(
            f"{path}, line {int(df['line'].iloc[bad[0] + 1])}: this sample of GPU "
            f"{int(df['device_index'].iloc[0])} does not come after the previous one"
        )
    return check(df.drop(columns=["line"]), POWER, path)


def _choose(devices: list[str], gpu, path: Path, how: str) -> str:
    if gpu is None:
        if len(devices) == 1:
            return devices[0]
        raise InputError(
            f"{path} holds {len(devices)} GPUs: {', '.join(devices)}. Energy is per GPU: choose "
            f"one by its {how}, e.g. gpu={devices[0].split()[-1]!r} (command line: --gpu "
            f"{devices[0].split()[-1]})"
        )
    wanted = [d for d in devices if d == str(gpu) or d.split()[-1] == str(gpu)]
    if len(wanted) != 1:
        raise InputError(f"{path}: gpu={gpu!r} matches none of its GPUs: {', '.join(devices)}")
    return wanted[0]


def import_nvidia_smi_dmon(
    path: str | Path, tz: str | None = None, *, gpu=None, power_draw: str = "average"
) -> PowerLog:
    """Read an `nvidia-smi dmon -o DT` log (any -s set): one GPU's POWER samples.

    tz: the zone of its local Date/Time columns (IANA name or '+01:00'). gpu: the 'gpu' (Idx)
    value of one GPU, required when the log holds several. power_draw: what 'pwr' is (see module).
    Raises InputError naming file and line (no Date/Time columns, unknown values, several GPUs).
    """
    path = Path(path)
    power_column = _power_column(power_draw)
    lines, cut = _lines(path, "an nvidia-smi dmon log")
    names: list[str] | None = None
    rows: list[tuple[int, list[str]]] = []
    for i, line in enumerate(lines, start=1):
        tokens = line.split()
        if not tokens:
            continue
        if tokens[0].startswith("#"):
            head = [t for t in (tokens[0][1:], *tokens[1:]) if t]
            if names is None and "gpu" in head:
                names = head
            continue
        if names is None:
            raise InputError(
                f"{path}, line {i}: a value line before the '# gpu ...' header; expected "
                "`nvidia-smi dmon` output with its header lines"
            )
        if len(tokens) != len(names):
            raise InputError(
                f"{path}, line {i}: {len(tokens)} values for the {len(names)} columns {names}"
            )
        rows.append((i, tokens))
    if names is None or not rows:
        raise InputError(f"{path}: no `nvidia-smi dmon` header ('# gpu pwr ...') and samples found")
    if "Date" not in names or "Time" not in names:
        raise InputError(
            f"{path}: columns {names} have no Date and Time; log with `nvidia-smi dmon -o DT` so "
            "each sample carries its time"
        )
    if "pwr" not in names:
        raise InputError(f"{path}: no 'pwr' column among {names}; log with `nvidia-smi dmon -s p`")
    col = {n: k for k, n in enumerate(names)}
    devices = list(dict.fromkeys(t[col["gpu"]] for _, t in rows))
    chosen = _choose([f"gpu {d}" for d in devices], gpu, path, "'gpu' (Idx) value")
    rows = [(i, t) for i, t in rows if f"gpu {t[col['gpu']]}" == chosen]
    stamps = pd.Series([f"{t[col['Date']]} {t[col['Time']]}" for _, t in rows])
    t_ns = parse_times(
        stamps, tz, f"{path}, columns Date/Time", local_format="%Y%m%d %H:%M:%S",
        lines=[i for i, _ in rows],
    )  # fmt: skip
    out = []
    for (i, t), ns in zip(rows, t_ns):
        row = {"line": i, "t_wall_ns": int(ns), "device_index": int(t[col["gpu"]])}
        for name, (column, factor) in _SMI_COLUMNS.items():
            if name in col:
                row[column] = factor * _value(
                    t[col[name]], f"{path}, line {i}, column {name!r}", power=name == "pwr"
                )
        out.append(row)
    samples = _frame(out, power_column, "nvidia_smi_dmon", path)
    return PowerLog(
        samples=samples, path=str(path), source="nvidia_smi_dmon", power_field="pwr",
        power_kind=power_draw, device={"index": chosen.split()[-1]},
        devices=tuple({"index": d} for d in devices),
        notes=("nvidia-smi dmon timestamps have 1 s resolution", *cut),
    )  # fmt: skip


def _prefix_time(token: str) -> bool:
    return bool(_EPOCH.match(token) or _ISO_START.match(token))


def import_dcgmi_dmon(
    path: str | Path,
    tz: str | None = None,
    *,
    gpu=None,
    power_draw: str = "average",
    start: str | None = None,
    delay_ms: float | None = None,
) -> PowerLog:
    """Read a `dcgmi dmon -e <fields>` log: one GPU's POWER samples.

    Each line's time: a leading epoch-seconds or ISO-8601 token (added by a wrapper), or, for a log
    without one, `start` (the first sample's time, ISO-8601 or local in tz) and `delay_ms` (dmon's
    -d), sample k of a GPU at start + k x delay_ms (noted as reconstructed). gpu: the entity id
    ("0" for "GPU 0"), required when the log holds several. Raises InputError naming the line.
    """
    path = Path(path)
    power_column = _power_column(power_draw)
    lines, cut = _lines(path, "a dcgmi dmon log")
    names: list[str] | None = None
    rows = []  # (line, time text or None, entity, values)
    for i, line in enumerate(lines, start=1):
        tokens = line.split()
        if not tokens:
            continue
        stamp = None
        if _prefix_time(tokens[0]) and len(tokens) > 1:
            stamp, tokens = tokens[0], tokens[1:]
        if tokens[0] == "#Entity":
            names = tokens[1:]
            continue
        if tokens[0] == "ID" or tokens[0].startswith("#"):
            continue  # the units line, or a comment
        if names is None:
            raise InputError(
                f"{path}, line {i}: a value line before the '#Entity ...' header; expected "
                "`dcgmi dmon` output with its header lines"
            )
        if len(tokens) != len(names) + 2:  # the entity is two tokens: "GPU 0"
            raise InputError(
                f"{path}, line {i}: {len(tokens)} tokens; expected an entity ('GPU 0') and "
                f"{len(names)} values for {names}"
            )
        rows.append((i, stamp, f"{tokens[0]} {tokens[1]}", tokens[2:]))
    if names is None or not rows:
        raise InputError(f"{path}: no `dcgmi dmon` header ('#Entity ...') and samples found")
    if "POWER" not in names:
        raise InputError(
            f"{path}: columns {names} have no POWER (field 155); log with `dcgmi dmon -e 155,156` "
            "(156, TOTEC, adds the energy counter)"
        )
    devices = list(dict.fromkeys(r[2] for r in rows))
    chosen = _choose(devices, gpu, path, "entity id")
    rows = [r for r in rows if r[2] == chosen]
    notes = []
    stamps = [r[1] for r in rows]
    where = f"{path}, line times"
    if all(s is not None for s in stamps):
        epoch = [bool(_EPOCH.match(s)) for s in stamps]
        if all(epoch):
            from decimal import Decimal

            t_ns = np.array([int(Decimal(s) * 10**9) for s in stamps], dtype=np.int64)
        else:
            t_ns = parse_times(pd.Series(stamps), tz, where, lines=[r[0] for r in rows])
    elif any(s is not None for s in stamps):
        first = next(r[0] for r in rows if r[1] is None)
        raise InputError(f"{path}, line {first}: no time prefix, while other lines have one")
    else:
        if start is None or delay_ms is None or not delay_ms > 0:
            raise InputError(
                f"{path}: dcgmi dmon prints no times; prefix each line with one (e.g. `dcgmi "
                "dmon ... | ts '%Y-%m-%dT%H:%M:%.S%z'`) or give start (the first sample's time) "
                "and delay_ms (dmon's -d)"
            )
        t0 = int(parse_times(pd.Series([start]), tz, "start")[0])
        t_ns = t0 + np.round(np.arange(len(rows)) * delay_ms * 1e6).astype(np.int64)
        notes.append(
            f"times reconstructed as start + k x {delay_ms:g} ms (dcgmi dmon prints none); "
            "dmon's own delay drift is not seen"
        )
    index = int(chosen.split()[-1]) if chosen.split()[-1].isdigit() else -1
    out = []
    for (i, _, _, values), ns in zip(rows, t_ns):
        row = {"line": i, "t_wall_ns": int(ns), "device_index": index}
        for k, name in enumerate(names):
            if name in _DCGM_COLUMNS:
                column, factor = _DCGM_COLUMNS[name]
                row[column] = factor * _value(
                    values[k], f"{path}, line {i}, column {name!r}", power=name == "POWER"
                )
        out.append(row)
    samples = _frame(out, power_column, "dcgmi_dmon", path)
    return PowerLog(
        samples=samples, path=str(path), source="dcgmi_dmon",
        power_field="POWER",
        power_kind=power_draw, device={"entity": chosen},
        devices=tuple({"entity": d} for d in devices), notes=(*notes, *cut),
    )  # fmt: skip

"""Import a raw `nvidia-smi --query-gpu=... --format=csv` log as a POWER table of one GPU.

What `power.draw` means depends on the GPU. NVIDIA's NVML reference for nvmlDeviceGetPowerUsage
(docs.nvidia.com/deploy/nvml-api, the call behind nvidia-smi's power.draw): "On Ampere (except
GA100) or newer GPUs, the API returns power averaged over 1 sec interval. On GA100 and older
architectures, instantaneous power is returned." Newer drivers' `nvidia-smi --help-query-gpu`
offers both explicitly: `power.draw.average` (the 1 s average) and `power.draw.instant`. So:

- power.draw.instant -> POWER's power_w (instant power);
- power.draw.average -> power_avg_w;
- power.draw -> power_avg_w by default (what it is on an H100, H200, L4, RTX 30/40...), or power_w
  when the caller states power_draw="instant" (a V100, T4 or A100, where it is instant).

PowerLog records which field energy will be integrated from and whether it is an average; an
energy integrated from a 1 s average lags the power it describes by about half a second, which
matters on windows of a few seconds (docs/reliability.md), so it is flagged downstream.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from tokencarbon.errors import ConfigError, InputError
from tokencarbon.power.csvfile import read_csv_lines
from tokencarbon.power.timestamps import parse_times
from tokencarbon.tables import POWER, check

SOURCE = "nvidia_smi_csv"
POWER_DRAW_KINDS = ("average", "instant")

# nvidia-smi query name -> (POWER column, unit nvidia-smi writes, factor to the SI column).
# power.draw, power.draw.average and power.draw.instant are placed by _power_columns().
_NUMERIC = {
    "utilization.gpu": ("util_pct", "%", 1.0),
    "memory.used": ("mem_used_bytes", "MiB", 2.0**20),
    "temperature.gpu": ("temperature_c", "", 1.0),
    "clocks.sm": ("sm_clock_mhz", "MHz", 1.0),
    "clocks.current.sm": ("sm_clock_mhz", "MHz", 1.0),
    "clocks.mem": ("mem_clock_mhz", "MHz", 1.0),
    "clocks.current.memory": ("mem_clock_mhz", "MHz", 1.0),
}
_THROTTLE = ("clocks_event_reasons.active", "clocks_throttle_reasons.active")  # hex bitmask
# Columns that tell GPUs apart, in the order a refusal suggests them (index is shortest to type);
# `name` (nvidia-smi's product name) describes a GPU but two GPUs of a machine may share it.
DEVICE_COLUMNS = ("index", "pci.bus_id", "uuid", "serial")
# nvidia-smi --help-query-gpu gives each of these two names.
_DEVICE_ALIASES = {"gpu_bus_id": "pci.bus_id", "gpu_uuid": "uuid", "gpu_serial": "serial",
                   "gpu_name": "name"}  # fmt: skip
# No single GPU draws this much: the largest rated part, a GB200 superchip, is 2.7 kW (NVIDIA).
MAX_DEVICE_POWER_W = 10_000.0
_TIMESTAMP_FORMAT = "%Y/%m/%d %H:%M:%S.%f"
_HEADER = re.compile(r"^(?P<name>\S+)(?: \[(?P<unit>[^\]]*)\])?$")
_VALUE = re.compile(r"^(?P<number>[-+0-9.eE]+)(?: (?P<unit>\S+))?$")


@dataclass(frozen=True)
class PowerLog:
    """One GPU's samples from an external log, and what its power column is.

    samples: a POWER table (tables.POWER), one device, phase "run", sorted by time.
    power_field: the log's field energy is integrated from ("power.draw.instant", "power.draw").
    power_kind: "instant" (in power_w) or "average" (a 1 s average, in power_avg_w only).
    device: identifying fields of the chosen GPU ({"index": "0", "uuid": ..., "name": ...}),
      empty when the log names none. devices: those of every GPU in the log.
    source: the log's kind ("nvidia_smi_csv", "nvidia_smi_dmon", "dcgmi_dmon", "codecarbon").
    """

    samples: pd.DataFrame
    path: str
    source: str
    power_field: str
    power_kind: str
    device: dict = field(default_factory=dict)
    devices: tuple = ()
    notes: tuple[str, ...] = ()  # what the reader assumed (coarse timestamps, reconstructed times)

    @property
    def energy_from_average(self) -> bool:
        return self.power_kind == "average"


def _numbers(raw: pd.Series, unit: str, where: str, *, power: bool = False) -> np.ndarray:
    """Values like '22.89 W' or '22.89' as floats; '[N/A]', '[Not Supported]' and kin as NaN.

    raw: the column's text, indexed by the file's line numbers. A column is written with its unit
    after every value (--format=csv) or after none (nounits): a value without the unit its
    neighbours carry was cut or edited, and is refused naming its line, as is a value that is not
    finite, or (power) negative or above MAX_DEVICE_POWER_W.
    """
    out = np.full(len(raw), np.nan)
    with_unit = None  # the first line whose value carries the unit
    for i, text in enumerate(raw):
        if text.startswith("["):
            continue
        m = _VALUE.match(text)
        if m is None or (m["unit"] is not None and m["unit"] != unit):
            raise InputError(
                f"{where}, line {raw.index[i]}: value {text!r} is not a number in "
                f"{unit or 'no unit'}"
            )
        if m["unit"] is not None and with_unit is None:
            with_unit = i
        try:
            value = float(m["number"])
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or (power and not 0 <= value <= MAX_DEVICE_POWER_W):
            reason = (
                "is not a finite number" if not math.isfinite(value)
                else f"is not a power one GPU can draw (0 to {MAX_DEVICE_POWER_W:g} W)"
            )  # fmt: skip
            raise InputError(f"{where}, line {raw.index[i]}: value {text!r} {reason}")
        out[i] = value
    if with_unit is not None and unit:
        for i, text in enumerate(raw):
            if not text.startswith("[") and not text.endswith(f" {unit}"):
                raise InputError(
                    f"{where}, line {raw.index[i]}: value {text!r} has no unit, while the "
                    f"column's values carry ' {unit}' (line {raw.index[with_unit]}: "
                    f"{raw.iloc[with_unit]!r}): a line cut or edited in the middle? Correct or "
                    "remove that line"
                )
    return out


def _bitmasks(raw: pd.Series, where: str) -> np.ndarray:
    """Hex bitmasks like '0x0000000000000001' as ints; '[N/A]' and kin as -1."""
    out = np.full(len(raw), -1, dtype=np.int64)
    for i, text in enumerate(raw):
        if text.startswith("["):
            continue
        try:
            out[i] = int(text, 16)
            if out[i] < 0:
                raise ValueError(text)
        except (ValueError, OverflowError) as exc:
            raise InputError(
                f"{where}, line {raw.index[i]}: {text!r} is not a 64-bit hex bitmask"
            ) from exc
    return out


def _power_columns(headers: dict, power_draw: str, path: Path) -> dict[str, str]:
    """{POWER column: nvidia-smi field} for power_w and power_avg_w (see the module docstring)."""
    if power_draw not in POWER_DRAW_KINDS:
        raise ConfigError(
            f"power_draw={power_draw!r}: say what the log's power.draw is, one of "
            f"{POWER_DRAW_KINDS} ('average' on Ampere (except A100) and newer, 'instant' on A100, "
            "V100, T4 and older)"
        )
    out = {}
    if "power.draw.instant" in headers:
        out["power_w"] = "power.draw.instant"
    elif "power.draw" in headers and power_draw == "instant":
        out["power_w"] = "power.draw"
    if "power.draw.average" in headers:
        out["power_avg_w"] = "power.draw.average"
    elif "power.draw" in headers and power_draw == "average":
        out["power_avg_w"] = "power.draw"
    if not out:
        raise InputError(
            f"{path}: an nvidia-smi log needs a 'timestamp' column and one of 'power.draw [W]', "
            f"'power.draw.instant [W]' or 'power.draw.average [W]'; found "
            f"{[headers[h][0] for h in headers]}"
        )
    return out


def _device_label(device: dict) -> str:
    first, *rest = [f"{k} {v}" for k, v in device.items() if k in DEVICE_COLUMNS]
    extra = [f"{k} {v}" for k, v in device.items() if k not in DEVICE_COLUMNS] + rest
    return first + (f" ({', '.join(extra)})" if extra else "")


def _match_device(value: str, device: dict) -> bool:
    """Does the user's choice name this GPU: its index, its PCI bus id (the domain may be left
    out, any case), its UUID (or a prefix of it, as CUDA_VISIBLE_DEVICES accepts) or its board
    serial number?"""
    value = str(value).strip()
    if "index" in device and value == device["index"]:
        return True
    bus = device.get("pci.bus_id")
    if bus and ":" in value and bus.lower().endswith(value.lower()):
        return True
    uuid = device.get("uuid")
    if uuid and value.upper().startswith("GPU-") and uuid.startswith(value):
        return True
    return bool(device.get("serial")) and value == device["serial"]


def _select_device(
    raw: pd.DataFrame, headers: dict, gpu: str | int | None, path: Path
) -> tuple[pd.DataFrame, dict, tuple]:
    """The rows of one GPU, its identifying fields and those of every GPU in the log.

    GPUs are told apart by the DEVICE_COLUMNS the log has; each GPU's fields (and its `name`)
    must be the same on every one of its rows. Without such a column, a `name` column still names
    the GPU (one name: one GPU; several names: several GPUs, refused).
    """
    id_cols = [c for c in DEVICE_COLUMNS if c in headers]
    if not id_cols:
        ts = raw[headers["timestamp"][0]]
        repeated = ts[ts.duplicated(keep=False)]
        if len(repeated):
            raise InputError(
                f"{path}, line {repeated.index[1]}: timestamp {repeated.iloc[0]!r} appears "
                f"{int((ts == repeated.iloc[0]).sum())} times: the log holds several GPUs but no "
                f"column says which row is which; log again with --query-gpu=timestamp,index,"
                f"power.draw,... (or one GPU with nvidia-smi -i <index>)"
            )
        names = raw[headers["name"][0]] if "name" in headers else None
        if names is not None and names.nunique() > 1:
            first = names.drop_duplicates()
            listing = "; ".join(f"{n!r} (line {line})" for line, n in first.items())
            raise InputError(
                f"{path}: the 'name' column names {len(first)} GPUs: {listing}, and no "
                f"{' / '.join(DEVICE_COLUMNS)} column says which row is which; energy is per GPU: "
                "log one GPU (nvidia-smi -i <index>), or add index to --query-gpu and choose one"
            )
        if gpu is not None:
            raise InputError(
                f"{path}: gpu={gpu!r} was chosen, but the log has no {' / '.join(DEVICE_COLUMNS)} "
                f"column to find it by; the log holds one GPU: leave the choice out"
            )
        if names is None:
            return raw, {}, ()
        device = {"name": str(names.iloc[0])}
        return raw, device, (device,)
    key = raw[[headers[c][0] for c in id_cols]].astype(str).agg("|".join, axis=1)
    described = [c for c in (*id_cols, "name") if c in headers]
    devices = []
    for k in dict.fromkeys(key):  # file order
        rows = raw.loc[key == k]
        first = rows.iloc[0]
        devices.append({c: str(first[headers[c][0]]) for c in described})
        if "name" in headers:
            names = rows[headers["name"][0]]
            other = names[names != first[headers["name"][0]]]
            if len(other):
                raise InputError(
                    f"{path}, line {other.index[0]}: GPU {_device_label(devices[-1])} is named "
                    f"{other.iloc[0]!r} here and {first[headers['name'][0]]!r} at line "
                    f"{rows.index[0]}: logs of two machines in one file? Split them"
                )
    if gpu is None:
        if len(devices) == 1:
            return raw, devices[0], tuple(devices)
        col = id_cols[0]
        raise InputError(
            f"{path} holds {len(devices)} GPUs: "
            + "; ".join(_device_label(d) for d in devices)
            + f". Energy is per GPU: choose one by its {' or '.join(repr(c) for c in id_cols)} "
            f"value, e.g. gpu={devices[0][col]!r} (command line: --gpu {devices[0][col]})"
        )
    matches = [i for i, d in enumerate(devices) if _match_device(gpu, d)]
    if len(matches) != 1:
        raise InputError(
            f"{path}: gpu={gpu!r} "
            + ("matches several GPUs" if matches else "matches none of its GPUs")
            + ": "
            + "; ".join(_device_label(d) for d in devices)
            + f"; give an exact {' / '.join(id_cols)} value"
        )
    chosen = list(dict.fromkeys(key))[matches[0]]
    return raw.loc[key == chosen], devices[matches[0]], tuple(devices)


def import_nvidia_smi(
    path: str | Path,
    tz: str | None = None,
    *,
    gpu: str | int | None = None,
    power_draw: str = "average",
) -> PowerLog:
    """Read an nvidia-smi `--query-gpu=... --format=csv[,nounits]` log: one GPU's POWER samples.

    path: the CSV log; any set of query columns with 'timestamp' and one power.draw* column.
    tz: the zone of zone-less timestamps (nvidia-smi writes local 'YYYY/MM/DD HH:MM:SS.mmm'):
      an IANA name or a fixed offset '+01:00' (tokencarbon.power.timestamps); not needed when the
      timestamps are ISO-8601 with offsets.
    gpu: which GPU of a multi-GPU log (its index, pci.bus_id, uuid or serial); required when it
      holds more. The chosen GPU's identifying fields, `name` included, are PowerLog.device.
    power_draw: what the log's `power.draw` is: "average" (default; Ampere and newer, except A100)
      or "instant" (A100 and older). power.draw.instant / .average columns need no such statement.
    Columns without a POWER counterpart (name, utilization.memory, ...) are dropped; fields the
    log lacks are NaN (throttle_reasons -1; device_index -1 without an 'index' column).
    A last line without its newline (the logger stopped mid-line) is dropped, noted in
    PowerLog.notes; windows past the last whole sample are then refused by the importer.
    Raises InputError naming the file, line and column (a row with more fields than the header, a
    second header, a value without the unit its column carries, a power that is not finite, >= 0
    and below MAX_DEVICE_POWER_W, a GPU named two ways); ConfigError for tz or power_draw.
    """
    path = Path(path)
    lines = read_csv_lines(path, "an nvidia-smi CSV log")
    raw = lines.rows  # text, indexed by the file's line numbers
    headers = {}
    for column in raw.columns:
        m = _HEADER.match(column)
        if m:
            name = _DEVICE_ALIASES.get(m["name"], m["name"])
            headers[name] = (column, m["unit"] or "")
    if "timestamp" not in headers:
        hint = (
            " (the first line holds values: was it written with --format=csv,noheader? the "
            "header line is needed to know the columns)"
            if re.match(r"^\d{4}[/-]", raw.columns[0])
            else ""
        )
        raise InputError(
            f"{path}: an nvidia-smi log needs a 'timestamp' column and one of 'power.draw [W]', "
            f"'power.draw.instant [W]' or 'power.draw.average [W]'; found {list(raw.columns)}{hint}"
        )
    power = _power_columns(headers, power_draw, path)
    if raw.empty:
        raise InputError(
            f"{path}: the log has a header but no samples" + "".join(f"; {n}" for n in lines.notes)
        )
    raw, device, devices = _select_device(raw, headers, gpu, path)

    df = pd.DataFrame(index=raw.index)
    df["t_wall_ns"] = parse_times(
        raw[headers["timestamp"][0]],
        tz,
        f"{path}, column 'timestamp'",
        local_format=_TIMESTAMP_FORMAT,
        lines=raw.index,
    )
    df["phase"] = "run"
    df["source"] = SOURCE
    df["modeled"] = False
    numeric = dict(_NUMERIC)
    for column, name in power.items():
        numeric[name] = (column, "W", 1.0)
    for name, (column, unit, factor) in numeric.items():
        if name in headers:
            header, header_unit = headers[name]
            if header_unit != unit:
                raise InputError(
                    f"{path}: column {header!r} has unit {header_unit!r}; expected {unit!r}"
                )
            df[column] = (
                _numbers(raw[header], unit, f"{path}, column {header!r}", power=unit == "W")
                * factor
            )
        elif column not in df:
            df[column] = np.nan
    for column in ("power_w", "power_avg_w"):
        if column not in df:
            df[column] = np.nan
    df["energy_counter_j"] = np.nan
    if "index" in headers:
        df["device_index"] = _numbers(raw[headers["index"][0]], "", f"{path}, column 'index'")
    df["device_index"] = df.get("device_index", pd.Series(-1, index=df.index)).fillna(-1)
    df["device_index"] = df["device_index"].astype("int64")
    throttle = next((headers[n][0] for n in _THROTTLE if n in headers), None)
    df["throttle_reasons"] = (
        _bitmasks(raw[throttle], f"{path}, column {throttle!r}") if throttle else -1
    )

    t_ns = df["t_wall_ns"].to_numpy()
    steps = np.diff(t_ns)
    if (steps <= 0).any():
        bad = df.index[1:][steps <= 0][0]
        raise InputError(
            f"{path}, line {bad}: timestamp {raw.loc[bad, headers['timestamp'][0]]!r} does "
            f"not come after the previous sample's"
            + (f" of GPU {_device_label(device)}" if device else "")
            + "; samples of one GPU must be in time order"
        )
    energy_column = "power_w" if "power_w" in power else "power_avg_w"
    return PowerLog(
        samples=check(df.reset_index(drop=True), POWER, path),
        path=str(path),
        source=SOURCE,
        power_field=power[energy_column],
        power_kind="instant" if energy_column == "power_w" else "average",
        device=device,
        devices=devices,
        notes=lines.notes,
    )


def read_nvidia_smi_csv(
    path: str | Path,
    tz: str | None = None,
    *,
    gpu: str | int | None = None,
    power_draw: str = "average",
) -> pd.DataFrame:
    """The POWER samples of import_nvidia_smi (same arguments); see there."""
    return import_nvidia_smi(path, tz, gpu=gpu, power_draw=power_draw).samples

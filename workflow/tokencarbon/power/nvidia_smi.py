"""Import a raw `nvidia-smi --query-gpu=... --format=csv` log as a POWER table."""

from __future__ import annotations

import re
import zoneinfo
from pathlib import Path

import numpy as np
import pandas as pd

from tokencarbon.errors import ConfigError, InputError
from tokencarbon.tables import POWER, check

# nvidia-smi query name -> (POWER column, unit nvidia-smi writes, factor to the SI column).
# power.draw is instant power before Ampere and a 1 s average from Ampere on; power.draw.instant
# (newer drivers) is instant power everywhere, so it wins when a log has both.
_NUMERIC = {
    "power.draw": ("power_w", "W", 1.0),
    "power.draw.instant": ("power_w", "W", 1.0),
    "power.draw.average": ("power_avg_w", "W", 1.0),
    "utilization.gpu": ("util_pct", "%", 1.0),
    "memory.used": ("mem_used_bytes", "MiB", 2.0**20),
    "temperature.gpu": ("temperature_c", "", 1.0),
    "clocks.sm": ("sm_clock_mhz", "MHz", 1.0),
    "clocks.current.sm": ("sm_clock_mhz", "MHz", 1.0),
    "clocks.mem": ("mem_clock_mhz", "MHz", 1.0),
    "clocks.current.memory": ("mem_clock_mhz", "MHz", 1.0),
    "index": ("device_index", "", 1.0),
}
_THROTTLE = ("clocks_event_reasons.active", "clocks_throttle_reasons.active")  # hex bitmask
_TIMESTAMP_FORMAT = "%Y/%m/%d %H:%M:%S.%f"
_HEADER = re.compile(r"^(?P<name>\S+)(?: \[(?P<unit>[^\]]*)\])?$")
_VALUE = re.compile(r"^(?P<number>[-+0-9.eE]+)(?: (?P<unit>\S+))?$")


def _numbers(raw: pd.Series, unit: str, where: str) -> np.ndarray:
    """Values like '22.89 W' or '22.89' as floats; '[N/A]', '[Not Supported]' and kin as NaN."""
    out = np.full(len(raw), np.nan)
    for i, text in enumerate(raw):
        if text.startswith("["):
            continue
        m = _VALUE.match(text)
        if m is None or (m["unit"] is not None and m["unit"] != unit):
            raise InputError(
                f"{where}, line {i + 2}: value {text!r} is not a number in {unit or 'no unit'}"
            )
        out[i] = float(m["number"])
    return out


def _bitmasks(raw: pd.Series, where: str) -> np.ndarray:
    """Hex bitmasks like '0x0000000000000001' as ints; '[N/A]' and kin as -1."""
    out = np.full(len(raw), -1, dtype=np.int64)
    for i, text in enumerate(raw):
        if text.startswith("["):
            continue
        try:
            out[i] = int(text, 16)
        except ValueError as exc:
            raise InputError(f"{where}, line {i + 2}: {text!r} is not a hex bitmask") from exc
    return out


def read_nvidia_smi_csv(path: str | Path, tz: str) -> pd.DataFrame:
    """Read an nvidia-smi CSV log; `tz` is the zone of its local, zone-less timestamps.

    Any subset of query columns is accepted; timestamp and power.draw (or power.draw.instant) are
    required. Columns without a POWER counterpart (name, utilization.memory, ...) are dropped;
    fields the log lacks are NaN (throttle_reasons -1, device_index -1 without an index column).
    """
    path = Path(path)
    try:
        zone = zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigError(
            f"time zone {tz!r} for {path} is not an IANA zone name (e.g. 'Europe/Berlin', 'UTC')"
        ) from exc
    try:
        raw = pd.read_csv(path, dtype=str, skipinitialspace=True, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise InputError(f"{path}: not a readable nvidia-smi CSV log ({exc})") from exc
    raw.columns = [c.strip() for c in raw.columns]
    raw = raw.apply(lambda col: col.str.strip())
    headers = {}
    for column in raw.columns:
        m = _HEADER.match(column)
        if m:
            headers[m["name"]] = (column, m["unit"] or "")
    power_name = next((n for n in ("power.draw.instant", "power.draw") if n in headers), None)
    if "timestamp" not in headers or power_name is None:
        raise InputError(
            f"{path}: an nvidia-smi log needs columns 'timestamp' and 'power.draw [W]' (or "
            f"'power.draw.instant [W]'); found {list(raw.columns)}"
        )

    df = pd.DataFrame(index=raw.index)
    try:
        local = pd.to_datetime(raw[headers["timestamp"][0]], format=_TIMESTAMP_FORMAT)
        utc = local.dt.tz_localize(zone, ambiguous="infer", nonexistent="raise")
    except (ValueError, TypeError) as exc:
        raise InputError(
            f"{path}: column 'timestamp' needs local times 'YYYY/MM/DD HH:MM:SS.mmm' that exist "
            f"in {tz} ({exc})"
        ) from exc
    df["t_wall_ns"] = utc.dt.as_unit("ns").astype("int64")  # epoch ns, UTC
    df["phase"] = "run"
    df["source"] = "nvidia_smi_csv"
    df["modeled"] = False
    for name, (column, unit, factor) in _NUMERIC.items():
        if name in headers and (column != "power_w" or name == power_name):
            header, header_unit = headers[name]
            if header_unit != unit:
                raise InputError(
                    f"{path}: column {header!r} has unit {header_unit!r}; expected {unit!r}"
                )
            df[column] = _numbers(raw[header], unit, f"{path}, column {header!r}") * factor
        elif column not in df:
            df[column] = np.nan
    df["energy_counter_j"] = np.nan
    df["device_index"] = df["device_index"].fillna(-1).astype("int64")
    throttle = next((headers[n][0] for n in _THROTTLE if n in headers), None)
    df["throttle_reasons"] = (
        _bitmasks(raw[throttle], f"{path}, column {throttle!r}") if throttle else -1
    )

    for device, t_ns in df.groupby("device_index")["t_wall_ns"]:
        steps = np.diff(t_ns.to_numpy())
        if (steps <= 0).any():
            bad = t_ns.index[1:][steps <= 0][0]
            raise InputError(
                f"{path}, line {bad + 2}: timestamp {raw.loc[bad, headers['timestamp'][0]]!r} "
                f"does not follow the previous sample of device {device}; a log with several GPUs "
                f"needs the 'index' column"
            )
    return check(df, POWER, path)

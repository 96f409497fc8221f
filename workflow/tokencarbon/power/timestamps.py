"""Timestamps of external power and timing logs -> UTC epoch ns, with errors that name the fix.

Logs write time in one of two ways: local wall-clock time without a zone (nvidia-smi's
`YYYY/MM/DD HH:MM:SS.mmm`, `nvidia-smi dmon -o DT`, DCGM), which needs the zone the tool ran in, or
ISO-8601 with a UTC offset (`2025-01-15T12:00:00.123+01:00`, `...Z`; CodeCarbon, most loggers),
which needs none. A zone is an IANA name ('Europe/Berlin', 'UTC') or a fixed offset ('+01:00').
"""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo

import numpy as np
import pandas as pd

from tokencarbon.errors import ConfigError, InputError

_FIXED_OFFSET = re.compile(r"^(?:UTC|GMT)?(?P<sign>[+-])(?P<h>\d{1,2}):?(?P<m>\d{2})?$")
# An explicit offset at the end of an ISO-8601 time: Z, +HH, +HHMM or +HH:MM.
_ISO_OFFSET = re.compile(r"(?:Z|[+-]\d{2}(?::?\d{2})?)$", re.IGNORECASE)
_ISO = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?")

ZONE_HELP = "an IANA zone name ('Europe/Berlin', 'UTC') or a fixed UTC offset ('+01:00')"


def parse_zone(tz: str) -> dt.tzinfo:
    """The tzinfo of `tz`: 'UTC', a fixed offset '+01:00' / '-0530' / 'UTC+2', or an IANA name.

    Raises ConfigError naming `tz` and what is valid.
    """
    if not isinstance(tz, str) or not tz.strip():
        raise ConfigError(f"time zone {tz!r}: expected {ZONE_HELP}")
    text = tz.strip()
    if text.upper() in ("UTC", "Z", "GMT"):
        return dt.timezone.utc
    m = _FIXED_OFFSET.match(text)
    if m:
        minutes = int(m["h"]) * 60 + int(m["m"] or 0)
        if minutes > 14 * 60:
            raise ConfigError(f"time zone {tz!r}: UTC offsets run from -14:00 to +14:00")
        sign = -1 if m["sign"] == "-" else 1
        return dt.timezone(sign * dt.timedelta(minutes=minutes))
    try:
        return zoneinfo.ZoneInfo(text)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigError(f"time zone {tz!r} is not {ZONE_HELP}") from exc


def _offset_text(offset: dt.timedelta) -> str:
    minutes = int(offset.total_seconds() // 60)
    sign = "-" if minutes < 0 else "+"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def localize(local: pd.Series, tz: str | None, where: str, raw: pd.Series) -> pd.Series:
    """Zone-less wall-clock datetimes -> UTC datetimes, resolving the zone's DST transitions.

    A time inside the hour repeated when daylight-saving time ends is resolved from the log's own
    order (the clock steps back); a log lying wholly inside that hour cannot tell which of the two
    it is, and neither can a time the clocks skipped: both are refused, naming the fixed-offset
    zones that would be unambiguous. `raw` (the text) and `where` (file, column) go into errors.
    """
    if tz is None:
        raise ConfigError(
            f"{where}: timestamps like {raw.iloc[0]!r} carry no UTC offset; give the zone the "
            f"logging tool ran in as tz, {ZONE_HELP}"
        )
    zone = parse_zone(tz)
    if isinstance(zone, dt.timezone):
        return local.dt.tz_localize(zone).dt.tz_convert("UTC")
    try:
        return local.dt.tz_localize(zone, ambiguous="infer", nonexistent="raise").dt.tz_convert(
            "UTC"
        )
    except ValueError as exc:
        # Find the first time that is ambiguous (fold 0 and 1 differ) or skipped, to name it.
        for i, ts in enumerate(local):
            naive = ts.to_pydatetime()
            early = naive.replace(tzinfo=zone, fold=0).utcoffset()
            late = naive.replace(tzinfo=zone, fold=1).utcoffset()
            roundtrip = (
                naive.replace(tzinfo=zone).astimezone(dt.timezone.utc).astimezone(zone)
            ).replace(tzinfo=None)
            if roundtrip != naive:
                raise InputError(
                    f"{where}, row {i + 1}: {raw.iloc[i]!r} never happened in {tz} (the clocks "
                    f"skipped it for daylight-saving time); the log was written in another zone: "
                    f"give that zone as tz, e.g. a fixed offset tz={_offset_text(early)!r} or "
                    f"{_offset_text(late)!r}"
                ) from exc
            if early != late:
                raise InputError(
                    f"{where}, row {i + 1}: {raw.iloc[i]!r} lies in the hour repeated when "
                    f"daylight-saving time ends in {tz}, and the log never steps back through "
                    f"that hour, so which of the two it is cannot be told from the log; give a "
                    f"fixed-offset zone instead: tz={_offset_text(early)!r} (the first pass, "
                    f"daylight-saving time) or tz={_offset_text(late)!r} (the second)"
                ) from exc
        raise InputError(f"{where}: timestamps cannot be placed in {tz} ({exc})") from exc


def parse_times(
    raw: pd.Series, tz: str | None, where: str, *, local_format: str | None = None
) -> np.ndarray:
    """Text timestamps -> int64 UTC epoch ns.

    Accepted: `local_format` (a strptime format of zone-less local time, e.g. nvidia-smi's
    '%Y/%m/%d %H:%M:%S.%f'), ISO-8601 with an offset (no tz needed; tz, if given, is not used),
    or ISO-8601 without one (local time in tz). All rows must share one kind. Raises InputError
    naming the first row that fits none, or rows mixing offsets and none; ConfigError for tz.
    """
    raw = raw.astype(str).str.strip()
    if len(raw) == 0:
        return np.empty(0, dtype=np.int64)
    if local_format is not None:
        parsed = pd.to_datetime(raw, format=local_format, errors="coerce")
        if parsed.notna().all():
            return localize(parsed, tz, where, raw).dt.as_unit("ns").astype("int64").to_numpy()
    iso = raw.str.match(_ISO)
    if not iso.all():
        bad = int(np.flatnonzero(~iso.to_numpy())[0])
        expected = "ISO-8601 ('2025-01-15T12:00:00.123+01:00')"
        if local_format is not None:
            example = dt.datetime(2025, 1, 15, 12, 0, 0, 123000).strftime(local_format)
            expected = f"{local_format!r} local time (e.g. {example!r}) or {expected}"
        raise InputError(f"{where}, row {bad + 1}: timestamp {raw.iloc[bad]!r} is not {expected}")
    has_offset = raw.str.contains(_ISO_OFFSET)
    if has_offset.any() and not has_offset.all():
        with_i = int(np.flatnonzero(has_offset.to_numpy())[0])
        without_i = int(np.flatnonzero(~has_offset.to_numpy())[0])
        raise InputError(
            f"{where}: rows mix timestamps with a UTC offset (row {with_i + 1}: "
            f"{raw.iloc[with_i]!r}) and without (row {without_i + 1}: {raw.iloc[without_i]!r}); "
            "a log must use one kind"
        )
    try:
        if has_offset.all():
            utc = pd.to_datetime(raw.str.replace(",", ".", regex=False), format="ISO8601", utc=True)
        else:
            local = pd.to_datetime(raw.str.replace(",", ".", regex=False), format="ISO8601")
            utc = localize(local, tz, where, raw)
    except (ValueError, TypeError) as exc:
        if isinstance(exc, InputError | ConfigError):
            raise
        raise InputError(f"{where}: timestamps are not valid ISO-8601 ({exc})") from exc
    return utc.dt.as_unit("ns").astype("int64").to_numpy()

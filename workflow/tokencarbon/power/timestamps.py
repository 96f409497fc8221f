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


def _labeller(lines):
    """Row position -> "line N" (the file's line, where the caller knows it) or "row N"."""
    if lines is None:
        return lambda i: f"row {i + 1}"
    lines = list(lines)
    return lambda i: f"line {lines[i]}"


def localize(
    local: pd.Series, tz: str | None, where: str, raw: pd.Series, *, lines=None
) -> pd.Series:
    """Zone-less wall-clock datetimes -> UTC datetimes, resolving the zone's DST transitions.

    A time inside the hour repeated when daylight-saving time ends is resolved from the log's own
    order (the clock steps back); a log lying wholly inside that hour cannot tell which of the two
    it is, and neither can a time the clocks skipped: both are refused, naming the fixed-offset
    zones that would be unambiguous. `raw` (the text) and `where` (file, column) go into errors;
    `lines`, the file's line of each time, makes them name lines instead of 1-based rows.
    """
    label = _labeller(lines)
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
                    f"{where}, {label(i)}: {raw.iloc[i]!r} never happened in {tz} (the clocks "
                    f"skipped it for daylight-saving time); the log was written in another zone: "
                    f"give that zone as tz, e.g. a fixed offset tz={_offset_text(early)!r} or "
                    f"{_offset_text(late)!r}"
                ) from exc
            if early != late:
                raise InputError(
                    f"{where}, {label(i)}: {raw.iloc[i]!r} lies in the hour repeated when "
                    f"daylight-saving time ends in {tz}, and the log never steps back through "
                    f"that hour, so which of the two it is cannot be told from the log; give a "
                    f"fixed-offset zone instead: tz={_offset_text(early)!r} (the first pass, "
                    f"daylight-saving time) or tz={_offset_text(late)!r} (the second)"
                ) from exc
        raise InputError(f"{where}: timestamps cannot be placed in {tz} ({exc})") from exc


def parse_times(
    raw: pd.Series,
    tz: str | None,
    where: str,
    *,
    local_format: str | None = None,
    lines=None,
) -> np.ndarray:
    """Text timestamps -> int64 UTC epoch ns.

    Accepted: `local_format` (a strptime format of zone-less local time, e.g. nvidia-smi's
    '%Y/%m/%d %H:%M:%S.%f'), ISO-8601 with an offset (no tz needed; tz, if given, is not used),
    or ISO-8601 without one (local time in tz). All rows must share one kind: the kind most rows
    have, and the first row that is not of it is named (a line cut mid-timestamp, a second header
    in the middle of a log), not a valid first row. lines: the file's line of each time, so that
    errors name lines; without it they name 1-based rows. Raises InputError naming that row or
    line, or rows mixing offsets and none; ConfigError for tz.
    """
    raw = raw.astype(str).str.strip()
    label = _labeller(lines)
    if len(raw) == 0:
        return np.empty(0, dtype=np.int64)
    iso = raw.str.match(_ISO).to_numpy()
    if local_format is not None:
        parsed = pd.to_datetime(raw, format=local_format, errors="coerce")
        ok = parsed.notna().to_numpy()
        if ok.all():
            return (
                localize(parsed, tz, where, raw, lines=lines)
                .dt.as_unit("ns").astype("int64").to_numpy()
            )  # fmt: skip
        if ok.sum() > iso.sum():  # a log of local times with some rows that are not
            bad = int(np.flatnonzero(~ok)[0])
            example = raw.iloc[int(np.flatnonzero(ok)[0])]
            raise InputError(
                f"{where}, {label(bad)}: timestamp {raw.iloc[bad]!r} is not {local_format!r} "
                f"local time like the log's other rows (e.g. {example!r}): a line cut in the "
                "middle, or another log's lines? Correct or remove it"
            )
    if not iso.all():
        bad = int(np.flatnonzero(~iso)[0])
        expected = "ISO-8601 ('2025-01-15T12:00:00.123+01:00')"
        if local_format is not None:
            example = dt.datetime(2025, 1, 15, 12, 0, 0, 123000).strftime(local_format)
            expected = f"{local_format!r} local time (e.g. {example!r}) or {expected}"
        raise InputError(
            f"{where}, {label(bad)}: timestamp {raw.iloc[bad]!r} is not {expected}"
            + (f", as the log's other rows are (e.g. {raw.iloc[int(np.flatnonzero(iso)[0])]!r})"
               if iso.any() else "")
        )  # fmt: skip
    has_offset = raw.str.contains(_ISO_OFFSET)
    if has_offset.any() and not has_offset.all():
        with_i = int(np.flatnonzero(has_offset.to_numpy())[0])
        without_i = int(np.flatnonzero(~has_offset.to_numpy())[0])
        odd = without_i if has_offset.sum() >= (~has_offset).sum() else with_i
        raise InputError(
            f"{where}: rows mix timestamps with a UTC offset ({label(with_i)}: "
            f"{raw.iloc[with_i]!r}) and without ({label(without_i)}: {raw.iloc[without_i]!r}); "
            f"a log must use one kind: {label(odd)} differs from most (cut in the middle?)"
        )
    text = raw.str.replace(",", ".", regex=False)
    try:
        if has_offset.all():
            utc = pd.to_datetime(text, format="ISO8601", utc=True)
        else:
            local = pd.to_datetime(text, format="ISO8601")
            utc = localize(local, tz, where, raw, lines=lines)
    except (ValueError, TypeError) as exc:
        if isinstance(exc, InputError | ConfigError):
            raise
        for i, value in enumerate(text):
            try:
                pd.to_datetime(value, format="ISO8601")
            except (ValueError, TypeError):
                raise InputError(
                    f"{where}, {label(i)}: timestamp {raw.iloc[i]!r} is not a valid ISO-8601 "
                    f"time ({exc}): a line cut in the middle? Correct or remove it"
                ) from exc
        raise InputError(f"{where}: timestamps are not valid ISO-8601 ({exc})") from exc
    return utc.dt.as_unit("ns").astype("int64").to_numpy()

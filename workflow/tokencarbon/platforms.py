"""Hardware platforms (resources/platforms.csv): datasheet peaks, memory, TDP and embodied carbon
(a low and a high bound), the peak FLOP/s and bytes/s that MFU and MBU divide by, and
resolve_platform: the row made to describe the detected device (config overrides, measured peaks)
or a refusal naming what was detected."""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tokencarbon.errors import ConfigError, HardwareMismatchError, InputError
from tokencarbon.models import DTYPE_BYTES, resources_dir
from tokencarbon.units import BYTES_PER_GB, FLOPS_PER_TFLOPS


@dataclass(frozen=True)
class Platform:
    platform: str
    kind: str  # "cpu" | "gpu"
    device_name_pattern: str  # regex searched in the detected device name (anchored: ^...$)
    # Dense peaks in TFLOP/s (TOP/s for int8) as datasheets state them; None = no such unit.
    peak_tflops_fp32: float
    peak_tflops_tf32: float | None
    peak_tflops_fp16: float | None
    peak_tflops_bf16: float | None
    peak_tflops_int8: float | None
    memory_gb: float
    memory_gb_per_s: float
    tdp_w: float
    release_year: int
    # Embodied carbon, low bound: dies + memory only (LLMCarbon's method), kgCO2e per device.
    embodied_kg_co2e: float
    lifetime_years: float
    # CPU platforms: the logical CPUs the row's TDP and peaks describe; a cell is pinned to them.
    logical_cpus: int | None
    source: str
    memory_limit_gb: float | None = None  # set from config: caps usable memory below memory_gb
    # Embodied carbon, high bound: a vendor product carbon footprint (cradle to gate) where one is
    # published, else the method embodied_high_source names. kgCO2e per device.
    embodied_kg_co2e_high: float | None = None
    embodied_high_source: str = ""
    # Optional per-device share of the host server (CPUs, chassis, ...), added to the high bound.
    host_embodied_kg_co2e: float | None = None
    # Where the numbers come from: "datasheet" (this table, for the detected device), or that
    # followed by the fields config ("config: ...") or a measurement ("measured: ...") supplied.
    spec_source: str = "datasheet"
    # QA flags every cell measured on this platform carries (metrics: e.g. peaks measured under
    # load); set by metrics.resolve_cell_platforms, never read from the table.
    qa_flags: tuple[str, ...] = ()

    @property
    def embodied_range_kg_co2e(self) -> tuple[float, float]:
        """(low, high) embodied kgCO2e per device: dies + memory; PCF (+ host share if set)."""
        high = self.embodied_kg_co2e_high
        high = self.embodied_kg_co2e if high is None else high
        return self.embodied_kg_co2e, high + (self.host_embodied_kg_co2e or 0.0)


_COLUMNS = [
    "platform", "kind", "device_name_pattern", "peak_tflops_fp32", "peak_tflops_tf32",
    "peak_tflops_fp16", "peak_tflops_bf16", "peak_tflops_int8", "memory_gb", "memory_gb_per_s",
    "tdp_w", "release_year", "embodied_kg_co2e", "embodied_kg_co2e_high", "host_embodied_kg_co2e",
    "lifetime_years", "logical_cpus", "source", "embodied_high_source",
]  # fmt: skip
_OPTIONAL = {
    "peak_tflops_tf32",
    "peak_tflops_fp16",
    "peak_tflops_bf16",
    "peak_tflops_int8",
    "logical_cpus",
    "host_embodied_kg_co2e",
}
_TEXT = {"platform", "kind", "device_name_pattern", "source", "embodied_high_source"}
_INTEGER = {"release_year", "logical_cpus"}
# Fields config may override for a platform, and those a measurement may supply (tokencarbon.peak).
SPEC_FIELDS = (
    "peak_tflops_fp32", "peak_tflops_tf32", "peak_tflops_fp16", "peak_tflops_bf16",
    "peak_tflops_int8", "memory_gb", "memory_gb_per_s", "tdp_w", "logical_cpus",
    "embodied_kg_co2e", "embodied_kg_co2e_high", "host_embodied_kg_co2e", "lifetime_years",
)  # fmt: skip
MEASURABLE_FIELDS = ("peak_tflops_fp32", "peak_tflops_fp16", "peak_tflops_bf16", "memory_gb_per_s")
# config platforms.<name>.spec.measure: true asks rule measure_platform (tokencarbon.peak) for these
# on this machine; every measurement holds at least the first two (fp32 peak and bandwidth).
MEASURE_KEY = "measure"
MEASURED_ALWAYS = ("peak_tflops_fp32", "memory_gb_per_s")
# spec_source's label of measured fields whose measurement has not run yet (their values NaN).
PENDING = "measured (pending)"
# What a cpu row must be told (config or measurement) to describe a CPU it was not written for:
# modeled power needs TDP and the CPUs it covers, MFU a peak, MBU a bandwidth.
REQUIRED_FOR_OTHER_CPU = ("tdp_w", "logical_cpus", "peak_tflops_fp32", "memory_gb_per_s")
_RELEASE_YEARS = (1990, 2100)

# Plausible ranges of the spec numbers, per kind of device: a value outside is a unit slip (a
# bf16 peak of 989400 written in GFLOP/s, a bandwidth of 4.8 in TB/s, a lifetime of 0.01 years),
# refused naming the row (or config key), column, value and range. Each range spans the devices
# tokencarbon can describe with headroom on both sides; SPEC_RANGE_SOURCES says where the ends
# come from.
SPEC_RANGES: dict[str, dict[str, tuple[float, float]]] = {
    "peak_tflops": {"gpu": (0.1, 10_000.0), "cpu": (0.0001, 1_000.0)},
    "memory_gb_per_s": {"gpu": (20.0, 20_000.0), "cpu": (0.1, 2_000.0)},
    "memory_gb": {"gpu": (1.0, 1_000.0), "cpu": (0.1, 65_536.0)},
    "tdp_w": {"gpu": (10.0, 3_000.0), "cpu": (0.1, 2_000.0)},
    "lifetime_years": {"gpu": (1.0, 15.0), "cpu": (1.0, 15.0)},
}
SPEC_RANGE_SOURCES = {
    "peak_tflops": (
        "TFLOP/s (TOP/s for int8), dense; gpu: the largest dense peak of a shipping GPU is the "
        "B200's ~4,500 int8/fp8 (NVIDIA DGX B200: 72 PFLOPS fp8 for 8 GPUs, sparse), a Jetson-"
        "class GPU ~0.5; cpu: one core's fp32 FMA units ~0.01 (the cpu row: 0.0784), fp16 where "
        "a CPU has no fp16 units and torch emulates it ~0.001 (0.0009 measured on this project's "
        "2-core VM beside another run, 2026-12-07), a 2-socket host with AMX bf16 tiles below 1,000"
    ),
    "memory_gb_per_s": (
        "GB/s; gpu: 68 (Jetson Orin Nano) to 8,000 (B200 HBM3e, NVIDIA); cpu: one core's share "
        "of DDR (the cpu row: 3.2) to a 2-socket 12-channel DDR5-6400 host's 1,229"
    ),
    "memory_gb": "GB (1e9 bytes); gpu: 4 to 288 (B300, NVIDIA); cpu: a slice's RAM to a host's TBs",
    "tdp_w": (
        "W; gpu: 40 (T4-class cards) to 2,700 (a GB200 superchip, NVIDIA); cpu: one core's TDP "
        "share (the cpu row: 4.375) to two 500 W sockets"
    ),
    "lifetime_years": (
        "years of service the embodied carbon is amortised over: LLMCarbon and ACT use 5, cloud "
        "providers depreciate servers over 4 to 6"
    ),
}
# Device names as the NVIDIA driver reports them (nvidia-smi's name, NVML's nvmlDeviceGetName),
# each with the product it names; sources in tests/test_platforms.py. A row's pattern may claim
# the names of one product only: a pattern matching two of them ('^NVIDIA [BH]200$') would give
# one product's peaks, memory and embodied carbon to another.
KNOWN_DEVICE_NAMES = {
    "Tesla V100S-PCIE-32GB": "V100S PCIe",
    "Tesla V100-PCIE-32GB": "V100 PCIe",
    "Tesla V100-SXM2-32GB": "V100 SXM2",
    "NVIDIA A100-SXM4-40GB": "A100 SXM4 40GB",
    "NVIDIA A100-SXM4-80GB": "A100 SXM4 80GB",
    "NVIDIA A100-PCIE-40GB": "A100 PCIe 40GB",
    "NVIDIA A100 80GB PCIe": "A100 PCIe 80GB",
    "NVIDIA H100 80GB HBM3": "H100 SXM5",
    "NVIDIA H100 PCIe": "H100 PCIe",
    "NVIDIA H100 NVL": "H100 NVL",
    "NVIDIA H800": "H800",
    "NVIDIA H200": "H200 SXM",
    "NVIDIA H200 NVL": "H200 NVL",
    "NVIDIA GH200 480GB": "GH200",
    "NVIDIA GeForce RTX 4090": "GeForce RTX 4090",
    "NVIDIA B200": "B200",
}

# float32 means plain fp32 FMA units, not TF32 tensor cores: torch keeps
# torch.backends.cuda.matmul.allow_tf32 off by default, so fp32 matmuls run at the fp32 peak.
_DTYPE_PEAK = {
    "float32": "peak_tflops_fp32",
    "float16": "peak_tflops_fp16",
    "bfloat16": "peak_tflops_bf16",
}
assert set(_DTYPE_PEAK) == set(DTYPE_BYTES)


def _range_key(col: str) -> str | None:
    return "peak_tflops" if col.startswith("peak_tflops_") else col if col in SPEC_RANGES else None


def spec_range(col: str, kind: str) -> tuple[float, float] | None:
    """The plausible (low, high) of spec column `col` on a device of `kind` ("cpu" or "gpu"), or
    None where none is set (SPEC_RANGES; SPEC_RANGE_SOURCES says where each end comes from)."""
    key = _range_key(col)
    return None if key is None else SPEC_RANGES[key].get(kind)


def _number_problem(col: str, value: float, kind: str | None = None) -> str | None:
    """Why value is not valid for col (on a device of `kind`, if known: plausible ranges), or
    None."""
    if not math.isfinite(value):
        return "must be a finite number"
    if col == "release_year":
        lo, hi = _RELEASE_YEARS
        return None if lo <= value <= hi else f"must be a year between {lo} and {hi}"
    if col == "logical_cpus":
        return None if value >= 1 else "must be an integer >= 1"
    if value <= 0:
        return "must be > 0"
    bounds = spec_range(col, kind) if kind is not None else None
    if bounds is not None and not bounds[0] <= value <= bounds[1]:
        return (
            f"lies outside the plausible range {bounds[0]:g} to {bounds[1]:g} for a {kind} "
            f"({SPEC_RANGE_SOURCES[_range_key(col)]}): a unit slip? correct it"
        )
    return None


def _literal(pattern: str) -> str | None:
    """The one name an anchored pattern matches when it is a plain (escaped) string, else None:
    '^NVIDIA H100 80GB HBM3$' -> 'NVIDIA H100 80GB HBM3'; '^NVIDIA .*$' -> None."""
    body = pattern[1:-1]
    text = re.sub(r"\\(.)", r"\1", body)
    if re.search(r"(?<!\\)[.^$*+?{}\[\]|()]", body) or re.fullmatch(pattern, text) is None:
        return None
    return text


def anchored(pattern: str) -> bool:
    """Whether a device name pattern is anchored at both ends ('^...$', the $ not escaped)."""
    return pattern.startswith("^") and pattern.endswith("$") and not pattern.endswith("\\$")


def _parse(path: Path, row: dict[str, str], line: int) -> Platform:
    values: dict[str, object] = {}
    at = f"{path} line {line} (platform {(row.get('platform') or '').strip()!r})"
    for col in _COLUMNS:
        raw = (row.get(col) or "").strip()
        if col in _TEXT:
            values[col] = raw
            continue
        if raw == "" and col in _OPTIONAL:
            values[col] = None
            continue
        try:
            value = int(raw) if col in _INTEGER else float(raw)
        except ValueError:
            kind = "an integer" if col in _INTEGER else "a number"
            raise InputError(
                f"{at}, column {col}: {raw!r} is not {kind}"
                + ("" if col not in _OPTIONAL else " (leave empty where the unit is absent)")
            ) from None
        problem = _number_problem(col, value, str(values.get("kind")))
        if problem:
            raise InputError(
                f"{at}, column {col}: {raw!r} {problem}"
            )
        values[col] = value
    if values["kind"] not in ("cpu", "gpu"):
        raise InputError(f"{at}, column kind: {values['kind']!r}; valid: 'cpu', 'gpu'")
    if values["kind"] == "cpu" and values["logical_cpus"] is None:
        raise InputError(
            f"{at}, column logical_cpus: a cpu platform needs the number of logical "
            "CPUs its TDP and peaks describe (an integer >= 1)"
        )
    if values["embodied_kg_co2e_high"] < values["embodied_kg_co2e"]:  # type: ignore[operator]
        raise InputError(
            f"{at}, column embodied_kg_co2e_high: {values['embodied_kg_co2e_high']} "
            f"is below the low bound embodied_kg_co2e {values['embodied_kg_co2e']}"
        )
    for col in ("source", "embodied_high_source", "device_name_pattern"):
        if not values[col]:
            raise InputError(f"{at}, column {col}: empty; every row needs one")
    pattern = str(values["device_name_pattern"])
    try:
        re.compile(pattern)
    except re.error as e:
        raise InputError(f"{at}, column device_name_pattern: bad regex ({e})") from None
    if not anchored(pattern):
        raise InputError(
            f"{at}, column device_name_pattern: "
            f"{pattern!r} is not anchored; a pattern must match the whole device name, so that "
            f"'NVIDIA H100' cannot claim 'NVIDIA H100 80GB HBM3' and 'NVIDIA H100 PCIe' alike: "
            f"write it as '^...$', e.g. '^{pattern.strip('^$')}$' for exactly that name"
        )
    claimed = {
        KNOWN_DEVICE_NAMES[n] for n in KNOWN_DEVICE_NAMES if re.fullmatch(pattern, n) is not None
    }
    if len(claimed) > 1:
        names = [n for n in KNOWN_DEVICE_NAMES if re.fullmatch(pattern, n) is not None]
        raise InputError(
            f"{at}, column device_name_pattern: "
            f"{pattern!r} matches the devices {names} ({', '.join(sorted(claimed))}); a row "
            "describes one product (its peaks, memory, TDP and embodied carbon): narrow the "
            "pattern to that product's name"
        )
    return Platform(**values)  # type: ignore[arg-type]


def _check_unambiguous(path: Path, platforms: Mapping[str, Platform], lines: Mapping[str, int]):
    """No two rows claim one name: a row's literal name, or a known device name (KNOWN_DEVICE_
    NAMES), matched by another row's pattern is refused naming both rows and the name."""
    names = {n: None for n in KNOWN_DEVICE_NAMES}
    for p in platforms.values():
        literal = _literal(p.device_name_pattern)
        if literal is not None:
            names[literal] = None
    for name in names:
        rows = [p.platform for p in platforms.values() if _matches(p, name)]
        if len(rows) > 1:
            where = ", ".join(f"{r} (line {lines[r]})" for r in rows)
            raise InputError(
                f"{path}: the device name {name!r} matches the patterns of rows {where}; a device "
                "must match exactly one row, or its cells would take either row's numbers: make "
                "the patterns exclusive (anchored, '^...$', one product each)"
            )


def _decode(path: Path) -> str:
    """A table's text as UTF-8; InputError naming the line and byte where it is not."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise InputError(
            f"{path} line {line}: byte {data[e.start:e.start + 1]!r} (offset {e.start}) is not "
            f"UTF-8 ({e.reason}); the file was saved in another encoding (Latin-1, Windows-1252?): "
            "save it as UTF-8"
        ) from None


def load_platforms(path: Path | str | None = None) -> dict[str, Platform]:
    """The rows of resources/platforms.csv (or `path`), checked: every number finite, positive and
    within its plausible range (SPEC_RANGES), patterns anchored and one product each, and no
    device name matching two rows. Raises InputError naming the file, line, row and column."""
    path = Path(path) if path is not None else resources_dir() / "platforms.csv"
    try:
        text = _decode(path)
    except OSError as e:
        raise InputError(f"{path}: cannot read platform table ({e})") from e
    reader = csv.DictReader(io.StringIO(text, newline=""))
    missing = [c for c in _COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise InputError(f"{path}: missing column(s) {missing}; required: {_COLUMNS}")
    platforms: dict[str, Platform] = {}
    lines: dict[str, int] = {}
    for row in reader:
        line = reader.line_num  # the row's last physical line (quoted fields may span lines)
        p = _parse(path, row, line)
        if p.platform in platforms:
            raise InputError(f"{path} line {line}: platform {p.platform!r} appears twice")
        platforms[p.platform] = p
        lines[p.platform] = line
    _check_unambiguous(path, platforms, lines)
    return platforms


def rows_matching(device_name: str | None, platforms: Mapping[str, Platform] | None = None):
    """Names of the rows whose pattern matches the whole of `device_name` (at most one in a table
    load_platforms accepted, for the names it can check; more is refused by check_device)."""
    table = platforms if platforms is not None else load_platforms()
    return [p.platform for p in table.values() if _matches(p, device_name)]


def check_device(
    device_name: str, row: str, platforms: Mapping[str, Platform] | None = None, *, where: str = ""
) -> None:
    """Raise unless `device_name` matches row `row` and no other row of the table. where: what
    named the device (a file, a flag), for the message. HardwareMismatchError when the device is
    another row's or none's; InputError when several rows match it (ambiguous patterns)."""
    table = platforms if platforms is not None else load_platforms()
    if row not in table:
        raise ConfigError(f"platform {row!r}; valid rows of resources/platforms.csv: {', '.join(table)}")
    rows = rows_matching(device_name, table)
    source = f" ({where})" if where else ""
    if len(rows) > 1:
        raise InputError(
            f"device {device_name!r}{source} matches rows {rows} of resources/platforms.csv; a "
            "device must match exactly one row: make their device_name_pattern exclusive"
        )
    if rows != [row]:
        others = f"; it is row {rows[0]!r}" if rows else "; no row matches it"
        raise HardwareMismatchError(
            f"device {device_name!r}{source} is not platform {row!r}, whose pattern is "
            f"{table[row].device_name_pattern!r} (resources/platforms.csv){others}: choose the "
            "platform this device is, or add a row for it"
        )


def get_platform(name: str, memory_limit_gb: float | None = None) -> Platform:
    platforms = load_platforms()
    if name not in platforms:
        raise ConfigError(f"platform {name!r}; valid: {', '.join(platforms)}")
    platform = platforms[name]
    if memory_limit_gb is None:
        return platform
    if not 0 < memory_limit_gb <= platform.memory_gb:
        raise ConfigError(
            f"memory_limit_gb={memory_limit_gb} for platform {name!r}; "
            f"must be > 0 and <= its {platform.memory_gb} GB"
        )
    return dataclasses.replace(platform, memory_limit_gb=memory_limit_gb)


def peak_flops(platform: Platform, dtype: str) -> float:
    """Dense peak FLOP/s for matmuls in dtype (float32: fp32 units, not TF32; see _DTYPE_PEAK)."""
    if dtype not in _DTYPE_PEAK:
        raise ConfigError(f"dtype {dtype!r}; valid: {list(_DTYPE_PEAK)}")
    tflops = getattr(platform, _DTYPE_PEAK[dtype])
    if tflops is None:
        supported = [d for d, col in _DTYPE_PEAK.items() if getattr(platform, col) is not None]
        raise ConfigError(
            f"platform {platform.platform!r} has no {dtype} units; valid dtypes there: {supported}"
        )
    return tflops * FLOPS_PER_TFLOPS


def peak_bandwidth_bytes_per_s(platform: Platform) -> float:
    return platform.memory_gb_per_s * BYTES_PER_GB  # datasheet GB/s are decimal


def _matches(platform: Platform, device_name: str | None) -> bool:
    """The row's pattern matches the whole device name (re.fullmatch; patterns are anchored)."""
    return (
        device_name is not None
        and re.fullmatch(platform.device_name_pattern, device_name) is not None
    )


# A cell's and probe's params (plan.measuring_spec) carry only the spec values that change what
# they measure (MEASURING_SPEC_FIELDS, on a cpu: modeled power, pinned CPUs); the peak and
# bandwidth a cpu row needs given to describe another CPU are named under this key, without their
# values, so that the hardware check (resolve_platform) still counts them as given while
# correcting one (only metrics read it) reruns no cell.
METRICS_ONLY_KEY = "given_for_metrics"
MEASURING_SPEC_FIELDS = ("logical_cpus", "tdp_w")


def split_measure(overrides: Mapping[str, object] | None) -> tuple[dict[str, object], bool]:
    """Config's platforms.<name>.spec split into (the numbers it overrides, measure flag)."""
    values = {k: v for k, v in (overrides or {}).items() if v is not None}
    measure = values.pop(MEASURE_KEY, False)
    return values, measure


def _check_spec(
    values: Mapping[str, object], allowed: tuple[str, ...], where: str, error, kind: str
) -> None:
    for key, value in values.items():
        if key not in allowed:
            raise error(f"{where}.{key}: not a platform spec field; valid: {', '.join(allowed)}")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise error(f"{where}.{key}: {value!r} is not a number")
        number = float(value)
        problem = _number_problem(key, number, kind)
        if problem is None and key == "logical_cpus" and number != int(number):
            problem = "must be an integer >= 1"
        if problem:
            raise error(f"{where}.{key}: {value!r} {problem}")


def resolve_platform(
    name: str,
    detected_device_name: str | None,
    overrides: Mapping[str, float] | None = None,
    measured: Mapping[str, float] | None = None,
    *,
    memory_limit_gb: float | None = None,
    platforms: Mapping[str, Platform] | None = None,
    row: str | None = None,
) -> Platform:
    """The platform row `name` made to describe the detected device, or an error naming it.

    row: the row of resources/platforms.csv that configured platform `name` is, where config names
    another (platforms.<name>.hardware: two capped variants of one card, e.g. h200-40gb with
    memory_limit_gb 40 beside h200-141gb); None: the row named `name`. The result's `platform`
    is `name`, its numbers the row's.

    detected_device_name: the device as hardware.detect() reports it (CPU model name from
    /proc/cpuinfo, or torch.cuda.get_device_name / NVML for a GPU); None when no device of the
    kind is visible. overrides: config's platforms.<name>.spec: values for SPEC_FIELDS, highest
    precedence, and optionally `measure: true` (cpu rows only): MEASURED_ALWAYS and any other
    MEASURABLE_FIELDS come from this machine's measurement (rule measure_platform). measured:
    that measurement's numbers (tokencarbon.peak), below config, above the datasheet; with
    `measure` and measured None the measurement is still to run: those fields count as supplied
    (a DAG-build or cell check) and are NaN, labelled "measured (pending)", so nothing can divide
    by another device's peak. Precedence: config > measured > datasheet; spec_source says which
    field came from where, e.g. "datasheet; config: tdp_w, logical_cpus; measured:
    peak_tflops_fp32".

    When the device matches the row's device_name_pattern, the row (with any overrides and
    measurements) is returned. When it does not:
    - a gpu row raises HardwareMismatchError naming the device and the rows that would match it
      (a GPU without its own row needs one in resources/platforms.csv: peaks, memory, embodied);
    - a cpu row is returned for the detected CPU only if config or a measurement supplies every
      REQUIRED_FOR_OTHER_CPU field; its pattern becomes the detected name (anchored), its
      fp16/bf16/tf32/int8 peaks are dropped unless supplied (they described another CPU), and
      spec_source lists the fields still taken from the row ("row of another device: ...").
      Otherwise HardwareMismatchError names the detected CPU, the row's CPU and the keys to set.
    Raises ConfigError for an unknown name or a bad override (`measure` on a gpu row included),
    InputError for a bad measurement (one of `measure` lacking a MEASURED_ALWAYS field too).
    """
    table = platforms if platforms is not None else load_platforms()
    key = row or name
    if key not in table:
        where = f"config key platforms.{name}.hardware: row {key!r}" if row else f"platform {name!r}"
        raise ConfigError(f"{where}; valid rows of resources/platforms.csv: {', '.join(table)}")
    base = table[key]
    overrides, measure = split_measure(overrides)
    # Fields a cell's params name without their values (plan.measuring_spec): given in config,
    # checked there when the DAG was built, read by metrics only; NaN here.
    named = overrides.pop(METRICS_ONLY_KEY, None) or ()
    unknown = [k for k in named if k not in SPEC_FIELDS]
    if unknown:
        raise ConfigError(f"{METRICS_ONLY_KEY} {unknown}: not platform spec fields")
    if measure not in (True, False):
        raise ConfigError(
            f"config key platforms.{name}.spec.{MEASURE_KEY}: {measure!r}; valid: true or false"
        )
    if measure and base.kind != "cpu":
        raise ConfigError(
            f"config key platforms.{name}.spec.{MEASURE_KEY}: measures a CPU's matmul peak and "
            f"copy bandwidth (tokencarbon.peak), and platform {name!r} is a {base.kind}; give its "
            "numbers in platforms.<name>.spec instead, or drop measure"
        )
    pending = measure and measured is None
    measured = dict(measured or {})
    _check_spec(overrides, SPEC_FIELDS, f"config key platforms.{name}.spec", ConfigError, base.kind)
    for field in named:
        overrides.setdefault(field, math.nan)
    _check_spec(
        measured, MEASURABLE_FIELDS, f"measured peaks of platform {name!r}", InputError, base.kind
    )
    lacking = [f for f in MEASURED_ALWAYS if measure and not pending and f not in measured]
    if lacking:
        raise InputError(
            f"measured peaks of platform {name!r} lack {', '.join(lacking)}; a measurement "
            f"(rule measure_platform, results/<study>/platforms/{name}/spec.json) holds "
            f"{', '.join(MEASURED_ALWAYS)}: delete that file to measure again"
        )
    if pending:
        measured = {f: math.nan for f in MEASURED_ALWAYS}
    matches = _matches(base, detected_device_name)
    if matches:
        claimed = rows_matching(detected_device_name, table)
        if len(claimed) > 1:
            raise InputError(
                f"device {detected_device_name!r} matches rows {claimed} of "
                "resources/platforms.csv; a device must match exactly one row, or its cells "
                "would take either row's numbers: make their device_name_pattern exclusive"
            )
    source: dict[str, str] = {}
    values: dict[str, object] = {}
    if not matches:
        others = [
            p.platform for p in table.values()
            if p.kind == base.kind and _matches(p, detected_device_name)
        ]  # fmt: skip
        hint = f"; platforms matching it: {', '.join(others)}" if others else ""
        if base.kind == "gpu" or detected_device_name is None:
            raise HardwareMismatchError(
                f"platform {name!r} expects a device matching {base.device_name_pattern!r} "
                f"(resources/platforms.csv), but this machine's device is "
                f"{detected_device_name!r}{hint}; configure the platform this machine is, or add "
                "a row for this device to resources/platforms.csv"
            )
        missing = [f for f in REQUIRED_FOR_OTHER_CPU if f not in overrides and f not in measured]
        if missing:
            measurable = [f for f in missing if f in MEASURED_ALWAYS]
            told = [f for f in missing if f not in MEASURED_ALWAYS]
            raise HardwareMismatchError(
                f"platform {name!r} describes the CPU {base.device_name_pattern!r} "
                f"(resources/platforms.csv), but this machine's CPU is "
                f"{detected_device_name!r}{hint}; to measure it here give config "
                f"platforms.{name}.spec the values of this CPU for {', '.join(missing)}"
                + (
                    f" (or `measure: true` there for {', '.join(measurable)}: rule "
                    "measure_platform measures them on this machine, labelled measured"
                    + (f"; {', '.join(told)} still from config: a TDP is not measurable" if told else "")
                    + "; `python -m tokencarbon.peak --logical-cpus N` prints them as config lines)"
                    if measurable
                    else ""
                )
                + (
                    " (tdp_w: W, the TDP share of those logical CPUs from this CPU's datasheet; "
                    "a TDP is not measurable)"
                    if "tdp_w" in missing and not measurable
                    else ""
                )
                + ", or run on the CPU the row describes"
            )
        for f in ("peak_tflops_tf32", "peak_tflops_fp16", "peak_tflops_bf16", "peak_tflops_int8"):
            values[f] = None
        values["device_name_pattern"] = f"^{re.escape(detected_device_name)}$"
        inherited = [
            f for f in ("memory_gb", "embodied_kg_co2e", "embodied_kg_co2e_high", "lifetime_years")
            if f not in overrides
        ]  # fmt: skip
        source.update({f: f"row of another device ({base.platform})" for f in inherited})
    # in the tables' column order, whatever order a file or config gave them in
    for key in sorted(measured, key=MEASURABLE_FIELDS.index):
        values[key] = float(measured[key])  # type: ignore[arg-type]
        source[key] = PENDING if pending else "measured"
    for key in sorted(overrides, key=SPEC_FIELDS.index):
        value = overrides[key]
        number = float(value)  # type: ignore[arg-type]
        values[key] = int(number) if key == "logical_cpus" and math.isfinite(number) else number
        source[key] = "config"
    platform = dataclasses.replace(base, **values)  # type: ignore[arg-type]
    low, high = platform.embodied_kg_co2e, platform.embodied_kg_co2e_high
    if high is not None and high < low:
        raise ConfigError(
            f"config key platforms.{name}.spec: embodied_kg_co2e_high {high} is below "
            f"embodied_kg_co2e {low}"
        )
    if source:
        by_origin: dict[str, list[str]] = {}
        for key, origin in source.items():
            by_origin.setdefault(origin, []).append(key)
        parts = [f"{origin}: {', '.join(keys)}" for origin, keys in by_origin.items()]
        platform = dataclasses.replace(platform, spec_source="; ".join(["datasheet", *parts]))
    if memory_limit_gb is not None:
        if not 0 < memory_limit_gb <= platform.memory_gb:
            raise ConfigError(
                f"memory_limit_gb={memory_limit_gb} for platform {name!r}; "
                f"must be > 0 and <= its {platform.memory_gb} GB"
            )
        platform = dataclasses.replace(platform, memory_limit_gb=memory_limit_gb)
    return dataclasses.replace(platform, platform=name) if key != name else platform

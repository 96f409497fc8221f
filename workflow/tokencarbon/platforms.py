"""Hardware platforms (resources/platforms.csv): datasheet peaks, memory, TDP and embodied carbon,
and the peak FLOP/s and bytes/s that MFU and MBU divide by."""

from __future__ import annotations

import csv
import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

from tokencarbon.errors import ConfigError, InputError
from tokencarbon.models import DTYPE_BYTES, resources_dir


@dataclass(frozen=True)
class Platform:
    platform: str
    kind: str  # "cpu" | "gpu"
    device_name_pattern: str  # regex searched in the detected device name
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
    embodied_kg_co2e: float
    lifetime_years: float
    # CPU platforms: the logical CPUs the row's TDP and peaks describe; a cell is pinned to them.
    logical_cpus: int | None
    source: str
    memory_limit_gb: float | None = None  # set from config: caps usable memory below memory_gb


_OPTIONAL = {
    "peak_tflops_tf32",
    "peak_tflops_fp16",
    "peak_tflops_bf16",
    "peak_tflops_int8",
    "logical_cpus",
}
_TEXT = {"platform", "kind", "device_name_pattern", "source"}
_COLUMNS = [f.name for f in dataclasses.fields(Platform) if f.name != "memory_limit_gb"]

# float32 means plain fp32 FMA units, not TF32 tensor cores: torch keeps
# torch.backends.cuda.matmul.allow_tf32 off by default, so fp32 matmuls run at the fp32 peak.
_DTYPE_PEAK = {
    "float32": "peak_tflops_fp32",
    "float16": "peak_tflops_fp16",
    "bfloat16": "peak_tflops_bf16",
}
assert set(_DTYPE_PEAK) == set(DTYPE_BYTES)


def _parse(path: Path, row: dict[str, str], line: int) -> Platform:
    values: dict[str, object] = {}
    for col in _COLUMNS:
        raw = (row.get(col) or "").strip()
        if col in _TEXT:
            values[col] = raw
        elif raw == "" and col in _OPTIONAL:
            values[col] = None
        else:
            try:
                values[col] = int(raw) if col in ("release_year", "logical_cpus") else float(raw)
            except ValueError:
                raise InputError(
                    f"{path} line {line}, column {col}: {raw!r} is not a number"
                    + ("" if col not in _OPTIONAL else " (leave empty where the unit is absent)")
                ) from None
    if values["kind"] == "cpu" and not (values["logical_cpus"] or 0) >= 1:
        raise InputError(
            f"{path} line {line}, column logical_cpus: a cpu platform needs the number of logical "
            "CPUs its TDP and peaks describe (an integer >= 1)"
        )
    if values["kind"] not in ("cpu", "gpu"):
        raise InputError(f"{path} line {line}, column kind: {values['kind']!r}; valid: 'cpu', 'gpu'")
    try:
        re.compile(str(values["device_name_pattern"]))
    except re.error as e:
        raise InputError(f"{path} line {line}, column device_name_pattern: bad regex ({e})") from None
    return Platform(**values)  # type: ignore[arg-type]


def load_platforms(path: Path | str | None = None) -> dict[str, Platform]:
    path = Path(path) if path is not None else resources_dir() / "platforms.csv"
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in _COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise InputError(f"{path}: missing column(s) {missing}; required: {_COLUMNS}")
            platforms: dict[str, Platform] = {}
            for line, row in enumerate(reader, start=2):
                p = _parse(path, row, line)
                if p.platform in platforms:
                    raise InputError(f"{path} line {line}: platform {p.platform!r} appears twice")
                platforms[p.platform] = p
    except OSError as e:
        raise InputError(f"{path}: cannot read platform table ({e})") from e
    return platforms


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
    return tflops * 1e12


def peak_bandwidth_bytes_per_s(platform: Platform) -> float:
    return platform.memory_gb_per_s * 1e9  # datasheet GB/s are decimal

"""The probe cache: what determines a probe's result (probe_key, with the code fingerprint of the
probe and everything it imports) and the store under results/.cache/probe/ that lets a probe of
the same key reuse a stored result (ProbeCache)."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from tokencarbon.files import write_json
from tokencarbon.models import Architecture, architecture_to_dict
from tokencarbon.quantization import of_model
from tokencarbon.quantization import record as quantization_record

# Bumped when what a probe measures changes without its code changing (the cache key holds it).
PROBE_FORMAT = 2


def code_fingerprint() -> str:
    """sha256 over the source of every module of the probe package and every package module it
    imports, transitively (codedeps.package_modules of tokencarbon/probe/__init__.py, which imports
    each module of the probe): any change to the probe, the engines or the memory model changes
    it."""
    from tokencarbon.codedeps import package_modules

    here = Path(__file__).resolve().parent / "__init__.py"
    root = here.parents[2]
    digest = hashlib.sha256()
    for path in sorted({here, *package_modules(here, root)}):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def probe_key(
    *,
    platform: dict[str, Any],
    hardware: dict[str, Any],
    limits: dict[str, Any],
    arch: Architecture,
    model: dict[str, Any],
    prompt_len: int,
    output_len: int,
    method: str,
) -> dict[str, Any]:
    """What determines a probe's result (plain builtins): the platform's row and the detected
    device with its memory, the memory cap and search limits, the architecture, dtype,
    quantization (with its library) and whether weights are drawn or loaded, the prompt and output
    lengths, the method, the engines (the code fingerprint of the probe and everything it imports)
    and torch's version. Names (platform and model) are not in it: models and configs that share
    the rest share the result."""
    gpu = hardware.get("gpu") or {}
    return {
        "format": PROBE_FORMAT,
        "method": method,
        "platform_row": platform.get("hardware", platform["name"]),
        "device_name": hardware.get("device_name"),
        "device_memory_bytes": gpu.get("memory_total_bytes", hardware.get("host_memory_bytes")),
        "cpu_threads": torch.get_num_threads() if platform["kind"] == "cpu" else None,
        "memory_limit_gb": limits["memory_limit_gb"],
        "max_batch": limits["max_batch"],
        "max_num_seqs": limits.get("max_num_seqs"),
        "architecture": architecture_to_dict(arch),
        "dtype": model["dtype"],
        **quantization_record(of_model(model)),
        "weights": "dummy" if model.get("checkpoint") is None else "checkpoint",
        "prompt_len": prompt_len,
        "output_len": output_len,
        "engines": {"static": "torch TorchEngine", "continuous": "torch TorchServingEngine"},
        "code_sha256": code_fingerprint(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
    }


def key_digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


class ProbeCache:
    """results/.cache/probe/<sha256 of the key>.json: {"key", "result", "probed"}, read back only
    when its key equals this one in full (a digest collision, or a hand-edited file, is a miss).
    lock() serialises probes of one key, so a second waits for the first and reuses its result."""

    def __init__(self, folder: str | Path, key: dict[str, Any]):
        self.key = key
        self.digest = key_digest(key)
        self.path = Path(folder) / f"{self.digest}.json"

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Held while probing (or reading) this key. Where the file system refuses locks (some
        network mounts), probes of one key may both run; each still writes whole files."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX)
            except OSError:
                yield
                return
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def read(self) -> dict[str, Any] | None:
        try:
            entry = json.loads(self.path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        if not isinstance(entry, dict) or entry.get("key") != self.key:
            return None
        return entry

    def write(self, result: dict[str, Any], probed: dict[str, Any]) -> None:
        write_json(self.path, {"key": self.key, "result": result, "probed": probed})

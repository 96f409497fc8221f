"""Engine manifests: what a cell loads for a (platform, model), written by the engine stage.

For the torch backend with dummy weights the manifest is the recipe (architecture, dtype, seed):
regenerating N(0, 0.02) weights on the device takes seconds, far less than writing and reading them.
For a real checkpoint it records the files, so a changed checkpoint is visible in the manifest.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from tokencarbon.errors import ConfigError
from tokencarbon.models import load_architecture, param_count, weight_bytes


def checkpoint_files(checkpoint: str) -> list[dict[str, Any]]:
    path = Path(checkpoint)
    if not (path / "config.json").is_file():
        raise ConfigError(
            f"checkpoint {checkpoint!r} (config key models.<name>.checkpoint) is not a local Hugging "
            "Face model directory: it needs config.json and *.safetensors files"
        )
    files = sorted(p for p in path.iterdir() if p.suffix in {".json", ".safetensors", ".bin"})
    return [{"name": p.name, "bytes": p.stat().st_size, "mtime_ns": p.stat().st_mtime_ns} for p in files]


def torch_manifest(model: dict[str, Any]) -> dict[str, Any]:
    arch = load_architecture(model["architecture"])
    return {
        "backend": "torch",
        "model": model["name"],
        "architecture": dataclasses.asdict(arch),
        "dtype": model["dtype"],
        "seed": model["seed"],
        "weights": "checkpoint" if model["checkpoint"] else "dummy: N(0, 0.02) linear/embedding, norm 1",
        "checkpoint": model["checkpoint"],
        "checkpoint_files": checkpoint_files(model["checkpoint"]) if model["checkpoint"] else [],
        "param_count": param_count(arch),
        "weight_bytes": weight_bytes(arch, model["dtype"]),
    }

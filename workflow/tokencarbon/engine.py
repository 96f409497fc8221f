"""Engine manifests: what a cell loads for a (platform, model), written by the engine stage.

For dummy weights the manifest is the recipe (architecture, dtype, seed): regenerating N(0, 0.02)
weights on the device takes seconds, far less than writing and reading them. For a real checkpoint
it records the files, so a changed checkpoint is visible in the manifest. The architecture is
resolved as the DAG resolves it (models.resolve_architecture: a resources name, `auto` from the
checkpoint's config.json, or the dict the params carry).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from tokencarbon.errors import ConfigError
from tokencarbon.models import param_count, resolve_architecture, weight_bytes
from tokencarbon.quantization import of_model, record

DUMMY_WEIGHTS = "dummy: N(0, 0.02) linear/embedding, norm 1"
# Options of the transformers backend (TransformersEngine keywords) a config may set, and defaults:
# attn_implementation: transformers' name (sdpa, eager, flash_attention_2, ...); compile_decode:
# compile generate()'s decode step (None: transformers' choice, yes on CUDA with a static cache);
# cuda_graphs: continuous batching's use_cuda_graph (None: transformers' choice, yes on CUDA).
TRANSFORMERS_OPTIONS = {"attn_implementation": "sdpa", "compile_decode": None, "cuda_graphs": None}


def checkpoint_dir(checkpoint: str) -> Path:
    """The local directory of a checkpoint: the path itself, or a cached hub id's snapshot
    (offline). Raises ConfigError naming the checkpoint when neither holds config.json."""
    path = Path(checkpoint).expanduser()
    if not path.is_dir():
        try:
            from huggingface_hub import snapshot_download

            path = Path(snapshot_download(checkpoint, local_files_only=True))
        except Exception:  # not an id, or not in the cache: the message below says what to give
            pass
    if not (path / "config.json").is_file():
        raise ConfigError(
            f"checkpoint {checkpoint!r} (config key models.<name>.checkpoint) is not a local Hugging "
            "Face model directory or a hub id in the local cache: it needs config.json and "
            "*.safetensors files"
        )
    return path


def checkpoint_files(checkpoint: str) -> list[dict[str, Any]]:
    """Name, size and mtime of every .json/.safetensors/.bin file of the checkpoint."""
    path = checkpoint_dir(checkpoint)
    files = sorted(p for p in path.iterdir() if p.suffix in {".json", ".safetensors", ".bin"})
    return [
        {"name": p.name, "bytes": p.stat().st_size, "mtime_ns": p.stat().st_mtime_ns} for p in files
    ]


def _common(model: dict[str, Any], backend: str) -> dict[str, Any]:
    arch = resolve_architecture(model)
    quantization = of_model(model)
    return {
        "backend": backend,
        "model": model["name"],
        "architecture": dataclasses.asdict(arch),
        "dtype": model["dtype"],
        "seed": model["seed"],
        "weights": "checkpoint" if model["checkpoint"] else DUMMY_WEIGHTS,
        "checkpoint": model["checkpoint"],
        "checkpoint_files": checkpoint_files(model["checkpoint"]) if model["checkpoint"] else [],
        "param_count": param_count(arch),
        "weight_bytes": weight_bytes(arch, model["dtype"], quantization),
        **record(quantization),
    }


def torch_manifest(model: dict[str, Any]) -> dict[str, Any]:
    """The torch backend's manifest of a model slice (plan.model_slice)."""
    return _common(model, "torch")


def transformers_options(options: dict[str, Any] | None) -> dict[str, Any]:
    """TRANSFORMERS_OPTIONS completed with `options` (config backend slice). Raises ConfigError
    for an unknown key or a value of the wrong type, naming it."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(TRANSFORMERS_OPTIONS))
    if unknown:
        raise ConfigError(
            f"transformers backend options: unknown key(s) {unknown}; valid: "
            f"{sorted(TRANSFORMERS_OPTIONS)}"
        )
    out = TRANSFORMERS_OPTIONS | options
    if not isinstance(out["attn_implementation"], str):
        raise ConfigError(
            f"transformers backend option attn_implementation={out['attn_implementation']!r}; "
            "must be a transformers attention name such as 'sdpa'"
        )
    for key in ("compile_decode", "cuda_graphs"):
        if out[key] is not None and type(out[key]) is not bool:
            raise ConfigError(
                f"transformers backend option {key}={out[key]!r}; must be true, false or null"
            )
    return out


def transformers_manifest(
    model: dict[str, Any], options: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The transformers backend's manifest: the torch fields plus the transformers and torch
    versions of the machine that built it, the model class AutoModelForCausalLM picks for the
    model_type, and the backend options (attention implementation, compile, CUDA graphs). A cell
    records the versions and attention implementation that actually ran in its meta.json
    (TransformersEngine.describe)."""
    import torch
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    manifest = _common(model, "transformers")
    model_type = manifest["architecture"]["model_type"]
    return manifest | {
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "model_class": MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type],
        "options": transformers_options(options),
    }

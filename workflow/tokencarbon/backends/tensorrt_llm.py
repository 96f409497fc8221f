"""TensorRT-LLM engine stage, as the study built its engines: checkpoint conversion + trtllm-build.

Everything up to the library boundary lives here as plain data (the TRT-LLM checkpoint config for
dummy weights, the command lines), so it is tested without TensorRT-LLM; running it needs
`tensorrt_llm` installed and a GPU. README.md states which parts have run on hardware.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path
from typing import Any, TextIO

from tokencarbon.errors import ConfigError
from tokencarbon.files import write_json
from tokencarbon.models import Architecture, load_architecture

# TRT-LLM's model classes for our two families (tensorrt_llm.models).
_ARCHITECTURES = {"llama": "LlamaForCausalLM", "gpt2": "GPTForCausalLM"}
_CONVERTERS = {
    "llama": "examples/models/core/llama/convert_checkpoint.py",
    "gpt2": "examples/models/core/gpt/convert_checkpoint.py",
}


def require_tensorrt_llm() -> None:
    if importlib.util.find_spec("tensorrt_llm") is None or shutil.which("trtllm-build") is None:
        raise ConfigError(
            "config key backend.name: 'tensorrt_llm' needs the tensorrt_llm package and the "
            "trtllm-build command (pip install tensorrt-llm on a CUDA machine); neither is installed "
            "here. Use backend.name: torch, or install TensorRT-LLM"
        )


def pretrained_config(
    arch: Architecture, dtype: str, weight_only_int4: bool = False
) -> dict[str, Any]:
    """A TRT-LLM checkpoint config.json: trtllm-build --model_config builds it with random weights."""
    config = {
        "architecture": _ARCHITECTURES[arch.family],
        "dtype": dtype,
        "vocab_size": arch.vocab_size,
        "hidden_size": arch.hidden_size,
        "num_hidden_layers": arch.num_layers,
        "num_attention_heads": arch.num_heads,
        "num_key_value_heads": arch.num_kv_heads,
        "intermediate_size": arch.intermediate_size,
        "max_position_embeddings": arch.max_positions,
        "hidden_act": arch.activation if arch.family == "llama" else "gelu",
        "norm_epsilon": arch.norm_eps,
        "position_embedding_type": (
            "rope_gpt_neox" if arch.family == "llama" else "learned_absolute"
        ),
        "share_embedding_table": arch.tied_embeddings,
        "mapping": {"world_size": 1, "tp_size": 1, "pp_size": 1},
        "quantization": {"quant_algo": "W4A16" if weight_only_int4 else None},
    }
    if arch.rope_theta is not None:
        config["rotary_base"] = arch.rope_theta
    return config


def convert_command(
    arch: Architecture,
    checkpoint: str,
    out_dir: str,
    dtype: str,
    trtllm_root: str,
    weight_only_int4: bool = False,
) -> list[str]:
    cmd = [
        "python",
        str(Path(trtllm_root) / _CONVERTERS[arch.family]),
        "--model_dir",
        checkpoint,
        "--output_dir",
        out_dir,
        "--dtype",
        dtype,
    ]
    if weight_only_int4:
        cmd += ["--use_weight_only", "--weight_only_precision", "int4"]
    return cmd


def build_command(
    source: dict[str, str], engine_dir: str, build: dict[str, Any], dtype: str
) -> list[str]:
    """trtllm-build from a converted checkpoint ({'checkpoint_dir': ...}) or a config ({'model_config': ...})."""
    ((flag, path),) = source.items()
    return [
        "trtllm-build",
        f"--{flag}",
        path,
        "--output_dir",
        engine_dir,
        "--max_batch_size",
        str(build["max_batch_size"]),
        "--max_input_len",
        str(build["max_input_len"]),
        "--max_seq_len",
        str(build["max_input_len"] + build["max_output_len"]),
        "--gemm_plugin",
        dtype,
        "--gpt_attention_plugin",
        dtype,
    ]


def build_engine(
    model: dict[str, Any],
    build: dict[str, Any],
    *,
    engine_dir: str,
    manifest_path: str,
    log: TextIO,
) -> None:
    require_tensorrt_llm()
    import tensorrt_llm  # noqa: F401  (present: require_tensorrt_llm checked)

    arch = load_architecture(model["architecture"])
    work = Path(engine_dir).with_name("checkpoint")
    work.mkdir(parents=True, exist_ok=True)
    if model["checkpoint"]:
        root = Path(tensorrt_llm.__file__).parents[1]
        subprocess.run(
            convert_command(arch, model["checkpoint"], str(work), model["dtype"], str(root)),
            check=True,
            stdout=log,
            stderr=log,
        )
        source = {"checkpoint_dir": str(work)}
    else:
        write_json(work / "config.json", pretrained_config(arch, model["dtype"]))
        source = {"model_config": str(work / "config.json")}
    subprocess.run(
        build_command(source, engine_dir, build, model["dtype"]), check=True, stdout=log, stderr=log
    )
    write_json(
        manifest_path,
        {
            "backend": "tensorrt_llm",
            "model": model["name"],
            "engine_dir": engine_dir,
            "build": build,
            "dtype": model["dtype"],
        },
    )

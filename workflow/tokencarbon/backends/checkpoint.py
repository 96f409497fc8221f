"""Hugging Face checkpoints for the torch backend: a local directory's *.safetensors read onto the
device, renamed (and fused, transposed) into model.Decoder's state dict."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor

from tokencarbon.errors import InputError
from tokencarbon.models import Architecture, check_checkpoint_matches

# Checkpoint tensors that are buffers, not weights (older GPT-2 causal masks, Llama rotary tables).
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq")


def read_checkpoint(
    arch: Architecture, checkpoint: str, dtype: torch.dtype, device: torch.device
) -> dict[str, Tensor]:
    """The checkpoint's tensors as Decoder's state dict, in `dtype` on `device`. Raises ConfigError
    when its config.json disagrees with `arch` (models.check_checkpoint_matches), InputError for a
    folder without safetensors, a missing tensor, or a tensor the architecture does not have."""
    path = Path(checkpoint)
    check_checkpoint_matches(arch, path)
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise InputError(f"checkpoint {path}: no *.safetensors files (only safetensors is read)")
    raw: dict[str, Tensor] = {}
    for f in files:
        raw.update(load_file(f, device=str(device)))
    prefix = "model." if arch.family == "llama" else "transformer."
    raw = {k.removeprefix(prefix): v for k, v in raw.items() if not k.endswith(_IGNORED_SUFFIXES)}

    def take(key: str, transpose: bool = False) -> Tensor:
        if key not in raw:
            raise InputError(
                f"checkpoint {path}: tensor {key!r} missing; a {arch.model_type} checkpoint of "
                f"architecture {arch.name!r} has it"
            )
        t = raw.pop(key)
        return (t.t() if transpose else t).to(dtype).contiguous()

    state = _map_llama(arch, take) if arch.family == "llama" else _map_gpt2(arch, take)
    if arch.tied_embeddings:
        raw.pop("lm_head.weight", None)
        state["lm_head.weight"] = state["embed.weight"]
    if raw:
        raise InputError(
            f"checkpoint {path}: unexpected tensors {sorted(raw)[:5]} for a {arch.model_type} model "
            f"of architecture {arch.name!r}"
        )
    return state


def _map_llama(arch: Architecture, take: Callable[..., Tensor]) -> dict[str, Tensor]:
    """Llama, Mistral and Qwen2 (q/k/v biases) tensor names; q, k, v fused, gate and up fused."""
    state = {"embed.weight": take("embed_tokens.weight"), "norm.weight": take("norm.weight")}
    if not arch.tied_embeddings:
        state["lm_head.weight"] = take("lm_head.weight")
    for i in range(arch.num_layers):
        hf, ours = f"layers.{i}.", f"layers.{i}."
        attn, mlp = hf + "self_attn.", hf + "mlp."
        state |= {
            ours + "attn_norm.weight": take(hf + "input_layernorm.weight"),
            ours + "attn.qkv.weight": torch.cat([take(attn + f"{p}_proj.weight") for p in "qkv"]),
            ours + "attn.out.weight": take(attn + "o_proj.weight"),
            ours + "mlp_norm.weight": take(hf + "post_attention_layernorm.weight"),
            ours + "mlp.up.weight": torch.cat(
                [take(mlp + "gate_proj.weight"), take(mlp + "up_proj.weight")]
            ),
            ours + "mlp.down.weight": take(mlp + "down_proj.weight"),
        }
        if arch.qkv_bias:
            state[ours + "attn.qkv.bias"] = torch.cat([take(attn + f"{p}_proj.bias") for p in "qkv"])
        if arch.attn_out_bias:
            state[ours + "attn.out.bias"] = take(attn + "o_proj.bias")
        if arch.mlp_bias:
            state[ours + "mlp.up.bias"] = torch.cat(
                [take(mlp + "gate_proj.bias"), take(mlp + "up_proj.bias")]
            )
            state[ours + "mlp.down.bias"] = take(mlp + "down_proj.bias")
    return state


def _map_gpt2(arch: Architecture, take: Callable[..., Tensor]) -> dict[str, Tensor]:
    state = {
        "embed.weight": take("wte.weight"),
        "pos_embed.weight": take("wpe.weight"),
        "norm.weight": take("ln_f.weight"),
        "norm.bias": take("ln_f.bias"),
    }
    # GPT-2's Conv1D stores weights as [in, out]; nn.Linear wants [out, in].
    pairs = {
        "ln_1": "attn_norm",
        "attn.c_attn": "attn.qkv",
        "attn.c_proj": "attn.out",
        "ln_2": "mlp_norm",
        "mlp.c_fc": "mlp.up",
        "mlp.c_proj": "mlp.down",
    }
    for i in range(arch.num_layers):
        for hf, ours in pairs.items():
            conv1d = not hf.startswith("ln_")
            state[f"layers.{i}.{ours}.weight"] = take(f"h.{i}.{hf}.weight", transpose=conv1d)
            state[f"layers.{i}.{ours}.bias"] = take(f"h.{i}.{hf}.bias")
    return state

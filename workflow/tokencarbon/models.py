"""Model architectures (resources/models/*.json) and the parameter, weight, KV-cache and
activation byte counts derived from them."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields
from pathlib import Path

from tokencarbon.errors import ConfigError, InputError

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}

_ALLOWED = {
    "family": ("llama", "gpt2"),
    "activation": ("silu", "gelu_new"),
    "norm": ("rmsnorm", "layernorm"),
}


@dataclass(frozen=True)
class Architecture:
    name: str
    family: str  # "llama": RMSNorm, RoPE, SwiGLU, no biases, untied lm_head
    # "gpt2": LayerNorm, learned positions, fused qkv, GELU MLP, biases everywhere, tied lm_head
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int
    max_positions: int
    tied_embeddings: bool
    activation: str
    norm: str
    norm_eps: float
    rope_theta: float | None

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def kv_dim(self) -> int:
        """Width of the K (or V) projection: smaller than hidden_size under grouped-query attention."""
        return self.num_kv_heads * self.head_dim


def resources_dir() -> Path:
    """<repo>/resources, or $TOKENCARBON_RESOURCES when set (tests, installed copies)."""
    override = os.environ.get("TOKENCARBON_RESOURCES")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[2] / "resources"


def _models_dir() -> Path:
    return resources_dir() / "models"


def available_architectures() -> list[str]:
    return sorted(p.stem for p in _models_dir().glob("*.json"))


def load_architecture(name: str) -> Architecture:
    path = _models_dir() / f"{name}.json"
    if not path.is_file():
        raise ConfigError(
            f"model {name!r}: no {path}; valid models: {', '.join(available_architectures())}"
        )
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(raw, dict):
        raise InputError(f"{path}: expected a JSON object of architecture fields")
    names = [f.name for f in fields(Architecture)]
    missing = [k for k in names + ["source"] if k not in raw]
    if missing:
        raise InputError(f"{path}: missing key(s) {missing}; required: {names + ['source']}")
    for key, allowed in _ALLOWED.items():
        if raw[key] not in allowed:
            raise InputError(f"{path}: {key}={raw[key]!r}; valid: {list(allowed)}")
    for f in fields(Architecture):
        value = raw[f.name]
        if f.type == "int" and (type(value) is not int or value < 1):
            raise InputError(f"{path}: {f.name}={value!r}; must be a positive integer")
    if raw["name"] != name:
        raise InputError(f"{path}: name={raw['name']!r} must equal the file stem {name!r}")
    arch = Architecture(**{k: raw[k] for k in names})
    if arch.hidden_size % arch.num_heads or arch.num_heads % arch.num_kv_heads:
        raise InputError(
            f"{path}: hidden_size {arch.hidden_size} must divide by num_heads {arch.num_heads}, "
            f"and num_heads by num_kv_heads {arch.num_kv_heads}"
        )
    if (arch.family == "llama") != (arch.rope_theta is not None):
        raise InputError(f"{path}: rope_theta must be a number for llama and null for gpt2")
    return arch


def _layer_matmul_params(arch: Architecture) -> int:
    h, i = arch.hidden_size, arch.intermediate_size
    attn = 2 * h * h + 2 * h * arch.kv_dim  # q, o: h x h; k, v: h x kv_dim
    mlp = (3 if arch.family == "llama" else 2) * h * i  # SwiGLU gate/up/down vs GELU fc/proj
    return attn + mlp


def matmul_param_count(arch: Architecture) -> int:
    """Weights of every matmul one token passes through, lm_head included; embeddings,
    norms and biases excluded (they cost no multiply-accumulate per weight)."""
    return arch.num_layers * _layer_matmul_params(arch) + arch.hidden_size * arch.vocab_size


def param_count(arch: Architecture) -> int:
    """Every parameter, tied embeddings counted once (as torch's model.parameters() does)."""
    h, i = arch.hidden_size, arch.intermediate_size
    embeddings = arch.vocab_size * h
    if arch.family == "llama":
        per_layer_extra = 2 * h  # two RMSNorm weights
        final_norm = h
    else:
        # biases of qkv (h + 2 kv_dim), attn proj (h), fc (i), mlp proj (h); two LayerNorms (2 x 2h)
        per_layer_extra = (h + 2 * arch.kv_dim) + h + i + h + 4 * h
        final_norm = 2 * h
        embeddings += arch.max_positions * h  # learned absolute positions
    total = matmul_param_count(arch) + arch.num_layers * per_layer_extra + final_norm + embeddings
    if arch.tied_embeddings:
        total -= arch.hidden_size * arch.vocab_size  # lm_head shares the token embedding
    return total


def _dtype_bytes(dtype: str) -> int:
    if dtype not in DTYPE_BYTES:
        raise ConfigError(f"dtype {dtype!r}; valid: {list(DTYPE_BYTES)}")
    return DTYPE_BYTES[dtype]


def weight_bytes(arch: Architecture, dtype: str) -> int:
    return param_count(arch) * _dtype_bytes(dtype)


def kv_cache_bytes(arch: Architecture, batch: int, seq_len: int, dtype: str) -> int:
    """K and V for every layer, kv head and position: 2 x layers x kv_heads x head_dim x seq x batch."""
    return 2 * arch.num_layers * arch.kv_dim * seq_len * batch * _dtype_bytes(dtype)


def activation_bytes(arch: Architecture, batch: int, seq_len: int, dtype: str) -> int:
    """Peak transient activations of a prefill of batch x seq_len tokens (eager attention).

    Model, in elements, all in the model dtype:
      residual stream + its normed copy       2 x B x T x h
      + the larger of one layer's
          attention: q, k, v (B x T x (h + 2 kv_dim)), scores and softmax probabilities
                     materialised (2 x B x heads x T x T), attention output (B x T x h)
          MLP:       llama gate, up and act(gate)*up (3 x B x T x I); gpt2 fc and gelu (2 x B x T x I)
      + logits of the last position only       B x vocab
    Intermediates of earlier layers are freed, so only one layer counts. A fused/flash attention
    kernel needs less; this is an upper-end estimate for the CPU memory check.
    """
    b, t, h = batch, seq_len, arch.hidden_size
    residual = 2 * b * t * h
    attention = b * t * (h + 2 * arch.kv_dim) + 2 * b * arch.num_heads * t * t + b * t * h
    mlp = (3 if arch.family == "llama" else 2) * b * t * arch.intermediate_size
    logits = b * arch.vocab_size
    return (residual + max(attention, mlp) + logits) * _dtype_bytes(dtype)

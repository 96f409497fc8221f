"""Model architectures and the parameter, weight, KV-cache and activation byte counts derived from them.

An architecture comes from one of three places, all through Architecture's own checks:
- resources/models/<name>.json (load_architecture), published numbers with their source;
- a checkpoint's config.json read offline through transformers.AutoConfig (architecture_from_config,
  `architecture: auto` in config);
- the plain dict a job's params carry (architecture_to_dict / architecture_from_dict).
resolve_architecture(model) picks among them for a config model entry.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any

from tokencarbon.errors import ConfigError, InputError

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}

# An explicit override of where resources/ is (a site's own copy); see resources_dir.
RESOURCES_ENV = "TOKENCARBON_RESOURCES"

# Hugging Face model_type -> our layout family. "llama": RMSNorm, RoPE, SwiGLU MLP (gate/up/down),
# separate q/k/v/o projections, no absolute positions; Mistral and Qwen2 share that layout (Mistral
# adds a sliding attention window, Qwen2 biases on q/k/v). "gpt2": LayerNorm with bias, learned
# absolute positions, fused qkv, GELU MLP, biases everywhere.
MODEL_TYPES = {"llama": "llama", "mistral": "llama", "qwen2": "llama", "gpt2": "gpt2"}
_FAMILY_LAYERS = {"llama": ("silu", "rmsnorm"), "gpt2": ("gelu_new", "layernorm")}
_ALLOWED = {
    "family": tuple(_FAMILY_LAYERS),
    "model_type": tuple(MODEL_TYPES),
    "activation": ("silu", "gelu_new"),
    "norm": ("rmsnorm", "layernorm"),
}
# Biases each transformers class builds (modeling_<type>.py): Qwen2Attention has bias=True on q, k,
# v and none on o; Mistral none; GPT-2 everywhere; Llama's q, k, v and o follow
# config.attention_bias together and its MLP follows config.mlp_bias.
_FIXED_BIASES = {
    "gpt2": {"qkv_bias": True, "attn_out_bias": True, "mlp_bias": True},
    "qwen2": {"qkv_bias": True, "attn_out_bias": False, "mlp_bias": False},
    "mistral": {"qkv_bias": False, "attn_out_bias": False, "mlp_bias": False},
}
# Keys a llama3 rope scaling needs (transformers' modeling_rope_utils._compute_llama3_parameters).
_LLAMA3_ROPE_KEYS = (
    "factor",
    "low_freq_factor",
    "high_freq_factor",
    "original_max_position_embeddings",
)


def _is_int(v: Any) -> bool:
    return type(v) is int  # bool is an int subclass: "true" is no layer count


def _is_number(v: Any) -> bool:
    return type(v) in (int, float) and math.isfinite(v)


@dataclass(frozen=True)
class Architecture:
    """The numbers that fix a decoder's shapes. Every field is type-checked on construction
    (ConfigError naming the field, its value and what is valid): booleans must be true/false, sizes
    positive integers. Fields after `rope_theta` are optional; None means "what the family or
    model_type implies" and is replaced by that value, so an instance always holds concrete values.
    """

    name: str
    family: str  # layout: "llama" or "gpt2" (MODEL_TYPES)
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int  # < num_heads: grouped-query attention
    intermediate_size: int
    vocab_size: int
    max_positions: int  # learned position table (GPT-2) or trained context (RoPE models)
    tied_embeddings: bool  # lm_head shares the token embedding
    activation: str  # HF hidden_act / activation_function name
    norm: str
    norm_eps: float
    rope_theta: float | None  # RoPE base; None for learned positions
    model_type: str | None = None  # HF model_type; default: the family's own ("llama", "gpt2")
    qkv_bias: bool | None = None  # biases on the q, k, v projections
    attn_out_bias: bool | None = None  # bias on the attention output projection
    mlp_bias: bool | None = None  # biases on the MLP projections
    head_dim: int | None = None  # default hidden_size // num_heads (Mistral-Nemo sets its own)
    # RoPE scaling as HF writes it (without rope_theta), e.g. Llama-3.1's {"rope_type": "llama3",
    # "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
    # "original_max_position_embeddings": 8192}; None: plain RoPE.
    rope_scaling: dict[str, Any] | None = None
    # Attention window in tokens on every layer (Mistral-7B-v0.1: 4096); None: full attention.
    sliding_window: int | None = None

    def __post_init__(self) -> None:
        def fail(field: str, what: str) -> None:
            raise ConfigError(
                f"architecture {self.name!r}: {field}={getattr(self, field)!r}; {what}"
            )

        def fill(field: str, value: Any) -> None:
            object.__setattr__(self, field, value)

        if not isinstance(self.name, str) or not self.name:
            fail("name", "must be a non-empty string")
        for key in ("family", "activation", "norm"):
            if getattr(self, key) not in _ALLOWED[key]:
                fail(key, f"valid: {list(_ALLOWED[key])}")
        for key in (
            "hidden_size",
            "num_layers",
            "num_heads",
            "num_kv_heads",
            "intermediate_size",
            "vocab_size",
            "max_positions",
        ):
            if not _is_int(getattr(self, key)) or getattr(self, key) < 1:
                fail(key, "must be a positive integer")
        if type(self.tied_embeddings) is not bool:
            fail("tied_embeddings", "must be a boolean (JSON true or false)")
        if not _is_number(self.norm_eps) or not 0 < self.norm_eps < 1:
            fail("norm_eps", "must be a number in (0, 1)")
        if self.rope_theta is not None and (
            not _is_number(self.rope_theta) or self.rope_theta <= 0
        ):
            fail("rope_theta", "must be a positive number, or null for learned positions")

        if self.model_type is None:
            fill("model_type", self.family)
        if not isinstance(self.model_type, str) or self.model_type not in MODEL_TYPES:
            fail("model_type", f"valid: {list(MODEL_TYPES)} (Hugging Face model_type)")
        if MODEL_TYPES[self.model_type] != self.family:
            fail(
                "family",
                f"model_type {self.model_type!r} has the {MODEL_TYPES[self.model_type]!r} layout",
            )
        if (self.activation, self.norm) != _FAMILY_LAYERS[self.family]:
            fail(
                "activation",
                f"with norm={self.norm!r}: the {self.family!r} family uses "
                f"activation/norm {_FAMILY_LAYERS[self.family]}",
            )

        fixed = _FIXED_BIASES.get(self.model_type, {})
        for key in ("qkv_bias", "attn_out_bias", "mlp_bias"):
            value = getattr(self, key)
            if value is None:
                default = self.qkv_bias if key == "attn_out_bias" else False  # Llama: as q/k/v
                value = fixed.get(key, default)
                fill(key, value)
            if type(value) is not bool:
                fail(key, "must be a boolean (JSON true or false) or omitted")
            if key in fixed and value != fixed[key]:
                fail(key, f"transformers' {self.model_type} builds {key}={fixed[key]}")
        if self.model_type == "llama" and self.qkv_bias != self.attn_out_bias:
            fail(
                "attn_out_bias",
                f"Llama's attention_bias sets q, k, v and o together "
                f"(qkv_bias={self.qkv_bias})",
            )

        if self.head_dim is None:
            if self.hidden_size % self.num_heads:
                fail("hidden_size", f"must divide by num_heads {self.num_heads} (or give head_dim)")
            fill("head_dim", self.hidden_size // self.num_heads)
        if not _is_int(self.head_dim) or self.head_dim < 1:
            fail("head_dim", "must be a positive integer or omitted")
        if self.family == "gpt2" and self.head_dim * self.num_heads != self.hidden_size:
            fail(
                "head_dim", f"GPT-2 heads split hidden_size: {self.hidden_size} // {self.num_heads}"
            )
        if self.num_heads % self.num_kv_heads:
            fail("num_kv_heads", f"must divide num_heads {self.num_heads}")
        if self.family == "llama" and self.rope_theta is None:
            fail("rope_theta", "the llama family needs a RoPE base (a positive number)")
        if self.family == "llama" and self.head_dim % 2:
            fail("head_dim", "RoPE rotates pairs of dimensions: head_dim must be even")
        if self.family == "gpt2" and self.rope_theta is not None:
            fail("rope_theta", "must be null: GPT-2 has learned positions")
        self._check_rope_scaling(fail)
        if self.sliding_window is not None:
            if not _is_int(self.sliding_window) or self.sliding_window < 1:
                fail("sliding_window", "must be a positive integer or null (full attention)")
            if self.model_type not in ("mistral", "qwen2"):
                fail("sliding_window", "only mistral and qwen2 models have a sliding window")

    def _check_rope_scaling(self, fail) -> None:
        rs = self.rope_scaling
        if rs is None:
            return
        if self.family != "llama":
            fail("rope_scaling", "must be null: GPT-2 has no RoPE")
        if not isinstance(rs, dict) or not isinstance(rs.get("rope_type"), str):
            fail("rope_scaling", 'must be null or an object with a "rope_type" string')
        if rs["rope_type"] == "default" or "rope_theta" in rs:
            fail("rope_scaling", "holds scaling only: plain RoPE is null, the base is rope_theta")
        for key, value in rs.items():
            scalar = _is_number(value) or isinstance(value, (str, bool))
            numbers = isinstance(value, list) and all(_is_number(v) for v in value)
            if not isinstance(key, str) or not (scalar or numbers):
                fail(
                    "rope_scaling",
                    f"key {key!r}: values must be numbers, strings, booleans "
                    "or lists of numbers",
                )
        if rs["rope_type"] == "llama3":
            bad = [k for k in _LLAMA3_ROPE_KEYS if not _is_number(rs.get(k)) or rs[k] <= 0]
            if bad:
                fail("rope_scaling", f"llama3 scaling needs positive numbers for {bad}")

    @property
    def q_dim(self) -> int:
        """Width of the Q projection (and the attention output): num_heads x head_dim."""
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        """Width of the K (or V) projection: smaller than q_dim under grouped-query attention."""
        return self.num_kv_heads * self.head_dim


_REQUIRED = [f.name for f in fields(Architecture) if f.default is MISSING]
_KEYS = [f.name for f in fields(Architecture)]


def architecture_to_dict(arch: Architecture) -> dict[str, Any]:
    """Plain builtins (JSON- and params-safe); architecture_from_dict reads it back."""
    return dataclasses.asdict(arch)


def architecture_from_dict(raw: Any, where: str) -> Architecture:
    """An Architecture from a dict of its fields (a resources JSON without `source`, or params).

    Raises InputError naming `where`, an unknown or missing key, or the field at fault."""
    if not isinstance(raw, dict):
        raise InputError(
            f"{where}: expected an object of architecture fields, got {type(raw).__name__}"
        )
    unknown = sorted(set(raw) - set(_KEYS))
    if unknown:
        raise InputError(f"{where}: unknown key(s) {unknown}; valid keys: {_KEYS}")
    missing = [k for k in _REQUIRED if k not in raw]
    if missing:
        raise InputError(f"{where}: missing key(s) {missing}; required: {_REQUIRED}")
    try:
        return Architecture(**raw)
    except ConfigError as e:
        raise InputError(f"{where}: {e}") from None


# ---------------------------------------------------------------- resources/models


def resources_dir(workflow_dir: str | Path | None = None) -> Path:
    """The resources/ folder (models/*.json, platforms.csv) that code reads.

    In order: $TOKENCARBON_RESOURCES when set (an explicit override: a site's own copy);
    <workflow_dir>/resources when workflow_dir is given (the DAG and its jobs pass the directory of
    the workflow they run, so a non-editable install or a virtualenv shared by several checkouts
    reads each checkout's own files); else the checkout holding this package (editable installs,
    tests). Raises ConfigError when the chosen folder is not a directory, saying how it was chosen.
    """
    override = os.environ.get(RESOURCES_ENV)
    if override:
        path, how = Path(override), f"${RESOURCES_ENV}"
    elif workflow_dir is not None:
        path, how = Path(workflow_dir) / "resources", f"the workflow directory {workflow_dir}"
    else:
        path, how = Path(__file__).resolve().parents[2] / "resources", "the package's checkout"
    if not path.is_dir():
        raise ConfigError(
            f"resources folder {path} (from {how}) does not exist; pass the workflow directory "
            f"holding resources/, or set {RESOURCES_ENV} to a copy of the repository's resources/"
        )
    return path


def _models_dir(workflow_dir: str | Path | None = None) -> Path:
    return resources_dir(workflow_dir) / "models"


def available_architectures(workflow_dir: str | Path | None = None) -> list[str]:
    """Names of resources/models/*.json (file stems), sorted."""
    return sorted(p.stem for p in _models_dir(workflow_dir).glob("*.json"))


def load_architecture(name: str, workflow_dir: str | Path | None = None) -> Architecture:
    """resources/models/<name>.json. Raises ConfigError for an unknown name (listing the valid
    ones), InputError naming the file and key for a malformed file (bad JSON, unknown, missing or
    ill-typed keys, no `source`, `name` not the file stem)."""
    path = _models_dir(workflow_dir) / f"{name}.json"
    if not path.is_file():
        raise ConfigError(
            f"model {name!r}: no {path}; valid models: "
            f"{', '.join(available_architectures(workflow_dir))}"
        )
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(raw, dict):
        raise InputError(f"{path}: expected a JSON object of architecture fields")
    source = raw.pop("source", None)
    if not isinstance(source, str) or not source.strip():
        raise InputError(
            f"{path}: missing key(s) ['source'] (a non-empty string: the config.json or paper "
            f"each number comes from); required: {_REQUIRED + ['source']}"
        )
    if raw.get("name") != name:
        raise InputError(f"{path}: name={raw.get('name')!r} must equal the file stem {name!r}")
    return architecture_from_dict(raw, str(path))


# ---------------------------------------------------------------- checkpoints (config.json)

# Architecture field -> the config.json key it comes from, for messages naming both values.
_HF_KEYS = {
    "llama": {
        "model_type": "model_type", "hidden_size": "hidden_size",
        "num_layers": "num_hidden_layers", "num_heads": "num_attention_heads",
        "num_kv_heads": "num_key_value_heads", "intermediate_size": "intermediate_size",
        "vocab_size": "vocab_size", "max_positions": "max_position_embeddings",
        "tied_embeddings": "tie_word_embeddings", "activation": "hidden_act",
        "norm_eps": "rms_norm_eps", "rope_theta": "rope_theta", "qkv_bias": "attention_bias",
        "attn_out_bias": "attention_bias", "mlp_bias": "mlp_bias", "head_dim": "head_dim",
        "rope_scaling": "rope_scaling", "sliding_window": "sliding_window",
    },
    "gpt2": {
        "model_type": "model_type", "hidden_size": "n_embd", "num_layers": "n_layer",
        "num_heads": "n_head", "num_kv_heads": "n_head", "intermediate_size": "n_inner",
        "vocab_size": "vocab_size", "max_positions": "n_positions",
        "tied_embeddings": "tie_word_embeddings", "activation": "activation_function",
        "norm_eps": "layer_norm_epsilon",
    },
}  # fmt: skip


def read_checkpoint_config(checkpoint: str | Path):
    """transformers' config of a checkpoint, read offline: a local Hugging Face model directory
    (config.json) or a hub id already in the local Hugging Face cache. Raises ConfigError naming
    the checkpoint when transformers cannot read it without the network (missing directory or
    config.json, invalid JSON, a value of the wrong type, a model_type transformers does not know,
    an id not in the cache)."""
    from transformers import AutoConfig  # imported here: seconds, and only checkpoints need it

    spec = str(checkpoint)
    path = Path(spec).expanduser()
    if path.is_dir() and not (path / "config.json").is_file():
        raise ConfigError(
            f"checkpoint {spec!r}: the directory has no config.json; a Hugging Face model "
            "directory (save_pretrained's output) holds config.json and *.safetensors"
        )
    if spec.startswith(("/", ".", "~")) and not path.exists():
        raise ConfigError(
            f"checkpoint {spec!r}: no such directory; give a local Hugging Face model directory "
            "or a hub id already in the local Hugging Face cache"
        )
    try:
        return AutoConfig.from_pretrained(spec, local_files_only=True)
    except Exception as e:  # transformers raises OSError, ValueError, its validation errors...
        reason = " ".join(str(e).split())[:300] or type(e).__name__
        raise ConfigError(
            f"checkpoint {spec!r}: transformers cannot read its config.json offline "
            f"({type(e).__name__}: {reason}); give a local Hugging Face model directory holding "
            "config.json, or a hub id already in the local Hugging Face cache (download it "
            "first, e.g. `hf download <id>`)"
        ) from None


def _rope_from_config(config) -> tuple[float | None, dict[str, Any] | None]:
    """(rope_theta, scaling) from transformers >= 5 (`rope_parameters`, the base inside) or 4
    (`rope_theta` and `rope_scaling`, scaling type under "type" in old configs)."""
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, dict) and params:
        scaling = dict(params)
        theta = scaling.pop("rope_theta", None)
    else:
        theta = getattr(config, "rope_theta", None)
        scaling = dict(getattr(config, "rope_scaling", None) or {})
    if "type" in scaling and "rope_type" not in scaling:
        scaling["rope_type"] = scaling.pop("type")
    if scaling.get("rope_type", "default") == "default" and set(scaling) <= {"rope_type", "type"}:
        scaling = {}
    return theta, scaling or None


def architecture_from_hf_config(config, name: str, where: str) -> Architecture:
    """An Architecture from a transformers config object (PretrainedConfig). Raises ConfigError
    naming `where` for a model_type other than MODEL_TYPES or a value Architecture refuses."""
    model_type = getattr(config, "model_type", None)
    if model_type not in MODEL_TYPES:
        raise ConfigError(
            f"{where}: model_type {model_type!r} is not supported; supported: {list(MODEL_TYPES)} "
            "(decoder-only models whose parameter, FLOP and byte counts this package derives)"
        )
    try:
        if model_type == "gpt2":
            fields_ = dict(
                family="gpt2", hidden_size=config.n_embd, num_layers=config.n_layer,
                num_heads=config.n_head, num_kv_heads=config.n_head,
                intermediate_size=config.n_inner or 4 * config.n_embd,  # null: 4 x n_embd
                vocab_size=config.vocab_size, max_positions=config.n_positions,
                tied_embeddings=bool(config.tie_word_embeddings),
                activation=config.activation_function, norm="layernorm",
                norm_eps=config.layer_norm_epsilon, rope_theta=None,
            )  # fmt: skip
        else:
            theta, scaling = _rope_from_config(config)
            heads = config.num_attention_heads
            kv_heads = getattr(config, "num_key_value_heads", None) or heads
            fields_ = dict(
                family="llama", hidden_size=config.hidden_size,
                num_layers=config.num_hidden_layers, num_heads=heads, num_kv_heads=kv_heads,
                intermediate_size=config.intermediate_size, vocab_size=config.vocab_size,
                max_positions=config.max_position_embeddings,
                tied_embeddings=bool(config.tie_word_embeddings), activation=config.hidden_act,
                norm="rmsnorm", norm_eps=config.rms_norm_eps,
                rope_theta=float(theta) if _is_number(theta) else theta, rope_scaling=scaling,
                head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
                sliding_window=_sliding_window(config, model_type, where),
            )  # fmt: skip
            if model_type == "llama":
                fields_ |= dict(
                    qkv_bias=bool(config.attention_bias), attn_out_bias=bool(config.attention_bias),
                    mlp_bias=bool(getattr(config, "mlp_bias", False)),
                )  # fmt: skip
        return Architecture(name=name, model_type=model_type, **fields_)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def _sliding_window(config, model_type: str, where: str) -> int | None:
    if model_type == "llama":
        return None
    window = getattr(config, "sliding_window", None)
    if model_type == "qwen2" and not getattr(config, "use_sliding_window", False):
        return None  # Qwen2.5 configs carry sliding_window with use_sliding_window false
    kinds = set(getattr(config, "layer_types", None) or [])
    if window is not None and kinds - {"sliding_attention"}:
        raise ConfigError(
            f"{where}: sliding_window {window} on some layers only (layer_types {sorted(kinds)}); "
            "a window on every layer or on none is supported"
        )
    return window


def architecture_from_config(checkpoint: str | Path, name: str | None = None) -> Architecture:
    """The architecture of a checkpoint (`architecture: auto`): its config.json read offline
    through transformers.AutoConfig (read_checkpoint_config). name: the architecture's name,
    default the checkpoint folder's name. Raises ConfigError naming the checkpoint."""
    config = read_checkpoint_config(checkpoint)
    return architecture_from_hf_config(
        config, name or Path(str(checkpoint)).name, f"checkpoint {str(checkpoint)!r}"
    )


def to_hf_config(arch: Architecture, **extra: Any):
    """A transformers config holding arch's numbers (AutoConfig.for_model(arch.model_type, ...)),
    the inverse of architecture_from_hf_config: what the transformers backend builds a model with
    seeded dummy weights from. extra: further config keys (bos/eos/pad token ids, dtype)."""
    import transformers

    if arch.family == "gpt2":
        kwargs = dict(
            n_embd=arch.hidden_size, n_layer=arch.num_layers, n_head=arch.num_heads,
            n_inner=arch.intermediate_size, vocab_size=arch.vocab_size,
            n_positions=arch.max_positions, tie_word_embeddings=arch.tied_embeddings,
            activation_function=arch.activation, layer_norm_epsilon=arch.norm_eps,
        )  # fmt: skip
    else:
        kwargs = dict(
            hidden_size=arch.hidden_size, num_hidden_layers=arch.num_layers,
            num_attention_heads=arch.num_heads, num_key_value_heads=arch.num_kv_heads,
            head_dim=arch.head_dim, intermediate_size=arch.intermediate_size,
            vocab_size=arch.vocab_size, max_position_embeddings=arch.max_positions,
            tie_word_embeddings=arch.tied_embeddings, hidden_act=arch.activation,
            rms_norm_eps=arch.norm_eps,
        )  # fmt: skip
        if int(transformers.__version__.split(".")[0]) >= 5:  # RoPE base and scaling in one dict
            scaling = arch.rope_scaling or {"rope_type": "default"}
            kwargs["rope_parameters"] = {**scaling, "rope_theta": arch.rope_theta}
        else:
            kwargs |= dict(rope_theta=arch.rope_theta, rope_scaling=arch.rope_scaling)
        if arch.model_type == "llama":
            kwargs |= dict(attention_bias=arch.qkv_bias, mlp_bias=arch.mlp_bias)
        elif arch.model_type == "mistral":
            kwargs["sliding_window"] = arch.sliding_window
        elif arch.model_type == "qwen2":  # max_window_layers 0: the window on every layer
            window = arch.sliding_window
            kwargs |= dict(use_sliding_window=window is not None, sliding_window=window)
            kwargs |= dict(max_window_layers=0 if window is not None else arch.num_layers)
    return transformers.AutoConfig.for_model(arch.model_type, **kwargs, **extra)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if _is_number(a) and _is_number(b) and (isinstance(a, float) or isinstance(b, float)):
        return abs(a - b) <= 1e-9 * max(abs(a), abs(b))
    return type(a) is type(b) and a == b


def check_checkpoint_matches(arch: Architecture, checkpoint: str | Path) -> None:
    """Raise ConfigError when a checkpoint's config.json disagrees with an explicitly named
    architecture, naming every differing value on both sides (config.json key and ours)."""
    theirs = architecture_from_config(checkpoint, name=arch.name)
    keys = _HF_KEYS[theirs.family]
    names = ["model_type"] if theirs.model_type != arch.model_type else _KEYS
    diffs = [
        f"{keys.get(k, k)}={getattr(theirs, k)!r} in the checkpoint but {k}={getattr(arch, k)!r} "
        "in the architecture"
        for k in names
        if k != "name" and not _same(getattr(theirs, k), getattr(arch, k))
    ]
    if diffs:
        raise ConfigError(
            f"checkpoint {str(checkpoint)!r} does not match architecture {arch.name!r}: "
            + "; ".join(diffs)
            + ". Use `architecture: auto` to take the checkpoint's own numbers, or the "
            "architecture file that matches it"
        )


def resolve_architecture(
    model: dict[str, Any], workflow_dir: str | Path | None = None
) -> Architecture:
    """The architecture of a config model entry (config["models"][name], or a job's model slice):
    `architecture` is a resources/models name (checked against `checkpoint` when one is set),
    "auto" (read from `checkpoint`'s config.json), or an architecture dict (architecture_to_dict,
    as params carry it). model["name"], when present, names the entry in errors and an auto
    architecture. Raises ConfigError naming the config key and both values on a mismatch."""
    name = model.get("name") or "?"
    spec, checkpoint = model["architecture"], model.get("checkpoint")
    key = f"config key models.{name}.architecture"
    if isinstance(spec, dict):
        return architecture_from_dict(spec, f"{key} (architecture fields)")
    if spec == "auto":
        if not checkpoint:
            raise ConfigError(
                f"{key}: 'auto' reads the architecture from a checkpoint's config.json, but "
                f"models.{name}.checkpoint is not set; set it to a local Hugging Face model "
                "directory or a cached hub id, or name an architecture of resources/models: "
                f"{', '.join(available_architectures(workflow_dir))}"
            )
        try:
            return architecture_from_config(checkpoint, name=model.get("name"))
        except ConfigError as e:
            raise ConfigError(f"{key} 'auto' (models.{name}.checkpoint): {e}") from None
    known = available_architectures(workflow_dir)
    if spec not in known:
        raise ConfigError(
            f"{key}: unknown architecture {spec!r}; valid: 'auto' (with a checkpoint) or one of "
            f"resources/models: {', '.join(known)}"
        )
    arch = load_architecture(spec, workflow_dir)
    if checkpoint:
        try:
            check_checkpoint_matches(arch, checkpoint)
        except ConfigError as e:
            raise ConfigError(f"{key} {spec!r} (models.{name}.checkpoint): {e}") from None
    return arch


# ---------------------------------------------------------------- counts


def _layer_matmul_params(arch: Architecture) -> int:
    h, i = arch.hidden_size, arch.intermediate_size
    attn = 2 * h * arch.q_dim + 2 * h * arch.kv_dim  # q, o: h x q_dim; k, v: h x kv_dim
    mlp = (3 if arch.family == "llama" else 2) * h * i  # SwiGLU gate/up/down vs GELU fc/proj
    return attn + mlp


def _layer_bias_params(arch: Architecture) -> int:
    h, i = arch.hidden_size, arch.intermediate_size
    qkv = arch.q_dim + 2 * arch.kv_dim if arch.qkv_bias else 0
    out = h if arch.attn_out_bias else 0
    mlp = ((2 * i if arch.family == "llama" else i) + h) if arch.mlp_bias else 0  # gate+up|fc, down
    return qkv + out + mlp


def matmul_param_count(arch: Architecture) -> int:
    """Weights of every matmul one token passes through, lm_head included; embeddings,
    norms and biases excluded (they cost no multiply-accumulate per weight)."""
    return arch.num_layers * _layer_matmul_params(arch) + arch.hidden_size * arch.vocab_size


def param_count(arch: Architecture) -> int:
    """Every parameter, tied embeddings counted once (as torch's model.parameters() does): matmul
    weights, biases (qkv_bias, attn_out_bias, mlp_bias), norm weights (and LayerNorm biases), token
    embeddings and, for GPT-2, the learned position table."""
    h = arch.hidden_size
    embeddings = arch.vocab_size * h
    if arch.family == "llama":
        norms, final_norm = 2 * h, h  # two RMSNorm weights per layer
    else:
        norms, final_norm = 4 * h, 2 * h  # two LayerNorms (weight + bias) per layer
        embeddings += arch.max_positions * h  # learned absolute positions
    per_layer = _layer_bias_params(arch) + norms
    total = matmul_param_count(arch) + arch.num_layers * per_layer + final_norm + embeddings
    if arch.tied_embeddings:
        total -= arch.hidden_size * arch.vocab_size  # lm_head shares the token embedding
    return total


def _dtype_bytes(dtype: str) -> int:
    if dtype not in DTYPE_BYTES:
        raise ConfigError(f"dtype {dtype!r}; valid: {list(DTYPE_BYTES)}")
    return DTYPE_BYTES[dtype]


def linear_shapes(arch: Architecture) -> list[tuple[int, int]]:
    """(out_features N, in_features K) of every nn.Linear the torch backend builds
    (backends/model.py), lm_head last, a tied lm_head left out (it is the embedding): per layer the
    fused qkv (N = q_dim + 2 kv_dim, K = hidden), the attention output (hidden, q_dim), the MLP's
    up projection (llama: gate and up fused, N = 2 x intermediate; gpt2: N = intermediate) and
    down projection (hidden, intermediate). Their N x K sum to matmul_param_count, less a tied
    head. transformers builds q, k, v, gate and up separately: the same bytes under every scheme
    whenever q_dim, kv_dim and intermediate_size are multiples of 8 (int4 pads N to 8 per
    linear), as in every architecture of resources/models."""
    h, i = arch.hidden_size, arch.intermediate_size
    up = 2 * i if arch.family == "llama" else i
    layer = [(arch.q_dim + 2 * arch.kv_dim, h), (h, arch.q_dim), (up, h), (h, i)]
    head = [] if arch.tied_embeddings else [(arch.vocab_size, h)]
    return layer * arch.num_layers + head


def _ceil_to(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def quantized_linear_bytes(n: int, k: int, dtype: str, quantization) -> int:
    """Bytes torchao 0.18 stores for one N x K nn.Linear weight under `quantization`
    (tokencarbon.quantization.Quantization):
    - none: N x K x dtype bytes;
    - int8_weight_only (Int8Tensor, PerRow): qdata N x K int8 + scale [N, 1] float32 + zero_point
      [N, 1] int8 (stored though symmetric): N x K + 5 N;
    - int4_weight_only, group g (Int4TilePackedTo4dTensor.from_hp): K' = K padded to a multiple of
      1024, N' = N padded to a multiple of 8; qdata int32 [N'/8, K'/128, 32, 4] = N' x K' / 2 bytes
      (two 4-bit values a byte); scale_and_zero bf16 [K'/g, N', 2] = 4 N' K' / g bytes. A weight
      whose K is not a multiple of g is left unquantized by torchao (N x K x dtype bytes).
    A bias stays in dtype (counted by param_count, not here)."""
    from tokencarbon.quantization import INT4, INT4_K_MULTIPLE, INT4_N_MULTIPLE, INT8

    element = _dtype_bytes(dtype)
    if quantization.scheme == INT8:
        return n * k + n * (4 + 1)
    if quantization.scheme == INT4:
        g = quantization.group_size
        if k % g:
            return n * k * element
        n_pad, k_pad = _ceil_to(n, INT4_N_MULTIPLE), _ceil_to(k, INT4_K_MULTIPLE)
        return n_pad * k_pad // 2 + (k_pad // g) * n_pad * 2 * 2
    return n * k * element


def weight_bytes(arch: Architecture, dtype: str, quantization=None) -> int:
    """Bytes the model's weights occupy as stored: param_count x dtype bytes unquantized; under a
    weight-only quantization (tokencarbon.quantization.Quantization; None: none) every linear of
    linear_shapes as quantized_linear_bytes counts it, and the rest (embeddings, GPT-2's position
    table, norms, biases, a tied lm_head) in dtype. Raises ConfigError for an unknown dtype, or
    int4_weight_only with a dtype other than bfloat16 (tinygemm takes bf16 only).

    Llama-2-7B bf16: 13,476,831,232 B; int4 group 128: 3,790,512,128 B (tests/test_quantization.py
    by hand)."""
    element = _dtype_bytes(dtype)
    if quantization is None or not quantization.quantized:
        return param_count(arch) * element
    from tokencarbon.quantization import check_supported

    check_supported(quantization, dtype, "cuda", where=f"architecture {arch.name!r}")
    shapes = linear_shapes(arch)
    rest = param_count(arch) - sum(n * k for n, k in shapes)
    return rest * element + sum(quantized_linear_bytes(n, k, dtype, quantization) for n, k in shapes)


def kv_cache_bytes(arch: Architecture, batch: int, seq_len: int, dtype: str) -> int:
    """K and V for every layer, kv head and position: 2 x layers x kv_heads x head_dim x seq x batch.
    Every position is counted, also beyond a sliding window (a static cache of seq_len slots, as
    the torch engine allocates)."""
    return 2 * arch.num_layers * arch.kv_dim * seq_len * batch * _dtype_bytes(dtype)


def activation_bytes(arch: Architecture, batch: int, seq_len: int, dtype: str) -> int:
    """Peak transient activations of a prefill of batch x seq_len tokens (eager attention).

    Model, in elements, all in the model dtype:
      residual stream + its normed copy       2 x B x T x h
      + the larger of one layer's
          attention: q, k, v (B x T x (q_dim + 2 kv_dim)), scores and softmax probabilities
                     materialised (2 x B x heads x T x T), attention output (B x T x q_dim)
          MLP:       llama gate, up and act(gate)*up (3 x B x T x I); gpt2 fc and gelu (2 x B x T x I)
      + logits of the last position only       B x vocab
    Intermediates of earlier layers are freed, so only one layer counts. A fused/flash attention
    kernel needs less; this is an upper-end estimate, the OOM probe's before its calibration
    (probe.static_memory_model).
    """
    b, t, h = batch, seq_len, arch.hidden_size
    residual = 2 * b * t * h
    q = arch.q_dim
    attention = b * t * (q + 2 * arch.kv_dim) + 2 * b * arch.num_heads * t * t + b * t * q
    mlp = (3 if arch.family == "llama" else 2) * b * t * arch.intermediate_size
    logits = b * arch.vocab_size
    return (residual + max(attention, mlp) + logits) * _dtype_bytes(dtype)

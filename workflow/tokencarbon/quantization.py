"""Weight-only quantization of a model's linear layers (config key models.<name>.quantization),
applied through torchao (pytorch/ao) rather than kernels of our own.

Schemes (torchao 0.18.0, the version pyproject.toml pins):
- "none": weights stay in the model dtype.
- "int4_weight_only": torchao.quantization.Int4WeightOnlyConfig(group_size,
  int4_packing_format="tile_packed_to_4d"): asymmetric 4-bit weights, one bf16 scale and one bf16
  zero point per group of `group_size` input features (32, 64, 128 or 256; default 128), packed for
  tinygemm's torch.ops.aten._weight_int4pack_mm (CUDA, compute capability >= 8.0, bfloat16 only;
  Int4TilePackedTo4dTensor). Activations stay bf16. torchao 0.18 has no CPU kernel for it: tried on
  a CPU here, "plain" and "preshuffled" need the mslk package (CUDA), "plain_int32" raises
  "Int4PlainInt32Tensor does not support device 'cpu' yet", "tile_packed_to_4d" needs CUDA.
- "int8_weight_only": torchao.quantization.Int8WeightOnlyConfig() (version 2, PerRow): symmetric
  8-bit weights, one float32 scale (and an int8 zero point, 0) per output channel (Int8Tensor);
  activations stay in the model dtype; runs on CPU and CUDA in float32, float16 and bfloat16.

What is quantized is quantize_'s default set, nn.Linear weights, less a linear whose weight is an
embedding's (a tied lm_head, as GPT-2's: quantizing it would store the embedding twice). Embeddings,
norms and biases stay in the model dtype. models.weight_bytes counts what torchao stores.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tokencarbon.errors import ConfigError

if TYPE_CHECKING:
    import torch

NONE_SCHEME, INT4, INT8 = "none", "int4_weight_only", "int8_weight_only"
SCHEMES = (NONE_SCHEME, INT4, INT8)
INT4_GROUP_SIZES = (32, 64, 128, 256)  # Int4WeightOnlyConfig's documented choices
INT4_DEFAULT_GROUP_SIZE = 128  # torchao's default, and gpt-fast's int4 Llama-2-7B
# tinygemm's layout (int4_tile_packed_to_4d_tensor.py, Int4TilePackedTo4dTensor.from_hp): in_features
# padded to a multiple of 1024 (find_multiple(K, 1024)), out_features to one of 8 (ntile on CUDA).
INT4_K_MULTIPLE, INT4_N_MULTIPLE = 1024, 8
LIBRARY = "torchao"
VALID = (
    f"'none', 'int8_weight_only', 'int4_weight_only' (group_size {INT4_DEFAULT_GROUP_SIZE}), or "
    f"{{scheme: int4_weight_only, group_size: one of {list(INT4_GROUP_SIZES)}}}"
)


@dataclass(frozen=True)
class Quantization:
    """A weight-only quantization scheme. group_size: input features per scale/zero group, int4
    only (None given for int4 means 128); None for none and int8 (int8 is per output channel).
    Raises ConfigError for an unknown scheme or a group size the scheme does not take."""

    scheme: str = NONE_SCHEME
    group_size: int | None = None

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise ConfigError(f"quantization scheme {self.scheme!r}; valid: {VALID}")
        if self.scheme == INT4:
            if self.group_size is None:
                object.__setattr__(self, "group_size", INT4_DEFAULT_GROUP_SIZE)
            if type(self.group_size) is not int or self.group_size not in INT4_GROUP_SIZES:
                raise ConfigError(
                    f"quantization {INT4}: group_size {self.group_size!r}; valid: "
                    f"{list(INT4_GROUP_SIZES)} (torchao Int4WeightOnlyConfig)"
                )
        elif self.group_size is not None:
            raise ConfigError(
                f"quantization {self.scheme}: group_size {self.group_size!r}; only "
                f"{INT4} takes a group size ({self.scheme} has none: give null or leave it out)"
            )

    @property
    def quantized(self) -> bool:
        return self.scheme != NONE_SCHEME

    def label(self) -> str:
        """"none", "int8_weight_only", "int4_weight_only-g128" (scheme and group size)."""
        return f"{self.scheme}-g{self.group_size}" if self.scheme == INT4 else self.scheme

    def to_dict(self) -> dict[str, Any]:
        """Plain builtins (params, meta.json); parse_quantization reads it back."""
        return {"scheme": self.scheme, "group_size": self.group_size}


NONE = Quantization()


def parse_quantization(raw: Any, where: str) -> Quantization:
    """The Quantization a config value describes: None or "none" (NONE), a scheme name
    ("int8_weight_only", "int4_weight_only" with group size 128), or an object {"scheme": ...,
    "group_size": ...} (group_size optional). where: the config key, for errors (e.g.
    "models.llama-2-7b.quantization"). Raises ConfigError naming `where`, the value and what is
    valid."""
    if raw is None:
        return NONE
    if isinstance(raw, Quantization):
        return raw
    try:
        if isinstance(raw, str):
            return Quantization(raw)
        if isinstance(raw, dict):
            unknown = sorted(set(raw) - {"scheme", "group_size"})
            if unknown or "scheme" not in raw:
                raise ConfigError(
                    f"keys {sorted(raw)}: an object needs 'scheme' and may give 'group_size'"
                    + (f" (unknown: {unknown})" if unknown else "")
                )
            return Quantization(raw["scheme"], raw.get("group_size"))
    except ConfigError as e:
        raise ConfigError(f"config key {where}: {raw!r}: {e}; valid: {VALID}") from None
    raise ConfigError(f"config key {where}: {raw!r} ({type(raw).__name__}); valid: {VALID}")


def of_model(model: dict[str, Any]) -> Quantization:
    """The quantization of a config model entry or model slice (key "quantization", absent:
    none), errors naming models.<name>.quantization."""
    return parse_quantization(
        model.get("quantization"), f"models.{model.get('name', '?')}.quantization"
    )


def library_version(q: Quantization) -> str:
    """The library that quantizes, as "torchao 0.18.0" (the installed version, read from its
    package metadata without importing it); "" for NONE."""
    if not q.quantized:
        return ""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"{LIBRARY} {version(LIBRARY)}"
    except PackageNotFoundError:
        raise ConfigError(
            f"quantization {q.label()}: torchao is not installed; `pip install torchao==0.18.0` "
            "(pyproject.toml pins it)"
        ) from None


def check_supported(q: Quantization, dtype: str, device_type: str, where: str = "quantization") -> None:
    """Raise ConfigError unless torchao 0.18 has a kernel for q on this dtype and device type
    ("cpu" or "cuda"): int4_weight_only needs bfloat16 and CUDA (tinygemm); int8 runs anywhere."""
    if q.scheme != INT4:
        return
    if dtype != "bfloat16":
        raise ConfigError(
            f"{where}: {q.label()} with dtype {dtype!r}; torchao's int4 tinygemm kernel "
            "(tile_packed_to_4d) takes bfloat16 weights only: set dtype bfloat16, or use "
            f"{INT8} (any dtype)"
        )
    if device_type != "cuda":
        raise ConfigError(
            f"{where}: {q.label()} on a {device_type} platform; torchao 0.18 has no CPU kernel for "
            "int4 weight-only (tinygemm needs CUDA, compute capability >= 8.0): measure it on a "
            f"GPU platform, or use {INT8} on the CPU"
        )


def torchao_config(q: Quantization):
    """The torchao AOBaseConfig of q (Int4WeightOnlyConfig / Int8WeightOnlyConfig); None for NONE."""
    if not q.quantized:
        return None
    _quiet_torchao_import()
    from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig

    if q.scheme == INT4:
        return Int4WeightOnlyConfig(
            group_size=q.group_size, int4_packing_format="tile_packed_to_4d"
        )
    return Int8WeightOnlyConfig()


def _quiet_torchao_import() -> None:
    """torchao logs a warning for each optional CUDA extension it cannot load (_C_mxfp8, cutlass);
    on a CPU or another GPU they are irrelevant to weight-only int4/int8, so keep them out of cell
    logs (errors still show)."""
    import logging

    logging.getLogger("torchao").setLevel(logging.ERROR)
    # torch 2.13 warns once that torchao 0.18 registers an Enum with pytree (deprecated, harmless)
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)


def tied_to_embedding(model: torch.nn.Module) -> set[int]:
    """ids of the weights of model's nn.Embedding modules: a linear holding one is a tied head."""
    import torch

    return {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}


def quantize_module(model: torch.nn.Module, q: Quantization) -> None:
    """Quantize model's nn.Linear weights in place with torchao.quantization.quantize_ and
    torchao_config(q), a linear whose weight is an embedding's (tied lm_head) excepted; NONE: no-op.
    Weights must already hold their values (drawn or loaded): the scales come from them. int4 skips
    (torchao's rule) a linear whose in_features is not a multiple of group_size: it stays in dtype.
    Raises ConfigError where torchao has no kernel for the weights' dtype and device
    (check_supported)."""
    if not q.quantized:
        return
    import torch

    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    if not linears:
        return
    weight = linears[0].weight
    dtype = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}.get(
        weight.dtype, str(weight.dtype)
    )
    check_supported(q, dtype, weight.device.type)
    tied = tied_to_embedding(model)
    config = torchao_config(q)
    from torchao.quantization import quantize_

    quantize_(
        model,
        config,
        filter_fn=lambda m, _fqn: isinstance(m, torch.nn.Linear) and id(m.weight) not in tied,
    )



def from_columns(scheme: Any, group_size: Any) -> Quantization:
    """The Quantization a table row records (columns `quantization` and `quant_group_size`, as
    CELLS and METRICS hold them): a missing, null or empty scheme is "none" (its group size
    ignored), a null or NaN group size None. Raises ConfigError for a scheme or group size
    Quantization refuses."""
    import math

    if scheme in (None, "", NONE_SCHEME) or (isinstance(scheme, float) and math.isnan(scheme)):
        return NONE
    try:
        import pandas as pd

        missing = group_size is None or bool(pd.isna(group_size))
    except (TypeError, ValueError):
        missing = group_size is None
    return Quantization(str(scheme), None if missing else int(group_size))


def record(q: Quantization) -> dict[str, Any]:
    """The columns a cell's meta.json, the probe result and the tables carry: quantization (the
    scheme), quant_group_size (None where the scheme has none), quant_library ("torchao 0.18.0";
    "" for none)."""
    return {
        "quantization": q.scheme,
        "quant_group_size": q.group_size,
        "quant_library": library_version(q),
    }

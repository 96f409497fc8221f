"""The torch backend's decoder (Llama and GPT-2 layouts, Qwen2/Mistral as Llama with biases) and its
weights: seeded dummy weights drawn on the device, or a Hugging Face checkpoint (checkpoint.py).

The modules hold weights; Decoder.forward is the static engine's path (a static [batch, kv_heads,
cache_len, head_dim] cache per layer, SDPA with an additive mask). The continuous-batching engine
runs the same modules through its own functions (serving_steps.py, attention.py)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tokencarbon.backends.checkpoint import read_checkpoint
from tokencarbon.errors import ConfigError
from tokencarbon.models import Architecture
from tokencarbon.quantization import NONE, Quantization, check_supported, quantize_module

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
INIT_STD = 0.02
# (activation, norm) each layout builds
FAMILY_LAYERS = {"llama": ("silu", "rmsnorm"), "gpt2": ("gelu_new", "layernorm")}
ROPE_TYPES = (None, "llama3")


class Norm(nn.Module):
    def __init__(self, arch: Architecture):
        super().__init__()
        self.eps = arch.norm_eps
        self.weight = nn.Parameter(torch.empty(arch.hidden_size))
        self.bias = (
            nn.Parameter(torch.empty(arch.hidden_size)) if arch.norm == "layernorm" else None
        )

    def forward(self, x: Tensor) -> Tensor:
        if self.bias is None:
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """RoPE in the rotate-half layout of Hugging Face Llama checkpoints."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class Attention(nn.Module):
    def __init__(self, arch: Architecture):
        super().__init__()
        self.n_heads = arch.num_heads
        self.n_kv_heads = arch.num_kv_heads
        self.head_dim = arch.head_dim
        self.qkv = nn.Linear(
            arch.hidden_size, (self.n_heads + 2 * self.n_kv_heads) * self.head_dim, arch.qkv_bias
        )
        self.out = nn.Linear(arch.q_dim, arch.hidden_size, arch.attn_out_bias)
        # [B, kv_heads, cache_len, head_dim], allocated per batch shape by the static engine
        self.register_buffer("k_cache", None, persistent=False)
        self.register_buffer("v_cache", None, persistent=False)

    def forward(
        self,
        x: Tensor,
        rope: tuple[Tensor, Tensor] | None,
        mask: Tensor,
        slot: Tensor | None,
        keys: int | None = None,
    ):
        b, s, _ = x.shape
        qkv = self.qkv(x).view(b, s, -1, self.head_dim).transpose(1, 2)  # [B, heads, S, head_dim]
        qk, v = qkv.split([self.n_heads + self.n_kv_heads, self.n_kv_heads], dim=1)
        if rope is not None:
            qk = rotate(qk, *rope)
        q, k = qk.split([self.n_heads, self.n_kv_heads], dim=1)
        if slot is None:  # prefill: the prompt fills cache slots [0, S) and attends within itself
            self.k_cache[:, :, :s] = k
            self.v_cache[:, :, :s] = v
        else:  # decode: one token at cache slot `slot` attends over cache slots [0, keys)
            self.k_cache.index_copy_(2, slot, k)
            self.v_cache.index_copy_(2, slot, v)
            k, v = self.k_cache[:, :, :keys], self.v_cache[:, :, :keys]
        # Grouped-query attention without copying K/V: each KV head's query heads are folded into
        # the query length (the mask was repeated to match in Decoder.forward).
        group = self.n_heads // self.n_kv_heads
        q = q.reshape(b, self.n_kv_heads, group * s, self.head_dim)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = y.reshape(b, self.n_heads, s, self.head_dim).transpose(1, 2).reshape(b, s, -1)
        return self.out(y)


class MLP(nn.Module):
    def __init__(self, arch: Architecture):
        super().__init__()
        # SwiGLU: gate and up projections fused in one matmul
        self.gated = arch.activation == "silu"
        width = arch.intermediate_size
        self.up = nn.Linear(arch.hidden_size, (2 if self.gated else 1) * width, arch.mlp_bias)
        self.down = nn.Linear(width, arch.hidden_size, arch.mlp_bias)

    def forward(self, x: Tensor) -> Tensor:
        h = self.up(x)
        if self.gated:
            gate, up = h.chunk(2, dim=-1)
            return self.down(F.silu(gate) * up)
        return self.down(F.gelu(h, approximate="tanh"))


class Block(nn.Module):
    def __init__(self, arch: Architecture):
        super().__init__()
        self.attn_norm, self.attn = Norm(arch), Attention(arch)
        self.mlp_norm, self.mlp = Norm(arch), MLP(arch)

    def forward(
        self,
        x: Tensor,
        rope: tuple[Tensor, Tensor] | None,
        mask: Tensor,
        slot: Tensor | None,
        keys: int | None = None,
    ):
        x = x + self.attn(self.attn_norm(x), rope, mask, slot, keys)
        return x + self.mlp(self.mlp_norm(x))


def rope_inv_freq(arch: Architecture, device: torch.device | str = "cpu") -> Tensor:
    """RoPE inverse frequencies [head_dim / 2], float32: theta^(-2i/d), with Llama 3's scaling when
    arch.rope_scaling has rope_type "llama3" (transformers' modeling_rope_utils.
    _compute_llama3_parameters: wavelengths above original_max_position_embeddings /
    low_freq_factor divided by `factor`, below original / high_freq_factor kept, in between
    interpolated; its attention factor is 1)."""
    d = arch.head_dim
    inv_freq = 1.0 / arch.rope_theta ** (torch.arange(0, d, 2, device=device).float() / d)
    scaling = arch.rope_scaling
    if scaling is None:
        return inv_freq
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    original = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > original / low, inv_freq / factor, inv_freq)
    smooth = (original / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < original / high) & ~(wavelen > original / low)
    return torch.where(medium, smoothed, scaled)


def _embedding(rows: int, dim: int) -> nn.Embedding:
    """An nn.Embedding whose weight is left uninitialised (build_model draws or loads every weight
    afterwards). Passing the weight skips Embedding's own normal_ init, which on the meta device
    runs through torch's Python reference kernels and imports torch._dynamo: about 1 s of every
    cell's start on a CPU (measured with -X importtime), for values that are overwritten anyway."""
    return nn.Embedding(rows, dim, _weight=torch.empty(rows, dim))


class Decoder(nn.Module):
    def __init__(self, arch: Architecture):
        super().__init__()
        self.arch = arch
        self.embed = _embedding(arch.vocab_size, arch.hidden_size)
        self.pos_embed = (
            _embedding(arch.max_positions, arch.hidden_size) if arch.family == "gpt2" else None
        )
        self.layers = nn.ModuleList(Block(arch) for _ in range(arch.num_layers))
        self.norm = Norm(arch)
        self.lm_head = nn.Linear(arch.hidden_size, arch.vocab_size, bias=False)
        self.tie()
        self.register_buffer("rope_cos", None, persistent=False)  # [max_positions, head_dim]
        self.register_buffer("rope_sin", None, persistent=False)

    def tie(self) -> None:
        if self.arch.tied_embeddings:
            self.lm_head.weight = self.embed.weight

    def set_rope(self) -> None:
        if self.arch.rope_theta is None:
            return
        device = self.embed.weight.device
        angles = torch.outer(
            torch.arange(self.arch.max_positions, device=device).float(),
            rope_inv_freq(self.arch, device),
        )
        angles = torch.cat((angles, angles), dim=-1)
        self.rope_cos = angles.cos().to(self.embed.weight.dtype)
        self.rope_sin = angles.sin().to(self.embed.weight.dtype)

    def embed_tokens(self, tokens: Tensor, positions: Tensor) -> tuple[Tensor, tuple | None]:
        """(token embeddings [*shape, hidden], RoPE (cos, sin) [*shape, head_dim] or None) of
        token ids and their positions, both of one shape."""
        x = self.embed(tokens)
        if self.pos_embed is not None:
            return x + self.pos_embed(positions), None
        return x, (self.rope_cos[positions], self.rope_sin[positions])

    def forward(
        self,
        tokens: Tensor,
        positions: Tensor,
        mask: Tensor,
        slot: Tensor | None = None,
        keys: int | None = None,
    ) -> Tensor:
        """Logits [B, vocab] of the last position only. tokens, positions: [B, S] (positions counted
        from each request's first real token); mask: additive [B, 1, S, keys]; slot: None for a
        prefill into cache slots [0, S), else the cache slot of a one-token decode step, which
        attends over cache slots [0, keys) (None: the whole cache)."""
        x, rope = self.embed_tokens(tokens, positions)
        if rope is not None:
            rope = (rope[0].unsqueeze(1), rope[1].unsqueeze(1))
        group = self.arch.num_heads // self.arch.num_kv_heads
        if group > 1:
            mask = mask.repeat(1, 1, group, 1)
        for layer in self.layers:
            x = layer(x, rope, mask, slot, keys)
        return self.lm_head(self.norm(x[:, -1]))


def check_arch(arch: Architecture, dtype: str) -> None:
    """ConfigError unless the torch backend builds `arch` in `dtype` exactly as transformers does."""
    if dtype not in TORCH_DTYPES:
        raise ConfigError(f"dtype {dtype!r}; valid: {list(TORCH_DTYPES)}")
    if FAMILY_LAYERS.get(arch.family) != (arch.activation, arch.norm):
        raise ConfigError(
            f"architecture {arch.name!r}: family={arch.family!r} activation={arch.activation!r} "
            f"norm={arch.norm!r}; the torch backend builds {FAMILY_LAYERS}"
        )
    rope_type = None if arch.rope_scaling is None else arch.rope_scaling.get("rope_type")
    if rope_type not in ROPE_TYPES:
        raise ConfigError(
            f"architecture {arch.name!r}: rope_scaling type {rope_type!r}; the torch backend "
            f"builds {[t for t in ROPE_TYPES if t]} or none (use the transformers backend)"
        )


def build_model(
    arch: Architecture,
    dtype: str,
    device: str | torch.device,
    seed: int,
    checkpoint: str | None = None,
    quantization: Quantization = NONE,
) -> Decoder:
    """The decoder on `device` in `dtype`: seeded dummy weights (linear and embedding N(0, 0.02),
    norm weights 1, biases 0), or a local Hugging Face checkpoint directory. quantization: a
    weight-only scheme applied after the weights are drawn or loaded, as to a real checkpoint
    (tokencarbon.quantization.quantize_module: torchao quantize_ on every nn.Linear but a tied
    lm_head). Raises ConfigError for a dtype, architecture or scheme this backend cannot build
    here (int4 needs bfloat16 on CUDA)."""
    check_arch(arch, dtype)
    device = torch.device(device)
    check_supported(quantization, dtype, device.type)
    with torch.device("meta"):  # no memory until the weights are materialised on the device
        model = Decoder(arch).to(TORCH_DTYPES[dtype])
    if checkpoint is None:
        _materialize(model, device)
        model.tie()
        _init_dummy(model, seed)
    else:
        state = read_checkpoint(arch, checkpoint, TORCH_DTYPES[dtype], device)
        model.load_state_dict(state, strict=True, assign=True)
        model.tie()
    model.set_rope()
    model.requires_grad_(False).eval()
    quantize_module(model, quantization)
    return model


def _materialize(model: nn.Module, device: torch.device) -> None:
    """Every parameter and buffer of a meta-device model allocated, uninitialised, on `device`:
    what Module.to_empty does, without its torch.empty_like on meta tensors. That call runs torch's
    Python reference kernels, whose first use in a process imports torch.fx's symbolic shapes and
    sympy: the weights took 2.4-4.0 s to build in every GPU cell of the first H100 chunks
    (benchmarks/results/paper-h100, meta.json engine_parts_s), where those modules are compiled
    from source in each process (h100-engine-build-profile.json: GPT-2 124M built in 4.40 s, 4.10 s
    of it in that import)."""
    for module in model.modules():
        for name, p in module._parameters.items():
            if p is not None:
                module._parameters[name] = nn.Parameter(
                    torch.empty(p.shape, dtype=p.dtype, device=device), p.requires_grad
                )
        for name, b in module._buffers.items():
            if b is not None:
                module._buffers[name] = torch.empty(b.shape, dtype=b.dtype, device=device)


@torch.no_grad()
def _init_dummy(model: Decoder, seed: int) -> None:
    # Drawn directly on the device in the model dtype: a 13B model initialises in seconds on a GPU.
    gen = torch.Generator(device=model.embed.weight.device).manual_seed(seed)
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.normal_(0.0, INIT_STD, generator=gen)
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()
        elif isinstance(module, Norm):
            module.weight.fill_(1.0)
            if module.bias is not None:
                module.bias.zero_()

"""Torch backend: one decoder (Llama and GPT-2 families) with a static KV cache, and a static-batch
greedy decode loop timed at batch start, first token (end of prefill) and end. CPU runs eagerly;
on CUDA the decode step is replayed as a CUDA graph, with no host sync per token."""

from __future__ import annotations

import contextlib
import json
import resource
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from tokencarbon.backends import BatchResult
from tokencarbon.errors import ConfigError, InputError
from tokencarbon.models import Architecture

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# KV cache length is rounded up to this: aligned masks keep SDPA's fused kernels from padding a
# copy every call, and batches of similar length reuse one cache and one captured graph.
CACHE_ALIGN = 64
# Warm-up calls before capture (cuBLAS and SDPA pick and allocate their kernels outside the graph).
GRAPH_WARMUP_STEPS = 3
# A decode step attends over the cache's first `keys` slots, the bucket (a multiple of CACHE_ALIGN,
# at most this many per cache) holding every filled slot: at large batch attention reads the cache,
# and a static cache read whole is mostly empty early in a batch. One CUDA graph per bucket.
MAX_KEY_BUCKETS = 8
INIT_STD = 0.02
# Prefill attention backends: not cuDNN, which builds a plan for every new shape (50 ms to 1 s on an
# H200, inside the timed prefill) while prefill shapes change with every batch. Decode keeps cuDNN:
# its shape is fixed per cache and warmed up before the timed window.
PREFILL_ATTENTION = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


# ---------------------------------------------------------------- model


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
        bias = arch.family == "gpt2"
        self.qkv = nn.Linear(
            arch.hidden_size, (self.n_heads + 2 * self.n_kv_heads) * self.head_dim, bias
        )
        self.out = nn.Linear(self.n_heads * self.head_dim, arch.hidden_size, bias)
        # [B, kv_heads, cache_len, head_dim], allocated per batch shape by TorchEngine
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
        bias = arch.family == "gpt2"
        width = arch.intermediate_size
        self.up = nn.Linear(arch.hidden_size, (2 if self.gated else 1) * width, bias)
        self.down = nn.Linear(width, arch.hidden_size, bias)

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


class Decoder(nn.Module):
    def __init__(self, arch: Architecture):
        super().__init__()
        self.arch = arch
        self.embed = nn.Embedding(arch.vocab_size, arch.hidden_size)
        self.pos_embed = (
            nn.Embedding(arch.max_positions, arch.hidden_size) if arch.family == "gpt2" else None
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
        d, device = self.arch.head_dim, self.embed.weight.device
        inv_freq = 1.0 / self.arch.rope_theta ** (torch.arange(0, d, 2, device=device).float() / d)
        angles = torch.outer(torch.arange(self.arch.max_positions, device=device).float(), inv_freq)
        angles = torch.cat((angles, angles), dim=-1)
        self.rope_cos = angles.cos().to(self.embed.weight.dtype)
        self.rope_sin = angles.sin().to(self.embed.weight.dtype)

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
        x = self.embed(tokens)
        rope = None
        if self.pos_embed is not None:
            x = x + self.pos_embed(positions)
        else:
            rope = (self.rope_cos[positions].unsqueeze(1), self.rope_sin[positions].unsqueeze(1))
        group = self.arch.num_heads // self.arch.num_kv_heads
        if group > 1:
            mask = mask.repeat(1, 1, group, 1)
        for layer in self.layers:
            x = layer(x, rope, mask, slot, keys)
        return self.lm_head(self.norm(x[:, -1]))


# ---------------------------------------------------------------- weights


def _check_arch(arch: Architecture, dtype: str) -> None:
    if dtype not in TORCH_DTYPES:
        raise ConfigError(f"dtype {dtype!r}; valid: {list(TORCH_DTYPES)}")
    expected = {"llama": ("silu", "rmsnorm"), "gpt2": ("gelu_new", "layernorm")}
    if expected.get(arch.family) != (arch.activation, arch.norm):
        raise ConfigError(
            f"architecture {arch.name!r}: family={arch.family!r} activation={arch.activation!r} "
            f"norm={arch.norm!r}; the torch backend builds {expected}"
        )


def build_model(
    arch: Architecture,
    dtype: str,
    device: str | torch.device,
    seed: int,
    checkpoint: str | None = None,
) -> Decoder:
    """The decoder on `device` in `dtype`: seeded dummy weights (linear and embedding N(0, 0.02),
    norm weights 1, biases 0), or a local Hugging Face checkpoint directory."""
    _check_arch(arch, dtype)
    device = torch.device(device)
    with torch.device("meta"):  # no memory until the weights are materialised on the device
        model = Decoder(arch).to(TORCH_DTYPES[dtype])
    if checkpoint is None:
        model.to_empty(device=device)
        model.tie()
        _init_dummy(model, seed)
    else:
        model.load_state_dict(
            _read_checkpoint(arch, checkpoint, dtype, device), strict=True, assign=True
        )
        model.tie()
    model.set_rope()
    return model.requires_grad_(False).eval()


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


# config.json key -> Architecture field, per family (model_type)
_CONFIG_KEYS = {
    "llama": {
        "hidden_size": "hidden_size",
        "num_hidden_layers": "num_layers",
        "num_attention_heads": "num_heads",
        "num_key_value_heads": "num_kv_heads",
        "intermediate_size": "intermediate_size",
        "vocab_size": "vocab_size",
        "max_position_embeddings": "max_positions",
        "rms_norm_eps": "norm_eps",
        "rope_theta": "rope_theta",
    },
    "gpt2": {
        "n_embd": "hidden_size",
        "n_layer": "num_layers",
        "n_head": "num_heads",
        "n_inner": "intermediate_size",
        "vocab_size": "vocab_size",
        "n_positions": "max_positions",
        "layer_norm_epsilon": "norm_eps",
    },
}
# Checkpoint tensors that are buffers, not weights (older GPT-2 causal masks, Llama rotary tables).
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq")


def _check_config(arch: Architecture, path: Path) -> None:
    config_path = path / "config.json"
    if not config_path.is_file():
        raise InputError(
            f"checkpoint {path}: no config.json; expected a Hugging Face model directory"
        )
    config = json.loads(config_path.read_text())
    if config.get("model_type") != arch.family:
        raise ConfigError(
            f"{config_path}: model_type {config.get('model_type')!r} does not match architecture "
            f"{arch.name!r} (family {arch.family!r})"
        )
    if arch.family == "gpt2" and config.get("n_inner") is None:
        config["n_inner"] = 4 * config["n_embd"]  # GPT-2's default MLP width
    if arch.family == "llama" and "rope_theta" not in config:  # transformers >= 5 nests it
        config["rope_theta"] = config.get("rope_parameters", {}).get("rope_theta")
    for key, field in _CONFIG_KEYS[arch.family].items():
        ours, theirs = getattr(arch, field), config.get(key)
        if isinstance(ours, float):
            same = theirs is not None and abs(theirs - ours) <= 1e-9 * abs(ours)
        else:
            same = theirs == ours
        if not same:
            raise ConfigError(
                f"{config_path}: {key}={theirs!r} but architecture {arch.name!r} has "
                f"{field}={ours!r}; use the architecture that matches the checkpoint"
            )


def _read_checkpoint(
    arch: Architecture, checkpoint: str, dtype: str, device: torch.device
) -> dict[str, Tensor]:
    """The checkpoint's tensors renamed (and fused, transposed) into Decoder's state dict."""
    path = Path(checkpoint)
    _check_config(arch, path)
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
                f"checkpoint {path}: tensor {key!r} missing; a {arch.family} checkpoint has it"
            )
        t = raw.pop(key)
        return (t.t() if transpose else t).to(TORCH_DTYPES[dtype]).contiguous()

    state = _map_llama(arch, take) if arch.family == "llama" else _map_gpt2(arch, take)
    if arch.tied_embeddings:
        raw.pop("lm_head.weight", None)
        state["lm_head.weight"] = state["embed.weight"]
    if raw:
        raise InputError(
            f"checkpoint {path}: unexpected tensors {sorted(raw)[:5]} for a {arch.family} model"
        )
    return state


def _map_llama(arch: Architecture, take) -> dict[str, Tensor]:
    state = {"embed.weight": take("embed_tokens.weight"), "norm.weight": take("norm.weight")}
    if not arch.tied_embeddings:
        state["lm_head.weight"] = take("lm_head.weight")
    for i in range(arch.num_layers):
        hf, ours = f"layers.{i}.", f"layers.{i}."
        qkv = [take(hf + f"self_attn.{p}_proj.weight") for p in "qkv"]
        gate_up = [take(hf + "mlp.gate_proj.weight"), take(hf + "mlp.up_proj.weight")]
        state |= {
            ours + "attn_norm.weight": take(hf + "input_layernorm.weight"),
            ours + "attn.qkv.weight": torch.cat(qkv),
            ours + "attn.out.weight": take(hf + "self_attn.o_proj.weight"),
            ours + "mlp_norm.weight": take(hf + "post_attention_layernorm.weight"),
            ours + "mlp.up.weight": torch.cat(gate_up),
            ours + "mlp.down.weight": take(hf + "mlp.down_proj.weight"),
        }
    return state


def _map_gpt2(arch: Architecture, take) -> dict[str, Tensor]:
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


# ---------------------------------------------------------------- engine


def _additive(allowed: Tensor, dtype: torch.dtype) -> Tensor:
    """A boolean attention mask as SDPA's additive form (0 where allowed, -inf elsewhere)."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(
        ~allowed, float("-inf")
    )


class TorchEngine:
    """Serves static batches greedily: prompts left-padded to the longest, every request generating
    exactly its own output length (EOS ignored), the batch running until its longest is done."""

    def __init__(
        self,
        arch: Architecture,
        dtype: str,
        device: str | torch.device,
        seed: int,
        checkpoint: str | None = None,
        pad_token_id: int = 0,
        cuda_graphs: bool = True,
        compile_decode: bool = False,
    ):
        """cuda_graphs: on CUDA, replay the decode step as a graph. compile_decode: get that graph
        from torch.compile(mode="reduce-overhead") instead of a manual capture. Compiling costs
        15-60 s per batch shape for Llama-2-7B, inside the cell, so manual capture is the default.
        Measured on an H100, Llama-2-7B bf16, batch 1, 128-token prompt: manual 151 tok/s,
        compiled 187 tok/s (the fusion of the small elementwise kernels makes the difference)."""
        self.arch, self.dtype, self.device = arch, dtype, torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(
                f"device {device!r}: torch sees no CUDA device; use 'cpu' or a GPU machine"
            )
        if compile_decode and not (cuda_graphs and self.device.type == "cuda"):
            raise ConfigError("compile_decode=True needs cuda_graphs=True and a CUDA device")
        if not 0 <= pad_token_id < arch.vocab_size:
            raise ConfigError(
                f"pad_token_id {pad_token_id} outside the vocabulary [0, {arch.vocab_size})"
            )
        self.pad_token_id = pad_token_id
        self.graphs = cuda_graphs and self.device.type == "cuda"
        self.model = build_model(arch, dtype, self.device, seed, checkpoint)
        self.compile_decode = compile_decode
        self._step_fn = self._decode_step
        if compile_decode:
            self._step_fn = torch.compile(self._decode_step, mode="reduce-overhead", fullgraph=True)
        self._shape: tuple[int, int] | None = None  # (batch, cache_len) of the allocated cache
        # Manual capture: one graph per key bucket of the allocated cache, captured when a batch
        # first needs it (before its timed window), sharing one memory pool.
        self._graphs: dict[int, torch.cuda.CUDAGraph] = {}
        # One stream for every warm-up and capture: cuBLAS keeps a workspace per stream, so a new
        # stream per batch shape would hold on to another 32 MiB each time.
        self._capture_stream = torch.cuda.Stream(self.device) if self.graphs else None

    # Static decode state (shape (batch, cache_len)), read and written in place by _decode_step:
    #   _token [B, 1] token fed next; _pos [B, 1] its position; _slot [1] its cache slot;
    #   _pad [B] left padding per request; _out [B, cache_len] token generated into each slot.
    def _allocate(self, batch: int, cache_len: int) -> None:
        if self._shape == (batch, cache_len):
            return
        self.release()
        kv_shape = (batch, self.arch.num_kv_heads, cache_len, self.arch.head_dim)
        for layer in self.model.layers:
            layer.attn.k_cache = torch.zeros(
                kv_shape, dtype=TORCH_DTYPES[self.dtype], device=self.device
            )
            layer.attn.v_cache = torch.zeros(
                kv_shape, dtype=TORCH_DTYPES[self.dtype], device=self.device
            )
        new = partial(torch.zeros, dtype=torch.long, device=self.device)
        self._token, self._pos, self._slot = new(batch, 1), new(batch, 1), new(1)
        self._pad, self._out = new(batch), new(batch, cache_len)
        self._key_slots = torch.arange(cache_len, device=self.device)
        self._shape = (batch, cache_len)
        if self.compile_decode:
            for t in [self._token, self._pos, self._slot, self._pad, self._out, self._key_slots]:
                torch._dynamo.mark_static_address(t)
            self._capture(None)

    def key_bucket(self, slot: int) -> int | None:
        """Cache slots a decode step feeding the token at `slot` attends over: the smallest multiple
        of the bucket size above `slot` (buckets: CACHE_ALIGN multiples, at most MAX_KEY_BUCKETS
        per cache). None (the whole cache) under compile_decode: one compiled shape per cache."""
        if self.compile_decode:
            return None
        cache_len = self._shape[1]
        size = -(-cache_len // MAX_KEY_BUCKETS // CACHE_ALIGN) * CACHE_ALIGN
        return min(cache_len, (slot // size + 1) * size)

    def _capture(self, keys: int | None) -> None:
        # Warm-up and capture run on junk state: the cache slots they write are either overwritten
        # by the batch's prefill and decode or hidden by its mask, and run_batch resets the state.
        stream = self._capture_stream
        stream.wait_stream(torch.cuda.current_stream(self.device))
        # compile_decode compiles here (first calls of a shape); coordinate-descent tuning, as in
        # gpt-fast, took Llama-2-7B bf16 batch-1 decode on an H100 from 172 to 185 tok/s.
        tuning = contextlib.nullcontext()
        if self.compile_decode:
            from torch._inductor import config  # about 1 s to import: only compile_decode pays it

            tuning = config.patch(coordinate_descent_tuning=True)
        with torch.cuda.stream(stream), torch.no_grad(), tuning:
            for _ in range(GRAPH_WARMUP_STEPS):
                self._step_fn(keys)
                self._slot.zero_()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        if not self.compile_decode:
            graph = torch.cuda.CUDAGraph()
            # One pool for all buckets: graphs replay one at a time and keep nothing in the pool
            # past their step (the state they carry over lives in the static buffers).
            pool = next(iter(self._graphs.values())).pool() if self._graphs else None
            with torch.cuda.graph(graph, pool=pool, stream=stream), torch.no_grad():
                self._decode_step(keys)
            self._graphs[keys] = graph

    def release(self) -> None:
        """Drop the KV cache, decode state and captured graphs (the weights stay loaded); their
        memory goes back to torch's caching allocator, for the next shape to reuse."""
        self._graphs = {}
        for layer in self.model.layers:
            layer.attn.k_cache = layer.attn.v_cache = None
        self._token = self._pos = self._slot = self._pad = self._out = self._key_slots = None
        self._shape = None

    def _decode_step(self, keys: int | None = None) -> None:
        """One token for every request, reading and writing only the static state: a CUDA graph
        replays it with no host work and no sync. It attends over cache slots [0, keys)."""
        key_slots = self._key_slots[:keys]
        allowed = (key_slots >= self._pad[:, None]) & (key_slots <= self._slot)
        mask = _additive(allowed[:, None, None, :], TORCH_DTYPES[self.dtype])
        next_token = self.model(self._token, self._pos, mask, self._slot, keys).argmax(
            dim=-1, keepdim=True
        )
        self._token.copy_(next_token)
        self._out.index_copy_(1, self._slot + 1, next_token)
        self._slot.add_(1)
        # Past its own output length a request keeps decoding (uncounted); clamping keeps its
        # positions inside the model's table without touching its counted tokens.
        self._pos.add_(1).clamp_(max=self.arch.max_positions - 1)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _check(self, prompts: list[list[int]], output_lengths: list[int]) -> None:
        if not prompts or len(prompts) != len(output_lengths):
            raise InputError(
                f"batch of {len(prompts)} prompts and {len(output_lengths)} output lengths; "
                "expected one output length per prompt, at least one request"
            )
        for i, (prompt, n_out) in enumerate(zip(prompts, output_lengths)):
            if not prompt or n_out < 1:
                raise InputError(
                    f"request {i}: {len(prompt)} prompt tokens, {n_out} output tokens; "
                    "both must be >= 1"
                )
            if len(prompt) + n_out > self.arch.max_positions:
                raise InputError(
                    f"request {i}: {len(prompt)} prompt + {n_out} output tokens exceed "
                    f"{self.arch.name}'s max_positions {self.arch.max_positions}"
                )
            if min(prompt) < 0 or max(prompt) >= self.arch.vocab_size:
                raise InputError(f"request {i}: token ids must lie in [0, {self.arch.vocab_size})")

    @torch.no_grad()
    def run_batch(
        self,
        prompts: list[list[int]],
        output_lengths: list[int],
        *,
        reserve_output_len: int = 0,
    ) -> BatchResult:
        """reserve_output_len: size the KV cache for at least this many output tokens (the OOM
        probe reserves the full output length but decodes only a few steps: decode replays
        static buffers, so the batch's peak memory is reached after its first steps)."""
        self._check(prompts, [max(n, reserve_output_len) for n in output_lengths])
        n, lens = len(prompts), [len(p) for p in prompts]
        padded_len, max_out = max(lens), max(output_lengths)
        reserved = max(max_out, reserve_output_len)
        cache_len = -(-(padded_len + reserved) // CACHE_ALIGN) * CACHE_ALIGN
        self._allocate(n, cache_len)
        # decode step i feeds the token at slot padded_len + i
        step_keys = [self.key_bucket(padded_len + i) for i in range(max_out - 1)]
        if self.graphs and not self.compile_decode:
            needed = set(step_keys)
            if reserved > max_out:  # the probe: also the last bucket the reserved output reaches,
                needed.add(self.key_bucket(padded_len + reserved - 2))  # for its memory peak
            for keys in sorted(needed - set(self._graphs)):
                self._capture(keys)

        tokens = torch.tensor(
            [[self.pad_token_id] * (padded_len - k) + p for p, k in zip(prompts, lens)],
            device=self.device,
        )
        pad = torch.tensor([padded_len - k for k in lens], device=self.device)
        slots = torch.arange(padded_len, device=self.device)
        positions = (slots[None, :] - pad[:, None]).clamp(min=0)
        # Causal, pads never attended; a pad row attends to itself so that no row is fully masked
        # (a fully masked row is NaN, and NaN values leak through zero attention weights).
        allowed = (slots[None, :] <= slots[:, None]) & (slots[None, None, :] >= pad[:, None, None])
        allowed |= torch.eye(padded_len, dtype=torch.bool, device=self.device)
        prefill_mask = _additive(allowed[:, None], TORCH_DTYPES[self.dtype])
        self._pad.copy_(pad)
        first_positions = torch.tensor(lens, device=self.device)[:, None]  # of each first new token
        self._sync()

        start_ns, start_wall_ns = time.monotonic_ns(), time.time_ns()
        with sdpa_kernel(PREFILL_ATTENTION):
            first = self.model(tokens, positions, prefill_mask).argmax(dim=-1, keepdim=True)
        self._token.copy_(first)
        self._out[:, padded_len : padded_len + 1] = first
        self._pos.copy_(first_positions)
        self._slot.fill_(padded_len)
        self._sync()
        first_token_ns, first_token_wall_ns = time.monotonic_ns(), time.time_ns()
        for keys in step_keys:
            if self._graphs:
                self._graphs[keys].replay()
            else:
                self._step_fn(keys)
        self._sync()
        end_ns, end_wall_ns = time.monotonic_ns(), time.time_ns()

        generated = self._out[:, padded_len : padded_len + max_out].tolist()
        return BatchResult(
            n_requests=n,
            input_tokens=sum(lens),
            output_tokens=sum(output_lengths),
            padded_input_len=padded_len,
            max_output_tokens=max_out,
            start_ns=start_ns,
            first_token_ns=first_token_ns,
            end_ns=end_ns,
            start_wall_ns=start_wall_ns,
            first_token_wall_ns=first_token_wall_ns,
            end_wall_ns=end_wall_ns,
            token_ids=tuple(tuple(row[:k]) for row, k in zip(generated, output_lengths)),
        )

    def peak_memory_bytes(self) -> int:
        """Peak device memory allocated by torch on CUDA; the process's peak resident set on CPU."""
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device)
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB

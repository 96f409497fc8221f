"""Tiny Hugging Face checkpoints the torch-backend tests build with transformers itself: the
independent implementation our decoder is checked against (imported as `hf_checkpoints`)."""

from __future__ import annotations

import torch
import transformers

from tokencarbon.models import architecture_from_config, load_architecture

PROMPTS = [[5, 17, 300, 42, 9, 1000, 7], [3, 2, 4000, 11], [77]]
OUTPUTS = [6, 3, 5]
# Llama 3.1's scaling with the original context shrunk to 64 positions, so that a tiny model's
# prompts of a few dozen tokens reach the scaled and the interpolated frequencies:
# wavelengths above 64 / low_freq_factor 1 = 64 positions are divided by `factor`, below
# 64 / high_freq_factor 4 = 16 kept, in between interpolated.
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}
KINDS = ["tiny-llama", "tiny-gpt2", "tiny-llama3-rope", "tiny-qwen2"]


def hf_config(kind: str) -> transformers.PretrainedConfig:
    """transformers' config of one of KINDS: tiny-llama and tiny-gpt2 as resources/models holds
    them; tiny-llama3-rope as tiny-llama with LLAMA3_ROPE; tiny-qwen2 (q/k/v biases) of the same
    sizes."""
    arch = load_architecture("tiny-gpt2" if kind == "tiny-gpt2" else "tiny-llama")
    if kind == "tiny-gpt2":
        return transformers.GPT2Config(
            n_embd=arch.hidden_size, n_layer=arch.num_layers, n_head=arch.num_heads,
            n_inner=arch.intermediate_size, vocab_size=arch.vocab_size,
            n_positions=arch.max_positions, layer_norm_epsilon=arch.norm_eps,
        )  # fmt: skip
    rope = {"rope_type": "default", "rope_theta": arch.rope_theta}
    if kind == "tiny-llama3-rope":
        rope = {**LLAMA3_ROPE, "rope_theta": arch.rope_theta}
    sizes = dict(
        hidden_size=arch.hidden_size, num_hidden_layers=arch.num_layers,
        num_attention_heads=arch.num_heads, num_key_value_heads=arch.num_kv_heads,
        intermediate_size=arch.intermediate_size, vocab_size=arch.vocab_size,
        max_position_embeddings=arch.max_positions, rms_norm_eps=arch.norm_eps,
        rope_parameters=rope, tie_word_embeddings=False,
    )  # fmt: skip
    if kind == "tiny-qwen2":
        return transformers.Qwen2Config(**sizes, use_sliding_window=False)
    return transformers.LlamaConfig(**sizes)


def save_checkpoint(kind: str, path) -> tuple:
    """(our Architecture read back from the checkpoint's config.json, the transformers model) of a
    random model of `kind` saved to `path` with save_pretrained."""
    torch.manual_seed(1)
    model = transformers.AutoModelForCausalLM.from_config(
        hf_config(kind), attn_implementation="eager"
    ).eval()
    # transformers initialises biases to 0 and norms to 1, which would hide a wrong mapping of
    # either: make every tensor distinct.
    with torch.no_grad():
        for name, p in model.named_parameters():
            is_norm = p.dim() == 1 and ("norm" in name or ".ln_" in name)
            p.copy_(1 + 0.1 * torch.randn_like(p) if is_norm else 0.02 * torch.randn_like(p))
    model.save_pretrained(path)
    return architecture_from_config(path, name=kind), model


def generate(model, prompt: list[int], n_out: int) -> list[int]:
    """transformers' own greedy generate, EOS ignored as the engines do."""
    return model.generate(
        torch.tensor([prompt]),
        attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        max_new_tokens=n_out,
        min_new_tokens=n_out,
        do_sample=False,
        pad_token_id=0,
    )[0, len(prompt) :].tolist()

"""Helpers shared by several test modules (imported as `helpers`: pytest puts tests/ on sys.path)."""

import pynvml
import torch
import transformers


def gpu_present() -> bool:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    try:
        return pynvml.nvmlDeviceGetCount() > 0
    finally:
        pynvml.nvmlShutdown()


def hf_model(arch, device: str, attn_implementation: str | None = None):
    """transformers' own model class built from one of our architectures: an independent
    implementation for parameter counts and FLOPs. Weights seeded; meta device for shapes only."""
    if arch.family == "llama":
        config = transformers.LlamaConfig(
            hidden_size=arch.hidden_size, num_hidden_layers=arch.num_layers,
            num_attention_heads=arch.num_heads, num_key_value_heads=arch.num_kv_heads,
            intermediate_size=arch.intermediate_size, vocab_size=arch.vocab_size,
            max_position_embeddings=arch.max_positions, tie_word_embeddings=False,
        )  # fmt: skip
        cls = transformers.LlamaForCausalLM
    else:
        config = transformers.GPT2Config(
            n_embd=arch.hidden_size, n_layer=arch.num_layers, n_head=arch.num_heads,
            n_inner=arch.intermediate_size, vocab_size=arch.vocab_size,
            n_positions=arch.max_positions, bos_token_id=0, eos_token_id=0,
        )  # fmt: skip
        cls = transformers.GPT2LMHeadModel
    if attn_implementation:
        config._attn_implementation = attn_implementation
    torch.manual_seed(0)
    with torch.device(device):
        return cls(config).eval()

"""Tiny Hugging Face checkpoints the tests build with transformers itself (save_pretrained), one per
supported model_type, with hand-countable sizes. Imported as `tiny_checkpoints` (tests/ is on
sys.path)."""

from pathlib import Path

import torch
import transformers

# h=64, 2 layers, 4 heads of 16, 2 KV heads (GQA, kv_dim 32), MLP 96, vocab 128, 256 positions.
LLAMA_SHAPE = dict(
    hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    intermediate_size=96, vocab_size=128, max_position_embeddings=256, rms_norm_eps=1e-5,
)  # fmt: skip
# Llama-3.1's RoPE, as its config.json writes it (base 500,000, llama3 scaling), shrunk positions.
LLAMA3_ROPE = {
    "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
    "original_max_position_embeddings": 32,
}  # fmt: skip
CONFIGS = {
    "llama": dict(LLAMA_SHAPE, tie_word_embeddings=False,
                  rope_parameters={**LLAMA3_ROPE, "rope_theta": 500000.0}),
    "qwen2": dict(LLAMA_SHAPE, tie_word_embeddings=True,
                  rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
    "mistral": dict(LLAMA_SHAPE, tie_word_embeddings=False, sliding_window=32,
                    rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
    "gpt2": dict(n_embd=64, n_layer=2, n_head=4, n_inner=None, vocab_size=128, n_positions=256,
                 bos_token_id=0, eos_token_id=0),
}  # fmt: skip
# Parameters by hand (see test_checkpoints.py for the arithmetic).
PARAMS = {"llama": 78_144, "qwen2": 70_208, "mistral": 78_144, "gpt2": 124_672}


def hf_config(model_type: str, **overrides) -> transformers.PretrainedConfig:
    return transformers.AutoConfig.for_model(model_type, **{**CONFIGS[model_type], **overrides})


def save_checkpoint(path: Path, model_type: str, seed: int = 0, **overrides) -> Path:
    """A seeded model of model_type, saved with save_pretrained (config.json + model.safetensors).
    Matrices drawn N(0, 0.5), biases N(0, 0.1), norm weights N(1, 0.1), so that greedy tokens differ between positions.
    """
    config = hf_config(model_type, **overrides)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.5)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.1)
            else:  # norm weights
                p.normal_(1.0, 0.1)
    model.save_pretrained(path)
    return path

"""backends/checkpoint.py: a Hugging Face checkpoint that does not fit the architecture is refused
naming the value, file or tensor at fault."""

from __future__ import annotations

import dataclasses

import pytest
from hf_checkpoints import hf_config, save_checkpoint
from safetensors.torch import load_file, save_file

from tokencarbon.backends.model import build_model
from tokencarbon.errors import ConfigError, InputError
from tokencarbon.models import load_architecture


def test_config_mismatch_names_both_values(tmp_path):
    config = hf_config("tiny-gpt2")  # tiny-gpt2's own numbers but a wider hidden size
    config.n_embd = 512
    config.save_pretrained(tmp_path)
    with pytest.raises(
        ConfigError, match="n_embd=512 in the checkpoint but hidden_size=256 in the architecture"
    ):
        build_model(load_architecture("tiny-gpt2"), "float32", "cpu", seed=0, checkpoint=str(tmp_path))


def test_tensor_faults_are_named(tmp_path):
    arch, _ = save_checkpoint("tiny-qwen2", tmp_path)
    (weights,) = tmp_path.glob("*.safetensors")
    state = load_file(weights)
    bias = state.pop("model.layers.2.self_attn.k_proj.bias")
    save_file(state, weights)
    with pytest.raises(InputError, match="tensor 'layers.2.self_attn.k_proj.bias' missing"):
        build_model(arch, "float32", "cpu", seed=0, checkpoint=str(tmp_path))
    state["model.layers.2.self_attn.k_proj.bias"] = bias
    state["model.layers.0.extra.weight"] = bias.clone()
    save_file(state, weights)
    with pytest.raises(InputError, match=r"unexpected tensors \['layers.0.extra.weight'\]"):
        build_model(arch, "float32", "cpu", seed=0, checkpoint=str(tmp_path))
    weights.unlink()
    with pytest.raises(InputError, match="no \\*.safetensors files"):
        build_model(arch, "float32", "cpu", seed=0, checkpoint=str(tmp_path))


def test_architecture_without_the_checkpoints_biases_is_refused(tmp_path):
    arch, _ = save_checkpoint("tiny-qwen2", tmp_path)
    no_bias = dataclasses.replace(arch, model_type="llama", qkv_bias=False, attn_out_bias=False)
    with pytest.raises(ConfigError, match="model_type='qwen2' in the checkpoint"):
        build_model(no_bias, "float32", "cpu", seed=0, checkpoint=str(tmp_path))

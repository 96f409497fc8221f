"""Architectures read from checkpoints that transformers itself saved (`architecture: auto`), their
parameter counts against the loaded models, and the checks on checkpoints and their configs."""

import json

import pytest
import transformers
from tiny_checkpoints import LLAMA3_ROPE, LLAMA_SHAPE, PARAMS, save_checkpoint

from tokencarbon.errors import ConfigError
from tokencarbon.models import (
    architecture_from_config,
    check_checkpoint_matches,
    load_architecture,
    param_count,
    resolve_architecture,
    to_hf_config,
)

# The numbers in tiny_checkpoints.CONFIGS, written out again by hand.
LLAMA_LIKE = dict(
    family="llama", hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
    intermediate_size=96, vocab_size=128, max_positions=256, activation="silu", norm="rmsnorm",
    norm_eps=1e-5,
)  # fmt: skip
EXPECTED = {
    "llama": LLAMA_LIKE | dict(
        model_type="llama", tied_embeddings=False, rope_theta=500000.0, qkv_bias=False,
        attn_out_bias=False, mlp_bias=False, sliding_window=None,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 32},
    ),
    "qwen2": LLAMA_LIKE | dict(
        model_type="qwen2", tied_embeddings=True, rope_theta=1000000.0, qkv_bias=True,
        attn_out_bias=False, mlp_bias=False, sliding_window=None, rope_scaling=None,
    ),
    "mistral": LLAMA_LIKE | dict(
        model_type="mistral", tied_embeddings=False, rope_theta=10000.0, qkv_bias=False,
        attn_out_bias=False, mlp_bias=False, sliding_window=32, rope_scaling=None,
    ),
    "gpt2": dict(
        family="gpt2", model_type="gpt2", hidden_size=64, num_layers=2, num_heads=4,
        num_kv_heads=4, head_dim=16, intermediate_size=256, vocab_size=128, max_positions=256,
        tied_embeddings=True, activation="gelu_new", norm="layernorm", norm_eps=1e-5,
        rope_theta=None, rope_scaling=None, qkv_bias=True, attn_out_bias=True, mlp_bias=True,
        sliding_window=None,
    ),
}  # fmt: skip
# Parameter counts by hand:
#   llama: per layer q, o 2*64*64 = 8,192; k, v 2*64*32 = 4,096; gate/up/down 3*64*96 = 18,432;
#          2 RMSNorms 128 -> 30,848; x2 = 61,696; embed + lm_head 2*128*64 = 16,384; norm 64
#          -> 78,144
#   mistral: the same shapes -> 78,144
#   qwen2: llama's layer + q/k/v biases 64 + 2*32 = 128 -> 30,976; x2 = 61,952; tied embedding
#          8,192; norm 64 -> 70,208
#   gpt2 (I = 4*64 = 256): c_attn 64*192 + 192 = 12,480; c_proj 64*64 + 64 = 4,160;
#          c_fc 64*256 + 256 = 16,640; mlp c_proj 256*64 + 64 = 16,448; 2 LayerNorms 256
#          -> 49,984; x2 = 99,968; wte 128*64 = 8,192; wpe 256*64 = 16,384; ln_f 128 -> 124,672
assert PARAMS == {"llama": 78_144, "mistral": 78_144, "qwen2": 70_208, "gpt2": 124_672}

MODEL_TYPES = ["llama", "qwen2", "mistral", "gpt2"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("checkpoints")
    return {t: save_checkpoint(root / t, t) for t in MODEL_TYPES}


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_auto_architecture_equals_the_configs_numbers(checkpoints, model_type):
    arch = architecture_from_config(checkpoints[model_type], name="mine")
    assert {k: getattr(arch, k) for k in EXPECTED[model_type]} == EXPECTED[model_type]
    assert arch.name == "mine"
    assert architecture_from_config(checkpoints[model_type]).name == model_type  # folder name


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_param_count_equals_the_loaded_model(checkpoints, model_type):
    arch = architecture_from_config(checkpoints[model_type])
    model = transformers.AutoModelForCausalLM.from_pretrained(checkpoints[model_type])
    assert param_count(arch) == sum(p.numel() for p in model.parameters()) == PARAMS[model_type]


def test_hub_style_config_json_is_read(tmp_path):
    # config.json as the hub has it for Llama-3.1 (transformers 4 keys: rope_theta beside
    # rope_scaling), shrunk: not written by this transformers, read by it.
    (tmp_path / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "intermediate_size": 96, "vocab_size": 128, "max_position_embeddings": 256,
        "rms_norm_eps": 1e-05, "rope_theta": 500000.0, "rope_scaling": LLAMA3_ROPE,
        "attention_bias": False, "mlp_bias": False, "tie_word_embeddings": False,
        "hidden_act": "silu", "torch_dtype": "bfloat16", "transformers_version": "4.43.0.dev0",
    }))  # fmt: skip
    arch = architecture_from_config(tmp_path)
    assert {k: getattr(arch, k) for k in EXPECTED["llama"]} == EXPECTED["llama"]


def test_qwen2_5_style_window_that_is_off_is_no_window(tmp_path):
    # Qwen2.5's config.json carries sliding_window 131072 with use_sliding_window false.
    config = transformers.Qwen2Config(
        **LLAMA_SHAPE, sliding_window=131072, use_sliding_window=False, max_window_layers=2
    )
    config.save_pretrained(tmp_path)
    assert architecture_from_config(tmp_path).sliding_window is None


def test_window_on_some_layers_only_is_refused(tmp_path):
    # Qwen2 with use_sliding_window: layers >= max_window_layers slide, the others do not.
    config = transformers.Qwen2Config(
        **LLAMA_SHAPE, sliding_window=16, use_sliding_window=True, max_window_layers=1
    )
    config.save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match=r"sliding_window 16 on some layers only"):
        architecture_from_config(tmp_path)


def test_round_trip_through_a_saved_checkpoint(tmp_path):
    # A checkpoint of our own tiny-llama's numbers matches tiny-llama, by name.
    arch = load_architecture("tiny-llama")
    to_hf_config(arch).save_pretrained(tmp_path)
    check_checkpoint_matches(arch, tmp_path)
    model = {"name": "m", "architecture": "tiny-llama", "checkpoint": str(tmp_path)}
    assert resolve_architecture(model) == arch


# ---------------------------------------------------------------- bad checkpoints, bad configs


def test_mismatch_names_both_values(checkpoints):
    model = {"name": "m", "architecture": "tiny-llama", "checkpoint": str(checkpoints["llama"])}
    with pytest.raises(ConfigError) as e:
        resolve_architecture(model)
    msg = str(e.value)
    assert msg.startswith("config key models.m.architecture 'tiny-llama' (models.m.checkpoint)")
    assert "hidden_size=64 in the checkpoint but hidden_size=256 in the architecture" in msg
    assert "num_hidden_layers=2 in the checkpoint but num_layers=4 in the architecture" in msg
    assert "rope_theta=500000.0 in the checkpoint but rope_theta=10000.0" in msg
    assert "Use `architecture: auto`" in msg


def test_model_type_mismatch_is_named_first(checkpoints):
    with pytest.raises(
        ConfigError, match=r"model_type='gpt2' in the checkpoint but model_type='llama'"
    ):
        check_checkpoint_matches(load_architecture("tiny-llama"), checkpoints["gpt2"])


def test_auto_is_named_in_errors(checkpoints):
    auto = {"name": "m", "architecture": "auto", "checkpoint": str(checkpoints["qwen2"])}
    assert resolve_architecture(auto).model_type == "qwen2"
    assert resolve_architecture(auto).name == "m"
    with pytest.raises(
        ConfigError, match=r"models.m.architecture: 'auto' reads .*checkpoint is not set"
    ):
        resolve_architecture({"name": "m", "architecture": "auto", "checkpoint": None})
    with pytest.raises(ConfigError, match=r"unknown architecture 'llama-9'; valid: 'auto'"):
        resolve_architecture({"name": "m", "architecture": "llama-9", "checkpoint": None})


@pytest.mark.parametrize(
    "config_text, message",
    [
        ('{"model_type": "llama", "hidden_size": "64", "num_hidden_layers": 2}',
         r"StrictDataclassFieldValidationError.*hidden_size.*expected int"),
        ("{not json", r"not a valid JSON file"),
        ('{"model_type": "mamba9"}', r"model type `mamba9`"),
        ('{"model_type": "opt"}', r"model_type 'opt' is not supported; supported: "
                                  r"\['llama', 'mistral', 'qwen2', 'gpt2'\]"),
        ('{"model_type": "llama", "hidden_act": "gelu", "hidden_size": 64, '
         '"num_attention_heads": 4, "intermediate_size": 96}', r"activation='gelu'"),
    ],
)  # fmt: skip
def test_bad_config_json_named(tmp_path, config_text, message):
    (tmp_path / "config.json").write_text(config_text)
    with pytest.raises(ConfigError, match=rf"checkpoint '{tmp_path}'.*{message}"):
        architecture_from_config(tmp_path)


def test_missing_checkpoint_named(tmp_path):
    with pytest.raises(ConfigError, match=rf"checkpoint '{tmp_path}/nope': no such directory"):
        architecture_from_config(tmp_path / "nope")
    with pytest.raises(
        ConfigError, match=rf"checkpoint '{tmp_path}': the directory has no config.json"
    ):
        architecture_from_config(tmp_path)
    # a hub id that is not in the local cache: never downloaded (offline), named
    with pytest.raises(
        ConfigError, match=r"'tokencarbon-tests/not-cached'.*cannot read its config.json offline"
    ):
        architecture_from_config("tokencarbon-tests/not-cached")

"""Architecture table and parameter/byte counts against published figures and hand computation."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
import transformers
from helpers import hf_model

from tokencarbon.errors import ConfigError, InputError
from tokencarbon.models import (
    RESOURCES_ENV,
    Architecture,
    activation_bytes,
    architecture_from_dict,
    architecture_from_hf_config,
    architecture_to_dict,
    available_architectures,
    kv_cache_bytes,
    load_architecture,
    matmul_param_count,
    param_count,
    resources_dir,
    to_hf_config,
    weight_bytes,
)

ALL = [
    "gpt2", "gpt2-large", "gpt2-medium", "gpt2-xl", "llama-2-13b", "llama-2-7b",
    "llama-3.1-8b", "mistral-7b", "qwen2.5-7b", "tiny-gpt2", "tiny-llama",
]  # fmt: skip


def test_available_architectures_lists_every_json():
    assert available_architectures() == ALL


# Published totals (torch's model.parameters(), tied embeddings once):
# Llama-2-7B 6,738,415,616: calflops README's LLM table (Params(Total) column).
# GPT-2 124,439,808, medium 354,823,168, large 774,030,080, XL 1,557,611,200: the HF model cards'
#   124M / 355M / 774M / 1.5B, exact by the hand sum below.
# By hand, GPT-2: wte V*h + wpe 1024*h + L*(4h^2 + 2h*4h + 4h [qkv, proj biases] + 4h + h
#   [fc, proj biases] + 4h [2 LayerNorms]) + 2h [ln_f]; for h=768, L=12:
#   38,597,376 + 786,432 + 12 * 7,087,872 + 1,536 = 124,439,808.
# Llama-2-7B: 2 * 32000*4096 [embed, lm_head] + 32 * (4*4096^2 + 3*4096*11008 + 2*4096) + 4096
#   = 262,144,000 + 32 * 202,383,360 + 4,096 = 6,738,415,616.
# Llama-2-13B: 2 * 32000*5120 + 40 * (4*5120^2 + 3*5120*13824 + 2*5120) + 5120
#   = 327,680,000 + 40 * 317,204,480 + 5,120 = 13,015,864,320.
@pytest.mark.parametrize(
    "name, expected",
    [
        ("llama-2-7b", 6_738_415_616),
        ("llama-2-13b", 13_015_864_320),
        ("gpt2", 124_439_808),
        ("gpt2-medium", 354_823_168),
        ("gpt2-large", 774_030_080),
        ("gpt2-xl", 1_557_611_200),
        ("llama-3.1-8b", 8_030_261_248),
    ],
)
def test_param_count_matches_published(name, expected):
    assert param_count(load_architecture(name)) == expected


def test_llama_3_1_8b_by_hand():
    # Published 8,030,261,248 (Llama 3.1 8B, HF safetensors total). By hand, h=4096, L=32, 32 heads
    # of 128, 8 KV heads (kv_dim 1024), I=14336, V=128256, untied, no biases:
    #   per layer q, o 2*4096^2 = 33,554,432; k, v 2*4096*1024 = 8,388,608;
    #   gate/up/down 3*4096*14336 = 176,160,768; 2 RMSNorms 8,192 -> 218,112,000; x32 = 6,979,584,000
    #   embed + lm_head 2*128,256*4096 = 1,050,673,152; final norm 4,096
    #   6,979,584,000 + 1,050,673,152 + 4,096 = 8,030,261,248
    arch = load_architecture("llama-3.1-8b")
    assert (arch.num_kv_heads, arch.vocab_size, arch.rope_theta) == (8, 128_256, 500_000.0)
    assert arch.rope_scaling == {
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }  # fmt: skip
    assert arch.num_layers * 218_112_000 + 1_050_673_152 + 4_096 == 8_030_261_248


def test_qwen2_5_7b_matches_its_model_card():
    # Qwen2.5-7B's card: 7.61B parameters, 6.53B non-embedding. By hand, h=3584, L=28, 28 heads of
    # 128, 4 KV heads (kv_dim 512), I=18944, V=152064, untied, biases on q, k, v only:
    #   per layer q, o 2*3584^2 = 25,690,112; k, v 2*3584*512 = 3,670,016;
    #   q/k/v biases 3584 + 2*512 = 4,608; gate/up/down 3*3584*18944 = 203,685,888;
    #   2 RMSNorms 7,168 -> 233,057,792; x28 = 6,525,618,176
    #   embed + lm_head 2*152,064*3584 = 1,089,994,752; final norm 3,584 -> 7,615,616,512
    arch = load_architecture("qwen2.5-7b")
    total = param_count(arch)
    assert total == 7_615_616_512
    assert int(total / 1e7) / 100 == 7.61  # the card truncates to 7.61B
    assert round((total - 2 * arch.vocab_size * arch.hidden_size) / 1e9, 2) == 6.53
    assert (arch.qkv_bias, arch.attn_out_bias, arch.mlp_bias) == (True, False, False)


def test_mistral_7b_matches_its_model_card():
    # Mistral-7B-v0.1: 7.24B on the card. Layers as Llama-3.1-8B (same h, L, heads, kv heads, I):
    #   32 * 218,112,000 = 6,979,584,000; embed + lm_head 2*32,000*4096 = 262,144,000; norm 4,096
    arch = load_architecture("mistral-7b")
    assert param_count(arch) == 6_979_584_000 + 262_144_000 + 4_096 == 7_241_732_096
    assert round(param_count(arch) / 1e9, 2) == 7.24
    assert arch.sliding_window == 4096


@pytest.mark.parametrize(
    "name", [n for n in ALL if load_architecture(n).model_type in ("llama", "gpt2")]
)
def test_param_count_matches_transformers_model(name):
    # An independent implementation: transformers' own modules built from our JSON numbers.
    arch = load_architecture(name)
    model = hf_model(arch, "meta")
    assert param_count(arch) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ALL)
def test_hf_config_round_trip_and_transformers_count(name):
    # Architecture -> transformers config -> Architecture is the identity, and the transformers
    # class of that model_type (Qwen2ForCausalLM with its hard-wired q/k/v biases, Mistral...),
    # built on the meta device, has exactly param_count parameters.
    arch = load_architecture(name)
    config = to_hf_config(arch)
    assert config.model_type == arch.model_type
    assert architecture_from_hf_config(config, name, "test") == arch
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    assert param_count(arch) == sum(p.numel() for p in model.parameters())


def test_matmul_param_count_by_hand():
    arch = load_architecture("tiny-llama")
    # h=256, kv_dim = 2 kv heads x 64 = 128, I=688, L=4, V=4096:
    # per layer q,o 2*256*256 = 131,072; k,v 2*256*128 = 65,536; gate/up/down 3*256*688 = 528,384
    # -> 724,992; x4 = 2,899,968; + lm_head 256*4096 = 1,048,576 -> 3,948,544
    assert matmul_param_count(arch) == 3_948_544
    # GPT-2 small: 12 * (768*2304 + 768*768 + 2*768*3072) + 768*50257 [tied head still multiplies]
    #   = 12 * 7,077,888 + 38,597,376 = 123,532,032
    assert matmul_param_count(load_architecture("gpt2")) == 123_532_032


def test_weight_bytes_llama2_7b_fp16():
    # 6,738,415,616 params x 2 bytes = 13,476,831,232: the ~13.5 GB of the fp16 HF checkpoint.
    assert weight_bytes(load_architecture("llama-2-7b"), "float16") == 13_476_831_232
    with pytest.raises(ConfigError, match="int4.*float32"):
        weight_bytes(load_architecture("gpt2"), "int4")


def test_kv_cache_bytes():
    # Llama-2-7B: 2 (K,V) x 32 layers x 4096 (32 kv heads x 128) x 2 bytes = 524,288 B per token,
    # the widely quoted 0.5 MiB/token; a full 4096-token context is 2 GiB.
    llama = load_architecture("llama-2-7b")
    assert kv_cache_bytes(llama, 1, 1, "float16") == 524_288
    assert kv_cache_bytes(llama, 1, 4096, "float16") == 2 * 1024**3
    # tiny-llama under GQA: 2 x 4 layers x (2 kv heads x 64) x 10 positions x 3 requests x 4 bytes
    assert kv_cache_bytes(load_architecture("tiny-llama"), 3, 10, "float32") == 122_880


def test_activation_bytes_by_hand():
    # tiny-gpt2, B=2, T=8, fp32, h=256, heads=4, I=1024, V=4096 (elements):
    #   residual 2*2*8*256 = 8,192
    #   attention 2*8*(256+2*256) + 2*2*4*8*8 + 2*8*256 = 12,288 + 1,024 + 4,096 = 17,408
    #   MLP 2*2*8*1024 = 32,768 (larger) ; logits 2*4096 = 8,192
    #   (8,192 + 32,768 + 8,192) * 4 bytes = 196,608
    assert activation_bytes(load_architecture("tiny-gpt2"), 2, 8, "float32") == 196_608
    # tiny-llama, B=1, T=512, fp16: attention now dominates
    #   residual 2*512*256 = 262,144
    #   attention 512*(256+2*128) + 2*4*512*512 + 512*256 = 262,144 + 2,097,152 + 131,072 = 2,490,368
    #   MLP 3*512*688 = 1,056,768 ; logits 4,096
    #   (262,144 + 2,490,368 + 4,096) * 2 = 5,513,216
    assert activation_bytes(load_architecture("tiny-llama"), 1, 512, "float16") == 5_513_216


def test_tiny_llama_exercises_grouped_query_attention():
    arch = load_architecture("tiny-llama")
    assert (arch.num_heads, arch.num_kv_heads, arch.head_dim, arch.kv_dim) == (4, 2, 64, 128)


def test_unknown_model_names_valid_ones():
    with pytest.raises(ConfigError, match=r"'llama-3'.*gpt2.*tiny-llama"):
        load_architecture("llama-3")


def _write_models(tmp_path, name, text):
    """A workflow directory tmp_path holding resources/models/<name>.json."""
    (tmp_path / "resources" / "models").mkdir(parents=True)
    path = tmp_path / "resources" / "models" / f"{name}.json"
    path.write_text(text)
    return path


def _tiny(repo, **changes):
    raw = json.loads((repo / "resources" / "models" / "tiny-llama.json").read_text())
    return raw | changes


def test_bad_json_names_file(tmp_path):
    path = _write_models(tmp_path, "broken", "{not json")
    with pytest.raises(InputError, match=str(path)):
        load_architecture("broken", tmp_path)


def test_missing_key_names_key(tmp_path, repo):
    raw = json.loads((repo / "resources" / "models" / "gpt2.json").read_text())
    del raw["norm_eps"]
    raw["name"] = "nonorm"
    path = _write_models(tmp_path, "nonorm", json.dumps(raw))
    with pytest.raises(InputError, match=rf"{path}.*'norm_eps'"):
        load_architecture("nonorm", tmp_path)


def test_bad_family_names_valid_ones(tmp_path, repo):
    raw = json.loads((repo / "resources" / "models" / "gpt2.json").read_text())
    raw.update(name="odd", family="mamba")
    _write_models(tmp_path, "odd", json.dumps(raw))
    with pytest.raises(InputError, match=r"family='mamba'.*'llama', 'gpt2'"):
        load_architecture("odd", tmp_path)


def test_every_model_cites_a_source(repo):
    for name in ALL:
        raw = json.loads((repo / "resources" / "models" / f"{name}.json").read_text())
        assert len(raw["source"]) > 40, name


def test_non_integer_size_named(tmp_path, repo):
    _write_models(tmp_path, "stringy", json.dumps(_tiny(repo, name="stringy", hidden_size="256")))
    with pytest.raises(InputError, match=r"hidden_size='256'; must be a positive integer"):
        load_architecture("stringy", tmp_path)


def test_tied_embeddings_no_is_refused_not_read_as_true(tmp_path, repo):
    # Issue 10 section 8: "no" is a truthy string; read as true it gave 3.95M parameters for
    # tiny-llama instead of 4,999,424 (4,999,424 - 4096*256 tied lm_head = 3,950,848).
    path = _write_models(
        tmp_path, "tiny", json.dumps(_tiny(repo, name="tiny", tied_embeddings="no"))
    )
    with pytest.raises(InputError, match=rf"{path}.*tied_embeddings='no'; must be a boolean"):
        load_architecture("tiny", tmp_path)


# The whole kind: every field of an architecture file is type-checked, with the value and what is
# valid in the message. Each row: one field set to a value JSON can carry, and the message part.
BAD_FIELDS = [
    ("num_layers", 4.0, "num_layers=4.0; must be a positive integer"),
    ("num_layers", True, "num_layers=True; must be a positive integer"),
    ("num_heads", 0, "num_heads=0; must be a positive integer"),
    ("vocab_size", -4096, "vocab_size=-4096; must be a positive integer"),
    ("max_positions", None, "max_positions=None; must be a positive integer"),
    ("tied_embeddings", 0, "tied_embeddings=0; must be a boolean"),
    ("tied_embeddings", "false", "tied_embeddings='false'; must be a boolean"),
    ("qkv_bias", "yes", "qkv_bias='yes'; must be a boolean"),
    ("mlp_bias", 1, "mlp_bias=1; must be a boolean"),
    ("norm_eps", "1e-5", "norm_eps='1e-5'; must be a number in \\(0, 1\\)"),
    ("norm_eps", float("nan"), "norm_eps=nan; must be a number"),
    ("norm_eps", 0, "norm_eps=0; must be a number"),
    ("rope_theta", -1.0, "rope_theta=-1.0; must be a positive number"),
    ("rope_theta", None, "rope_theta=None; the llama family needs a RoPE base"),
    ("activation", "gelu", "activation='gelu'; valid: \\['silu', 'gelu_new'\\]"),
    ("activation", "gelu_new", "activation='gelu_new'; with norm='rmsnorm'"),
    ("norm", "batchnorm", "norm='batchnorm'; valid"),
    ("model_type", "gpt2", "family='llama'; model_type 'gpt2' has the 'gpt2' layout"),
    ("model_type", "mamba", "model_type='mamba'; valid: \\['llama', 'mistral', 'qwen2', 'gpt2'\\]"),
    ("model_type", ["llama"], "model_type=\\['llama'\\]; valid"),
    ("num_kv_heads", 3, "num_kv_heads=3; must divide num_heads 4"),
    ("head_dim", 63, "head_dim=63; RoPE rotates pairs of dimensions: head_dim must be even"),
    ("head_dim", "64", "head_dim='64'; must be a positive integer"),
    ("sliding_window", 4096, "sliding_window=4096; only mistral and qwen2"),
    ("rope_scaling", {"factor": 8.0}, "must be null or an object with a \"rope_type\" string"),
    ("rope_scaling", {"rope_type": "default"}, "holds scaling only"),
    ("rope_scaling", {"rope_type": "llama3", "factor": 8.0}, "llama3 scaling needs positive"),
    ("rope_scaling", {"rope_type": "linear", "factor": {"x": 1}}, "key 'factor': values must be"),
    ("name", "", "must equal the file stem"),
]  # fmt: skip


@pytest.mark.parametrize("field, value, message", BAD_FIELDS)
def test_every_field_is_type_checked(tmp_path, repo, field, value, message):
    path = _write_models(tmp_path, "bad", json.dumps(_tiny(repo) | {"name": "bad", field: value}))
    with pytest.raises(InputError, match=rf"{path}: .*{message}"):
        load_architecture("bad", tmp_path)


def test_model_type_fixes_the_biases(repo):
    # transformers' Qwen2 hard-wires q/k/v biases (and none on o, MLP); a file saying otherwise would
    # count fewer parameters than the model transformers builds.
    raw = {k: v for k, v in _tiny(repo, model_type="qwen2").items() if k != "source"}
    with pytest.raises(
        InputError, match=r"qkv_bias=False; transformers' qwen2 builds qkv_bias=True"
    ):
        architecture_from_dict(raw | {"qkv_bias": False}, "x")
    qwen = architecture_from_dict(raw, "x")
    assert (qwen.qkv_bias, qwen.attn_out_bias, qwen.mlp_bias) == (True, False, False)
    # tiny-llama 4,999,424 + 4 layers x (q 256 + k, v 2 x 128) biases = 4,999,424 + 2,048
    assert param_count(qwen) == 5_001_472


def test_unknown_key_is_refused_not_ignored(tmp_path, repo):
    # A typo ("tied_embedding") would otherwise leave the default in place, silently.
    raw = _tiny(repo, name="typo", tied_embedding=True)
    path = _write_models(tmp_path, "typo", json.dumps(raw))
    with pytest.raises(
        InputError, match=rf"{path}: unknown key\(s\) \['tied_embedding'\]; valid keys"
    ):
        load_architecture("typo", tmp_path)


def test_source_is_required(tmp_path, repo):
    raw = _tiny(repo, name="nosource")
    del raw["source"]
    path = _write_models(tmp_path, "nosource", json.dumps(raw))
    with pytest.raises(InputError, match=rf"{path}: missing key\(s\) \['source'\]"):
        load_architecture("nosource", tmp_path)


def test_dict_round_trip_as_params_carry_it():
    for name in ALL:
        arch = load_architecture(name)
        assert architecture_from_dict(architecture_to_dict(arch), "params") == arch
    with pytest.raises(
        InputError, match=r"params: expected an object of architecture fields, got str"
    ):
        architecture_from_dict("tiny-llama", "params")


def test_direct_construction_is_checked_too():
    with pytest.raises(ConfigError, match=r"architecture 'toy': tied_embeddings='no'"):
        Architecture("toy", "llama", 8, 1, 2, 2, 16, 32, 64, "no", "silu", "rmsnorm", 1e-5, 1e4)


# ---------------------------------------------------------------- where resources/ is found


def test_resources_found_in_the_workflow_directory(tmp_path, repo, monkeypatch):
    monkeypatch.delenv(RESOURCES_ENV, raising=False)
    _write_models(tmp_path, "tiny-llama", json.dumps(_tiny(repo)))
    assert resources_dir(tmp_path) == tmp_path / "resources"
    assert available_architectures(tmp_path) == ["tiny-llama"]
    assert load_architecture("tiny-llama", tmp_path) == load_architecture("tiny-llama")
    with pytest.raises(
        ConfigError, match=rf"resources folder {tmp_path}/x/resources \(from the workflow directory"
    ):
        resources_dir(tmp_path / "x")


def test_resources_env_is_an_explicit_override(tmp_path, repo, monkeypatch):
    _write_models(tmp_path, "tiny-llama", json.dumps(_tiny(repo)))
    monkeypatch.setenv(RESOURCES_ENV, str(tmp_path / "resources"))
    assert resources_dir(repo) == tmp_path / "resources"  # beats the workflow directory
    monkeypatch.setenv(RESOURCES_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(
        ConfigError, match=r"nowhere \(from \$TOKENCARBON_RESOURCES\) does not exist"
    ):
        resources_dir()


def test_installed_package_outside_a_checkout_needs_the_workflow_directory(tmp_path, repo):
    # A non-editable install: the package alone under site-packages, no resources/ two levels up.
    # Without a workflow directory it says what to pass; with one it reads that checkout's files.
    site = tmp_path / "lib" / "site-packages"
    shutil.copytree(repo / "workflow" / "tokencarbon", site / "tokencarbon")
    code = (
        "import sys; from tokencarbon.models import resources_dir, load_architecture\n"
        "try:\n    resources_dir()\nexcept Exception as e:\n    print(type(e).__name__, e)\n"
        f"print(load_architecture('gpt2', {str(repo)!r}).hidden_size)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != RESOURCES_ENV} | {"PYTHONPATH": str(site)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert (
        "ConfigError resources folder" in out.stdout and "pass the workflow directory" in out.stdout
    )
    assert out.stdout.strip().endswith("768")

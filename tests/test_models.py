"""Architecture table and parameter/byte counts against published figures and hand computation."""

import json

import pytest
from helpers import hf_model

from tokencarbon.errors import ConfigError, InputError
from tokencarbon.models import (
    activation_bytes,
    available_architectures,
    kv_cache_bytes,
    load_architecture,
    matmul_param_count,
    param_count,
    weight_bytes,
)

ALL = [
    "gpt2", "gpt2-large", "gpt2-medium", "gpt2-xl",
    "llama-2-13b", "llama-2-7b", "tiny-gpt2", "tiny-llama",
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
    ],
)
def test_param_count_matches_published(name, expected):
    assert param_count(load_architecture(name)) == expected


@pytest.mark.parametrize("name", ALL)
def test_param_count_matches_transformers_model(name):
    # An independent implementation: transformers' own modules built from our JSON numbers.
    arch = load_architecture(name)
    model = hf_model(arch, "meta")
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
    (tmp_path / "models").mkdir()
    path = tmp_path / "models" / f"{name}.json"
    path.write_text(text)
    return path


def test_bad_json_names_file(tmp_path, monkeypatch):
    path = _write_models(tmp_path, "broken", "{not json")
    monkeypatch.setenv("TOKENCARBON_RESOURCES", str(tmp_path))
    with pytest.raises(InputError, match=str(path)):
        load_architecture("broken")


def test_missing_key_names_key(tmp_path, monkeypatch, repo):
    raw = json.loads((repo / "resources" / "models" / "gpt2.json").read_text())
    del raw["norm_eps"]
    raw["name"] = "nonorm"
    path = _write_models(tmp_path, "nonorm", json.dumps(raw))
    monkeypatch.setenv("TOKENCARBON_RESOURCES", str(tmp_path))
    with pytest.raises(InputError, match=rf"{path}.*'norm_eps'"):
        load_architecture("nonorm")


def test_bad_family_names_valid_ones(tmp_path, monkeypatch, repo):
    raw = json.loads((repo / "resources" / "models" / "gpt2.json").read_text())
    raw.update(name="odd", family="mamba")
    _write_models(tmp_path, "odd", json.dumps(raw))
    monkeypatch.setenv("TOKENCARBON_RESOURCES", str(tmp_path))
    with pytest.raises(InputError, match=r"family='mamba'.*'llama', 'gpt2'"):
        load_architecture("odd")


def test_every_model_cites_a_source(repo):
    for name in ALL:
        raw = json.loads((repo / "resources" / "models" / f"{name}.json").read_text())
        assert len(raw["source"]) > 40, name


def test_non_integer_size_named(tmp_path, monkeypatch, repo):
    raw = json.loads((repo / "resources" / "models" / "tiny-llama.json").read_text())
    raw.update(name="stringy", hidden_size="256")
    _write_models(tmp_path, "stringy", json.dumps(raw))
    monkeypatch.setenv("TOKENCARBON_RESOURCES", str(tmp_path))
    with pytest.raises(InputError, match=r"hidden_size='256'; must be a positive integer"):
        load_architecture("stringy")

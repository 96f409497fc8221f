"""Weight-only quantization (issue 16): the config key, torchao on the torch and transformers
backends, and the weight bytes that memory, MBU and the OOM probe count.

Every count below is worked by hand from torchao 0.18.0's source (int4_tile_packed_to_4d_tensor.py,
int8_tensor.py) and the architecture files, never copied from the code's output. Those counted on
a CPU are also measured: the bytes of the tensors torchao actually holds after quantize_."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from harness import Project

from tokencarbon.backends.model import build_model
from tokencarbon.backends.static import TorchEngine
from tokencarbon.errors import ConfigError
from tokencarbon.flops import decode_step_bytes
from tokencarbon.models import load_architecture, param_count, weight_bytes
from tokencarbon.probe import serving_memory_model, serving_pool_bytes, static_memory_model
from tokencarbon.quantization import (
    NONE,
    Quantization,
    library_version,
    parse_quantization,
    quantize_module,
)

REPO = Path(__file__).resolve().parents[1]
INT4_G128 = Quantization("int4_weight_only", 128)
INT8 = Quantization("int8_weight_only")

# ---------------------------------------------------------------- the scheme and its config value


def test_labels_defaults_and_parsing():
    assert NONE.label() == "none" and INT8.label() == "int8_weight_only"
    assert Quantization("int4_weight_only").group_size == 128  # torchao's default
    assert Quantization("int4_weight_only", 32).label() == "int4_weight_only-g32"
    assert parse_quantization(None, "k") == NONE == parse_quantization("none", "k")
    assert parse_quantization("int4_weight_only", "k") == INT4_G128
    assert parse_quantization({"scheme": "int4_weight_only", "group_size": 64}, "k").group_size == 64
    assert parse_quantization({"scheme": "int8_weight_only", "group_size": None}, "k") == INT8
    assert library_version(NONE) == ""
    assert library_version(INT8) == "torchao 0.18.0"  # the version pyproject.toml pins


@pytest.mark.parametrize(
    "raw, message",
    [
        ("int3_weight_only", "'int3_weight_only': quantization scheme 'int3_weight_only'"),
        ({"scheme": "int4_weight_only", "group_size": 100}, "group_size 100; valid: \\[32, 64, 128, 256\\]"),
        ({"scheme": "int8_weight_only", "group_size": 128}, "only int4_weight_only takes a group size"),
        ({"group_size": 128}, "an object needs 'scheme'"),
        ({"scheme": "int8_weight_only", "bits": 8}, "unknown: \\['bits'\\]"),
        (4, "4 \\(int\\)"),
    ],
)  # fmt: skip
def test_bad_values_name_the_key_the_value_and_what_is_valid(raw, message):
    with pytest.raises(ConfigError, match=message) as err:
        parse_quantization(raw, "models.m.quantization")
    assert "config key models.m.quantization" in str(err.value)
    assert "valid:" in str(err.value)


# ---------------------------------------------------------------- weight bytes, by hand


def test_int4_g128_llama_2_7b_weight_bytes_by_hand():
    # torchao 0.18 Int4TilePackedTo4dTensor: in_features K padded to K' (multiple of 1024),
    # out_features N to N' (multiple of 8); values N' K' / 2 bytes; scale_and_zero bf16
    # [K'/128, N', 2] = K'/128 x N' x 4 bytes.
    # q, k, v, o: N = K = 4096 (no padding): 4096 x 4096 / 2 = 8,388,608 + 32 x 4096 x 4 = 524,288
    qkvo = 4 * (8_388_608 + 524_288)
    # gate, up: N = 11008 (= 8 x 1376), K = 4096: 11008 x 4096 / 2 = 22,544,384 + 32 x 11008 x 4
    gate_up = 2 * (22_544_384 + 1_409_024)
    # down: N = 4096, K = 11008 -> 11264 (11 x 1024); 11008 = 86 x 128, so torchao quantizes it:
    # 4096 x 11264 / 2 = 23,068,672 + 88 groups x 4096 x 4 = 1,441,792
    down = 23_068_672 + 1_441_792
    layer = qkvo + gate_up + down
    assert layer == 108_068_864
    # lm_head (untied): N = 32000 (= 8 x 4000), K = 4096: 65,536,000 + 32 x 32000 x 4 = 4,096,000
    lm_head = 65_536_000 + 4_096_000
    embedding = 32_000 * 4096 * 2  # bf16, not quantized
    norms = (2 * 32 + 1) * 4096 * 2  # two RMSNorms per layer and the final one, bf16
    total = 32 * layer + lm_head + embedding + norms
    assert total == 3_790_512_128
    arch = load_architecture("llama-2-7b")
    assert weight_bytes(arch, "bfloat16", INT4_G128) == 3_790_512_128
    assert weight_bytes(arch, "bfloat16") == 13_476_831_232  # unquantized, as before
    # 3.56x fewer bytes than bf16 (4 bits + 0.25 bit of scales/zeros per weight; embedding in bf16)
    assert round(13_476_831_232 / 3_790_512_128, 2) == 3.56


def test_int4_group_256_llama_2_7b_weight_bytes_by_hand():
    # The values are group-independent (101,711,872 B per layer: 4 x 8,388,608 + 2 x 22,544,384 +
    # 23,068,672); scale_and_zero at group 256: q,k,v,o 16 x 4096 x 4 = 262,144 each; gate, up
    # 16 x 11008 x 4 = 704,512 each; down 44 x 4096 x 4 = 720,896 -> 3,178,496 per layer.
    layer = 101_711_872 + 4 * 262_144 + 2 * 704_512 + 720_896
    lm_head = 65_536_000 + 16 * 32_000 * 4
    total = 32 * layer + lm_head + 262_144_000 + 532_480
    assert total == 3_686_752_256
    q = Quantization("int4_weight_only", 256)
    assert weight_bytes(load_architecture("llama-2-7b"), "bfloat16", q) == 3_686_752_256


def test_int8_llama_2_7b_weight_bytes_by_hand():
    # torchao 0.18 Int8Tensor (PerRow): qdata N x K int8, scale [N, 1] float32, zero_point [N, 1]
    # int8: N K + 5 N bytes per linear. Matmul weights 32 x (4 x 4096^2 + 3 x 4096 x 11008) +
    # 32000 x 4096 = 6,607,077,376; rows 32 x (4 x 4096 + 2 x 11008 + 4096) + 32000 = 1,391,872.
    linears = 6_607_077_376 + 5 * 1_391_872
    total = linears + 262_144_000 + 532_480  # embedding and norms in bf16
    assert total == 6_876_713_216
    assert weight_bytes(load_architecture("llama-2-7b"), "bfloat16", INT8) == 6_876_713_216


def test_int4_leaves_a_linear_whose_inputs_do_not_divide_into_groups_in_dtype():
    # tiny-llama's down projection has K = 688 = 21.5 x 32: torchao's _int4_weight_only_quantize_
    # tensor skips it at every group size. Per layer then: fused qkv N = 512, K = 256 -> K' = 1024:
    # 512 x 1024 / 2 = 262,144 + (1024/32) x 512 x 4 = 65,536; o: N = 256: 131,072 + 32,768;
    # gate+up N = 1376: 704,512 + 176,128; down 256 x 688 x 2 = 352,256 (bf16).
    layer = 262_144 + 65_536 + 131_072 + 32_768 + 704_512 + 176_128 + 352_256
    lm_head = 4096 * 1024 // 2 + 32 * 4096 * 4  # 2,097,152 + 524,288: more than bf16's 2,097,152
    rest = (4096 * 256 + 9 * 256) * 2  # embedding and 9 RMSNorm weights, bf16
    q = Quantization("int4_weight_only", 32)
    assert weight_bytes(load_architecture("tiny-llama"), "bfloat16", q) == 4 * layer + lm_head + rest


def test_int4_needs_bfloat16():
    with pytest.raises(ConfigError, match="bfloat16"):
        weight_bytes(load_architecture("llama-2-7b"), "float16", INT4_G128)


def test_mbu_bytes_follow_the_quantization():
    # One decode step of one request at context 10, llama-2-7b int4 g128: weights as stored plus
    # the bf16 K/V of 10 read + 1 written positions: 11 x 2 x 32 x 4096 x 2 = 5,767,168.
    arch = load_architecture("llama-2-7b")
    kv = 11 * 2 * 32 * 4096 * 2
    assert decode_step_bytes(arch, [10], "bfloat16", INT4_G128) == 3_790_512_128 + kv
    assert decode_step_bytes(arch, [10], "bfloat16") == 13_476_831_232 + kv


def test_the_probe_reserves_the_quantized_weights():
    # The continuous probe's memory model adds the weights as stored to the pool: for int4
    # Llama-2-7B 3,790,512,128 B, plus the RoPE cos and sin tables (2 x 4096 positions x 128
    # x 2 B = 2,097,152), whatever the pool.
    arch = load_architecture("llama-2-7b")
    model = serving_memory_model(arch, "bfloat16", 1000, 1000, INT4_G128)
    pool = serving_pool_bytes(arch, "bfloat16", 1, 1000, 1000)
    assert model.need(1) == 3_790_512_128 + 2_097_152 + pool


def test_the_static_probe_reserves_the_int8_tiny_llama_weights():
    # tiny-llama int8, float32: linears 3,948,544 int8 values + 5 x 13,696 rows = 68,480;
    # embedding 4096 x 256 and 9 norms of 256 in float32: 4,203,520 -> 8,220,544 B (unquantized:
    # 4,999,424 parameters x 4 = 19,997,696 B). The static probe's fixed bytes add the RoPE
    # tables: 2 x 512 positions x 64 x 4 B = 262,144.
    weights = 3_948_544 + 68_480 + 4_203_520
    assert weights == 8_220_544
    arch = load_architecture("tiny-llama")
    assert static_memory_model(arch, "float32", 10, 6, INT8).fixed_bytes == weights + 262_144
    assert static_memory_model(arch, "float32", 10, 6).fixed_bytes == 19_997_696 + 262_144


# ---------------------------------------------------------------- measured on the CPU


def _stored_bytes(t: torch.Tensor) -> int:
    """Bytes held by a tensor: a torchao subclass's inner tensors, else its own elements."""
    names = getattr(t, "tensor_data_names", None)
    if names is None:
        return t.numel() * t.element_size()
    inner = [getattr(t, n, None) for n in [*names, *t.optional_tensor_data_names]]
    return sum(_stored_bytes(x) for x in inner if x is not None)


def _measured_weight_bytes(model: torch.nn.Module) -> int:
    seen, total = set(), 0
    for p in model.parameters():  # a tied weight once
        if id(p) not in seen:
            seen.add(id(p))
            total += _stored_bytes(p)
    return total


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_int8_weight_bytes_equal_what_torchao_stores(name):
    arch = load_architecture(name)
    model = build_model(arch, "float32", "cpu", seed=0, quantization=INT8)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    quantized = [m for m in linears if type(m.weight).__name__ == "Int8Tensor"]
    # every linear but GPT-2's tied head, which stays the float32 embedding
    assert len(quantized) == 4 * arch.num_layers + (0 if arch.tied_embeddings else 1)
    if arch.tied_embeddings:
        assert model.lm_head.weight is model.embed.weight
    assert _measured_weight_bytes(model) == weight_bytes(arch, "float32", INT8)
    if name == "tiny-llama":
        assert _measured_weight_bytes(model) == 8_220_544  # the hand count above
    unquantized = build_model(arch, "float32", "cpu", seed=0)
    assert _measured_weight_bytes(unquantized) == param_count(arch) * 4 == weight_bytes(arch, "float32")


def test_int8_tiny_llama_decodes_close_to_the_unquantized_model():
    arch = load_architecture("tiny-llama")
    full = build_model(arch, "float32", "cpu", seed=0)
    int8 = build_model(arch, "float32", "cpu", seed=0, quantization=INT8)
    # the weights were drawn first, then quantized: per row, |w - dequantized w| <= scale / 2
    w, q = full.layers[0].attn.qkv.weight, int8.layers[0].attn.qkv.weight
    scale = w.abs().amax(dim=1, keepdim=True) / 127.5  # symmetric int8 over [-128, 127]
    assert torch.all((q.dequantize() - w).abs() <= scale / 2 + 1e-7)
    tokens = torch.tensor([[5, 17, 3, 99, 42, 7], [8, 2, 61, 13, 100, 4]])
    positions = torch.arange(6).expand(2, 6)
    mask = torch.zeros(2, 1, 6, 6).masked_fill_(torch.ones(6, 6, dtype=torch.bool).triu(1), float("-inf"))
    for m in (full, int8):
        for layer in m.layers:
            shape = (2, arch.num_kv_heads, 6, arch.head_dim)
            layer.attn.k_cache, layer.attn.v_cache = torch.zeros(shape), torch.zeros(shape)
    a, b = full(tokens, positions, mask), int8(tokens, positions, mask)
    assert a.shape == b.shape == (2, arch.vocab_size)
    # 8-bit weights: logits within 2 % of their spread (measured here: ~0.3 %)
    assert (a - b).abs().max() <= 0.02 * (a.max() - a.min())
    # the engine serves the same batch with the same shapes and counts
    engines = [
        TorchEngine(arch, "float32", "cpu", seed=0, quantization=q) for q in (NONE, INT8)
    ]
    results = [e.run_batch([[5, 17, 3], [8, 2]], [6, 3]) for e in engines]
    assert [len(t) for t in results[1].token_ids] == [6, 3]
    assert (results[0].input_tokens, results[0].output_tokens) == (
        results[1].input_tokens, results[1].output_tokens) == (5, 9)  # fmt: skip
    assert engines[1].quantization == INT8


def test_int4_refused_on_the_cpu_with_what_would_run():
    with pytest.raises(ConfigError, match="no CPU kernel for int4"):
        build_model(load_architecture("tiny-llama"), "bfloat16", "cpu", seed=0, quantization=INT4_G128)
    with pytest.raises(ConfigError, match="bfloat16 weights only"):
        build_model(load_architecture("tiny-llama"), "float32", "cpu", seed=0, quantization=INT4_G128)


def test_torchao_int4_has_no_cpu_kernel_in_0_18():
    # Why int4 is refused on a CPU: each int4 packing format of torchao 0.18 fails here.
    from torchao.quantization import Int4WeightOnlyConfig, quantize_

    for packing in ("plain", "preshuffled", "plain_int32", "tile_packed_to_4d"):
        model = torch.nn.Sequential(torch.nn.Linear(256, 64)).to(torch.bfloat16)
        with pytest.raises((ImportError, NotImplementedError, AssertionError, RuntimeError)):
            quantize_(model, Int4WeightOnlyConfig(group_size=128, int4_packing_format=packing))
            model(torch.randn(2, 256, dtype=torch.bfloat16))


def test_quantize_module_none_is_a_no_op():
    model = torch.nn.Sequential(torch.nn.Linear(8, 4))
    before = model[0].weight
    quantize_module(model, NONE)
    assert model[0].weight is before


def test_int8_torch_and_transformers_backends_agree():
    from tokencarbon.backends.transformers_backend import TransformersEngine

    arch = load_architecture("tiny-llama")
    prompts, outputs = [[5, 17, 3, 99, 42, 7], [8, 2]], [5, 3]
    theirs = TransformersEngine(arch, "float32", "cpu", seed=0, quantization=INT8)
    ours = TorchEngine(arch, "float32", "cpu", seed=0, quantization=INT8)
    linears = [m for m in theirs.model.modules() if isinstance(m, torch.nn.Linear)]
    assert {type(m.weight).__name__ for m in linears} == {"Int8Tensor"}  # lm_head included
    assert _measured_weight_bytes(theirs.model) == weight_bytes(arch, "float32", INT8)
    assert ours.run_batch(prompts, outputs).token_ids == theirs.run_batch(prompts, outputs).token_ids
    described = theirs.describe()
    assert (described["quantization"], described["quant_library"]) == ("int8_weight_only", "torchao 0.18.0")


def test_transformers_checkpoint_quantized_through_torchao_config(tmp_path):
    from tiny_checkpoints import save_checkpoint

    from tokencarbon.backends.transformers_backend import TransformersEngine
    from tokencarbon.models import architecture_from_config

    path = save_checkpoint(tmp_path / "llama", "llama", seed=1)
    arch = architecture_from_config(path)
    engine = TransformersEngine(arch, "float32", "cpu", seed=0, checkpoint=str(path), quantization=INT8)
    assert engine.model.config.quantization_config.quant_method == "torchao"
    assert _measured_weight_bytes(engine.model) == weight_bytes(arch, "float32", INT8)
    ours = TorchEngine(arch, "float32", "cpu", seed=0, checkpoint=str(path), quantization=INT8)
    assert _measured_weight_bytes(ours.model) == weight_bytes(arch, "float32", INT8)
    assert engine.describe()["quantization_path"] == "TorchAoConfig (from_pretrained)"


# ---------------------------------------------------------------- the DAG refuses bad values


def _project(tmp_path: Path, extra: str) -> Path:
    """The embedded default's project (tests/harness.py) with config/bad.yaml = extra."""
    project = Project.make(tmp_path, None).path
    (project / "config/bad.yaml").write_text(extra)
    return project


@pytest.mark.parametrize(
    "model, messages",
    [
        ("{architecture: tiny-llama, family: tiny, dtype: bfloat16, quantization: int4_weight_only}",
         ["config key models.q.quantization: 'int4_weight_only-g128', and platform(s) ['cpu'] "
          "measured here are CPUs; torchao 0.18 has no CPU kernel", "or use quantization "
          "'int8_weight_only' on the CPU"]),
        ("{architecture: tiny-llama, family: tiny, dtype: float32, quantization: int4_weight_only}",
         ["config key models.q.quantization: 'int4_weight_only-g128' with models.q.dtype "
          "'float32'", "set models.q.dtype to bfloat16"]),
        ("{architecture: tiny-llama, family: tiny, dtype: float32, quantization: int2}",
         ["config key models.q.quantization: 'int2': quantization scheme 'int2'; valid: 'none', "
          "'int8_weight_only', 'int4_weight_only'"]),
        ("{architecture: tiny-llama, family: tiny, dtype: bfloat16, "
         "quantization: {scheme: int4_weight_only, group_size: 100}}",
         ["config key models.q.quantization: {'scheme': 'int4_weight_only', 'group_size': 100}",
          "group_size 100; valid: [32, 64, 128, 256]"]),
        ("{architecture: tiny-gpt2, family: tiny, dtype: float32, quantization: int8_weight_only}\n"
         "backend: {name: transformers}\nsweep: {batch_sizes: [1], max_num_seqs: [4]}",
         ["config key models.q.quantization: 'int8_weight_only' on GPT-2 (tiny-gpt2) with the "
          "transformers backend", "Conv1D"]),
    ],
)  # fmt: skip
def test_bad_quantization_stops_the_dag_naming_the_key(tmp_path, model, messages):
    project = _project(tmp_path, f"models:\n  q: {model}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--dry-run", "--cores", "1", "--configfile",
         "config/config.yaml", "config/bad.yaml"],
        cwd=project, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Job stats" not in out
    for message in messages:
        assert message in out, out[-2000:]


def test_tensorrt_llm_runs_no_torchao_scheme():
    # The default's tiny-llama-int8 with the tensorrt_llm backend on a GPU platform (on a CPU the
    # platform check refuses tensorrt_llm first): refused naming the key and what runs torchao.
    import yaml
    from snakemake.utils import validate

    from tokencarbon.config import check_config

    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    config |= {"backend": {"name": "tensorrt_llm"}, "platforms": {"h100-sxm-80gb": {}},
               "sweep": {"batch_sizes": [1, 2], "max_batch": 32, "max_num_seqs": []}}  # fmt: skip
    validate(config, schema=str(REPO / "workflow/schemas/config.schema.yaml"))
    with pytest.raises(ConfigError) as err:
        check_config(config)
    assert str(err.value).startswith(
        "config key models.tiny-llama-int8.quantization: 'int8_weight_only' is applied through "
        "torchao, which the tensorrt_llm backend does not run; use backend.name 'torch' or "
        "'transformers'"
    )


def test_quantization_enters_the_model_slice_only_where_set():
    from tokencarbon.plan import model_slice

    config = {
        "seed": 0,
        "models": {
            "a": {"architecture": "tiny-llama", "dtype": "float32", "checkpoint": None},
            "b": {"architecture": "tiny-llama", "dtype": "float32", "checkpoint": None,
                  "quantization": "none"},
            "c": {"architecture": "tiny-llama", "dtype": "float32", "checkpoint": None,
                  "quantization": "int8_weight_only"},
        },
    }  # fmt: skip
    assert "quantization" not in model_slice(config, "a") and "quantization" not in model_slice(config, "b")
    assert model_slice(config, "c")["quantization"] == {"scheme": "int8_weight_only", "group_size": None}
    assert json.dumps(model_slice(config, "c"))  # plain builtins: Snakemake params

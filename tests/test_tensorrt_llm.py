"""The TensorRT-LLM backend up to the library boundary: checkpoint config, command lines, engine
limits, batch checks, a cell's choice and checks of its engine, the auto-sweep rule, and the
mapping from streamed Executor responses to a BatchResult. The expected values are written out by
hand from the published model configs and TensorRT-LLM's own scripts (paths and flags below), never
taken from this code's output. TensorRT-LLM is not installed here, so selecting the backend must
fail with a ConfigError; those tests skip where it is installed."""

from __future__ import annotations

import copy
import importlib.util
import io
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tokencarbon.backends import BatchResult
from tokencarbon.backends.tensorrt_llm import (
    TrtllmEngine,
    batch_result,
    build_command,
    build_engine,
    build_steps,
    check_batch,
    convert_command,
    engine_for_cell,
    engine_limits,
    pretrained_config,
    require_tensorrt_llm,
)
from tokencarbon.cell import run_cell
from tokencarbon.config import check_config
from tokencarbon.plan import platform_slice
from tokencarbon.errors import ConfigError, HardwareMismatchError, InputError, TokencarbonError
from tokencarbon.models import load_architecture

trtllm_absent = pytest.mark.skipif(
    importlib.util.find_spec("tensorrt_llm") is not None, reason="TensorRT-LLM is installed here"
)

BUILD = {"max_batch_size": 64, "max_input_len": 1000, "max_output_len": 1000}


def model(arch: str, checkpoint: str | None = None, dtype: str = "float16") -> dict:
    return {"name": arch, "architecture": arch, "dtype": dtype, "checkpoint": checkpoint, "seed": 0}


# ---------------------------------------------------------------- checkpoint config


def test_llama_2_7b_config_matches_the_published_architecture():
    config = pretrained_config(load_architecture("llama-2-7b"), "float16")
    # meta-llama/Llama-2-7b-hf config.json: hidden_size 4096, 32 layers, 32 heads (no GQA),
    # intermediate 11008, vocab 32000, max_position_embeddings 4096, rms_norm_eps 1e-5,
    # rope_theta 10000, hidden_act silu. TRT-LLM's Llama uses GPT-NeoX-style RoPE.
    assert config == {
        "architecture": "LlamaForCausalLM",
        "dtype": "float16",
        "vocab_size": 32000,
        "hidden_size": 4096,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "intermediate_size": 11008,
        "max_position_embeddings": 4096,
        "hidden_act": "silu",
        "norm_epsilon": 1e-5,
        "position_embedding_type": "rope_gpt_neox",
        "rotary_base": 10000.0,
        "mapping": {"world_size": 1, "tp_size": 1, "pp_size": 1},
        "quantization": {"quant_algo": None},
    }


def test_gpt2_xl_config_matches_the_published_architecture_with_int4_weights():
    config = pretrained_config(load_architecture("gpt2-xl"), "float16", weight_only_int4=True)
    # openai-community/gpt2-xl config.json: n_embd 1600, n_layer 48, n_head 25, n_inner null
    # (= 4 x 1600 = 6400), vocab 50257, n_positions 1024, layer_norm_epsilon 1e-5, gelu_new.
    # convert_checkpoint.py --use_weight_only --weight_only_precision int4 sets quant_algo W4A16.
    assert config == {
        "architecture": "GPTForCausalLM",
        "dtype": "float16",
        "vocab_size": 50257,
        "hidden_size": 1600,
        "num_hidden_layers": 48,
        "num_attention_heads": 25,
        "num_key_value_heads": 25,
        "intermediate_size": 6400,
        "max_position_embeddings": 1024,
        "hidden_act": "gelu_new",
        "norm_epsilon": 1e-5,
        "position_embedding_type": "learned_absolute",
        "bias": True,
        "mapping": {"world_size": 1, "tp_size": 1, "pp_size": 1},
        "quantization": {"quant_algo": "W4A16"},
    }


# ---------------------------------------------------------------- command lines


def test_convert_commands_use_each_familys_script_and_the_int4_flags():
    llama, gpt2 = load_architecture("llama-2-13b"), load_architecture("gpt2")
    # Paths and flags of NVIDIA/TensorRT-LLM examples/models/core/{llama,gpt}/convert_checkpoint.py.
    assert convert_command(llama, "/ckpt/13b", "/out", "float16", "/src/TensorRT-LLM") == [
        sys.executable,
        "/src/TensorRT-LLM/examples/models/core/llama/convert_checkpoint.py",
        "--model_dir",
        "/ckpt/13b",
        "--output_dir",
        "/out",
        "--dtype",
        "float16",
    ]
    assert convert_command(gpt2, "/g", "/o", "bfloat16", "/trt", weight_only_int4=True) == [
        sys.executable,
        "/trt/examples/models/core/gpt/convert_checkpoint.py",
        "--model_dir",
        "/g",
        "--output_dir",
        "/o",
        "--dtype",
        "bfloat16",
        "--use_weight_only",
        "--weight_only_precision",
        "int4",
    ]


def test_build_command_sets_limits_and_plugins():
    cmd = build_command({"model_config": "/w/config.json"}, "/e", BUILD, "float16")
    # max_seq_len = prompt + output = 1000 + 1000 = 2000 (trtllm-build's --max_seq_len counts both)
    assert cmd == [
        "trtllm-build",
        "--model_config",
        "/w/config.json",
        "--output_dir",
        "/e",
        "--max_batch_size",
        "64",
        "--max_input_len",
        "1000",
        "--max_seq_len",
        "2000",
        "--gemm_plugin",
        "float16",
        "--gpt_attention_plugin",
        "float16",
    ]
    with_tokens = build_command(
        {"checkpoint_dir": "/c"}, "/e", BUILD | {"max_num_tokens": 16384}, "bfloat16"
    )
    assert with_tokens[1:3] == ["--checkpoint_dir", "/c"]
    assert with_tokens[-2:] == ["--max_num_tokens", "16384"]


def test_build_steps_for_random_weights_write_a_config_and_build_from_it():
    config, commands = build_steps(
        model("gpt2"),
        {
            "max_batch_size": 8,
            "max_input_len": 500,
            "max_output_len": 500,
            "weight_only_int4": True,
        },
        work_dir="/w",
        engine_dir="/e",
        trtllm_root=None,  # no conversion: the source tree is not needed
    )
    assert config["architecture"] == "GPTForCausalLM"
    assert config["quantization"] == {"quant_algo": "W4A16"}
    assert len(commands) == 1
    # 500 + 500 = 1000 <= GPT-2's 1024 positions
    assert commands[0][:3] == ["trtllm-build", "--model_config", "/w/config.json"]
    assert commands[0][commands[0].index("--max_seq_len") + 1] == "1000"


def test_build_steps_for_a_checkpoint_convert_then_build(tmp_path):
    script = tmp_path / "examples/models/core/llama/convert_checkpoint.py"
    script.parent.mkdir(parents=True)
    script.write_text("")
    config, commands = build_steps(
        model("llama-2-7b", checkpoint="/hf/llama-2-7b"),
        BUILD,
        work_dir="/w",
        engine_dir="/e",
        trtllm_root=str(tmp_path),
    )
    assert config is None
    assert commands[0][1:4] == [str(script), "--model_dir", "/hf/llama-2-7b"]
    assert commands[1][:3] == ["trtllm-build", "--checkpoint_dir", "/w"]


def test_build_steps_reject_what_trtllm_build_would_fail_on(tmp_path):
    gpt2 = model("gpt2")
    with pytest.raises(ConfigError, match="1000 \\+ max_output_len 1000 = 2000 exceeds gpt2's"):
        build_steps(gpt2, BUILD, work_dir="/w", engine_dir="/e", trtllm_root=None)
    small = {"max_batch_size": 4, "max_input_len": 100, "max_output_len": 100}
    with pytest.raises(ConfigError, match="int4 .* float16 or bfloat16"):
        build_steps(
            model("gpt2", dtype="float32"),
            small | {"weight_only_int4": True},
            work_dir="/w",
            engine_dir="/e",
            trtllm_root=None,
        )
    with pytest.raises(
        ConfigError, match="unknown \\['max_beam'\\].*missing \\['max_batch_size'\\]"
    ):
        build_steps(
            gpt2,
            {"max_input_len": 1, "max_output_len": 1, "max_beam": 2},
            work_dir="/w",
            engine_dir="/e",
            trtllm_root=None,
        )
    with pytest.raises(ConfigError, match="max_batch_size=0"):
        build_steps(
            gpt2, small | {"max_batch_size": 0}, work_dir="/w", engine_dir="/e", trtllm_root=None
        )
    ckpt = model("gpt2", checkpoint="/hf/gpt2")
    with pytest.raises(ConfigError, match="TRTLLM_ROOT"):
        build_steps(ckpt, small, work_dir="/w", engine_dir="/e", trtllm_root=None)
    with pytest.raises(ConfigError, match="no examples/models/core/gpt/convert_checkpoint.py"):
        build_steps(ckpt, small, work_dir="/w", engine_dir="/e", trtllm_root=str(tmp_path))


# ---------------------------------------------------------------- backend selection


@trtllm_absent
def test_selecting_the_backend_without_tensorrt_llm_is_a_config_error(tmp_path):
    with pytest.raises(
        ConfigError, match="backend.name: 'tensorrt_llm' needs the tensorrt_llm package"
    ):
        require_tensorrt_llm()
    with pytest.raises(ConfigError, match="backend.name"):
        TrtllmEngine(tmp_path)
    manifest = tmp_path / "manifest.json"
    with pytest.raises(ConfigError, match="backend.name"):
        build_engine(
            model("gpt2"),
            {"max_batch_size": 4, "max_input_len": 100, "max_output_len": 100},
            engine_dir=str(tmp_path / "engine"),
            manifest_path=str(manifest),
            log=io.StringIO(),
        )
    assert not manifest.exists() and not (tmp_path / "engine").exists()


# ---------------------------------------------------------------- engine limits and batch checks


def write_engine_config(path, **build):
    # The layout trtllm-build's Engine.save writes (tensorrt_llm/builder.py, EngineConfig.to_dict).
    config = {
        "version": "0.0.0",
        "pretrained_config": {"architecture": "GPTForCausalLM", "vocab_size": 50257},
        "build_config": {"max_batch_size": 4, "max_input_len": 10, "max_seq_len": 16} | build,
    }
    (path / "config.json").write_text(json.dumps(config))


def test_engine_limits_read_the_built_engines_config(tmp_path):
    write_engine_config(tmp_path, max_num_tokens=8192)
    limits = engine_limits(tmp_path)
    assert limits == {
        "max_batch_size": 4,
        "max_input_len": 10,
        "max_seq_len": 16,
        "vocab_size": 50257,
    }
    with pytest.raises(InputError, match="config.json: missing"):
        engine_limits(tmp_path / "nowhere")
    (tmp_path / "config.json").write_text(json.dumps({"build_config": {}}))
    with pytest.raises(InputError, match="not a trtllm-build engine config"):
        engine_limits(tmp_path)


def test_check_batch_keeps_every_request_inside_the_engine():
    limits = {"max_batch_size": 2, "max_input_len": 10, "max_seq_len": 16, "vocab_size": 100}
    check_batch([[1] * 10, [99]], [6, 15], limits)  # 10 + 6 = 16 and 1 + 15 = 16: both fit
    with pytest.raises(InputError, match="3 requests exceeds the engine's max_batch_size 2"):
        check_batch([[1], [2], [3]], [1, 1, 1], limits)
    with pytest.raises(InputError, match="request 1: 10 prompt \\+ 7 output tokens exceed the engine's max_seq_len 16"):
        check_batch([[1], [1] * 10], [1, 7], limits)  # 10 + 7 = 17 > 16
    with pytest.raises(InputError, match="request 0: 11 prompt tokens exceed the engine's max_input_len 10"):
        check_batch([[1] * 11], [1], limits)  # 11 + 1 = 12 fits max_seq_len 16; the prompt does not fit 10
    with pytest.raises(InputError, match="request 0: token ids must lie in \\[0, 100\\)"):
        check_batch([[100]], [1], limits)
    with pytest.raises(InputError, match="request 0: 1 prompt tokens, 0 output"):
        check_batch([[5]], [0], limits)
    with pytest.raises(InputError, match="one output length per prompt"):
        check_batch([[5]], [1, 2], limits)


# ---------------------------------------------------------------- a cell's engine

# The real spec row: device_name_pattern "^NVIDIA H100 80GB HBM3$" (resources/platforms.csv).
H100 = platform_slice(
    {"platforms": {"h100-sxm-80gb": {}}, "power": {"interval_s": None, "idle_s": 1.0}}, "h100-sxm-80gb"
)
GPT2 = model("gpt2")
TRT_RUN = {
    "backend": "tensorrt_llm",
    "cuda_graphs": True,
    "compile_decode": False,
    "warmup_batches": 1,
}


def write_manifest(tmp_path: Path, **changes) -> Path:
    """An engine folder (max_batch_size 4, max_input_len 10, max_seq_len 16) and the manifest
    build_engine writes for it, with `changes` applied (None deletes a key)."""
    engine = tmp_path / "engine"
    engine.mkdir(exist_ok=True)
    write_engine_config(engine)
    manifest = {
        "backend": "tensorrt_llm",
        "model": "gpt2",
        "engine_dir": str(engine),
        "build": {"max_batch_size": 4, "max_input_len": 10, "max_output_len": 6},
        "dtype": "float16",
        "weights": "random (TensorRT-LLM xavier_init)",
        "tensorrt_llm_version": "0.12.0",
        "device_name": "NVIDIA H100 80GB HBM3",  # torch.cuda.get_device_name on an H100 SXM
        "commands": [["trtllm-build"]],
    }
    for key, value in changes.items():
        if value is None:
            del manifest[key]
        else:
            manifest[key] = value
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(manifest))
    return path


def fits(manifest: Path, **cell) -> dict:
    args = {"batch_size": 4, "longest_prompt": 10, "longest_output": 6} | cell
    return engine_for_cell(manifest, model=GPT2, platform=H100, **args)


def test_engine_for_cell_takes_the_limits_from_the_built_engine(tmp_path):
    manifest = write_manifest(tmp_path)
    # Every limit reached exactly: batch 4 = max_batch_size, prompt 10 = max_input_len and
    # output 6 = max_seq_len 16 - max_input_len 10 (trtllm-build's --max_seq_len = input + output).
    assert fits(manifest) == {
        "manifest": str(manifest),
        "engine_dir": str(tmp_path / "engine"),
        "max_batch_size": 4,
        "max_input_len": 10,
        "max_seq_len": 16,
        "max_output_len": 6,
        "vocab_size": 50257,
        "tensorrt_llm_version": "0.12.0",
        "built_on": "NVIDIA H100 80GB HBM3",
    }


@pytest.mark.parametrize(
    "changes, error, message",
    [
        ({"model": "gpt2-xl"}, InputError, "model 'gpt2-xl', but this cell runs model 'gpt2'"),
        ({"dtype": "bfloat16"}, InputError, "dtype 'bfloat16', but this cell runs dtype 'float16'"),
        (
            {"backend": "torch"},
            InputError,
            "backend 'torch', but this cell runs backend 'tensorrt_llm'",
        ),
        ({"device_name": None}, InputError, "no ['device_name'] in the engine manifest"),
        (
            {"device_name": "NVIDIA A100-SXM4-80GB"},
            HardwareMismatchError,
            "built on 'NVIDIA A100-SXM4-80GB', not on a GPU of platform 'h100-sxm-80gb'",
        ),
        # An H100 PCIe (80GB HBM2e) is not the SXM card the platform's pattern describes.
        ({"device_name": "NVIDIA H100 PCIe"}, HardwareMismatchError, "'^NVIDIA H100 80GB HBM3$'"),
    ],
)
def test_an_engine_of_another_model_dtype_or_gpu_is_refused_naming_the_manifest(
    tmp_path, changes, error, message
):
    manifest = write_manifest(tmp_path, **changes)
    with pytest.raises(error) as err:
        fits(manifest)
    assert message in str(err.value) and str(manifest) in str(err.value)


def test_an_unreadable_manifest_is_an_input_error(tmp_path):
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(InputError, match="manifest.json: unreadable engine manifest"):
        fits(tmp_path / "manifest.json")


@pytest.mark.parametrize(
    "cell, message, key",
    [
        (
            {"batch_size": 5},
            "batch size 5 exceeds the engine's max_batch_size 4",
            "sweep.max_batch",
        ),
        (
            {"longest_prompt": 11},
            "longest prompt (11 tokens) exceeds the engine's max_input_len 10",
            "families.<family>.max_tokens",
        ),
        (  # 16 - 10 = 6 output tokens at most
            {"longest_output": 7},
            "longest output (7 tokens) exceeds the engine's max_output_len 6",
            "families.<family>.max_tokens",
        ),
    ],
)
def test_a_cell_larger_than_its_engine_names_the_config_key_to_raise(tmp_path, cell, message, key):
    manifest = write_manifest(tmp_path)
    with pytest.raises(ConfigError) as err:
        fits(manifest, **cell)
    assert message in str(err.value) and key in str(err.value)
    assert str(tmp_path / "engine" / "config.json") in str(err.value)


def workload(prompts: list[list[int]], outputs: list[int]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "request_id": [f"r{i}" for i in range(len(prompts))],
            "prompt": ["x"] * len(prompts),
            "prompt_tokens": [len(p) for p in prompts],
            "output_tokens": outputs,
            "prompt_token_ids": prompts,
        }
    )


def cell(tmp_path: Path, manifest: Path, work: pd.DataFrame, **changes) -> None:
    out = tmp_path / "cell"
    args = {"model": GPT2, "platform": H100, "run": TRT_RUN, "batch_size": 2} | changes
    run_cell(
        **args,
        workload=work,
        engine_manifest=manifest,
        out_batches=out / "batches.parquet",
        out_power=out / "power.parquet",
        out_meta=out / "meta.json",
    )


# Longest prompt 10 tokens (the second), longest output 6 (the first): the engine's limits exactly.
FITS = workload([[464, 2068, 7586], [1] * 10, [15496, 11]], [6, 2, 1])


@trtllm_absent
def test_a_cell_on_tensorrt_llm_checks_its_engine_then_needs_the_package(tmp_path):
    manifest = write_manifest(tmp_path)
    with pytest.raises(
        ConfigError, match="backend.name: 'tensorrt_llm' needs the tensorrt_llm package"
    ):
        cell(tmp_path, manifest, FITS)
    assert not (tmp_path / "cell").exists()  # no output, not even its folder


@pytest.mark.parametrize(
    "work, changes, message",
    [
        # 11 prompt tokens > max_input_len 10; 7 output tokens > 16 - 10 = 6
        (workload([[1] * 11], [1]), {}, "longest prompt (11 tokens)"),
        (workload([[1], [2]], [7, 1]), {}, "longest output (7 tokens)"),
        (FITS, {"batch_size": 8}, "batch size 8 exceeds the engine's max_batch_size 4"),
        (
            FITS,
            {"model": model("gpt2", dtype="float32")},
            "dtype 'float16', but this cell runs dtype 'float32'",
        ),
        (
            FITS,
            {"platform": platform_slice({"platforms": {"cpu": {}}, "power": {"interval_s": None, "idle_s": 1.0}}, "cpu")},
            "'tensorrt_llm' runs on GPU platforms only",
        ),
    ],
)
def test_a_cell_on_tensorrt_llm_refuses_an_engine_that_does_not_fit_before_any_output(
    tmp_path, work, changes, message
):
    with pytest.raises((ConfigError, InputError)) as err:
        cell(tmp_path, write_manifest(tmp_path), work, **changes)
    assert message in str(err.value)
    assert not (tmp_path / "cell").exists()


# ---------------------------------------------------------------- sweep.batch_sizes: auto


def validated_config(**changes) -> dict:
    from snakemake.utils import validate

    repo = Path(__file__).resolve().parents[1]
    config = yaml.safe_load((repo / "config/config.yaml").read_text())
    # the default's quantized model (torchao) is refused with tensorrt_llm before the sweep is
    # checked (tests/test_quantization.py): these tests take the unquantized ones
    config["models"] = {n: m for n, m in config["models"].items() if "quantization" not in m}
    config |= changes
    validate(config, schema=str(repo / "workflow/schemas/config.schema.yaml"))
    return config


def test_auto_batch_sizes_with_tensorrt_llm_ask_for_a_list():
    # TensorRT-LLM runs on GPUs only (config.py refuses a CPU measured here first), so the study
    # is on an H100; the default's continuous cells are off (no TensorRT-LLM serving engine).
    config = validated_config(
        backend={"name": "tensorrt_llm"},
        platforms={"h100-sxm-80gb": {}},
        sweep={"batch_sizes": "auto", "max_batch": 32, "max_num_seqs": []},
    )
    # The substance: the key, why 'auto' cannot be (the OOM probe runs the torch engine, not the
    # configured backend), and what is valid (listed sizes up to max_batch, which every engine is
    # built with).
    with pytest.raises(ConfigError) as refused:
        check_config(config)
    message = str(refused.value)
    assert message.startswith("config key sweep.batch_sizes: 'auto'")
    assert "OOM probe" in message and "torch backend only" in message
    assert "'tensorrt_llm'" in message and "list the sizes" in message
    assert "at most sweep.max_batch 32" in message
    listed = copy.deepcopy(config)
    listed["sweep"]["batch_sizes"] = [1, 2, 4]
    check_config(listed)
    # Cells copied from another machine need no probe: 'auto' is fine when nothing is measured here.
    imported = copy.deepcopy(config)
    imported["platforms"]["h100-sxm-80gb"]["import_only"] = True
    check_config(imported)
    check_config(validated_config())  # torch keeps 'auto'


def test_tensorrt_llm_on_a_cpu_measured_here_is_refused_naming_the_platform():
    config = validated_config(backend={"name": "tensorrt_llm"})  # the default: platform cpu
    with pytest.raises(ConfigError, match=r"backend\.name: 'tensorrt_llm' runs on GPUs only.*'cpu'.*'torch' or 'transformers'"):
        check_config(config)


# ---------------------------------------------------------------- responses -> BatchResult


# Stand-ins shaped like tensorrt_llm.bindings.executor.Response and Result as the Executor
# examples read them (examples/bindings/executor/example_advanced.py): response.request_id,
# response.has_error(), response.error_msg, response.result.output_token_ids (one list per beam;
# in streaming mode only the tokens new since the last response), response.result.is_final.
@dataclass
class Result:
    output_token_ids: list[list[int]]
    is_final: bool = False


@dataclass
class Response:
    request_id: int
    result: Result | None = None
    error_msg: str = ""

    def has_error(self) -> bool:
        return bool(self.error_msg)


@dataclass
class Stream:
    """Responses as await_responses() returns them, with the clocks read as each call returned."""

    received: list = field(default_factory=list)

    def add(self, t_ns: int, *responses: Response) -> Stream:
        self.received.append((t_ns, 1_700_000_000_000_000_000 + t_ns, list(responses)))
        return self


def tok(request_id: int, *ids: int, final: bool = False) -> Response:
    return Response(request_id, Result([list(ids)], final))


PROMPTS = [[1, 2, 3], [4, 5, 6, 7, 8]]


def test_streamed_tokens_map_to_counts_and_timing_points():
    # Executor ids 7 and 9 for requests 0 and 1; request 0 wants 2 tokens, request 1 wants 3.
    stream = (
        Stream()
        .add(100, tok(7, 11), tok(9, 21))  # both first tokens arrive in one call at t=100
        .add(150, tok(7, 12, final=True), tok(9, 22))
        .add(230, tok(9, 23, final=True))
    )
    r = batch_result([7, 9], PROMPTS, [2, 3], 40, 1_700_000_000_000_000_040, stream.received)
    assert r == BatchResult(
        n_requests=2,
        input_tokens=8,  # 3 + 5 real prompt tokens
        output_tokens=5,  # 2 + 3, each request's own length
        padded_input_len=5,  # the longer prompt
        max_output_tokens=3,
        start_ns=40,
        first_token_ns=100,
        end_ns=230,
        start_wall_ns=1_700_000_000_000_000_040,
        first_token_wall_ns=1_700_000_000_000_000_100,
        end_wall_ns=1_700_000_000_000_000_230,
        token_ids=((11, 12), (21, 22, 23)),
    )


def test_first_token_waits_for_the_last_request_to_get_its_first():
    # Request 1's prompt is prefilled an iteration later (max_num_tokens splits the context phase):
    # request 0 already has two tokens when request 1 gets its first at t=160.
    stream = (
        Stream()
        .add(100, tok(0, 11))
        .add(130, tok(0, 12))
        .add(160, tok(0, 13, final=True), tok(1, 21))
        .add(200, tok(1, 22, final=True))
    )
    r = batch_result([0, 1], PROMPTS, [3, 2], 50, 0, stream.received)
    assert (r.first_token_ns, r.end_ns) == (160, 200)
    assert r.token_ids == ((11, 12, 13), (21, 22))


def test_responses_with_several_tokens_and_empty_ones_are_counted_by_their_tokens():
    # An empty response before the first token must not stand for the first token.
    stream = Stream().add(90, tok(3)).add(120, tok(3, 1, 2)).add(170, tok(3, 3, 4, final=True))
    r = batch_result([3], [[5, 6]], [4], 0, 0, stream.received)
    assert (r.first_token_ns, r.end_ns, r.output_tokens) == (120, 170, 4)
    assert r.token_ids == ((1, 2, 3, 4),)


def test_broken_streams_are_errors_naming_the_request():
    ok = Stream().add(100, tok(0, 1, final=True))
    with pytest.raises(TokencarbonError, match="request 1: 0 tokens, never finished"):
        batch_result([0, 1], PROMPTS, [1, 1], 0, 0, ok.received)
    short = Stream().add(100, tok(0, 1, final=True))
    with pytest.raises(TokencarbonError, match="request 0: 1 tokens, finished; expected .* 2"):
        batch_result([0], [[1]], [2], 0, 0, short.received)
    failed = Stream().add(100, Response(0, error_msg="out of KV cache blocks"))
    with pytest.raises(TokencarbonError, match="request 0 failed: out of KV cache blocks"):
        batch_result([0], [[1]], [1], 0, 0, failed.received)
    stranger = Stream().add(100, tok(42, 1, final=True))
    with pytest.raises(TokencarbonError, match="request id 42, not one of this batch's \\[0\\]"):
        batch_result([0], [[1]], [1], 0, 0, stranger.received)
    beams = Stream().add(100, Response(0, Result([[1], [2]], True)))
    with pytest.raises(TokencarbonError, match="2 beams"):
        batch_result([0], [[1]], [1], 0, 0, beams.received)


@pytest.mark.parametrize("name", ["llama-3.1-8b", "qwen2.5-7b", "mistral-7b"])
def test_architectures_the_runner_would_misbuild_are_refused(name):
    # Each differs from plain Llama in a way TensorRT-LLM's LLaMAConfig defaults would drop:
    # llama3 RoPE scaling, q/k/v biases, a 4096-token sliding window.
    arch = load_architecture(name)
    with pytest.raises(ConfigError, match="maps only"):
        pretrained_config(arch, "float16")
    with pytest.raises(ConfigError, match="maps only"):
        convert_command(arch, "/ckpt", "/out", "float16", "/trtllm")


@pytest.mark.parametrize("name", ["llama-2-7b", "gpt2"])
def test_study_architectures_still_map(name):
    assert pretrained_config(load_architecture(name), "float16")["num_hidden_layers"] > 0

"""TensorRT-LLM backend: engines built as the study built them (checkpoint conversion or a config for
random weights, then trtllm-build), and a runner serving one batch at a time through the Executor.

Everything up to the library boundary is plain data and pure functions (the checkpoint config, the
command lines, the engine limits, the cell's checks of its engine, the mapping from streamed
responses to a BatchResult), tested without TensorRT-LLM; the library calls are the thin layer in
build_engine and TrtllmEngine.
docs/tensorrt_llm.md says what has run on hardware (nothing yet) and how to run it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Sequence, TextIO

from tokencarbon.backends import BatchResult
from tokencarbon.backends.checks import check_prompts
from tokencarbon.errors import ConfigError, HardwareMismatchError, InputError, TokencarbonError
from tokencarbon.files import write_json
from tokencarbon.hardware import detect
from tokencarbon.models import Architecture, load_architecture

# TRT-LLM checkpoint `architecture` per family: keys of tensorrt_llm.models.MODEL_MAP, which picks
# the config class (LLaMAConfig, GPTConfig) whose defaults fill every key we leave out.
_ARCHITECTURES = {"llama": "LlamaForCausalLM", "gpt2": "GPTForCausalLM"}
# Converters live in the TensorRT-LLM source tree (not in the pip wheel), relative to its root.
CONVERTERS = {
    "llama": "examples/models/core/llama/convert_checkpoint.py",
    "gpt2": "examples/models/core/gpt/convert_checkpoint.py",
}
TRTLLM_ROOT_ENV = "TRTLLM_ROOT"
DTYPES = ("float16", "bfloat16", "float32")
_BUILD_REQUIRED = ("max_batch_size", "max_input_len", "max_output_len")
_BUILD_OPTIONAL = ("max_num_tokens", "weight_only_int4")
# A token id no vocabulary reaches: as end_id it never matches, so EOS never ends a request
# (gptManagerBenchmark's --eos_id -1 does the same) and each request runs to its own max_tokens.
NEVER_END_ID = -1


def check_supported(arch: Architecture) -> None:
    """ConfigError unless this runner maps the architecture faithfully: model types llama (no RoPE
    scaling) and gpt2. A Qwen2 (q/k/v biases), Mistral (sliding window) or Llama-3.1 (llama3 RoPE
    scaling) model built as plain Llama would measure another network."""
    model_type = getattr(arch, "model_type", arch.family)
    unsupported = (
        model_type not in _ARCHITECTURES
        or getattr(arch, "rope_scaling", None) is not None
        or getattr(arch, "qkv_bias", False) and model_type != "gpt2"
        or getattr(arch, "sliding_window", None) is not None
    )
    if unsupported:
        raise ConfigError(
            f"architecture {arch.name!r} (model_type {model_type!r}): the TensorRT-LLM runner maps "
            f"only {sorted(_ARCHITECTURES)} without RoPE scaling, q/k/v biases (llama) or sliding "
            "windows; measure it with backend.name torch or transformers"
        )


def require_tensorrt_llm(build: bool = False) -> None:
    """ConfigError unless the tensorrt_llm package (and, to build, the trtllm-build command) exist."""
    missing = []
    if importlib.util.find_spec("tensorrt_llm") is None:
        missing.append("the tensorrt_llm package")
    if build and shutil.which("trtllm-build") is None:
        missing.append("the trtllm-build command")
    if missing:
        raise ConfigError(
            f"config key backend.name: 'tensorrt_llm' needs {' and '.join(missing)}, not found "
            "here. Use backend.name: torch, or run on a CUDA machine with TensorRT-LLM installed "
            "(docs/tensorrt_llm.md)"
        )


# ---------------------------------------------------------------- engine build


def _check_build(arch: Architecture, build: dict[str, Any], dtype: str) -> None:
    unknown = set(build) - set(_BUILD_REQUIRED) - set(_BUILD_OPTIONAL)
    missing = [k for k in _BUILD_REQUIRED if k not in build]
    if unknown or missing:
        raise ConfigError(
            f"TensorRT-LLM build parameters: unknown {sorted(unknown)}, missing {missing}; "
            f"required {list(_BUILD_REQUIRED)}, optional {list(_BUILD_OPTIONAL)}"
        )
    for key in _BUILD_REQUIRED + ("max_num_tokens",):
        value = build.get(key, 1)
        if type(value) is not int or value < 1:
            raise ConfigError(
                f"TensorRT-LLM build parameter {key}={value!r}; must be an integer >= 1"
            )
    if type(build.get("weight_only_int4", False)) is not bool:
        raise ConfigError(
            f"TensorRT-LLM build parameter weight_only_int4={build['weight_only_int4']!r}; "
            "must be true or false"
        )
    if dtype not in DTYPES:
        raise ConfigError(f"dtype {dtype!r}; TensorRT-LLM engines here take {list(DTYPES)}")
    if build.get("weight_only_int4") and dtype == "float32":
        raise ConfigError(
            "weight_only_int4 with dtype float32: int4 weight-only GEMMs take float16 or bfloat16 "
            "activations; use one of those"
        )
    seq_len = build["max_input_len"] + build["max_output_len"]
    if seq_len > arch.max_positions:
        raise ConfigError(
            f"TensorRT-LLM build: max_input_len {build['max_input_len']} + max_output_len "
            f"{build['max_output_len']} = {seq_len} exceeds {arch.name}'s max_positions "
            f"{arch.max_positions}; lower the family's max_tokens"
        )


def pretrained_config(
    arch: Architecture, dtype: str, weight_only_int4: bool = False
) -> dict[str, Any]:
    """A TRT-LLM checkpoint config.json: `trtllm-build --model_config` builds it with random weights
    (TRT-LLM fills every weight it is not given, Parameter.xavier_init). Keys follow
    tensorrt_llm.models.PretrainedConfig and examples/generate_checkpoint_config.py."""
    check_supported(arch)
    config = {
        "architecture": _ARCHITECTURES[arch.family],
        "dtype": dtype,
        "vocab_size": arch.vocab_size,
        "hidden_size": arch.hidden_size,
        "num_hidden_layers": arch.num_layers,
        "num_attention_heads": arch.num_heads,
        "num_key_value_heads": arch.num_kv_heads,
        "intermediate_size": arch.intermediate_size,
        "max_position_embeddings": arch.max_positions,
        "hidden_act": arch.activation,  # "silu" and "gelu_new", as convert_checkpoint.py writes them
        "norm_epsilon": arch.norm_eps,
        "mapping": {"world_size": 1, "tp_size": 1, "pp_size": 1},
        # W4A16 is what convert_checkpoint.py --use_weight_only --weight_only_precision int4 sets.
        "quantization": {"quant_algo": "W4A16" if weight_only_int4 else None},
    }
    if arch.family == "llama":
        config |= {"position_embedding_type": "rope_gpt_neox", "rotary_base": arch.rope_theta}
    else:
        # generate_checkpoint_config.py writes bias=False unless told; GPT-2 has biases everywhere.
        config |= {"position_embedding_type": "learned_absolute", "bias": True}
    return config


def convert_command(
    arch: Architecture,
    checkpoint: str,
    out_dir: str,
    dtype: str,
    trtllm_root: str,
    weight_only_int4: bool = False,
) -> list[str]:
    """The family's convert_checkpoint.py: a Hugging Face directory -> a TRT-LLM checkpoint."""
    check_supported(arch)
    cmd = [
        sys.executable,
        str(Path(trtllm_root) / CONVERTERS[arch.family]),
        "--model_dir",
        checkpoint,
        "--output_dir",
        out_dir,
        "--dtype",
        dtype,
    ]
    if weight_only_int4:
        cmd += ["--use_weight_only", "--weight_only_precision", "int4"]
    return cmd


def build_command(
    source: dict[str, str], engine_dir: str, build: dict[str, Any], dtype: str
) -> list[str]:
    """trtllm-build from a converted checkpoint ({'checkpoint_dir': ...}) or a config
    ({'model_config': ...}). Paged KV cache, packed (unpadded) input and context FMHA, which the
    Executor's in-flight batching needs, are trtllm-build's defaults; the int4 weight-only GEMM
    plugin is switched on by the builder from the checkpoint's quant_algo."""
    ((flag, path),) = source.items()
    cmd = [
        "trtllm-build",
        f"--{flag}",
        path,
        "--output_dir",
        engine_dir,
        "--max_batch_size",
        str(build["max_batch_size"]),
        "--max_input_len",
        str(build["max_input_len"]),
        "--max_seq_len",
        str(build["max_input_len"] + build["max_output_len"]),
        "--gemm_plugin",
        dtype,
        "--gpt_attention_plugin",
        dtype,
    ]
    if "max_num_tokens" in build:
        cmd += ["--max_num_tokens", str(build["max_num_tokens"])]
    return cmd


def build_steps(
    model: dict[str, Any],
    build: dict[str, Any],
    *,
    work_dir: str,
    engine_dir: str,
    trtllm_root: str | None,
) -> tuple[dict[str, Any] | None, list[list[str]]]:
    """What build_engine does, as data: the checkpoint config to write to work_dir/config.json
    (None when a real checkpoint is converted into work_dir instead) and the commands to run."""
    arch = load_architecture(model["architecture"])
    dtype = model["dtype"]
    _check_build(arch, build, dtype)
    int4 = bool(build.get("weight_only_int4", False))
    if not model["checkpoint"]:
        source = {"model_config": str(Path(work_dir) / "config.json")}
        return pretrained_config(arch, dtype, int4), [
            build_command(source, engine_dir, build, dtype)
        ]
    if trtllm_root is None:
        raise ConfigError(
            f"model {model['name']!r}: converting checkpoint {model['checkpoint']} needs the "
            f"TensorRT-LLM source tree (its examples/ are not in the pip wheel): set "
            f"{TRTLLM_ROOT_ENV} to a checkout of the tag matching the installed tensorrt_llm"
        )
    script = Path(trtllm_root) / CONVERTERS[arch.family]
    if not script.is_file():
        raise ConfigError(
            f"{TRTLLM_ROOT_ENV}={trtllm_root}: no {CONVERTERS[arch.family]} there; point it at a "
            "TensorRT-LLM checkout whose examples/models/core/ holds the converters"
        )
    return None, [
        convert_command(arch, model["checkpoint"], work_dir, dtype, trtllm_root, int4),
        build_command({"checkpoint_dir": work_dir}, engine_dir, build, dtype),
    ]


def build_engine(
    model: dict[str, Any],
    build: dict[str, Any],
    *,
    engine_dir: str,
    manifest_path: str,
    log: TextIO,
) -> None:
    """Run build_steps; the engine appears under engine_dir only once trtllm-build has finished,
    and the manifest (what was built, on which GPU, with which TensorRT-LLM) is written last."""
    require_tensorrt_llm(build=True)
    import tensorrt_llm  # present: require_tensorrt_llm checked

    engine = Path(engine_dir)
    work = engine.with_name("checkpoint")
    staging = engine.with_name(f".{engine.name}.tmp")
    root = os.environ.get(TRTLLM_ROOT_ENV)
    config, commands = build_steps(
        model, build, work_dir=str(work), engine_dir=str(staging), trtllm_root=root
    )
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(staging, ignore_errors=True)
    work.mkdir(parents=True)
    if config is not None:
        write_json(work / "config.json", config)
    env = dict(os.environ)
    if root:  # the GPT converter imports `examples._deprecation` from the source root
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    for cmd in commands:
        print("$ " + " ".join(cmd), file=log, flush=True)
        subprocess.run(cmd, check=True, stdout=log, stderr=log, env=env)
    shutil.rmtree(engine, ignore_errors=True)
    staging.rename(engine)
    write_json(
        manifest_path,
        {
            "backend": "tensorrt_llm",
            "model": model["name"],
            "engine_dir": engine_dir,
            "build": build,
            "dtype": model["dtype"],
            "weights": "checkpoint" if model["checkpoint"] else "random (TensorRT-LLM xavier_init)",
            "tensorrt_llm_version": tensorrt_llm.__version__,
            # trtllm-build tunes the engine for the GPU it runs on; cells check it is their platform's.
            "device_name": detect("gpu")["device_name"],
            "commands": commands,
        },
    )


# ---------------------------------------------------------------- runner: pure part


def engine_limits(engine_dir: str | Path) -> dict[str, int]:
    """max_batch_size, max_input_len, max_seq_len and vocab_size from the config.json trtllm-build
    writes next to rank0.engine ({"version", "pretrained_config", "build_config"})."""
    path = Path(engine_dir) / "config.json"
    if not path.is_file():
        raise InputError(f"{path}: missing; expected an engine directory written by trtllm-build")
    try:
        config = json.loads(path.read_text())
        build, pretrained = config["build_config"], config["pretrained_config"]
        return {
            "max_batch_size": int(build["max_batch_size"]),
            "max_input_len": int(build["max_input_len"]),
            "max_seq_len": int(build["max_seq_len"]),
            "vocab_size": int(pretrained["vocab_size"]),
        }
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise InputError(
            f"{path}: not a trtllm-build engine config ({e!r}); expected build_config.max_batch_size, "
            "max_input_len, max_seq_len and pretrained_config.vocab_size"
        ) from e


_MANIFEST_KEYS = ("backend", "model", "dtype", "device_name", "engine_dir", "tensorrt_llm_version")


def engine_for_cell(
    manifest_path: str | Path,
    *,
    model: dict[str, Any],
    platform: dict[str, Any],
    batch_size: int,
    longest_prompt: int,
    longest_output: int,
) -> dict[str, Any]:
    """The engine a cell runs on, from the manifest build_engine wrote: checked to be this model's
    engine in this dtype, built on this platform's GPU, and large enough for every batch of the
    cell. Returns what meta.json records of it: manifest, engine_dir, the engine's limits
    (max_output_len = max_seq_len - max_input_len, as build_command sets them), the TensorRT-LLM
    version and the GPU it was built on."""
    path = Path(manifest_path)
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(
            f"{path}: unreadable engine manifest ({e}); rebuild it with rule build_trtllm_engine"
        ) from e
    missing = [k for k in _MANIFEST_KEYS if k not in manifest]
    if missing:
        raise InputError(
            f"{path}: no {missing} in the engine manifest; expected the keys {list(_MANIFEST_KEYS)} "
            "that rule build_trtllm_engine writes; rebuild the engine"
        )
    expected = {"backend": "tensorrt_llm", "model": model["name"], "dtype": model["dtype"]}
    for key, value in expected.items():
        if manifest[key] != value:
            raise InputError(
                f"{path}: {key} {manifest[key]!r}, but this cell runs {key} {value!r}; rebuild the "
                f"engine for model {model['name']!r} (rule build_trtllm_engine)"
            )
    built_on = manifest["device_name"]
    if built_on is None or not re.search(platform["device_name_pattern"], built_on):
        raise HardwareMismatchError(
            f"{path}: the engine was built on {built_on!r}, not on a GPU of platform "
            f"{platform['name']!r} (device name matching {platform['device_name_pattern']!r}); "
            "a TensorRT engine is built for one GPU: rebuild it on this platform's machine"
        )
    engine_dir = manifest["engine_dir"]
    limits = engine_limits(engine_dir)
    limits["max_output_len"] = limits["max_seq_len"] - limits["max_input_len"]
    where = f"{Path(engine_dir) / 'config.json'}"
    if batch_size > limits["max_batch_size"]:
        raise ConfigError(
            f"batch size {batch_size} exceeds the engine's max_batch_size "
            f"{limits['max_batch_size']} ({where}); engines are built with max_batch_size = config "
            f"key sweep.max_batch: raise sweep.max_batch to at least {batch_size} (the engine is "
            f"rebuilt) or drop {batch_size} from sweep.batch_sizes"
        )
    for what, longest, limit in [
        ("prompt", longest_prompt, "max_input_len"),
        ("output", longest_output, "max_output_len"),
    ]:
        if longest > limits[limit]:
            raise ConfigError(
                f"the workload's longest {what} ({longest} tokens) exceeds the engine's {limit} "
                f"{limits[limit]} ({where}); engines are built with max_input_len = max_output_len "
                f"= config key families.<family>.max_tokens of model {model['name']!r}'s family: "
                f"raise it to at least {longest} (the engine is rebuilt)"
            )
    return {
        "manifest": str(path),
        "engine_dir": engine_dir,
        **limits,
        "tensorrt_llm_version": manifest["tensorrt_llm_version"],
        "built_on": built_on,
    }


def check_batch(
    prompts: Sequence[Sequence[int]], output_lengths: Sequence[int], limits: dict[str, int]
) -> None:
    """InputError unless the batch fits the engine in one go: a request the engine cannot take
    would be queued or rejected by the Executor, and the batch would no longer be one batch.

    The request checks every engine runs (backends.checks.check_prompts) against the engine's
    max_seq_len and vocab_size (engine_limits), then the engine's own: at most max_batch_size
    requests, each prompt at most max_input_len tokens."""
    check_prompts(
        prompts,
        output_lengths,
        max_tokens=limits["max_seq_len"],
        limit_source=f"the engine's max_seq_len {limits['max_seq_len']}",
        vocab_size=limits["vocab_size"],
    )
    if len(prompts) > limits["max_batch_size"]:
        raise InputError(
            f"batch of {len(prompts)} requests exceeds the engine's max_batch_size "
            f"{limits['max_batch_size']}; rebuild the engine with a larger one"
        )
    for i, prompt in enumerate(prompts):
        if len(prompt) > limits["max_input_len"]:
            raise InputError(
                f"request {i}: {len(prompt)} prompt tokens exceed the engine's max_input_len "
                f"{limits['max_input_len']}; rebuild the engine with a larger one"
            )


def batch_result(
    request_ids: Sequence[int],
    prompts: Sequence[Sequence[int]],
    output_lengths: Sequence[int],
    start_ns: int,
    start_wall_ns: int,
    received: Iterable[tuple[int, int, Sequence[Any]]],
) -> BatchResult:
    """The BatchResult of one batch from the streamed Executor responses.

    request_ids[i] is the Executor's id of request i. `received` holds, per await_responses() call,
    (time.monotonic_ns(), time.time_ns(), responses) taken as the call returned. A response (the
    binding's Response) has request_id, has_error(), error_msg and result, whose output_token_ids
    holds per beam the tokens new since the last response (streaming) and is_final marks the last.
    first_token is when the last request to get its first token got it; end is when the last
    request finished; token counts are the requests' own, with no padding in either direction.
    """
    index = {rid: i for i, rid in enumerate(request_ids)}
    n = len(request_ids)
    tokens: list[list[int]] = [[] for _ in range(n)]
    first: list[tuple[int, int] | None] = [None] * n
    final: list[tuple[int, int] | None] = [None] * n
    for t_ns, t_wall_ns, responses in received:
        for response in responses:
            if response.request_id not in index:
                raise TokencarbonError(
                    f"TensorRT-LLM response for request id {response.request_id}, not one of this "
                    f"batch's {list(request_ids)}"
                )
            i = index[response.request_id]
            if response.has_error():
                raise TokencarbonError(f"TensorRT-LLM request {i} failed: {response.error_msg}")
            beams = response.result.output_token_ids
            if len(beams) != 1:
                raise TokencarbonError(
                    f"TensorRT-LLM request {i}: {len(beams)} beams in a response; greedy decoding "
                    "returns exactly one"
                )
            if beams[0] and first[i] is None:
                first[i] = (t_ns, t_wall_ns)
            tokens[i].extend(beams[0])
            if response.result.is_final:
                final[i] = (t_ns, t_wall_ns)
    for i, want in enumerate(output_lengths):
        if final[i] is None or len(tokens[i]) != want:
            raise TokencarbonError(
                f"TensorRT-LLM request {i}: {len(tokens[i])} tokens, "
                f"{'finished' if final[i] else 'never finished'}; expected exactly its output "
                f"length {want} (end_id {NEVER_END_ID} so EOS never stops it early)"
            )
    first_token_ns, first_token_wall_ns = max(first)  # type: ignore[type-var]  (all set: checked)
    end_ns, end_wall_ns = max(final)  # type: ignore[type-var]
    return BatchResult(
        n_requests=n,
        input_tokens=sum(len(p) for p in prompts),
        output_tokens=sum(output_lengths),
        # Packed input: nothing is padded; the field keeps its meaning of the batch's longest prompt.
        padded_input_len=max(len(p) for p in prompts),
        max_output_tokens=max(output_lengths),
        start_ns=start_ns,
        first_token_ns=first_token_ns,
        end_ns=end_ns,
        start_wall_ns=start_wall_ns,
        first_token_wall_ns=first_token_wall_ns,
        end_wall_ns=end_wall_ns,
        token_ids=tuple(tuple(t) for t in tokens),
    )


# ---------------------------------------------------------------- runner: library calls


class TrtllmEngine:
    """Serves static batches on a trtllm-build engine through TensorRT-LLM's Executor (the C++
    runtime under ModelRunnerCpp and the LLM API): every request of a batch is enqueued at once
    with its own max_tokens, greedy, EOS ignored, streamed so that each request's first token is
    timed; the next batch starts when every request of this one has finished."""

    def __init__(
        self, engine_dir: str | Path, kv_cache_free_gpu_memory_fraction: float | None = None
    ):
        """kv_cache_free_gpu_memory_fraction: share of the GPU memory free after loading the
        engine that the paged KV cache takes (None: TensorRT-LLM's default, 0.9)."""
        require_tensorrt_llm()
        self.limits = engine_limits(engine_dir)
        import tensorrt_llm.bindings.executor as trtllm

        self._trtllm = trtllm
        config = trtllm.ExecutorConfig(
            max_beam_width=1,
            kv_cache_config=trtllm.KvCacheConfig(
                free_gpu_memory_fraction=kv_cache_free_gpu_memory_fraction
            ),
        )
        self.executor = trtllm.Executor(Path(engine_dir), trtllm.ModelType.DECODER_ONLY, config)
        self._greedy = trtllm.SamplingConfig(beam_width=1, top_k=1)
        self._peak_gpu_bytes = 0

    def run_batch(self, prompts: list[list[int]], output_lengths: list[int]) -> BatchResult:
        check_batch(prompts, output_lengths, self.limits)
        requests = [
            # Positional: the second parameter is max_new_tokens up to 0.12, max_tokens after.
            self._trtllm.Request(
                list(prompt),
                n_out,
                streaming=True,
                end_id=NEVER_END_ID,
                sampling_config=self._greedy,
            )
            for prompt, n_out in zip(prompts, output_lengths)
        ]
        start_ns, start_wall_ns = time.monotonic_ns(), time.time_ns()
        request_ids = self.executor.enqueue_requests(requests)
        received, pending = [], set(request_ids)
        while pending:
            responses = self.executor.await_responses()
            received.append((time.monotonic_ns(), time.time_ns(), responses))
            pending -= {r.request_id for r in responses if r.has_error() or r.result.is_final}
        result = batch_result(
            request_ids, prompts, output_lengths, start_ns, start_wall_ns, received
        )
        # Read after the batch's end is stamped: the stats of every iteration since the last call
        # (the Executor keeps the latest 1000, ExecutorConfig.iter_stats_max_iterations).
        for stats in self.executor.get_latest_iteration_stats():
            self._peak_gpu_bytes = max(self._peak_gpu_bytes, stats.gpu_mem_usage)
        return result

    def peak_memory_bytes(self) -> int:
        """The most GPU memory TensorRT-LLM's runtime counted as allocated (IterationStats
        gpu_mem_usage, its MemoryCounters: the KV cache pool, sized up front to
        kv_cache_free_gpu_memory_fraction of the free memory, and the runtime's buffers), over the
        batches run so far. Not torch's max_memory_allocated: docs/tensorrt_llm.md says how they
        differ."""
        return self._peak_gpu_bytes

    def close(self) -> None:
        self.executor.shutdown()

"""The transformers backend on CPU: static batches through generate() and continuous batching through
transformers' ContinuousBatchingManager, on tiny checkpoints transformers itself saved and on seeded
dummy weights; tokens against transformers' own unpadded greedy decoding and against the torch
backend on the same checkpoint; the records' lengths and times; bad inputs."""

import importlib.util
import json

import pytest
import torch
import transformers
from tiny_checkpoints import save_checkpoint

from tokencarbon.backends import BatchResult, Request
from tokencarbon.backends.transformers_backend import INIT_STD, TransformersEngine
from tokencarbon.errors import ConfigError, InputError
from tokencarbon.models import architecture_from_config, load_architecture

# Prompts of different lengths (left padding matters) and output lengths (each its own).
PROMPTS = [[5, 17, 3, 99, 42, 7], [8, 2], [61, 13, 100]]
OUTPUTS = [5, 3, 1]
MODEL_TYPES = ["llama", "qwen2", "mistral", "gpt2"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("checkpoints")
    return {t: save_checkpoint(root / t, t, seed=1) for t in MODEL_TYPES}


def _engine(checkpoint, **kwargs):
    arch = architecture_from_config(checkpoint)
    return TransformersEngine(arch, "float32", "cpu", seed=0, checkpoint=str(checkpoint), **kwargs)


def _greedy_alone(model, prompt, n):
    """transformers' own greedy decoding of one unpadded prompt, EOS off: the reference."""
    out = model.generate(
        torch.tensor([prompt]), max_new_tokens=n, do_sample=False, eos_token_id=None,
        pad_token_id=0, attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
    )  # fmt: skip
    return tuple(out[0, len(prompt) :].tolist())


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_static_batch_tokens_equal_unpadded_greedy(checkpoints, model_type):
    engine = _engine(checkpoints[model_type])
    result = engine.run_batch(PROMPTS, OUTPUTS)
    reference = transformers.AutoModelForCausalLM.from_pretrained(checkpoints[model_type])
    expected = tuple(_greedy_alone(reference, p, n) for p, n in zip(PROMPTS, OUTPUTS))
    assert result.token_ids == expected
    # Counts by hand: 6 + 2 + 3 = 11 prompt tokens, 5 + 3 + 1 = 9 output tokens, padded to 6.
    assert (result.n_requests, result.input_tokens, result.output_tokens) == (3, 11, 9)
    assert (result.padded_input_len, result.max_output_tokens) == (6, 5)
    assert result.start_ns < result.first_token_ns <= result.end_ns
    assert result.start_wall_ns < result.first_token_wall_ns <= result.end_wall_ns
    # The same batch again reuses the static cache and gives the same tokens.
    assert engine.run_batch(PROMPTS, OUTPUTS).token_ids == expected


def _torch_engine_class():
    # HE1's split of the torch backend (backends/static.py) reads the architecture fields this
    # comparison needs (llama3 RoPE scaling, Qwen2 biases, Mistral); the older monolith does not.
    if importlib.util.find_spec("tokencarbon.backends.static") is None:
        pytest.skip(
            "tokencarbon.backends.static (the torch engine reading every field) not present"
        )
    from tokencarbon.backends.static import TorchEngine

    return TorchEngine


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_tokens_identical_to_the_torch_backend(checkpoints, model_type):
    TorchEngine = _torch_engine_class()
    path = str(checkpoints[model_type])
    arch = architecture_from_config(path)
    ours = TorchEngine(arch, "float32", "cpu", seed=0, checkpoint=path).run_batch(PROMPTS, OUTPUTS)
    theirs = _engine(path).run_batch(PROMPTS, OUTPUTS)
    assert ours.token_ids == theirs.token_ids


def test_eos_is_ignored(tmp_path, checkpoints):
    # A checkpoint whose EOS is the token greedy decoding produces first: a request still gets
    # exactly its output length, static and continuous.
    path = checkpoints["llama"]
    first = _engine(path).run_batch([PROMPTS[0]], [1]).token_ids[0][0]
    model = transformers.AutoModelForCausalLM.from_pretrained(path)
    model.config.eos_token_id = first
    model.generation_config.eos_token_id = first
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "generation_config.json").read_text())["eos_token_id"] == first
    engine = _engine(tmp_path, max_num_seqs=2)
    static = engine.run_batch([PROMPTS[0]], [4]).token_ids[0]
    assert len(static) == 4 and static[0] == first
    served = engine.serve([Request("r", tuple(PROMPTS[0]), 4)]).token_ids["r"]
    assert served == static
    engine.close()


def test_continuous_batching_matches_static_tokens_and_records_times(checkpoints):
    engine = _engine(checkpoints["qwen2"], max_num_seqs=2)
    static = engine.run_batch(PROMPTS, OUTPUTS).token_ids
    requests = [
        Request("a", tuple(PROMPTS[0]), OUTPUTS[0]),
        Request("b", tuple(PROMPTS[1]), OUTPUTS[1]),
        Request("c", tuple(PROMPTS[2]), OUTPUTS[2], arrival_s=0.3),
    ]
    result = engine.serve(requests)
    assert result.token_ids == {"a": static[0], "b": static[1], "c": static[2]}
    assert result.steps == ()  # transformers does not expose its steps
    by_id = {r.request_id: r for r in result.requests}
    for req in requests:
        rec = by_id[req.request_id]
        assert (rec.input_tokens, rec.output_tokens) == (len(req.prompt), req.output_len)
        assert result.start_ns <= rec.arrival_ns <= rec.first_token_ns <= rec.finish_ns
        assert result.start_wall_ns <= rec.arrival_wall_ns <= rec.first_token_wall_ns
        # both clocks advance together: the same offset at all three points (within 1 us)
        offsets = {rec.arrival_wall_ns - rec.arrival_ns, rec.first_token_wall_ns - rec.first_token_ns,
                   rec.finish_wall_ns - rec.finish_ns}  # fmt: skip
        assert max(offsets) - min(offsets) < 1_000
    # c arrives 0.3 s after serving starts, not before
    assert by_id["c"].arrival_ns - result.start_ns >= 300_000_000
    assert result.end_ns == max(r.finish_ns for r in result.requests)
    # a second serve (the next repeat) reuses the manager and gives the same tokens
    assert engine.serve(requests).token_ids == result.token_ids
    described = engine.describe()
    assert described["transformers_version"] == transformers.__version__
    assert described["continuous"]["continuous_batching_config"]["max_requests_per_batch"] == 2
    assert described["continuous"]["attn_implementation"] in ("sdpa", "paged|sdpa")
    assert described["attn_implementation"] == "sdpa"
    # On a CPU the paged cache is sized for the workload: 2 requests in flight of at most
    # 6 + 5 = 11 tokens, one 256-token page each -> 2 pages, over the FIFO scheduler's 15 % free
    # margin: ceil(2 / 0.85) + 1 = 4 blocks; a step holds at most max(256, longest prompt 6) tokens.
    assert described["continuous"]["continuous_batching_config"]["num_blocks"] == 4
    assert described["continuous"]["continuous_batching_config"]["max_batch_tokens"] == 256
    engine.close()


def test_max_num_seqs_one_serves_one_request_at_a_time(checkpoints):
    engine = _engine(checkpoints["gpt2"], max_num_seqs=1)
    requests = [Request(f"r{i}", tuple(p), n) for i, (p, n) in enumerate(zip(PROMPTS, OUTPUTS))]
    recs = sorted(engine.serve(requests).requests, key=lambda r: r.first_token_ns)
    for earlier, later in zip(recs, recs[1:]):
        assert later.first_token_ns >= earlier.finish_ns
    engine.close()


# ---------------------------------------------------------------- dummy weights


def test_dummy_weights_drawn_as_the_torch_backend_draws_them():
    arch = load_architecture("tiny-gpt2")
    engine = TransformersEngine(arch, "float32", "cpu", seed=3)
    again = TransformersEngine(arch, "float32", "cpu", seed=3)
    other = TransformersEngine(arch, "float32", "cpu", seed=4)
    params = dict(engine.model.named_parameters())
    assert all(torch.equal(p, dict(again.model.named_parameters())[n]) for n, p in params.items())
    assert not torch.equal(params["transformer.wte.weight"], other.model.transformer.wte.weight)
    for name, p in params.items():
        if name.endswith("bias"):
            assert torch.count_nonzero(p) == 0, name
        elif p.dim() == 1:  # LayerNorm weights
            assert torch.all(p == 1.0), name
        else:  # N(0, 0.02): over >= 16k draws the sample std lies within 5 % of 0.02
            assert p.mean().abs() < 0.002 and abs(p.std().item() / INIT_STD - 1) < 0.05, name
    # tied: lm_head is the token embedding
    assert engine.model.lm_head.weight.data_ptr() == engine.model.transformer.wte.weight.data_ptr()
    result = engine.run_batch([[1, 2, 3]], [2])
    assert isinstance(result, BatchResult) and len(result.token_ids[0]) == 2
    # up to the last learned position (512 for tiny-gpt2): 510 prompt + 2 output tokens; the
    # untimed warm-up of a new cache shape stays inside the position table too
    assert len(engine.run_batch([[1] * 510], [2]).token_ids[0]) == 2


# ---------------------------------------------------------------- bad inputs


@pytest.fixture(scope="module")
def tiny():
    return TransformersEngine(
        load_architecture("tiny-llama"), "float32", "cpu", seed=0, max_num_seqs=2
    )


@pytest.mark.parametrize(
    "prompts, outputs, message",
    [
        ([], [], "batch of 0 prompts and 0 output lengths"),
        ([[1, 2]], [2, 3], "batch of 1 prompts and 2 output lengths"),
        ([[]], [2], "request 0: 0 prompt tokens, 2 output tokens; both must be >= 1"),
        ([[1]], [0], "request 0: 1 prompt tokens, 0 output tokens"),
        ([[1] * 500], [13], "request 0: 500 prompt \\+ 13 output tokens exceed tiny-llama's max_positions 512"),
        ([[1, 4096]], [1], r"request 0: token ids must lie in \[0, 4096\)"),
        ([[-1]], [1], r"token ids must lie in \[0, 4096\)"),
    ],
)  # fmt: skip
def test_bad_batches_refused_before_any_work(tiny, prompts, outputs, message):
    with pytest.raises(InputError, match=message):
        tiny.run_batch(prompts, outputs)


@pytest.mark.parametrize(
    "requests, message",
    [
        ([], "no requests to serve"),
        ([Request("a", (1,), 1), Request("a", (2,), 1)], "request id 'a' appears twice"),
        ([Request("a", (1,), 1, arrival_s=-1.0)], "arrival_s=-1.0; must be a finite number"),
        ([Request("a", (1,), 1, arrival_s=float("nan"))], "arrival_s=nan"),
        ([Request("a", (1, 9999), 1)], r"request 'a': token ids must lie in \[0, 4096\)"),
        ([Request("a", (1,), 0)], "request 'a': 1 prompt tokens, 0 output tokens"),
    ],
)  # fmt: skip
def test_bad_request_sets_refused_before_any_work(tiny, requests, message):
    with pytest.raises(InputError, match=message):
        tiny.serve(requests)


def test_bad_engine_settings_named(checkpoints):
    arch = load_architecture("tiny-llama")
    with pytest.raises(ConfigError, match=r"dtype 'int8'; valid"):
        TransformersEngine(arch, "int8", "cpu", seed=0)
    with pytest.raises(ConfigError, match=r"attn_implementation 'fast'; valid: \['sdpa'"):
        TransformersEngine(arch, "float32", "cpu", seed=0, attn_implementation="fast")
    with pytest.raises(ConfigError, match=r"pad_token_id 4096 outside the vocabulary"):
        TransformersEngine(arch, "float32", "cpu", seed=0, pad_token_id=4096)
    with pytest.raises(ConfigError, match=r"max_num_seqs=0; must be a positive integer"):
        TransformersEngine(arch, "float32", "cpu", seed=0, max_num_seqs=0)
    with pytest.raises(ConfigError, match=r"serve\(\) needs an engine built with max_num_seqs"):
        TransformersEngine(arch, "float32", "cpu", seed=0).serve([Request("a", (1,), 1)])
    # a checkpoint that is not the architecture named: both values, before loading any weight
    with pytest.raises(ConfigError, match=r"hidden_size=64 in the checkpoint but hidden_size=256"):
        TransformersEngine(arch, "float32", "cpu", seed=0, checkpoint=str(checkpoints["llama"]))


# ---------------------------------------------------------------- engine manifest


def test_transformers_manifest_records_versions_class_and_counts(checkpoints):
    from tokencarbon.engine import transformers_manifest

    model = {"name": "q", "architecture": "auto", "dtype": "bfloat16", "seed": 0,
             "checkpoint": str(checkpoints["qwen2"])}  # fmt: skip
    manifest = transformers_manifest(model, {"attn_implementation": "eager"})
    assert manifest["backend"] == "transformers"
    assert manifest["transformers_version"] == transformers.__version__
    assert manifest["torch_version"] == torch.__version__
    assert manifest["model_class"] == "Qwen2ForCausalLM"
    assert manifest["options"] == {"attn_implementation": "eager", "compile_decode": None,
                                   "cuda_graphs": None}  # fmt: skip
    # 70,208 parameters by hand (test_checkpoints.py), 2 bytes each in bfloat16
    assert (manifest["param_count"], manifest["weight_bytes"]) == (70_208, 140_416)
    assert manifest["architecture"]["name"] == "q" and manifest["architecture"]["qkv_bias"]
    names = {f["name"] for f in manifest["checkpoint_files"]}
    assert {"config.json", "model.safetensors"} <= names
    json.dumps(manifest)  # plain builtins only


def test_manifest_options_and_checkpoints_checked():
    from tokencarbon.engine import torch_manifest, transformers_manifest

    model = {"name": "t", "architecture": "tiny-llama", "dtype": "float32", "seed": 0,
             "checkpoint": None}  # fmt: skip
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['attention'\]; valid"):
        transformers_manifest(model, {"attention": "sdpa"})
    with pytest.raises(ConfigError, match=r"compile_decode='yes'; must be true, false or null"):
        transformers_manifest(model, {"compile_decode": "yes"})
    assert transformers_manifest(model)["model_class"] == "LlamaForCausalLM"
    # the params may carry the resolved architecture itself
    arch = torch_manifest(model)["architecture"]
    assert torch_manifest(model | {"architecture": arch})["param_count"] == 4_999_424
    with pytest.raises(ConfigError, match=r"'/nonexistent/ckpt'.*no such directory"):
        torch_manifest(model | {"checkpoint": "/nonexistent/ckpt"})


def test_engine_for_cell_takes_the_slices(checkpoints):
    from tokencarbon.backends.transformers_backend import engine_for_cell

    arch = architecture_from_config(checkpoints["mistral"])
    model = {"dtype": "float32", "seed": 0, "checkpoint": str(checkpoints["mistral"])}
    engine = engine_for_cell(arch, model, {"attn_implementation": "eager"}, "cpu")
    assert engine.describe()["attn_implementation"] == "eager"
    with pytest.raises(ConfigError, match=r"cuda_graphs=1; must be true, false or null"):
        engine_for_cell(arch, model, {"cuda_graphs": 1}, "cpu")
    # One static cache for the workload: tiny-llama (512 positions), batch of 3, prompts padded to
    # 6, 5 outputs: 11 positions needed -> one 256-slot cache; with max_cache_len 300 -> 512.
    tiny = load_architecture("tiny-llama")
    dummy = {"dtype": "float32", "seed": 0, "checkpoint": None}
    plain, sized = (engine_for_cell(tiny, dummy, None, "cpu", max_cache_len=m) for m in (None, 300))
    plain.run_batch(PROMPTS, OUTPUTS)
    sized.run_batch(PROMPTS, OUTPUTS)
    assert (plain._cache_shape, sized._cache_shape) == ((3, 256), (3, 512))

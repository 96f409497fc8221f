"""Server cells through Snakemake end to end (issue 25): `backend.name: openai_server` against a
real `transformers serve` (transformers' own OpenAI-compatible server, continuous batching) on the
CPU, serving a tiny Llama checkpoint this module saves (tests/test_openai_server.py's server and
word-level tokenizer: 128 words "w0".."w127", one token each).

The study's workload is a ShareGPT file written here in those words, tokenized by the checkpoint's
own tokenizer, so every count is worked out by hand: 4 conversations whose prompts have 3, 4, 5
and 6 words and whose answers have 4, 6, 8 and 10 words; num_prompts 4 takes all of them, so each
cell serves 4 requests, 18 prompt tokens and 28 output tokens per repeat (lengths forced with
length_control: transformers).

Failure modes tried before any job: the server down (nothing listens at base_url), a model name it
does not serve; and the API key, given through the environment, is in no file the run wrote.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import pandas as pd
import pytest
import transformers
from harness import Project, tiny_study

# the running server and its tokenizer, as tests/test_openai_server.py makes them
from test_openai_server import TinyServer, _free_port, _require_serving, _save_tokenizer

PROMPT_WORDS = (3, 4, 5, 6)
ANSWER_WORDS = (4, 6, 8, 10)
KEY_VAR = "TC_SERVER_TEST_KEY"


def _sharegpt(path: Path) -> Path:
    """4 conversations in the checkpoint's words: prompt i has PROMPT_WORDS[i] words, its answer
    ANSWER_WORDS[i] (words w1.. and w40.., all inside the 128-word vocabulary)."""
    conversations = [
        {"id": f"c{i}", "conversations": [
            {"from": "human", "value": " ".join(f"w{1 + i + k}" for k in range(p))},
            {"from": "gpt", "value": " ".join(f"w{40 + i + k}" for k in range(a))},
        ]}
        for i, (p, a) in enumerate(zip(PROMPT_WORDS, ANSWER_WORDS))
    ]  # fmt: skip
    path.write_text(json.dumps(conversations))
    return path


def server_study(server: TinyServer, source: Path, **server_options) -> dict:
    """The tiny CPU study (harness.tiny_study) measuring `server`: one model (the served
    checkpoint, architecture from its config.json), cells cb1 and cb2, one repeat each."""
    options = {"base_url": server.base_url, "model": server.model, "length_control": "transformers",
               "server_pid": server.proc.pid, "api_key_env": KEY_VAR, **server_options}  # fmt: skip
    config = tiny_study(
        workload={"source": str(source), "num_prompts": 4},
        sweep={"batch_sizes": [], "max_num_seqs": [1, 2]},
        run={"repeats": 1},
        backend={"name": "openai_server", "openai_server": options},
    )
    # the served checkpoint in place of the tiny study's models and family
    config["models"] = {"tiny-served": {"architecture": "auto", "checkpoint": server.model,
                                        "family": "words", "dtype": "float32"}}  # fmt: skip
    config["families"] = {"words": {"tokenizer": server.model, "min_tokens": 1, "max_tokens": 64}}
    return config


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(TinyServer running, the ShareGPT source): the server started once for the module."""
    _require_serving()
    import tiny_checkpoints

    root = tmp_path_factory.mktemp("server-cells")
    checkpoint = tiny_checkpoints.save_checkpoint(root / "tiny-llama", "llama")
    _save_tokenizer(checkpoint)
    # the workload's tokenizer needs a pad token (tokencarbon.tokenizer): w0, which no prompt holds
    tok = transformers.AutoTokenizer.from_pretrained(checkpoint)
    tok.pad_token = "w0"
    tok.save_pretrained(checkpoint)
    server = TinyServer(checkpoint, root / "serve.log")
    server.start()
    yield server, _sharegpt(root / "sharegpt.json")
    server.stop()


@pytest.fixture(scope="module")
def key() -> str:
    return "sk-tc-" + secrets.token_hex(12)


@pytest.fixture(scope="module")
def study(served, key, tmp_path_factory):
    """The server study run through Snakemake (`all`: cells, tables, figures, export) once."""
    server, source = served
    project = Project.make(tmp_path_factory.mktemp("server-study") / "p",
                           server_study(server, source), copy_code=True)  # fmt: skip
    project.run("all", timeout=900, env=os.environ | {KEY_VAR: key})
    return project


# ---------------------------------------------------------------- end to end


@pytest.mark.slow
def test_server_cells_are_cells_of_the_study(study, served):
    server, _ = served
    cells = pd.read_parquet(study / "results/tables/cells.parquet")
    assert sorted(cells["batch_size"]) == [1, 2]
    assert set(cells["mode"]) == {"continuous"} and set(cells["backend"]) == {"openai_server"}
    assert set(cells["n_requests"]) == {4}
    for n in (1, 2):
        folder = study / f"results/cells/cpu/tiny-served/cb{n}"
        requests = pd.read_parquet(folder / "requests.parquet")
        # 4 requests; tokens worked out by hand from the ShareGPT file above
        assert len(requests) == 4
        assert sorted(requests["output_tokens"]) == sorted(ANSWER_WORDS)
        assert sorted(requests["input_tokens"]) == sorted(PROMPT_WORDS)
        batches = pd.read_parquet(folder / "batches.parquet")
        assert batches[["n_requests", "input_tokens", "output_tokens"]].values.tolist() == [[4, 18, 28]]
        assert len(pd.read_parquet(folder / "steps.parquet")) == 0  # a server shows no steps
        meta = json.loads((folder / "meta.json").read_text())
        assert meta["backend"] == "openai_server" and meta["batch_size"] == n
        assert meta["server"]["model"] == server.model
        assert meta["server"]["base_url"] == server.base_url
        # transformers serve takes generation_config (lengths forced) but no token ids (text)
        assert meta["server"]["lengths_forced"] is True
        assert meta["server"]["prompt_tokens_exact"] is False
        assert meta["server"]["requests_short"] == 0
        assert meta["power_source"] == "modeled_cpu"
        # the server's processes are the cell's own: its CPU time is in own_cpu_s, not foreign
        assert meta["foreign_use"]["own_cpu_s"] > 0
        assert not any(p["pid"] == server.proc.pid for p in meta["foreign_use"]["foreign_processes"])
    metrics = pd.read_parquet(study / "results/tables/metrics.parquet")
    served_rows = metrics[metrics["backend"] == "openai_server"] if "backend" in metrics else metrics
    assert sorted(served_rows["batch_size"]) == [1, 2]
    assert (served_rows["output_tokens"] == 28).all() if "output_tokens" in metrics else True


@pytest.mark.slow
def test_no_engine_or_probe_jobs_and_the_key_is_in_no_file(study, key):
    logs = {p.parent.name for p in (study / "logs").rglob("*.log")}
    assert not {"build_torch_engine", "probe_max_batch"} & {p.name for p in (study / "logs").iterdir()}
    assert not (study / "results/engines").exists()
    hits = []
    for path in study.path.rglob("*"):
        if path.is_file() and not path.is_symlink():
            if key.encode() in path.read_bytes():
                hits.append(str(path))
    assert hits == [], hits
    assert logs  # the run wrote logs, and they were searched

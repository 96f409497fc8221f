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
import yaml
from harness import Project, tiny_study

from tokencarbon.errors import ConfigError

# the running server and its tokenizer, as tests/test_openai_server.py makes them
from test_openai_server import (
    TinyServer,
    _children_from_proc,
    _free_port,
    _require_serving,
    _save_tokenizer,
)

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
        # the server's processes (its API process and spawned model process) are the cell's own:
        # none is among the foreign ones
        server_pids = {server.proc.pid} | _children_from_proc(server.proc.pid)
        foreign = {p["pid"] for p in meta["foreign_use"]["foreign_processes"]}
        assert len(server_pids) >= 2 and not server_pids & foreign
        exported = json.loads((study / f"results/export/cells/cpu/tiny-served/cb{n}.json").read_text())
        assert exported["cell"]["backend"] == "openai_server"
        assert exported["workload"]["total_output_tokens"] == 28
        assert exported["provenance"]["server"] == {
            "model": server.model, "base_url": server.base_url, "lengths_forced": True,
            "prompt_tokens_exact": False, "requests_short": 0}  # fmt: skip
    metrics = pd.read_parquet(study / "results/tables/metrics.parquet").sort_values("batch_size")
    assert metrics[["mode", "batch_size", "n_requests", "input_tokens", "output_tokens"]].values.tolist() == [
        ["continuous", 1, 4, 18, 28], ["continuous", 2, 4, 18, 28]]  # fmt: skip
    # energy per token is the cell's energy over the 28 tokens the server generated
    assert (metrics["j_per_token"] - metrics["energy_j"] / 28).abs().max() < 1e-12
    assert (metrics["energy_j"] > 0).all()
    # a server's steps are not visible: its energy is shared among requests by tokens, flagged
    assert metrics["qa_flags"].str.contains("no_steps_energy_by_tokens").all()
    assert not (study / "results/figures/fig5_mfu_batch1.png").exists()  # static cells only


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


@pytest.mark.slow
def test_a_restarted_server_reruns_no_cell_and_its_settings_rerun_both(study, key, monkeypatch):
    monkeypatch.setenv(KEY_VAR, key)  # the dry runs check the server as a run does
    # another pid (this test's process stands in for a restarted server): not a param
    moved = study.write_config("moved.yaml", lambda c: c["backend"]["openai_server"].update(
        server_pid=os.getpid()))  # fmt: skip
    assert study.planned_jobs("all", "--configfile", moved) == {}
    greedy = study.write_config("hot.yaml", lambda c: c["backend"]["openai_server"].update(
        temperature=0.5))  # fmt: skip
    assert study.planned_jobs("all", "--configfile", greedy)["run_continuous_cell"] == 2


# ---------------------------------------------------------------- refused before any job


def _refused(tmp_path: Path, config: dict, env: dict) -> str:
    """Snakemake's output for `all` on `config`, which must fail with no job started (no results/
    folder: not even the dataset stage ran)."""
    project = Project.make(tmp_path / "p", config)
    proc = project.run("all", env=os.environ | env, check=False, timeout=300)
    assert proc.returncode != 0
    assert not (project / "results").exists(), "a job ran"
    return proc.stdout + proc.stderr


@pytest.mark.slow
def test_a_server_down_a_wrong_model_or_no_key_is_refused_before_any_job(served, key, tmp_path):
    server, source = served
    down = f"http://127.0.0.1:{_free_port()}/v1"  # nothing listens there
    text = _refused(tmp_path / "down", server_study(server, source, base_url=down), {KEY_VAR: key})
    assert f"no OpenAI-compatible server answers at {down}" in text
    text = _refused(tmp_path / "model", server_study(server, source, model="llama-9000"),
                    {KEY_VAR: key})  # fmt: skip
    assert f"'llama-9000' is not served at {server.base_url}; it serves ['{server.model}']" in text
    text = _refused(tmp_path / "key", server_study(server, source), {KEY_VAR: ""})
    assert f"names the environment variable {KEY_VAR}, which is empty here" in text
    assert key not in text


def test_doctor_checks_the_server_of_the_study(served, key, tmp_path, monkeypatch):
    from tokencarbon.cli import diagnose

    server, source = served
    monkeypatch.setenv(KEY_VAR, key)
    path = tmp_path / "server.yaml"
    path.write_text(yaml.safe_dump(server_study(server, source)))
    checks = {c["name"]: c for c in diagnose(path)["study"]["server"]}
    assert [n for n, c in checks.items() if c["ok"]] == [
        "settings", "api key", "endpoint", "model", "prompt and lengths", "energy"]  # fmt: skip
    assert checks["api key"]["detail"] == f"from ${KEY_VAR}"
    # transformers serve refuses token ids: prompts go as text; its power: the modeled CPU source
    assert "prompts as text, length_control 'transformers' accepted" in checks["prompt and lengths"]["detail"]
    assert checks["energy"]["detail"] == "power from modeled_cpu"
    path.write_text(yaml.safe_dump(server_study(server, source, model="llama-9000")))
    report = diagnose(path)["study"]
    model = next(c for c in report["server"] if c["name"] == "model")
    assert not model["ok"] and f"it serves ['{server.model}']" in model["detail"]
    assert report["can_run"] is False


# ---------------------------------------------------------------- the config's door (no server)


def _config(**options):
    base = {"base_url": "http://127.0.0.1:8000/v1", "model": "m", "server_pid": 1}
    return tiny_study(models=["tiny-llama"], sweep={"batch_sizes": [], "max_num_seqs": [1, 2]},
                      backend={"name": "openai_server", "openai_server": base | options})  # fmt: skip


def _prepare(config):
    from tokencarbon.config import prepare_config
    from harness import REPO

    return prepare_config(config, REPO)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"sweep": {"batch_sizes": "auto", "max_num_seqs": [1]}},
         r"sweep\.batch_sizes: 'auto' with backend\.name 'openai_server'.*set sweep\.batch_sizes: \[\]"),
        ({"sweep": {"batch_sizes": [], "max_num_seqs": "auto"}},
         r"sweep\.max_num_seqs: 'auto' with backend\.name 'openai_server'; 'auto' reads the OOM probe"),
        ({"sweep": {"batch_sizes": [], "max_num_seqs": []}}, r"sweep\.max_num_seqs: \[\] with"),
        ({"openai_server": {"server_pid": None}},
         r"backend\.openai_server\.server_pid: null on the CPU platform 'cpu'"),
        ({"openai_server": {"gpus": [0]}},
         r"backend\.openai_server\.gpus: \[0\] on the CPU platform 'cpu'"),
        ({"openai_server": {"base_url": "http://10.255.255.1:8000/v1"}},
         r"'http://10\.255\.255\.1:8000/v1' is a server on another host.*"
         r"platforms\.cpu\.imported\.power_log"),
        ({"openai_server": {"length_control": "maybe"}},
         r"key backend\.openai_server\.length_control: 'maybe' is not one of"),
        ({"openai_server": None}, r"backend\.openai_server: missing"),
    ],
)  # fmt: skip
def test_server_config_is_refused_at_the_door_naming_key_and_value(change, message):
    config = _config()
    if "models" in change:
        config["models"] = {m: tiny_study()["models"][m] for m in change["models"]}
    if "sweep" in change:
        config["sweep"] = change["sweep"]
    if "openai_server" in change:
        if change["openai_server"] is None:
            del config["backend"]["openai_server"]
        else:
            config["backend"]["openai_server"] |= change["openai_server"]
    with pytest.raises(ConfigError, match=message):
        _prepare(config)


def test_static_batches_stay_required_for_our_engines():
    with pytest.raises(ConfigError, match=r"sweep\.batch_sizes: \[\] with backend\.name 'torch'"):
        _prepare(tiny_study(sweep={"batch_sizes": []}))
    assert _prepare(_config())["backend"]["name"] == "openai_server"  # a local CPU server: accepted

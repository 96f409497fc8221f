"""The OpenAI-compatible server backend against a real server: `transformers serve` (transformers'
own OpenAI-compatible server, continuous batching) on a tiny checkpoint this module saves, on the
CPU, on a free port of this host, started once for the module (~25 s on a 2-core machine).

The checkpoint's tokenizer is a word-level one of 128 words "w0".."w127", one token each, so
token ids and text convert exactly both ways: a prompt of n ids is n prompt tokens to the server,
worked out by hand. The model's EOS is set to the third token of one prompt's greedy answer
(found with transformers' own eager generate() in this process), so that a server left to stop at
its EOS (length_control none) really stops short there.

Failure modes tried on the real server: down (nothing listening), stalled (its process stopped
with SIGSTOP), a request it refuses (HTTP 400), fields it refuses (HTTP 422), a wrong model name,
an answer cut by the server's model process dying mid-stream (its own error event), fewer tokens
than asked. The helpers that need a GPU (NVML) are tested here by their pure parts, by hand.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import transformers
from helpers import gpu_present

from tokencarbon.arrivals import arrival_times_s
from tokencarbon.backends import Request
from tokencarbon.backends import server_gpus as sg
from tokencarbon.backends.openai_server import (
    LengthPolicy,
    OpenAIServerEngine,
    ServerError,
    Stream,
    ServerUnavailableError,
    api_key,
    check_lengths,
    check_server_result,
    doctor,
    engine_for_cell,
    request_body,
    server_settings,
    take_event,
)
from tokencarbon.errors import ConfigError, HardwareMismatchError, TokencarbonError
from tokencarbon.lease import LeaseTimeoutError

VOCAB = 128
PROMPT_A = (5, 17, 42, 9)  # its greedy answer's third token becomes the model's EOS
START_TIMEOUT_S = 240.0


def words(ids) -> str:
    """The word-level tokenizer's text of `ids` (the tokenizer saved below decodes the same)."""
    return " ".join(f"w{i}" for i in ids)


def _serving_available() -> bool:
    from transformers.utils.import_utils import is_serve_available

    return is_serve_available()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _save_tokenizer(path: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    # no special token at all: a server's detokenizer skips special tokens, and every id here is
    # an ordinary word, so the streamed text holds every generated token
    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(VOCAB)}, unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece()  # words joined by spaces
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok)
    # chat: the user's text as it is, so the chat endpoint's prompt tokens are the prompt's
    fast.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    fast.save_pretrained(path)


def _greedy(model, prompt, n: int) -> list[int]:
    """transformers' eager greedy generate() with no EOS: the reference answer."""
    out = model.generate(
        torch.tensor([list(prompt)]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0,
    )  # fmt: skip
    return out[0, len(prompt) :].tolist()


class TinyServer:
    """`transformers serve` of the module's checkpoint, as a process group of its own."""

    def __init__(self, checkpoint: Path, log: Path, device: str = "cpu"):
        self.checkpoint, self.log, self.device = checkpoint, log, device
        self.proc: subprocess.Popen | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def model(self) -> str:
        return str(self.checkpoint)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        import httpx2

        self.port = _free_port()
        # `transformers serve` of this interpreter's transformers (its CLI module, as the
        # `transformers` script runs it)
        args = [sys.executable, "-m", "transformers.cli.transformers", "serve",
                str(self.checkpoint), "--device", self.device,
                "--dtype", "float32",
                "--host", "127.0.0.1", "--port", str(self.port), "--continuous-batching",
                "--cb-num-blocks", "64", "--cb-block-size", "32",
                "--cb-max-batch-tokens", "256"]  # fmt: skip
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"transformers serve exited ({self.proc.returncode}): "
                            f"{self.log.read_text()[-3000:]}")  # fmt: skip
            try:
                if httpx2.get(f"http://127.0.0.1:{self.port}/health", timeout=1).status_code == 200:
                    return
            except httpx2.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        pytest.fail(f"transformers serve did not answer in {START_TIMEOUT_S} s: "
                    f"{self.log.read_text()[-3000:]}")  # fmt: skip

    def ensure(self) -> TinyServer:
        if not self.alive():
            self.start()
        return self

    def model_process(self) -> int:
        """The pid of the server's model process (its child running multiprocessing's spawn)."""
        for child in _children_from_proc(self.proc.pid):
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            if b"spawn_main" in cmdline:
                return child
        raise AssertionError(f"no model process under {self.proc.pid}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the group this module started
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def _children_from_proc(pid: int) -> set[int]:
    """Descendants of pid read from /proc/<n>/stat's ppid field (not through psutil, which the
    code under test uses)."""
    parent = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parent[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    out, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, pp in parent.items() if pp in frontier} - out
        out |= frontier
    return out


def _require_serving() -> None:
    if not _serving_available():
        message = ("transformers serve needs fastapi, uvicorn and openai (transformers[serving]); "
                   "install them to run the server tests")  # fmt: skip
        if os.environ.get("CI", "").lower() in ("1", "true", "yes", "on"):
            pytest.fail(message)
        pytest.skip(message)


def _tiny_checkpoint(root: Path):
    """(checkpoint directory, the model loaded by transformers, EOS id): tiny_checkpoints' llama
    with the word-level tokenizer, its EOS the third token of PROMPT_A's greedy answer."""
    import tiny_checkpoints

    checkpoint = tiny_checkpoints.save_checkpoint(root / "tiny-llama", "llama")
    _save_tokenizer(checkpoint)
    model = transformers.AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    answer = _greedy(model, PROMPT_A, 3)
    assert answer[2] not in answer[:2], answer  # else the EOS below would stop it earlier
    eos = answer[2]
    for name in ("config.json", "generation_config.json"):
        data = json.loads((checkpoint / name).read_text())
        data["eos_token_id"] = eos
        (checkpoint / name).write_text(json.dumps(data))
    return checkpoint, model, eos


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(TinyServer, reference model, EOS id). Skips where transformers' serving extras are
    missing, fails under CI (CI=true) instead."""
    _require_serving()
    root = tmp_path_factory.mktemp("openai_server")
    checkpoint, model, eos = _tiny_checkpoint(root)
    server = TinyServer(checkpoint, root / "serve.log")
    server.start()
    yield server, model, eos
    server.stop()


@pytest.fixture
def server(tiny):
    return tiny[0].ensure()


def _settings(server: TinyServer, **overrides):
    return server_settings({"base_url": server.base_url, "model": server.model,
                            "length_control": "transformers", **overrides})  # fmt: skip


def _engine(server: TinyServer, max_num_seqs: int = 4, **overrides) -> OpenAIServerEngine:
    return OpenAIServerEngine(_settings(server, **overrides), max_num_seqs=max_num_seqs,
                              decode=words)  # fmt: skip


def _requests(n: int, arrival: str = "offline", rate=None) -> list[Request]:
    """n requests r0..r{n-1}: prompt i = ids 3i+1 .. 3i+4+i (4 + i tokens), output 4 + 3i tokens,
    arrivals from tokencarbon.arrivals (seed 0)."""
    times = arrival_times_s(n, arrival, rate, 0)
    return [
        Request(f"r{i}", tuple((3 * i + k) % VOCAB for k in range(1, 5 + i)), 4 + 3 * i, t)
        for i, t in enumerate(times)
    ]


# ---------------------------------------------------------------- settings, bodies, lengths


def test_settings_take_the_schema_defaults_and_name_the_key_at_fault():
    s = server_settings({"base_url": "http://localhost:8000/v1", "model": "m"})
    assert (s.endpoint, s.prompt, s.length_control, s.temperature) == (
        "completions", "auto", "ignore_eos", 0.0)  # fmt: skip
    assert (s.read_timeout_s, s.request_timeout_s, s.gpus, s.trust_env) == (300.0, None, (), False)
    assert s.url("/models") == "http://localhost:8000/v1/models"
    with pytest.raises(ConfigError, match=r"backend\.openai_server.*'model' is a required"):
        server_settings({"base_url": "http://localhost:8000/v1"})
    with pytest.raises(ConfigError, match=r"key backend\.openai_server\.endpoint: value 'embed'"):
        server_settings({"base_url": "http://x:1/v1", "model": "m", "endpoint": "embed"})
    with pytest.raises(ConfigError, match=r"ending in /v1 \(e\.g\. 'http://localhost:8000/v1'\)"):
        server_settings({"base_url": "http://localhost:8000", "model": "m"})
    with pytest.raises(ConfigError, match="holds credentials.*api_key_env"):
        server_settings({"base_url": "http://me:secret@localhost:8000/v1", "model": "m"})
    with pytest.raises(ConfigError, match=r"extra_body: sets \['ignore_eos', 'max_tokens'\]"):
        extra = {"max_tokens": 3, "ignore_eos": False, "seed": 1}
        server_settings({"base_url": "http://x:1/v1", "model": "m", "extra_body": extra})
    with pytest.raises(ConfigError, match="server_pid .* and server_cgroup"):
        server_settings({"base_url": "http://x:1/v1", "model": "m", "server_pid": 1,
                         "server_cgroup": "/sys/fs/cgroup"})  # fmt: skip
    with pytest.raises(ConfigError, match="'token_ids' with endpoint 'chat'"):
        server_settings({"base_url": "http://x:1/v1", "model": "m", "endpoint": "chat",
                         "prompt": "token_ids"})  # fmt: skip


def test_the_api_key_comes_from_the_named_variable_and_no_message_holds_it():
    s = server_settings({"base_url": "http://x:1/v1", "model": "m", "api_key_env": "TC_KEY"})
    assert api_key(s, {"TC_KEY": " sk-123 "}) == "sk-123"
    assert "sk-123" not in repr(s) and "sk-123" not in json.dumps(s.record())
    with pytest.raises(ConfigError, match="TC_KEY, which is not set here") as err:
        api_key(s, {})
    with pytest.raises(ConfigError, match="TC_KEY, which is empty"):
        api_key(s, {"TC_KEY": ""})
    assert api_key(server_settings({"base_url": "http://x:1/v1", "model": "m"}), {}) is None
    assert "sk-" not in str(err.value)


def test_request_bodies_force_the_length_each_server_takes():
    base = {"base_url": "http://x:1/v1", "model": "m", "extra_body": {"seed": 7}}
    vllm = request_body(server_settings(base), [5, 6], 9)
    assert vllm == {"seed": 7, "model": "m", "max_tokens": 9, "n": 1, "temperature": 0.0,
                    "stream": True, "stream_options": {"include_usage": True}, "prompt": [5, 6],
                    "ignore_eos": True, "min_tokens": 9}  # fmt: skip
    hf = request_body(server_settings(base | {"length_control": "transformers"}), "w5 w6", 9)
    assert json.loads(hf["generation_config"]) == {"eos_token_id": -1}
    assert hf["prompt"] == "w5 w6" and "ignore_eos" not in hf and "min_tokens" not in hf
    free = request_body(server_settings(base | {"length_control": "none", "endpoint": "chat"}),
                        "w5", 3)  # fmt: skip
    assert free["messages"] == [{"role": "user", "content": "w5"}] and "prompt" not in free
    assert not {"ignore_eos", "min_tokens", "generation_config"} & set(free)


def test_reported_lengths_against_the_policy_by_hand():
    req = Request("a", (1, 2, 3), 10)
    forced, free = LengthPolicy(True, True), LengthPolicy(False, False)
    assert check_lengths(req, 3, 10, forced) is False
    with pytest.raises(
        ServerError, match=r"request 'a': asked 10 .* reported 7 \(finish_reason 'stop'\)"
    ):
        check_lengths(req, 3, 7, forced, "stop")
    with pytest.raises(ServerError, match="reported 4 prompt tokens for the 3 token ids sent"):
        check_lengths(req, 4, 10, forced)
    assert check_lengths(req, 5, 7, free) is True  # short, and a re-tokenized prompt: allowed
    for bad in (0, 11):
        with pytest.raises(ServerError, match=f"reported {bad} output tokens for max_tokens 10"):
            check_lengths(req, 3, bad, free)


def test_stream_events_of_each_server_shape_by_hand():
    # TGI's completions: finish_reason "" on every event but the last, usage on the last
    st = Stream(Request("t", (1,), 2))
    take_event(
        st,
        {"choices": [{"index": 0, "text": " a", "finish_reason": ""}]},
        (1, 10),
        "completions",
        "t",
    )
    assert (st.first, st.finish) == ((1, 10), None)
    usage = {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
    last = {"choices": [{"index": 0, "text": " b", "finish_reason": "length"}], "usage": usage}
    take_event(st, last, (2, 20), "completions", "t")
    assert (st.first, st.finish, st.finish_reason, st.usage, st.text) == (
        (1, 10), (2, 20), "length", usage, [" a", " b"])  # fmt: skip
    # chat (vLLM, transformers serve): a first event with the role only is no token
    chat = Stream(Request("c", (1,), 2))
    take_event(chat, {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
               (1, 10), "chat", "c")  # fmt: skip
    take_event(chat, {"choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": None}]},
               (3, 30), "chat", "c")  # fmt: skip
    assert chat.first == (3, 30) and chat.finish is None
    take_event(chat, {"choices": [], "usage": usage}, (4, 40), "chat", "c")  # usage-only event
    assert chat.usage == usage and chat.finish is None
    # errors: transformers serve's {"error": text}, vLLM's {"error": {...}}, an ErrorResponse
    for event, text in [({"error": "boom"}, "boom"),
                        ({"error": {"message": "out of memory", "code": 500}}, "out of memory"),
                        ({"object": "error", "message": "bad", "code": 400}, "bad")]:  # fmt: skip
        with pytest.raises(ServerError, match=f"error mid-stream, after 0 events: {text}"):
            # the first event of its stream (the reader counts an event before taking it)
            take_event(Stream(Request("e", (1,), 1), events=1), event, (1, 1), "completions", "e")
    with pytest.raises(ServerError, match="is not a JSON object"):
        take_event(Stream(Request("e", (1,), 1)), [1, 2], (1, 1), "completions", "e")


# ---------------------------------------------------------------- GPUs, processes, hosts


def test_gpu_entries_match_indices_and_uuid_prefixes_by_hand():
    devices = [("GPU-aa11", "H100"), ("GPU-bb22", "H100"), ("GPU-bb33", "H100")]
    got = sg.match_gpus([2, "GPU-aa", "1"], devices)
    assert [(g.index, g.uuid) for g in got] == [(2, "GPU-bb33"), (0, "GPU-aa11"), (1, "GPU-bb22")]
    with pytest.raises(
        ConfigError, match=r"GPU index 3 does not exist here; valid: indices 0\.\.2"
    ):
        sg.match_gpus([3], devices)
    with pytest.raises(ConfigError, match="'GPU-bb' names 2 GPU"):
        sg.match_gpus(["GPU-bb"], devices)
    with pytest.raises(ConfigError, match="GPU 0 .* is named twice"):
        sg.match_gpus([0, "GPU-aa11"], devices)
    with pytest.raises(ConfigError, match="'MIG-1' names no GPU"):
        sg.match_gpus(["MIG-1"], devices)


def test_sidecar_specs_follow_cuda_visible_devices_by_hand():
    uuids = ["GPU-a", "GPU-b", "GPU-c"]
    gpus = [sg.ServerGpu(0, "GPU-a", "x"), sg.ServerGpu(2, "GPU-c", "x")]
    assert sg.sidecar_specs(gpus, uuids) == [{"kind": "nvml", "device_index": 0},
                                             {"kind": "nvml", "device_index": 2}]  # fmt: skip
    # CUDA_VISIBLE_DEVICES=2,0: NVML GPU 2 is CUDA device 0, NVML GPU 0 is CUDA device 1
    assert [s["device_index"] for s in sg.sidecar_specs(gpus, uuids, "2,0")] == [1, 0]
    with pytest.raises(HardwareMismatchError, match=r"GPU 2 .*\(CUDA_VISIBLE_DEVICES='1,0'\)"):
        sg.sidecar_specs(gpus, uuids, "1,0")


def test_gpu_processes_split_into_own_server_and_foreign_by_hand():
    seen = {10: 1e9, 11: 2e9, 12: float("nan"), 99: 5e8}
    out = sg.classify_gpu_processes(seen, own={10}, server={11, 12})
    assert out["foreign_gpu_processes"] == 1 and out["pids_mapped"] is True
    assert [(p["pid"], p["own"], p["server"]) for p in out["processes"]] == [
        (10, True, False), (11, False, True), (12, False, True), (99, False, False)]  # fmt: skip
    # another pid namespace: nothing seen is ours, so nothing can be told apart
    hidden = sg.classify_gpu_processes({501: 1.0, 502: 1.0}, own={10}, server={11})
    assert hidden["pids_mapped"] is False and hidden["foreign_gpu_processes"] != 0


def test_every_server_gpu_is_leased_and_released(tmp_path):
    with sg.lease_server_gpus(tmp_path, [0, 1], cell="srv/a", timeout_s=1) as leases:
        assert [lease.index for lease in leases] == [0, 1] and all(lease.held for lease in leases)
        with pytest.raises(LeaseTimeoutError, match="srv/a"):
            with sg.lease_server_gpus(tmp_path, [1], cell="srv/b", timeout_s=0.3):
                pass
    assert not any(lease.held for lease in leases)
    with sg.lease_server_gpus(tmp_path, [1], cell="srv/c", timeout_s=1) as again:
        assert again[0].held


def test_energy_source_by_where_the_server_runs():
    local = "http://127.0.0.1:8000/v1"
    assert sg.check_server_host(local, [0], None) == "nvml"
    assert (
        sg.check_server_host("http://localhost:8000/v1", [], None, platform_kind="cpu")
        == "modeled_cpu"
    )
    with pytest.raises(ConfigError, match=r"backend\.openai_server\.gpus: empty for the local"):
        sg.check_server_host(local, [], None)
    # 192.0.2.0/24 is TEST-NET-1 (RFC 5737), never this host; nothing is sent to it
    remote = "http://192.0.2.7:8000/v1"
    with pytest.raises(ConfigError, match=r"another host.*platforms\.h100\.imported\.power_log"):
        sg.check_server_host(remote, [0], None, platform="h100")
    assert sg.check_server_host(remote, [], "smi.csv") == "imported"


def test_a_server_process_tree_and_cgroup_are_found(server):
    expected = {server.proc.pid} | _children_from_proc(server.proc.pid)
    assert server.model_process() in expected
    found = sg.server_processes([], pid=server.proc.pid)
    assert (found.how, found.pids()) == ("pid", expected)
    # the server's cgroup directories, read from /proc (v2: one "0::" line; v1: per controller)
    candidates = []
    for line in Path(f"/proc/{server.proc.pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        roots = ["", "unified"] if controllers == "" else controllers.split(",")
        candidates += [Path("/sys/fs/cgroup", root, path.lstrip("/")) for root in roots]
    holding = [d for d in candidates if (d / "cgroup.procs").is_file()
               and str(server.proc.pid) in (d / "cgroup.procs").read_text().split()]  # fmt: skip
    if not holding:
        pytest.skip(f"no readable cgroup directory lists the server among {candidates}")
    directory = max(holding, key=lambda d: len(d.parts))  # the most specific
    by_cgroup = sg.server_processes([], cgroup=str(directory))
    assert expected <= by_cgroup.pids()
    with pytest.raises(ConfigError, match="server_cgroup: .* is not a cgroup directory"):
        sg.server_processes([], cgroup=str(Path(__file__).parent))
    with pytest.raises(ConfigError, match="server_pid: no process"):
        sg.server_processes([], pid=2**22 + 12345)


# ---------------------------------------------------------------- a real server


def test_a_server_that_is_down_is_refused_before_any_work():
    port = _free_port()  # bound and closed again: nothing listens there
    settings = server_settings({"base_url": f"http://127.0.0.1:{port}/v1", "model": "m",
                                "connect_timeout_s": 2})  # fmt: skip
    with pytest.raises(ServerUnavailableError, match=f"no OpenAI-compatible server answers at "
                       f"http://127.0.0.1:{port}/v1"):  # fmt: skip
        OpenAIServerEngine(settings, max_num_seqs=1, decode=words)
    checks = doctor({"base_url": f"http://127.0.0.1:{port}/v1", "model": "m"}, platform_kind="cpu")
    assert [(c.name, c.ok) for c in checks][:3] == [("settings", True), ("api key", True),
                                                   ("endpoint", False)]  # fmt: skip


def test_a_wrong_model_name_is_refused_naming_the_served_ones(server):
    with pytest.raises(ConfigError, match=r"model: 'llama-9b' is not served .* set model to one"):
        OpenAIServerEngine(_settings(server, model="llama-9b"), max_num_seqs=1, decode=words)


def test_length_fields_the_server_refuses_are_a_config_error_before_work(server):
    # transformers serve refuses fields it does not know (HTTP 422): vLLM's ignore_eos is one
    with pytest.raises(ConfigError, match=r"length_control: 'ignore_eos' sends \['ignore_eos', "
                       r"'min_tokens'\], which the server refused \(HTTP 422"):  # fmt: skip
        OpenAIServerEngine(_settings(server, length_control="ignore_eos"), max_num_seqs=1,
                           decode=words)  # fmt: skip


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_a_request_set_is_served_end_to_end(tiny, server, endpoint, monkeypatch):
    _, model, _ = tiny
    monkeypatch.setenv("TC_TEST_KEY", "sk-secret-77")  # sent as a Bearer token, recorded nowhere
    options = {
        "base_url": server.base_url,
        "model": server.model,
        "endpoint": endpoint,
        "length_control": "transformers",
        "api_key_env": "TC_TEST_KEY",
    }
    # the cell's way in: the model family's tokenizer (here the checkpoint's) decodes the prompts
    engine = engine_for_cell(options, max_num_seqs=2, tokenizer=server.model)
    # transformers serve takes text only: auto falls back to the word tokenizer's text
    assert engine.info.prompt_form == "text" and engine.policy == LengthPolicy(True, False)
    requests = _requests(6, "poisson", 40.0)
    result = engine.serve(requests)
    # the cell's own strict check holds: exact lengths, clocks in order, window, schedule
    from tokencarbon.cell import check_serving_result

    check_serving_result(result, requests, "test")
    for rec, req in zip(sorted(result.requests, key=lambda r: r.request_id), requests):
        assert rec.output_tokens == 4 + 3 * int(req.request_id[1:])  # asked, forced past EOS
        assert rec.input_tokens == len(req.prompt)  # one word per id, no special tokens
        assert rec.arrival_ns <= rec.first_token_ns <= rec.finish_ns
        assert rec.arrival_wall_ns <= rec.first_token_wall_ns <= rec.finish_wall_ns
        # the tokens are transformers' own greedy answer, EOS ignored
        assert (
            engine.texts[req.request_id].split()
            == words(_greedy(model, req.prompt, req.output_len)).split()
        )
    # never more than max_num_seqs requests between sending and finishing
    spans = [(d["queued_ns"] + rec.arrival_ns, rec.finish_ns) for d, rec in zip(
        engine.details, sorted(result.requests, key=lambda r: int(r.request_id[1:])))]  # fmt: skip
    events = sorted(
        [(a, 1) for a, _ in spans] + [(f, -1) for _, f in spans], key=lambda e: (e[0], e[1])
    )
    running = most = 0
    for _, change in events:
        running += change
        most = max(most, running)
    assert most <= 2
    summary = check_server_result(result, requests, "test", engine.policy)
    assert summary["requests_short"] == 0
    assert summary["output_tokens_served"] == sum(4 + 3 * i for i in range(6)) == 69
    assert engine.describe()["last_serve"]["requests"] == 6
    assert "sk-secret-77" not in json.dumps(engine.describe(), default=str) + repr(engine.settings)


def test_unforced_lengths_are_recorded_and_the_relaxed_check_flags_them(tiny, server):
    _, model, eos = tiny
    engine = _engine(server, max_num_seqs=4, length_control="none")
    assert engine.policy.output_exact is False
    requests = [Request("a", PROMPT_A, 6), *_requests(3)]
    result = engine.serve(requests)
    served = {rec.request_id: rec.output_tokens for rec in result.requests}
    # by the reference: the answer up to and including its first EOS, at most the length asked
    expected = {}
    for req in requests:
        answer = _greedy(model, req.prompt, req.output_len)
        expected[req.request_id] = answer.index(eos) + 1 if eos in answer else req.output_len
    assert expected["a"] == 3 and served == expected
    from tokencarbon.cell import check_serving_result

    with pytest.raises(TokencarbonError, match=r"served \d+ prompt and \d+ output tokens; its"):
        check_serving_result(result, requests, "strict")
    summary = check_server_result(result, requests, "relaxed", engine.policy)
    assert summary["lengths_forced"] is False
    assert summary["requests_short"] == sum(expected[r.request_id] < r.output_len for r in requests)
    assert summary["output_tokens_served"] == sum(expected.values())
    assert summary["output_tokens_asked"] == 6 + 4 + 7 + 10
    # forced, the same short answer is an error
    with pytest.raises(TokencarbonError, match=r"asked \d+ output tokens with the length forced"):
        check_server_result(result, requests, "forced", LengthPolicy(True, False))


def test_a_request_the_server_refuses_fails_the_serve_naming_it(server):
    engine = _engine(server, max_num_seqs=2)
    too_long = Request(
        "long", tuple(i % VOCAB for i in range(300)), 4
    )  # the model has 256 positions
    with pytest.raises(
        ServerError, match=r"request 'long' to .*/completions: HTTP 400: .*300 tokens"
    ):
        engine.serve([*_requests(2), too_long])


def test_a_stalled_server_times_out(server):
    engine = _engine(server, max_num_seqs=1, read_timeout_s=1.0)
    os.kill(server.proc.pid, signal.SIGSTOP)  # the API server: connections queue, nothing answers
    try:
        start = time.monotonic()
        with pytest.raises(
            ServerError, match=r"request 'r0' .* no answer for .*read_timeout_s = 1\.0"
        ):
            engine.serve(_requests(2))
        assert time.monotonic() - start < 10
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
    slow = _engine(server, max_num_seqs=1, request_timeout_s=0.05)
    with pytest.raises(
        ServerError, match=r"request 'x' .* not finished within .*request_timeout_s"
    ):
        slow.serve([Request("x", PROMPT_A, 1500)])


def test_doctor_reports_a_working_server(server):
    raw = {"base_url": server.base_url, "model": server.model, "length_control": "transformers"}
    checks = doctor(raw, platform_kind="cpu", tokenizer=server.model)
    assert [(c.name, c.ok) for c in checks] == [
        ("settings", True), ("api key", True), ("endpoint", True), ("model", True),
        ("prompt and lengths", True), ("energy", True)]  # fmt: skip
    assert "prompts as text" in checks[4].detail and "modeled_cpu" in checks[5].detail
    wrong = doctor(raw | {"model": "nope"}, platform_kind="cpu")
    assert ("model", False) in [(c.name, c.ok) for c in wrong]


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_present(), reason="no NVIDIA GPU and driver")
def test_a_server_on_the_gpu_is_found_leased_sampled_and_watched(tmp_path):
    """transformers serve on GPU 0 (NVML index 0, whatever CUDA_VISIBLE_DEVICES says to CUDA):
    NVML finds its model process there, the watch counts it as the server's (not foreign), the
    lease takes the GPU, and its power sidecar samples while a request set is served."""
    from tokencarbon.energy import cell_energy
    from tokencarbon.lease import cuda_device_nvml_index
    from tokencarbon.power.sidecar import PowerSidecar, read_samples

    _require_serving()
    checkpoint, _, _ = _tiny_checkpoint(tmp_path)
    uuids = sg.nvml_uuids_here()
    visible = sg.visible_devices()
    first = cuda_device_nvml_index(0, uuids)  # the GPU `--device cuda:0` puts the server on
    server = TinyServer(checkpoint, tmp_path / "serve.log", device="cuda:0")
    server.start()
    try:
        gpus = sg.resolve_gpus([first])
        assert gpus[0].uuid == uuids[first] and gpus[0].name
        by_nvml = sg.server_processes(gpus)  # no pid given: whatever NVML lists there but us
        processes = sg.server_processes(gpus, pid=server.proc.pid)
        spec = sg.sidecar_specs(gpus, uuids, visible)[0]
        engine = _engine(server, max_num_seqs=4)
        requests = _requests(8)
        with sg.lease_server_gpus(tmp_path / "leases", gpus, cell="gpu-test", timeout_s=5):
            watch = sg.ServerGpuWatch(gpus, processes, interval_s=0.2)
            watch.start()
            with PowerSidecar(spec, tmp_path / "power.parquet", 0.05):
                result = engine.serve(requests)
            foreign = watch.stop()
        samples = read_samples(tmp_path / "power.parquet")
        energy = cell_energy(samples, result.start_wall_ns, result.end_wall_ns, 0.0)
        print(json.dumps({"gpu": gpus[0].name, "energy": energy.__dict__, "watch": foreign,
                          "nvml_pids": sorted(by_nvml.pids()),
                          "server_tree": sorted(processes.pids())}, default=str))  # fmt: skip
        from tokencarbon.cell import check_serving_result

        check_serving_result(result, requests, "gpu")
        assert energy.energy_j > 0 and energy.n_samples > 0
        model_pid = server.model_process()
        if not by_nvml.pids() & processes.pids():
            pytest.skip(f"NVML lists pids {sorted(by_nvml.pids())} of another pid namespace (a "
                        f"container): none is the server's {sorted(processes.pids())}")  # fmt: skip
        assert model_pid in by_nvml.pids()
        assert foreign["pids_mapped"] and foreign["foreign_gpu_processes"] == 0, foreign
        assert {p["pid"]: p for p in foreign["processes"]}[model_pid]["server"] is True
    finally:
        server.stop()


def test_a_server_dying_mid_stream_fails_the_serve(tiny, server):
    """Last in the module: the server stops for good once its model process dies (the fixture
    would start a new one for a test after it)."""
    engine = _engine(server, max_num_seqs=2)
    victim = server.model_process()
    posts = server.log.read_text().count("POST /v1/completions")
    stop = threading.Event()

    def kill_once_streaming() -> None:
        # uvicorn logs a POST when its streamed answer starts; 1,900 tokens take ~3 s on a
        # 2-core CPU, so 0.3 s after that the answer is under way
        while not stop.is_set() and server.log.read_text().count("POST /v1/completions") <= posts:
            time.sleep(0.01)
        if not stop.wait(0.3):
            os.kill(victim, signal.SIGKILL)

    killer = threading.Thread(target=kill_once_streaming, daemon=True)
    killer.start()
    try:
        with pytest.raises(
            ServerError,
            match=r"request 'long' .* error mid-stream, after \d+ "
            r"events: The model's process crashed .* nothing of this serve is kept",
        ):
            engine.serve([Request("long", PROMPT_A, 1900), Request("short", PROMPT_A, 1)])
    finally:
        stop.set()
        killer.join()
    assert engine.details == []  # nothing recorded as served

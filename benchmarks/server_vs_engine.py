"""One request set through `transformers serve` (continuous batching) and through tokencarbon's
in-process engine (TorchServingEngine, paged KV) on one card: issue 25, item 5.

    python benchmarks/server_vs_engine.py            # one GPU: Llama-3.1-8B architecture, bf16
    python benchmarks/server_vs_engine.py --smoke    # the CPU: a tiny Llama, a few requests

Steps, each capped (seconds; the whole run within --budget-s):
1. checkpoint: the model with seeded dummy weights (transformers' own init, torch.manual_seed(0))
   saved with save_pretrained, in a subprocess (its CUDA context ends with it, so no process of
   this script holds the card while cells measure it), into a Hugging Face cache layout
   (<work>/hub/models--tokencarbon--<name>/snapshots/<hash>/) so that both transformers 5.17's
   `/v1/models` (which lists the cache, not the model it was started with) and 5.25's (which lists
   that model) name it as the server's model. Its tokenizer: a word-level one whose words are the
   synthetic workload's 2,000 words (tokencarbon.synthetic) then "w<i>" fillers up to the model's
   vocabulary, so a prompt's text re-tokenizes to exactly its ids on the server and every
   generated id decodes to text (each stream event carries its token). GPU: Llama-3.1-8B
   (resources/models/llama-3.1-8b.json through models.to_hf_config), bf16, made on the GPU;
   --smoke: a 2-layer Llama of hidden size 64 and a 2,048-word vocabulary, float32.
2. engine cell: a Snakemake project (this checkout's Snakefile, workflow/ and resources/ linked)
   whose config measures the checkpoint with backend torch, cell cb<max_num_seqs> only
   (TorchServingEngine, paged): `snakemake results/cells/<platform>/<model>/cb<n>/meta.json`.
   First, because its time is the better known: a server cut by the budget leaves its numbers.
3. server: `transformers serve <model> --continuous-batching` (this interpreter's transformers),
   the card its only visible device, ready when /v1/models lists the model.
4. server cell: the same config in a second project but backend openai_server pointing at the
   server (server_pid, and on a GPU gpus: [index]) and sweep.batch_sizes [] (the torch config
   lists batch 1, as every torch sweep must; no static cell is asked for): the same workload
   (same seed, tokenizer, bounds and num_prompts, so the same request set: checked request by
   request below), measured as every server cell is (lease, idle window, power sidecar, warm-up,
   the request set with at most max_num_seqs in flight, lengths forced through length_control
   transformers and checked). Then the server is stopped. Both Snakemake calls see only the
   card (CUDA_VISIBLE_DEVICES = its UUID).
5. record: each cell's metrics row computed by tokencarbon.metrics.compute_all on its own files
   (tokencarbon.aggregate; energy through tokencarbon.energy, as rule compute_metrics does), ITL
   from the engine's steps.parquet (a server's stream does not time its tokens one by one:
   openai_server's docstring), the ratios server / engine, versions and the device; written to
   $OUT/<gpu>-server-vs-engine.json when OUT is set (and beside it -cells.tar.gz: both cells'
   folders, workloads and logs, to commit), else benchmarks/results/ (`cpu-` with --smoke), and a
   short table printed last.

Expected on one H100 with the defaults (192 requests of the synthetic set within 4..256 tokens a
side, ~35,000 output tokens, max_num_seqs 64): checkpoint ~60 s (16 GB made on the GPU and
written), engine cell ~90 s (workload stages, checkpoint load, graph capture, ~10 s of serving),
server start ~60 s, server cell ~180 s (transformers 5.17's continuous batching measured 365 tok/s
at 64 in process on an H200, docs/architecture.md: ~100 s of serving, and its warm-up serves the
first 64 requests whole, ~45 s): about 6.5 minutes. --budget-s 470 caps the whole run (a step is
cut where it would pass it, and the record says which); a server at half that rate would be cut:
then --num-prompts 128.
--smoke on a 2-core CPU: about 2-3 minutes.

The GPU machine (no network; torch 2.11, transformers 5.17) lacks transformers[serving]'s extras:
they travel as wheels in .whl-serve/ (fastapi, uvicorn, starlette, openai, jiter, sniffio,
opentelemetry-api; pydantic and httpx2 are in .whl/), built here with
`WHEELHOUSE=.whl-serve ../shared/device/wheelhouse.sh fastapi uvicorn "openai>=1.98.0" starlette
pydantic==2.14.4 pydantic-core==2.50.5` less the wheels .whl/ holds, and installed with .whl/:

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
        .whl/*.whl .whl-serve/*.whl && export PYTHONPATH=/tmp/site:$PWD/workflow \
        PATH=/tmp/site/bin:$PATH PYTHONUNBUFFERED=1 && python3 benchmarks/server_vs_engine.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform as pyplatform
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "workflow"))

MODEL_KEY = "llama-3.1-8b"
HUB_ORG = "tokencarbon"
SNAPSHOT = "0" * 40  # the cache layout's commit hash (any 40 hex digits; refs/main names it)
# --smoke's model: 2 layers, hidden 64, 4 heads of 16, 2 KV heads, MLP 96; 2,048 words hold the
# synthetic vocabulary's 2,000 (tokencarbon.synthetic.VOCAB_WORDS)
SMOKE_SHAPE = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=96,
    vocab_size=2048,
    max_position_embeddings=1024,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
)
# Caps of the steps, seconds (GPU, smoke); the whole run is also held within --budget-s.
CAPS = {
    "checkpoint": (150, 120),
    "server_start": (180, 240),
    "server_cell": (330, 420),
    "engine_cell": (240, 420),
}
POLL_S = 0.5


# ---------------------------------------------------------------- step 1: checkpoint


def hub_paths(work: Path, name: str) -> tuple[Path, Path, str]:
    """(hub cache folder, snapshot folder, model id) of the model `name` saved under work/hub."""
    hub = work / "hub"
    repo = hub / f"models--{HUB_ORG}--{name}"
    return hub, repo / "snapshots" / SNAPSHOT, f"{HUB_ORG}/{name}"


def save_tokenizer(path: Path, vocab_size: int) -> None:
    """A word-level tokenizer of vocab_size words: the synthetic workload's words (ids 0..1999, in
    tokencarbon.synthetic's order) then "w<i>" up to vocab_size; whitespace-split, joined by
    spaces on decoding; no special token but the pad token the workload stage needs (the last
    word, which no synthetic prompt holds). Raises ValueError when vocab_size cannot hold them."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    from tokencarbon.synthetic import synthetic_vocabulary

    words = synthetic_vocabulary()[0]
    if vocab_size < len(words) + 1:
        raise ValueError(f"vocab_size {vocab_size} < {len(words) + 1} (synthetic words + pad)")
    words = words + [f"w{i}" for i in range(len(words), vocab_size)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece()  # words joined by single spaces
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=words[-1])
    fast.save_pretrained(path)


def save_checkpoint(snapshot: Path, smoke: bool) -> dict[str, Any]:
    """The model with seeded dummy weights saved at `snapshot` (save_pretrained) with its
    tokenizer, and refs/main naming the snapshot (a Hugging Face cache entry). Returns facts for
    the record (parameters, dtype, seconds, bytes on disk)."""
    import torch
    import transformers

    from tokencarbon.models import load_architecture, to_hf_config

    t0 = time.monotonic()
    torch.manual_seed(0)
    if smoke:
        config = transformers.AutoConfig.for_model("llama", **SMOKE_SHAPE)
        dtype, device = torch.float32, "cpu"
    else:
        config = to_hf_config(load_architecture("llama-3.1-8b", REPO))
        dtype, device = torch.bfloat16, "cuda"
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
    params = sum(p.numel() for p in model.parameters())
    made_s = time.monotonic() - t0
    model.save_pretrained(snapshot)
    save_tokenizer(snapshot, config.vocab_size)
    (snapshot.parents[1] / "refs").mkdir(parents=True, exist_ok=True)
    (snapshot.parents[1] / "refs" / "main").write_text(snapshot.name)
    return {
        "parameters": params,
        "dtype": str(dtype).removeprefix("torch."),
        "made_on": device,
        "made_s": made_s,
        "saved_s": time.monotonic() - t0 - made_s,
        "bytes": sum(f.stat().st_size for f in snapshot.iterdir()),
    }


# ---------------------------------------------------------------- step 2: the server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`transformers serve` of one model, started as a process group of its own."""

    def __init__(self, model_id: str, hub: Path, log: Path, device: dict[str, Any], smoke: bool):
        self.model_id, self.hub, self.log, self.device, self.smoke = (
            model_id,
            hub,
            log,
            device,
            smoke,
        )
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def command(self) -> list[str]:
        """The serve command (its flags exist in transformers 5.17 and 5.25)."""
        args = [
            sys.executable,
            "-m",
            "transformers.cli.transformers",
            "serve",
            self.model_id,
            "--continuous-batching",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        if self.smoke:  # a small KV pool for the CPU (transformers sizes it from GPU memory)
            return args + [
                "--device",
                "cpu",
                "--dtype",
                "float32",
                "--cb-num-blocks",
                "64",
                "--cb-block-size",
                "32",
                "--cb-max-batch-tokens",
                "256",
            ]
        return args + ["--device", "cuda:0", "--dtype", "bfloat16"]

    def env(self) -> dict[str, str]:
        env = dict(
            os.environ, HF_HUB_CACHE=str(self.hub), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1"
        )
        if self.device["kind"] == "gpu":  # the measured card only, by UUID
            env["CUDA_VISIBLE_DEVICES"] = self.device["uuid"]
        return env

    def start(self, timeout_s: float) -> float:
        """Start it and wait until /v1/models lists the model; returns the seconds that took.
        Raises RuntimeError (with the log's tail) when it exits or is not ready in timeout_s."""
        import httpx2

        t0 = time.monotonic()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env(),
                start_new_session=True,
            )
        while time.monotonic() - t0 < timeout_s:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"transformers serve exited ({self.proc.returncode}): " f"{self.tail()}"
                )
            try:
                r = httpx2.get(f"{self.base_url}/models", timeout=5)
                if r.status_code == 200 and self.model_id in {m["id"] for m in r.json()["data"]}:
                    return time.monotonic() - t0
            except (httpx2.TransportError, ValueError, KeyError):
                pass
            time.sleep(POLL_S)
        raise RuntimeError(
            f"transformers serve did not list {self.model_id} in {timeout_s:.0f} s:"
            f" {self.tail()}"
        )

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def stop(self) -> None:
        """SIGTERM to its group (SIGKILL after 30 s); waits for it."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


# ---------------------------------------------------------------- steps 3-4: the cells


def study_config(a, device: dict[str, Any], snapshot: Path, backend: dict[str, Any]) -> dict:
    """The config both projects share, with `backend`: one model (the saved checkpoint), the
    synthetic workload within the family's bounds, cells cb<max_num_seqs> only (the torch config
    lists batch 1 as every torch sweep must; no static cell is asked for)."""
    platform = device["platform"]
    if device["kind"] == "cpu":
        # this CPU's peaks measured (rule measure_platform); the TDP share is the default
        # config's assumption (config/config.yaml: an EPYC 7763's 280 W x 2/128 threads)
        pconf = {
            "memory_limit_gb": 0.5,
            "spec": {
                "measure": True,
                "logical_cpus": os.cpu_count(),
                "tdp_w": 4.375 * os.cpu_count() / 2,
            },
        }
    else:
        pconf = {}
    return {
        "seed": 0,
        "platforms": {platform: pconf},
        "families": {
            "words": {"tokenizer": str(snapshot), "min_tokens": 4, "max_tokens": a.max_tokens}
        },
        "models": {
            MODEL_KEY: {
                "architecture": "auto" if a.smoke else "llama-3.1-8b",
                "checkpoint": str(snapshot),
                "family": "words",
                "dtype": "float32" if a.smoke else "bfloat16",
            }
        },
        "workload": {
            "source": "synthetic",
            "num_prompts": a.num_prompts,
            "synthetic_conversations": 2000,
        },
        "backend": backend,
        "sweep": {
            "batch_sizes": [] if backend["name"] == "openai_server" else [1],
            "max_batch": max(1, a.max_num_seqs),
            "max_num_seqs": [a.max_num_seqs],
        },
        "serving": {"arrival": "offline"},
        "run": {"repeats": 1},
        "power": {
            "interval_s": 0.05 if device["kind"] == "gpu" else 0.1,
            "idle_s": 5.0 if device["kind"] == "gpu" else 1.0,
        },
        "carbon": {"source": "constant", "intensity_g_per_kwh": 413, "pue": 1.0},
    }


def make_project(path: Path, config: dict[str, Any]) -> Path:
    """A Snakemake project at `path`: this checkout's Snakefile, workflow/, resources/ and
    profiles/ linked, config/config.yaml written."""
    import yaml

    path.mkdir(parents=True)
    for name in ("Snakefile", "workflow", "resources", "profiles"):
        (path / name).symlink_to(REPO / name)
    (path / "config").mkdir()
    (path / "config/config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def snakemake(
    project: Path, targets: list[str], timeout_s: float, log: Path, env: dict[str, str]
) -> float:
    """`snakemake --cores N targets` in `project` with `env` added to this environment, output to
    `log`; returns its seconds. Raises RuntimeError with the log's tail on failure or past
    timeout_s (its process group killed)."""
    cmd = [sys.executable, "-m", "snakemake", *targets, "--cores", str(os.cpu_count() or 1)]
    target = " ".join(targets)
    t0 = time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=project,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=os.environ | env,
            start_new_session=True,
        )
        try:
            rc = proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGINT)  # Snakemake's own stop: jobs ended, outputs removed
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            raise RuntimeError(
                f"snakemake {target} passed its cap of {timeout_s:.0f} s: "
                f"{log.read_text(errors='replace')[-2000:]}"
            ) from None
    if rc != 0:
        raise RuntimeError(
            f"snakemake {target} failed ({rc}): " f"{log.read_text(errors='replace')[-3000:]}"
        )
    return time.monotonic() - t0


def cell_record(project: Path, cell_dir: Path) -> dict[str, Any]:
    """The cell's METRICS row (tokencarbon.metrics.compute_all over its own files, as rule
    compute_metrics computes it, with the project's plan), what meta.json says of it, and ITL
    from its steps (none for a server cell)."""
    import pandas as pd

    from tokencarbon import tables
    from tokencarbon.aggregate import aggregate
    from tokencarbon.carbon import CarbonAccounting
    from tokencarbon.metrics import MetricsSettings, compute_all, resolve_cell_platforms
    from tokencarbon.models import architecture_from_dict
    from tokencarbon.peak import read_measurement
    from tokencarbon.plan import Plan

    plan = Plan.from_configfile(project / "config/config.yaml", REPO)
    params = plan.metrics_params()
    t = aggregate([cell_dir])
    archs = {a: architecture_from_dict(d, a) for a, d in params["architectures"].items()}
    measured = {
        p.parent.name: read_measurement(p, p.parent.name)
        for p in (project / "results/platforms").glob("*/spec.json")
    }
    platforms = resolve_cell_platforms(
        t.cells, params["platform_specs"], measurements=measured, rows=params["platform_rows"]
    )
    metrics, _ = compute_all(
        t.cells,
        t.batches,
        t.power,
        archs,
        platforms,
        CarbonAccounting.from_config(params["carbon"], None),
        requests=t.requests,
        steps=t.steps,
        settings=MetricsSettings.from_params(params["metrics"]),
    )
    row = metrics.iloc[0].to_dict()
    meta = json.loads((cell_dir / "meta.json").read_text())
    steps = tables.read(cell_dir / "steps.parquet", tables.STEPS)
    requests = tables.read(cell_dir / "requests.parquet", tables.REQUESTS)
    return {
        "row": row,
        "meta": meta,
        "itl_s": itl_quantiles(steps),
        "requests": requests,
        "steps": len(steps),
        "flops_known": pd.notna(row.get("flops")),
    }


def itl_quantiles(steps) -> dict[str, float] | None:
    """p50/p99 of the inter-token latency (s): per request, between the ends of consecutive steps
    that gave it an output token (benchmarks/serving.py's token_times); None without steps (a
    server's) or without per-step token counts."""
    import numpy as np

    if not len(steps) or steps["new_tokens"].isna().any():
        return None
    times: dict[str, list[int]] = {}
    for end, ids, new in zip(steps["end_ns"], steps["request_ids"], steps["new_tokens"]):
        for rid, n in zip(ids, new):
            if n:
                times.setdefault(rid, []).append(int(end))
    gaps = np.array([b - a for t in times.values() for a, b in zip(t, t[1:])], dtype=float) / 1e9
    if not len(gaps):
        return None
    return {
        "p50": float(np.percentile(gaps, 50)),
        "p99": float(np.percentile(gaps, 99)),
        "n": int(len(gaps)),
    }


# ---------------------------------------------------------------- the record


FIELDS = (
    "n_requests",
    "input_tokens",
    "output_tokens",
    "window_s",
    "energy_j",
    "energy_method",
    "idle_power_w",
    "tokens_per_s",
    "j_per_token",
    "tokens_per_s_steady",
    "j_per_token_steady",
    "steady_window_s",
    "ttft_p50_s",
    "ttft_p99_s",
    "tpot_p50_s",
    "tpot_p99_s",
    "e2e_p50_s",
    "e2e_p99_s",
    "g_per_token",
    "qa_flags",
)


def summarize(cell: dict[str, Any], lengths_forced: bool) -> dict[str, Any]:
    """The record's entry of one cell: FIELDS of its metrics row, mean power over the window,
    ITL, lengths, and from meta.json the device, versions, foreign use and server facts."""
    import math

    row, meta = cell["row"], cell["meta"]
    out = {k: _plain(row.get(k)) for k in FIELDS}
    out["mean_power_w"] = row["energy_j"] / row["window_s"] if row["window_s"] else math.nan
    out["itl_p50_s"] = None if cell["itl_s"] is None else cell["itl_s"]["p50"]
    out["itl_p99_s"] = None if cell["itl_s"] is None else cell["itl_s"]["p99"]
    out["itl_note"] = (
        "between consecutive output tokens of a request, from the engine's steps"
        if cell["itl_s"] is not None
        else "not observable: a server's stream is not timed token by token (events may merge "
        "tokens); TPOT is the per-token figure both share"
    )
    out["lengths_forced"] = lengths_forced
    out["engine_steps"] = cell["steps"]
    for key in (
        "backend",
        "mode",
        "batch_size",
        "device_name",
        "power_source",
        "versions",
        "foreign_use",
        "server",
        "engine_description",
        "warmup",
        "peak_memory_bytes",
    ):
        if key in meta:
            out[key] = meta[key]
    return out


def _plain(v):
    if hasattr(v, "item"):
        return v.item()
    return v


def same_request_set(a, b) -> dict[str, Any]:
    """Whether two cells served the same requests: ids, and per id the output tokens served
    (forced: the workload's) and prompt tokens (the server's count of the re-tokenized text)."""
    key = ["request_id", "input_tokens", "output_tokens"]
    x = a[key].sort_values("request_id").reset_index(drop=True)
    y = b[key].sort_values("request_id").reset_index(drop=True)
    return {
        "requests": [len(x), len(y)],
        "ids_equal": list(x["request_id"]) == list(y["request_id"]),
        "input_tokens_equal": list(x["input_tokens"]) == list(y["input_tokens"]),
        "output_tokens_equal": list(x["output_tokens"]) == list(y["output_tokens"]),
    }


def ratios(server: dict[str, Any], engine: dict[str, Any]) -> dict[str, float | None]:
    """server / engine for each number both have."""
    out = {}
    for k in (
        "tokens_per_s",
        "j_per_token",
        "mean_power_w",
        "ttft_p50_s",
        "ttft_p99_s",
        "tpot_p50_s",
        "tpot_p99_s",
        "e2e_p50_s",
        "e2e_p99_s",
        "window_s",
    ):
        s, e = server.get(k), engine.get(k)
        out[k] = s / e if isinstance(s, float | int) and isinstance(e, float | int) and e else None
    return out


def table(record: dict[str, Any]) -> str:
    rows = [("", "server", "engine", "server/engine")]
    s, e, r = record["server"] or {}, record["engine"] or {}, record["ratios"] or {}

    def f(v, spec):
        return "-" if v is None else format(v, spec)

    for key, spec, label in (
        ("tokens_per_s", ".1f", "output tok/s"),
        ("j_per_token", ".4g", "J/token"),
        ("mean_power_w", ".1f", "mean W"),
        ("ttft_p50_s", ".3g", "TTFT p50 s"),
        ("ttft_p99_s", ".3g", "TTFT p99 s"),
        ("tpot_p50_s", ".3g", "TPOT p50 s"),
        ("tpot_p99_s", ".3g", "TPOT p99 s"),
        ("itl_p50_s", ".3g", "ITL p50 s"),
        ("itl_p99_s", ".3g", "ITL p99 s"),
        ("window_s", ".1f", "window s"),
    ):
        rows.append((label, f(s.get(key), spec), f(e.get(key), spec), f(r.get(key), ".3g")))
    width = [max(len(x[i]) for x in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(x, width)) for x in rows)


# ---------------------------------------------------------------- the device


def detect_device(smoke: bool, gpu_index: int) -> dict[str, Any]:
    """The measured device, found without starting CUDA in this process (NVML): {"kind",
    "name", "platform" (the resources/platforms.csv row its name matches), "index", "uuid",
    "prefix" (the record's file prefix)}. --smoke: the CPU, platform "cpu". Raises SystemExit
    naming what is missing: no NVIDIA GPU without --smoke, a name no row matches."""
    from tokencarbon.hardware import cpu_model_name
    from tokencarbon.platforms import rows_matching

    if smoke:
        return {
            "kind": "cpu",
            "name": cpu_model_name(),
            "platform": "cpu",
            "index": None,
            "uuid": None,
            "prefix": "cpu",
        }
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        raise SystemExit(f"no NVIDIA GPU here ({exc}); run with --smoke on a CPU") from exc
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(gpu_index)
        name, uuid = pynvml.nvmlDeviceGetName(handle), pynvml.nvmlDeviceGetUUID(handle)
    finally:
        pynvml.nvmlShutdown()
    name = name.decode() if isinstance(name, bytes) else name
    uuid = uuid.decode() if isinstance(uuid, bytes) else uuid
    rows = rows_matching(name)
    if len(rows) != 1:
        raise SystemExit(
            f"GPU {gpu_index} {name!r} matches rows {rows} of resources/platforms.csv;"
            " one row is needed for the cells' platform"
        )
    return {
        "kind": "gpu",
        "name": name,
        "platform": rows[0],
        "index": gpu_index,
        "uuid": uuid,
        "prefix": rows[0].split("-")[0],
    }


# ---------------------------------------------------------------- main


def serving_versions() -> dict[str, str]:
    """Installed versions of what `transformers serve` runs on (transformers[serving])."""
    from importlib import metadata

    out = {}
    for name in (
        "transformers",
        "fastapi",
        "uvicorn",
        "starlette",
        "openai",
        "pydantic",
        "huggingface_hub",
        "tokenizers",
    ):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def check_serving() -> None:
    """Fail before any device work where `transformers serve` cannot start: its extra packages
    (fastapi, uvicorn, openai, pydantic: transformers[serving]) missing or not importable with
    this transformers. Raises RuntimeError naming what failed."""
    from transformers.utils.import_utils import is_serve_available

    if not is_serve_available():
        raise RuntimeError(
            f"transformers serve needs fastapi, uvicorn, openai and pydantic "
            f"(transformers[serving]); found {serving_versions()}: install them (on the GPU "
            "machine: the wheels of .whl-serve/, this script's docstring)"
        )
    try:
        import transformers.cli.serving.completion  # noqa: F401  (fastapi and openai's types)
        import uvicorn  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any import error stops the run here
        raise RuntimeError(f"transformers serve's modules do not import: {exc!r}") from exc


class Budget:
    """The run's deadline: cap(step) is the step's cap, cut to what is left."""

    def __init__(self, total_s: float, smoke: bool) -> None:
        self.end, self.smoke = time.monotonic() + total_s, smoke

    def cap(self, step: str) -> float:
        left = self.end - time.monotonic()
        if left < 10:
            raise RuntimeError(f"--budget-s spent before step {step}")
        return min(CAPS[step][1 if self.smoke else 0], left)


def run(a) -> dict[str, Any]:
    from tokencarbon.hardware import git_commit, software_versions

    device = detect_device(a.smoke, a.gpu)
    budget = Budget(a.budget_s, a.smoke)
    work = Path(tempfile.mkdtemp(prefix="server-vs-engine-", dir=a.work_dir))
    hub, snapshot, model_id = hub_paths(work, "llama-3.1-8b-dummy" if not a.smoke else "tiny-llama")
    timings: dict[str, float] = {}
    record: dict[str, Any] = {
        "benchmark": "server_vs_engine",
        "issue": 25,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "device": device,
        "host": {"python": pyplatform.python_version(), "cpus": os.cpu_count()},
        "versions": software_versions() | {"serving": serving_versions()},
        "git_commit": git_commit(),
        "workload": {
            "source": "synthetic (tokencarbon.synthetic, seed 0)",
            "num_prompts": a.num_prompts,
            "tokens_per_side": [4, a.max_tokens],
            "arrival": "offline",
            "max_num_seqs": a.max_num_seqs,
            "tokenizer": "word-level over the synthetic words (exact round trip)",
        },
        "server_command": None,
        "server": None,
        "engine": None,
        "ratios": None,
        "same_request_set": None,
        "timings_s": timings,
        "error": None,
        "work_dir": str(work),
    }
    server = None
    try:
        check_serving()
        t0 = time.monotonic()
        proc = subprocess.run(
            [sys.executable, __file__, "_save", str(snapshot)] + (["--smoke"] if a.smoke else []),
            capture_output=True,
            text=True,
            timeout=budget.cap("checkpoint"),
        )
        if proc.returncode != 0:
            raise RuntimeError(f"saving the checkpoint failed: {proc.stderr[-3000:]}")
        record["checkpoint"] = json.loads(proc.stdout.strip().splitlines()[-1])
        record["checkpoint"]["model_id"] = model_id
        timings["checkpoint"] = time.monotonic() - t0
        print(f"checkpoint saved in {timings['checkpoint']:.1f} s", flush=True)

        cell = f"results/cells/{device['platform']}/{MODEL_KEY}/cb{a.max_num_seqs}"
        # both cells on the server's card: the engine cell leases a visible GPU, and the server
        # cell's sidecar reads its card as CUDA device 0 under this (server_gpus.sidecar_specs)
        env = {"CUDA_VISIBLE_DEVICES": device["uuid"]} if device["kind"] == "gpu" else {}
        # the CPU's peaks, measured (its spec's measure: true), for the metrics' MFU and MBU
        targets = [f"{cell}/meta.json"] + (
            [f"results/platforms/{device['platform']}/spec.json"] if a.smoke else []
        )

        # the engine first (a minute or two on a GPU, the server's time is the less certain): a
        # server cut by the budget still leaves the engine's numbers in the record
        p_engine = make_project(
            work / "engine", study_config(a, device, snapshot, {"name": "torch"})
        )
        timings["engine_cell"] = snakemake(
            p_engine, targets, budget.cap("engine_cell"), work / "engine.log", env
        )
        print(f"engine cell in {timings['engine_cell']:.1f} s", flush=True)
        engine_cell = cell_record(p_engine, p_engine / cell)
        record["engine"] = summarize(engine_cell, lengths_forced=True)

        # the server starts once the engine cell's process has ended (the card is free)
        server = Server(model_id, hub, work / "serve.log", device, a.smoke)
        record["server_command"] = " ".join(server.command()[1:])
        timings["server_start"] = server.start(budget.cap("server_start"))
        print(f"server ready in {timings['server_start']:.1f} s", flush=True)
        options = {
            "base_url": server.base_url,
            "model": model_id,
            "prompt": "text",
            "length_control": "transformers",
            "server_pid": server.proc.pid,
            "read_timeout_s": 120.0,
        }
        if device["kind"] == "gpu":
            options["gpus"] = [device["index"]]
        p_server = make_project(
            work / "server",
            study_config(a, device, snapshot, {"name": "openai_server", "openai_server": options}),
        )
        timings["server_cell"] = snakemake(
            p_server, targets, budget.cap("server_cell"), work / "server.log", env
        )
        print(f"server cell in {timings['server_cell']:.1f} s", flush=True)
        server_cell = cell_record(p_server, p_server / cell)
        server.stop()
        forced = bool(server_cell["meta"]["server"]["lengths_forced"])
        record["server"] = summarize(server_cell, lengths_forced=forced)
        record["ratios"] = ratios(record["server"], record["engine"])
        record["same_request_set"] = same_request_set(
            server_cell["requests"], engine_cell["requests"]
        )
    except Exception as exc:  # noqa: BLE001 - the record says what failed; the server is stopped
        record["error"] = f"{type(exc).__name__}: {exc}"
        if server is not None:
            record["server_log_tail"] = server.tail()
    finally:
        if server is not None:
            server.stop()
        if a.cells_tar:  # the cells as measured (meta.json, parquet files) and the logs
            with tarfile.open(a.cells_tar, "w:gz") as tar:
                for part in ("server", "engine"):
                    for sub in ("results/cells", "results/workload", "logs"):
                        if (work / part / sub).exists():
                            tar.add(work / part / sub, arcname=f"{part}/{sub}")
                for log in ("serve.log", "server.log", "engine.log"):
                    if (work / log).exists():
                        tar.add(work / log, arcname=log)
            record["cells_tar"] = str(a.cells_tar)
        timings["total"] = sum(v for k, v in timings.items() if k != "total")
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    return record


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", nargs="?", default="run", choices=["run", "_save"])
    p.add_argument("snapshot", nargs="?", help="_save: where (internal)")
    p.add_argument("--smoke", action="store_true", help="the CPU and a tiny Llama")
    p.add_argument("--num-prompts", type=int, default=None, help="requests (192; --smoke 8)")
    p.add_argument("--max-num-seqs", type=int, default=None, help="in flight (64; --smoke 4)")
    p.add_argument(
        "--max-tokens",
        type=int,
        default=None,
        help="prompt and output tokens at most (256; --smoke 128)",
    )
    p.add_argument("--gpu", type=int, default=0, help="NVML index of the card")
    p.add_argument("--budget-s", type=float, default=None, help="the whole run (470; --smoke 900)")
    p.add_argument("--work-dir", default=None, help="parent of the temporary folder")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder")
    p.add_argument("--out", default=None, help="the record's path")
    a = p.parse_args()
    if a.what == "_save":
        print(json.dumps(save_checkpoint(Path(a.snapshot), a.smoke)))
        return 0
    for key, gpu, cpu in (
        ("num_prompts", 192, 8),
        ("max_num_seqs", 64, 4),
        ("max_tokens", 256, 128),
        ("budget_s", 470.0, 900.0),
    ):
        if getattr(a, key) is None:
            setattr(a, key, cpu if a.smoke else gpu)
    prefix = detect_device(a.smoke, a.gpu)["prefix"]
    folder = Path(os.environ.get("OUT") or HERE / "results")
    out = Path(a.out) if a.out else folder / f"{prefix}-server-vs-engine.json"
    # the cells come back beside the record where OUT is set (the GPU machine's returned folder)
    a.cells_tar = out.with_name(out.stem + "-cells.tar.gz") if os.environ.get("OUT") else None
    out.parent.mkdir(parents=True, exist_ok=True)
    record = run(a)
    out.write_text(json.dumps(record, indent=1, default=str))
    print(f"record: {out}")
    if record["error"]:
        print(f"FAILED: {record['error'][:4000]}", file=sys.stderr)
        return 1
    print(table(record))
    same = record["same_request_set"]
    print(
        f"same request set: {same}; lengths forced on the server: "
        f"{record['server']['lengths_forced']}; timings: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in record["timings_s"].items())
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

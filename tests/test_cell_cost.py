"""What a cell costs beside what it measures (issue 19): the timeline a cell records, the shared
idle window, the persistent compilation cache (a cold and a warm compile of the real decoder give
the same tokens), and the sidecar's phases in one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

from tokencarbon import idle_share, tables
from tokencarbon.compile_cache import cache_key, configure
from tokencarbon.power.sidecar import PowerSidecar, parts_dir
from tokencarbon.timeline import Timeline, process_start_wall_ns

CPU = {"kind": "modeled_cpu", "tdp_w": 65.0}


def test_timeline_phases_and_fixed_cost():
    timeline = Timeline(script_start_wall_ns=time.time_ns())
    with timeline.phase("engine_build"):
        time.sleep(0.02)
    with timeline.phase("idle_window"):
        time.sleep(0.05)
    with timeline.phase("measured"):
        time.sleep(0.03)
    record = timeline.record()
    phases = {p["phase"]: p["seconds"] for p in record["phases"]}
    assert list(phases)[-3:] == ["engine_build", "idle_window", "measured"]
    assert phases["idle_window"] >= 0.05 and phases["measured"] >= 0.03
    # fixed = every phase but measured and idle (here: process, imports and the engine build)
    assert record["fixed_s"] == pytest.approx(sum(phases.values()) - phases["measured"]
                                              - phases["idle_window"])  # fmt: skip
    with pytest.raises(ValueError, match="expected one of"):
        with timeline.phase("lunch"):
            pass
    with pytest.raises(ValueError, match="inside"):
        with timeline.phase("checks"):
            with timeline.phase("lease"):
                pass


def test_process_start_from_proc_brackets_a_real_start():
    # /proc's start time has clock-tick resolution (10 ms at 100 Hz): within a tick of the
    # interval in which the child was started.
    before = time.time_ns()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)"])
    after = time.time_ns()
    try:
        start = process_start_wall_ns(child.pid)
    finally:
        child.kill()
        child.wait()
    tick_ns = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    assert before - 2 * tick_ns <= start <= after + 2 * tick_ns


def _idle_samples(start_ns: int, n: int, watts: float) -> pd.DataFrame:
    return pd.DataFrame({
        "t_wall_ns": [start_ns + i * 100_000_000 for i in range(n)], "source": "modeled_cpu",
        "modeled": True, "device_index": 0, "power_w": watts, "power_avg_w": float("nan"),
        "energy_counter_j": float("nan"), "util_pct": 0.0, "mem_used_bytes": float("nan"),
        "temperature_c": float("nan"), "sm_clock_mhz": float("nan"),
        "mem_clock_mhz": float("nan"), "throttle_reasons": -1, "phase": "idle",
    })  # fmt: skip


def test_idle_share_keys_ages_and_refusals(tmp_path):
    assert idle_share.device_key("h100", {"gpu_index": 0, "gpu_uuid": "GPU-ab"}) == "h100_gpu-GPU-ab"
    assert idle_share.device_key("cpu", {"cpus": [3, 1]}) == "cpu_cpus-1-3"
    with pytest.raises(ValueError, match="names no GPU"):
        idle_share.device_key("cpu", {})
    # 11 samples 0.1 s apart from t0: the window ends at t0 + 1.0 s.
    t0 = 1_700_000_000_000_000_000
    samples = _idle_samples(t0, 11, 76.0)
    record = idle_share.store(tmp_path, "k", samples, "h100/llama/bs1")
    assert record["end_wall_ns"] == t0 + 1_000_000_000 and record["n_samples"] == 11
    found = idle_share.lookup(tmp_path, "k", max_age_s=10, now_wall_ns=t0 + 6_000_000_000)
    assert found is not None and found[1]["age_s"] == pytest.approx(5.0)
    assert found[0]["t_wall_ns"].tolist() == samples["t_wall_ns"].tolist()
    # 11 s after its end it is too old for 10 s; never shared at max_age 0; other devices miss
    assert idle_share.lookup(tmp_path, "k", 10, now_wall_ns=t0 + 12_000_000_000) is None
    assert idle_share.lookup(tmp_path, "k", 0, now_wall_ns=t0 + 2_000_000_000) is None
    assert idle_share.lookup(tmp_path, "other", 10, now_wall_ns=t0 + 2_000_000_000) is None
    # a record whose samples went missing counts as absent
    (tmp_path / "idle" / "k.parquet").unlink()
    assert idle_share.lookup(tmp_path, "k", 10, now_wall_ns=t0 + 2_000_000_000) is None
    with pytest.raises(ValueError, match="at least 2"):
        idle_share.store(tmp_path, "k", samples.iloc[:1], "x")


def test_compile_cache_folder_and_environment(tmp_path):
    assert cache_key("2.11.0+cu130", "NVIDIA H100 80GB HBM3") == "torch-2.11.0+cu130_NVIDIA-H100-80GB-HBM3"
    env: dict[str, str] = {}
    record = configure(tmp_path, "AMD EPYC 7763 64-Core Processor", environ=env)
    assert record["set_by"] == "tokencarbon" and record["warm"] is False
    assert env["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / record["key"] / "inductor")
    assert env["TRITON_CACHE_DIR"] == str(tmp_path / record["key"] / "triton")
    assert env["TORCHINDUCTOR_FX_GRAPH_CACHE"] == "1"
    (tmp_path / record["key"] / "inductor" / "x").parent.mkdir(parents=True)
    (tmp_path / record["key"] / "inductor" / "x").write_text("entry")
    assert configure(tmp_path, "AMD EPYC 7763 64-Core Processor", environ={})["warm"] is True
    # configured() restores the environment after its block
    import tokencarbon.compile_cache as cc

    saved = os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
    try:
        with cc.configured(tmp_path / "ctx", "cpu") as rec:
            assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(Path(rec["dir"]) / "inductor")
        assert "TORCHINDUCTOR_CACHE_DIR" not in os.environ
    finally:
        if saved is not None:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = saved
    # a folder the user set is kept
    mine = {"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "mine")}
    assert configure(tmp_path, "cpu", environ=mine)["set_by"] == "environment"
    assert mine["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "mine")


_COMPILED_DECODE = textwrap.dedent("""
    import json, sys
    from tokencarbon.compile_cache import configure
    cache = configure(sys.argv[1], "test-cpu")
    import torch
    from torch._dynamo.utils import counters
    from tokencarbon.backends.model import build_model
    from tokencarbon.models import load_architecture
    arch = load_architecture("tiny-llama")
    model = build_model(arch, "float32", "cpu", seed=0)
    decode = torch.compile(lambda t, p: model.embed_tokens(t, p)[0].sum(-1), fullgraph=True)
    logits = torch.compile(lambda x: model.lm_head(model.norm(x)).argmax(-1), fullgraph=True)
    tokens = torch.tensor([[5, 17, 301, 42]])
    x, _ = model.embed_tokens(tokens, torch.arange(4)[None])
    out = logits(x).tolist()
    print(json.dumps({"tokens": out, "cache": cache, "counters": dict(counters["inductor"])}))
""")


def test_warm_compile_cache_gives_the_same_tokens(tmp_path):
    # A real torch.compile (inductor's C++ backend on this CPU) of the model's head: the first
    # process compiles (cache miss) into a cold cache, the second loads it (cache hit); both give
    # the same greedy tokens, and the same as eager.
    def run():
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("TORCHINDUCTOR_", "TRITON_"))}  # fmt: skip
        out = subprocess.run([sys.executable, "-c", _COMPILED_DECODE, str(tmp_path)],
                             capture_output=True, text=True, timeout=600, env=env)  # fmt: skip
        assert out.returncode == 0, out.stderr[-3000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    cold, warm = run(), run()
    assert cold["cache"]["warm"] is False and warm["cache"]["warm"] is True
    assert cold["counters"].get("fxgraph_cache_miss", 0) >= 1
    assert warm["counters"].get("fxgraph_cache_hit", 0) >= 1
    assert warm["counters"].get("fxgraph_cache_miss", 0) == 0
    assert cold["tokens"] == warm["tokens"]
    import torch

    from tokencarbon.backends.model import build_model
    from tokencarbon.models import load_architecture

    model = build_model(load_architecture("tiny-llama"), "float32", "cpu", seed=0)
    with torch.no_grad():
        x, _ = model.embed_tokens(torch.tensor([[5, 17, 301, 42]]), torch.arange(4)[None])
        assert model.lm_head(model.norm(x)).argmax(-1).tolist() == cold["tokens"]


def test_one_sidecar_samples_idle_then_run(tmp_path):
    out = tmp_path / "power.parquet"
    sidecar = PowerSidecar(CPU, out, interval_s=0.05)
    sidecar.launch()  # returns at once: the process imports while we go on
    sidecar.begin("idle")
    time.sleep(0.5)
    switch_ns = time.time_ns()
    sidecar.begin("run")
    time.sleep(0.5)
    n = sidecar.stop()
    samples = sidecar.collect()
    assert not out.exists() and not parts_dir(out).exists()  # collect() cleans up
    assert len(samples) == n
    idle, run = samples[samples["phase"] == "idle"], samples[samples["phase"] == "run"]
    # each phase: its first sample, one per 0.05 s slot for 0.5 s (10), its last: 12, +-2 for
    # slots at the edges and a starved sampler on a loaded 2-core machine
    assert abs(len(idle) - 12) <= 3 and abs(len(run) - 12) <= 3
    assert idle["t_wall_ns"].max() <= switch_ns + 50_000_000 <= run["t_wall_ns"].min() + 50_000_000
    assert idle["t_wall_ns"].max() <= run["t_wall_ns"].min()
    # a sidecar stopped in standby keeps nothing
    idle_only = PowerSidecar(CPU, tmp_path / "p2.parquet", interval_s=0.05)
    idle_only.launch()
    assert idle_only.stop() == 0
    assert len(idle_only.collect()) == 0

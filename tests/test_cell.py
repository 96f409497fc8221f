"""tokencarbon.cell on this machine's CPU with a real tiny model: static and continuous cells, repeats,
leases, foreign CPU use, a batch larger than the workload, progress lines, and the checks that
refuse impossible serving records."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tokencarbon import tables
from tokencarbon.backends import Request, RequestRecord, ServingResult, StepRecord
from tokencarbon.backends.static import TorchEngine
from tokencarbon.cell import (
    Progress,
    check_serving_result,
    max_concurrent_requests,
    run_cell,
    serving_settings,
)
from tokencarbon.errors import ConfigError, TokencarbonError
from tokencarbon.lease import LeaseTimeoutError, lease_cpus

MODEL = {"name": "tiny-llama", "architecture": "tiny-llama", "dtype": "float32",
         "checkpoint": None, "seed": 0}  # fmt: skip
# One logical CPU, so a test cell leaves the other to the rest of the machine.
PLATFORM = {"name": "cpu", "kind": "cpu", "device_name_pattern": ".*", "logical_cpus": 1,
            "tdp_w": 4.375, "power_interval_s": 0.05, "idle_s": 0.2}  # fmt: skip
RUN = {"backend": "torch", "cuda_graphs": True, "compile_decode": False, "warmup_batches": 1}


def workload(n: int) -> pd.DataFrame:
    """n requests, request i: a prompt of 3 + i tokens, 2 + i output tokens."""
    prompts = [[(7 * i + j) % 4000 + 1 for j in range(3 + i)] for i in range(n)]
    return pd.DataFrame(
        {
            "request_id": [f"r{i}" for i in range(n)],
            "prompt": ["x"] * n,
            "prompt_tokens": [len(p) for p in prompts],
            "output_tokens": [2 + i for i in range(n)],
            "prompt_token_ids": prompts,
        }
    )


class OneAtATimeEngine:
    """A real serving engine of max_num_seqs 1 (tokencarbon.backends.ServingEngine): requests in
    arrival order, each waiting for its arrival, then run to completion by TorchEngine.run_batch
    (real tokens, real timings). Two steps per request: its prefill and its decode."""

    def __init__(self, arch, model, run, device, max_num_seqs, options=None, max_model_len=None,
                 paged=None):  # fmt: skip
        assert max_num_seqs == 1
        self.engine = TorchEngine(arch, model["dtype"], device, seed=model["seed"])

    def serve(self, requests):
        start_ns, start_wall_ns = time.monotonic_ns(), time.time_ns()
        records, steps = [], []
        for req in sorted(requests, key=lambda r: r.arrival_s):
            arrival_ns = start_ns + round(req.arrival_s * 1e9)
            time.sleep(max(0.0, (arrival_ns - time.monotonic_ns()) / 1e9))
            r = self.engine.run_batch([list(req.prompt)], [req.output_len])
            records.append(RequestRecord(
                req.request_id, len(req.prompt), req.output_len, arrival_ns, r.first_token_ns,
                r.end_ns, start_wall_ns + (arrival_ns - start_ns), r.first_token_wall_ns,
                r.end_wall_ns,
            ))  # fmt: skip
            steps.append(StepRecord(len(steps), "prefill", r.start_ns, r.first_token_ns,
                                    r.start_wall_ns, r.first_token_wall_ns, (req.request_id,),
                                    (len(req.prompt),)))  # fmt: skip
            steps.append(StepRecord(len(steps), "decode", r.first_token_ns, r.end_ns,
                                    r.first_token_wall_ns, r.end_wall_ns, (req.request_id,),
                                    (req.output_len - 1,)))  # fmt: skip
        return ServingResult(tuple(records), tuple(steps), start_ns, time.monotonic_ns(),
                             start_wall_ns, time.time_ns())  # fmt: skip

    def peak_memory_bytes(self):
        return self.engine.peak_memory_bytes()


def cell(tmp_path: Path, *, work: pd.DataFrame, batch_size: int, run=RUN, serving=None, **kw):
    out = tmp_path / "cell"
    stream = io.StringIO()
    args = dict(
        model=MODEL, platform=PLATFORM, run=run, batch_size=batch_size, workload=work,
        engine_manifest=tmp_path / "unused-manifest.json", serving=serving,
        out_batches=out / "batches.parquet", out_power=out / "power.parquet",
        out_meta=out / "meta.json", out_requests=out / "requests.parquet",
        out_steps=out / "steps.parquet", lock_dir=tmp_path / "leases",
        serving_engine=OneAtATimeEngine, progress=Progress("test-cell", stream=stream, log=stream),
    ) | kw  # fmt: skip
    meta = run_cell(**args)
    return out, meta, stream.getvalue()


def test_static_cell_with_two_repeats(tmp_path):
    # 5 requests at batch 2: batches of 2, 2, 1; run twice -> 6 rows.
    allowed = os.sched_getaffinity(0)
    out, meta, console = cell(tmp_path, work=workload(5), batch_size=2, run=RUN | {"repeats": 2})
    assert os.sched_getaffinity(0) == allowed  # pinned for the cell only
    batches = tables.read(out / "batches.parquet", tables.BATCHES)
    assert list(zip(batches["repeat"], batches["batch_index"], batches["n_requests"])) == [
        (0, 0, 2), (0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 1, 2), (1, 2, 1)
    ]  # fmt: skip
    # outputs 2..6 tokens (request i: 2 + i): 2 + 3 + 4 + 5 + 6 = 20 per repeat
    assert batches.groupby("repeat")["output_tokens"].sum().tolist() == [20, 20]
    # Each repeat its own window, one after the other, and every batch in order.
    assert (batches["start_wall_ns"].diff().dropna() > 0).all()
    assert (batches["end_wall_ns"].iloc[:-1].to_numpy() <= batches["start_wall_ns"].iloc[1:].to_numpy()).all()
    assert (meta["n_batches"], meta["repeats"], meta["n_requests"]) == (3, 2, 5)
    assert meta["max_batch_requests"] == 2 and meta["mode"] == "static"
    assert meta["arrival"] == "offline" and meta["serving"]["mode"] == "static"
    # The lease: one logical CPU, the lowest this process may use; the cell's own threads ran there.
    assert meta["cpu_lease"] == {"cpus": [min(os.sched_getaffinity(0))]} and meta["gpu_lease"] is None
    assert 0.0 <= meta["foreign_cpu_share"] <= 1.0 and meta["foreign_gpu_processes"] == -1
    assert 0.0 <= meta["cpu_steal_share"] <= 1.0  # this machine is a VM; bare metal reads 0
    assert set(meta["device_state"]) == {"start", "end"}
    assert "cpu_freq_mhz" in meta["device_state"]["start"]
    power = tables.read(out / "power.parquet", tables.POWER)
    run_power = power[power["phase"] == "run"]
    # The sidecar brackets every window of every repeat.
    assert run_power["t_wall_ns"].min() <= batches["start_wall_ns"].min()
    assert run_power["t_wall_ns"].max() >= batches["end_wall_ns"].max()
    assert not (out / "requests.parquet").exists() and not (out / ".power.parquet").exists()
    # meta.json last: no file is written after it.
    assert all((out / f).stat().st_mtime_ns <= (out / "meta.json").stat().st_mtime_ns
               for f in ["batches.parquet", "power.parquet"])  # fmt: skip
    # Progress: a line per repeat start and end on the console.
    assert "[tokencarbon] test-cell: repeat 1/2: 3 batches of up to 2" in console
    assert "[tokencarbon] test-cell: repeat 2/2 done: 20 output tokens in" in console
    # the cell's own record, as aggregation reads it
    on_disk = json.loads((out / "meta.json").read_text())
    assert on_disk["cpu_lease"] == meta["cpu_lease"] and on_disk["repeats"] == 2


def test_batch_larger_than_the_workload_states_what_it_served(tmp_path):
    # bs8 with 3 requests: one batch of 3. The label stays bs8 (the sweep's), and the cell says
    # it never served 8 at once.
    out, meta, console = cell(tmp_path, work=workload(3), batch_size=8)
    batches = tables.read(out / "batches.parquet", tables.BATCHES)
    assert batches["n_requests"].tolist() == [3]
    assert (meta["batch_size"], meta["n_requests"], meta["max_batch_requests"]) == (8, 3, 3)
    assert "batch size 8 > 3 requests" in console


def test_continuous_cell_with_poisson_arrivals(tmp_path):
    serving = {"mode": "continuous", "max_num_seqs": 1, "arrival": "poisson",
               "request_rate_per_s": 20.0, "seed": 0}  # fmt: skip
    work = workload(4)
    out, meta, console = cell(
        tmp_path, work=work, batch_size=1, serving=serving, run=RUN | {"repeats": 2}
    )
    requests = tables.read(out / "requests.parquet", tables.REQUESTS)
    steps = tables.read(out / "steps.parquet", tables.STEPS)
    batches = tables.read(out / "batches.parquet", tables.BATCHES)
    assert len(requests) == 8 and sorted(requests["repeat"].unique()) == [0, 1]
    # Timing invariants, read back from the file, on both clocks.
    for clock in ["", "_wall"]:
        a, f, e = (requests[f"{p}{clock}_ns"] for p in ["arrival", "first_token", "finish"])
        assert ((a <= f) & (f <= e)).all()
    # Arrivals follow the seeded schedule: at 20 requests/s the gaps are the seed-0 uniforms'
    # -ln(1 - u) / 20: 1.0132469 / 20 = 0.0506623 s, then 0.0157209, then 0.0020918 s.
    for repeat, rows in batches.groupby("repeat"):
        start = int(rows["start_ns"].iloc[0])
        offsets_s = (requests[requests["repeat"] == repeat]["arrival_ns"] - start) / 1e9
        assert offsets_s.tolist() == pytest.approx([0.0, 0.0506623, 0.0663833, 0.0684751], abs=1e-6)
    # One BATCHES row per repeat: the whole set as one window.
    assert batches["n_requests"].tolist() == [4, 4] and batches["batch_index"].tolist() == [0, 0]
    # outputs 2 + 3 + 4 + 5 = 14 tokens per repeat; prompts 3 + 4 + 5 + 6 = 18
    assert batches["output_tokens"].tolist() == [14, 14] and batches["input_tokens"].tolist() == [18, 18]
    assert batches["output_lens"].iloc[0].tolist() == [2, 3, 4, 5]
    # Steps tile each repeat in order: 2 per request.
    assert steps.groupby("repeat")["step_index"].apply(list).tolist() == [list(range(8))] * 2
    assert (meta["mode"], meta["batch_size"], meta["n_batches"]) == ("continuous", 1, 1)
    assert meta["arrival"] == "poisson" and meta["request_rate_per_s"] == 20.0
    assert meta["max_batch_requests"] == 1 and meta["seeds"]["arrivals"] == 0
    assert "repeat 1/2: serving 4 requests (poisson)" in console


def test_foreign_process_on_the_leased_cpu_is_recorded(tmp_path):
    # The orphan of issue 10: another process burning the CPU the cell leases. The cell cannot stop
    # it (it holds no lease), but it must say so: its share of the window is foreign. The burner
    # is started through a parent that exits at once, so it is not in this (the cell's) process
    # tree, as an orphan of an earlier Snakemake is not in a rerun's.
    cpu = min(os.sched_getaffinity(0))
    burn = "import time\nend = time.monotonic() + 120\nwhile time.monotonic() < end: pass"
    spawner = subprocess.run(
        [sys.executable, "-c", "import subprocess, sys; p = subprocess.Popen([sys.executable, "
         f"'-c', {burn!r}], start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); print(p.pid)"],
        capture_output=True, text=True, check=True, timeout=60,
        preexec_fn=lambda: os.sched_setaffinity(0, {cpu}),
    )  # fmt: skip
    burner = int(spawner.stdout)
    try:
        _, meta, console = cell(tmp_path, work=workload(4), batch_size=1, run=RUN | {"repeats": 2})
    finally:
        os.kill(burner, 9)
    # The burner is always runnable on that CPU, so the scheduler gives it about half of it while
    # the cell runs and all of it while the cell waits for the sidecar: well over 0.2 of the window.
    assert meta["foreign_cpu_share"] > 0.2
    assert burner in [p["pid"] for p in meta["foreign_use"]["foreign_processes"]]
    assert "other processes ran on this cell's devices" in console


def test_a_cell_waits_for_its_cpus_and_writes_nothing_on_timeout(tmp_path):
    allowed = sorted(os.sched_getaffinity(0))
    with lease_cpus(tmp_path / "leases", len(allowed), cell="orphan", timeout_s=0):
        with pytest.raises(LeaseTimeoutError, match='"cell": "orphan"'):
            cell(tmp_path, work=workload(2), batch_size=1, lease_timeout_s=0.3)
    assert not (tmp_path / "cell").exists()


@pytest.mark.parametrize(
    ("serving", "run", "message"),
    [
        ({"mode": "paged"}, RUN, r"serving.mode: 'paged'; expected one of \['continuous', 'static'\]"),
        ({"mode": "continuous", "max_num_seqs": 4}, RUN, "max_num_seqs: 4 for the continuous cell cb1"),
        ({"mode": "continuous", "arrival": "poisson"}, RUN, "request_rate_per_s: None with arrival 'poisson'"),
        ({"mode": "static", "rate": 3}, RUN, r"unknown key\(s\) \['rate'\]"),
        (None, RUN | {"repeats": 0}, "run.repeats: 0; expected a whole number >= 1"),
        (None, RUN | {"repeats": True}, "run.repeats: True"),
    ],
)
def test_bad_settings_are_refused_before_any_work(tmp_path, serving, run, message):
    with pytest.raises(ConfigError, match=message):
        cell(tmp_path, work=workload(2), batch_size=1, serving=serving, run=run)
    assert not (tmp_path / "cell").exists() and not (tmp_path / "leases").exists()


def test_a_cell_on_a_cpu_its_row_does_not_describe_is_refused_before_measuring(tmp_path):
    # issue 10 §4: the cpu row's slice (no config spec) on another CPU than the EPYC 7763 it
    # describes stops after the lease, before the engine loads, naming the detected CPU; with the
    # default config's spec (measure, logical_cpus, an assumed tdp_w) it would run.
    import re

    from tokencarbon.plan import platform_slice
    from tokencarbon.errors import HardwareMismatchError
    from tokencarbon.hardware import check_platform, cpu_model_name, detect

    power = {"interval_s": 0.05, "idle_s": 0.2}
    bare = platform_slice({"platforms": {"cpu": {}}, "power": power}, "cpu") | {"logical_cpus": 1}
    if re.search(bare["device_name_pattern"], cpu_model_name()):
        pytest.skip("this is the CPU the cpu row describes")
    with pytest.raises(HardwareMismatchError, match=re.escape(repr(cpu_model_name()))):
        cell(tmp_path, work=workload(2), batch_size=1, platform=bare)
    assert not (tmp_path / "cell").exists() or not any((tmp_path / "cell").iterdir())
    spec = {"measure": True, "logical_cpus": 1, "tdp_w": 4.375}
    check_platform(platform_slice({"platforms": {"cpu": {"spec": spec}}, "power": power}, "cpu"), detect("cpu"))


def test_serving_settings_of_old_and_new_params():
    assert serving_settings(None, 4)["mode"] == "static"
    # older params (no paged settings) read with the paged engine's defaults, vLLM's 0.9 and
    # 2048 and blocks of 64 tokens
    assert serving_settings({"mode": "continuous"}, 4) == {
        "mode": "continuous", "max_num_seqs": 4, "arrival": "offline",
        "request_rate_per_s": None, "seed": 0, "gpu_memory_utilization": 0.9,
        "block_size": 64, "max_num_batched_tokens": 2048,
    }  # fmt: skip
    assert serving_settings({"mode": "continuous", "block_size": 16}, 4)["block_size"] == 16


# ---------------------------------------------------------------- serving records checked

REQS = [Request("a", (1, 2, 3), 2, 0.0), Request("b", (4, 5), 3, 0.5)]


def record(rid, n_in, n_out, arrival, first, finish):
    # wall clock = monotonic + 1000 ns here, so both clocks carry the same story
    return RequestRecord(rid, n_in, n_out, arrival, first, finish, arrival + 1000, first + 1000,
                         finish + 1000)  # fmt: skip


def result(records, steps=(), start=0, end=2_000_000_000):
    return ServingResult(tuple(records), tuple(steps), start, end, start + 1000, end + 1000)


GOOD = [record("a", 3, 2, 0, 10, 20), record("b", 2, 3, 500_000_000, 600_000_000, 700_000_000)]


def test_a_true_serving_record_passes():
    check_serving_result(result(GOOD), REQS, "cell")


@pytest.mark.parametrize(
    ("records", "message"),
    [
        ([GOOD[0]], r"1 request\(s\) never served: \['b'\]"),
        ([GOOD[0], GOOD[0], GOOD[1]], "request 'a' is served twice"),
        ([GOOD[0], record("c", 2, 3, 5, 6, 7)], "request 'c' is not in the request set"),
        ([record("a", 3, 1, 0, 10, 20), GOOD[1]], "served 3 prompt and 1 output tokens; its request has 3 and 2"),
        # first token before arrival
        ([record("a", 3, 2, 10, 5, 20), GOOD[1]], "arrival 10 <= first token 5"),
        # finish after the window's end
        ([record("a", 3, 2, 0, 10, 3_000_000_000), GOOD[1]], "finish 3000000000 <= window end 2000000000"),
        # b is scheduled 0.5 s after the start and cannot arrive at 0.2 s
        ([GOOD[0], record("b", 2, 3, 200_000_000, 600_000_000, 700_000_000)], "before its scheduled 0.500000 s"),
    ],
)
def test_impossible_serving_records_are_refused(records, message):
    with pytest.raises(TokencarbonError, match=message):
        check_serving_result(result(records), REQS, "cell")


def test_steps_out_of_order_are_refused():
    steps = [StepRecord(0, "prefill", 0, 5, 1000, 1005, ("a",), (3,)),
             StepRecord(1, "decode", 3, 4, 1003, 1004, ("a",), (1,)),
             StepRecord(2, "decode", 1, 2, 1001, 1002, ("a",), (1,))]  # fmt: skip
    with pytest.raises(TokencarbonError, match=r"step 2 \(position 2\) starts at 1001"):
        check_serving_result(result(GOOD, steps), REQS, "cell")


def test_most_requests_at_once_from_steps_or_from_request_intervals():
    steps = [StepRecord(0, "prefill", 0, 1, 0, 1, ("a", "b"), (3, 2)),
             StepRecord(1, "decode", 1, 2, 1, 2, ("a", "b", "c"), (1, 1, 1)),
             StepRecord(2, "decode", 2, 3, 2, 3, ("c",), (1,))]  # fmt: skip
    assert max_concurrent_requests(result([], steps)) == 3  # step 1 holds a, b and c
    # Without steps: [first token, finish] of a = [10, 20], b = [15, 30], c = [20, 25]: at 15 a and
    # b are in flight (2); at 20 a finishes as c starts (a finish counted first), so still 2.
    no_steps = [record("a", 1, 1, 0, 10, 20), record("b", 1, 1, 0, 15, 30), record("c", 1, 1, 0, 20, 25)]
    assert max_concurrent_requests(result(no_steps)) == 2



def test_continuous_cell_on_the_torch_serving_engine(tmp_path):
    # The real continuous-batching engine (tokencarbon.backends.serving): 5 requests, at most 2 in
    # flight, all queued at t=0.
    serving = {"mode": "continuous", "max_num_seqs": 2, "arrival": "offline",
               "request_rate_per_s": None, "seed": 0}  # fmt: skip
    from tokencarbon.cell import default_serving_engine

    out, meta, _ = cell(tmp_path, work=workload(5), batch_size=2, serving=serving,
                        serving_engine=default_serving_engine)  # fmt: skip
    requests = tables.read(out / "requests.parquet", tables.REQUESTS)
    steps = tables.read(out / "steps.parquet", tables.STEPS)
    # outputs 2 + 3 + 4 + 5 + 6 = 20 tokens, each request exactly its own length
    assert requests.sort_values("request_id")["output_tokens"].tolist() == [2, 3, 4, 5, 6]
    assert ((requests["arrival_ns"] <= requests["first_token_ns"])
            & (requests["first_token_ns"] <= requests["finish_ns"])).all()  # fmt: skip
    assert (requests["arrival_ns"] == requests["arrival_ns"].iloc[0]).all()  # offline: all at t=0
    # never more than max_num_seqs in a step, and at some step two at once
    assert steps["request_ids"].map(len).max() == 2 == meta["max_batch_requests"]
    assert meta["mode"] == "continuous" and meta["n_batches"] == 1


def test_continuous_cell_on_transformers_continuous_batching(tmp_path):
    # The transformers peer (its ContinuousBatchingManager), options from the engine manifest.
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"options": {"attn_implementation": "sdpa",
                                                "compile_decode": None, "cuda_graphs": None}}))  # fmt: skip
    serving = {"mode": "continuous", "max_num_seqs": 2, "arrival": "offline",
               "request_rate_per_s": None, "seed": 0}  # fmt: skip
    from tokencarbon.cell import default_serving_engine

    out, meta, _ = cell(tmp_path, work=workload(3), batch_size=2, serving=serving,
                        run=RUN | {"backend": "transformers", "warmup_batches": 0},
                        engine_manifest=manifest, serving_engine=default_serving_engine)  # fmt: skip
    requests = tables.read(out / "requests.parquet", tables.REQUESTS)
    assert requests.sort_values("request_id")["output_tokens"].tolist() == [2, 3, 4]
    assert ((requests["arrival_ns"] <= requests["first_token_ns"])
            & (requests["first_token_ns"] <= requests["finish_ns"])).all()  # fmt: skip
    # transformers exposes no steps: concurrency from the requests' intervals, at most 2
    assert len(tables.read(out / "steps.parquet", tables.STEPS)) == 0
    assert 1 <= meta["max_batch_requests"] <= 2
    assert meta["engine_description"]["backend"] == "transformers"


def test_token_digest_by_hand():
    import hashlib

    from tokencarbon.cell import token_digest

    # requests [1, 2] and [3]: "1,2;3"
    assert token_digest([[1, 2], [3]]) == hashlib.sha256(b"1,2;3").hexdigest()
    assert token_digest([[1], [2, 3]]) != token_digest([[1, 2], [3]])  # the split is part of it
    assert token_digest(None) is None


def test_cell_records_its_tokens_timeline_and_short_warmup(tmp_path):
    # The digest is of the tokens the engine generated: the same requests run directly on a
    # TorchEngine of the same seed give the same digest (each batch of 2 in workload order).
    from tokencarbon.cell import token_digest
    from tokencarbon.models import load_architecture

    work = workload(4)
    _, meta, _ = cell(tmp_path / "a", work=work, batch_size=2)
    engine = TorchEngine(load_architecture("tiny-llama"), "float32", "cpu", seed=0)
    direct = []
    for i in (0, 2):
        rows = work.iloc[i : i + 2]
        r = engine.run_batch([list(p) for p in rows["prompt_token_ids"]],
                             [int(n) for n in rows["output_tokens"]])  # fmt: skip
        direct += list(r.token_ids)
    assert meta["token_digests"] == [token_digest(direct)]
    # A warm-up of 8 tokens per request, or none, leaves the measured tokens as they were.
    assert meta["warmup"] == {"passes": 1, "output_tokens": 8}
    _, cold, _ = cell(tmp_path / "b", work=work, batch_size=2, run=RUN | {"warmup_batches": 0})
    assert cold["token_digests"] == meta["token_digests"]
    # The timeline: phases in order, consecutive, and fixed = all but measured and idle.
    timeline = meta["timeline"]
    names = [p["phase"] for p in timeline["phases"]]
    assert names[-3:] == ["sidecar_stop", "finish", "write"] or names[-2:] == ["finish", "write"]
    expected = ["checks", "lease", "hardware_check", "sidecar_start", "engine_build", "warmup",
                "idle_window", "measured", "sidecar_stop", "finish"]  # fmt: skip
    assert [n for n in names if n in expected] == expected
    for before, after in zip(timeline["phases"], timeline["phases"][1:]):
        assert before["end_wall_ns"] <= after["start_wall_ns"]
    total = sum(p["seconds"] for p in timeline["phases"])
    assert timeline["fixed_s"] == pytest.approx(total - timeline["measured_s"] - timeline["idle_s"])
    assert timeline["idle_s"] >= PLATFORM["idle_s"]  # the idle window slept idle_s
    assert meta["compile_cache"] is None  # no cache_root outside the workflow


def test_shared_idle_window_is_reused_and_stated(tmp_path):
    # power.idle_share_s > 0: the second cell on the same CPUs reuses the first's idle window.
    platform = PLATFORM | {"idle_share_s": 600.0}
    root = tmp_path / "cache"
    out1, first, _ = cell(tmp_path / "a", work=workload(2), batch_size=2, platform=platform,
                          cache_root=root)  # fmt: skip
    out2, second, _ = cell(tmp_path / "b", work=workload(2), batch_size=2, platform=platform,
                           cache_root=root)  # fmt: skip
    assert first["idle_window"]["shared"] is False and first["idle_shared"] is False
    assert second["idle_shared"] is True
    assert second["idle_window"]["from_cell"] == "cpu/tiny-llama/bs2"
    assert 0 <= second["idle_window"]["age_s"] < 600
    idle1 = tables.read(out1 / "power.parquet", tables.POWER).query("phase == 'idle'")
    idle2 = tables.read(out2 / "power.parquet", tables.POWER).query("phase == 'idle'")
    assert idle2["t_wall_ns"].tolist() == idle1["t_wall_ns"].tolist()
    assert second["idle_power_w"] == first["idle_power_w"]
    # the reused window lies before the second cell's own run samples
    run2 = tables.read(out2 / "power.parquet", tables.POWER).query("phase == 'run'")
    assert idle2["t_wall_ns"].max() < run2["t_wall_ns"].min()
    # the timeline shows no idle sleep in the second cell
    assert second["timeline"]["idle_s"] < PLATFORM["idle_s"]
    # sharing needs the study's cache folder
    with pytest.raises(ConfigError, match="idle_share_s"):
        cell(tmp_path / "c", work=workload(2), batch_size=2, platform=platform)

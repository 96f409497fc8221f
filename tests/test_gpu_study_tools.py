"""The GPU study's CPU-side tools: the lease check of a multi-GPU run, the OOM table's first-principles
count, and the committed study cells' consistency with the tables built from them."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "benchmarks/results/gpu-study"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / f"benchmarks/{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


lease_check = _load("lease_check")


def _cell(root: Path, model: str, batch: int, gpu: int, start_s: float, end_s: float, seen=None):
    d = root / model / f"bs{batch}"
    d.mkdir(parents=True)
    uuid = f"GPU-{gpu}"
    meta = {
        "model": model,
        "batch_size": batch,
        "gpu_lease": {"gpu_index": gpu, "gpu_uuid": uuid},
        "hardware": {"gpu": {"uuid": seen or uuid}},
        "window_start_wall_ns": int(start_s * 1e9),
        "window_end_wall_ns": int(end_s * 1e9),
    }
    (d / "meta.json").write_text(json.dumps(meta))
    pd.DataFrame({"power_w": [100.0, 300.0]}).to_parquet(d / "power.parquet")


def test_lease_check_finds_overlaps_by_gpu(tmp_path):
    # a [0, 10] s on GPU 0, b [5, 15] on GPU 1, c [12, 20] on GPU 1:
    # a-b overlap 5 s on distinct GPUs; b-c overlap 3 s on GPU 1; a-c do not overlap.
    _cell(tmp_path, "m", 1, 0, 0, 10)
    _cell(tmp_path, "m", 2, 1, 5, 15)
    _cell(tmp_path, "m", 4, 1, 12, 20)
    summary = lease_check.check(lease_check.read_cells(tmp_path))
    pairs = {tuple(o["cells"]): (o["gpus"], o["overlap_s"]) for o in summary["overlapping_pairs"]}
    assert pairs == {("m/bs1", "m/bs2"): ([0, 1], 5.0), ("m/bs2", "m/bs4"): ([1, 1], 3.0)}
    assert [o["cells"] for o in summary["same_gpu_overlaps"]] == [["m/bs2", "m/bs4"]]
    assert summary["gpus_used"] == [0, 1] and summary["sidecar_mismatches"] == []
    assert lease_check.main([str(tmp_path)]) == 1


def test_lease_check_passes_distinct_gpus_and_flags_a_foreign_sidecar(tmp_path):
    _cell(tmp_path, "m", 1, 0, 0, 10)
    _cell(tmp_path, "m", 2, 1, 5, 15)
    out = tmp_path / "lease.json"
    assert lease_check.main([str(tmp_path), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["summary"]["same_gpu_overlaps"] == []
    _cell(tmp_path, "n", 1, 1, 20, 30, seen="GPU-0")  # leased GPU 1, NVML device 0 was GPU 0
    assert lease_check.check(lease_check.read_cells(tmp_path))["sidecar_mismatches"] == ["n/bs1"]


def test_lease_check_rejects_unleased_cells(tmp_path):
    d = tmp_path / "m/bs1"
    d.mkdir(parents=True)
    (d / "meta.json").write_text(json.dumps({"gpu_lease": None}))
    with pytest.raises(SystemExit, match="no gpu_lease"):
        lease_check.read_cells(tmp_path)
    with pytest.raises(SystemExit, match="no cells"):
        lease_check.read_cells(tmp_path / "empty")


def test_oom_table_first_principles_counts():
    # Llama-2-7B fp16: 6,738,415,616 parameters x 2 B = 13,476,831,232 B of weights; 1000 + 1000
    # tokens -> 2048 cache slots; KV per request 2 (K, V) x 32 layers x 4096 x 2048 x 2 B
    # = 1,073,741,824 B. At 40 GB, (40e9 - 13.48e9) / 1.07e9 = 24.7 before activations, so the
    # count is at most 24.
    fp = _load("oom_table").first_principles("llama-2-7b", "float16", 1000, 1000, 40.0)
    assert fp["weights_bytes"] == 13_476_831_232
    assert fp["cache_len"] == 2048
    assert fp["kv_bytes_per_request"] == 1_073_741_824
    assert 0 < fp["max_batch"] <= 24


def test_committed_study_tables_match_their_cells():
    # Recomputed straight from one committed cell's batch records, without the metrics code:
    # output tokens / the sum of the batches' own wall-clock windows (the clock the power samples
    # share; the monotonic clock gives the same to ~1e-6).
    cell = STUDY / "cells/h100-sxm-80gb/llama-2-7b/bs1"
    batches = pd.read_parquet(cell / "batches.parquet")
    seconds = ((batches["end_wall_ns"] - batches["start_wall_ns"]) / 1e9).sum()
    tokens_per_s = batches["output_tokens"].sum() / seconds
    metrics = pd.read_parquet(STUDY / "tables/metrics.parquet")
    row = metrics[
        (metrics.platform == "h100-sxm-80gb")
        & (metrics.model == "llama-2-7b")
        & (metrics.batch_size == 1)
    ]
    assert row["tokens_per_s"].item() == pytest.approx(tokens_per_s, rel=1e-9)
    meta = json.loads((cell / "meta.json").read_text())
    assert meta["device_name"] == "NVIDIA H100 80GB HBM3"
    assert meta["gpu_lease"]["gpu_uuid"] == meta["hardware"]["gpu"]["uuid"]


def test_decode_roofline_read_bytes_follow_the_key_buckets():
    # tiny-llama fp32: 19,997,696 B of weights; K+V per cache slot and request 2 x 4 layers x 128
    # x 4 B = 4,096 B. 32 prompt + 96 output tokens -> a 128-slot cache in 64-slot buckets: steps
    # k = 1..95 feed slots 31 + k; slots 32..63 (32 steps) attend over 64 slots, 64..126 (63 steps)
    # over 128; each also writes its new K/V (+1 slot).
    # read = 19,997,696 + 4,096 x (32 x 65 + 63 x 129) / 95 = 19,997,696 + 4,096 x 10,207 / 95
    decode_roofline = _load("decode_roofline")
    from tokencarbon.backends.static import TorchEngine
    from tokencarbon.models import load_architecture

    engine = TorchEngine(load_architecture("tiny-llama"), "float32", "cpu", seed=0)
    case = decode_roofline.Case("t", "tiny-llama", 1, 32, 96)
    engine.run_batch([[1] * 32], [96])
    useful, read = decode_roofline.step_bytes(engine, case)
    assert read == pytest.approx(19_997_696 + 4_096 * 10_207 / 95)
    assert useful < read  # masked slots inside the bucket are read but not counted

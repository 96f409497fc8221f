"""tokencarbon.aggregate: cells of every vintage into one table per kind, cell keys in front; the
committed GPU cells (measured before modes, repeats and the foreign-use watch) still read."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from tokencarbon import tables
from tokencarbon.aggregate import aggregate
from tokencarbon.records import CellMeta
from tokencarbon.errors import InputError, SchemaError

REPO = Path(__file__).resolve().parents[1]
GPU_STUDY = REPO / "benchmarks/results/gpu-study/cells/h200-141gb"


def batch_row(repeat, index, n, start):
    return {"repeat": repeat, "batch_index": index, "n_requests": n, "input_tokens": 3 * n,
            "output_tokens": 2 * n, "padded_input_len": 3, "max_output_tokens": 2,
            "start_ns": start, "first_token_ns": start + 1, "end_ns": start + 2,
            "start_wall_ns": start, "first_token_wall_ns": start + 1, "end_wall_ns": start + 2,
            "prompt_lens": [3] * n, "output_lens": [2] * n}  # fmt: skip


def power_rows(start):
    return pd.DataFrame(
        {"t_wall_ns": [start, start + 10], "phase": ["run", "run"], "source": ["modeled_cpu"] * 2,
         "modeled": [True, True], "device_index": [-1, -1], "power_w": [1.0, 2.0],
         "power_avg_w": [math.nan] * 2, "energy_counter_j": [math.nan] * 2,
         "util_pct": [10.0, 20.0], "mem_used_bytes": [1.0, 1.0], "temperature_c": [math.nan] * 2,
         "sm_clock_mhz": [math.nan] * 2, "mem_clock_mhz": [math.nan] * 2,
         "throttle_reasons": [-1, -1]}  # fmt: skip
    )


OLD_META = {"platform": "cpu", "model": "m", "batch_size": 2, "architecture": "tiny-llama",
            "dtype": "float32", "backend": "torch", "device_name": "cpu x", "n_requests": 3,
            "n_batches": 2, "warmup_batches": 1, "window_start_wall_ns": 100,
            "window_end_wall_ns": 112, "idle_power_w": 0.5, "power_source": "modeled_cpu",
            "power_interval_s": 0.1, "peak_memory_bytes": 1e6, "git_commit": "abc"}  # fmt: skip


def old_static_cell(root: Path) -> Path:
    """A cell as written before modes and repeats: no mode/repeats/... in meta, no repeat column."""
    d = root / "cpu/m/bs2"
    d.mkdir(parents=True)
    (d / "meta.json").write_text(json.dumps(OLD_META))
    rows = [batch_row(0, 0, 2, 100), batch_row(0, 1, 1, 110)]
    pd.DataFrame(rows).drop(columns="repeat").to_parquet(d / "batches.parquet")
    tables.write(power_rows(100), d / "power.parquet", tables.POWER)
    return d


def continuous_cell(root: Path, with_requests: bool = True) -> Path:
    d = root / "cpu/m/cb2"
    d.mkdir(parents=True)
    meta = OLD_META | {"mode": "continuous", "arrival": "poisson", "request_rate_per_s": 4.0,
                       "n_batches": 1, "repeats": 2, "max_batch_requests": 2,
                       "foreign_cpu_share": 0.125, "cpu_steal_share": 0.0625,
                       "foreign_gpu_processes": -1}  # fmt: skip
    (d / "meta.json").write_text(json.dumps(meta))
    tables.write(pd.DataFrame([batch_row(0, 0, 3, 200), batch_row(1, 0, 3, 300)]),
                 d / "batches.parquet", tables.BATCHES)  # fmt: skip
    tables.write(power_rows(200), d / "power.parquet", tables.POWER)
    if with_requests:
        requests = pd.DataFrame(
            [{"repeat": r, "request_id": f"q{i}", "input_tokens": 3, "output_tokens": 2,
              "arrival_ns": 0, "first_token_ns": 1, "finish_ns": 2, "arrival_wall_ns": 0,
              "first_token_wall_ns": 1, "finish_wall_ns": 2} for r in (0, 1) for i in range(3)]
        )  # fmt: skip
        tables.write(requests, d / "requests.parquet", tables.REQUESTS)
        steps = pd.DataFrame(
            [{"repeat": 0, "step_index": 0, "kind": "prefill", "start_ns": 0, "end_ns": 1,
              "start_wall_ns": 0, "end_wall_ns": 1, "request_ids": ["q0", "q1"],
              "request_tokens": [3, 3]}]
        )  # fmt: skip
        tables.write(steps, d / "steps.parquet", tables.STEPS)
    return d


def test_old_and_continuous_cells_merge_with_keys_in_front(tmp_path):
    old, cb = old_static_cell(tmp_path), continuous_cell(tmp_path)
    out = aggregate([old, cb])
    cells = out.cells.set_index("mode")
    # The old cell: static, offline, run once, its largest batch of the two (2 and 1) = 2, and no
    # foreign-use watch (NaN share, -1 GPU processes).
    assert cells.loc["static", "repeats"] == 1 and cells.loc["static", "arrival"] == "offline"
    assert cells.loc["static", "max_batch_requests"] == 2
    assert math.isnan(cells.loc["static", "foreign_cpu_share"])
    assert math.isnan(cells.loc["static", "cpu_steal_share"])
    assert cells.loc["static", "foreign_gpu_processes"] == -1
    assert math.isnan(cells.loc["static", "request_rate_per_s"])
    assert cells.loc["continuous", "request_rate_per_s"] == 4.0
    assert cells.loc["continuous", "foreign_cpu_share"] == 0.125
    assert cells.loc["continuous", "cpu_steal_share"] == 0.0625
    # batches: 2 old rows (repeat 0 filled in) + 2 continuous rows (one per repeat)
    assert list(out.batches.columns[:4]) == ["platform", "model", "mode", "batch_size"]
    assert list(zip(out.batches["mode"], out.batches["batch_size"], out.batches["repeat"])) == [
        ("static", 2, 0), ("static", 2, 0), ("continuous", 2, 0), ("continuous", 2, 1)
    ]  # fmt: skip
    # requests and steps come from the continuous cell only: 3 requests x 2 repeats, 1 step
    assert len(out.requests) == 6 and set(out.requests["mode"]) == {"continuous"}
    assert list(out.requests.columns[:5]) == ["platform", "model", "mode", "batch_size", "repeat"]
    assert out.steps["request_ids"].iloc[0].tolist() == ["q0", "q1"]
    assert len(out.power) == 4


def test_static_cells_alone_give_empty_request_and_step_tables(tmp_path):
    out = aggregate([old_static_cell(tmp_path)])
    assert len(out.requests) == 0 and len(out.steps) == 0
    assert list(out.requests.columns) == tables.with_cell_keys(tables.REQUESTS).names


def test_a_continuous_cell_without_its_requests_is_named(tmp_path):
    cb = continuous_cell(tmp_path, with_requests=False)
    with pytest.raises(InputError, match=rf"{cb / 'requests.parquet'}: missing; a continuous cell"):
        aggregate([cb])


def test_no_cells_and_bad_meta_are_clear_errors(tmp_path):
    with pytest.raises(InputError, match="no cells to aggregate"):
        aggregate([])
    d = old_static_cell(tmp_path)
    (d / "meta.json").write_text(json.dumps({k: v for k, v in OLD_META.items() if k != "dtype"}))
    with pytest.raises(InputError, match=r"lacks keys \['dtype'\]; rerun the cell"):
        CellMeta.read(d / "meta.json")
    (d / "meta.json").write_text("{not json")
    with pytest.raises(InputError, match="not a readable cell meta.json"):
        CellMeta.read(d / "meta.json")
    (d / "meta.json").write_text("[1, 2]")
    with pytest.raises(InputError, match="one JSON object, not list"):
        CellMeta.read(d / "meta.json")


def test_a_batches_file_breaking_its_schema_is_named(tmp_path):
    d = old_static_cell(tmp_path)
    pd.DataFrame([{"batch_index": 0}]).to_parquet(d / "batches.parquet")
    with pytest.raises(SchemaError, match=rf"{d / 'batches.parquet'}: missing column"):
        aggregate([d])


def test_the_committed_gpu_cells_still_aggregate():
    dirs = sorted(p.parent for p in GPU_STUDY.glob("*/bs*/meta.json"))
    assert len(dirs) >= 9  # 3 models x batch 1, 4, 16 on the H200
    out = aggregate(dirs)
    gpt2_bs4 = out.cells[(out.cells["model"] == "gpt2") & (out.cells["batch_size"] == 4)].iloc[0]
    # 16 prompts at batch 4: four full batches (their batches.parquet), run once, offline, static
    assert (gpt2_bs4["n_requests"], gpt2_bs4["max_batch_requests"], gpt2_bs4["repeats"]) == (16, 4, 1)
    assert gpt2_bs4["mode"] == "static" and gpt2_bs4["foreign_gpu_processes"] == -1
    assert (out.batches["repeat"] == 0).all() and len(out.requests) == 0
    # written before CELLS had gpu_uuid: the UUID comes from each cell's hardware record
    meta = json.loads((GPU_STUDY / "gpt2/bs4/meta.json").read_text())
    assert "gpu_uuid" not in meta and meta["hardware"]["gpu"]["uuid"].startswith("GPU-")
    assert gpt2_bs4["gpu_uuid"] == meta["hardware"]["gpu"]["uuid"]
    assert out.cells["gpu_uuid"].notna().all()


def test_a_cpu_cell_has_no_gpu_uuid(tmp_path):
    cells = aggregate([old_static_cell(tmp_path)]).cells
    assert cells["gpu_uuid"].isna().all()


def test_the_cell_meta_record_is_the_cells_schema():
    # One schema: CellMeta's fields are the CELLS columns, in order; the rest of meta.json is
    # details, kept through a read and a write.
    from dataclasses import fields

    assert [f.name for f in fields(CellMeta) if f.name != "details"] == tables.CELLS.names
    record = dict(zip(tables.CELLS.names, range(len(tables.CELLS.names)))) | {"timeline": {"x": 1}}
    meta = CellMeta.of(record)
    assert meta.details == {"timeline": {"x": 1}} and meta.to_json() == record

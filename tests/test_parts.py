"""Repeats kept across jobs (tokencarbon.parts): a cell whose job stops at its deadline keeps its
finished repeats, and the next job on the same device with the same code measures only the rest;
the cell's files then hold every repeat as one job's would. Real cells of the tiny model on the
CPU (tests/test_cell.py's helpers)."""

from __future__ import annotations

import json
import time

import pandas as pd
import pytest
from test_cell import RUN, cell, workload

from tokencarbon import parts, tables
from tokencarbon.energy import window_energy
from tokencarbon.errors import ConfigError


def test_deadline_from_the_environment():
    assert parts.deadline({}) is None
    assert parts.deadline({parts.DEADLINE_ENV: " "}) is None
    assert parts.deadline({parts.DEADLINE_ENV: "1765150000.5"}) == 1765150000.5
    for bad in ("soon", "nan", "inf"):
        with pytest.raises(ConfigError, match=f"{parts.DEADLINE_ENV}=.*Unix seconds"):
            parts.deadline({parts.DEADLINE_ENV: bad})


def test_the_next_repeat_starts_only_if_the_longest_so_far_would_end_by_the_deadline():
    # deadline 100 s, now 90 s: 10 s left
    assert parts.fits(100.0, [5.0, 8.0], now=90.0)  # 90 + 8 = 98 <= 100
    assert parts.fits(100.0, [5.0, 10.0], now=90.0)  # 90 + 10 = 100, ends at the deadline
    assert not parts.fits(100.0, [5.0, 11.0], now=90.0)  # 90 + 11 = 101
    assert not parts.fits(100.0, [11.0, 5.0], now=90.0)  # the longest, not the last
    assert parts.fits(100.0, [], now=500.0)  # nothing timed yet: a job runs its first repeat
    assert parts.fits(None, [1e9], now=0.0)  # no deadline


def _part_tables(folder):
    return {name: tables.read(folder / f"{name}.parquet", schema)
            for name, schema in parts._TABLES.items()}  # fmt: skip


def test_a_static_cell_measured_in_three_jobs(tmp_path, monkeypatch):
    run = RUN | {"repeats": 3}
    work = workload(5)  # at batch 2: 3 batches a repeat, 20 output tokens (test_cell)
    # Jobs 1 and 2: a deadline already past. Each runs one repeat (a job always runs one: its
    # runner started it because one fits), then keeps it and stops.
    monkeypatch.setenv(parts.DEADLINE_ENV, str(time.time()))
    with pytest.raises(parts.RepeatsKept, match=r"kept repeats 1-1 of 3 .*measures repeats 2-3"):
        cell(tmp_path, work=work, batch_size=2, run=run)
    out = tmp_path / "cell"
    assert not any((out / f).exists() for f in ("meta.json", "batches.parquet", "power.parquet"))
    part0 = _part_tables(out / ".parts" / "part-0")
    assert part0["batches"]["repeat"].tolist() == [0, 0, 0]
    with pytest.raises(parts.RepeatsKept, match=r"kept repeats 2-2 of 3 .*measures repeats 3-3"):
        cell(tmp_path, work=work, batch_size=2, run=run)
    part1 = _part_tables(out / ".parts" / "part-1")
    assert part1["batches"]["repeat"].tolist() == [1, 1, 1]
    # Job 3: no deadline; it measures repeat 3 only.
    monkeypatch.delenv(parts.DEADLINE_ENV)
    _, meta, console = cell(tmp_path, work=work, batch_size=2, run=run)
    assert "2 of 3 repeats kept by 2 earlier job(s) on this device: measuring repeats 3-3" in console
    assert "repeat 1/3" not in console and "repeat 3/3 done: 20 output tokens" in console
    assert not (out / ".parts").exists()

    batches = tables.read(out / "batches.parquet", tables.BATCHES)
    assert batches["repeat"].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert batches.groupby("repeat")["output_tokens"].sum().tolist() == [20, 20, 20]
    # the kept repeats' rows as their jobs measured them
    pd.testing.assert_frame_equal(batches.iloc[:3].reset_index(drop=True), part0["batches"])
    pd.testing.assert_frame_equal(batches.iloc[3:6].reset_index(drop=True), part1["batches"])
    assert meta["repeats"] == 3 and meta["n_batches"] == 3
    assert meta["window_start_wall_ns"] == part0["batches"]["start_wall_ns"].iloc[0]
    assert [p["repeats"] for p in meta["parts"]] == [[0], [1], [2]]
    assert len({p["device"] for p in meta["parts"]}) == 1
    assert meta["parts"][0]["device"].startswith("cpu ")
    # The same seeded weights and greedy decoding in three processes: the same tokens.
    assert len(meta["token_digests"]) == 3 and len(set(meta["token_digests"])) == 1
    assert meta["token_digests"][0] is not None

    # The cell's idle window is its first job's; the run samples are every job's.
    power = tables.read(out / "power.parquet", tables.POWER)
    pd.testing.assert_frame_equal(
        power[power["phase"] == "idle"].reset_index(drop=True),
        part0["power"][part0["power"]["phase"] == "idle"].reset_index(drop=True),
    )
    assert meta["idle_power_w"] == pytest.approx(meta["parts"][0]["idle_power_w"])
    run_power = power[power["phase"] == "run"]
    for p in (part0, part1):
        kept = p["power"][p["power"]["phase"] == "run"]
        assert kept["t_wall_ns"].isin(run_power["t_wall_ns"]).all()
        # Each window's energy from the cell's samples equals its own job's: no window reaches
        # into another job's samples.
        for s, e in zip(p["batches"]["start_wall_ns"], p["batches"]["end_wall_ns"]):
            assert window_energy(run_power, int(s), int(e)).energy_j == pytest.approx(
                window_energy(kept, int(s), int(e)).energy_j, rel=1e-12)
    on_disk = json.loads((out / "meta.json").read_text())
    assert on_disk["parts"][2]["repeat_seconds"][0] > 0 and on_disk["device_state"]["start"] == (
        meta["parts"][0]["device_state"]["start"])


def test_a_job_started_after_its_start_by_time_measures_nothing(tmp_path, monkeypatch):
    assert parts.check_start({}) is None and parts.check_start(
        {parts.START_BY_ENV: "100.0"}, now=100.0) is None  # fmt: skip
    with pytest.raises(parts.DeadlinePassed, match="started 5 s after"):
        parts.check_start({parts.START_BY_ENV: "100.0"}, now=105.0)
    monkeypatch.setenv(parts.START_BY_ENV, str(time.time() - 1))
    with pytest.raises(parts.DeadlinePassed, match="nothing measured"):
        cell(tmp_path, work=workload(3), batch_size=3)
    assert not (tmp_path / "cell").exists()


def test_a_cell_in_parts_keeps_its_first_jobs_idle_window_facts(tmp_path, monkeypatch):
    # Idle windows shared for 10 min through the cache: job 1 samples its own, job 2 reuses it.
    # The cell's idle window is job 1's, so meta.json says it was the cell's own (not shared).
    from test_cell import PLATFORM

    platform = PLATFORM | {"idle_share_s": 600.0}
    args = dict(work=workload(3), batch_size=3, run=RUN | {"repeats": 2}, platform=platform,
                cache_root=tmp_path / "cache")  # fmt: skip
    monkeypatch.setenv(parts.DEADLINE_ENV, str(time.time()))
    with pytest.raises(parts.RepeatsKept):
        cell(tmp_path, **args)
    monkeypatch.delenv(parts.DEADLINE_ENV)
    _, meta, _ = cell(tmp_path, **args)
    first, last = meta["parts"]
    assert first["idle_window"]["shared"] is False and last["idle_window"]["shared"] is True
    assert meta["idle_shared"] is False and meta["idle_window"] == first["idle_window"]


def test_a_cell_in_one_job_records_no_parts(tmp_path):
    _, meta, _ = cell(tmp_path, work=workload(3), batch_size=3, run=RUN | {"repeats": 2})
    assert meta["parts"] is None and meta["repeats"] == 2
    assert meta["gpu_uuid"] is None  # a CPU cell (CELLS gpu_uuid: the card, on GPUs)


def test_parts_measured_elsewhere_or_for_another_cell_are_measured_again(tmp_path, monkeypatch):
    run = RUN | {"repeats": 2}
    monkeypatch.setenv(parts.DEADLINE_ENV, str(time.time()))
    with pytest.raises(parts.RepeatsKept):
        cell(tmp_path, work=workload(3), batch_size=3, run=run)
    record_file = tmp_path / "cell" / ".parts" / "part-0" / parts.PART_FILE
    record = json.loads(record_file.read_text())
    record["key"]["device"] = "gpu GPU-00000000-another-card"
    record_file.write_text(json.dumps(record))
    monkeypatch.delenv(parts.DEADLINE_ENV)
    _, meta, console = cell(tmp_path, work=workload(3), batch_size=3, run=run)
    assert "measured with another device" in console and "repeat 1/2 done" in console
    assert meta["parts"] is None and meta["repeats"] == 2

    # another workload: the cell's fingerprint differs
    monkeypatch.setenv(parts.DEADLINE_ENV, str(time.time()))
    (tmp_path / "cell" / "meta.json").unlink()
    with pytest.raises(parts.RepeatsKept):
        cell(tmp_path, work=workload(3), batch_size=3, run=run)
    monkeypatch.delenv(parts.DEADLINE_ENV)
    _, meta, console = cell(tmp_path, work=workload(4), batch_size=3, run=run)
    assert "measured with another cell definition" in console and meta["parts"] is None


def test_a_continuous_cell_in_two_jobs(tmp_path, monkeypatch):
    from tokencarbon.cell import default_serving_engine

    serving = {"mode": "continuous", "max_num_seqs": 2, "arrival": "offline",
               "request_rate_per_s": None, "seed": 0}  # fmt: skip
    args = dict(work=workload(5), batch_size=2, serving=serving, run=RUN | {"repeats": 2},
                serving_engine=default_serving_engine)  # fmt: skip
    monkeypatch.setenv(parts.DEADLINE_ENV, str(time.time()))
    with pytest.raises(parts.RepeatsKept, match="kept repeats 1-1 of 2"):
        cell(tmp_path, **args)
    part0 = _part_tables(tmp_path / "cell" / ".parts" / "part-0")
    monkeypatch.delenv(parts.DEADLINE_ENV)
    out, meta, _ = cell(tmp_path, **args)
    requests = tables.read(out / "requests.parquet", tables.REQUESTS)
    steps = tables.read(out / "steps.parquet", tables.STEPS)
    # 5 requests of 2..6 output tokens in each repeat
    assert requests.groupby("repeat")["output_tokens"].sum().tolist() == [20, 20]
    assert sorted(steps["repeat"].unique()) == [0, 1]
    pd.testing.assert_frame_equal(
        requests[requests["repeat"] == 0].reset_index(drop=True), part0["requests"]
    )
    pd.testing.assert_frame_equal(steps[steps["repeat"] == 0].reset_index(drop=True), part0["steps"])
    assert [p["repeats"] for p in meta["parts"]] == [[0], [1]]
    assert meta["max_batch_requests"] == 2 and len(set(meta["token_digests"])) == 1

"""benchmarks/zeus_beside.py (issue 23, item 4): tokencarbon's cell energy beside Zeus's counter.

`compare` runs here on a pack written with tokencarbon's own writers (records.CellMeta, tables)
and a Zeus log written by hand; every energy below is worked out by hand. `record` reads a GPU
through Zeus itself: on a machine without one it must stop with an error naming what is missing
(the GPU test runs it for real).
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers import gpu_present
from tokencarbon import tables
from tokencarbon.records import CellMeta

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "zeus_beside.py"
sys.path.insert(0, str(SCRIPT.parent))
import zeus_beside as zb  # noqa: E402

S = 1_000_000_000
T0 = 1_800_000_000 * S  # the Zeus log's first reading (wall-clock ns)
H100 = "NVIDIA H100 80GB HBM3"
UUID = "GPU-11111111-2222-3333-4444-555555555555"
GPU = gpu_present()
ZEUS = importlib.util.find_spec("zeus") is not None


def true_mj(t_s: float) -> float:
    """The GPU's energy counter in the test world (mJ): 7,000,000 mJ at T0, then 150 W for 5 s
    and 250 W after."""
    return 7_000_000 + 150_000 * min(t_s, 5.0) + 250_000 * max(t_s - 5.0, 0.0)


def write_zeus_log(folder: Path, *, uuid: str = UUID, drop=range(81, 90), tail: str = "") -> Path:
    """Zeus readings every 0.1 s from T0 to T0 + 10 s (k = 0..100) of true_mj, the readings
    k = 81..89 missing (a 1.0 s gap from 8.0 s to 9.0 s), and its sidecar."""
    path = folder / "zeus.csv"
    rows = [
        f"{T0 + k * S // 10},{round(true_mj(k / 10))},2000\n" for k in range(101) if k not in drop
    ]
    path.write_text("t_wall_ns,energy_mj,read_ns\n" + "".join(rows) + tail)
    zb.sidecar_path(path).write_text(json.dumps({
        "zeus_version": "0.16.0", "gpu_name": H100, "gpu_uuid": uuid, "interval_s": 0.1,
        "nvml_index": 0, "zeus_gpu_index": 0, "state": "stopped", "stop_reason": "SIGTERM",
    }))  # fmt: skip
    return path


def write_cell(pack: Path, batch_size: int, windows_s: list[tuple[float, float]], scale: float):
    """A static GPT-2 cell measured on the H100 (one batch per window, 2 requests of 8 prompt
    and 4 output tokens each) with tokencarbon's own writers. Its NVML samples, every 0.05 s
    from 0.5 s before its first window to 0.5 s after its last, read `scale` x the true power
    and counter (a meter reading `scale` x Zeus's), so its counter energy is scale x the true one.
    Idle samples: 100 W over 2 s ending 1 s before the first window."""
    start, end = windows_s[0][0], windows_s[-1][1]
    folder = pack / "cells" / "h100-sxm-80gb" / "gpt2" / f"bs{batch_size}"
    ns = lambda t: T0 + round(t * S)  # noqa: E731
    batches = pd.DataFrame([{
        "repeat": 0, "batch_index": i, "n_requests": 2, "input_tokens": 16, "output_tokens": 8,
        "padded_input_len": 8, "max_output_tokens": 4, "start_ns": ns(a) - T0,
        "first_token_ns": ns(a) - T0 + S // 10, "end_ns": ns(b) - T0, "start_wall_ns": ns(a),
        "first_token_wall_ns": ns(a) + S // 10, "end_wall_ns": ns(b), "prompt_lens": [8, 8],
        "output_lens": [4, 4],
    } for i, (a, b) in enumerate(windows_s)])  # fmt: skip
    t_run = np.arange(round((start - 0.5) * 20), round((end + 0.5) * 20) + 1) / 20
    t_idle = np.arange(round((start - 3) * 20), round((start - 1) * 20) + 1) / 20
    power = pd.DataFrame({
        "t_wall_ns": [ns(t) for t in np.concatenate([t_idle, t_run])],
        "phase": ["idle"] * len(t_idle) + ["run"] * len(t_run),
        "source": "nvml", "modeled": False, "device_index": 0,
        "power_w": [100.0] * len(t_idle) + [scale * (150.0 if t < 5 else 250.0) for t in t_run],
        "power_avg_w": np.nan,
        "energy_counter_j": [1000.0 + 100 * (t - t_idle[0]) for t in t_idle]
        + [scale * true_mj(t) / 1000 for t in t_run],
        "util_pct": 90.0, "mem_used_bytes": 1e9, "temperature_c": 40.0, "sm_clock_mhz": 1980.0,
        "mem_clock_mhz": 2619.0, "throttle_reasons": 0,
    })  # fmt: skip
    tables.write(batches, folder / "batches.parquet", tables.BATCHES)
    tables.write(power, folder / "power.parquet", tables.POWER)
    CellMeta(
        platform="h100-sxm-80gb", model="gpt2", mode="static", batch_size=batch_size,
        architecture="gpt2", dtype="float16", quantization="none", quant_group_size=None,
        quant_library="", backend="torch", device_name=H100, gpu_uuid=UUID, arrival="offline",
        request_rate_per_s=float("nan"), n_requests=2 * len(windows_s), n_batches=len(windows_s),
        repeats=1, max_batch_requests=2, warmup_batches=1, window_start_wall_ns=ns(start),
        window_end_wall_ns=ns(end), idle_power_w=100.0, idle_shared=False, power_source="nvml",
        power_interval_s=0.05, peak_memory_bytes=1e9, foreign_cpu_share=float("nan"),
        cpu_steal_share=float("nan"), foreign_gpu_processes=0, git_commit="abc123",
        details={"gpu_lease": {"gpu_index": 0, "gpu_uuid": UUID}},
    ).write(folder / "meta.json")  # fmt: skip
    return folder


@pytest.fixture(scope="module")
def pack(tmp_path_factory) -> Path:
    pack = tmp_path_factory.mktemp("pack")
    # bs2: two batches [2.35, 4.35] s (150 W) and [5.05, 7.05] s (250 W), meter 2 % high.
    write_cell(pack, 2, [(2.35, 4.35), (5.05, 7.05)], 1.02)
    # bs4: [0.55, 1.55] s at 150 W, meter 1 % low.
    write_cell(pack, 4, [(0.55, 1.55)], 0.99)
    # bs8: [7.55, 8.55] s at 250 W, across the log's 1 s gap (8.0 -> 9.0 s).
    write_cell(pack, 8, [(7.55, 8.55)], 1.0)
    # bs16: [9.55, 10.55] s, ending after the log's last reading (10.0 s).
    write_cell(pack, 16, [(9.55, 10.55)], 1.0)
    return pack


@pytest.fixture(scope="module")
def record(pack, tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("zeus")
    out = folder / "beside.json"
    rc = zb.main(["compare", "--pack", str(pack), "--zeus-log", str(write_zeus_log(folder)),
                  "--out", str(out)])  # fmt: skip
    assert rc == 0
    return json.loads(out.read_text())


def test_zeus_energy_over_each_cells_windows_by_hand(record):
    cells = {c["cell"]: c for c in record["cells"]}
    assert sorted(cells) == ["h100-sxm-80gb/gpt2/bs2", "h100-sxm-80gb/gpt2/bs4",
                             "h100-sxm-80gb/gpt2/bs8"]  # fmt: skip
    bs2, bs4, bs8 = (cells[f"h100-sxm-80gb/gpt2/bs{n}"] for n in (2, 4, 8))
    # bs2: Zeus reads at 2.3 and 2.4 s, so 2.35 s is interpolated (nearest reading would be
    # 7.5 J off): 150 W x 2 s + 250 W x 2 s = 800 J over the two batches, not the 4.7 s
    # between the first start and the last end (the set-up between them is not measured work).
    assert bs2["zeus_energy_j"] == pytest.approx(800.0, rel=1e-12)
    assert bs2["n_windows"] == 2 and bs2["window_s"] == pytest.approx(4.0)
    # tokencarbon's own counter delta, 2 % high: 816 J; (816 - 800) / 800 = +0.02.
    assert bs2["tokencarbon_method"] == "counter"
    assert bs2["tokencarbon_energy_j"] == pytest.approx(816.0, rel=1e-9)
    assert bs2["relative_difference"] == pytest.approx(0.02, rel=1e-6)
    # bs4: 150 W x 1 s = 150 J; the meter 1 % low: 148.5 J, -0.01.
    assert bs4["zeus_energy_j"] == pytest.approx(150.0, rel=1e-12)
    assert bs4["tokencarbon_energy_j"] == pytest.approx(148.5, rel=1e-9)
    assert bs4["relative_difference"] == pytest.approx(-0.01, rel=1e-6)
    assert bs4["flags"] == [] and bs2["flags"] == []
    # bs8: 250 W x 1 s; its end (8.55 s) lies in the gap, interpolated between 8.0 and 9.0 s.
    assert bs8["zeus_energy_j"] == pytest.approx(250.0, rel=1e-12)
    assert bs8["flags"] == [zb.FLAG_GAP] and bs8["largest_zeus_gap_s"] == pytest.approx(1.0)
    assert (bs2["device_name"], bs2["gpu_uuid"], bs2["gpu_index"]) == (H100, UUID, 0)


def test_skipped_cell_and_summary_over_unflagged_cells(record):
    assert record["skipped"] == [{
        "cell": "h100-sxm-80gb/gpt2/bs16",
        "reason": "window ends 0.550 s after the Zeus log's last reading",
    }]  # fmt: skip
    s = record["summary"]
    assert (s["n_compared"], s["n_flagged"], s["n_skipped"]) == (3, 1, 1)
    # |+0.02| and |-0.01|: median 0.015, max 0.02 (bs2); the flagged bs8 is left out.
    assert s["median_abs_relative_difference"] == pytest.approx(0.015, rel=1e-6)
    assert s["max_abs_relative_difference"] == pytest.approx(0.02, rel=1e-6)
    assert s["max_cell"] == "h100-sxm-80gb/gpt2/bs2"
    assert record["max_gap_s"] == pytest.approx(0.5)  # 5 intervals of 0.1 s
    assert record["zeus"]["zeus_version"] == "0.16.0" and record["zeus"]["n_readings"] == 92
    assert record["commit"] and record["kind"] == "zeus-beside"


def test_interpolation_at_edges_between_readings():
    # Readings at 0, 1, 2 s: 0, 100 and 400 J (100 W, then 300 W). Over [0.5, 1.5] s the
    # counter interpolates to 50 J and 250 J: 200 J (the true energy: 50 + 150 = 200 J).
    log = zb.ZeusLog(np.array([T0, T0 + S, T0 + 2 * S]), np.array([0.0, 1e5, 4e5]), {})
    assert zb.zeus_window_energy(log, T0 + S // 2, T0 + 3 * S // 2, S) == (200.0, [], 1.0)
    # A counter that falls (a wrap or a driver reset) gives no energy, flagged; a bound of
    # 0.9 s flags the 1 s spacing as a gap.
    fell = zb.ZeusLog(log.t_wall_ns, np.array([0.0, 1e5, 50.0]), {})
    assert zb.zeus_window_energy(fell, T0 + S // 2, T0 + 3 * S // 2, S * 9 // 10) == (
        None, [zb.FLAG_GAP, zb.FLAG_DECREASE], 1.0)  # fmt: skip
    with pytest.raises(zb.BesideError, match="not inside the Zeus log"):
        zb.zeus_window_energy(log, T0 - 1, T0 + S, S)


def test_another_gpu_flags_every_cell(pack, tmp_path):
    log = zb.read_zeus_log(write_zeus_log(tmp_path, uuid="GPU-another"))
    rec = zb.compare(pack, log)
    assert all(zb.FLAG_OTHER_GPU in c["flags"] for c in rec["cells"])
    assert rec["summary"]["median_abs_relative_difference"] is None
    assert rec["summary"]["n_flagged"] == 3


def test_log_killed_mid_write_and_bad_rows(tmp_path):
    # A recorder killed mid-write leaves a last line without its newline: dropped, said so.
    log = zb.read_zeus_log(write_zeus_log(tmp_path, drop=(), tail=f"{T0 + 11 * S},77"))
    assert len(log.t_wall_ns) == 101 and "no newline" in log.notes[0]
    path = tmp_path / "zeus.csv"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:5] + ["12,abc,3\n"] + lines[5:]))
    with pytest.raises(zb.BesideError, match=r"zeus\.csv:6: '12,abc,3' is not a row of integers"):
        zb.read_zeus_log(path)
    path.write_text("".join(lines[:5] + [lines[3]] + lines[5:]))  # a time repeated
    with pytest.raises(zb.BesideError, match=r"zeus\.csv:6: t_wall_ns .* times must increase"):
        zb.read_zeus_log(path)
    zb.sidecar_path(path).write_text("{}")
    with pytest.raises(zb.BesideError, match=r"zeus\.json: missing key\(s\) \['zeus_version'"):
        zb.read_zeus_log(path)


def test_tokencarbon_energy_is_the_pipelines_for_a_committed_h100_cell():
    # The committed pack's metrics table (built by the workflow, gpu_study.sh) against what
    # compare reads from the cell's own files.
    pack = REPO / "benchmarks/results/paper-h100"
    ref = pd.read_parquet(pack / "tables/metrics.parquet").set_index(["model", "batch_size"])
    got = zb.tokencarbon_energy(pack / "cells/h100-sxm-80gb/gpt2-xl/bs100")
    assert got["energy_j"] == pytest.approx(ref.loc[("gpt2-xl", 100), "energy_j"], rel=1e-12)
    assert got["energy_method"] == ref.loc[("gpt2-xl", 100), "energy_method"] == "counter"


@pytest.mark.skipif(GPU, reason="a GPU is present: the GPU test runs record for real")
def test_record_without_a_gpu_names_what_is_missing(tmp_path):
    out = tmp_path / "zeus.csv"
    args = [str(SCRIPT), "record", "--out", str(out), "--duration-s", "1"]
    # As installed here (CI's environment may lack zeus: then the next case's error).
    run = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    if ZEUS:
        assert "finds no GPU to read here" in run.stderr and "NVML" in run.stderr
    else:
        assert "`zeus` cannot be imported" in run.stderr and "pip install" in run.stderr
    # Without the zeus package (an import of it fails, as where it is not installed).
    hide = (f"import runpy, sys; sys.modules['zeus'] = None; sys.argv = {args!r}; "
            f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')")  # fmt: skip
    run = subprocess.run([sys.executable, "-c", hide], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert "`zeus` cannot be imported" in run.stderr and "zeus==0.16.0" in run.stderr
    assert not out.exists() and not zb.sidecar_path(out).exists()  # nothing that looks like a log


@pytest.mark.gpu
@pytest.mark.skipif(not (GPU and ZEUS), reason="needs an NVIDIA GPU and the zeus package")
def test_record_polls_zeus_until_sigterm(tmp_path):
    import zeus

    out = tmp_path / "zeus.csv"
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "record", "--out", str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    time.sleep(2.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    log = zb.read_zeus_log(out)
    meta = log.meta
    assert (meta["state"], meta["stop_reason"], meta["zeus_version"]) == (
        "stopped", "SIGTERM", zeus.__version__)  # fmt: skip
    assert meta["gpu_name"] and meta["n_rows"] == len(log.t_wall_ns) and log.notes == []
    # About 2 s at 0.1 s (the process starts within the 2 s): at least 5 readings, none
    # further apart than 0.3 s, the counter never falling.
    gaps_s = np.diff(log.t_wall_ns) / 1e9
    assert len(log.t_wall_ns) >= 5 and gaps_s.max() < 0.3
    assert (np.diff(log.energy_mj) >= 0).all()

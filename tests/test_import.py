"""`tokencarbon import`: external power logs (real nvidia-smi logs from ../shared/data, and
hand-made dmon, dcgmi and CodeCarbon logs) plus timing files become cells in the measured cells'
schemas, with the energy an independent trapezoid over the raw rows gives."""

import datetime as dt
import json
import subprocess
import sys
import zoneinfo
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from harness import Project, study_config

from tokencarbon import tables
from tokencarbon.carbon import CarbonAccounting, ConstantIntensity
from tokencarbon.errors import ConfigError, InputError
from tokencarbon.importing import (
    cell_measurement,
    detect_format,
    import_cells,
    load_power_log,
    read_timing,
)

SCRIPT = Path(sys.executable).with_name("tokencarbon")


def tc(*args, cwd=None):
    return subprocess.run(
        [str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=300, cwd=cwd
    )


def raw_rows(path: Path, zone: str) -> tuple[np.ndarray, np.ndarray]:
    """(epoch s, W) straight from the CSV text, without tokencarbon: split on ', ', strptime."""
    t, p = [], []
    tz = zoneinfo.ZoneInfo(zone)
    for line in path.read_text().splitlines()[1:]:
        stamp, *_, power = line.split(", ")
        local = dt.datetime.strptime(stamp, "%Y/%m/%d %H:%M:%S.%f").replace(tzinfo=tz)
        t.append(local.timestamp())
        p.append(float(power.removesuffix(" W")))
    return np.array(t), np.array(p)


def trapezoid_j(t: np.ndarray, p: np.ndarray, start: float, end: float) -> float:
    """Trapezoid of power over [start, end], power interpolated linearly at the edges."""
    inside = (t > start) & (t < end)
    tt = np.concatenate([[start], t[inside], [end]])
    pp = np.concatenate([[np.interp(start, t, p)], p[inside], [np.interp(end, t, p)]])
    return float(np.sum(np.diff(tt) * (pp[1:] + pp[:-1]) / 2))


def iso(epoch_s: float) -> str:
    return dt.datetime.fromtimestamp(epoch_s, dt.timezone(dt.timedelta(hours=2))).isoformat()


def test_import_real_nvidia_smi_log_matches_an_independent_trapezoid(shared_data, tmp_path):
    log_path = shared_data / "nvidia-smi" / "power_100ms.csv"
    t, p = raw_rows(log_path, "Europe/Berlin")
    # Windows on the log's own clock (written with +02:00 offsets, CEST): two of batch 4, and one
    # of batch 1 exactly between the first two samples, worked by hand: lines 2-3 are 21.76 W at
    # 16:02:12.560 and 21.96 W at 16:02:12.660, so (21.76 + 21.96) / 2 x 0.100 s = 2.186 J.
    windows = [(t[0] + 0.44, t[0] + 2.94, 4), (t[0] + 7.44, t[0] + 14.69, 4), (t[0], t[1], 1)]
    timing = tmp_path / "timing.csv"
    timing.write_text(
        "start,end,output_tokens,input_tokens,batch_size\n"
        + "".join(f"{iso(s)},{iso(e)},{1000 * (k + 1)},{100 * (k + 1)},{b}\n"
                  for k, (s, e, b) in enumerate(windows))  # fmt: skip
    )
    out = tc("import", "--power", log_path, "--tz", "Europe/Berlin", "--timing", timing,
             "--model", "m7b", "--platform", "h100-sxm-80gb", "--out", tmp_path / "cells", "--json")  # fmt: skip
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert (report["power_field"], report["power_kind"]) == ("power.draw", "average")
    cells = {Path(c["directory"]).name: c for c in report["cells"]}
    assert set(cells) == {"bs1", "bs4"}
    assert cells["bs1"]["energy_j"] == pytest.approx(2.186, abs=1e-9)
    want = trapezoid_j(t, p, *windows[0][:2]) + trapezoid_j(t, p, *windows[1][:2])
    assert cells["bs4"]["energy_j"] == pytest.approx(want, rel=1e-9)
    assert cells["bs4"]["tokens"] == 1000 + 2000
    assert cells["bs4"]["j_per_token"] == pytest.approx(want / 3000, rel=1e-9)
    for c in cells.values():  # energy from a 1 s average is said to be so
        assert "integrated_from_1s_average" in c["qa_flags"] and c["energy_counter_j"] is None
    # The cell tree is in the measured cells' schemas.
    d = tmp_path / "cells" / "h100-sxm-80gb" / "m7b" / "bs4"
    batches = tables.read(d / "batches.parquet", tables.BATCHES)
    power = tables.read(d / "power.parquet", tables.POWER)
    meta = json.loads((d / "meta.json").read_text())
    assert list(batches["output_tokens"]) == [1000, 2000]
    assert list(batches["prompt_lens"].map(list)) == [[25] * 4, [50] * 4]  # 100 / 4, 200 / 4
    assert list(batches["output_lens"].map(list)) == [[250] * 4, [500] * 4]
    assert (power["phase"] == "run").all() and power["power_w"].isna().all()
    assert power["t_wall_ns"].min() <= batches["start_wall_ns"].min()
    assert power["t_wall_ns"].max() >= batches["end_wall_ns"].max()
    assert meta["imported"]["power_field"] == "power.draw"
    assert meta["imported"]["first_token_known"] is False
    assert (meta["backend"], meta["n_batches"], meta["n_requests"]) == ("imported", 2, 8)
    assert (meta["repeats"], meta["max_batch_requests"], meta["arrival"]) == (1, 4, "offline")
    missing = [k for k in tables.CELLS.names if k not in meta]
    assert not missing
    # A finished cell is never replaced by accident.
    again = tc("import", "--power", log_path, "--tz", "Europe/Berlin", "--timing", timing,
               "--model", "m7b", "--platform", "h100-sxm-80gb", "--out", tmp_path / "cells")  # fmt: skip
    assert again.returncode == 2 and "already holds a finished cell" in again.stderr


def test_import_real_50ms_log_in_python(shared_data, tmp_path):
    log_path = shared_data / "nvidia-smi" / "power_50ms.csv"
    t, p = raw_rows(log_path, "Europe/Berlin")
    start, end = round(t[0] + 0.5, 3), round(t[-1] - 0.5, 3)  # 2.624 s inside the 3.624 s log
    timing = tmp_path / "t.csv"
    timing.write_text(f"start,end,output_tokens\n{start:.3f},{end:.3f},64\n")  # epoch seconds
    log = load_power_log(log_path, tz="Europe/Berlin")
    windows = read_timing(timing, model="m", platform="h100-sxm-80gb", batch_size=2)
    cells = import_cells(log, windows, tmp_path / "cells", timing_path=timing)
    meas = cell_measurement(log, cells[0].windows, intensity=ConstantIntensity(100.0))
    # rel 1e-7: the test's epoch seconds are floats (~0.2 us steps at 1.7e9 s); tokencarbon's ns.
    assert meas.energy_j == pytest.approx(trapezoid_j(t, p, start, end), rel=1e-7)
    # 100 g/kWh: g = J / 3.6e6 x 100.
    assert meas.carbon_g == pytest.approx(meas.energy_j / 3.6e6 * 100)


TWO_GPUS = (
    "timestamp, index, name, pci.bus_id, uuid, power.draw [W]\n"
    "2025/01/15 12:00:00.000, 0, NVIDIA H100 80GB HBM3, 00000000:18:00.0, GPU-aaaa1111, 70 W\n"
    "2025/01/15 12:00:00.000, 1, NVIDIA H100 80GB HBM3, 00000000:3B:00.0, GPU-bbbb2222, 80 W\n"
    "2025/01/15 12:00:01.000, 0, NVIDIA H100 80GB HBM3, 00000000:18:00.0, GPU-aaaa1111, 72 W\n"
    "2025/01/15 12:00:01.000, 1, NVIDIA H100 80GB HBM3, 00000000:3B:00.0, GPU-bbbb2222, 82 W\n"
)


def test_two_gpu_log_refused_naming_the_devices_then_one_chosen(tmp_path):
    log = tmp_path / "smi.csv"
    log.write_text(TWO_GPUS)
    timing = tmp_path / "t.csv"
    timing.write_text("start,end,output_tokens\n2025-01-15T12:00:00Z,2025-01-15T12:00:01Z,10\n")
    common = ["--timing", timing, "--tz", "UTC", "--model", "m", "--platform", "h100-sxm-80gb",
              "--batch-size", "1", "--out", tmp_path / "cells"]  # fmt: skip
    out = tc("import", "--power", log, *common)
    assert out.returncode == 2
    assert "holds 2 GPUs" in out.stderr and "GPU-aaaa1111" in out.stderr
    assert "index 1 (name NVIDIA H100 80GB HBM3, pci.bus_id 00000000:3B:00.0" in out.stderr
    assert "--gpu 0" in out.stderr
    assert not (tmp_path / "cells").exists()  # nothing written
    out = tc("import", "--power", log, "--gpu", "1", *common, "--json")
    assert out.returncode == 0, out.stderr
    # GPU 1: 80 W -> 82 W over 1 s: (80 + 82) / 2 = 81 J.
    assert json.loads(out.stdout)["cells"][0]["energy_j"] == pytest.approx(81.0)
    # The log says the GPU is an H100: importing it as an A100 platform is refused.
    wrong = [a if a != "h100-sxm-80gb" else "a100-sxm4-40gb" for a in common]
    out = tc("import", "--power", log, "--gpu", "1", *wrong)
    assert out.returncode == 2
    assert (
        "device 'NVIDIA H100 80GB HBM3'" in out.stderr
        and "not platform 'a100-sxm4-40gb'" in out.stderr
    )


def test_window_outside_the_log_names_the_zone_mixup(shared_data, tmp_path):
    # The log is local Berlin time (CEST, +02:00); a timing file in UTC written as if it were the
    # log's wall clock lands 2 h late.
    timing = tmp_path / "t.csv"
    timing.write_text("start,end,output_tokens\n2025-04-24T16:02:14Z,2025-04-24T16:02:16Z,5\n")
    out = tc("import", "--power", shared_data / "nvidia-smi" / "power_100ms.csv",
             "--tz", "Europe/Berlin", "--timing", timing, "--model", "m", "--platform", "p",
             "--batch-size", "1", "--out", tmp_path / "cells")  # fmt: skip
    assert out.returncode == 2
    assert "row 1: window [2025-04-24T16:02:14+00:00" in out.stderr
    assert "about 2 h after the log" in out.stderr


@pytest.mark.parametrize(
    "text, message",
    [
        ("start,end\n1,2\n", r"missing \['output_tokens'\]"),
        ("start,end,output_tokens,tokens\n1,2,3\n", r"unknown \['tokens'\]"),
        ("start,end,output_tokens\n1736942400,1736942399,5\n", "row 1: end '1736942399' is not after"),
        ("start,end,output_tokens\n1736942400,1736942401,2.5\n", "'output_tokens': '2.5' is not a whole"),
        ("start,end,output_tokens\n1736942400,1736942402,5\n1736942401,1736942403,5\n",
         "rows 1 and 2 of cell p/m/bs1 overlap"),
        ("start,end,output_tokens\n2025-01-15 12:00,2025-01-15 12:01,5\n",
         "carry no UTC offset"),
        ("start,end,output_tokens,input_tokens,n_requests\n1736942400,1736942401,5,3,4\n",
         "row 1: input_tokens 3 for 4 requests"),
        # issue 21: counts no window can have (each request makes at least one token; a static
        # batch of 1 holds one request; the longest request's share is between 20/1 and 20)
        ("start,end,output_tokens,n_requests\n1736942400,1736942401,5,8\n",
         "row 1: output_tokens 5 for 8 requests; every request generates at least one token"),
        ("start,end,output_tokens,n_requests\n1736942400,1736942401,20,4\n",
         "row 1: n_requests 4 in a window of batch size 1"),
        ("start,end,output_tokens,max_output_tokens\n1736942400,1736942401,20,2\n",
         "max_output_tokens 2 for 20 tokens over 1 requests; the longest request has at least 20"),
        ("start,end,output_tokens,max_output_tokens\n1736942400,1736942401,20,30\n",
         "max_output_tokens 30 with 20 tokens over 1 requests; the longest has at most 20"),
        # huge, infinite and comma-decimal numbers: named, never an OverflowError
        ("start,end,output_tokens\n1736942400,1736942401,1e30\n",
         r"'output_tokens': '1e30' is beyond any count a cell can hold \(9223372036854775807"),
        ("start,end,output_tokens\n1736942400,1736942401,Infinity\n",
         "'output_tokens': 'Infinity' is not a whole number >= 1"),
        ("start,end,output_tokens\n1736942400,1736942401,5,5\n",
         r"line 2: 4 fields for the 3 columns.*'5,5' looks like a number written with a decimal comma"),
        # a cut timestamp is blamed on its own row, not on row 1
        ("start,end,output_tokens\n2025-01-15T12:00:00Z,2025-01-15T12:00:01Z,5\n"
         "2025-01-15T12:00:02Z,2025-01-15T12:0,5\n",
         "column 'end', row 2: timestamp '2025-01-15T12:0' is not .* as the log's other rows are"),
        ("start,end,output_tokens\n2025-01-15T12:00:00Z,2025-01-15T12:00:01Z,5\n"
         "2025-01-15T12:00:02Z,2025-01-15T12:00:03,5\n", "column 'end': rows mix .* row 2 differs"),
    ],
)  # fmt: skip
def test_bad_timing_files(tmp_path, text, message):
    path = tmp_path / "t.csv"
    path.write_text(text)
    with pytest.raises((InputError, ConfigError), match=message):
        read_timing(path, model="m", platform="p", batch_size=1)


def test_timing_names_become_folders(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("start,end,output_tokens,model\n1736942400,1736942401,5,../evil\n")
    with pytest.raises(InputError, match="model '../evil': use letters"):
        read_timing(path, platform="p", batch_size=1)


# --- nvidia-smi dmon, dcgmi dmon, CodeCarbon (hand-made logs, hand-worked energies) ----------

DMON = """#Date       Time        gpu    pwr  gtemp  mtemp     sm    mem   mclk   pclk
#YYYYMMDD   HH:MM:SS    Idx      W      C      C      %      %    MHz    MHz
 20250115   12:00:00      0    100     35      -     97     50   2619   1980
 20250115   12:00:01      0    200     36      -     98     51   2619   1980
#Date       Time        gpu    pwr  gtemp  mtemp     sm    mem   mclk   pclk
#YYYYMMDD   HH:MM:SS    Idx      W      C      C      %      %    MHz    MHz
 20250115   12:00:02      0    300     37      -     99     52   2619   1980
"""


def test_nvidia_smi_dmon(tmp_path):
    path = tmp_path / "dmon.log"
    path.write_text(DMON)
    assert detect_format(path) == "dmon"
    log = load_power_log(path, tz="UTC")
    s = log.samples
    # 12:00:00 UTC on 15 Jan 2025 = 1736942400 s (date -u -d '2025-01-15 12:00' +%s).
    assert s["t_wall_ns"].tolist() == [1_736_942_400_000_000_000 + k * 10**9 for k in range(3)]
    assert s["power_avg_w"].tolist() == [100, 200, 300] and s["power_w"].isna().all()
    assert s["temperature_c"].tolist() == [35, 36, 37] and s["sm_clock_mhz"].iloc[0] == 1980
    assert "1 s resolution" in log.notes[0]
    windows = read_timing_text(tmp_path, "1736942400,1736942402,10")
    meas = cell_measurement(log, windows, intensity=ConstantIntensity(0.0))
    # (100 + 200) / 2 x 1 s + (200 + 300) / 2 x 1 s = 150 + 250 = 400 J.
    assert meas.energy_j == pytest.approx(400.0)
    two = DMON + " 20250115   12:00:02      1    300     37      -     99     52   2619   1980\n"
    path.write_text(two)
    with pytest.raises(InputError, match="holds 2 GPUs: gpu 0, gpu 1.*--gpu 0"):
        load_power_log(path, tz="UTC")
    path.write_text("# gpu    pwr\n# Idx      W\n    0    100\n    0    200\n")  # no -o DT
    with pytest.raises(InputError, match="no Date and Time; log with `nvidia-smi dmon -o DT`"):
        load_power_log(path, "dmon", tz="UTC")


def read_timing_text(tmp_path, row: str):
    path = tmp_path / "timing.csv"
    path.write_text(f"start,end,output_tokens\n{row}\n")
    return read_timing(path, model="m", platform="p", batch_size=1)


def test_dcgmi_dmon_with_time_prefixes_and_energy_counter(tmp_path):
    # A wrapper put epoch seconds before each line. TOTEC (mJ) rises 10,000 mJ = 10 J per 0.1 s at
    # a steady POWER of 100 W: both measurements give 20 J over 0.2 s.
    lines = [
        "1736942400.000 #Entity   POWER   TOTEC   GTEMP",
        "1736942400.000 ID        W       mJ      C",
    ]
    for k in range(4):
        lines.append(f"{1736942400 + k / 10:.3f} GPU 0     100.000 {1_000_000 + 10_000 * k} 35")
    path = tmp_path / "dcgm.log"
    path.write_text("\n".join(lines) + "\n")
    assert detect_format(path) == "dcgmi"
    log = load_power_log(path)
    assert log.samples["energy_counter_j"].tolist() == [1000.0, 1010.0, 1020.0, 1030.0]
    windows = read_timing_text(tmp_path, "1736942400.05,1736942400.25,10")
    meas = cell_measurement(log, windows, intensity=ConstantIntensity(0.0))
    assert meas.energy_method == "counter"
    assert meas.energy_j == pytest.approx(20.0) and meas.energy_integrated_j == pytest.approx(20.0)


def test_dcgmi_dmon_without_times(tmp_path):
    path = tmp_path / "dcgm.log"
    path.write_text(
        "#Entity   POWER\nID        W\nGPU 0     50\nGPU 1     60\nGPU 0     70\nGPU 1     80\n"
    )
    with pytest.raises(InputError, match="holds 2 GPUs: GPU 0, GPU 1"):
        load_power_log(path, "dcgmi", start="2025-01-15T12:00:00Z", delay_ms=500)
    with pytest.raises(InputError, match="prints no times.*start.*delay_ms"):
        load_power_log(path, "dcgmi", gpu="1")
    log = load_power_log(path, "dcgmi", gpu="1", start="2025-01-15T12:00:00Z", delay_ms=500)
    # GPU 1's samples k = 0, 1 at 12:00:00.0 and 12:00:00.5 UTC.
    assert log.samples["t_wall_ns"].tolist() == [
        1_736_942_400_000_000_000,
        1_736_942_400_500_000_000,
    ]
    assert log.samples["power_avg_w"].tolist() == [60.0, 80.0]
    assert "reconstructed" in log.notes[0]


CODECARBON_HEADER = (
    "timestamp,project_name,run_id,duration,emissions,emissions_rate,cpu_power,gpu_power,"
    "ram_power,cpu_energy,gpu_energy,ram_energy,energy_consumed,gpu_count,gpu_model\n"
)


def test_codecarbon_runs(tmp_path):
    # One run ending 11:31:35 UTC after 300 s with gpu_energy 0.0275 kWh = 99,000 J (330 W mean).
    path = tmp_path / "emissions.csv"
    path.write_text(
        CODECARBON_HEADER
        + "2024-05-27T11:31:35,cc,r1,300,0.01,0,42,330,31,0.003,0.0275,0.002,0.0325,1,1 x A100\n"
    )
    assert detect_format(path) == "codecarbon"
    log = load_power_log(path, tz="UTC")
    # date -u -d '2024-05-27 11:31:35' +%s = 1716809495; the run began 300 s before.
    end_s = 1716809495
    whole = read_timing_text(tmp_path, f"{end_s - 300},{end_s},100")
    assert cell_measurement(log, whole, intensity=ConstantIntensity(0.0)).energy_j == pytest.approx(
        99_000
    )
    # A 100 s window inside the run gets the run's mean power: 330 W x 100 s = 33,000 J.
    part = read_timing_text(tmp_path, f"{end_s - 200},{end_s - 100},100")
    assert cell_measurement(log, part, intensity=ConstantIntensity(0.0)).energy_j == pytest.approx(
        33_000
    )
    assert "mean power" in log.notes[0]
    path.write_text(
        CODECARBON_HEADER
        + "2024-05-27T11:31:35,cc,r1,300,0.01,0,42,330,31,0.003,0.0275,0.002,0.0325,2,2 x A100\n"
    )
    with pytest.raises(InputError, match="sum over 2 GPUs \\(2 x A100\\).*all_gpus=True"):
        load_power_log(path, tz="UTC")
    assert len(load_power_log(path, tz="UTC", all_gpus=True).samples) == 2


def test_unknown_log_format(tmp_path):
    path = tmp_path / "x.txt"
    path.write_text("hello\n")
    with pytest.raises(InputError, match="not a power log tokencarbon knows.*'hello'"):
        load_power_log(path)


# --- through the workflow: imported cells aggregated, given metrics and exported --------------


@pytest.mark.slow
def test_imported_cells_through_metrics_and_export(tmp_path):
    config = {
        "platforms": {"a100-sxm4-40gb": {"import_only": True}},
        "families": {"tiny": {"tokenizer": "builtin", "min_tokens": 4, "max_tokens": 128}},
        "models": {"tiny-llama": {"architecture": "tiny-llama", "family": "tiny",
                                  "dtype": "float16"}},  # fmt: skip
    }
    made = Project.make(tmp_path / "project", config)
    project, study = made.path, made.results  # the study's folder, results/<study>/
    # A steady 150 W (instant power) sampled every 0.1 s for 10 s from 12:00:00 UTC; two windows
    # of batch 4: [1 s, 3 s] and [5 s, 6 s] after the start: 150 W x 3 s = 450 J for 300 tokens,
    # 1.5 J/token; carbon at 413 g/kWh: 450 / 3.6e6 x 413 = 0.051625 g.
    log = tmp_path / "smi.csv"
    log.write_text(
        "timestamp, power.draw.instant [W]\n"
        + "".join(f"2025-01-15T12:00:{k // 10:02d}.{k % 10}00Z, 150.00 W\n" for k in range(101))
    )
    timing = tmp_path / "timing.csv"
    timing.write_text(
        "start,end,output_tokens,input_tokens,batch_size\n"
        "2025-01-15T12:00:01Z,2025-01-15T12:00:03Z,200,40,4\n"
        "2025-01-15T12:00:05Z,2025-01-15T12:00:06Z,100,20,4\n"
    )
    out = tc("import", "--power", log, "--timing", timing, "--model", "tiny-llama",
             "--platform", "a100-sxm4-40gb", "--architecture", "tiny-llama", "--dtype", "float16",
             "--device-name", "NVIDIA A100-SXM4-40GB", "--out", study / "cells")  # fmt: skip
    assert out.returncode == 0, out.stderr
    run = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "1", made.in_study("results/export/metrics.csv")],
        cwd=project, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    # Nothing was measured here: only aggregation, metrics and export ran.
    assert "run_cell" not in run.stdout + run.stderr
    record = json.loads(
        (study / "export/cells/a100-sxm4-40gb/tiny-llama/bs4.json").read_text()
    )
    assert record["energy"]["total_energy_joules"] == pytest.approx(450.0)
    assert record["energy"]["energy_per_token_joules"] == pytest.approx(1.5)
    assert record["carbon"]["operational_g"] == pytest.approx(450 / 3.6e6 * 413)
    assert record["cell"]["backend"] == "imported"
    assert record["provenance"]["imported"]["power_field"] == "power.draw.instant"
    assert record["workload"]["total_output_tokens"] == 300
    csv = pd.read_csv(study / "export/metrics.csv")
    assert csv["energy_j"].tolist() == pytest.approx([450.0])


@pytest.mark.slow
def test_imported_platform_source_builds_its_cells_in_the_workflow(tmp_path):
    # .test/config-imported: a cpu platform measured here beside an A100 imported from its logs.
    # The log (.test/data/imported/smi.csv): steady 200 W instant power on GPU 1 of 2, every 0.5 s
    # for 10 s from 12:00:00 UTC (GPU 0 at 50 W); two windows of batch 2 in the timing file,
    # [2 s, 4 s] and [6 s, 7 s]: 200 W x 3 s = 600 J for 120 tokens, 5 J/token. The log names no
    # device (no name column): platforms.<p>.imported.device_name does (issue 21: the schema
    # refused that key, and compute_metrics stopped at 'unknown (imported)').
    project = Project.make(tmp_path / "project", study_config("imported"))
    out = project.output("results/export/metrics.csv")
    assert "import_cell" in out and "run_cell" in out  # its cells imported, the cpu's measured
    meta = json.loads(
        (project / "results/cells/a100-sxm4-40gb/tiny-llama/bs2/meta.json").read_text()
    )
    assert meta["imported"]["device"]["index"] == "1" and meta["dtype"] == "float32"
    assert meta["device_name"] == "NVIDIA A100-SXM4-40GB" and meta["backend"] == "imported"
    record = json.loads(
        (project / "results/export/cells/a100-sxm4-40gb/tiny-llama/bs2.json").read_text()
    )
    assert record["energy"]["total_energy_joules"] == pytest.approx(600.0)
    assert record["energy"]["energy_per_token_joules"] == pytest.approx(5.0)
    # the measured platform's cell beside it, in the same tables
    cells = pd.read_parquet(project / "results/tables/cells.parquet")
    assert sorted(zip(cells.platform, cells.batch_size)) == [("a100-sxm4-40gb", 2), ("cpu", 1)]


# --- imported cells through aggregate and metrics, in this process ---------------------------


def test_power_draw_only_log_and_unknown_first_token_through_metrics(tmp_path):
    """A log with only nvidia-smi `power.draw` (the driver's 1 s average) and two timing files,
    one with first_token and one without, imported and given metrics like the workflow's
    aggregate_cells + compute_metrics (one integrator path: tokencarbon.energy)."""
    from tokencarbon.aggregate import aggregate
    from tokencarbon.energy import AVERAGE_FLAG
    from tokencarbon.metrics import FIRST_TOKEN_UNKNOWN_FLAG, compute_all, resolve_cell_platforms
    from tokencarbon.models import load_architecture

    # A constant 200 W average every 0.1 s for 10 s from 12:00:00 UTC; no power.draw.instant.
    log_path = tmp_path / "smi.csv"
    log_path.write_text(
        "timestamp, power.draw [W]\n"
        + "".join(f"2025-01-15T12:00:{k // 10:02d}.{k % 10}00Z, 200.00 W\n" for k in range(101))
    )
    # bs2 (first_token known): windows [1 s, 3 s] (first token at 1.5 s, 100 tokens, 50 per
    # request) and [5 s, 6 s] (first token at 5.25 s, 40 tokens, 20 per request).
    known = tmp_path / "known.csv"
    known.write_text(
        "start,end,first_token,output_tokens,input_tokens,batch_size\n"
        "2025-01-15T12:00:01Z,2025-01-15T12:00:03Z,2025-01-15T12:00:01.5Z,100,20,2\n"
        "2025-01-15T12:00:05Z,2025-01-15T12:00:06Z,2025-01-15T12:00:05.25Z,40,20,2\n"
    )
    # bs4 (no first_token column): windows [7 s, 8 s] and [8.5 s, 9 s], 80 and 40 tokens.
    unknown = tmp_path / "unknown.csv"
    unknown.write_text(
        "start,end,output_tokens,input_tokens,batch_size\n"
        "2025-01-15T12:00:07Z,2025-01-15T12:00:08Z,80,40,4\n"
        "2025-01-15T12:00:08.5Z,2025-01-15T12:00:09Z,40,40,4\n"
    )
    log = load_power_log(log_path)
    assert (log.power_field, log.power_kind) == ("power.draw", "average")
    assert log.samples["power_w"].isna().all()
    out = tmp_path / "cells"
    dirs = []
    for timing in (known, unknown):
        windows = read_timing(timing, None, model="tiny-llama", platform="a100-sxm4-40gb")
        dirs += [c.directory for c in import_cells(
            log, windows, out, timing_path=timing, architecture="tiny-llama", dtype="float16",
            device_name="NVIDIA A100-SXM4-40GB")]  # fmt: skip
    unknown_batches = tables.read(dirs[1] / "batches.parquet", tables.BATCHES)
    assert unknown_batches["first_token_ns"].tolist() == [-1, -1]  # not the start time
    assert unknown_batches["first_token_wall_ns"].tolist() == [-1, -1]
    assert json.loads((dirs[1] / "meta.json").read_text())["imported"]["first_token_known"] is False

    t = aggregate(dirs)
    metrics, _ = compute_all(
        t.cells, t.batches, t.power, {"tiny-llama": load_architecture("tiny-llama")},
        resolve_cell_platforms(t.cells), CarbonAccounting(ConstantIntensity(413.0)),
    )  # fmt: skip
    rows = {int(r["batch_size"]): r for r in metrics.to_dict("records")}
    bs2, bs4 = rows[2], rows[4]
    # Energy: the constant average x duration: 200 W x (2 s + 1 s) = 600 J; 200 W x 1.5 s = 300 J.
    assert bs2["energy_j"] == pytest.approx(600.0) and bs4["energy_j"] == pytest.approx(300.0)
    assert bs2["energy_method"] == bs4["energy_method"] == "integrated"
    # J/token: 600 / 140 and 300 / 120 = 2.5.
    assert bs2["j_per_token"] == pytest.approx(600 / 140)
    assert bs4["j_per_token"] == pytest.approx(2.5)
    for row in (bs2, bs4):
        assert AVERAGE_FLAG in row["qa_flags"].split(";")
    # bs2 keeps its TTFT: mean of 0.5 s and 0.25 s = 0.375 s; TPOT (2 - 0.5) / 49 and
    # (1 - 0.25) / 19 averaged = (0.030612 + 0.039474) / 2 = 0.035043 s.
    assert bs2["ttft_s"] == pytest.approx(0.375)
    assert bs2["tpot_s"] == pytest.approx((1.5 / 49 + 0.75 / 19) / 2)
    assert FIRST_TOKEN_UNKNOWN_FLAG not in bs2["qa_flags"].split(";")
    # bs4: TTFT and TPOT unknown (NaN, flagged), not 0 s and a window / (max_output_tokens - 1);
    # s/token per user still known: (1 s / 20 + 0.5 s / 10) / 2 = 0.05.
    assert np.isnan(bs4["ttft_s"]) and np.isnan(bs4["tpot_s"]) and np.isnan(bs4["ttft_p50_s"])
    assert FIRST_TOKEN_UNKNOWN_FLAG in bs4["qa_flags"].split(";")
    assert bs4["s_per_token_user"] == pytest.approx(0.05)


# --- issue 21: the wrong hardware, impossible and truncated logs --------------------------------


def _smi(tmp_path, text: str, name: str = "smi.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _steady(n: int, watts: str = "150.00 W", extra: str = "") -> str:
    """n samples one second apart from 12:00:00 UTC on 15 Jan 2025 (1736942400 s)."""
    return "".join(f"2025-01-15T12:00:{k:02d}.000Z, {extra}{watts}\n" for k in range(n))


def test_a_log_naming_another_gpu_is_refused_for_the_platform(tmp_path):
    # An RTX 4090's log with a name column and no index / uuid / pci.bus_id: the name is read.
    log = _smi(tmp_path, "timestamp, name, power.draw [W]\n"
               + _steady(10, extra="NVIDIA GeForce RTX 4090, "))  # fmt: skip
    assert load_power_log(log).device == {"name": "NVIDIA GeForce RTX 4090"}
    timing = tmp_path / "t.csv"
    timing.write_text("start,end,output_tokens,batch_size\n"
                      "2025-01-15T12:00:01Z,2025-01-15T12:00:03Z,200,4\n")  # fmt: skip
    out = tc("import", "--power", log, "--timing", timing, "--model", "m",
             "--platform", "a100-sxm4-40gb", "--out", tmp_path / "cells")  # fmt: skip
    assert out.returncode == 2
    assert f"device 'NVIDIA GeForce RTX 4090' ({log}) is not platform 'a100-sxm4-40gb'" in out.stderr
    assert "no row matches it" in out.stderr and not (tmp_path / "cells").exists()
    # A row that does not exist is refused, naming the rows that do.
    out = tc("import", "--power", log, "--timing", timing, "--model", "m",
             "--platform", "rtx-4090", "--out", tmp_path / "cells")  # fmt: skip
    assert out.returncode == 2 and not (tmp_path / "cells").exists()
    assert ("platform 'rtx-4090' is no row of resources/platforms.csv; valid rows: cpu, "
            "v100s-pcie-32gb, a100-sxm4-40gb, a100-sxm4-80gb, h100-sxm-80gb, h200-141gb") in out.stderr
    # nvidia-smi's other spelling of the column (gpu_name) is the same column.
    alias = _smi(tmp_path, "timestamp, gpu_name, power.draw [W]\n"
                 + _steady(3, extra="NVIDIA H200, "), "alias.csv")  # fmt: skip
    assert load_power_log(alias).device == {"name": "NVIDIA H200"}


def test_device_name_contradicting_the_log_is_refused(tmp_path):
    log = _smi(tmp_path, "timestamp, name, power.draw [W]\n"
               + _steady(10, extra="NVIDIA H100 80GB HBM3, "))  # fmt: skip
    timing = tmp_path / "t.csv"
    timing.write_text("start,end,output_tokens,batch_size\n"
                      "2025-01-15T12:00:01Z,2025-01-15T12:00:03Z,200,4\n")  # fmt: skip
    common = ["--power", log, "--timing", timing, "--model", "m", "--out", tmp_path / "cells"]
    out = tc("import", *common, "--platform", "h200-141gb", "--device-name", "NVIDIA H200")
    assert out.returncode == 2 and not (tmp_path / "cells").exists()
    assert (f"--device-name 'NVIDIA H200' contradicts the power log {log}, whose device is "
            "'NVIDIA H100 80GB HBM3'") in out.stderr  # fmt: skip
    # The same name as the log's is no contradiction: 150 W x 2 s = 300 J.
    out = tc("import", *common, "--platform", "h100-sxm-80gb",
             "--device-name", "NVIDIA H100 80GB HBM3", "--json")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["cells"][0]["energy_j"] == pytest.approx(300.0)


def test_other_columns_that_name_a_gpu_tell_gpus_apart(tmp_path):
    # Two GPUs told apart by their board serial only: refused until one is chosen by it.
    rows = "".join(
        f"2025/01/15 12:00:0{k}.000, NVIDIA H100 80GB HBM3, {serial}, {w + 2 * k} W\n"
        for k in range(2) for serial, w in (("1654922005021", 70), ("1654922005022", 80))
    )
    log = _smi(tmp_path, "timestamp, name, serial, power.draw.instant [W]\n" + rows)
    with pytest.raises(InputError, match="holds 2 GPUs: serial 1654922005021"):
        load_power_log(log, tz="UTC")
    chosen = load_power_log(log, tz="UTC", gpu="1654922005022")
    assert chosen.device == {"serial": "1654922005022", "name": "NVIDIA H100 80GB HBM3"}
    windows = read_timing_text(tmp_path, "1736942400,1736942401,10")
    # 80 W -> 82 W over 1 s: (80 + 82) / 2 = 81 J.
    assert cell_measurement(chosen, windows, intensity=ConstantIntensity(0.0)).energy_j == (
        pytest.approx(81.0)
    )
    # One index named two ways: logs of two machines in one file.
    mixed = _smi(tmp_path, "timestamp, index, name, power.draw [W]\n"
                 "2025/01/15 12:00:00.000, 0, NVIDIA H100 80GB HBM3, 70 W\n"
                 "2025/01/15 12:00:01.000, 0, NVIDIA A100-SXM4-40GB, 70 W\n", "mixed.csv")  # fmt: skip
    with pytest.raises(InputError, match=r"line 3: GPU index 0 \(name NVIDIA H100 80GB HBM3\) is "
                       r"named 'NVIDIA A100-SXM4-40GB' here and 'NVIDIA H100 80GB HBM3' at line 2"):
        load_power_log(mixed, tz="UTC")
    # No identifying column, two names: two GPUs, refused.
    named = _smi(tmp_path, "timestamp, name, power.draw [W]\n"
                 "2025/01/15 12:00:00.000, NVIDIA H100 80GB HBM3, 70 W\n"
                 "2025/01/15 12:00:01.000, NVIDIA H200, 70 W\n", "named.csv")  # fmt: skip
    with pytest.raises(InputError, match=r"the 'name' column names 2 GPUs: 'NVIDIA H100 80GB HBM3' "
                       r"\(line 2\); 'NVIDIA H200' \(line 3\)"):
        load_power_log(named, tz="UTC")


def test_a_line_cut_by_a_killed_logger_is_dropped_with_a_note(tmp_path):
    # 150 W at 0..4 s; the logger was killed writing the 5 s line: '15' of '150.00 W', no newline.
    log_path = _smi(tmp_path, "timestamp, power.draw.instant [W]\n" + _steady(5)
                    + "2025-01-15T12:00:05.000Z, 15")  # fmt: skip
    log = load_power_log(log_path)
    assert len(log.samples) == 5 and log.samples["power_w"].tolist() == [150.0] * 5
    assert "line 7 dropped: the file ends in the middle of it" in log.notes[-1]
    # Inside the whole samples: 150 W x 3 s = 450 J.
    inside = read_timing_text(tmp_path, "2025-01-15T12:00:00.5Z,2025-01-15T12:00:03.5Z,10")
    assert cell_measurement(log, inside, intensity=ConstantIntensity(0.0)).energy_j == (
        pytest.approx(450.0)
    )
    # A window past the last whole sample (4 s) is refused, naming the log's span (read as 15 W,
    # the fragment gave this window 150 W x 3.5 s + (150 + 15) / 2 W x 1 s = 607.5 J, unflagged).
    past = read_timing_text(tmp_path, "2025-01-15T12:00:00.5Z,2025-01-15T12:00:05Z,10")
    with pytest.raises(InputError, match=r"row 1: window .* is not inside the power log .*"
                       r"2025-01-15T12:00:04\+00:00\]"):
        import_cells(log, past, tmp_path / "cells", timing_path=tmp_path / "timing.csv")
    # The command line says so too.
    timing = tmp_path / "t.csv"
    timing.write_text("start,end,output_tokens\n2025-01-15T12:00:00.5Z,2025-01-15T12:00:03.5Z,10\n")
    out = tc("import", "--power", log_path, "--timing", timing, "--model", "m", "--batch-size",
             "1", "--platform", "h100-sxm-80gb", "--out", tmp_path / "cli")  # fmt: skip
    assert out.returncode == 0 and "note            line 7 dropped" in out.stdout, out.stderr
    # A cut line followed by more (the logger restarted, appending): refused naming it.
    restarted = _smi(tmp_path, "timestamp, power.draw [W]\n" + _steady(2)
                     + "2025-01-15T12:00:02.000Z, 15\n2025-01-15T12:00:03.000Z, 150.00 W\n",
                     "restarted.csv")  # fmt: skip
    with pytest.raises(InputError, match=r"line 4: value '15' has no unit, while the column's "
                       r"values carry ' W' \(line 2: '150.00 W'\)"):
        load_power_log(restarted)
    # dmon and CodeCarbon logs: a cut last line is dropped the same way.
    dmon = _smi(tmp_path, DMON + " 20250115   12:00:03      0    40", "dmon.log")
    dlog = load_power_log(dmon, tz="UTC")
    assert len(dlog.samples) == 3 and "line 8 dropped" in dlog.notes[-1]
    cc = _smi(tmp_path, CODECARBON_HEADER
              + "2024-05-27T11:31:35,cc,r1,300,0.01,0,42,330,31,0.003,0.0275,0.002,0.0325,1,1 x A100\n"
              + "2024-05-27T11:41:35,cc,r2,300,0.01,0,42,33", "emissions.csv")  # fmt: skip
    clog = load_power_log(cc, tz="UTC")
    assert len(clog.samples) == 2 and "line 3 dropped" in clog.notes[-1]


@pytest.mark.parametrize(
    "text, message",
    [
        ("timestamp, power.draw [W]\n2025-01-15T12:00:00.000Z, 150,00 W\n",
         r"line 2: 3 fields for the 2 columns .* \('150,00 W' looks like a number written with a "
         r"decimal comma"),
        ("timestamp, power.draw [W]\n2025-01-15T12:00:00.000Z, 1e400 W\n",
         "line 2: value '1e400 W' is not a finite number"),
        ("timestamp, power.draw [W]\n2025-01-15T12:00:00.000Z, -5.00 W\n",
         r"line 2: value '-5.00 W' is not a power one GPU can draw \(0 to 10000 W\)"),
        ("timestamp, power.draw [W]\n2025-01-15T12:00:00.000Z, 150000.00 W\n",
         "line 2: value '150000.00 W' is not a power one GPU can draw"),
        # a second header mid-file, and a timestamp cut mid-file: blamed on their own lines
        ("timestamp, power.draw [W]\n2025/01/15 12:00:00.000, 1 W\n2025/01/15 12:00:01.000, 1 W\n"
         "timestamp, power.draw [W]\n2025/01/15 12:00:02.000, 1 W\n",
         "line 4: the header again"),
        ("timestamp, power.draw [W]\n2025/01/15 12:00:00.000, 1 W\n2025/01/15 12:00:0, 1 W\n"
         "2025/01/15 12:00:02.000, 1 W\n",
         r"line 3: timestamp '2025/01/15 12:00:0' is not '%Y/%m/%d %H:%M:%S.%f' local time like the "
         r"log's other rows \(e.g. '2025/01/15 12:00:00.000'\)"),
        ("timestamp, power.draw [W]\n2025-01-15T12:00:00.000Z, 1 W\n2025-01-15T12:0, 1 W\n"
         "2025-01-15T12:00:02.000Z, 1 W\n",
         "line 3: timestamp '2025-01-15T12:0' is not .* as the log's other rows are"),
        ("timestamp, power.draw [W]\n2025-01-15T12:00:00.000Z, 1 W\n2025-01-15T12:00:01.0, 1 W\n"
         "2025-01-15T12:00:02.000Z, 1 W\n", "line 3 differs from most"),
    ],
)  # fmt: skip
def test_impossible_values_in_a_log_name_file_line_and_value(tmp_path, text, message):
    path = _smi(tmp_path, text)
    with pytest.raises(InputError, match=message) as err:
        load_power_log(path, tz="UTC")
    assert str(err.value).startswith(str(path))


def test_a_file_that_is_not_utf8_names_its_line_and_byte(tmp_path):
    # 'é' saved as Latin-1 (0xe9) on line 3 of a log and line 2 of a timing file.
    log = tmp_path / "smi.csv"
    log.write_bytes("timestamp, name, power.draw [W]\n2025/01/15 12:00:00.000, GPU, 1 W\n"
                    "2025/01/15 12:00:01.000, GPU é, 1 W\n".encode("latin-1"))  # fmt: skip
    with pytest.raises(InputError, match=r"smi.csv, line 3: byte b'\\xe9' \(offset 95\) is not "
                       r"UTF-8.*save it as UTF-8"):
        load_power_log(log, tz="UTC")
    timing = tmp_path / "t.csv"
    timing.write_bytes("start,end,output_tokens,model\n1736942400,1736942401,5,café\n"
                       .encode("latin-1"))  # fmt: skip
    with pytest.raises(InputError, match=r"t.csv, line 2: byte b'\\xe9'"):
        read_timing(timing, platform="p", batch_size=1)


def _imported_config(tmp_path, log_text: str, timing_row: str, **spec) -> dict:
    log = tmp_path / "power.log"
    log.write_text(log_text)
    timing = tmp_path / "timing.csv"
    timing.write_text(f"start,end,output_tokens\n{timing_row}\n")
    imported = {"power_log": str(log), "timing": str(timing), "model": "tiny-llama",
                "batch_size": 1, **spec}  # fmt: skip
    return {"platforms": {"a100-sxm4-40gb": {"imported": imported}}}


def test_an_imported_platform_is_checked_when_the_dag_is_built(tmp_path):
    from snakemake.utils import validate

    from tokencarbon.importing import check_imported_platform

    models = ["tiny-llama"]
    # An nvidia-smi dmon log names no device: the key docs/import.md lists gives it, and the
    # schema takes it.
    config = _imported_config(tmp_path, DMON, "1736942400,1736942402,10", tz="UTC")
    with pytest.raises(ConfigError) as err:
        check_imported_platform(config, models, "a100-sxm4-40gb")
    assert ("config key platforms.a100-sxm4-40gb.imported: the power log "
            f"{tmp_path / 'power.log'} names no device (nvidia_smi_dmon: index 0)") in str(err.value)
    assert "give config key platforms.a100-sxm4-40gb.imported.device_name" in str(err.value)
    assert "'^NVIDIA A100-SXM4-40GB$'" in str(err.value)
    config = _imported_config(tmp_path, DMON, "1736942400,1736942402,10", tz="UTC",
                              device_name="NVIDIA A100-SXM4-40GB")  # fmt: skip
    check_imported_platform(config, models, "a100-sxm4-40gb")
    schema = str(Path(__file__).parents[1] / "workflow/schemas/config.schema.yaml")
    full = {"platforms": config["platforms"],
            "families": {"tiny": {}}, "models": {"tiny-llama": {"architecture": "tiny-llama",
                                                                 "family": "tiny"}}}  # fmt: skip
    validate(full, schema)  # device_name is a key of platforms.<name>.imported
    # Another GPU's name, a window past the log: refused before any job, naming the key.
    config = _imported_config(tmp_path, DMON, "1736942400,1736942402,10", tz="UTC",
                              device_name="NVIDIA H100 80GB HBM3")  # fmt: skip
    with pytest.raises(ConfigError, match="device 'NVIDIA H100 80GB HBM3' "
                       r"\(config key platforms.a100-sxm4-40gb.imported.device_name\) is not "
                       "platform 'a100-sxm4-40gb'"):
        check_imported_platform(config, models, "a100-sxm4-40gb")
    config = _imported_config(tmp_path, DMON, "1736942400,1736942409,10", tz="UTC",
                              device_name="NVIDIA A100-SXM4-40GB")  # fmt: skip
    with pytest.raises(ConfigError, match="row 1: window .* is not inside the power log"):
        check_imported_platform(config, models, "a100-sxm4-40gb")

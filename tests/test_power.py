"""Power sources: the nvidia-smi CSV importer on real logs, the modeled CPU source, NVML."""

import math
import os
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest
from helpers import gpu_present

from tokencarbon.errors import ConfigError, HardwareMismatchError, InputError
from tokencarbon.power import check_spec, describe_gpu, open_source
from tokencarbon.power.nvidia_smi import import_nvidia_smi, read_nvidia_smi_csv
from tokencarbon.power.modeled import ModeledCpuSource
from tokencarbon.power.nvml import NvmlSource
from tokencarbon.tables import POWER

MIB = 1024 * 1024


GPU = gpu_present()


# --- nvidia-smi CSV logs (real files, values read off them with sed/awk) ---------------------
# power.draw is the driver's 1 s average on Ampere and newer (NVML nvmlDeviceGetPowerUsage), so it
# lands in power_avg_w; power_w (instant power) comes only from power.draw.instant.


def test_nvidia_smi_50ms_log(shared_data):
    log = import_nvidia_smi(shared_data / "nvidia-smi" / "power_50ms.csv", tz="Europe/Berlin")
    df = log.samples
    assert (log.power_field, log.power_kind, log.energy_from_average) == (
        "power.draw",
        "average",
        True,
    )
    assert list(df.columns) == POWER.names
    assert len(df) == 73  # 74 lines, one header
    # First line "2024/10/30 18:42:33.189, 22.89 W". Berlin is on CET (UTC+1) after 27 Oct 2024,
    # so 17:42:33.189 UTC; `date -u -d '2024-10-30 17:42:33' +%s` = 1730310153.
    assert df["t_wall_ns"].iloc[0] == 1_730_310_153_189_000_000
    assert df["power_avg_w"].iloc[0] == 22.89
    # Last line "2024/10/30 18:42:36.813, 22.63 W": 1730313756 - 3600 s, .813.
    assert df["t_wall_ns"].iloc[-1] == 1_730_310_156_813_000_000
    assert df["power_avg_w"].iloc[-1] == 22.63
    assert df["power_avg_w"].min() == 20.92  # line 40
    assert df["power_avg_w"].max() == 23.00  # line 5
    assert df["power_w"].isna().all()  # never passed off as instant power
    assert (df["source"] == "nvidia_smi_csv").all() and not df["modeled"].any()
    assert (df["phase"] == "run").all()
    assert df["energy_counter_j"].isna().all() and df["util_pct"].isna().all()
    assert (df["device_index"] == -1).all() and (df["throttle_reasons"] == -1).all()


def test_nvidia_smi_power_draw_declared_instant(shared_data):
    # On an A100 or older power.draw IS instant power (NVML docs); the caller says so.
    log = import_nvidia_smi(
        shared_data / "nvidia-smi" / "power_50ms.csv", tz="Europe/Berlin", power_draw="instant"
    )
    assert (log.power_field, log.power_kind) == ("power.draw", "instant")
    assert log.samples["power_w"].iloc[0] == 22.89 and log.samples["power_avg_w"].isna().all()
    with pytest.raises(ConfigError, match=r"power_draw='mean'.*\('average', 'instant'\)"):
        import_nvidia_smi(shared_data / "nvidia-smi" / "power_50ms.csv", "UTC", power_draw="mean")


def test_nvidia_smi_100ms_log(shared_data):
    df = read_nvidia_smi_csv(shared_data / "nvidia-smi" / "power_100ms.csv", tz="Europe/Berlin")
    assert len(df) == 163
    # "2025/04/24 16:02:12.560, 21.76 W": Berlin is on CEST (UTC+2) in April, so 14:02:12.560
    # UTC; `date -u -d '2025-04-24 14:02:12' +%s` = 1745503332.
    assert df["t_wall_ns"].iloc[0] == 1_745_503_332_560_000_000
    # Last "16:02:28.841, 57.84 W": 16.281 s after the first.
    assert df["t_wall_ns"].iloc[-1] - df["t_wall_ns"].iloc[0] == 16_281_000_000
    assert df["power_avg_w"].iloc[-1] == 57.84
    assert (df["power_avg_w"].min(), df["power_avg_w"].max()) == (21.76, 66.98)  # lines 2, 24
    assert np.diff(df["t_wall_ns"]).max() == 112_000_000  # SOURCES.md: largest gap 112 ms


def test_nvidia_smi_multicolumn_log(shared_data):
    df = read_nvidia_smi_csv(shared_data / "nvidia-smi" / "rtx4090_multicolumn_1s.csv", tz="UTC")
    assert len(df) == 2619
    # "2026/01/03 15:36:53.507, NVIDIA GeForce RTX 4090, 1 %, 2 %, 1129 MiB, 33.09 W";
    # `date -u -d '2026-01-03 15:36:53' +%s` = 1767454613.
    first = df.iloc[0]
    assert first["t_wall_ns"] == 1_767_454_613_507_000_000
    assert (first["util_pct"], first["power_avg_w"]) == (1.0, 33.09)
    assert first["mem_used_bytes"] == 1129 * MIB  # 1,183,842,304 B
    # Last "2026/01/03 16:24:53.961, ..., 3 %, 4 %, 1141 MiB, 34.15 W"; 1767457493 s.
    last = df.iloc[-1]
    assert last["t_wall_ns"] == 1_767_457_493_961_000_000
    assert (last["util_pct"], last["mem_used_bytes"], last["power_avg_w"]) == (
        3.0,
        1141 * MIB,
        34.15,
    )
    assert (df["power_avg_w"].min(), df["power_avg_w"].max()) == (33.09, 332.92)  # lines 2, 236
    # Largest gap: lines 646 -> 647, 15:48:40.525 -> 15:48:47.836 = 7.311 s.
    assert np.diff(df["t_wall_ns"]).max() == 7_311_000_000
    # utilization.memory and name have no POWER column; nothing else was invented.
    assert df["temperature_c"].isna().all() and df["sm_clock_mhz"].isna().all()


def write_log(tmp_path, text: str):
    path = tmp_path / "smi.csv"
    path.write_text(text)
    return path


def test_nvidia_smi_all_known_columns_and_missing_values(tmp_path):
    path = write_log(
        tmp_path,
        "timestamp, index, power.draw [W], power.draw.instant [W], power.draw.average [W], "
        "temperature.gpu, clocks.current.sm [MHz], clocks.current.memory [MHz], "
        "clocks_event_reasons.active, memory.used [MiB], utilization.gpu [%]\n"
        "2025/01/15 12:00:00.000, 0, 70.10 W, 71.50 W, 69.00 W, 35, 1980 MHz, 2619 MHz, "
        "0x0000000000000005, 512 MiB, 97 %\n"
        "2025/01/15 12:00:00.100, 0, [N/A], [Not Supported], [N/A], [N/A], [N/A], [N/A], "
        "[Not Supported], [N/A], [N/A]\n",
    )
    log = import_nvidia_smi(path, tz="UTC")
    assert (log.power_field, log.power_kind) == ("power.draw.instant", "instant")
    assert log.device == {"index": "0"} and log.devices == ({"index": "0"},)
    row = log.samples.iloc[0]
    assert row["t_wall_ns"] == 1_736_942_400_000_000_000  # date -u -d '2025-01-15 12:00' +%s
    assert row["power_w"] == 71.50  # power.draw.instant, not power.draw
    assert row["power_avg_w"] == 69.00  # power.draw.average, the explicit average
    assert (row["temperature_c"], row["sm_clock_mhz"], row["mem_clock_mhz"]) == (35, 1980, 2619)
    assert row["throttle_reasons"] == 5  # GpuIdle (0x1) | SwPowerCap (0x4)
    assert row["mem_used_bytes"] == 536_870_912  # 512 x 1,048,576
    assert (row["util_pct"], row["device_index"]) == (97.0, 0)
    missing = log.samples.iloc[1]
    assert missing["t_wall_ns"] - row["t_wall_ns"] == 100_000_000
    for column in ["power_w", "power_avg_w", "temperature_c", "sm_clock_mhz", "mem_used_bytes"]:
        assert math.isnan(missing[column]), column
    assert missing["throttle_reasons"] == -1


def test_nvidia_smi_nounits_format(tmp_path):
    # --format=csv,nounits keeps the unit in the header only.
    path = write_log(
        tmp_path, "timestamp, power.draw.instant [W]\n2025/01/15 12:00:00.000, 70.10\n"
    )
    assert read_nvidia_smi_csv(path, tz="UTC")["power_w"].tolist() == [70.10]


def test_nvidia_smi_missing_power_column_names_file_and_columns(tmp_path):
    path = write_log(tmp_path, "timestamp, utilization.gpu [%]\n2025/01/15 12:00:00.000, 3 %\n")
    with pytest.raises(InputError) as exc:
        read_nvidia_smi_csv(path, tz="UTC")
    assert str(path) in str(exc.value)
    assert "'timestamp', 'utilization.gpu [%]'" in str(exc.value)
    assert "power.draw" in str(exc.value)
    # --format=csv,noheader: the first line holds values; say so.
    path = write_log(tmp_path, "2025/01/15 12:00:00.000, 70 W\n2025/01/15 12:00:00.100, 71 W\n")
    with pytest.raises(InputError, match="noheader"):
        read_nvidia_smi_csv(path, tz="UTC")


def test_nvidia_smi_wrong_units_and_values(tmp_path):
    bad_value_unit = "timestamp, power.draw [W]\n2025/01/15 12:00:00.000, 70100 mW\n"
    with pytest.raises(InputError, match=r"line 2: value '70100 mW' is not a number in W"):
        read_nvidia_smi_csv(write_log(tmp_path, bad_value_unit), tz="UTC")
    bad_header_unit = (
        "timestamp, power.draw [W], memory.used [MB]\n2025/01/15 12:00:00.000, 1 W, 2 MB\n"
    )
    with pytest.raises(InputError, match=r"'memory.used \[MB\]' has unit 'MB'; expected 'MiB'"):
        read_nvidia_smi_csv(write_log(tmp_path, bad_header_unit), tz="UTC")
    bad_time = "timestamp, power.draw [W]\n15.01.2025 12:00, 1 W\n"
    with pytest.raises(InputError, match="line 2: timestamp '15.01.2025 12:00' is not.*ISO-8601"):
        read_nvidia_smi_csv(write_log(tmp_path, bad_time), tz="UTC")


def test_nvidia_smi_iso8601_timestamps(tmp_path):
    # 13:00:00.250 at +01:00 and 12:00:00.350Z are 12:00:00.250 and .350 UTC (1736942400 s, as
    # above); with offsets the zone argument is not needed.
    path = write_log(
        tmp_path,
        "timestamp, power.draw.instant [W]\n"
        "2025-01-15T13:00:00.250+01:00, 70 W\n2025-01-15T07:00:00.300-05:00, 71 W\n",
    )
    assert read_nvidia_smi_csv(path)["t_wall_ns"].tolist() == [
        1_736_942_400_250_000_000,
        1_736_942_400_300_000_000,
    ]
    path = write_log(tmp_path, "timestamp, power.draw [W]\n2025-01-15T12:00:00.350Z, 70 W\n")
    assert read_nvidia_smi_csv(path)["t_wall_ns"].tolist() == [1_736_942_400_350_000_000]
    # ISO-8601 without an offset is local time: 13:00 in Berlin (CET) is 12:00 UTC.
    path = write_log(tmp_path, "timestamp, power.draw [W]\n2025-01-15 13:00:00.000, 70 W\n")
    assert read_nvidia_smi_csv(path, "Europe/Berlin")["t_wall_ns"].tolist() == [
        1_736_942_400_000_000_000
    ]
    with pytest.raises(ConfigError, match="carry no UTC offset.*'\\+01:00'"):
        read_nvidia_smi_csv(path)
    mixed = write_log(
        tmp_path,
        "timestamp, power.draw [W]\n2025-01-15T12:00:00Z, 70 W\n2025-01-15T12:00:01, 70 W\n",
    )
    with pytest.raises(InputError, match="line 2: '2025-01-15T12:00:00Z'.*line 3"):
        read_nvidia_smi_csv(mixed, "UTC")


def test_nvidia_smi_time_zone(tmp_path):
    path = write_log(tmp_path, "timestamp, power.draw [W]\n2025/03/30 02:30:00.000, 1 W\n")
    with pytest.raises(ConfigError, match="'Mars/Olympus'"):
        read_nvidia_smi_csv(path, tz="Mars/Olympus")
    # Berlin clocks jump from 02:00 to 03:00 on 30 March 2025: 02:30 never happened there.
    with pytest.raises(InputError, match="never happened in Europe/Berlin"):
        read_nvidia_smi_csv(path, tz="Europe/Berlin")
    # ...but it did in New York (EDT, UTC-4): 06:30 UTC; date -u -d '2025-03-30 06:30' = 1743316200.
    assert read_nvidia_smi_csv(path, tz="America/New_York")["t_wall_ns"].iloc[0] == (
        1_743_316_200_000_000_000
    )


def test_nvidia_smi_repeated_dst_hour(tmp_path):
    # Berlin turns clocks back from 03:00 CEST to 02:00 CET on 27 Oct 2024: 02:00-03:00 happens
    # twice. A log wholly inside that hour cannot say which pass it is: refused, naming both
    # fixed-offset zones that would settle it.
    inside = (
        "timestamp, power.draw [W]\n2024/10/27 02:30:00.000, 1 W\n2024/10/27 02:30:00.100, 1 W\n"
    )
    path = write_log(tmp_path, inside)
    with pytest.raises(InputError) as err:
        read_nvidia_smi_csv(path, tz="Europe/Berlin")
    msg = str(err.value)
    assert "line 2: '2024/10/27 02:30:00.000' lies in the hour repeated" in msg
    assert "tz='+02:00'" in msg and "tz='+01:00'" in msg and "fixed-offset" in msg
    # With the offset given: 02:30 at +01:00 = 01:30 UTC;
    # date -u -d '2024-10-27 01:30' +%s = 1729992600.
    assert read_nvidia_smi_csv(path, tz="+01:00")["t_wall_ns"].iloc[0] == 1_729_992_600_000_000_000
    assert read_nvidia_smi_csv(path, tz="UTC+01:00")["t_wall_ns"].iloc[0] == (
        1_729_992_600_000_000_000
    )
    # A log that steps back through the hour says which is which: 02:59:59.900 CEST (00:59:59.9
    # UTC; date -u -d '2024-10-27 00:59:59' = 1729990799) then 02:00:00.000 CET (01:00:00 UTC).
    crossing = (
        "timestamp, power.draw [W]\n2024/10/27 02:59:59.900, 1 W\n2024/10/27 02:00:00.000, 1 W\n"
    )
    t = read_nvidia_smi_csv(write_log(tmp_path, crossing), tz="Europe/Berlin")["t_wall_ns"]
    assert t.tolist() == [1_729_990_799_900_000_000, 1_729_990_800_000_000_000]


TWO_GPUS = (
    "timestamp, index, name, pci.bus_id, uuid, power.draw [W]\n"
    "2025/01/15 12:00:00.000, 0, NVIDIA H100 80GB HBM3, 00000000:18:00.0, GPU-aaaa1111, 70 W\n"
    "2025/01/15 12:00:00.000, 1, NVIDIA H100 80GB HBM3, 00000000:3B:00.0, GPU-bbbb2222, 80 W\n"
    "2025/01/15 12:00:01.000, 0, NVIDIA H100 80GB HBM3, 00000000:18:00.0, GPU-aaaa1111, 72 W\n"
    "2025/01/15 12:00:01.000, 1, NVIDIA H100 80GB HBM3, 00000000:3B:00.0, GPU-bbbb2222, 82 W\n"
)


def test_nvidia_smi_several_gpus_refused_naming_them(tmp_path):
    path = write_log(tmp_path, TWO_GPUS)
    with pytest.raises(InputError) as err:
        read_nvidia_smi_csv(path, "UTC")
    msg = str(err.value)
    assert f"{path} holds 2 GPUs" in msg
    label = "index 0 (name NVIDIA H100 80GB HBM3, pci.bus_id 00000000:18:00.0, uuid GPU-aaaa1111)"
    assert label in msg
    assert "index 1" in msg and "GPU-bbbb2222" in msg and "00000000:3B:00.0" in msg
    assert "'index' or 'pci.bus_id' or 'uuid'" in msg and "--gpu 0" in msg
    # Each way of naming GPU 1 gives its two rows: 80 W and 82 W.
    for choice in [1, "1", "3b:00.0", "00000000:3B:00.0", "GPU-bbbb2222", "GPU-bbbb"]:
        log = import_nvidia_smi(path, "UTC", gpu=choice)
        assert log.samples["power_avg_w"].tolist() == [80.0, 82.0], choice
        assert log.samples["device_index"].tolist() == [1, 1]
        assert log.device["uuid"] == "GPU-bbbb2222"
    assert len(log.devices) == 2
    with pytest.raises(InputError, match="gpu=7 matches none of its GPUs: index 0"):
        read_nvidia_smi_csv(path, "UTC", gpu=7)


def test_nvidia_smi_several_gpus_without_a_device_column(tmp_path):
    rows = "2025/01/15 12:00:00.000, 70 W\n2025/01/15 12:00:00.000, 80 W\n"
    with pytest.raises(InputError, match="line 3.*appears 2 times.*--query-gpu=timestamp,index"):
        read_nvidia_smi_csv(write_log(tmp_path, "timestamp, power.draw [W]\n" + rows), "UTC")
    one = write_log(tmp_path, "timestamp, power.draw [W]\n2025/01/15 12:00:00.000, 70 W\n")
    with pytest.raises(InputError, match="gpu=0 was chosen, but the log has no index"):
        read_nvidia_smi_csv(one, "UTC", gpu=0)
    backwards = (
        "timestamp, power.draw [W]\n2025/01/15 12:00:01.000, 70 W\n2025/01/15 12:00:00.000, 70 W\n"
    )
    with pytest.raises(InputError, match="line 3.*does not come after"):
        read_nvidia_smi_csv(write_log(tmp_path, backwards), "UTC")


# --- source specs ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, message",
    [
        (
            {"kind": "ipmi"},
            r"'kind' must be one of "
            r"\['auto', 'modeled_cpu', 'nvml', 'rapl', 'zeus_gpu', 'zeus_soc'\]",
        ),
        ({"kind": "rapl", "device_index": 0}, r"takes exactly the keys \['kind'\]"),
        ({"kind": "nvml"}, r"takes exactly the keys \['device_index', 'kind'\]"),
        ({"kind": "nvml", "device_index": 0, "tdp_w": 5}, "takes exactly the keys"),
        ({"kind": "nvml", "device_index": -1}, "device_index must be an int >= 0"),
        ({"kind": "modeled_cpu", "tdp_w": 0}, "tdp_w must be a number of W > 0"),
        ({"kind": "modeled_cpu", "tdp_w": "65"}, "tdp_w must be a number of W > 0"),
    ],
)
def test_bad_specs_are_refused(spec, message):
    with pytest.raises(ConfigError, match=message):
        check_spec(spec)


# --- modeled CPU -----------------------------------------------------------------------------


def test_modeled_cpu_counts_the_process_tree():
    # A child of this process spins one logical CPU; this process sleeps. The tree's utilisation
    # is the CPU time the kernel charged to the child (and this process) over the span, divided by
    # span x n logical CPUs; power is tdp_w times that. Taken from the kernel's own account
    # (psutil cpu_times) rather than assumed to be one full CPU: on a loaded runner the child got
    # 0.14 of a CPU.
    n_cpus = len(os.sched_getaffinity(os.getpid()))  # the CPUs the measured process may use
    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    me, kid = psutil.Process(), psutil.Process(child.pid)

    def cpu_s() -> float:
        return sum(sum(p.cpu_times()[:2]) for p in (me, kid))

    try:
        time.sleep(0.2)  # let the child exist before the source lists the tree
        source = open_source({"kind": "modeled_cpu", "tdp_w": 100.0}, target_pid=os.getpid())
        cpu0, t0 = cpu_s(), time.monotonic()
        time.sleep(0.5)
        sample = source.read()
        used_s, span_s = cpu_s() - cpu0, time.monotonic() - t0
    finally:
        child.kill()
        child.wait()
    expected_pct = 100 * used_s / (span_s * n_cpus)
    assert used_s > 0.02  # the child did run
    # psutil's and our reads bracket slightly different spans, and CPU times tick at 10 ms: 25 %
    # plus two ticks over the span.
    tick_pct = 100 * 0.02 / (span_s * n_cpus)
    assert abs(sample.util_pct - expected_pct) <= 0.25 * expected_pct + tick_pct
    assert sample.power_w == pytest.approx(100.0 * sample.util_pct / 100)
    assert sample.modeled and sample.source == "modeled_cpu" and sample.device_index == -1
    assert math.isnan(sample.energy_counter_j)
    assert sample.mem_used_bytes > psutil.Process().memory_info().rss  # this process + child
    source.close()


def test_modeled_cpu_unknown_pid():
    dead_pid = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_pid.wait()
    with pytest.raises(ConfigError, match=f"target_pid={dead_pid.pid} is not a running process"):
        ModeledCpuSource(65.0, dead_pid.pid)


# --- NVML ------------------------------------------------------------------------------------


@pytest.mark.skipif(GPU, reason="checks the error where no NVIDIA driver is installed")
def test_nvml_without_driver_names_nvml_and_device():
    with pytest.raises(HardwareMismatchError, match=r"NVML .* device_index=0 .*modeled_cpu"):
        NvmlSource(0)
    with pytest.raises(HardwareMismatchError, match=r"NVML .* device_index=3"):
        describe_gpu(3)


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="no NVIDIA GPU and driver")
def test_describe_gpu(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    info = describe_gpu(0)
    assert "NVIDIA" in info["name"] and info["uuid"].startswith("GPU-")
    assert info["driver_version"].split(".")[0].isdigit()
    # Board power limits run from ~70 W (T4) to 1000 W (B200); an H100 SXM's is 700 W.
    assert 50 <= info["power_limit_w"] <= 1200
    assert 500 <= info["max_sm_clock_mhz"] <= 3500 and info["max_mem_clock_mhz"] > 0


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="no NVIDIA GPU and driver")
def test_nvml_samples(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    limit_w = describe_gpu(0)["power_limit_w"]
    source = NvmlSource(0)
    first = source.read()
    time.sleep(1.0)
    second = source.read()
    source.close()
    for s in (first, second):
        assert s.source == "nvml" and not s.modeled and s.device_index == 0
        assert 10 < s.power_w <= 1.1 * limit_w and 10 < s.power_avg_w <= 1.1 * limit_w
        assert 0 <= s.util_pct <= 100 and s.mem_used_bytes > 0
        assert 5 <= s.temperature_c <= 100 and s.sm_clock_mhz > 0 and s.mem_clock_mhz > 0
        assert s.throttle_reasons >= 0
    # The counter (mJ -> J) over ~1 s of a near-idle GPU matches power x time: it steps every
    # ~100 ms, so its delta is off by up to 0.1 s of power at each end, and idle power wanders;
    # 30 % covers both, while a mJ/J mix-up (x1000) or a wrong device cannot pass.
    elapsed_s = (second.t_wall_ns - first.t_wall_ns) / 1e9
    mean_w = (first.power_avg_w + second.power_avg_w) / 2
    delta_j = second.energy_counter_j - first.energy_counter_j
    assert delta_j == pytest.approx(mean_w * elapsed_s, rel=0.3)


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="no NVIDIA GPU and driver")
def test_cuda_visible_devices_maps_to_nvml(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    uuid = describe_gpu(0)["uuid"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", uuid[:12])  # CUDA accepts a UUID prefix
    assert describe_gpu(0)["uuid"] == uuid
    with pytest.raises(HardwareMismatchError, match="device_index=1 does not exist"):
        describe_gpu(1)  # one device visible
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "64")
    with pytest.raises(HardwareMismatchError, match="'64' in CUDA_VISIBLE_DEVICES='64'"):
        describe_gpu(0)

"""Platform table against NVIDIA datasheets, and its loader's checks."""

import csv
import dataclasses
import math
import re

import pytest

from tokencarbon.errors import ConfigError, HardwareMismatchError, InputError
from tokencarbon.models import resources_dir
from tokencarbon.platforms import (
    KNOWN_DEVICE_NAMES,
    METRICS_ONLY_KEY,
    check_device,
    get_platform,
    load_platforms,
    peak_bandwidth_bytes_per_s,
    peak_flops,
    resolve_platform,
    rows_matching,
)

PLATFORMS = ["cpu", "v100s-pcie-32gb", "a100-sxm4-40gb", "a100-sxm4-80gb", "h100-sxm-80gb", "h200-141gb"]


def test_every_platform_present_with_a_source():
    platforms = load_platforms()
    assert list(platforms) == PLATFORMS
    assert all(len(p.source) > 80 for p in platforms.values())


# Datasheet figures (dense, i.e. half the "with sparsity" numbers):
#   V100S PCIe: 16.4 fp32, 130 fp16 tensor TFLOPS, 32 GB, 1134 GB/s, 250 W (V100 datasheet r5)
#   A100 SXM4: 19.5 fp32, 156 tf32, 312 fp16/bf16, 624 int8; 40 GB 1555 GB/s / 80 GB 2039 GB/s; 400 W
#   H100 SXM5: 66.9 fp32, 494.7 tf32, 989.4 fp16/bf16, 1978.9 int8; 80 GB, 3350 GB/s, 700 W
#   H200: 141 GB, 4800 GB/s, 700 W, H100 SXM compute
@pytest.mark.parametrize(
    "name, fp32, fp16, bf16, memory_gb, gb_per_s, tdp_w",
    [
        ("v100s-pcie-32gb", 16.4, 130, None, 32, 1134, 250),
        ("a100-sxm4-40gb", 19.5, 312, 312, 40, 1555, 400),
        ("a100-sxm4-80gb", 19.5, 312, 312, 80, 2039, 400),
        ("h100-sxm-80gb", 66.9, 989.4, 989.4, 80, 3350, 700),
        ("h200-141gb", 66.9, 989.4, 989.4, 141, 4800, 700),
    ],
)
def test_datasheet_numbers(name, fp32, fp16, bf16, memory_gb, gb_per_s, tdp_w):
    p = get_platform(name)
    assert (p.peak_tflops_fp32, p.peak_tflops_fp16, p.peak_tflops_bf16) == (fp32, fp16, bf16)
    assert (p.memory_gb, p.memory_gb_per_s, p.tdp_w) == (memory_gb, gb_per_s, tdp_w)


def test_peak_flops_uses_dense_not_sparse():
    # A100: 312 TFLOPS dense fp16; the datasheet's 624 assumes 2:4 sparsity.
    assert peak_flops(get_platform("a100-sxm4-40gb"), "float16") == pytest.approx(312e12)
    assert peak_flops(get_platform("h100-sxm-80gb"), "bfloat16") == pytest.approx(989.4e12)


def test_float32_peak_is_fp32_units_not_tf32():
    h100 = get_platform("h100-sxm-80gb")
    assert peak_flops(h100, "float32") == pytest.approx(66.9e12)
    assert h100.peak_tflops_tf32 == 494.7  # 989 "with sparsity" / 2


def test_cpu_row_derivation():
    cpu = get_platform("cpu")
    # EPYC 7763 core: 2 FMA pipes x 8 fp32 lanes (256-bit) x 2 FLOP x 2.45 GHz = 78.4 GFLOP/s
    assert peak_flops(cpu, "float32") == pytest.approx(2 * 8 * 2 * 2.45e9)
    # 280 W and 204.8 GB/s (8 x DDR4-3200 x 8 B) shared by 64 cores
    assert cpu.tdp_w == pytest.approx(280 / 64)
    assert peak_bandwidth_bytes_per_s(cpu) == pytest.approx(8 * 3200e6 * 8 / 64)


def test_embodied_follows_llmcarbon_method():
    # LLMCarbon (Faiz et al. 2024) carbon per area: 12 nm 1.2, 7 nm 1.6, 4 nm 1.8 kgCO2e/cm2;
    # DRAM 0.4 kgCO2e/GB. Die areas GV100 8.15, GA100 8.26, GH100 8.14 cm2.
    expected = {
        "v100s-pcie-32gb": 8.15 * 1.2 + 32 * 0.4,  # 22.58
        "a100-sxm4-40gb": 8.26 * 1.6 + 40 * 0.4,  # 29.22
        "a100-sxm4-80gb": 8.26 * 1.6 + 80 * 0.4,  # 45.22
        "h100-sxm-80gb": 8.14 * 1.8 + 80 * 0.4,  # 46.65
        "h200-141gb": 8.14 * 1.8 + 141 * 0.4,  # 71.05
    }
    for name, kg in expected.items():
        assert get_platform(name).embodied_kg_co2e == pytest.approx(kg, abs=0.05), name


def test_peak_bandwidth_bytes_per_s():
    assert peak_bandwidth_bytes_per_s(get_platform("h200-141gb")) == pytest.approx(4.8e12)


def test_unsupported_dtype_names_the_valid_ones():
    with pytest.raises(ConfigError, match=r"v100s-pcie-32gb.*bfloat16.*\['float32', 'float16'\]"):
        peak_flops(get_platform("v100s-pcie-32gb"), "bfloat16")
    with pytest.raises(ConfigError, match="int8"):
        peak_flops(get_platform("cpu"), "int8")


def test_unknown_platform_names_valid_ones():
    with pytest.raises(ConfigError, match=r"'tpu-v5'.*h100-sxm-80gb"):
        get_platform("tpu-v5")


def test_memory_limit():
    # An 80 GB card capped at 40 GB reproduces the 40 GB card's OOM table.
    assert get_platform("h100-sxm-80gb", memory_limit_gb=40).memory_limit_gb == 40
    assert get_platform("h100-sxm-80gb").memory_limit_gb is None
    with pytest.raises(ConfigError, match=r"memory_limit_gb=100.*80"):
        get_platform("h100-sxm-80gb", memory_limit_gb=100)


# Device names as the NVIDIA driver reports them (nvidia-smi's Name, NVML's nvmlDeviceGetName,
# torch.cuda.get_device_name), each from a real record:
#   "NVIDIA H100 80GB HBM3", "NVIDIA H200": this project's cells (benchmarks/results/gpu-study/
#     tables/cells.parquet, device_name), also thamada/nvidia-smi nvsim/H100SXMx8_deviceQuery.py;
#   "NVIDIA GH200 480GB": mredenti/PowerCapping configuration/OpenCL_benchmark.md (driver
#     555.42.06, 97280 MB VRAM: the superchip's 96 GB HBM3 GPU);
#   "NVIDIA A100-PCIE-40GB": HPE-Japan-Presales/e-learning gpu/a100/mgmt_on_ubuntu22.04.4lts.md
#     (nvidia-smi 555.42.02);
#   "Tesla V100-SXM2-32GB": jdh4/job_data_2023 README.md;
#   RunPod's GPU type ids, which are the driver's names: "NVIDIA A100 80GB PCIe",
#     "NVIDIA A100-SXM4-80GB", "NVIDIA H100 PCIe" (pulumiverse/katwalk doc/runpod/README.md),
#     "NVIDIA H100 NVL", "NVIDIA H800" (SubModel/docs references/gpu-types.md), and
#     "NVIDIA A100-SXM4-40GB", "NVIDIA H200 NVL" (RunPod API schema gpuTypeIds).
# "Tesla V100S-PCIE-32GB" follows the V100 PCIe's "Tesla V100-PCIE-32GB" (an NVSMI log's Product Name).
# A pattern matches the whole name (platforms.rows_matching: re.fullmatch; every pattern is anchored).
def _matching(device_name):
    gpus = {n: p for n, p in load_platforms().items() if p.kind == "gpu"}
    return rows_matching(device_name, gpus)


@pytest.mark.parametrize(
    "device_name, platform",
    [
        ("Tesla V100S-PCIE-32GB", "v100s-pcie-32gb"),
        ("NVIDIA A100-SXM4-40GB", "a100-sxm4-40gb"),
        ("NVIDIA A100-SXM4-80GB", "a100-sxm4-80gb"),
        ("NVIDIA H100 80GB HBM3", "h100-sxm-80gb"),
        ("NVIDIA H200", "h200-141gb"),
        # Other products must match no row: another memory, bandwidth, TDP or counter scope.
        ("NVIDIA GH200 480GB", None),  # 96 GB at ~4 TB/s; the counter covers the superchip
        ("NVIDIA H200 NVL", None),  # 600 W PCIe card
        ("NVIDIA H100 PCIe", None),  # 2 TB/s HBM2e, 350 W
        ("NVIDIA H100 NVL", None),  # 94 GB, 400 W
        ("NVIDIA H800", None),
        ("NVIDIA A100-PCIE-40GB", None),  # 250 W
        ("NVIDIA A100 80GB PCIe", None),  # 300 W, 1935 GB/s
        ("Tesla V100-SXM2-32GB", None),
        ("Tesla V100-PCIE-32GB", None),  # the V100 without S: 900 GB/s
    ],
)
def test_device_name_matches_exactly_one_gpu_platform(device_name, platform):
    assert _matching(device_name) == ([platform] if platform else [])


def test_real_rtx4090_log_matches_no_gpu_platform(shared_data):
    with open(shared_data / "nvidia-smi" / "rtx4090_multicolumn_1s.csv", newline="") as f:
        names = {row[" name"].strip() for row in csv.DictReader(f)}
    assert names == {"NVIDIA GeForce RTX 4090"}
    assert _matching("NVIDIA GeForce RTX 4090") == []


def _table_with(tmp_path, column, value):
    """The real table with one cell of its second data row (line 3) replaced."""
    with open(resources_dir() / "platforms.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    rows[1][column] = value
    path = tmp_path / "platforms.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_bad_number_names_file_line_and_column(tmp_path):
    path = _table_with(tmp_path, "memory_gb_per_s", "1.5 TB/s")
    with pytest.raises(InputError, match=rf"{path} line 3 \(platform 'v100s-pcie-32gb'\), column memory_gb_per_s: '1.5 TB/s'"):
        load_platforms(path)


def test_bad_kind_names_valid_ones(tmp_path):
    path = _table_with(tmp_path, "kind", "tpu")
    with pytest.raises(InputError, match=r"kind: 'tpu'; valid: 'cpu', 'gpu'"):
        load_platforms(path)


def test_missing_column_named(tmp_path):
    path = tmp_path / "platforms.csv"
    path.write_text("platform,kind\ncpu,cpu\n")
    with pytest.raises(InputError, match=r"missing column.*device_name_pattern"):
        load_platforms(path)


@pytest.mark.parametrize(
    "column, value, message",
    [
        ("peak_tflops_fp32", "-19.5", "'-19.5' must be > 0"),
        ("peak_tflops_fp16", "0", "'0' must be > 0"),
        ("peak_tflops_bf16", "nan", "'nan' must be a finite number"),
        ("tdp_w", "0", "'0' must be > 0"),
        ("memory_gb_per_s", "inf", "'inf' must be a finite number"),
        ("memory_gb", "-40", "'-40' must be > 0"),
        ("embodied_kg_co2e", "0", "'0' must be > 0"),
        ("embodied_kg_co2e_high", "1", "1.0 is below the low bound embodied_kg_co2e 22.6"),
        ("host_embodied_kg_co2e", "-3", "'-3' must be > 0"),
        ("lifetime_years", "0", "'0' must be > 0"),
        ("release_year", "20", "'20' must be a year between 1990 and 2100"),
        ("release_year", "2020.5", "'2020.5' is not an integer"),
        ("logical_cpus", "0", "'0' must be an integer >= 1"),
        ("embodied_high_source", "", "empty; every row needs one"),
    ],
)
def test_bad_values_name_file_line_and_column(tmp_path, column, value, message):
    # Issue 10 §8: a negative peak gave a negative MFU with exit 0; a zero one ZeroDivisionError.
    path = _table_with(tmp_path, column, value)  # line 3 is v100s-pcie-32gb
    with pytest.raises(InputError, match=re.escape(f"{path} line 3 (platform 'v100s-pcie-32gb'), column {column}: {message}")):
        load_platforms(path)


def test_embodied_range_low_and_high_with_sources():
    # Low: LLMCarbon dies + memory (above). High: the H100's PCF, 164 kgCO2e per GPU cradle to
    # gate; others scaled by the H100's ratio 164 / 46.7 = 3.5118: A100 40GB 29.2 x 3.5118 =
    # 102.54 -> 102.5; H200 71.1 x 3.5118 = 249.69 -> 249.7; cpu 3.4 x 3.5118 = 11.94 -> 11.9.
    expected_high = {"h100-sxm-80gb": 164.0, "a100-sxm4-40gb": 102.5, "h200-141gb": 249.7,
                     "cpu": 11.9, "v100s-pcie-32gb": 79.4, "a100-sxm4-80gb": 158.7}  # fmt: skip
    for name, high in expected_high.items():
        p = get_platform(name)
        assert p.embodied_range_kg_co2e == (p.embodied_kg_co2e, high), name
        assert len(p.embodied_high_source) > 80 and "cradle to gate" in p.embodied_high_source
    assert "PCF" in get_platform("h100-sxm-80gb").embodied_high_source
    # A host share, where given, is added to the high bound only: 164 + 40 = 204.
    import dataclasses

    h100 = dataclasses.replace(get_platform("h100-sxm-80gb"), host_embodied_kg_co2e=40.0)
    assert h100.embodied_range_kg_co2e == (46.7, 204.0)


# --- resolve_platform: the row describes the detected device, or the run fails naming it.

def _epyc_table(tmp_path):
    """The real table with the cpu row pinned to the CPU it was written for (as the lead will)."""
    return load_platforms(_table_with_row(tmp_path, "cpu", "device_name_pattern",
                                          "^AMD EPYC 7763 64-Core Processor$"))


def _table_with_row(tmp_path, platform, column, value):
    with open(resources_dir() / "platforms.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        if row["platform"] == platform:
            row[column] = value
    path = tmp_path / "platforms.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


# This machine and CI report "Intel(R) Xeon(R) Processor" (/proc/cpuinfo model name, 2 logical
# CPUs); GitHub-hosted runners "AMD EPYC 7763 64-Core Processor" (lscpu, as quoted in many CI logs).
XEON = "Intel(R) Xeon(R) Processor"


def test_cpu_row_on_its_own_cpu_is_the_datasheet(tmp_path):
    from tokencarbon.platforms import resolve_platform

    p = resolve_platform("cpu", "AMD EPYC 7763 64-Core Processor", platforms=_epyc_table(tmp_path))
    assert p.spec_source == "datasheet" and p.tdp_w == 4.375


def test_cpu_row_on_another_cpu_fails_naming_it(tmp_path):
    from tokencarbon.errors import HardwareMismatchError
    from tokencarbon.platforms import resolve_platform

    with pytest.raises(HardwareMismatchError) as err:
        resolve_platform("cpu", XEON, platforms=_epyc_table(tmp_path))
    message = str(err.value)
    assert XEON in message and "AMD EPYC 7763" in message
    assert "platforms.cpu.spec" in message
    assert "tdp_w, logical_cpus, peak_tflops_fp32, memory_gb_per_s" in message
    # Half told is still refused, naming what is missing.
    with pytest.raises(HardwareMismatchError, match=r"for peak_tflops_fp32, memory_gb_per_s"):
        resolve_platform("cpu", XEON, {"tdp_w": 10.0, "logical_cpus": 2},
                         platforms=_epyc_table(tmp_path))


def test_cpu_row_describes_another_cpu_from_config_and_measurement(tmp_path):
    from tokencarbon.platforms import resolve_platform

    p = resolve_platform(
        "cpu", XEON, overrides={"tdp_w": 10.0, "logical_cpus": 2},
        measured={"peak_tflops_fp32": 0.2, "memory_gb_per_s": 12.5},
        platforms=_epyc_table(tmp_path),
    )  # fmt: skip
    assert (p.tdp_w, p.logical_cpus, p.peak_tflops_fp32, p.memory_gb_per_s) == (10.0, 2, 0.2, 12.5)
    assert p.peak_tflops_bf16 is None  # the row's bf16 peak described the EPYC
    assert re.search(p.device_name_pattern, XEON) and not re.search(p.device_name_pattern, "Intel")
    assert p.spec_source == (
        "datasheet; row of another device (cpu): memory_gb, embodied_kg_co2e, "
        "embodied_kg_co2e_high, lifetime_years; measured: peak_tflops_fp32, memory_gb_per_s; "
        "config: tdp_w, logical_cpus"
    )
    # Config beats a measurement of the same field: 0.3 from config, not 0.2 measured.
    p = resolve_platform("cpu", XEON, {"tdp_w": 10, "logical_cpus": 2, "peak_tflops_fp32": 0.3,
                                       "memory_gb_per_s": 5}, {"peak_tflops_fp32": 0.2},
                         platforms=_epyc_table(tmp_path))  # fmt: skip
    assert p.peak_tflops_fp32 == 0.3 and "measured" not in p.spec_source


def test_gpu_row_never_describes_another_gpu():
    from tokencarbon.errors import HardwareMismatchError
    from tokencarbon.platforms import resolve_platform

    with pytest.raises(HardwareMismatchError, match=r"'NVIDIA GH200 480GB'.*add a row"):
        resolve_platform("h200-141gb", "NVIDIA GH200 480GB", {"tdp_w": 900})
    with pytest.raises(HardwareMismatchError, match="platforms matching it: h100-sxm-80gb"):
        resolve_platform("h200-141gb", "NVIDIA H100 80GB HBM3")
    with pytest.raises(HardwareMismatchError, match="None"):
        resolve_platform("h100-sxm-80gb", None)
    # On its own GPU an override is applied and labelled (a power-capped card: 500 W).
    p = resolve_platform("h100-sxm-80gb", "NVIDIA H100 80GB HBM3", {"tdp_w": 500})
    assert p.tdp_w == 500 and p.spec_source == "datasheet; config: tdp_w"


def test_bad_overrides_and_measurements_are_named():
    from tokencarbon.platforms import resolve_platform

    h100 = "NVIDIA H100 80GB HBM3"
    with pytest.raises(ConfigError, match=r"platforms.h100-sxm-80gb.spec.tdp: not a platform spec"):
        resolve_platform("h100-sxm-80gb", h100, {"tdp": 500})
    with pytest.raises(ConfigError, match=r"spec.peak_tflops_fp32: -1 must be > 0"):
        resolve_platform("h100-sxm-80gb", h100, {"peak_tflops_fp32": -1})
    with pytest.raises(ConfigError, match=r"spec.logical_cpus: 1.5 must be an integer"):
        resolve_platform("h100-sxm-80gb", h100, {"logical_cpus": 1.5})
    with pytest.raises(InputError, match=r"measured peaks of platform 'h100-sxm-80gb'.tdp_w"):
        resolve_platform("h100-sxm-80gb", h100, measured={"tdp_w": 5})
    with pytest.raises(ConfigError, match="embodied_kg_co2e_high 10.0 is below"):
        resolve_platform("h100-sxm-80gb", h100, {"embodied_kg_co2e_high": 10})
    with pytest.raises(ConfigError, match=r"memory_limit_gb=90"):
        resolve_platform("h100-sxm-80gb", h100, memory_limit_gb=90)


def test_the_cpu_row_is_anchored_to_the_cpu_it_was_written_for():
    # issue 10 §4: the row's numbers are an EPYC 7763 slice's; any other CPU is refused bare.
    from tokencarbon.errors import HardwareMismatchError
    from tokencarbon.platforms import resolve_platform

    assert get_platform("cpu").device_name_pattern == "^AMD EPYC 7763 64-Core Processor$"
    assert resolve_platform("cpu", "AMD EPYC 7763 64-Core Processor").spec_source == "datasheet"
    for other in (XEON, "AMD EPYC 7763 64-Core Processor (2 sockets)", "AMD EPYC 9654 96-Core Processor"):
        with pytest.raises(HardwareMismatchError, match=re.escape(repr(other))):
            resolve_platform("cpu", other)


def test_measure_makes_the_row_describe_another_cpu_labelled_measured(tmp_path):
    from tokencarbon.platforms import resolve_platform

    table = _epyc_table(tmp_path)
    spec = {"measure": True, "tdp_w": 6.25, "logical_cpus": 2}
    # Before the measurement (DAG build, a cell's check) the measured fields count as supplied and
    # are NaN, labelled pending: nothing can divide by the EPYC's peak for this CPU.
    p = resolve_platform("cpu", XEON, spec, platforms=table)
    assert math.isnan(p.peak_tflops_fp32) and math.isnan(p.memory_gb_per_s)
    assert "measured (pending): peak_tflops_fp32, memory_gb_per_s; config: tdp_w, logical_cpus" in p.spec_source
    # With the measurement: its numbers (bf16 too, measured), TDP and CPUs from config, labelled.
    measured = {"peak_tflops_fp32": 0.29, "peak_tflops_bf16": 1.2, "memory_gb_per_s": 51.0}
    p = resolve_platform("cpu", XEON, spec, measured, platforms=table)
    assert (p.peak_tflops_fp32, p.peak_tflops_bf16, p.memory_gb_per_s) == (0.29, 1.2, 51.0)
    assert (p.tdp_w, p.logical_cpus, p.peak_tflops_fp16) == (6.25, 2, None)
    assert p.spec_source == (
        "datasheet; row of another device (cpu): memory_gb, embodied_kg_co2e, "
        "embodied_kg_co2e_high, lifetime_years; measured: peak_tflops_fp32, peak_tflops_bf16, "
        "memory_gb_per_s; config: tdp_w, logical_cpus"
    )
    # On the row's own CPU a measurement replaces the datasheet's 0.0784 TFLOP/s, labelled.
    p = resolve_platform("cpu", "AMD EPYC 7763 64-Core Processor", {"measure": True}, measured,
                         platforms=table)  # fmt: skip
    assert p.peak_tflops_fp32 == 0.29 and p.tdp_w == 4.375
    assert p.spec_source == "datasheet; measured: peak_tflops_fp32, peak_tflops_bf16, memory_gb_per_s"
    # measure: false is no measurement
    with pytest.raises(HardwareMismatchError, match="peak_tflops_fp32, memory_gb_per_s"):
        resolve_platform("cpu", XEON, {**spec, "measure": False}, platforms=table)


def test_measure_without_a_tdp_names_what_only_config_can_give(tmp_path):
    from tokencarbon.platforms import resolve_platform

    with pytest.raises(HardwareMismatchError) as err:
        resolve_platform("cpu", XEON, {"measure": True}, platforms=_epyc_table(tmp_path))
    message = str(err.value)
    assert repr(XEON) in message and "for tdp_w, logical_cpus" in message
    assert "a TDP is not measurable" in message and "peak_tflops_fp32" not in message


def test_bad_measure_settings_and_measurements_are_named(tmp_path):
    from tokencarbon.platforms import resolve_platform

    spec = {"measure": True, "tdp_w": 6.25, "logical_cpus": 2}
    with pytest.raises(InputError, match=r"measured peaks of platform 'cpu' lack memory_gb_per_s"):
        resolve_platform("cpu", XEON, spec, {"peak_tflops_fp32": 0.29}, platforms=_epyc_table(tmp_path))
    with pytest.raises(ConfigError, match=r"platforms.h100-sxm-80gb.spec.measure: measures a CPU"):
        resolve_platform("h100-sxm-80gb", "NVIDIA H100 80GB HBM3", {"measure": True})
    with pytest.raises(ConfigError, match=r"spec.measure: 'yes'; valid: true or false"):
        resolve_platform("cpu", XEON, {**spec, "measure": "yes"}, platforms=_epyc_table(tmp_path))


# --- issue 21: patterns that claim the wrong device, and numbers beyond physics ------------------


def _table_with_extra_row(tmp_path, **changes):
    """The real table plus a user's row: a copy of h100-sxm-80gb's, with `changes`."""
    with open(resources_dir() / "platforms.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    extra = dict(next(r for r in rows if r["platform"] == "h100-sxm-80gb"), **changes)
    path = tmp_path / "platforms.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows([*rows, extra])
    return path  # the extra row is line 8 (header, then 6 rows)


@pytest.mark.parametrize(
    "pattern, message",
    [
        # unanchored: it would claim 'NVIDIA H100 80GB HBM3' (the SXM's row) and 'NVIDIA H100 PCIe'
        ("NVIDIA H100", "'NVIDIA H100' is not anchored"),
        ("^NVIDIA H100", "'^NVIDIA H100' is not anchored"),
        # anchored but several products: SXM5, PCIe and NVL (KNOWN_DEVICE_NAMES)
        ("^NVIDIA H100.*$", "matches the devices ['NVIDIA H100 80GB HBM3', 'NVIDIA H100 PCIe', "
                            "'NVIDIA H100 NVL']"),
        ("^.*$", "a row describes one product"),
        ("^NVIDIA [BH]200$", "matches the devices ['NVIDIA H200', 'NVIDIA B200'] (B200, H200 SXM)"),
        # one product, but the one the h100-sxm-80gb row already claims
        ("^NVIDIA H100 80GB HBM3$", "the device name 'NVIDIA H100 80GB HBM3' matches the patterns "
                                    "of rows h100-sxm-80gb (line 6), h100-pcie (line 8)"),
    ],
)  # fmt: skip
def test_a_pattern_must_be_anchored_one_product_and_no_other_rows(tmp_path, pattern, message):
    path = _table_with_extra_row(tmp_path, platform="h100-pcie", device_name_pattern=pattern)
    with pytest.raises(InputError) as err:
        load_platforms(path)
    assert message in str(err.value)
    # A PCIe row with its own exact name loads, and each name resolves to exactly one row.
    ok = load_platforms(_table_with_extra_row(
        tmp_path, platform="h100-pcie", device_name_pattern="^NVIDIA H100 PCIe$"))  # fmt: skip
    assert rows_matching("NVIDIA H100 PCIe", ok) == ["h100-pcie"]
    assert rows_matching("NVIDIA H100 80GB HBM3", ok) == ["h100-sxm-80gb"]


def test_a_device_matching_two_rows_is_refused_when_resolved():
    # A table built in memory, past the loader's checks: a second row whose pattern also takes
    # the H100 SXM's name. The device must match exactly one row, whichever is asked for.
    table = load_platforms()
    table["h100-any"] = dataclasses.replace(table["h100-sxm-80gb"], platform="h100-any",
                                            device_name_pattern="^NVIDIA H100.*$")  # fmt: skip
    with pytest.raises(InputError, match=r"matches rows \['h100-sxm-80gb', 'h100-any'\]"):
        resolve_platform("h100-sxm-80gb", "NVIDIA H100 80GB HBM3", platforms=table)
    with pytest.raises(InputError, match="must match exactly one row"):
        check_device("NVIDIA H100 80GB HBM3", "h100-any", table)
    # Another device than the row's is a mismatch naming the row it is.
    with pytest.raises(HardwareMismatchError, match="it is row 'h100-sxm-80gb'"):
        check_device("NVIDIA H100 80GB HBM3", "a100-sxm4-40gb")
    with pytest.raises(HardwareMismatchError, match="no row matches it"):
        check_device("NVIDIA B200", "h200-141gb")
    check_device("NVIDIA H200", "h200-141gb")  # the one row: no error


def test_every_known_device_name_matches_at_most_one_shipped_row():
    for name, product in KNOWN_DEVICE_NAMES.items():
        assert len(rows_matching(name)) <= 1, (name, product)


@pytest.mark.parametrize(
    "column, value, message, source",
    [
        # H100 bf16 dense 989.4 TFLOP/s written in GFLOP/s; the B200's 4,500 int8 x 2 is the top
        ("peak_tflops_bf16", "989400", "'989400' lies outside the plausible range 0.1 to 10000 for a gpu", "B200"),
        # the H200's 4.8 TB/s written as 4.8 in a GB/s column
        ("memory_gb_per_s", "4.8", "'4.8' lies outside the plausible range 20 to 20000 for a gpu", "Jetson Orin Nano"),
        ("lifetime_years", "0.01", "'0.01' lies outside the plausible range 1 to 15 for a gpu", "LLMCarbon"),
        ("memory_gb", "80000", "'80000' lies outside the plausible range 1 to 1000 for a gpu", "B300"),
        ("tdp_w", "700000", "'700000' lies outside the plausible range 10 to 3000 for a gpu", "GB200"),
    ],
)  # fmt: skip
def test_spec_numbers_beyond_physics_name_row_column_value_and_range(
    tmp_path, column, value, message, source
):
    path = _table_with_row(tmp_path, "h100-sxm-80gb", column, value)  # line 6
    with pytest.raises(InputError) as err:
        load_platforms(path)
    text = str(err.value)
    assert f"{path} line 6 (platform 'h100-sxm-80gb'), column {column}: {message}" in text
    assert "a unit slip?" in text and source in text  # the range's source is named


def test_spec_ranges_apply_to_config_and_measurements_by_kind(tmp_path):
    h100 = "NVIDIA H100 80GB HBM3"
    with pytest.raises(ConfigError, match=r"spec.peak_tflops_bf16: 989400 lies outside the plausible range 0.1 to 10000 for a gpu"):
        resolve_platform("h100-sxm-80gb", h100, {"peak_tflops_bf16": 989400})
    with pytest.raises(ConfigError, match=r"spec.lifetime_years: 0.01 lies outside"):
        resolve_platform("h100-sxm-80gb", h100, {"lifetime_years": 0.01})
    # A CPU slice's 3.2 GB/s is plausible for a cpu (0.1 to 2000), not for a gpu (20 to 20000).
    spec = {"measure": True, "tdp_w": 6.25, "logical_cpus": 2}
    p = resolve_platform("cpu", XEON, spec, {"peak_tflops_fp32": 0.29, "memory_gb_per_s": 3.2},
                         platforms=_epyc_table(tmp_path))  # fmt: skip
    assert p.memory_gb_per_s == 3.2
    with pytest.raises(InputError, match=r"measured peaks of platform 'cpu'.peak_tflops_fp32: 5000.0 lies outside the plausible range 0.0001 to 1000 for a cpu"):
        resolve_platform("cpu", XEON, spec, {"peak_tflops_fp32": 5000.0, "memory_gb_per_s": 51.0},
                         platforms=_epyc_table(tmp_path))  # fmt: skip
    # fp16 emulated on a CPU without fp16 units: 0.0009 TFLOP/s was measured on a 2-core VM beside
    # another run (2026-12-07) and is plausible; a thousandth of it is not
    p = resolve_platform("cpu", XEON, spec, {"peak_tflops_fp32": 0.29, "peak_tflops_fp16": 0.0009, "memory_gb_per_s": 3.2},
                         platforms=_epyc_table(tmp_path))  # fmt: skip
    assert p.peak_tflops_fp16 == 0.0009
    with pytest.raises(InputError, match=r"peak_tflops_fp16: 9e-07 lies outside the plausible range 0.0001 to 1000"):
        resolve_platform("cpu", XEON, spec, {"peak_tflops_fp32": 0.29, "peak_tflops_fp16": 9e-07, "memory_gb_per_s": 3.2},
                         platforms=_epyc_table(tmp_path))  # fmt: skip


def test_a_table_that_is_not_utf8_names_file_line_and_byte(tmp_path):
    text = (resources_dir() / "platforms.csv").read_text(encoding="utf-8")
    # 'µ' in a source text, saved as Latin-1 (one byte 0xb5) on the v100s row, line 3
    lines = text.splitlines(keepends=True)
    lines[2] = lines[2].replace("V100S announced", "V100S µarch announced")
    path = tmp_path / "platforms.csv"
    path.write_bytes("".join(lines).encode("latin-1"))
    with pytest.raises(InputError, match=re.escape(f"{path} line 3: byte b'\\xb5'") + ".*save it as UTF-8"):
        load_platforms(path)


def test_a_cells_params_name_metric_only_fields_without_their_values(tmp_path):
    # A cpu row describing another CPU needs its peaks and bandwidth given; a cell's params carry
    # only their names (config.measuring_spec), and the hardware check still counts them given.
    table = _epyc_table(tmp_path)
    named = {"tdp_w": 6.25, "logical_cpus": 2,
             METRICS_ONLY_KEY: ["memory_gb_per_s", "peak_tflops_fp32"]}  # fmt: skip
    p = resolve_platform("cpu", XEON, named, platforms=table)
    assert p.tdp_w == 6.25 and math.isnan(p.peak_tflops_fp32) and math.isnan(p.memory_gb_per_s)
    with pytest.raises(HardwareMismatchError, match="memory_gb_per_s"):
        resolve_platform("cpu", XEON, {**named, METRICS_ONLY_KEY: ["peak_tflops_fp32"]},
                         platforms=table)  # fmt: skip

"""Platform table against NVIDIA datasheets, and its loader's checks."""

import csv
import re

import pytest

from tokencarbon.errors import ConfigError, InputError
from tokencarbon.models import resources_dir
from tokencarbon.platforms import (
    get_platform,
    load_platforms,
    peak_bandwidth_bytes_per_s,
    peak_flops,
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


# Device names as nvidia-smi / torch.cuda.get_device_name report them; "NVIDIA H100 80GB HBM3"
# was read off an H100 SXM, the rest are NVIDIA's product names as the driver spells them.
# hardware.check_platform applies the pattern with re.search, as _matching does.
def _matching(device_name):
    gpus = [p for p in load_platforms().values() if p.kind == "gpu"]
    return [p.platform for p in gpus if re.search(p.device_name_pattern, device_name)]


@pytest.mark.parametrize(
    "device_name, platform",
    [
        ("Tesla V100S-PCIE-32GB", "v100s-pcie-32gb"),
        ("NVIDIA A100-SXM4-40GB", "a100-sxm4-40gb"),
        ("NVIDIA A100-SXM4-80GB", "a100-sxm4-80gb"),
        ("NVIDIA H100 80GB HBM3", "h100-sxm-80gb"),
        ("NVIDIA H200", "h200-141gb"),
        ("NVIDIA H100 PCIe", None),
        ("NVIDIA H100 NVL", None),
        ("NVIDIA H200 NVL", None),
        ("Tesla V100-SXM2-32GB", None),
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
    with pytest.raises(InputError, match=rf"{path} line 3, column memory_gb_per_s: '1.5 TB/s'"):
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

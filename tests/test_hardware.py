"""A cell refuses to run on hardware that is not its platform."""

import subprocess
from pathlib import Path

import pytest
import yaml
from helpers import gpu_present

from tokencarbon.plan import platform_slice
from tokencarbon.errors import HardwareMismatchError
from tokencarbon.hardware import check_platform, detect, git_commit, visible_devices

# platform_slice reads platforms.<name> (spec overrides) and power; no overrides here.
CONFIG = {
    "platforms": {p: {} for p in ["cpu", "h100-sxm-80gb", "a100-sxm4-40gb", "h200-141gb"]},
    "power": {"interval_s": None, "idle_s": 1.0},
}


def test_h100_platform_accepts_the_name_nvml_reports_on_an_h100():
    # "NVIDIA H100 80GB HBM3" is what nvidia-smi printed on the H100 used for docs/results.md.
    check_platform(platform_slice(CONFIG, "h100-sxm-80gb"), {"device_name": "NVIDIA H100 80GB HBM3"})


@pytest.mark.parametrize(
    "platform, device",
    [("h100-sxm-80gb", "NVIDIA H200"), ("a100-sxm4-40gb", "NVIDIA A100-SXM4-80GB"), ("h200-141gb", "NVIDIA H100 80GB HBM3")],
)
def test_a_different_gpu_is_refused_naming_both(platform, device):
    with pytest.raises(HardwareMismatchError) as err:
        check_platform(platform_slice(CONFIG, platform), {"device_name": device})
    assert platform in str(err.value) and device in str(err.value)


def test_the_pattern_must_match_the_whole_device_name():
    # A slice whose pattern is unanchored ("NVIDIA H100", as a hand-written row might carry) must not
    # pass an H100 PCIe (another row: 2,000 GB/s, 350 W) for the SXM card by matching a prefix.
    platform = platform_slice(CONFIG, "h100-sxm-80gb") | {"device_name_pattern": "NVIDIA H100"}
    with pytest.raises(HardwareMismatchError, match="NVIDIA H100 PCIe"):
        check_platform(platform, {"device_name": "NVIDIA H100 PCIe"})


def test_a_gpu_platform_without_a_gpu_is_refused():
    with pytest.raises(HardwareMismatchError, match="no CUDA device is visible"):
        check_platform(platform_slice(CONFIG, "h100-sxm-80gb"), {"device_name": None})


EPYC = "AMD EPYC 7763 64-Core Processor"  # the CPU the cpu row of resources/platforms.csv describes


def test_the_default_cpu_platform_runs_on_this_cpu_and_the_bare_row_only_on_its_own():
    # issue 10 §4: config/config.yaml's cpu platform (spec: measure, logical_cpus, an assumed
    # tdp_w) describes any CPU; the bare row only the EPYC 7763, any other refused naming it.
    hw = detect("cpu")
    assert hw["cpu_logical_cores"] >= 1 and hw["device_name"]
    default = yaml.safe_load((Path(__file__).parents[1] / "config/config.yaml").read_text())
    platform = platform_slice({**CONFIG, "platforms": default["platforms"]}, "cpu")
    assert platform["spec"]["measure"] is True and (platform["tdp_w"], platform["logical_cpus"]) == (4.375, 2)
    check_platform(platform, hw)
    if hw["device_name"] == EPYC:
        check_platform(platform_slice(CONFIG, "cpu"), hw)
        return
    with pytest.raises(HardwareMismatchError) as err:
        check_platform(platform_slice(CONFIG, "cpu"), hw)
    assert repr(hw["device_name"]) in str(err.value) and "measure: true" in str(err.value)
    # told only a TDP, the row still lacks the CPUs it covers and the peaks: named
    told = platform_slice({**CONFIG, "platforms": {"cpu": {"spec": {"tdp_w": 6.0}}}}, "cpu")
    with pytest.raises(HardwareMismatchError, match="for logical_cpus, peak_tflops_fp32, memory_gb_per_s"):
        check_platform(told, hw)


def test_platform_slice_defaults_the_sidecar_interval_by_kind():
    assert platform_slice(CONFIG, "cpu")["power_interval_s"] == 0.1
    assert platform_slice(CONFIG, "h200-141gb")["power_interval_s"] == 0.05


def test_git_commit_names_this_checkout():
    commit = git_commit()
    assert commit == "unknown" or len(commit.split("+")[0]) == 40


def test_visible_devices_names_this_cpu_and_starts_no_cuda():
    import sys

    seen = visible_devices()
    # lscpu reads the same kernel table another way (its "Model name:" line)
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next(line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name:"))
    assert seen["cpu"] == model
    if not gpu_present():
        assert seen["gpus"] == [] and seen["gpu_note"]
    assert "torch" not in sys.modules or not __import__("torch").cuda.is_initialized()


def test_a_gpu_row_is_never_taken_for_another_gpu_even_with_spec_overrides():
    config = {"platforms": {"h100-sxm-80gb": {"spec": {"tdp_w": 700.0}}},
              "power": {"interval_s": None, "idle_s": 1.0}}  # fmt: skip
    platform = platform_slice(config, "h100-sxm-80gb")
    # A GPU's spec values change no measurement (NVML reads its power): not in its params (issue 21).
    assert "spec" not in platform and platform["tdp_w"] == 700.0
    with pytest.raises(HardwareMismatchError, match="NVIDIA H200"):
        check_platform({**platform, "spec": {"tdp_w": 700.0}}, {"device_name": "NVIDIA H200"})


def test_platform_slice_without_overrides_carries_no_spec():
    # cells measured before platforms.<name>.spec existed keep their params (no rerun)
    assert "spec" not in platform_slice(CONFIG, "cpu")

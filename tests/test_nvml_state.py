"""The GPU state a cell records at the start and end of its window (power/nvml.gpu_state), and the
names of NVML's clocks-event (throttle) reason bits."""

import pytest
from helpers import gpu_present

from tokencarbon.power.nvml import gpu_state, throttle_reason_names


def test_throttle_reason_bits_by_hand():
    # nvml.h: GpuIdle 0x1, ApplicationsClocksSetting 0x2, SwPowerCap 0x4, HwSlowdown 0x8,
    # SyncBoost 0x10, SwThermalSlowdown 0x20, HwThermalSlowdown 0x40, HwPowerBrakeSlowdown 0x80,
    # DisplayClockSetting 0x100. 0x24 = 0x20 + 0x4: software power cap and software thermal.
    assert throttle_reason_names(0x24) == ["sw_power_cap", "sw_thermal_slowdown"]
    assert throttle_reason_names(0x1) == ["gpu_idle"]
    assert throttle_reason_names(0) == []
    assert throttle_reason_names(-1) is None and throttle_reason_names(None) is None


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_present(), reason="no NVIDIA GPU and driver")
def test_gpu_state_reads_limit_and_clocks(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    state = gpu_state(0)
    # Board power limits run from ~70 W (T4) to 1000 W (B200); clocks are positive MHz.
    assert 50 <= state["power_limit_w"] <= 1200
    assert state["sm_clock_mhz"] > 0 and state["mem_clock_mhz"] > 0
    assert state["throttle_reasons"] >= 0 and isinstance(state["throttle_reason_names"], list)

"""The meter reads RAPL where RAPL is readable: a Monitor with no source given (its sidecar runs
tokencarbon.power.open_default in its own process) picks the RAPL counters over the TDP model, and
a window's energy is the counters' step.

This machine (a VM) and CI have no /sys/class/powercap, so the powercap tree here is one the test
writes in the kernel's layout (Documentation/power/powercap/powercap.rst: intel-rapl:<p>[:<s>]/
{name, energy_uj, max_energy_range_uj}) and points the sidecar at ($TOKENCARBON_POWERCAP): a
real file tree read by the real source, with counter steps the test makes and so knows. It does
not show that a real CPU's counters are read right (tests/test_rapl.py's
test_real_rapl_if_readable does, where RAPL is readable).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from helpers import gpu_present

from tokencarbon.monitor import Monitor
from tokencarbon.power import zeusdev
from tokencarbon.power.rapl import POWERCAP_ENV, rapl_state

# A common max_energy_range_uj of Intel server packages (2^32 energy units of 61.035 µJ).
RANGE_UJ = 262_143_328_850

pytestmark = pytest.mark.skipif(
    gpu_present() or zeusdev.amd_gpu_present() or zeusdev.apple_silicon_here(),
    reason="a GPU or SoC is readable here, and open_default rightly picks it before RAPL",
)


def write_atomic(path: Path, text: str) -> None:
    """Replace a counter file at once, as the kernel's value changes: the sidecar, reading it
    meanwhile, never sees it half-written."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def zone(root: Path, name: str, label: str, energy_uj: int) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "name").write_text(label + "\n")
    (d / "max_energy_range_uj").write_text(f"{RANGE_UJ}\n")
    write_atomic(d / "energy_uj", f"{energy_uj}\n")
    return d


def test_a_monitor_without_a_source_reads_rapl_where_readable(tmp_path, monkeypatch):
    pkg = zone(tmp_path, "intel-rapl:0", "package-0", 1_000_000)
    core = zone(tmp_path, "intel-rapl:0:0", "core", 10)  # inside the package: not added
    dram = zone(tmp_path, "intel-rapl:0:1", "dram", 500_000)
    monkeypatch.setenv(POWERCAP_ENV, str(tmp_path))
    assert rapl_state().startswith("readable: intel-rapl:0 (package-0), intel-rapl:0:1 (dram)")
    with Monitor(interval_s=0.05) as monitor:
        assert monitor.spec == {"kind": "rapl"}
        assert monitor.device.startswith("RAPL package-0 (intel-rapl:0) + dram (intel-rapl:0:1)")
        assert "whole machine" in monitor.device and "MODELED" not in monitor.device
        monitor.begin_window("w")
        time.sleep(0.3)  # samples at 0 J inside the window, after its start
        write_atomic(pkg / "energy_uj", f"{1_000_000 + 3_000_000}\n")  # +3 J
        write_atomic(core / "energy_uj", f"{10 + 2_000_000}\n")  # counted in the package already
        write_atomic(dram / "energy_uj", f"{500_000 + 1_000_000}\n")  # +1 J
        time.sleep(0.5)  # samples at +4 J before the window's end
        m = monitor.end_window("w", tokens=8)
    assert m.source == "rapl" and not m.modeled and "modeled" not in m.qa_flags
    assert m.energy_method == "counter"
    # The counter steps by 3 + 1 = 4 J inside the window, with samples of the old value between
    # the window's start and the step and of the new one between the step and the end: exactly
    # 4 J. (Only a sidecar starved of the CPU for the whole 0.5 s after the step would leave the
    # end to interpolate toward the sample after it: still > 95 % of the step.)
    assert m.energy_counter_j == pytest.approx(4.0, rel=0.05)
    assert m.energy_j == m.energy_counter_j and m.j_per_token == pytest.approx(m.energy_j / 8)

"""RAPL counters (tokencarbon.power.rapl) and the Zeus-backed sources (tokencarbon.power.zeusdev).

No real RAPL is readable on the machine these tests were written on (no /sys/class/powercap: a
VM), nor in CI. So these tests do NOT show that a real RAPL counter is read right: they check the
parsing of the powercap layout (which zones are summed, which are left out) and the wrap-around
arithmetic, on files the test writes in the kernel's layout (Documentation/power/powercap/
powercap.rst: intel-rapl:<package>[:<subzone>]/{name, energy_uj, max_energy_range_uj}) with
counter values worked out by hand. On a machine where RAPL is readable, test_real_rapl_if_readable
reads it.
"""

from pathlib import Path

import pytest

from tokencarbon.errors import ConfigError, HardwareMismatchError, InputError
from tokencarbon.power import check_spec, zeusdev
from tokencarbon.power.rapl import (
    POWERCAP,
    RaplSource,
    counter_step_uj,
    rapl_state,
    rapl_zones,
)

# A common max_energy_range_uj of Intel server packages (2^32 energy units of 61.035 µJ).
RANGE_UJ = 262_143_328_850


def zone(root: Path, name: str, label: str, energy_uj: int, range_uj: int = RANGE_UJ) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "name").write_text(label + "\n")
    (d / "energy_uj").write_text(f"{energy_uj}\n")
    (d / "max_energy_range_uj").write_text(f"{range_uj}\n")
    return d


def set_uj(d: Path, energy_uj: int) -> None:
    (d / "energy_uj").write_text(f"{energy_uj}\n")


def test_counter_step_without_and_across_a_wrap():
    assert counter_step_uj(1_000_000, 3_500_000, RANGE_UJ) == 2_500_000
    assert counter_step_uj(7, 7, RANGE_UJ) == 0
    # 262,143,000,000 µJ, then the counter passes its range and reads 500,000:
    # (262,143,328,850 - 262,143,000,000) + 500,000 = 328,850 + 500,000 = 828,850 µJ.
    assert counter_step_uj(262_143_000_000, 500_000, RANGE_UJ) == 828_850
    # a read at the very top of the range, then 0: no energy lost or invented
    assert counter_step_uj(RANGE_UJ, 0, RANGE_UJ) == 0
    with pytest.raises(InputError, match=r"outside its range \[0, 262143328850\]"):
        counter_step_uj(0, RANGE_UJ + 1, RANGE_UJ)


def test_zones_summed_are_packages_and_dram(tmp_path):
    # Two packages with core/uncore/dram subzones, a psys zone (contains the packages) and an MMIO
    # duplicate of package 0: only package-0, package-1 and the two dram zones count.
    zone(tmp_path, "intel-rapl:0", "package-0", 100)
    zone(tmp_path, "intel-rapl:0:0", "core", 50)
    zone(tmp_path, "intel-rapl:0:1", "uncore", 5)
    zone(tmp_path, "intel-rapl:0:2", "dram", 20)
    zone(tmp_path, "intel-rapl:1", "package-1", 200)
    zone(tmp_path, "intel-rapl:1:0", "dram", 30, range_uj=65_532_610_987)
    zone(tmp_path, "intel-rapl:2", "psys", 1000)
    zone(tmp_path, "intel-rapl-mmio:0", "package-0", 100)
    zones = rapl_zones(tmp_path)
    assert [(z.path.name, z.name) for z in zones] == [
        ("intel-rapl:0", "package-0"),
        ("intel-rapl:0:2", "dram"),
        ("intel-rapl:1", "package-1"),
        ("intel-rapl:1:0", "dram"),
    ]
    assert zones[3].max_energy_range_uj == 65_532_610_987
    assert rapl_state(tmp_path).startswith("readable: intel-rapl:0 (package-0)")


def test_source_sums_the_zones_across_a_wrap(tmp_path):
    pkg = zone(tmp_path, "intel-rapl:0", "package-0", 262_143_000_000)
    dram = zone(tmp_path, "intel-rapl:0:2", "dram", 1_000_000)
    core = zone(tmp_path, "intel-rapl:0:0", "core", 10)
    source = RaplSource(tmp_path)
    assert source.describe() == "RAPL package-0 (intel-rapl:0) + dram (intel-rapl:0:2)"

    set_uj(pkg, 262_143_300_000)  # +300,000 µJ
    set_uj(dram, 1_200_000)  # +200,000 µJ
    set_uj(core, 99_999)  # inside the package: not added again
    first = source.read()
    # 0.5 J since the source opened
    assert first.energy_counter_j == pytest.approx(0.5, abs=1e-12)
    assert first.source == "rapl" and first.modeled is False and first.device_index == -1

    set_uj(pkg, 1_000_000)  # wrapped: 28,850 + 1,000,000 = 1,028,850 µJ
    set_uj(dram, 1_400_000)  # +200,000 µJ
    second = source.read()
    step_j = (1_028_850 + 200_000) / 1e6  # 1.22885 J
    assert second.energy_counter_j == pytest.approx(0.5 + step_j, abs=1e-12)
    # power: the step over the time between the two reads (a zone has no instant power)
    span_s = (second.t_wall_ns - first.t_wall_ns) / 1e9
    assert second.power_w == pytest.approx(step_j / span_s)

    third = source.read()  # nothing counted since
    assert third.energy_counter_j == second.energy_counter_j and third.power_w == 0.0


def test_what_is_not_rapl_is_refused_by_name(tmp_path):
    with pytest.raises(HardwareMismatchError, match="no RAPL package or dram zone under"):
        RaplSource(tmp_path)
    assert rapl_state(tmp_path).startswith("not readable: no RAPL package")
    pkg = zone(tmp_path, "intel-rapl:0", "package-0", 5)
    (pkg / "energy_uj").write_text("N/A\n")
    with pytest.raises(InputError, match=r"intel-rapl:0/energy_uj: 'N/A' is not a counter value"):
        RaplSource(tmp_path)


def test_specs_of_the_new_sources():
    assert check_spec({"kind": "rapl"}) == {"kind": "rapl"}
    assert check_spec({"kind": "zeus_soc"}) == {"kind": "zeus_soc"}
    assert check_spec({"kind": "zeus_gpu", "device_index": 1})["device_index"] == 1
    with pytest.raises(ConfigError, match="device_index must be an int >= 0"):
        check_spec({"kind": "zeus_gpu", "device_index": -1})


@pytest.mark.skipif(
    not rapl_state().startswith("readable"), reason="no readable RAPL on this machine"
)
def test_real_rapl_if_readable():
    source = RaplSource(POWERCAP)
    first = source.read()
    sum(i * i for i in range(2_000_000))  # a few ms of work
    second = source.read()
    # Any running CPU package draws more than nothing and less than 1 kW.
    assert 0 < (second.energy_counter_j - first.energy_counter_j) and 0 < second.power_w < 1000


@pytest.mark.skipif(
    zeusdev.amd_gpu_present() or zeusdev.apple_silicon_here(),
    reason="an AMD GPU or Apple silicon is here: the refusal below does not apply",
)
def test_zeus_sources_say_why_they_cannot_read_here():
    # Without the zeus package the error says how to install its device layer; with it, Zeus
    # itself finds no AMD GPU (or manages NVIDIA GPUs, which the nvml source reads) and no SoC.
    if zeusdev.zeus_installed():
        with pytest.raises(HardwareMismatchError, match="Zeus"):
            zeusdev.ZeusGpuSource(0)
        with pytest.raises(HardwareMismatchError, match="Zeus finds no SoC"):
            zeusdev.ZeusSocSource()
    else:
        for make in (lambda: zeusdev.ZeusGpuSource(0), zeusdev.ZeusSocSource):
            with pytest.raises(HardwareMismatchError, match="pip install --no-deps zeus httpx"):
                make()

"""Measured CPU peaks: plausible magnitudes, and usable by resolve_platform as 'measured'."""

import dataclasses

import pytest

from tokencarbon.errors import ConfigError
from tokencarbon.peak import measure_cpu_peaks


def test_measured_peaks_lie_within_what_a_cpu_can_do():
    peaks = measure_cpu_peaks(1, repeats=2)
    assert set(peaks) == {"peak_tflops_fp32", "memory_gb_per_s"}
    # Upper bound for one logical CPU: AVX-512, 2 FMA units x 16 fp32 lanes x 2 FLOP = 64 FLOP per
    # cycle at 5 GHz = 0.32 TFLOP/s; lower: 1 GFLOP/s (a 1024^3 matmul in 2 s). A unit slip by
    # 1e3 (GFLOP vs TFLOP, ms vs s) lands outside.
    assert 0.001 < peaks["peak_tflops_fp32"] < 0.32
    # Copy: between 0.1 GB/s and 1000 GB/s (beyond any DRAM of a CPU socket).
    assert 0.1 < peaks["memory_gb_per_s"] < 1000


def test_measured_peaks_describe_this_cpu_for_resolve_platform():
    from tokencarbon.hardware import cpu_model_name
    from tokencarbon.platforms import resolve_platform

    measured = measure_cpu_peaks(1, repeats=1)
    p = resolve_platform("cpu", cpu_model_name(), {"tdp_w": 10.0, "logical_cpus": 1}, measured)
    assert p.peak_tflops_fp32 == measured["peak_tflops_fp32"]
    assert "measured: peak_tflops_fp32, memory_gb_per_s" in p.spec_source


def test_bad_arguments_are_named():
    with pytest.raises(ConfigError, match="int8"):
        measure_cpu_peaks(1, dtypes=("int8",), repeats=1)
    with pytest.raises(ConfigError, match="logical_cpus 0"):
        measure_cpu_peaks(0)


def test_command_prints_config_lines_resolve_platform_accepts(capsys, tmp_path):
    import yaml

    from tokencarbon.hardware import cpu_model_name
    from tokencarbon.peak import main
    from tokencarbon.platforms import load_platforms, resolve_platform

    assert main(["--logical-cpus", "1"]) == 0
    spec = yaml.safe_load(capsys.readouterr().out)["platforms"]["cpu"]["spec"]
    assert spec["logical_cpus"] == 1 and set(spec) == {"logical_cpus", "peak_tflops_fp32", "memory_gb_per_s"}
    # With a TDP added (not measurable, so left to the user as a comment), the lines describe this
    # CPU even where the cpu row names another one.
    table = load_platforms()
    other = {**table, "cpu": dataclasses.replace(table["cpu"], device_name_pattern="^No Such CPU$")}
    p = resolve_platform("cpu", cpu_model_name(), {**spec, "tdp_w": 5.0}, platforms=other)
    assert p.peak_tflops_fp32 == spec["peak_tflops_fp32"] and p.tdp_w == 5.0


def test_rule_measure_platform_writes_a_labelled_measurement_of_this_cpu(tmp_path):
    # What rule measure_platform does for config platforms.cpu.spec.measure (one CPU leased here,
    # the lock in a folder of the test's own), read back as compute_metrics reads it.
    import json
    import math

    from tokencarbon.errors import InputError
    from tokencarbon.hardware import cpu_model_name
    from tokencarbon.peak import MEASURED_DTYPES, measure_platform, read_measurement
    from tokencarbon.platforms import get_platform, resolve_platform

    spec = {"measure": True, "tdp_w": 5.0, "logical_cpus": 1}
    platform = {"name": "cpu", "kind": "cpu", "device_name_pattern": get_platform("cpu").device_name_pattern,
                "spec": spec, "logical_cpus": 1}  # fmt: skip
    out = tmp_path / "results/platforms/cpu/spec.json"
    record = measure_platform(platform, out, lock_dir=tmp_path / "locks", repeats=1)
    assert json.loads(out.read_text()) == json.loads(json.dumps(record))
    assert record["device_name"] == cpu_model_name() and record["logical_cpus"] == len(record["cpus"]) == 1
    assert set(record["measured"]) == {"peak_tflops_fp32", "peak_tflops_fp16", "peak_tflops_bf16",
                                       "memory_gb_per_s"} and len(MEASURED_DTYPES) == 3  # fmt: skip
    # same bounds as for measure_cpu_peaks above (one logical CPU)
    assert 0.001 < record["measured"]["peak_tflops_fp32"] < 0.32
    share = record["foreign_cpu_share"]
    assert math.isnan(share) or 0 <= share <= 1
    again = read_measurement(out, "cpu")
    p = resolve_platform("cpu", again["device_name"], spec, again["measured"])
    assert p.peak_tflops_fp32 == record["measured"]["peak_tflops_fp32"] and p.tdp_w == 5.0
    assert "measured: peak_tflops_fp32, peak_tflops_fp16, peak_tflops_bf16, memory_gb_per_s" in p.spec_source
    # a file of another platform, or no measurement at all, is named and never used
    with pytest.raises(InputError, match=r"not a measurement of platform 'cpu2'"):
        read_measurement(out, "cpu2")
    out.write_text("{")
    with pytest.raises(InputError, match=r"spec.json: cannot read a platform measurement"):
        read_measurement(out, "cpu")
    with pytest.raises(ConfigError, match="is a gpu"):
        measure_platform({**platform, "kind": "gpu"}, out, lock_dir=tmp_path / "locks")

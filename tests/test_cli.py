"""The `tokencarbon` console script, each subcommand run as a user would on this CPU machine."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).with_name("tokencarbon")


def tc(
    *args: str, cwd: Path = REPO, timeout: float = 300, cpus: set[int] | None = None
) -> subprocess.CompletedProcess:
    """The console script run as a user would; cpus: the CPUs it may use (as under taskset)."""
    assert SCRIPT.exists(), f"{SCRIPT} missing: reinstall the package (pip install -e .)"
    return subprocess.run(
        [str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
        preexec_fn=None if cpus is None else lambda: os.sched_setaffinity(0, cpus),
    )  # fmt: skip


def test_help_lists_every_command():
    out = tc("--help")
    assert out.returncode == 0, out.stderr
    for command in ("run", "measure", "import", "doctor"):
        assert command in out.stdout
    assert "tokencarbon" in tc("--version").stdout


@pytest.mark.parametrize("command", ["run", "measure", "import", "doctor"])
def test_each_command_has_help_with_examples(command):
    out = tc(command, "--help")
    assert out.returncode == 0, out.stderr
    assert f"usage: tokencarbon {command}" in out.stdout
    assert (
        "examples:" in out.stdout and f"tokencarbon {command}" in out.stdout.split("examples:")[1]
    )


SPIN = "import time\nt = time.monotonic()\nwhile time.monotonic() - t < 2.0: pass\n"


def test_measure_a_command_modeled_energy_is_tdp_times_utilisation():
    out = tc("measure", "--tdp-w", "100", "--interval-s", "0.1", "--tokens", "400", "--json",
             "--", sys.executable, "-c", SPIN)  # fmt: skip
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    # The kernel's account of the command's CPU time (getrusage of the waited child), independent
    # of the sidecar's sampling: modeled energy = TDP x CPU seconds / n logical CPUs (the tree's
    # utilisation integrated over the window). Tolerance: one sampling interval at one CPU on
    # each edge of the window, TDP / n x 0.1 s each, plus 10 % for psutil's tick rounding.
    n = len(os.sched_getaffinity(0))
    want = 100 * r["command_cpu_s"] / n
    assert abs(r["energy_j"] - want) <= 0.10 * want + 2 * 0.1 * 100 / n, (r, want)
    assert r["command_cpu_s"] > 0.3  # it did spin (a loaded 2-core runner gives it ~0.5 CPU)
    assert r["source"] == "modeled_cpu" and r["modeled"] and r["energy_counter_j"] is None
    assert r["exit_code"] == 0 and r["tokens"] == 400
    assert r["j_per_token"] == pytest.approx(r["energy_j"] / 400)
    # 413 gCO2eq/kWh (the study's default): g = J / 3.6e6 x 413.
    assert r["carbon_g"] == pytest.approx(r["energy_j"] / 3.6e6 * 413)


def test_measure_human_output_and_exit_code():
    out = tc("measure", "--tdp-w", "50", "--intensity", "200", "--",
             sys.executable, "-c", "import sys; sys.exit(3)")  # fmt: skip
    assert out.returncode == 3  # the command's own exit code
    assert "MODELED" in out.stdout and "energy" in out.stdout and "at 200 gCO2eq/kWh" in out.stdout
    assert "(exit 3)" in out.stdout


def test_measure_refuses_what_it_cannot_measure():
    out = tc("measure", "--tdp-w", "50")
    assert out.returncode == 2 and "no command to measure" in out.stderr
    out = tc("measure", "--tdp-w", "50", "--tokens", "0", "--", "true")
    assert out.returncode == 2 and "--tokens 0" in out.stderr
    out = tc("measure", "--tdp-w", "50", "--", "/nonexistent/binary")
    assert out.returncode == 2 and "cannot run /nonexistent/binary" in out.stderr


def test_doctor_on_this_cpu_machine(tmp_path):
    out = tc("doctor", "--json")
    report = json.loads(out.stdout)
    assert report["cpu"]["logical_cpus_available"] == len(os.sched_getaffinity(0))
    assert any(s.startswith("modeled_cpu") for s in report["power_sources"])
    from tokencarbon.platforms import get_platform

    cpu_row_matches = bool(
        re.search(get_platform("cpu").device_name_pattern, report["cpu"]["model"])
    )
    assert any(m["platform"] == "cpu" for m in report["platform_matches"]) == cpu_row_matches
    if not report["gpus"]:
        assert report["gpu_note"]  # says why there is none
        # A study of an H100 cannot run here, and doctor says why, naming the pattern.
        config = tmp_path / "h100.yaml"
        config.write_text(yaml.safe_dump({"platforms": {"h100-sxm-80gb": {}, "cpu": {}}}))
        out = tc("doctor", "--configfile", str(config))
        assert out.returncode == 1
        pattern = get_platform("h100-sxm-80gb").device_name_pattern
        assert f"h100-sxm-80gb: CANNOT run here (needs a GPU matching {pattern!r}" in out.stdout
    config = tmp_path / "unknown.yaml"
    config.write_text(yaml.safe_dump({"platforms": {"tpu-v9": {}}}))
    out = tc("doctor", "--configfile", str(config))
    assert out.returncode == 1 and "tpu-v9: CANNOT run here (unknown platform" in out.stdout
    # a capped variant is judged as its row (platforms.<name>.hardware), under its own name: an
    # H200 capped at 40 GB cannot run on this machine (no GPU, or not an H200), and says so by the
    # row's pattern; a variant naming no row is refused naming that row
    config = tmp_path / "variants.yaml"
    config.write_text(yaml.safe_dump({"platforms": {
        "h200-40gb": {"hardware": "h200-141gb", "memory_limit_gb": 40},
        "h200-typo": {"hardware": "h200-141"},
    }}))  # fmt: skip
    out = tc("doctor", "--configfile", str(config))
    assert out.returncode == 1
    if not report["gpus"]:
        assert "h200-40gb: CANNOT run here (needs a GPU matching '^NVIDIA H200$'" in out.stdout
    assert "h200-typo: CANNOT run here (unknown row 'h200-141' in hardware" in out.stdout


def test_doctor_judges_the_cpu_default_as_its_cells_do(tmp_path):
    # The cpu row of resources/platforms.csv describes one EPYC 7763 core pair; any other CPU
    # runs only with its numbers in config (platforms.cpu.spec), as the DAG build requires. The
    # default config gives them (measure: true for the peaks, logical_cpus 2, an assumed tdp_w),
    # so on any CPU with 2 CPUs allowed the default can run; without a spec it cannot, and doctor
    # names the keys. Pinned to one CPU it cannot either (a cell pins logical_cpus), and says why.
    from tokencarbon.hardware import cpu_model_name
    from tokencarbon.platforms import get_platform

    row = get_platform("cpu")
    on_the_rows_cpu = re.search(row.device_name_pattern, cpu_model_name()) is not None
    allowed = sorted(os.sched_getaffinity(0))
    out = tc("doctor")
    report = json.loads(tc("doctor", "--json").stdout)
    (verdict,) = [v for v in report["study"]["platforms"] if v["platform"] == "cpu"]
    if len(allowed) >= 2:
        assert out.returncode == 0 and "cpu: can run here" in out.stdout, out.stdout
        assert verdict["can_run"] is True and "config: tdp_w, logical_cpus" in verdict["why"]
    else:
        assert out.returncode == 1 and "may use only 1" in verdict["why"]
    config = tmp_path / "study.yaml"
    if not on_the_rows_cpu:
        config.write_text(yaml.safe_dump({"platforms": {"cpu": {}}}))
        out = tc("doctor", "--configfile", str(config))
        assert out.returncode == 1 and "cpu: CANNOT run here" in out.stdout, out.stdout
        assert "give config platforms.cpu.spec the values of this CPU" in out.stdout
        assert cpu_model_name() in out.stdout
    one = {allowed[0]}
    out = tc("doctor", cpus=one)
    assert out.returncode == 1, out.stdout
    assert (
        "cpu: CANNOT run here (CPU" in out.stdout
        and "the platform needs 2 logical CPUs" in out.stdout
        and f"this process may use only 1: [{allowed[0]}]" in out.stdout
    ), out.stdout
    # The config's spec is applied as cells apply it: a 1-CPU slice described there runs pinned.
    spec = {"measure": True, "tdp_w": 4.375}
    config.write_text(yaml.safe_dump({"platforms": {"cpu": {"spec": spec | {"logical_cpus": 1}}}}))
    out = tc("doctor", "--configfile", str(config), cpus=one)
    assert out.returncode == 0 and "cpu: can run here" in out.stdout, out.stdout
    assert "config: tdp_w, logical_cpus" in out.stdout  # spec_source names where the 1 came from
    # resolve_platform's own refusals reach the verdict: a memory limit above the row's 8 GB.
    platform = {"memory_limit_gb": 100, "spec": spec | {"logical_cpus": 2}}
    config.write_text(yaml.safe_dump({"platforms": {"cpu": platform}}))
    out = tc("doctor", "--configfile", str(config))
    assert out.returncode == 1
    assert "cpu: CANNOT run here (memory_limit_gb=100 for platform 'cpu'" in out.stdout


def test_run_dry_run_in_the_checkout():
    out = tc("run", "-n", "--quiet", "rules", timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "snakemake --cores 1 -n --quiet rules" in out.stderr
    assert "summary:" not in out.stdout  # a dry run builds nothing to point at


def test_run_outside_a_checkout(tmp_path):
    out = tc("run", "--directory", str(tmp_path), "-n")
    assert out.returncode == 2 and "no tokencarbon checkout" in out.stderr

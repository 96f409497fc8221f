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
    # the cells as the DAG plans them (tokencarbon.plan): config/config.yaml lists max_num_seqs
    # [4, 16] for its three models; its static sweep is `auto`, waiting for each model's probe
    # unless a run here has probed already
    plan = report["study"]["plan"]
    models = ["tiny-gpt2", "tiny-llama", "tiny-llama-int8"]
    assert {f"cpu/{m}/cb{n}" for m in models for n in (4, 16)} <= set(plan["cells"])
    assert plan["probes"] == [f"results/default/cells/cpu/{m}/probe.json" for m in models]
    for m in models:
        assert f"cpu/{m} static" in plan["pending"] or f"cpu/{m}/bs1" in plan["cells"]
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


# --- issue 21: what measure and import can check before they start, and what they never drop -----

TRACE_HEADER = (
    "Datetime (UTC),Zone Id,Carbon Intensity gCO₂eq/kWh (direct),Carbon Intensity gCO₂eq/kWh (LCA)\n"
)


def _trace(path: Path, rows: list[tuple[str, float]]) -> Path:
    path.write_text(TRACE_HEADER + "".join(f"{when},DE,{g},{g}\n" for when, g in rows), encoding="utf-8")
    return path


def test_measure_refuses_an_interval_or_pue_up_front_with_the_valid_range():
    import time

    start = time.monotonic()
    out = tc("measure", "--tdp-w", "50", "--interval-s", "100", "--", "true")
    assert out.returncode == 2
    assert "--interval-s 100: give 0.01 to 10 s" in out.stderr
    out = tc("measure", "--tdp-w", "50", "--interval-s", "0.001", "--", "true")
    assert out.returncode == 2 and "--interval-s 0.001: give 0.01 to 10 s" in out.stderr
    out = tc("measure", "--tdp-w", "50", "--pue", "0.5", "--", "true")
    assert out.returncode == 2 and "--pue 0.5: must be >= 1" in out.stderr
    assert time.monotonic() - start < 60  # was: 131 s of waiting, then no result


def test_measure_checks_the_trace_before_the_command_starts(tmp_path):
    # A 2024 trace (rows 00:00 and 01:00: it covers 2024-01-01 00:00-02:00), used today.
    trace = _trace(tmp_path / "de.csv", [("2024-01-01 00:00:00", 400), ("2024-01-01 01:00:00", 300)])
    marker = tmp_path / "ran"
    cmd = ["--", sys.executable, "-c", f"open({str(marker)!r}, 'w').close()"]
    out = tc("measure", "--tdp-w", "50", "--trace", str(trace), *cmd)
    assert out.returncode == 2 and not marker.exists()  # nothing was run
    assert f"--trace {trace} cannot give the command's time an intensity, so nothing was run" in out.stderr
    assert "set the fill policy (--fill)" in out.stderr and "carbon.fill" not in out.stderr
    out = tc("measure", "--tdp-w", "50", "--trace", str(trace), "--fill", "previous", *cmd)
    assert out.returncode == 2 and not marker.exists()
    assert "more than --max-fill-s = 3600 s" in out.stderr and "carbon.max_fill_s" not in out.stderr
    # No limit: the last row's 300 g/kWh carried to today, as asked: carbon = J / 3.6e6 x 300.
    out = tc("measure", "--tdp-w", "50", "--trace", str(trace), "--fill", "previous",
             "--max-fill-s", "none", "--json", *cmd)  # fmt: skip
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert marker.exists() and r["carbon_missing"] is None
    assert r["carbon_g"] == pytest.approx(r["energy_j"] / 3.6e6 * 300)


def test_measure_keeps_the_energy_when_the_trace_ends_during_the_command(tmp_path):
    import time

    # One-second rows from 10 s ago to 6 s from now (the trace covers until then), 100 g/kWh; the
    # command runs until 9 s from now: its end lies past the trace.
    t0 = int(time.time())
    rows = [(time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t0 + k)), 100) for k in range(-10, 6)]
    trace = _trace(tmp_path / "live.csv", rows)
    wait = f"import time; time.sleep(max(0.0, {t0 + 9} - time.time()))"
    out = tc("measure", "--tdp-w", "50", "--interval-s", "0.1", "--trace", str(trace), "--json",
             "--", sys.executable, "-c", wait)  # fmt: skip
    assert out.returncode == 2, out.stderr  # the command succeeded; the carbon asked for is missing
    r = json.loads(out.stdout)
    # the window ran from the command's start to its end, about 9 s after the test began
    assert r["exit_code"] == 0 and r["energy_method"] == "modeled" and r["time_s"] > 4.0
    assert r["energy_j"] is not None and r["energy_j"] >= 0 and r["energy_integrated_j"] == r["energy_j"]
    assert r["carbon_g"] is None and "does not cover" in r["carbon_missing"]
    assert "(--fill)" in r["carbon_missing"] and "carbon.fill" not in r["carbon_missing"]
    assert "the energy above is measured; its carbon is missing" in out.stderr


def test_import_checks_the_trace_against_the_windows_before_writing(tmp_path):
    trace = _trace(tmp_path / "de.csv", [("2024-01-01 00:00:00", 400), ("2024-01-01 01:00:00", 300)])
    log = tmp_path / "smi.csv"
    log.write_text("timestamp, power.draw.instant [W]\n"
                   + "".join(f"2025-01-15T12:00:0{k}.000Z, 150.00 W\n" for k in range(5)))  # fmt: skip
    timing = tmp_path / "t.csv"
    timing.write_text("start,end,output_tokens\n2025-01-15T12:00:01Z,2025-01-15T12:00:03Z,10\n")
    out = tc("import", "--power", str(log), "--timing", str(timing), "--model", "m",
             "--batch-size", "1", "--platform", "h100-sxm-80gb", "--trace", str(trace),
             "--out", str(tmp_path / "cells"))  # fmt: skip
    assert out.returncode == 2 and not (tmp_path / "cells").exists()
    assert f"--trace {trace}: nothing was written: {timing} row 1:" in out.stderr
    assert "(--fill)" in out.stderr


def test_run_reads_the_configfiles_before_snakemake(tmp_path):
    # Snakemake's own loader ends an unquoted impossible date in a traceback naming no line.
    text = (REPO / "config/config.yaml").read_text().replace(
        "  intensity_g_per_kwh: 413\n", "  intensity_g_per_kwh: 413\n  trace_day: 2023-02-30\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    line = text.splitlines().index("  trace_day: 2023-02-30") + 1
    out = tc("run", "-n", "--configfile", str(bad))
    assert out.returncode == 2
    assert f"{bad} line {line}, key trace_day: '2023-02-30' is no calendar date" in out.stderr


# --- issue 24 item 7: what `run` prints, and --idle ----------------------------------------------


def test_run_refuses_an_unknown_snakemake_option_in_one_line():
    out = tc("run", "--coress", "1")
    assert out.returncode == 2
    assert "Snakemake has no option --coress (did you mean --cores?). Nothing was run" in out.stderr
    assert "`snakemake --help` lists Snakemake's options" in out.stderr
    # was: Snakemake's 101-line usage text; now the error alone
    assert "usage:" not in out.stderr and len(out.stderr.splitlines()) <= 2, out.stderr
    out = tc("run", "--cores", "many")
    assert out.returncode == 2 and "--cores, -c): must be integer or 'all'" in out.stderr


def test_closing_note_says_where_the_results_are_and_whether_this_run_wrote_them(tmp_path):
    import time

    from tokencarbon.cli import closing_note

    summary, report = tmp_path / "results" / "summary.md", tmp_path / "results" / "report.html"
    summary.parent.mkdir()
    started = time.time() - 60
    summary.write_text("# headlines\n")  # written by this run (after it started)
    note = closing_note(summary, report, started, tmp_path)
    assert f"tokencarbon run: done (in {tmp_path}). The results:" in note
    assert f"  {summary}  the headlines" in note and "NOT rebuilt" not in note.splitlines()[2]
    assert f"  {report}  not built by this run" in note
    report.write_text("<html></html>")
    os.utime(report, (started - 3600, started - 3600))  # left by an earlier run
    note = closing_note(summary, report, started, tmp_path)
    written = time.strftime("%Y-%m-%d %H:%M", time.localtime(started - 3600))
    assert f"  {report}  Snakemake's report" in note
    assert f"NOT rebuilt by this run (written {written})" in note
    # a run of some targets builds no report: the note says so, and that the file is older
    note = closing_note(summary, report, started, tmp_path, "this run built targets (x)")
    assert (
        f"  {report}  NOT built by this run: this run built targets (x); the file there is from "
        f"an earlier run ({written})"
    ) in note
    # the DAG's own report.html beside Snakemake's, each its own file
    interactive = tmp_path / "results" / "study-report.html"
    note = closing_note(summary, report, started, tmp_path, None, interactive)
    assert f"  {interactive}  not built by this run" in note
    interactive.write_text("<html></html>")
    assert f"  {interactive}  the study's report" in closing_note(
        summary, report, started, tmp_path, None, interactive
    )


def test_import_idle_takes_the_timing_files_time_formats(tmp_path):
    # 150 W from 12:00:00 to 12:00:03, 60 W from 12:00:04 to 12:00:06 (UTC); the device idled in
    # the last 2 s: idle power = 60 W x 2 s / 2 s = 60 W, however the span is written.
    log = tmp_path / "smi.csv"
    rows = [f"2025-01-15T12:00:0{k}.000Z, {150 if k <= 3 else 60}.00 W\n" for k in range(7)]
    log.write_text("timestamp, power.draw.instant [W]\n" + "".join(rows))
    timing = tmp_path / "t.csv"
    timing.write_text("start,end,output_tokens\n2025-01-15T12:00:01Z,2025-01-15T12:00:03Z,10\n")
    # 2025-01-15T12:00:04Z is 1,736,942,404 s after the epoch
    spans = {
        "epoch seconds": ["1736942404", "1736942406.0"],
        "nvidia-smi local time": ["2025/01/15 12:00:04.000", "2025/01/15 12:00:06.000"],
        "ISO-8601": ["2025-01-15T12:00:04Z", "2025-01-15T12:00:06+00:00"],
    }
    for k, (kind, (start, end)) in enumerate(spans.items()):
        out_dir = tmp_path / f"cells{k}"
        out = tc("import", "--power", str(log), "--timing", str(timing), "--model", "m",
                 "--batch-size", "1", "--platform", "h100-sxm-80gb", "--tz", "UTC",
                 "--idle", start, end, "--out", str(out_dir))  # fmt: skip
        assert out.returncode == 0, (kind, out.stderr)
        (meta,) = out_dir.rglob("meta.json")
        assert json.loads(meta.read_text())["idle_power_w"] == pytest.approx(60.0), kind

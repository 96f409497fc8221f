"""The `tokencarbon` command: run the study, measure any command, import measurements made
elsewhere, check what this machine can measure. `tokencarbon <subcommand> --help` for each."""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

from tokencarbon.errors import TokencarbonError
from tokencarbon.layout import DEFAULT_STUDY, study_name, study_root

# carbon.DEFAULT_MAX_FILL_S, read without importing numpy: `tokencarbon measure` loads numpy (and
# never pandas, unless --trace is read) while its power sidecar starts (tokencarbon.monitor).
from tokencarbon.monitor import DEFAULT_MAX_FILL_S

# measure --interval-s: below 10 ms psutil's CPU times (10 ms ticks) make a modeled sample mostly
# rounding, and NVML refreshes power no faster; above 10 s a command's window holds only a few
# samples, and end_window waits for the first sample after the window (at most 30 s,
# monitor._WAIT_TIMEOUT_S) before anything is printed.
MEASURE_INTERVAL_S = (0.01, 10.0)

EXAMPLES = {
    "run": """examples:
  tokencarbon run                                  # the embedded default study (CPU, minutes)
  tokencarbon run --configfile config/paper.yaml   # the study's grid (on its GPUs)
  tokencarbon run -n                               # what would run (Snakemake's dry run)
  tokencarbon run --config carbon='{"intensity_g_per_kwh": 250}'""",
    "measure": """examples:
  tokencarbon measure -- python generate.py                 # energy and carbon of a command
  tokencarbon measure --tokens 51200 -- python bench.py      # plus J/token and gCO2/token
  tokencarbon measure --trace DE_2023.csv --json -- ./serve  # hourly grid intensity, JSON out
  tokencarbon measure --tdp-w 65 -- make -j4                 # modeled CPU at your CPU's TDP""",
    "import": """examples:
  tokencarbon import --power smi.csv --tz Europe/Berlin --timing windows.csv \\
      --model llama-2-7b --platform a100-sxm4-40gb --architecture llama-2-7b --dtype float16
  tokencarbon import --power smi.csv --gpu 1 --timing windows.csv   # a log of several GPUs
  tokencarbon import --power emissions.csv --timing runs.csv --model m --platform p  # CodeCarbon
  tokencarbon import --power dcgm.log --start 2025-01-15T12:00:00Z --delay-ms 100 --timing t.csv""",
    "doctor": """examples:
  tokencarbon doctor                            # this machine against config/config.yaml
  tokencarbon doctor --configfile config/paper.yaml
  tokencarbon doctor --json""",
}


def _parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(
        prog="tokencarbon",
        description="Energy and carbon per token of LLM inference. The Snakemake workflow runs "
        "a whole study; these commands cover what is not a study.",
        epilog="Run `tokencarbon <command> --help` for each command's options and examples.",
        formatter_class=fmt,
    )
    p.add_argument("--version", action="version", version=f"tokencarbon {_version()}")
    sub = p.add_subparsers(dest="command", metavar="command", required=True)

    r = sub.add_parser(
        "run", help="run the Snakemake workflow in this checkout",
        description="Run the workflow (Snakefile, config/config.yaml and profiles/default of the "
        "checkout) with Snakemake; arguments after `run` go to Snakemake unchanged (--cores 1 "
        "is added when no -c/--cores/-j is given). After a full run it builds the report and "
        "prints where the study's summary.md and report are (results/<study>/, the config's "
        "`study`).",
        epilog=EXAMPLES["run"], formatter_class=fmt,
    )  # fmt: skip
    r.add_argument("--directory", type=Path, default=None,
                   help="the checkout (default: this folder if it holds a Snakefile, else the "
                   "checkout tokencarbon is installed from)")  # fmt: skip
    r.add_argument("--no-report", action="store_true", help="skip `snakemake --report`")
    # Every other argument goes to Snakemake (parse_known_args in main).

    m = sub.add_parser(
        "measure", help="measure the energy and carbon of any command",
        description="Run CMD with tokencarbon's power sidecar beside it, reading the first of: "
        "NVML (GPU 0 as CUDA_VISIBLE_DEVICES numbers it); an AMD GPU or Apple silicon through "
        "Zeus's device layer (where the zeus package is installed); RAPL (CPU packages and DRAM "
        "of the whole machine); else modeled CPU power (TDP x CPU utilisation of CMD's process "
        "tree, labelled MODELED). Prints the energy (energy counter and integral of power), "
        "operational carbon, and J/token and gCO2/token when --tokens is given. Exits with "
        "CMD's exit code. Its overhead is mostly Python loading numpy and pandas (docs/meter.md).",
        epilog=EXAMPLES["measure"], formatter_class=fmt,
    )  # fmt: skip
    m.add_argument(
        "--tokens", type=int, default=None, help="tokens CMD generated (per-token figures)"
    )
    _carbon_args(m)
    m.add_argument(
        "--tdp-w",
        type=float,
        default=None,
        help="model CPU power at this TDP (W) even where a GPU is visible; default: "
        "the platforms.csv 'cpu' row's TDP per logical CPU x the CPUs available",
    )
    m.add_argument(
        "--interval-s",
        type=float,
        default=None,
        help=f"sampling interval (s), {MEASURE_INTERVAL_S[0]:g} to {MEASURE_INTERVAL_S[1]:g} "
        "(default 0.05 on a GPU, 0.1 modeled)",
    )
    m.add_argument("--json", action="store_true", help="one JSON object on stdout")
    m.add_argument("cmd", nargs=argparse.REMAINDER, help="-- then the command to measure")

    i = sub.add_parser(
        "import", help="turn an external power log plus a timing file into cells",
        description="Build cells (<cells>/<platform>/<model>/bs<n>/: batches.parquet, "
        "power.parquet, meta.json, the measured cells' schemas) from a power log (an nvidia-smi "
        "--query-gpu CSV with any columns, units or nounits, local or ISO-8601 times; CodeCarbon's "
        "emissions.csv; `nvidia-smi dmon -o DT` or `dcgmi dmon` text) and a timing CSV (start, "
        "end, output_tokens[, input_tokens, batch_size, n_requests, model, platform, first_token]; "
        "docs/import.md). Prints each cell's energy, carbon and J/token. nvidia-smi's power.draw "
        "is kept as the driver's 1 s average (flagged when integrated); power.draw.instant as "
        "instant power.",
        epilog=EXAMPLES["import"], formatter_class=fmt,
    )  # fmt: skip
    i.add_argument("--power", required=True, type=Path, help="the power log")
    i.add_argument("--format", default="auto", choices=["auto", "nvidia-smi", "codecarbon",
                   "dmon", "dcgmi"], help="the power log's kind (default: detected)")  # fmt: skip
    i.add_argument("--timing", required=True, type=Path, help="the timing CSV")
    i.add_argument("--tz", default=None,
                   help="zone of zone-less times in the log and timing file: IANA name "
                   "(Europe/Berlin) or fixed offset (+01:00)")  # fmt: skip
    i.add_argument(
        "--gpu", default=None, help="which GPU of a multi-GPU log: index, pci.bus_id or uuid"
    )
    i.add_argument("--power-draw", default="average", choices=["average", "instant"],
                   help="what the log's power.draw / pwr / POWER is: 'average' (Ampere and newer "
                   "except A100, the default) or 'instant' (A100, V100, T4 and older)")  # fmt: skip
    i.add_argument("--component", default="gpu", choices=["gpu", "cpu", "ram", "total"],
                   help="CodeCarbon: which energy column")  # fmt: skip
    i.add_argument(
        "--all-gpus",
        action="store_true",
        help="CodeCarbon: accept gpu_energy summed over several GPUs as one device",
    )
    i.add_argument("--run-id", default=None, help="CodeCarbon: keep one run_id")
    i.add_argument("--start", default=None, help="dcgmi without time prefixes: first sample's time")
    i.add_argument("--delay-ms", type=float, default=None, help="dcgmi: dmon's -d (ms)")
    i.add_argument("--model", default=None, help="model of every window (else a 'model' column)")
    i.add_argument("--platform", default=None, help="platform of every window (else a column)")
    i.add_argument("--batch-size", type=int, default=None, help="batch size of every window")
    i.add_argument(
        "--architecture",
        default=None,
        help="resources/models/<name>.json of the model (for MFU/MBU in the workflow)",
    )
    i.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"])
    i.add_argument("--device-name", default=None,
                   help="the device's name as the driver gives it (nvidia-smi -L), where the log "
                   "has no name column; checked against the platform's row")  # fmt: skip
    i.add_argument(
        "--idle",
        nargs=2,
        metavar=("START", "END"),
        default=None,
        help="a span of the log when the device ran nothing: idle power; times as in the "
        "timing file (epoch seconds, ISO-8601, or local time in --tz)",
    )
    i.add_argument("--out", type=Path, default=Path(study_root(DEFAULT_STUDY)) / "cells",
                   help="cells go here: a study's cell tree, results/<study>/cells (default: "
                   "the default study's)")  # fmt: skip
    i.add_argument("--force", action="store_true", help="replace cells that already exist")
    _carbon_args(i)
    i.add_argument("--json", action="store_true", help="one JSON object on stdout")

    d = sub.add_parser(
        "doctor", help="what this machine can measure, and whether the study can run here",
        description="Lists the GPUs NVML sees, the CPU, the power sources available, which "
        "platform rows of resources/platforms.csv match this hardware and why, and whether "
        "each platform of the configured study can be measured here, as its cells would judge it "
        "(the row with the config's platforms.<name>.spec resolved against this device; a CPU "
        "platform's logical_cpus among the CPUs this process may use), or why not. Exits 1 when "
        "one cannot.",
        epilog=EXAMPLES["doctor"], formatter_class=fmt,
    )  # fmt: skip
    d.add_argument(
        "--configfile",
        type=Path,
        default=None,
        help="the study's config (default: config/config.yaml of the checkout)",
    )
    d.add_argument("--json", action="store_true", help="one JSON object on stdout")
    return p


def _carbon_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--intensity",
        type=float,
        default=None,
        help="grid carbon intensity, gCO2eq/kWh (default 413, the study's)",
    )
    g.add_argument("--trace", type=Path, default=None, help="an Electricity Maps CSV (hourly)")
    p.add_argument(
        "--basis",
        default="direct",
        choices=["direct", "lifecycle"],
        help="trace column: direct or life-cycle intensity",
    )
    p.add_argument(
        "--fill",
        default=None,
        choices=["previous", "nearest"],
        help="fill hours the trace lacks (default: refuse)",
    )
    p.add_argument(
        "--max-fill-s",
        type=_fill_limit,
        default=DEFAULT_MAX_FILL_S,
        metavar="S",
        help="with --fill: how far (s) a filled instant may lie from the trace's rows "
        f"(default {DEFAULT_MAX_FILL_S:g}; 'none': no limit)",
    )
    p.add_argument("--pue", type=float, default=1.0, help="power usage effectiveness (>= 1)")


def _fill_limit(text: str) -> float | None:
    """--max-fill-s: seconds >= 0, or 'none' for no limit."""
    if text.strip().lower() in ("none", "null"):
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"{text!r}: give seconds >= 0, or 'none' for no limit")
    return value


def _version() -> str:
    import tokencarbon

    return tokencarbon.__version__


def _num(x: float | None, unit: str, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:.{digits}g} {unit}"


# --- run ---------------------------------------------------------------------------------------


def checkout_dir(given: Path | None = None) -> Path:
    """The workflow checkout: `given`, else the current folder if it holds a Snakefile, else the
    checkout the package was installed from (an editable install). TokencarbonError otherwise."""
    candidates = [given] if given is not None else [Path.cwd()]
    if given is None:
        import tokencarbon

        candidates.append(Path(tokencarbon.__file__).resolve().parents[2])
    for c in candidates:
        if (c / "Snakefile").is_file() and (c / "workflow" / "rules").is_dir():
            return c.resolve()
    raise TokencarbonError(
        f"no tokencarbon checkout (a Snakefile beside workflow/rules/) at "
        f"{', '.join(str(c) for c in candidates)}; cd into the clone or pass --directory"
    )


_NO_RESULT = {"-n", "--dry-run", "--dryrun", "--lint", "--list-rules", "-l", "--summary",
              "--detailed-summary", "--dag", "--rulegraph", "--filegraph", "--unlock",
              "--report", "--help", "-h", "--version", "--cleanup-metadata", "--touch", "-t"}  # fmt: skip


def _configfile_args(args: list[str]) -> list[str]:
    """The files given to Snakemake with --configfile / --configfiles (several may follow one)."""
    files, taking = [], False
    for x in args:
        if x in ("--configfile", "--configfiles"):
            taking = True
        elif x.startswith(("--configfile=", "--configfiles=")):
            files.append(x.split("=", 1)[1])
            taking = False
        elif taking and not x.startswith("-"):
            files.append(x)
        else:
            taking = False
    return files


def _config_args(args: list[str]) -> list[str]:
    """The key=value entries given to Snakemake with --config (several may follow one)."""
    values, taking = [], False
    for x in args:
        if x == "--config":
            taking = True
        elif x.startswith("--config="):
            values.append(x.split("=", 1)[1])
            taking = False
        elif taking and not x.startswith("-"):
            values.append(x)
        else:
            taking = False
    return values


def study_folder(root: Path, args: list[str]) -> Path:
    """The folder of the study Snakemake `args` run in checkout root: root/results/<study>
    (tokencarbon.layout), `study` that of the --configfile(s) (the last that names one; none:
    config/config.yaml), a --config study=... on top. Raises ConfigError for a name that is no
    study name."""
    import yaml

    study = None
    for f in _configfile_args(args) or ["config/config.yaml"]:
        path = root / f if not Path(f).is_absolute() else Path(f)
        data = yaml.safe_load(path.read_text()) if path.is_file() else None
        if isinstance(data, dict) and "study" in data:
            study = data["study"]
    for entry in _config_args(args):
        if entry.startswith("study="):
            study = entry.split("=", 1)[1]
    return root / study_root(study_name({} if study is None else {"study": study}))


def cmd_run(a: argparse.Namespace) -> int:
    root = checkout_dir(a.directory)
    args = [x for x in a.snakemake_args if x != "--"]
    has_cores = any(
        x in ("-c", "--cores", "-j", "--jobs") or re.match(r"^(-c|-j)\d+$|^--(cores|jobs)=", x)
        for x in args
    )
    # Snakemake reads a --configfile before any workflow code runs, and a YAML value it cannot
    # construct (an unquoted impossible date, 2023-02-30) ends in a traceback naming no line:
    # the files are read here first, with tokencarbon's loader, which names file, line and key.
    from tokencarbon.config import check_config_files

    check_config_files([root / f if not Path(f).is_absolute() else Path(f)
                        for f in _configfile_args(args)])  # fmt: skip
    targets = check_snakemake_args(args)
    cmd = [sys.executable, "-m", "snakemake", *([] if has_cores else ["--cores", "1"]), *args]
    print(f"tokencarbon run: {shlex.join(cmd[2:])}  (in {root})", file=sys.stderr, flush=True)
    started = time.time()
    code = subprocess.run(cmd, cwd=root).returncode
    if code != 0 or any(x in _NO_RESULT for x in args):
        return code
    folder = study_folder(root, args)
    summary = folder / "summary.md"
    # The DAG's own report (rule build_report: results/<study>/report.html, interactive) and
    # Snakemake's (`snakemake --report`: every figure with its caption) are two files: writing
    # Snakemake's to report.html would replace the DAG's.
    interactive = folder / "report.html"
    report = folder / "snakemake-report.html"
    if a.no_report:
        why_no_report = "--no-report"
    elif targets:
        # The report shows the whole study; after a run of some targets it would stop on the
        # study's files that do not exist.
        why_no_report = (
            f"this run built targets ({' '.join(targets)}), and the report shows the whole study "
            "(`tokencarbon run` without targets builds both)"
        )
    else:
        why_no_report = None
        config_args, taking = [], False  # the report must see the same study
        for x in args:
            if x in ("--configfile", "--configfiles", "--config"):
                config_args.append(x)
                taking = True
            elif x.startswith(("--configfile=", "--configfiles=", "--config=")):
                config_args.append(x)
                taking = False
            elif taking and not x.startswith("-"):
                config_args.append(x)
            else:
                taking = False
        rep = subprocess.run(
            [sys.executable, "-m", "snakemake", "--report", str(report), *config_args], cwd=root
        )
        if rep.returncode != 0:
            why_no_report = (
                f"`snakemake --report` failed (exit {rep.returncode}; its error is above)"
            )
    print(closing_note(summary, report, started, root, why_no_report, interactive))
    return 0


def closing_note(
    summary: Path,
    report: Path,
    started: float,
    root: Path,
    why_no_report: str | None = None,
    interactive: Path | None = None,
) -> str:
    """What `tokencarbon run` prints last: where the summary (headlines) and the report (every
    figure and table) are, paths relative to the current folder where they lie under it. A file
    this run did not write (older than `started`, epoch s) is said to be from an earlier run, with
    its time; a missing one is said to be missing; why_no_report says why the report was not
    built (--no-report, targets, its failure); interactive: the study's report.html (rule
    build_report), listed too where given."""

    def where(path: Path, what: str, why_not: str | None = None) -> str:
        try:
            shown = path.resolve().relative_to(Path.cwd().resolve())
        except ValueError:
            shown = path
        written = path.exists() and path.stat().st_mtime >= started
        when = (
            time.strftime("%Y-%m-%d %H:%M", time.localtime(path.stat().st_mtime))
            if path.exists() else None
        )  # fmt: skip
        if why_not is not None:
            old = f"; the file there is from an earlier run ({when})" if when else ""
            return f"  {shown}  NOT built by this run: {why_not}{old}"
        if not path.exists():
            return f"  {shown}  not built by this run (`tokencarbon run` without targets builds it)"
        if not written:
            return f"  {shown}  {what}; NOT rebuilt by this run (written {when})"
        return f"  {shown}  {what}"

    return "\n".join([
        "",
        f"tokencarbon run: done (in {root}). The results:",
        where(summary, "the headlines: tables of energy, carbon and latency per token "
                       "(also summary.html)"),
        *([where(interactive, "the study's report: headlines beside the paper's, charts to "
                              "explore, every cell (open it in a browser)")]
          if interactive is not None else []),
        where(report, "Snakemake's report: every figure and table with its caption and "
                      "provenance (open it in a browser)", why_no_report),
    ])  # fmt: skip


class _RefusedBySnakemake(Exception):
    pass


def check_snakemake_args(args: list[str]) -> list[str] | None:
    """The targets among Snakemake arguments `args` (positional arguments, [] for none), parsed
    with Snakemake's own parser (snakemake.cli.get_argument_parser); what that parser would refuse
    with its 100-line usage text is refused here instead: TokencarbonError naming the argument,
    the option it was likely meant to be, and where Snakemake's options are listed. None for
    arguments that print and exit (--help, --version), left to Snakemake."""
    if any(x in ("-h", "--help", "-v", "--version") for x in args):
        return None
    import difflib

    from snakemake.cli import get_argument_parser
    from snakemake.exceptions import CliException

    parser = get_argument_parser()

    def refuse(message: str):
        raise _RefusedBySnakemake(message)

    parser.error = refuse
    try:
        parsed = parser.parse_args(args)
    except (_RefusedBySnakemake, CliException) as exc:  # CliException: a value Snakemake parses
        message = str(exc).strip().rstrip(".")
    except SystemExit:  # an action that prints and exits: Snakemake will do the same
        return None
    else:
        return list(parsed.targets or [])
    options = [o for action in parser._actions for o in action.option_strings]
    unknown = re.match(r"unrecognized arguments: (.*)", message)
    if unknown:
        bad = [x for x in unknown.group(1).split() if x.startswith("-")]
        hints = []
        for x in bad:
            close = difflib.get_close_matches(x.split("=", 1)[0], options, n=1)
            hints.append(f"{x} (did you mean {close[0]}?)" if close else x)
        message = f"Snakemake has no option {', '.join(hints) or unknown.group(1)}"
    raise TokencarbonError(
        f"{message}. Nothing was run. `snakemake --help` lists Snakemake's options (every one "
        "is passed through), `tokencarbon run --help` this command's own"
    )


# --- measure -----------------------------------------------------------------------------------


def _intensity_kwargs(a: argparse.Namespace) -> dict:
    return {"intensity_g_per_kwh": a.intensity, "trace": a.trace, "basis": a.basis,
            "fill": a.fill, "pue": a.pue, "max_fill_s": a.max_fill_s}  # fmt: skip


def _trace_problem(intensity, spans, a: argparse.Namespace) -> str | None:
    """Why the trace cannot give these spans [(label, start_ns, end_ns), ...] an intensity under
    --fill and --max-fill-s, naming those flags; None when it can (or the intensity is constant)."""
    from tokencarbon.carbon import CLI_NAMES, first_uncovered

    found = first_uncovered(intensity, spans, a.fill, a.max_fill_s)
    return None if found is None else f"{found[0]}: {found[1].message(CLI_NAMES)}"


def _check_trace_now(a: argparse.Namespace) -> None:
    """--trace: refuse before the command runs where the trace cannot cover its start (the
    present instant); a trace that ends while the command runs is said after it, with the
    energy."""
    if a.trace is None:
        return
    from tokencarbon.carbon import load_trace

    now = time.time_ns()
    problem = _trace_problem(load_trace(a.trace, a.basis), [("now", now, now + 1)], a)
    if problem:
        raise TokencarbonError(
            f"--trace {a.trace} cannot give the command's time an intensity, so nothing was run: "
            f"{problem}"
        )


def _describe(meas, extra: list[str]) -> str:
    lines = [
        f"device          {meas.device}",
        f"window          {meas.time_s:.3f} s, {meas.n_samples} power samples",
        f"energy          {_num(meas.energy_j, 'J')} ({meas.energy_method})"
        + ("  MODELED, an estimate" if meas.modeled else ""),
        f"  counter       {_num(meas.energy_counter_j, 'J')}",
        f"  integral      {_num(meas.energy_integrated_j, 'J')}",
        (
            f"carbon          {_num(meas.carbon_g, 'gCO2eq')} at {meas.intensity_g_per_kwh:.4g} "
            f"gCO2eq/kWh x PUE {meas.pue:g} (operational)"
            if meas.carbon_missing is None
            else f"carbon          n/a: {meas.carbon_missing}"
        ),
    ]
    if meas.tokens:
        lines.append(
            f"per token       {_num(meas.j_per_token, 'J/token')}, "
            f"{_num(meas.g_per_token, 'gCO2eq/token')} ({meas.tokens} tokens)"
        )
    lines.append(f"qa flags        {', '.join(meas.qa_flags) or 'none'}")
    return "\n".join(extra + lines)


def cmd_measure(a: argparse.Namespace) -> int:
    from tokencarbon.monitor import Monitor

    cmd = a.cmd[1:] if a.cmd[:1] == ["--"] else a.cmd
    if not cmd:
        raise TokencarbonError("no command to measure: tokencarbon measure [options] -- CMD ...")
    if a.tokens is not None and a.tokens <= 0:
        raise TokencarbonError(f"--tokens {a.tokens}: a count of generated tokens must be > 0")
    low, high = MEASURE_INTERVAL_S
    if a.interval_s is not None and not low <= a.interval_s <= high:
        raise TokencarbonError(
            f"--interval-s {a.interval_s:g}: give {low:g} to {high:g} s (below {low:g} s the "
            "readings repeat: CPU times tick at 10 ms and NVML refreshes no faster; above "
            f"{high:g} s a command gets only a few samples and the window's end waits for one)"
        )
    if a.pue < 1.0 or not math.isfinite(a.pue):
        raise TokencarbonError(f"--pue {a.pue:g}: must be >= 1 (facility energy / IT energy)")
    _check_trace_now(a)
    monitor = Monitor(tdp_w=a.tdp_w, interval_s=a.interval_s, **_intensity_kwargs(a))
    try:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        monitor.begin_window("command")
        try:
            code = subprocess.run(cmd).returncode
        except OSError as exc:
            raise TokencarbonError(f"cannot run {shlex.join(cmd)}: {exc}") from exc
        # The energy is kept even where the trace cannot give its carbon (it ended while the
        # command ran): a finished measurement is never dropped.
        meas = monitor.end_window("command", tokens=a.tokens, keep_energy=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    finally:
        monitor.close()
    if meas.carbon_missing is not None:
        import dataclasses

        why = _trace_problem(
            monitor.intensity, [("the command's window", meas.start_wall_ns, meas.end_wall_ns)], a
        )
        meas = dataclasses.replace(meas, carbon_missing=why or meas.carbon_missing)
    # CPU seconds the kernel charged to the command's process tree (waited children only): an
    # account independent of the sidecar's sampled utilisation.
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if a.json:
        out = {"command": cmd, "exit_code": code, "command_cpu_s": cpu_s,
               "interval_s": monitor.interval_s, **meas.to_dict()}  # fmt: skip
        print(json.dumps(out, indent=2))
    else:
        print(_describe(meas, [f"command         {shlex.join(cmd)} (exit {code})"]))
    if meas.carbon_missing is not None:
        print(
            f"tokencarbon measure: the energy above is measured; its carbon is missing: "
            f"{meas.carbon_missing}",
            file=sys.stderr,
        )
        return code or 2  # the command's own failure first; else what was asked is incomplete
    return code


# --- import ------------------------------------------------------------------------------------


def cmd_import(a: argparse.Namespace) -> int:
    from tokencarbon.carbon import ConstantIntensity, DEFAULT_INTENSITY_G_PER_KWH, load_trace
    from tokencarbon.importing import (
        cell_measurement,
        import_cells,
        load_power_log,
        read_timing,
    )

    # The timing file's own parser: --idle takes every form a timing file's start and end take
    # (epoch seconds, ISO-8601 with or without an offset, nvidia-smi's local time).
    from tokencarbon.importing import _times as timing_times

    import pandas as pd

    log = load_power_log(
        a.power, a.format, tz=a.tz, gpu=a.gpu, power_draw=a.power_draw, component=a.component,
        all_gpus=a.all_gpus, run_id=a.run_id, start=a.start, delay_ms=a.delay_ms,
    )  # fmt: skip
    timing = read_timing(
        a.timing, a.tz, model=a.model, platform=a.platform, batch_size=a.batch_size
    )
    idle = None
    if a.idle:
        t = timing_times(pd.Series(a.idle), a.tz, "--idle")
        idle = (int(t[0]), int(t[1]))
    intensity = (
        load_trace(a.trace, a.basis) if a.trace
        else ConstantIntensity(DEFAULT_INTENSITY_G_PER_KWH if a.intensity is None else a.intensity)
    )  # fmt: skip
    # The windows' times are known: a trace that cannot give them an intensity is refused before
    # any cell is written.
    spans = [
        (f"{a.timing} row {w.row}", w.start_wall_ns, w.end_wall_ns) for w in timing.itertuples()
    ]
    problem = _trace_problem(intensity, spans, a)
    if problem:
        raise TokencarbonError(f"--trace {a.trace}: nothing was written: {problem}")
    cells = import_cells(
        log, timing, a.out, timing_path=a.timing, tz=a.tz, architecture=a.architecture,
        dtype=a.dtype, idle=idle, device_name=a.device_name, force=a.force,
    )  # fmt: skip
    results = []
    for c in cells:
        meas = cell_measurement(log, c.windows, intensity=intensity, pue=a.pue, fill=a.fill,
                                max_fill_s=a.max_fill_s)  # fmt: skip
        results.append((c, meas))
    if a.json:
        print(json.dumps({
            "power_log": str(a.power), "power_field": log.power_field,
            "power_kind": log.power_kind, "device": log.device, "notes": list(log.notes),
            "cells": [{"directory": str(c.directory), "n_windows": len(c.windows), **m.to_dict()}
                      for c, m in results],
        }, indent=2))  # fmt: skip
        return 0
    print(
        f"power log       {a.power}: {log.source}, {len(log.samples)} samples, energy from "
        f"{log.power_field} ({log.power_kind}"
        + (", the driver's 1 s average" if log.power_kind == "average" else "")
        + ")"
        + (f", device {log.device}" if log.device else "")
    )
    for note in log.notes:
        print(f"note            {note}")
    from tokencarbon.importing import UNKNOWN_DEVICE

    if (timing["input_tokens"] < 0).any():
        print(
            "note            the timing file gives no input_tokens: the workflow's FLOPs, MFU and "
            "MBU of these cells are NaN (flagged input_tokens_unknown)"
        )
    if (timing["first_token_wall_ns"] < 0).any():
        print(
            "note            the timing file gives no first_token: the workflow's TTFT and TPOT of "
            "these cells are NaN (flagged first_token_unknown)"
        )
    meta0 = json.loads((cells[0].directory / "meta.json").read_text()) if cells else {}
    if meta0.get("device_name") == UNKNOWN_DEVICE:
        print(
            "note            the log names no device: give --device-name for the workflow's "
            "metrics to check the cells against their platform row"
        )
    for c, meas in results:
        print(f"\ncell            {c.directory} ({len(c.windows)} windows)")
        print(_describe(meas, []))
    return 0


# --- doctor ------------------------------------------------------------------------------------


def gpus() -> tuple[list[dict], str | None]:
    """Every GPU NVML sees (all of the host's, whatever CUDA_VISIBLE_DEVICES says), or why none."""
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return [], f"NVML unavailable ({exc}): no NVIDIA driver here"
    try:
        out = []
        for k in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(k)
            out.append({
                "index": k, "name": pynvml.nvmlDeviceGetName(h),
                "uuid": pynvml.nvmlDeviceGetUUID(h),
                "pci_bus_id": pynvml.nvmlDeviceGetPciInfo(h).busId,
                "memory_total_bytes": pynvml.nvmlDeviceGetMemoryInfo(h).total,
                "power_limit_w": pynvml.nvmlDeviceGetEnforcedPowerLimit(h) / 1000,
            })  # fmt: skip
        return out, None if out else "NVML runs but sees no GPU"
    finally:
        pynvml.nvmlShutdown()


def _verdict(name: str, spec: dict, row, found: list[dict], why_no_gpu: str | None, cpu: str):
    """{"can_run", "why"} for a configured platform measured here: the check a cell makes before it
    runs. The row resolved as the DAG build and each cell resolve it (platforms.resolve_platform,
    with config's platforms.<name>.spec overrides and memory_limit_gb) against a visible GPU or this
    CPU; a CPU platform also needs its logical_cpus among the CPUs this process may use (the lease
    pins a cell to that many: lease.lease_cpus)."""
    from tokencarbon.errors import ConfigError, HardwareMismatchError
    from tokencarbon.platforms import resolve_platform

    overrides = {k: v for k, v in (spec.get("spec") or {}).items() if v is not None}
    limit = spec.get("memory_limit_gb")
    if row.kind == "gpu":
        if not found:
            return {
                "can_run": False,
                "why": f"needs a GPU matching {row.device_name_pattern!r}; {why_no_gpu}",
            }
        errors = []
        for g in found:
            try:
                resolve_platform(
                    name, g["name"], overrides, memory_limit_gb=limit, row=row.platform
                )
                return {
                    "can_run": True,
                    "why": f"GPU {g['index']} {g['name']!r} matches {row.device_name_pattern!r}",
                }
            except (HardwareMismatchError, ConfigError) as exc:
                errors.append(str(exc))
        return {
            "can_run": False,
            "why": f"needs a GPU matching {row.device_name_pattern!r}; this machine has "
            f"{[g['name'] for g in found]}: {errors[0]}",
        }
    try:
        p = resolve_platform(name, cpu, overrides, memory_limit_gb=limit, row=row.platform)
    except (HardwareMismatchError, ConfigError) as exc:
        return {"can_run": False, "why": str(exc)}
    allowed = sorted(os.sched_getaffinity(0))
    need = p.logical_cpus or 1
    if len(allowed) < need:
        return {
            "can_run": False,
            "why": f"CPU {cpu!r}: the platform needs {need} logical CPUs (logical_cpus of "
            f"resources/platforms.csv, or config platforms.{name}.spec.logical_cpus) and a cell "
            f"pins that many, but this process may use only {len(allowed)}: {allowed} "
            "(taskset, a cgroup cpuset or the batch system's allocation); run where "
            f"{need} are allowed, or describe this slice in platforms.{name}.spec",
        }
    return {
        "can_run": True,
        "why": f"CPU {cpu!r}, {len(allowed)} logical CPUs available, the platform needs {need} "
        f"({p.spec_source}); power is modeled",
    }


def diagnose(configfile: Path | None = None) -> dict:
    """What `tokencarbon doctor` reports, as a dict (see its --help)."""
    import yaml

    from tokencarbon.hardware import cpu_model_name
    from tokencarbon.platforms import load_platforms, rows_matching

    found, why_no_gpu = gpus()
    cpu = cpu_model_name()
    n_cpus = len(os.sched_getaffinity(0))
    from tokencarbon.power import zeusdev
    from tokencarbon.power.rapl import rapl_state as read_rapl_state

    rapl_state = read_rapl_state()
    sources = (["nvml (GPU energy counter and power readings)"] if found else []) + (
        ["rapl (CPU package and DRAM energy counters of the whole machine)"]
        if rapl_state.startswith("readable") else []
    )  # fmt: skip
    if zeusdev.amd_gpu_present() or zeusdev.apple_silicon_here():
        what = "AMD GPU" if zeusdev.amd_gpu_present() else "Apple silicon"
        sources.append(
            f"zeus_{'gpu' if what == 'AMD GPU' else 'soc'} ({what} through Zeus's device layer)"
            if zeusdev.zeus_installed()
            else f"none for the {what} here: install Zeus's device layer (pip install --no-deps "
            "zeus httpx httpcore) to read it"
        )
    sources.append(
        "modeled_cpu (an estimate: TDP x CPU utilisation of the measured process tree; what "
        "`tokencarbon measure` uses only where nothing above can be read)"
    )
    platforms = load_platforms()
    matches = []
    for name, p in platforms.items():
        if p.kind == "gpu":
            hits = [g for g in found if name in rows_matching(g["name"], platforms)]
            for g in hits:
                matches.append({"platform": name, "why": f"pattern {p.device_name_pattern!r} "
                                f"matches GPU {g['index']} {g['name']!r}"})  # fmt: skip
        elif name in rows_matching(cpu, platforms):
            vendor = next((v for v in ("AMD", "Intel", "Arm", "Apple") if v in cpu), None)
            described = next((v for v in ("AMD", "Intel", "Arm", "Apple") if v in p.source), None)
            other = (
                f"; NOTE: the row's numbers describe an {described} CPU, this one is {vendor}: its "
                "TDP, peaks and bandwidth are not this CPU's"
                if vendor and described and vendor != described
                else ""
            )
            matches.append({
                "platform": name,
                "why": f"pattern {p.device_name_pattern!r} matches CPU {cpu!r}; the row describes "
                f"{p.logical_cpus} logical CPUs at {p.tdp_w:g} W TDP ({p.source.split(':')[0]}), "
                f"this process may use {n_cpus}{other}",
            })  # fmt: skip
    root = None
    try:
        root = checkout_dir()
    except TokencarbonError:
        pass
    path = configfile or (root / "config" / "config.yaml" if root else None)
    study: dict = {"config": str(path) if path else None, "platforms": [], "can_run": None}
    if path is not None:
        try:
            config = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            study["error"] = f"{path}: cannot be read ({exc})"
            config = {}
        from tokencarbon.config import platform_row

        verdicts = []
        for name, spec in (config.get("platforms") or {}).items():
            spec = spec or {}
            row = platform_row(config, name)
            p = platforms.get(row)
            if p is None:
                what = f"unknown row {row!r} in hardware" if row != name else "unknown platform"
                v = {
                    "platform": name,
                    "can_run": False,
                    "why": f"{what}; rows of resources/platforms.csv: {', '.join(platforms)}",
                }
            elif spec.get("import_only") or spec.get("imported"):
                v = {
                    "platform": name,
                    "can_run": True,
                    "why": "measured elsewhere (import_only / imported): nothing runs here",
                }
            else:
                v = {"platform": name, **_verdict(name, spec, p, found, why_no_gpu, cpu)}
            verdicts.append(v)  # fmt: skip
        study["platforms"] = verdicts
        study["can_run"] = bool(verdicts) and all(v["can_run"] for v in verdicts)
        if (config.get("backend") or {}).get("name") == "openai_server":
            study["server"] = server_checks(config, root)
            study["can_run"] = study["can_run"] and all(c["ok"] for c in study["server"])
        if root is not None and "error" not in study:
            study["plan"] = _plan(path, root)
    return {
        "gpus": found,
        "gpu_note": why_no_gpu,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "cpu": {
            "model": cpu,
            "logical_cpus_available": n_cpus,
            "logical_cpus_host": os.cpu_count(),
        },
        "rapl": rapl_state,
        "power_sources": sources,
        "platform_matches": matches,
        "study": study,
    }


def server_checks(config: dict, root: Path | None) -> list[dict]:
    """backend.name openai_server: openai_server.doctor's checks as [{"name", "ok", "detail"}]
    (settings, API key variable, endpoint, model, prompt form and length control, energy, GPUs,
    server processes), for the first platform measured here (its kind: cpu or gpu), or with the
    first imported platform's power log where none is measured. The probe's text is decoded by
    the first model family's tokenizer where it is a folder or hub id (the builtin one is made by
    the workflow, so the server's own "Hello" goes instead). Never raises for what it checks."""
    from tokencarbon.backends.openai_server import doctor

    platforms = config.get("platforms") or {}
    measured = [n for n, p in platforms.items()
                if not (p or {}).get("import_only") and not (p or {}).get("imported")]  # fmt: skip
    kind, log = "gpu", None
    if measured:
        from tokencarbon.config import platform_row
        from tokencarbon.platforms import load_platforms

        row = load_platforms().get(platform_row(config, measured[0]))
        kind = row.kind if row is not None else "gpu"
    else:
        imported = [p["imported"] for p in platforms.values() if (p or {}).get("imported")]
        log = imported[0].get("power_log") if imported else None
    tokenizers = [f.get("tokenizer") for f in (config.get("families") or {}).values() if f]
    tokenizer = tokenizers[0] if tokenizers and tokenizers[0] not in (None, "builtin") else None
    checks = doctor((config.get("backend") or {}).get("openai_server"), platform_kind=kind,
                    imported_power_log=log, tokenizer=tokenizer)  # fmt: skip
    return [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in checks]


def _plan(configfile: Path, root: Path) -> dict:
    """The study's cells as the DAG plans them (tokencarbon.plan), or why they cannot be planned."""
    from tokencarbon.plan import Plan

    try:
        return Plan.from_configfile(configfile, root).describe()
    except TokencarbonError as exc:
        return {"error": str(exc)}


def cmd_doctor(a: argparse.Namespace) -> int:
    report = diagnose(a.configfile)
    study = report["study"]
    if a.json:
        print(json.dumps(report, indent=2))
    else:
        print("GPUs (NVML)")
        for g in report["gpus"]:
            print(f"  {g['index']}: {g['name']} {g['uuid']} {g['pci_bus_id']}, "
                  f"{g['memory_total_bytes'] / 1e9:.1f} GB, limit {g['power_limit_w']:.0f} W")  # fmt: skip
        if report["gpu_note"]:
            print(f"  none: {report['gpu_note']}")
        if report["cuda_visible_devices"] is not None:
            print(f"  CUDA_VISIBLE_DEVICES={report['cuda_visible_devices']!r}")
        c = report["cpu"]
        print(f"CPU\n  {c['model']}, {c['logical_cpus_available']} of {c['logical_cpus_host']} "
              f"logical CPUs available; RAPL energy counter: {report['rapl']}")  # fmt: skip
        print("power sources")
        for s in report["power_sources"]:
            print(f"  {s}")
        print("platform rows matching this machine (resources/platforms.csv)")
        for m in report["platform_matches"] or [{"platform": "none", "why": ""}]:
            print(f"  {m['platform']}: {m['why']}")
        print(f"configured study ({study['config']})")
        if "error" in study:
            print(f"  {study['error']}")
        for v in study["platforms"]:
            print(f"  {v['platform']}: {'can run here' if v['can_run'] else 'CANNOT run here'}"
                  f" ({v['why']})")  # fmt: skip
        if "server" in study:
            print("server (backend.openai_server)")
            for c in study["server"]:
                print(f"  {c['name']}: {'ok' if c['ok'] else 'FAILED'}: {c['detail']}")
        plan = study.get("plan", {})
        if "error" in plan:
            print(f"  plan: {plan['error']}")
        elif plan:
            print(f"  cells planned: {len(plan['cells'])} ({', '.join(plan['cells']) or 'none yet'})"
                  + (f"; waiting for a probe: {', '.join(plan['pending'])}" if plan["pending"] else ""))  # fmt: skip
    return 0 if study["can_run"] in (True, None) else 1


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "run":
        args.snakemake_args = extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    handlers = {"run": cmd_run, "measure": cmd_measure, "import": cmd_import, "doctor": cmd_doctor}
    try:
        return handlers[args.command](args)
    except TokencarbonError as exc:
        print(f"tokencarbon {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""A study's grid run in chunks that resume on another machine (issue 23): plan the cells not yet
measured from Snakemake's own DAG, estimate their device time, run them in a stated priority
order until a time budget is spent, stop cleanly on SIGINT/SIGTERM, and
pack every finished cell for commit, so that a later run on a fresh clone restores them and
measures only what is missing. benchmarks/run_chunks.py is the command; docs/chunks.md the guide.

**Order of a run.**
1. Restore: the pack's cells, probes and job logs (`benchmarks/results/paper-<gpu>/`, each file
   checked against the manifest's SHA-256) are copied into the study's folder (`results/<study>/
   cells/` and `results/<study>/logs/`, tokencarbon.layout; `study` the config's); a file
   already there must be byte-identical, else the run stops naming it.
2. Chunk 0, setup and probes: `snakemake -n all --until probe_max_batch` lists the jobs the OOM
   probes need (dataset, tokenizer, workload, engines) and the probes; the ones whose output is
   missing run in one Snakemake call. A probe already there (restored or measured before) is
   never rerun: it decides the grid its cells were measured on. Snakemake would rerun it once
   its inputs are newer (a fresh clone rebuilds the workload and engines; any code edit), so it
   is marked up to date with Snakemake's own `--touch` (which pretends a job ran, changing no
   byte), unless its params changed (the config is not the one it was probed with: refused).
3. Plan (`grid_jobs`, the one function that enumerates cells): `snakemake -n all --forcerun
   run_cell run_continuous_cell` lists every cell job of the grid, the probes' checkpoint
   answering the sweeps; a cell whose `meta.json` exists (written last by the cell) is done.
4. Estimate every planned cell (below) and print the plan before any cell job starts.
5. Run: a Snakemake call per cell, its targets the job's own outputs as the dry run listed
   them; cells expected to take at most GROUP_CELL_S share one call with the cells after them
   (Options.cells_per_call, --cores 1, --keep-going), which pays Snakemake's start once. A cell
   is run only if its estimate (scaled by this run's measured/estimated ratio so far) fits what
   is left of the budget; one that does not is left for the next chunk and smaller ones after
   it may still run. Every cell job's deadline is the budget's end (tokencarbon.parts: a job
   starts a repeat only while it would end by then, else keeps the repeats it finished), so a
   cell longer than the budget whose one repeat fits is started and measured in parts over the
   chunks of one machine. Each finished cell is packed as soon as Snakemake reports its job
   finished (its process ended: nothing of it changes after), into
   the run's copy of the pack under results/chunks/ (git ignores it: while the pack grows, the
   checkout stays clean and each cell's meta.json records its commit without '+dirty'); it is
   copied over the committed pack for commit (--update-pack, or by hand).

**Priority** (`priority_key`): unquantized models before quantized ones (the WQ4bit cells last);
then static batch 1 and each model's largest static batch (the study's headline pair, with the
config's `run.repeats`), then the other static cells, then continuous cells (max_num_seqs 1 and
the largest first, then the rest); within a tier, platforms and models in the config's order,
smaller n first.

**Why restored cells are never re-measured.** Snakemake reruns a job whose inputs are newer than
its outputs, whatever `--rerun-triggers` says (9.27: the mtime test always runs, only a recorded
equal checksum overrides it): on a fresh clone the workload and engines are rebuilt after the
cells were copied in, and a code edit makes the package newer still. Three ways out were weighed:
- `platforms.<p>.import_only: true` takes every cell of the platform off the DAG: restored cells
  are safe, but the missing cells of the same platform cannot be measured in the same run;
- `--rerun-triggers mtime` with restored (or refreshed) modification times: the mtime test is not
  a trigger one can turn off, and the times must be rewritten after every setup job and edit;
- `--touch` on the restored cells: marks them up to date until the next code edit, then they
  would be rerun by the first `snakemake all`.
Chosen: a restored or finished cell is never a target. Every measuring call names exactly one
missing cell's outputs, so Snakemake's DAG of that call holds the cell and its inputs and nothing
of the cells around it; the grid is only *listed* (dry run, forced), never run as a whole. The
probes, which the plan must read through the checkpoint, are the one place `--touch` is used.
Tables over restored cells are built with the platform `import_only` (benchmarks/gpu_study.sh),
where nothing can rerun; `CELLS.git_commit` (from each meta.json) says which commit measured each
cell, and the manifest repeats it with the device and the seconds each cell took.

**Estimates** (`estimate_cell`): measured seconds + the cell's fixed cost + its idle window.
- Measured seconds from the workload each cell serves (`results/<study>/workload/<model>.parquet`)
  and two per-device rates fitted over the committed static cells of that device
  (`benchmarks/results/**/cells/*/*/bs*/`, torch backend): a decode step costs
  t0 + L x tL + decode_step_bytes / BW (the weights as stored and each row's KV cache read: a
  memory roofline with a fixed cost per step and one per layer, fitted on relative error; the
  layer term where the cells span at least two depths, else 0), a prefill p0 + FLOPs / F. The
  layer term is what small models pay: the first H100 paper cells at batch 1 took 0.62, 2.05 and
  3.23 ms per step for GPT-2 (12 layers), Large (36) and XL (48), ~45 us per layer beyond their
  weights' read; a step-only fixed cost, fitted mostly on Llama cells, put their batch-1 and
  batch-2 windows at 0.57x what they measured. Static cells: per batch of n consecutive
  requests, a prefill of the padded prompts and (longest output - 1) steps at the middle of the
  batch's context. Continuous cells: requests
  admitted first come, first served into n slots, each holding its slot for its output length
  (offline arrivals); the steps that schedule takes, each at its rows' mean context, and every
  prompt's prefill FLOPs. Devices without committed cells use their platforms.csv row's datasheet
  bandwidth and peak with no fixed terms (labelled so).
- Fixed cost per cell: the committed `*-cell-overhead-*.json` records of benchmarks/cell_overhead.py
  (job wall - measured window - idle window, plus Snakemake's own start per call), static and
  continuous separately, of the same device where one exists, else of the same kind (GPU/CPU).
- Idle window: `power.idle_s` (0 for all but the first cell where `power.idle_share_s` > 0).
- Setup and probes: `setup_s` of those records and `process_wall_s` per architecture of the
  committed `*-probe-time.json` (benchmarks/probe_time.py).
Each estimate states its sources. During the run the ETA (tqdm) runs on estimated seconds done
per wall second, so it corrects itself as cells finish.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path
from typing import Any

from tokencarbon.errors import ConfigError, InputError, TokencarbonError
from tokencarbon.records import gpu_uuid

CELL_RULES = ("run_cell", "run_continuous_cell")
PROBE_RULE = "probe_max_batch"
MODE_OF_RULE = {"run_cell": "static", "run_continuous_cell": "continuous"}
MANIFEST = "manifest.json"
MANIFEST_SCHEMA = "tokencarbon.chunks v1"
# Inside a pack: cells and probes under cells/ (a study's results/<study>/cells/ tree, as
# benchmarks/gpu_study.sh copies it), the jobs' Snakemake logs under job-logs/ (the repository's
# .gitignore ignores every folder named logs/).
PACK_CELLS, PACK_LOGS = "cells", "job-logs"


def cells_dir(config: Mapping[str, Any]) -> Path:
    """The study's cell tree, results/<study>/cells (tokencarbon.layout; `study` the config's).
    Raises ConfigError for a `study` that is no study name."""
    from tokencarbon.layout import study_name, study_root

    return Path(study_root(study_name(config))) / "cells"

# What the device machine returns and carries (../shared/device/README.md): the working tree that
# travels is at most 64 MiB, wheels (~30 MiB) and a clean clone of the repository included, so a
# pack holds less than a third of what is left; a pack above this is reported.
PACK_WARN_BYTES = 20 * 2**20
EXIT_INTERRUPTED = 130


class Interrupted(TokencarbonError):
    """A SIGINT or SIGTERM arrived: the run stops after the running call has ended."""


# --------------------------------------------------------------------------------------------
# Snakemake's dry run, parsed


@dataclass(frozen=True)
class Job:
    """One job of a Snakemake dry run: its rule, files, wildcards and why it would run."""

    rule: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    logs: tuple[str, ...]
    wildcards: tuple[tuple[str, str], ...]
    reason: str

    def wildcard(self, name: str) -> str:
        return dict(self.wildcards)[name]


_JOB_HEADER = re.compile(r"^(?:local)?(?:rule|checkpoint) (\w+):$")
_JOB_FIELD = re.compile(r"^    (\w+): (.*)$")


def _split(value: str) -> tuple[str, ...]:
    return tuple(v for v in value.split(", ") if v)


def parse_dry_run(text: str) -> list[Job]:
    """The jobs of `snakemake --dry-run` output (Snakemake 9: a `rule NAME:` or `checkpoint NAME:`
    line, `localrule`/`localcheckpoint` for local jobs, then four-space-indented `key: value`
    fields; comma-separated lists for input, output, log, wildcards). Files and wildcard values
    are taken as Snakemake prints them; a value containing ", " would be split (no rule of this
    workflow makes one). Returns [] for "Nothing to be done"."""
    jobs, current = [], None

    def close():
        if current is not None:
            jobs.append(
                Job(
                    rule=current["rule"],
                    inputs=_split(current.get("input", "")),
                    outputs=_split(current.get("output", "")),
                    logs=_split(current.get("log", "")),
                    wildcards=tuple(
                        tuple(w.split("=", 1)) for w in _split(current.get("wildcards", ""))
                    ),
                    reason=current.get("reason", ""),
                )
            )

    for line in text.splitlines():
        header = _JOB_HEADER.match(line)
        if header:
            close()
            current = {"rule": header.group(1)}
            continue
        if current is None:
            continue
        field_ = _JOB_FIELD.match(line)
        if field_:
            current[field_.group(1)] = field_.group(2)
        elif not line.startswith("    "):
            close()
            current = None
    close()
    return jobs


# --------------------------------------------------------------------------------------------
# Cells


@dataclass(frozen=True)
class Cell:
    """A cell of the grid as its Snakemake job names it. name: its folder under the study's
    results/<study>/cells (`platform/model/bs4`); outputs: the job's output files (what a call
    targets and a pack carries); logs: the job's log files; inputs: the job's inputs (engine
    manifest, workload)."""

    name: str
    platform: str
    model: str
    mode: str  # "static" | "continuous"
    n: int  # batch size or max_num_seqs
    outputs: tuple[str, ...]
    logs: tuple[str, ...]
    inputs: tuple[str, ...]

    @classmethod
    def from_job(cls, job: Job) -> Cell:
        """The cell of a run_cell / run_continuous_cell job. Raises InputError for another rule or
        outputs outside one folder of a cells/ tree (the rules' declared layout)."""
        if job.rule not in MODE_OF_RULE:
            raise InputError(f"job of rule {job.rule!r} is not a cell; cell rules: {CELL_RULES}")
        folders = {Path(o).parent for o in job.outputs}
        if len(folders) != 1:
            raise InputError(f"{job.rule} job's outputs lie in several folders: {job.outputs}")
        folder = folders.pop()
        if len(folder.parts) < 4 or folder.parts[-4] != "cells":
            raise InputError(
                f"{job.rule} job's outputs are outside a cells/<platform>/<model>/<cell> folder: "
                f"{folder}"
            )
        name = Path(*folder.parts[-3:]).as_posix()
        return cls(
            name=name,
            platform=job.wildcard("platform"),
            model=job.wildcard("model"),
            mode=MODE_OF_RULE[job.rule],
            n=int(job.wildcard("batch")),
            outputs=job.outputs,
            logs=job.logs,
            inputs=job.inputs,
        )

    @property
    def folder(self) -> Path:
        return Path(self.meta).parent

    @property
    def meta(self) -> str:
        """The output written last (cell.py writes meta.json after every other file)."""
        return next(o for o in self.outputs if Path(o).name == "meta.json")

    def input_matching(self, pattern: str) -> str | None:
        return next((i for i in self.inputs if re.search(pattern, i)), None)


def is_done(cell: Cell, workdir: Path) -> bool:
    """A cell is done when every output of its job exists, meta.json included (written last)."""
    return all((workdir / o).is_file() for o in cell.outputs)


def priority_key(
    cell: Cell,
    largest: Mapping[tuple[str, str, str], int],
    quantized: Mapping[str, bool],
    order: Mapping[str, int],
) -> tuple:
    """Sort key of the run order (module docstring): quantized models last; then tier 0 static
    batch 1 and each model's largest static batch, 1 the other static cells, 2 continuous 1 and
    the largest, 3 the other continuous cells; then the config's platform and model order
    (`order`: name -> position), then n. largest: (platform, model, mode) -> the grid's largest
    n; quantized: model -> whether its weights are quantized."""
    extreme = cell.n == 1 or cell.n == largest[(cell.platform, cell.model, cell.mode)]
    tier = (0 if cell.mode == "static" else 2) + (0 if extreme else 1)
    return (
        quantized.get(cell.model, False),
        tier,
        order.get(cell.platform, 0),
        order.get(cell.model, 0),
        cell.n,
    )


def order_cells(
    cells: Sequence[Cell], quantized: Mapping[str, bool], order: Mapping[str, int]
) -> list[Cell]:
    """`cells` in run order (priority_key); the largest n per (platform, model, mode) is taken
    over `cells` itself, so pass the whole grid, not only what is left to run."""
    largest: dict[tuple[str, str, str], int] = {}
    for c in cells:
        key = (c.platform, c.model, c.mode)
        largest[key] = max(largest.get(key, 0), c.n)
    return sorted(cells, key=lambda c: priority_key(c, largest, quantized, order))


# --------------------------------------------------------------------------------------------
# Snakemake, called


class StopSignals:
    """While active: SIGINT and SIGTERM set `received` and send SIGINT to the process group of
    the running Snakemake call (Snakemake then cancels its job, whose cell dies without writing
    meta.json, and removes what the job had written of its outputs); a second signal, or
    `grace_s` without the call ending, sends SIGKILL to the group (cells die with their
    supervisor, tokencarbon.lease). Snakemake's own SIGTERM handling would wait for the running
    job to finish, so SIGTERM is turned into SIGINT."""

    def __init__(self, grace_s: float = 120.0):
        self.grace_s = grace_s
        self.received: int | None = None
        self.child: subprocess.Popen | None = None
        self._at: float | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        again = self.received is not None
        self.received = self.received or signum
        self._at = self._at or time.monotonic()
        self._signal_child(signal.SIGKILL if again else signal.SIGINT)

    def _signal_child(self, sig: int) -> None:
        child = self.child
        if child is not None and child.poll() is None:
            try:
                os.killpg(child.pid, sig)
            except ProcessLookupError:
                pass

    def forward(self) -> None:
        """Send SIGINT to the running call's group (for a signal that came before it began)."""
        self._signal_child(signal.SIGINT)

    def check_grace(self) -> None:
        """SIGKILL the running call's group once grace_s has passed since the first signal."""
        if self._at is not None and time.monotonic() - self._at > self.grace_s:
            self._signal_child(signal.SIGKILL)


@dataclass
class CallResult:
    returncode: int
    seconds: float
    log: Path
    interrupted: bool

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace").splitlines() if self.log.is_file() else []
        return "\n".join(text[-lines:])


class Snakemake:
    """Snakemake calls in `workdir` with the study's --configfile / --config and --cores, each in
    its own process group (so a terminal's Ctrl-C reaches this runner alone, which forwards it:
    StopSignals), its output to a log file."""

    def __init__(
        self,
        workdir: Path,
        command: Sequence[str],
        configfile: str | None,
        config: Sequence[str],
        cores: int,
        signals: StopSignals,
        log_dir: Path,
    ):
        self.workdir, self.command, self.cores = workdir, list(command), cores
        self.configfile, self.config = configfile, list(config)
        self.signals, self.log_dir = signals, log_dir

    def args(self, targets: Sequence[str], options: Sequence[str],
             cores: int | None = None) -> list[str]:  # fmt: skip
        """Targets first: --configfile and --config take every word after them. cores: this
        call's --cores (None: the runner's)."""
        tail = ["--configfile", self.configfile] if self.configfile else []
        if self.config:
            tail += ["--config", *self.config]
        cores = self.cores if cores is None else cores
        return [*self.command, *targets, "--cores", str(cores), *options, *tail]

    def call(
        self,
        targets: Sequence[str],
        options: Sequence[str],
        log_name: str,
        on_tick: Callable[[float], None] | None = None,
        env: Mapping[str, str] | None = None,
        cores: int | None = None,
    ) -> CallResult:
        """Run one Snakemake call (in `env`, None: this process's environment); returns its exit
        status, wall seconds and log. Raises Interrupted when a stop signal arrived before it
        started."""
        if self.signals.received:
            raise Interrupted("stopped before the next Snakemake call")
        log = self.log_dir / f"{log_name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        start = time.monotonic()
        with open(log, "w") as out:
            out.write("$ " + " ".join(self.args(targets, options, cores)) + "\n")
            out.flush()
            proc = subprocess.Popen(
                self.args(targets, options, cores),
                cwd=self.workdir,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=None if env is None else dict(env),
            )
        self.signals.child = proc
        if self.signals.received:  # a signal that came while the call was starting
            self.signals.forward()
        try:
            while True:
                try:
                    rc = proc.wait(timeout=1.0)
                    break
                except subprocess.TimeoutExpired:
                    if on_tick is not None:
                        on_tick(time.monotonic() - start)
                    self.signals.check_grace()
        finally:
            self.signals.child = None
        return CallResult(rc, time.monotonic() - start, log, self.signals.received is not None)

    def dry_run(self, targets: Sequence[str], options: Sequence[str], log_name: str) -> list[Job]:
        """The jobs a dry run of `targets` plans. Raises Interrupted on a stop signal and
        InputError (with the log's tail) when Snakemake refuses."""
        result = self.call(targets, ["--dry-run", *options], log_name)
        if result.interrupted:
            raise Interrupted("stopped during a dry run")
        if result.returncode != 0:
            raise InputError(_failure(f"snakemake --dry-run {' '.join(targets)}", result))
        return parse_dry_run(result.log.read_text(errors="replace"))


def _failure(what: str, result: CallResult) -> str:
    text = result.tail()
    hint = ""
    if "cannot be locked" in text:
        hint = (
            "\nAnother Snakemake holds this directory, or one was killed: if none runs here, "
            "`snakemake --unlock` releases it."
        )
    return f"{what} failed (exit {result.returncode}; log {result.log}):\n{text}{hint}"


def setup_jobs(smk: Snakemake, targets: Sequence[str] = ("all",)) -> list[Job]:
    """What the OOM probes need and the probes themselves, as a dry run of `targets` (DAG
    targets) up to rule probe_max_batch lists them (jobs Snakemake would run now)."""
    return smk.dry_run(list(targets), ["--until", PROBE_RULE], "plan-setup")


def grid_jobs(smk: Snakemake, targets: Sequence[str] = ("all",)) -> list[Job]:
    """The one enumeration of cells: every cell job of the `targets`' DAG, from a dry run with the
    cell rules forced (so finished cells are listed too), once the probes exist and are up to
    date (their checkpoint answers the sweeps). Raises InputError if a probe would run: the
    grid of an `auto` sweep is not known until it has."""
    jobs = smk.dry_run(list(targets), ["--forcerun", *CELL_RULES], "plan-grid")
    probes = [j for j in jobs if j.rule == PROBE_RULE]
    if probes:
        raise InputError(
            "the grid cannot be planned while probes would run: "
            + "; ".join(f"{j.outputs[0]} ({j.reason})" for j in probes)
        )
    return [j for j in jobs if j.rule in CELL_RULES]


def touch_kept_probes(smk: Snakemake, probes: Sequence[Job]) -> None:
    """Mark existing probes up to date with `snakemake --touch` (no byte changes): Snakemake would
    rerun them because their inputs are newer (rebuilt workload or engines, edited code), but a
    probe decides the grid its cells were measured on. Refuses (ConfigError) a probe whose params
    changed: the config is not the one it was probed with."""
    changed = [p for p in probes if "Params have changed" in p.reason]
    if changed:
        raise ConfigError(
            "the config changed what these probes were run with: "
            + "; ".join(f"{p.outputs[0]} ({p.reason})" for p in changed)
            + ". Delete each probe.json and its cells to probe and measure again under this "
            "config, or run with the config it was probed with"
        )
    if not probes:
        return
    result = smk.call([o for p in probes for o in p.outputs], ["--touch"], "touch-probes")
    if result.interrupted:
        raise Interrupted("stopped while marking probes up to date")
    if result.returncode != 0:
        raise InputError(_failure("snakemake --touch (the kept probes)", result))


# --------------------------------------------------------------------------------------------
# Estimates


@dataclass(frozen=True)
class Rates:
    """Per-device decode and prefill rates: a decode step of an architecture of L layers costs
    step_fixed_s + L x step_layer_s + bytes / bytes_per_s (seconds; bytes/s), a prefill
    prefill_fixed_s + FLOPs / flops_per_s. source says where they come from (fitted over named
    committed cells, or a datasheet row)."""

    step_fixed_s: float
    bytes_per_s: float
    prefill_fixed_s: float
    flops_per_s: float
    source: str
    step_layer_s: float = 0.0

    def step_s(self, num_layers: int, step_bytes: float) -> float:
        """Seconds of one decode step of `num_layers` layers reading `step_bytes` bytes."""
        return self.step_fixed_s + num_layers * self.step_layer_s + step_bytes / self.bytes_per_s


def _fit_line(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """(a, b) of y = a + b x minimising the squared relative error sum(((a + b x - y) / y)^2),
    a and b clipped at >= 0 (a negative fixed cost or rate means too few points: b refitted
    through the origin). Raises InputError with fewer than 2 points."""
    import numpy as np

    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 2:
        raise InputError(f"a line needs at least 2 points, got {len(x)}")
    design = np.vstack([np.ones_like(x), x]).T / y[:, None]
    a, b = np.linalg.lstsq(design, np.ones_like(y), rcond=None)[0]
    if a < 0 or b <= 0:
        a, b = 0.0, float(np.sum(x / y) / np.sum((x / y) ** 2))
    return float(a), float(b)


def _fit_plane(
    layers: Sequence[float], x: Sequence[float], y: Sequence[float]
) -> tuple[float, float, float]:
    """(a, c, b) of y = a + c L + b x minimising the squared relative error, as _fit_line; where
    the points span fewer than two depths L, or the fit gives a negative term, (a, 0, b) of
    _fit_line. Raises InputError with fewer than 2 points."""
    import numpy as np

    if len(set(layers)) >= 2 and len(y) >= 3:
        L, x, y = (np.asarray(v, float) for v in (layers, x, y))
        design = np.vstack([np.ones_like(x), L, x]).T / y[:, None]
        a, c, b = np.linalg.lstsq(design, np.ones_like(y), rcond=None)[0]
        if a >= 0 and c >= 0 and b > 0:
            return float(a), float(c), float(b)
    a, b = _fit_line(x, y)
    return a, 0.0, b


def committed_cell_points(meta_paths: Iterable[Path], backend: str = "torch") -> dict[str, list]:
    """device_name -> [(cell folder, decode bytes per step, decode s per step, prefill FLOPs per
    batch, prefill s per batch, layers)] of committed static cells run by `backend`, from their
    meta.json and batches.parquet: per batch, the decode step at the middle of its context
    (padded prompt + half the longest output) for every row, and the prefill of the padded
    prompts; per cell, step-weighted means. Cells without decode steps, or whose architecture
    resources/models does not name (a user's checkpoint), are left out."""
    import numpy as np
    import pandas as pd

    from tokencarbon.flops import batch_prefill_flops, decode_step_bytes
    from tokencarbon.models import load_architecture
    from tokencarbon.quantization import from_columns

    points: dict[str, list] = {}
    for meta_path in meta_paths:
        meta = json.loads(Path(meta_path).read_text())
        if meta.get("backend") != backend or "batch_size" not in meta:
            continue
        try:
            arch = load_architecture(meta["architecture"])
            quant = from_columns(meta.get("quantization"), meta.get("quant_group_size"))
        except TokencarbonError:
            continue
        b = pd.read_parquet(Path(meta_path).parent / "batches.parquet")
        steps = (b["max_output_tokens"] - 1).clip(lower=0).to_numpy()
        if steps.sum() == 0:
            continue
        step_bytes = [
            decode_step_bytes(arch, [int(p + o // 2)] * int(n), meta["dtype"], quant)
            for p, o, n in zip(b["padded_input_len"], b["max_output_tokens"], b["n_requests"])
        ]
        flops = [
            batch_prefill_flops(arch, [int(p)] * int(n))
            for p, n in zip(b["padded_input_len"], b["n_requests"])
        ]
        decode_s = (b["end_ns"] - b["first_token_ns"]).sum() / 1e9
        prefill_s = ((b["first_token_ns"] - b["start_ns"]) / 1e9).to_numpy()
        points.setdefault(meta["device_name"], []).append(
            (
                str(Path(meta_path).parent),
                float(np.sum(steps * step_bytes) / steps.sum()),
                float(decode_s / steps.sum()),
                float(np.mean(flops)),
                float(np.mean(prefill_s)),
                int(arch.num_layers),
            )
        )
    return points


def fit_rates(points: Sequence[tuple], device: str) -> Rates:
    """Rates fitted over one device's committed_cell_points (at least 2 cells; the per-layer
    step term needs 3 cells of at least 2 depths, _fit_plane)."""
    a, c, b = _fit_plane([p[5] for p in points], [p[1] for p in points], [p[2] for p in points])
    pa, pb = _fit_line([p[3] for p in points], [p[4] for p in points])
    return Rates(
        step_fixed_s=a,
        bytes_per_s=1 / b,
        prefill_fixed_s=pa,
        flops_per_s=1 / pb,
        source=f"fitted over {len(points)} committed static cells on {device}",
        step_layer_s=c,
    )


def datasheet_rates(platform, dtype: str) -> Rates:
    """Rates of a platforms.csv row with no committed cells: its memory bandwidth and dense peak
    for `dtype`, no fixed terms (an optimistic bound)."""
    from tokencarbon.platforms import peak_bandwidth_bytes_per_s, peak_flops

    return Rates(
        0.0,
        peak_bandwidth_bytes_per_s(platform),
        0.0,
        peak_flops(platform, dtype),
        f"datasheet row {platform.platform} (no committed cells of this device)",
    )


def static_measured_s(
    arch,
    dtype: str,
    quant,
    prompt_lens: Sequence[int],
    output_lens: Sequence[int],
    n: int,
    rates: Rates,
) -> float:
    """Seconds of one repeat of a static cell: the requests in consecutive batches of n (as
    cell.py slices the workload), each a prefill of its prompts padded to the longest and
    (longest output - 1) decode steps at the batch's middle context (see the module docstring).
    Raises InputError for n < 1 or lengths of different counts."""
    from tokencarbon.flops import batch_prefill_flops, decode_step_bytes

    if n < 1 or len(prompt_lens) != len(output_lens):
        raise InputError(f"n={n}, {len(prompt_lens)} prompts, {len(output_lens)} outputs")
    total = 0.0
    for i in range(0, len(prompt_lens), n):
        prompts, outputs = prompt_lens[i : i + n], output_lens[i : i + n]
        padded, longest = max(prompts), max(outputs)
        total += (
            rates.prefill_fixed_s
            + batch_prefill_flops(arch, [padded] * len(prompts)) / rates.flops_per_s
        )
        step = decode_step_bytes(arch, [padded + longest // 2] * len(prompts), dtype, quant)
        total += (longest - 1) * rates.step_s(arch.num_layers, step)
    return total


def slot_schedule(output_lens: Sequence[int], n: int) -> list[tuple[int, int]]:
    """(start step, end step) of each request when requests take the first of n slots that frees
    (first come, first served, all arriving at once) and hold it for their output length.
    E.g. outputs [3, 1, 2] in 2 slots: (0, 3), (0, 1), (1, 3)."""
    if n < 1:
        raise InputError(f"max_num_seqs {n}: need at least 1 slot")
    free = [0] * min(n, max(len(output_lens), 1))
    spans = []
    for out in output_lens:
        start = heapq.heappop(free)
        spans.append((start, start + int(out)))
        heapq.heappush(free, start + int(out))
    return spans


def continuous_measured_s(
    arch,
    dtype: str,
    quant,
    prompt_lens: Sequence[int],
    output_lens: Sequence[int],
    n: int,
    rates: Rates,
) -> float:
    """Seconds of one repeat of a continuous cell: slot_schedule's steps, each costing the fixed
    step time and the weights' read, plus every request's KV reads over its steps (at its middle
    context), plus every prompt's prefill FLOPs."""
    from tokencarbon.flops import prefill_flops
    from tokencarbon.models import kv_cache_bytes, weight_bytes

    spans = slot_schedule(output_lens, n)
    steps = max((end for _, end in spans), default=0)
    kv_per_token = kv_cache_bytes(arch, 1, 1, dtype)
    kv = sum((o - 1) * (p + o // 2) * kv_per_token for p, o in zip(prompt_lens, output_lens))
    weights = weight_bytes(arch, dtype, quant)
    decode = steps * rates.step_s(arch.num_layers, weights) + kv / rates.bytes_per_s
    prefill = sum(prefill_flops(arch, int(p)) for p in prompt_lens) / rates.flops_per_s
    return decode + prefill


@dataclass(frozen=True)
class Overheads:
    """Costs beside the measured window, from committed records (module docstring): per cell
    (Snakemake's start + the job's fixed cost) by mode, the setup before the probes, and each
    probe's process by architecture name. None where no record says."""

    cell_fixed_s: dict[str, float]
    setup_s: float | None
    probe_s: dict[str, float]
    sources: tuple[str, ...]

    def probe(self, architecture: str) -> float | None:
        if architecture in self.probe_s:
            return self.probe_s[architecture]
        return (
            float(sorted(self.probe_s.values())[len(self.probe_s) // 2]) if self.probe_s else None
        )


def _device_choice(
    devices: Iterable[str], pattern: str | None, kind_of: Callable[[str], str], kind: str
) -> tuple[list[str], str]:
    """Devices of records to use: those matching the platform's pattern, else those of its kind."""
    devices = sorted(set(devices))
    same = [d for d in devices if pattern and re.search(pattern, d)]
    if same:
        return same, "same device"
    return [
        d for d in devices if kind_of(d) == kind
    ], f"another {kind.upper()} (no record of this device)"


def _kind_of(device_name: str) -> str:
    from tokencarbon.platforms import load_platforms, rows_matching

    rows = rows_matching(device_name)
    return load_platforms()[rows[0]].kind if rows else ("gpu" if "NVIDIA" in device_name else "cpu")


def load_overheads(records_dir: Path, pattern: str | None, kind: str) -> Overheads:
    """Overheads from `records_dir`'s *cell-overhead*.json and *probe-time*.json records
    (calibrated method), preferring records of the device `pattern` matches, else of `kind`."""
    import numpy as np

    from tokencarbon.layout import MODE_PREFIX

    sources: list[str] = []
    rows = []
    for path in sorted(records_dir.glob("*cell-overhead*.json")):
        record = json.loads(path.read_text())
        if record.get("label") == "before":  # the cost before issue 19's changes, kept to compare
            continue
        for c in record.get("cells", []):
            continuous = Path(c["cell"]).name.startswith(MODE_PREFIX["continuous"])
            mode = "continuous" if continuous else "static"
            rows.append(
                (
                    path.name,
                    c["device_name"],
                    mode,
                    c["fixed_s"] + c["snakemake_s"] - c["job_s"],
                    record.get("setup_s"),
                )
            )
    devices, how = _device_choice((r[1] for r in rows), pattern, _kind_of, kind)
    chosen = [r for r in rows if r[1] in devices]
    fixed: dict[str, float] = {}
    for mode in ("static", "continuous"):
        values = [r[3] for r in chosen if r[2] == mode] or [r[3] for r in chosen]
        if values:
            fixed[mode] = float(np.median(values))
    setups = [r[4] for r in chosen if r[4] is not None]
    if chosen:
        sources.append(f"fixed cost per cell: {', '.join(sorted({r[0] for r in chosen}))} ({how})")
    probe: dict[str, float] = {}
    probe_rows = []
    for path in sorted(records_dir.glob("*probe-time*.json")):
        record = json.loads(path.read_text())
        if record.get("method") != "calibrated":
            continue
        device = record.get("machine", {}).get("device_name", "")
        probe_rows += [
            (path.name, device, r["model"], r["process_wall_s"])
            for r in record.get("results", [])
            if r.get("status") == 0
        ]
    devices, how = _device_choice((r[1] for r in probe_rows), pattern, _kind_of, kind)
    for name, device, model, seconds in probe_rows:
        if device in devices:
            probe[model] = float(seconds)
    if probe:
        sources.append(
            f"probes: {', '.join(sorted({r[0] for r in probe_rows if r[1] in devices}))} ({how})"
        )
    return Overheads(fixed, float(np.median(setups)) if setups else None, probe, tuple(sources))


@dataclass(frozen=True)
class Estimate:
    """Expected device seconds of one cell: measured + fixed + idle (None where unknown), and
    what each part came from."""

    seconds: float | None
    measured_s: float | None
    fixed_s: float | None
    idle_s: float
    sources: tuple[str, ...]
    repeats: int = 1  # the repeats measured_s covers

    def left_s(self, kept: int) -> float | None:
        """Seconds of the job that measures the repeats left after `kept` kept ones (fixed cost,
        idle window and repeats - kept repeats); None where unknown."""
        if self.seconds is None or self.measured_s is None:
            return self.seconds
        return self.fixed_s + self.idle_s + self.measured_s * (self.repeats - kept) / self.repeats

    def one_repeat_s(self) -> float | None:
        """Seconds of a job that measures one repeat; None where unknown."""
        return self.left_s(self.repeats - 1)


def estimate_cell(
    cell: Cell,
    workdir: Path,
    rates: Rates | None,
    overheads: Overheads,
    repeats: int,
    idle_s: float,
) -> Estimate:
    """The Estimate of one cell from its job's inputs (engine manifest: architecture, dtype,
    quantization; workload parquet: prompt and output lengths), `rates` of its device (None:
    unknown), `overheads` and the config's repeats and idle window."""
    import pandas as pd

    from tokencarbon.models import architecture_from_dict
    from tokencarbon.quantization import from_columns

    sources = list(overheads.sources)
    fixed = overheads.cell_fixed_s.get(cell.mode)
    measured = None
    manifest_path = cell.input_matching(r"(^|/)engines/.*manifest\.json$")
    workload_path = cell.input_matching(r"(^|/)workload/[^/]+\.parquet$")
    if rates is None:
        sources.append("measured window: no rates for this device")
    elif not (
        manifest_path
        and workload_path
        and (workdir / manifest_path).is_file()
        and (workdir / workload_path).is_file()
    ):
        sources.append("measured window: engine manifest or workload not built yet")
    else:
        manifest = json.loads((workdir / manifest_path).read_text())
        arch = architecture_from_dict(manifest["architecture"], manifest_path)
        quant = from_columns(manifest.get("quantization"), manifest.get("quant_group_size"))
        workload = pd.read_parquet(
            workdir / workload_path, columns=["prompt_tokens", "output_tokens"]
        )
        prompts = [int(p) for p in workload["prompt_tokens"]]
        outputs = [int(o) for o in workload["output_tokens"]]
        one = (static_measured_s if cell.mode == "static" else continuous_measured_s)(
            arch, manifest["dtype"], quant, prompts, outputs, cell.n, rates
        )
        measured = one * repeats
        sources.append(
            f"measured window: {len(prompts)} requests of {workload_path} x {repeats} "
            f"repeat(s), rates {rates.source}"
        )
    seconds = None if measured is None or fixed is None else measured + fixed + idle_s
    return Estimate(seconds, measured, fixed, idle_s, tuple(sources), repeats)


def format_seconds(seconds: float | None) -> str:
    """'2 h 41 min', '9 min 05 s', '42 s'; '?' for None."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    if s >= 60:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s} s"


def parse_budget(text: str) -> float:
    """Seconds of a budget written as '900', '900s', '25m', '1h30m' or '2h'. Raises ConfigError
    naming the text otherwise."""
    m = re.fullmatch(
        r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*", text
    )
    if not text.strip() or not m or not any(m.groups()):
        raise ConfigError(f"budget {text!r}: write seconds (900), minutes (25m) or hours (1h30m)")
    h, mi, s = (float(g) if g else 0.0 for g in m.groups())
    return h * 3600 + mi * 60 + s


# --------------------------------------------------------------------------------------------
# Packs and their manifest


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _file_entry(path: Path) -> dict[str, Any]:
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


@dataclass
class Pack:
    """A folder of finished cells for commit: cells/<platform>/<model>/<cell>/ and each model's
    probe.json (the results/cells tree), job-logs/ (the jobs' logs, paths as under the
    workflow's logs/) and manifest.json: per cell and probe its files (SHA-256, bytes), log,
    git commit and device (from its meta.json / probe.json), seconds and estimate; per run the
    runner's commit, host, config, budget and how it stopped."""

    folder: Path
    manifest: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def open(cls, folder: Path) -> Pack:
        path = folder / MANIFEST
        if not path.is_file():
            return cls(folder, {"schema": MANIFEST_SCHEMA, "cells": {}, "probes": {}, "runs": []})
        manifest = json.loads(path.read_text())
        if manifest.get("schema") != MANIFEST_SCHEMA:
            raise InputError(
                f"{path}: schema {manifest.get('schema')!r}, expected {MANIFEST_SCHEMA!r}"
            )
        return cls(folder, manifest)

    def save(self) -> None:
        from tokencarbon.files import write_json

        write_json(self.folder / MANIFEST, self.manifest)

    def _entries(self):
        for kind in ("cells", "probes"):
            for name, entry in self.manifest[kind].items():
                yield kind, name, entry

    def restore(self, workdir: Path, cells: Path) -> list[str]:
        """Copy every packed cell, probe and log into workdir (cells: the study's cell tree,
        cells_dir(); logs where the manifest names them, results/<study>/logs/...),
        each file first checked against its SHA-256; a file already in workdir must be equal
        (then it is left as it is). Returns the names restored. Raises InputError naming the
        file for a packed file that is missing or altered, or a differing local file."""
        restored = []
        for kind, name, entry in self._entries():
            copies = [
                (self.folder / PACK_CELLS / rel, workdir / cells / rel, info)
                for rel, info in entry["files"].items()
            ]
            copies += [
                (self.folder / _packed_log(log), workdir / log, info)
                for log, info in entry.get("logs", {}).items()
            ]
            copied = False
            for src, dst, info in copies:
                if not src.is_file() or sha256_file(src) != info["sha256"]:
                    raise InputError(
                        f"{src}: missing or not the file the manifest recorded "
                        f"(sha256 {info['sha256']}); restore the pack from git"
                    )
                if dst.is_file():
                    if sha256_file(dst) != info["sha256"]:
                        raise InputError(
                            f"{dst} differs from the packed {src} ({name}): move the local file "
                            "away, or remove the cell from the pack, before restoring"
                        )
                    continue
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)
                copied = True
            if copied:
                restored.append(f"{kind[:-1]} {name}")
        return restored

    def add(
        self,
        kind: str,
        name: str,
        files: Sequence[str],
        logs: Sequence[str],
        workdir: Path,
        facts: Mapping[str, Any],
        cells: Path,
    ) -> None:
        """Copy a finished cell's (kind "cells") or probe's ("probes") files (paths under
        `cells`, the study's cell tree) and logs (under a logs/ folder) from workdir into the
        pack, record them with
        `facts`, and save the manifest. An entry of the same name is replaced (its old record
        kept under "replaced")."""
        entry: dict[str, Any] = {"files": {}, "logs": {}, **facts}
        for f in files:
            rel = Path(f).relative_to(cells)
            dst = self.folder / PACK_CELLS / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(workdir / f, dst)
            entry["files"][rel.as_posix()] = _file_entry(dst)
        for log in logs:
            if (workdir / log).is_file():
                dst = self.folder / _packed_log(log)
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(workdir / log, dst)
                entry["logs"][log] = _file_entry(dst)
        old = self.manifest[kind].get(name)
        if old is not None and old.get("files") != entry["files"]:
            entry["replaced"] = [*old.pop("replaced", []), old]
        self.manifest[kind][name] = entry
        self.save()

    def take_from(self, other: Pack) -> list[str]:
        """Take into this pack every entry of `other` it lacks (files checked against other's
        manifest, copied), and other's runs where this pack has none yet; saves. Returns the
        names taken. Raises InputError for a file of `other` that is missing or altered."""
        taken = []
        for kind, name, entry in other._entries():
            if name in self.manifest[kind]:
                continue
            pairs = [(PACK_CELLS / Path(rel), info) for rel, info in entry["files"].items()]
            pairs += [(_packed_log(log), info) for log, info in entry.get("logs", {}).items()]
            for rel, info in pairs:
                src, dst = other.folder / rel, self.folder / rel
                if not src.is_file() or sha256_file(src) != info["sha256"]:
                    raise InputError(
                        f"{src}: missing or not the file the manifest recorded "
                        f"(sha256 {info['sha256']}); restore the pack from git"
                    )
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)
            self.manifest[kind][name] = json.loads(json.dumps(entry))
            taken.append(f"{kind[:-1]} {name}")
        if not self.manifest["runs"]:
            self.manifest["runs"] = json.loads(json.dumps(other.manifest["runs"]))
        self.save()
        return taken

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.folder.rglob("*") if p.is_file())

    def write_tar(self, path: Path) -> None:
        """The pack as one .tar.gz (members under the pack folder's name), written atomically:
        what a device machine returns in one file."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        with tarfile.open(tmp, "w:gz") as tar:
            tar.add(self.folder, arcname=self.folder.name)
        tmp.replace(path)


def _packed_log(log: str) -> Path:
    """Where a job's log (a path under a logs/ folder: results/<study>/logs/..., or logs/... of
    packs made before study folders) lies in a pack: under job-logs/, the part after logs/."""
    parts = Path(log).parts
    return Path(PACK_LOGS, *(parts[parts.index("logs") + 1:] if "logs" in parts else parts))


def cell_facts(cell: Cell, workdir: Path) -> dict[str, Any]:
    """What a finished cell says of itself (meta.json): the commit and device that measured it,
    and the GPU's UUID (None for a CPU cell or a meta.json without one)."""
    meta = json.loads((workdir / cell.meta).read_text())
    return {"git_commit": meta.get("git_commit"), "device_name": meta.get("device_name"),
            "gpu_uuid": gpu_uuid(meta.get("hardware"))}  # fmt: skip


def probe_facts(path: Path) -> dict[str, Any]:
    probe = json.loads(path.read_text())
    return {
        "device": probe.get("device"),
        "max_ok": probe.get("max_ok"),
        "max_num_seqs_ok": probe.get("max_num_seqs_ok"),
    }


# --------------------------------------------------------------------------------------------
# The study's settings the runner reads


def study_config(workdir: Path, configfile: str | None, overrides: Sequence[str]) -> dict:
    """The config as Snakemake gets it (--configfile replaces config/config.yaml, common.smk;
    --config entries parsed and merged by Snakemake's own functions), before validation."""
    import yaml
    from snakemake.cli import parse_config
    from snakemake.utils import update_config

    path = workdir / (configfile or "config/config.yaml")
    config = yaml.safe_load(path.read_text()) or {}
    update_config(config, parse_config(list(overrides)))
    return config


def measured_platforms(config: Mapping[str, Any]) -> list[str]:
    """Platforms this machine measures (not import_only, not built from an imported log)."""
    return sorted(
        p
        for p, spec in (config.get("platforms") or {}).items()
        if not (spec or {}).get("import_only") and not (spec or {}).get("imported")
    )


def default_pack_dir(workdir: Path, config: Mapping[str, Any]) -> Path:
    """benchmarks/results/paper-<gpu>: <gpu> the first measured platform's name up to its first
    '-' (h200-141gb -> h200, h100-sxm-80gb -> h100, cpu -> cpu). Raises ConfigError where the
    config measures no platform."""
    platforms = measured_platforms(config)
    if not platforms:
        raise ConfigError("config key platforms: no platform is measured here (all import_only)")
    return workdir / "benchmarks/results" / f"paper-{platforms[0].split('-')[0]}"


def _number_setting(config: Mapping[str, Any], section: str, key: str, default):
    value = (config.get(section) or {}).get(key, default)
    try:
        return type(default)(value)
    except (TypeError, ValueError):
        raise ConfigError(f"config key {section}.{key}: {value!r} is not a number")


def platform_device(config: Mapping[str, Any], platform: str):
    """The platforms.csv row a platform measures on (its `hardware` alias or its own name);
    None for a platform no row describes."""
    from tokencarbon.platforms import load_platforms

    spec = (config.get("platforms") or {}).get(platform) or {}
    return load_platforms().get(spec.get("hardware") or platform)


def git_head(workdir: Path) -> str:
    """HEAD of the checkout at workdir, '+dirty' with uncommitted changes to tracked files,
    'unknown' outside git (as tokencarbon.hardware.git_commit records it in cells)."""
    try:
        head = subprocess.run(
            ["git", "-C", str(workdir), "rev-parse", "HEAD"],
            check=True,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(workdir), "status", "--porcelain", "--untracked-files=no"],
            check=True,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


# --------------------------------------------------------------------------------------------
# The run


@dataclass
class Options:
    """benchmarks/run_chunks.py's arguments (its --help explains each)."""

    workdir: Path
    budget_s: float
    configfile: str | None = None
    config: Sequence[str] = ()
    cores: int = 1
    pack_dir: Path | None = None
    out_dir: Path | None = None
    update_pack: bool = False
    remeasure: Sequence[str] = ()
    plan_only: bool = False
    tar: Path | None = None
    targets: Sequence[str] = ("all",)  # the DAG targets whose cells are planned
    records_dir: Path | None = None
    snakemake: Sequence[str] = (sys.executable, "-m", "snakemake")
    grace_s: float = 120.0
    progress: bool = True
    cells_per_call: int = 8  # cells of at most GROUP_CELL_S in one Snakemake call; 1: one each


def _say(text: str) -> None:
    from tqdm import tqdm

    tqdm.write(text, file=sys.stderr)


def _plan_table(rows: Sequence[tuple[Cell, Estimate]]) -> str:
    lines = [f"  {'cell':<44} {'mode':<10} {'expected':>12}"]
    for cell, est in rows:
        lines.append(f"  {cell.name:<44} {cell.mode:<10} {format_seconds(est.seconds):>12}")
    return "\n".join(lines)


@dataclass
class _Run:
    """The state of one run: its options, the study's config, the pack it grows, Snakemake."""

    opts: Options
    workdir: Path
    config: dict
    pack: Pack
    smk: Snakemake
    record: dict
    started: float
    kept_probe_logs: dict = field(default_factory=dict)  # probe.json -> its job's logs

    @property
    def run_index(self) -> int:
        return len(self.pack.manifest["runs"]) - 1

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def save(self) -> None:
        self.pack.save()
        if self.opts.tar:
            self.pack.write_tar(self.opts.tar)


def run(opts: Options) -> int:
    """One chunk of the study (module docstring): returns 0 when every planned cell that fitted
    ran (or none was left), 1 when a cell failed, 130 when stopped by SIGINT/SIGTERM.

    The committed pack (opts.pack_dir, default benchmarks/results/paper-<gpu>) is read only; the
    run grows a copy of it in opts.out_dir (default results/chunks/paper-<gpu>, which git
    ignores), so that the checkout stays clean and every cell records a commit without
    '+dirty'. opts.update_pack copies it over the committed pack at the end."""
    started = time.monotonic()
    workdir = opts.workdir.resolve()
    config = study_config(workdir, opts.configfile, opts.config)
    committed = (opts.pack_dir or default_pack_dir(workdir, config)).resolve()
    out = (opts.out_dir or workdir / "results/chunks" / committed.name).resolve()
    pack = Pack.open(out)
    taken = pack.take_from(Pack.open(committed))
    configfile = opts.configfile or "config/config.yaml"
    record: dict[str, Any] = {
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": socket.gethostname(),
        "git_commit": git_head(workdir),
        "configfile": configfile,
        "config": list(opts.config),
        "config_sha256": sha256_file(workdir / configfile),
        "budget_s": opts.budget_s,
        "measured": [],
        "failed": [],
        "left": [],
        "stopped": None,
    }
    pack.manifest["runs"].append(record)
    log_dir = workdir / "logs/chunks" / time.strftime("%Y%m%dT%H%M%S")
    with StopSignals(opts.grace_s) as signals:
        smk = Snakemake(
            workdir, opts.snakemake, opts.configfile, opts.config, opts.cores, signals, log_dir
        )
        state = _Run(opts, workdir, config, pack, smk, record, started)
        try:
            restored = pack.restore(workdir, cells_dir(config))
            _say(
                f"[chunks] pack {committed} ({len(taken)} entries taken into {out}): "
                f"{len(pack.manifest['cells'])} cells, {len(pack.manifest['probes'])} probes; "
                f"restored here: {len(restored)}"
            )
            overheads = _chunk0(state)
            todo, estimates = _plan(state, overheads)
            if opts.plan_only:
                record["stopped"] = "plan only"
                status = 0
            else:
                status = _measure(state, todo, estimates)
        except Interrupted as exc:
            record["stopped"] = "interrupted"
            _say(f"[chunks] {exc}")
            status = EXIT_INTERRUPTED
        except TokencarbonError as exc:
            record["stopped"] = f"error: {str(exc)[:500]}"
            raise
        finally:
            state.save()
    size = pack.size_bytes()
    _say(
        f"[chunks] measured {len(record['measured'])}, failed {len(record['failed'])}, "
        f"left {len(record['left'])}; pack {out} {size / 2**20:.1f} MiB"
        + (
            f" (above {PACK_WARN_BYTES / 2**20:.0f} MiB: the device machine's 64 MiB working "
            "tree carries it with the wheels and a clean clone)"
            if size > PACK_WARN_BYTES
            else ""
        )
    )
    if opts.update_pack:
        shutil.copytree(out, committed, dirs_exist_ok=True)
        _say(f"[chunks] copied into {committed}: commit it")
    else:
        _say(f"[chunks] to commit: copy {out}/ over {committed}/ (or --update-pack)")
    return status


def _chunk0(state: _Run) -> Overheads:
    """Setup and the missing probes in one Snakemake call; existing probes kept (touched)."""
    workdir, pack = state.workdir, state.pack
    jobs = setup_jobs(state.smk, state.opts.targets)
    probes = [j for j in jobs if j.rule == PROBE_RULE]
    # a probe is rerun only where its output is missing or Snakemake marked it incomplete
    missing = [
        j
        for j in probes
        if "Incomplete output files" in j.reason
        or not all((workdir / o).is_file() for o in j.outputs)
    ]
    kept = [j for j in probes if j not in missing]
    setup = [j for j in jobs if j.rule != PROBE_RULE]
    row = next((r for r in _device_rows(state.config).values() if r is not None), None)
    overheads = load_overheads(
        (state.opts.records_dir or workdir / "benchmarks/results").resolve(),
        row.device_name_pattern if row else None,
        row.kind if row else "gpu",
    )
    if setup or missing:
        expected = [overheads.setup_s if setup else 0.0] + [
            overheads.probe(_probe_architecture(j, workdir, state.config)) for j in missing
        ]
        known = [e for e in expected if e is not None]
        _say(
            f"[chunks] chunk 0: {len(setup)} setup job(s), {len(missing)} probe(s) to run: "
            f"expected {format_seconds(sum(known))}"
            + (" (+ some not estimated)" if len(known) < len(expected) else "")
            + f"; {'; '.join(overheads.sources) or 'no committed records'}"
        )
        result = state.smk.call(
            [o for j in [*setup, *missing] for o in j.outputs], [], "chunk0-setup"
        )
        if result.interrupted:
            raise Interrupted("stopped during setup and probes")
        if result.returncode != 0:
            raise InputError(_failure("setup and probes", result))
        for j in missing:
            name = Path(j.outputs[0]).parent.relative_to(cells_dir(state.config)).as_posix()
            facts = probe_facts(workdir / j.outputs[0])
            facts |= {"seconds": round(result.seconds, 3), "run": state.run_index}
            pack.add("probes", name, j.outputs, j.logs, workdir, facts, cells_dir(state.config))
        state.save()
    if kept:
        _say(
            f"[chunks] kept {len(kept)} probe(s) Snakemake would rerun (inputs newer than "
            "them); marking them up to date (snakemake --touch)"
        )
        touch_kept_probes(state.smk, kept)
    state.kept_probe_logs = {j.outputs[0]: j.logs for j in kept}
    return overheads


def _device_rows(config) -> dict[str, Any]:
    return {p: platform_device(config, p) for p in measured_platforms(config)}


def _plan(state: _Run, overheads: Overheads) -> tuple[list[Cell], dict[str, Estimate]]:
    """The grid from the dry run, cells to measure in run order, their estimates, printed."""
    workdir, pack, opts, config = state.workdir, state.pack, state.opts, state.config
    grid = [Cell.from_job(j) for j in grid_jobs(state.smk, opts.targets)]
    names = {c.name for c in grid}
    unknown = sorted(set(opts.remeasure) - names)
    if unknown:
        raise ConfigError(
            f"--remeasure {' '.join(unknown)}: not cells of this grid; valid: "
            f"{', '.join(sorted(names))}"
        )
    for cell in grid:
        if cell.name in opts.remeasure:
            for o in cell.outputs:
                (workdir / o).unlink(missing_ok=True)
            parts_clear(workdir / cell.meta)  # repeats kept by an earlier job are not remeasured
            _say(f"[chunks] {cell.name}: removed here to be measured again (--remeasure)")
    order = {n: i for i, n in enumerate([*(config.get("platforms") or {}), *config["models"]])}
    quantized = {c.model: _quantized(c, workdir) for c in grid}
    ordered = order_cells(grid, quantized, order)
    done = [c for c in ordered if is_done(c, workdir)]
    todo = [c for c in ordered if not is_done(c, workdir)]
    # probes and cells found finished here but not in the pack (measured before): packed too
    for platform, model in sorted({(c.platform, c.model) for c in grid}):
        probe = (cells_dir(config) / platform / model / "probe.json").as_posix()
        if (workdir / probe).is_file() and f"{platform}/{model}" not in pack.manifest["probes"]:
            logs = state.kept_probe_logs.get(probe, ())
            facts = {**probe_facts(workdir / probe), "seconds": None, "run": state.run_index}
            pack.add("probes", f"{platform}/{model}", [probe], logs, workdir, facts,
                     cells_dir(config))  # fmt: skip
    for cell in done:
        if cell.name not in pack.manifest["cells"]:
            facts = {**cell_facts(cell, workdir), "seconds": None, "estimate_s": None}
            facts |= {"run": state.run_index, "note": "found finished on disk"}
            pack.add("cells", cell.name, cell.outputs, cell.logs, workdir, facts, cells_dir(config))
    repeats = _cell_repeats(config, grid)
    _say_other_repeats(done, repeats, workdir, cells_dir(config))
    for line in sweeps_on_several_cards(done, workdir / cells_dir(config)):
        _say(f"[chunks] sweep measured on several GPUs, whose idle power may differ: {line}")
    idle_s = _number_setting(config, "power", "idle_s", 3.0)
    idle_share = _number_setting(config, "power", "idle_share_s", 0.0) > 0
    rows = _device_rows(config)
    records = (opts.records_dir or workdir / "benchmarks/results").resolve()
    rates_by_platform = _rates([records, pack.folder], rows, config)
    estimates = {}
    for i, cell in enumerate(todo):
        rates = rates_by_platform.get(cell.platform)
        if rates is None and rows.get(cell.platform) is not None:
            rates = _datasheet(rows[cell.platform], cell, workdir)
        idle = 0.0 if idle_share and i else idle_s
        estimates[cell.name] = estimate_cell(
            cell, workdir, rates, overheads, repeats[cell.name], idle
        )
    known = [e.seconds for e in estimates.values() if e.seconds is not None]
    _say(
        f"[chunks] grid: {len(grid)} cells, {len(done)} done, {len(todo)} to measure; expected "
        f"device time {format_seconds(sum(known))}"
        + (f" (+ {len(todo) - len(known)} not estimated)" if len(known) < len(todo) else "")
        + f"; budget {format_seconds(opts.budget_s)}, {format_seconds(state.elapsed())} spent"
    )
    longer = [c for c in todo if (estimates[c.name].seconds or 0) > opts.budget_s]
    too_long = [c.name for c in longer if (estimates[c.name].one_repeat_s() or 0) > opts.budget_s
                or estimates[c.name].repeats < 2]  # fmt: skip
    if too_long:
        _say(
            f"[chunks] {len(too_long)} cell(s) are expected to take longer than the whole budget "
            f"and never start in chunks of {format_seconds(opts.budget_s)}: " + ", ".join(too_long)
        )
    in_parts = [c.name for c in longer if c.name not in too_long]
    if in_parts:
        _say(
            f"[chunks] {len(in_parts)} cell(s) take longer than the budget but one repeat fits: "
            "each runs in parts over chunks on one machine (the same GPU and code; "
            "tokencarbon.parts): " + ", ".join(in_parts)
        )
    if todo:
        _say(_plan_table([(c, estimates[c.name]) for c in todo]))
        sources = sorted({s for e in estimates.values() for s in e.sources})
        _say("[chunks] estimate sources:\n" + "\n".join(f"  - {s}" for s in sources))
    return todo, estimates


# Cells expected to take at most this many seconds share a Snakemake call with the cells after
# them in the run order (Options.cells_per_call): each call cost 4.2-5.9 s beside its job on the
# H100 machine (docs/results.md, 2026-12-07 night), 10-20 % of a GPT-2 cell; a call of several
# cells pays it once (benchmarks/results/cpu-chunk-calls.json). Longer cells, and cells of unknown
# estimate, get a call of their own.
GROUP_CELL_S = 120.0


def _measure(state: _Run, todo: Sequence[Cell], estimates: Mapping[str, Estimate]) -> int:
    """The cells in order while each one's estimate (scaled by this run's actual/estimated
    seconds so far) fits the budget left, a cell longer than that started in parts when one
    repeat fits (tokencarbon.parts); cells of at most GROUP_CELL_S share one Snakemake call, up
    to opts.cells_per_call, while their estimates together fit. Each finished cell is packed at
    once (seen from the call's ticks). Returns 1 if a cell failed, else 0. Raises Interrupted on
    a stop signal (the cells of the running call that did not finish discarded)."""
    from tqdm import tqdm

    from tokencarbon import parts

    workdir, record, opts = state.workdir, state.record, state.opts
    known = [e.seconds for e in estimates.values() if e.seconds is not None]
    # a terminal redraws the bar every second; a log file (a device machine's output) gets a
    # line every 30 s at most
    bar = tqdm(
        total=max(1, round(sum(known))), unit="s", desc="cells (est. device s)",
        disable=not opts.progress, file=sys.stderr, dynamic_ncols=True,
        mininterval=1.0 if sys.stderr.isatty() else 30.0,
    )  # fmt: skip
    progress = _Progress(bar)

    def left_s(cell: Cell) -> tuple[int, float | None]:
        # repeats kept on disk, as the estimate counts them (the job decides whether they are
        # valid here; at most all but one: a job measures at least one)
        estimate = estimates[cell.name]
        kept = min(parts.kept_repeats(parts.parts_dir(workdir / cell.meta)), estimate.repeats - 1)
        return kept, estimate.left_s(kept)

    with bar:
        i = 0
        while i < len(todo):
            if state.smk.signals.received:
                raise Interrupted("stopped between cells")
            cell, estimate = todo[i], estimates[todo[i].name]
            kept, est = left_s(cell)
            scale, left = progress.scale(), opts.budget_s - state.elapsed()
            i += 1
            if est is not None and est * scale > left:
                one = estimate.one_repeat_s()
                if estimate.repeats - kept < 2 or one is None or one * scale > left:
                    record["left"].append(cell.name)
                    bar.total = max(1, bar.total - round(est))
                    _say(
                        f"[chunks] {cell.name}: expected {format_seconds(est * scale)}, "
                        f"{format_seconds(left)} left: for the next chunk"
                    )
                    continue
                _say(
                    f"[chunks] {cell.name}: expected {format_seconds(est * scale)} for repeats "
                    f"{kept + 1}-{estimate.repeats}, {format_seconds(left)} left: started in "
                    "parts (the repeats that end by the budget's end are kept for the next chunk "
                    "on this machine, tokencarbon.parts)"
                )
            group = [(cell, kept, est)]
            if est is not None and est <= GROUP_CELL_S and est * scale <= left:
                total = est * scale
                while i < len(todo) and len(group) < opts.cells_per_call:
                    k, e = left_s(todo[i])
                    if e is None or e > GROUP_CELL_S or total + e * scale > left:
                        break
                    group.append((todo[i], k, e))
                    total += e * scale
                    i += 1
            _call(state, group, left, progress, {c.name: estimates[c.name].repeats for c, _, _ in group})
    record["stopped"] = "failed" if record["failed"] else ("budget" if record["left"] else "done")
    return 1 if record["failed"] else 0


class _Progress:
    """The run's progress bar and its actual/estimated seconds of the cells measured so far."""

    def __init__(self, bar) -> None:
        self.bar, self.actual_s, self.estimated_s, self.done_est = bar, 0.0, 0.0, 0.0

    def scale(self) -> float:
        return self.actual_s / self.estimated_s if self.estimated_s else 1.0

    def advance(self, target: float) -> None:
        if round(target) > self.bar.n:
            self.bar.update(round(target) - self.bar.n)

    def measured(self, seconds: float, est: float | None) -> None:
        if est is not None:
            self.actual_s += seconds
            self.estimated_s += est
            self.done_est += est
        self.advance(self.done_est)


def finished_outputs(log_text: str) -> set[str]:
    """The output files of the jobs a Snakemake call's log reports finished: each job block's
    `output:` and `jobid:` fields (Snakemake 9's format, as parse_dry_run reads it), joined with
    its 'Finished jobid: N' line. A job is reported finished after its process exited and its
    outputs were checked, so nothing of it (its log included) changes after."""
    outputs: dict[str, tuple[str, ...]] = {}
    finished, current = set(), {}
    for line in log_text.splitlines():
        if _JOB_HEADER.match(line):
            current = {}
            continue
        field_ = _JOB_FIELD.match(line)
        if field_:
            current[field_.group(1)] = field_.group(2)
            if "jobid" in current and "output" in current:
                outputs[current["jobid"].strip()] = _split(current["output"])
            continue
        done = _FINISHED.match(line.strip())
        if done:
            finished.add(done.group(1))
    return {o for jobid in finished for o in outputs.get(jobid, ())}


_FINISHED = re.compile(r"^Finished jobid: (\d+)")


def _job_seconds(cell: Cell, workdir: Path) -> float:
    """The seconds of a finished cell's job by its own timeline (meta.json: first phase's start,
    process start, to the last's end)."""
    phases = json.loads((workdir / cell.meta).read_text())["timeline"]["phases"]
    return (phases[-1]["end_wall_ns"] - phases[0]["start_wall_ns"]) / 1e9


def _call(state: _Run, group: Sequence[tuple[Cell, int, float | None]], left: float,
          progress: _Progress, repeats: Mapping[str, int]) -> None:  # fmt: skip
    """One Snakemake call of the group's cells ((cell, repeats kept, estimate s) in run order),
    each job's deadline the budget's end (tokencarbon.parts). Several cells: one job at a time,
    --keep-going, and a job that would start after the budget's end measures nothing (parts'
    START_BY_ENV; the cell is left for the next chunk). Each cell is packed as soon as Snakemake
    reports its job finished; its seconds are the call's (one cell) or its job's own timeline
    (several: what Snakemake spends between them is shared). After the call: a cell unfinished
    whose job kept repeats during the call is partial, one whose job started too late is left, any
    other is failed. Raises Interrupted on a stop signal."""
    from tokencarbon import parts

    workdir, record = state.workdir, state.record
    several = len(group) > 1
    names = ", ".join(c.name for c, _, _ in group)
    progress.bar.set_postfix_str(f"{group[0][0].name} +{len(group) - 1}" if several else names)
    if several:
        _say(f"[chunks] one Snakemake call for {len(group)} cells: {names}")
    pending = {c.name: (c, est) for c, _, est in group}
    total_est = sum(est or 0.0 for _, _, est in group)
    base = progress.done_est
    log_name = group[0][0].name + (f"+{len(group) - 1}" if several else "")
    log = state.smk.log_dir / f"{log_name}.log"  # Snakemake.call's

    def pack_finished(elapsed: float, call_over: bool) -> None:
        if not pending:
            return
        text = "" if call_over or not log.is_file() else log.read_text(errors="replace")
        reported = finished_outputs(text)
        for name, (cell, est) in list(pending.items()):
            if is_done(cell, workdir) and (call_over or cell.meta in reported):
                del pending[name]
                seconds = _job_seconds(cell, workdir) if several else elapsed
                _pack_cell(state, cell, seconds, est, progress)

    def tick(elapsed: float) -> None:
        pack_finished(elapsed, call_over=False)
        progress.advance(base + min(elapsed, 0.99 * total_est))  # never past the group's estimate

    deadline = time.time() + left
    env = {**os.environ, parts.DEADLINE_ENV: f"{deadline:.3f}"}
    if several:
        env[parts.START_BY_ENV] = f"{deadline:.3f}"
    targets = [o for c, _, _ in group for o in c.outputs]
    # several cells: one job at a time (--cores 1; a cell job declares no threads and leases its
    # own devices), the others run when one fails
    started = time.time()
    result = state.smk.call(targets, ["--keep-going"] if several else [], log_name, on_tick=tick,
                            env=env, cores=1 if several else None)  # fmt: skip
    pack_finished(result.seconds, call_over=True)
    if result.interrupted and pending:
        _discard(state, [c for c, _ in pending.values()])
    for name, (cell, _) in pending.items():
        folder = parts.parts_dir(workdir / cell.meta)
        job_log = workdir / cell.logs[0] if cell.logs else None
        late = (several and job_log is not None and job_log.is_file()
                and job_log.stat().st_mtime >= started
                and "DeadlinePassed" in job_log.read_text(errors="replace"))  # fmt: skip
        if parts.written_since(folder, started):
            kept = parts.kept_repeats(folder)
            record["left"].append(name)
            record.setdefault("partial", {})[name] = kept
            _say(
                f"[chunks] {name}: {kept} of {repeats[name]} repeats kept ({folder}); the next "
                "chunk on this machine (the same GPU, the same code) measures the rest"
            )
        elif late:
            record["left"].append(name)
            _say(f"[chunks] {name}: its job started after the budget's end and measured "
                 "nothing: for the next chunk")  # fmt: skip
        else:
            record["failed"].append(name)
            _say(
                f"[chunks] {name} FAILED after {format_seconds(result.seconds)} (the call's "
                f"seconds):\n" + _failure(name, result)
            )
        state.save()
    if result.interrupted:  # the signal came as the last cell finished: kept, then stop
        raise Interrupted(f"stopped after {group[-1][0].name}; every finished cell is packed")


def parts_clear(meta: Path) -> None:
    """Remove the parts (tokencarbon.parts) beside a cell's meta.json."""
    from tokencarbon import parts

    parts.clear(parts.parts_dir(meta))


def _pack_cell(state: _Run, cell: Cell, seconds: float, est: float | None,
               progress: _Progress) -> None:  # fmt: skip
    """A finished cell into the pack (its facts, its seconds: _call's)."""
    facts = cell_facts(cell, state.workdir)
    facts |= {
        "seconds": round(seconds, 3),
        "estimate_s": None if est is None else round(est, 3),
        "run": state.run_index,
    }
    state.pack.add("cells", cell.name, cell.outputs, cell.logs, state.workdir, facts,
                   cells_dir(state.config))  # fmt: skip
    state.record["measured"].append(cell.name)
    state.save()
    progress.measured(seconds, est)
    _say(
        f"[chunks] {cell.name}: {format_seconds(seconds)} (expected {format_seconds(est)}), "
        f"commit {str(facts['git_commit'])[:12]}, {facts['device_name']}"
    )


def _discard(state: _Run, cells: Sequence[Cell]) -> None:
    """The cells of the call a stop signal interrupted that did not finish: what Snakemake left
    of their outputs is removed (it removes them itself; checked), and the run stops. Raises
    Interrupted."""
    leftovers = [o for c in cells for o in c.outputs if (state.workdir / o).exists()]
    for o in leftovers:
        (state.workdir / o).unlink()
    state.record["left"].extend(c.name for c in cells)
    raise Interrupted(
        f"stopped during {', '.join(c.name for c in cells)}: discarded ("
        + (
            f"removed what was left of their outputs: {', '.join(leftovers)}"
            if leftovers
            else "no output of them was left"
        )
        + "), left to redo; every finished cell is packed"
    )


def _probe_architecture(job: Job, workdir: Path, config) -> str:
    model = job.wildcard("model")
    return ((config.get("models") or {}).get(model) or {}).get("architecture", model)


def _quantized(cell: Cell, workdir: Path) -> bool:
    manifest = cell.input_matching(r"(^|/)engines/.*manifest\.json$")
    if manifest and (workdir / manifest).is_file():
        return json.loads((workdir / manifest).read_text()).get("quantization", "none") != "none"
    return False


def other_repeats(done: Sequence[Cell], repeats: Mapping[str, int], cells: Path) -> list[str]:
    """The finished cells (under `cells`, the study's cell tree) whose meta.json "repeats" is not
    the count the config gives them now (repeats: _cell_repeats), as 'name (ran r, config n)'. A
    cell measured under another count is kept, never measured again on its own; this says which."""
    out = []
    for cell in done:
        meta = cells / cell.name / "meta.json"
        ran = json.loads(meta.read_text()).get("repeats", 1) if meta.is_file() else None
        if ran is not None and ran != repeats[cell.name]:
            out.append(f"{cell.name} (ran {ran}, config {repeats[cell.name]})")
    return out


def sweeps_on_several_cards(done: Sequence[Cell], cells: Path) -> list[str]:
    """The sweeps (platform, model, mode) whose finished cells (under `cells`) were measured on
    more than one GPU (meta.json hardware.gpu.uuid), as 'platform/model static: 2 cards (...7901c5:
    bs1, bs4; ...480db6: bs2)', each card by its UUID's last 6 characters and its cells by folder.
    J/token counts the whole board, so cards of one model differ by their idle power (114 and
    124-132 W among the H100s of 2026-12-07, docs/results.md): a ratio across such cells carries
    that difference. Cells without a UUID (CPU, older records) are left out."""
    by_sweep: dict[tuple[str, str, str], dict[str, list[Cell]]] = {}
    for cell in done:
        meta = cells / cell.name / "meta.json"
        uuid = gpu_uuid(json.loads(meta.read_text()).get("hardware")) if meta.is_file() else None
        if uuid:
            cards = by_sweep.setdefault((cell.platform, cell.model, cell.mode), {})
            cards.setdefault(uuid, []).append(cell)
    out = []
    for (platform, model, mode), cards in sorted(by_sweep.items()):
        if len(cards) > 1:
            parts = [
                f"...{uuid[-6:]}: " + ", ".join(Path(c.name).name for c in sorted(cs, key=attrgetter("n")))
                for uuid, cs in sorted(cards.items(), key=lambda kv: -len(kv[1]))
            ]
            out.append(f"{platform}/{model} {mode}: {len(cards)} cards ({'; '.join(parts)})")
    return out


def _say_other_repeats(done, repeats, workdir: Path, cells: Path) -> None:
    other = other_repeats(done, repeats, workdir / cells)
    if other:
        _say(
            f"[chunks] {len(other)} finished cell(s) ran another number of repeats than the "
            f"config asks now; kept as measured (to measure them again: --remeasure NAME ...): "
            + ", ".join(other)
        )


def _cell_repeats(config: Mapping[str, Any], grid: Sequence[Cell]) -> dict[str, int]:
    """Each cell's repeats (plan.cell_repeats over its sweep: the grid's sizes of its platform,
    model and mode)."""
    from tokencarbon.plan import cell_repeats

    run = {"repeats": _number_setting(config, "run", "repeats", 1),
           "repeats_at_ends": (config.get("run") or {}).get("repeats_at_ends")}  # fmt: skip
    sweeps: dict[tuple[str, str, str], list[int]] = {}
    for c in grid:
        sweeps.setdefault((c.platform, c.model, c.mode), []).append(c.n)
    return {c.name: cell_repeats(run, c.n, sweeps[(c.platform, c.model, c.mode)]) for c in grid}


def _rates(folders: Sequence[Path], device_rows, config) -> dict[str, Rates]:
    """Rates per measured platform: fitted over the committed static cells of its device (in
    the records folder and in this pack), for the config's backend."""
    from tokencarbon.layout import MODE_PREFIX

    backend = (config.get("backend") or {}).get("name", "torch")
    static = MODE_PREFIX["static"]
    metas = sorted(
        {m for f in folders for m in f.glob(f"**/cells/*/*/{static}*/meta.json")}
    )
    points = committed_cell_points(metas, backend)
    out = {}
    for platform, row in device_rows.items():
        if row is None:
            continue
        devices = [d for d in points if re.search(row.device_name_pattern, d)]
        chosen = [p for d in devices for p in points[d]]
        if len(chosen) >= 2:
            out[platform] = fit_rates(chosen, ", ".join(devices))
    return out


def _datasheet(row, cell: Cell, workdir: Path) -> Rates | None:
    manifest = cell.input_matching(r"(^|/)engines/.*manifest\.json$")
    if not (manifest and (workdir / manifest).is_file()):
        return None
    try:
        return datasheet_rates(row, json.loads((workdir / manifest).read_text())["dtype"])
    except ConfigError:
        return None

"""Power sampling in a separate process, written to Parquet as it goes so a crash keeps the samples.

    with PowerSidecar({"kind": "nvml", "device_index": 0}, "power.parquet") as sc:
        ...  # the measured work
    samples = read_samples("power.parquet")

The sidecar writes a Parquet part into <out>.parts/ about every second and merges the parts into
<out> when stopped; `read_samples(out, allow_partial=True)` reads the parts of a run that died.
It stops when asked or when its parent dies (its stdin closes), so it is never orphaned.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import queue
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

import tokencarbon
from tokencarbon import errors
from tokencarbon.energy import idle_power
from tokencarbon.errors import ConfigError, InputError, TokencarbonError
from tokencarbon.power import DEFAULT_INTERVAL_S, check_spec, open_source, samples_table
from tokencarbon.tables import POWER, check, read

PHASES = ("idle", "run")
_START_TIMEOUT_S = 120.0  # a cold start imports pandas and pyarrow, slow on a loaded CI runner
_STOP_TIMEOUT_S = 120.0


def parts_dir(out_path: str | Path) -> Path:
    """Where the sidecar writing `out_path` keeps its part files until it merges them."""
    out_path = Path(out_path)
    return out_path.with_name(out_path.name + ".parts")


class PowerSidecar:
    """Start with start() (or `with`), stop with stop(), which returns the number of samples.

    The first sample is taken before start() returns and a last one when stop() is called, so
    any window between the two is bracketed by samples. interval_s defaults per source kind
    (DEFAULT_INTERVAL_S); target_pid (default: the caller) is the process tree a modeled_cpu
    source measures.

    One process can also sample several phases of a cell, its start paid while the caller does
    other work: launch() starts the process without waiting (it imports and opens its source in
    the background, then polls the source without keeping the samples: standby); begin("idle")
    waits until it is ready and starts keeping samples tagged "idle" (the first taken before
    begin() returns); begin("run") closes the idle phase with a last idle sample and opens the run
    phase with a first run sample; stop() closes the last phase. collect() then returns every kept
    sample (both phases) and removes the sidecar's files.
    """

    def __init__(
        self,
        source_spec: Mapping,
        out_path: str | Path,
        interval_s: float | None = None,
        phase: str = "run",
        target_pid: int | None = None,
        flush_s: float = 1.0,
    ) -> None:
        self.spec = check_spec(source_spec)
        self.out_path = Path(out_path)
        self.interval_s = (
            DEFAULT_INTERVAL_S[self.spec["kind"]] if interval_s is None else interval_s
        )
        if not self.interval_s > 0 or not flush_s > 0:
            raise ConfigError(
                f"power sidecar: interval_s={interval_s!r} and flush_s={flush_s!r} must be > 0 s"
            )
        if phase not in PHASES:
            raise ConfigError(f"power sidecar: phase={phase!r}; expected one of {PHASES}")
        self.phase = phase
        self.target_pid = os.getpid() if target_pid is None else target_pid
        self.flush_s = flush_s
        self._proc: subprocess.Popen | None = None
        self._ready = False
        self._phase: str | None = None  # the phase being kept, None in standby

    @property
    def pid(self) -> int:
        """The sidecar process's id (for tests and for killing a stuck one)."""
        if self._proc is None:
            raise TokencarbonError("power sidecar is not started")
        return self._proc.pid

    def launch(self) -> None:
        """Start the sidecar process in standby and return at once (no sample kept yet)."""
        if self._proc is not None:
            raise TokencarbonError(f"power sidecar for {self.out_path} is already started")
        # A previous run's output or parts must never be merged with, or mistaken for, this run's.
        shutil.rmtree(parts_dir(self.out_path), ignore_errors=True)
        self.out_path.unlink(missing_ok=True)
        # The child imports the same tokencarbon as this process, installed or not.
        package_root = str(Path(tokencarbon.__file__).resolve().parents[1])
        env = os.environ | {
            "PYTHONPATH": os.pathsep.join(
                filter(None, [package_root, os.environ.get("PYTHONPATH")])
            )
        }
        args = [
            sys.executable, "-m", "tokencarbon.power.sidecar",
            "--spec", json.dumps(self.spec),
            "--out", str(self.out_path),
            "--interval-s", repr(self.interval_s),
            "--flush-s", repr(self.flush_s),
            "--target-pid", str(self.target_pid),
        ]  # fmt: skip
        # stderr is inherited, so the child's tracebacks land in the rule's log.
        self._proc = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True
        )
        self._ready, self._phase = False, None

    def begin(self, phase: str) -> None:
        """Keep samples tagged `phase` from now on ("idle" or "run"): closes the phase being kept
        with a last sample of it, takes the new phase's first sample, then returns. Launches the
        process first if launch() was not called. Raises ConfigError for an unknown phase,
        TokencarbonError (or the child's own error class) when the sidecar failed."""
        if phase not in PHASES:
            raise ConfigError(f"power sidecar: phase={phase!r}; expected one of {PHASES}")
        if self._proc is None:
            self.launch()
        if not self._ready:
            self._message(_START_TIMEOUT_S, "start")
            self._ready = True
        try:
            self._proc.stdin.write(f"begin {phase}\n")
            self._proc.stdin.flush()
        except BrokenPipeError:
            pass  # it died; _message reports how
        self._message(_START_TIMEOUT_S, f"begin {phase}")
        self._phase = phase

    def start(self) -> None:
        """launch() and begin(self.phase): sampling, the first sample taken, when it returns."""
        self.launch()
        self.begin(self.phase)

    def stop(self) -> int:
        """Take a last sample, merge the parts into out_path; return the number of samples."""
        if self._proc is None:
            raise TokencarbonError(f"power sidecar for {self.out_path} is not running")
        try:
            if not self._ready:  # stopped in standby: it still reports, once ready
                self._message(_START_TIMEOUT_S, "start")
            self._proc.stdin.close()  # the child's signal to stop
        except BrokenPipeError:
            pass  # it died already; _message reports how
        try:
            n_samples = self._message(_STOP_TIMEOUT_S, "stop")["n_samples"]
            self._proc.wait()
        finally:
            self._proc, self._phase = None, None
        return n_samples

    def collect(self) -> pd.DataFrame:
        """After stop(): every sample kept (POWER rows, phases as tagged), and the sidecar's
        files removed. Raises InputError when there is nothing to read."""
        if self._proc is not None:
            raise TokencarbonError(f"power sidecar for {self.out_path}: stop() before collect()")
        samples = read_samples(self.out_path) if self.out_path.exists() else _empty_samples()
        self.out_path.unlink(missing_ok=True)
        shutil.rmtree(parts_dir(self.out_path), ignore_errors=True)
        return samples

    def kill(self) -> None:
        """End the process now, keeping nothing more (its parts stay readable with
        read_samples(out_path, allow_partial=True)); for a caller that fails part-way."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None

    def _message(self, timeout_s: float, when: str) -> dict:
        """The child's next protocol line; raise the child's own error class if it reports one."""
        ready, _, _ = select.select([self._proc.stdout], [], [], timeout_s)
        line = self._proc.stdout.readline() if ready else ""
        if not line:
            if not ready:
                self._proc.kill()
            code = self._proc.wait()
            raise TokencarbonError(
                f"power sidecar {self.spec} writing {self.out_path} died at {when} (exit code "
                f"{code}, {'timed out after ' + str(timeout_s) + ' s' if not ready else 'no reply'}"
                f"); its traceback is on stderr; samples taken so far stay readable with "
                f"read_samples({str(self.out_path)!r}, allow_partial=True)"
            )
        message = json.loads(line)
        if "error" in message:
            self._proc.wait()
            raise getattr(errors, message["error"], TokencarbonError)(message["message"])
        return message

    def __enter__(self) -> PowerSidecar:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


def _empty_samples() -> pd.DataFrame:
    return POWER.empty_table().to_pandas()


def read_samples(out_path: str | Path, allow_partial: bool = False) -> pd.DataFrame:
    """The POWER samples a sidecar wrote to out_path; with allow_partial, a dead sidecar's parts."""
    out_path = Path(out_path)
    if out_path.exists():
        return read(out_path, POWER)
    parts = sorted(parts_dir(out_path).glob("part-*.parquet"))
    if not parts:
        raise InputError(f"{out_path}: no power samples there, nor parts in {parts_dir(out_path)}")
    if not allow_partial:
        raise InputError(
            f"{out_path} does not exist but {parts_dir(out_path)} holds {len(parts)} part(s) of "
            f"a sidecar that never finished (crashed or killed); pass allow_partial=True to read "
            f"them"
        )
    table = pa.concat_tables(pq.read_table(p, schema=POWER) for p in parts)
    return check(table.to_pandas(), POWER, parts_dir(out_path))


def measure_idle(
    source_spec: Mapping, seconds: float, interval_s: float | None = None
) -> tuple[pd.DataFrame, float]:
    """Sample an idle device for `seconds`: (samples with phase "idle", mean idle power in W).

    The mean is energy.idle_power's (the one place idle power is computed, as metrics compute a
    cell's): energy over the sampled span divided by its length, with the energy counter where the
    source has one.
    """
    with tempfile.TemporaryDirectory(prefix="tokencarbon-idle-") as tmp:
        out_path = Path(tmp) / "idle.parquet"
        with PowerSidecar(source_spec, out_path, interval_s, phase="idle"):
            time.sleep(seconds)
        samples = read_samples(out_path)
    return samples, idle_power(samples, where=f"idle samples of {source_spec['kind']}")[0]


def _write_part(samples: list, phases: list[str], parts: Path, index: int) -> None:
    tmp = parts / f"part-{index:06d}.parquet.tmp"
    pq.write_table(samples_table(samples, phases), tmp)
    tmp.replace(parts / f"part-{index:06d}.parquet")  # a part is whole or absent


def _sample(
    spec: dict,
    out_path: Path,
    interval_s: float,
    flush_s: float,
    target_pid: int,
    say: Callable[[dict], None],
) -> int:
    """The child's loop: standby until the first "begin <phase>" line on stdin, then sample on an
    absolute schedule, each sample tagged with the phase begun last, until stdin closes; return
    the number of samples kept."""
    source = open_source(spec, target_pid)
    opened = time.monotonic()
    commands: queue.SimpleQueue[str] = queue.SimpleQueue()
    wake, stopped = threading.Event(), threading.Event()

    def listen() -> None:
        for line in sys.stdin:
            commands.put(line.strip())
            wake.set()
        stopped.set()
        wake.set()

    threading.Thread(target=listen, daemon=True).start()
    parts = parts_dir(out_path)
    parts.mkdir(parents=True, exist_ok=True)
    say({"ready": True})

    phase: str | None = None  # None: standby, polling without keeping
    samples: list = []
    phases: list[str] = []
    n_samples, n_parts, last_flush = 0, 0, time.monotonic()

    def keep(tag: str) -> None:
        nonlocal n_samples
        samples.append(source.read())
        phases.append(tag)
        n_samples += 1

    # Slots at t0 + k * interval on the monotonic clock: the cost of a poll never accumulates as
    # drift, and a slot missed while starved is skipped, not made up in a burst.
    t0 = time.monotonic()
    while True:
        now = time.monotonic()
        next_slot = t0 + interval_s * math.floor((now - t0) / interval_s + 1)
        wake.wait(max(0.0, next_slot - now))
        wake.clear()
        began = not commands.empty()
        while not commands.empty():
            command = commands.get()
            verb, _, tag = command.partition(" ")
            if verb != "begin" or tag not in PHASES:
                raise ConfigError(f"power sidecar: command {command!r}; expected 'begin <phase>'")
            # A modeled first sample spans at least one interval since the source opened.
            time.sleep(max(0.0, opened + interval_s - time.monotonic()))
            if phase is not None:
                keep(phase)  # closes the phase being kept
            phase = tag
            keep(phase)  # opens the new one
            t0 = time.monotonic()
            say({"began": phase})
        if stopped.is_set():
            break
        if not began and time.monotonic() >= next_slot:
            if phase is None:
                source.read()  # standby: keeps a modeled source's utilisation span short
            else:
                keep(phase)
        if samples and time.monotonic() - last_flush >= flush_s:
            _write_part(samples, phases, parts, n_parts)
            samples, phases, n_parts, last_flush = [], [], n_parts + 1, time.monotonic()
    if phase is not None:
        keep(phase)  # brackets the end of the caller's last window
    if samples:
        _write_part(samples, phases, parts, n_parts)
    source.close()

    tables = [pq.read_table(p, schema=POWER) for p in sorted(parts.glob("part-*.parquet"))]
    if tables:
        tmp = out_path.with_name(out_path.name + ".tmp")
        pq.write_table(pa.concat_tables(tables), tmp)
        tmp.replace(out_path)
    shutil.rmtree(parts)
    return n_samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", required=True, type=json.loads)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--interval-s", required=True, type=float)
    parser.add_argument("--flush-s", required=True, type=float)
    parser.add_argument("--target-pid", required=True, type=int)
    a = parser.parse_args()
    # The protocol keeps the real stdout; whatever a library prints goes to stderr, the log.
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())

    def say(message: dict) -> None:
        try:
            print(json.dumps(message), file=protocol, flush=True)
        except BrokenPipeError:  # the parent is gone; what was sampled is on disk all the same
            os.dup2(os.open(os.devnull, os.O_WRONLY), protocol.fileno())

    try:
        n_samples = _sample(a.spec, a.out, a.interval_s, a.flush_s, a.target_pid, say)
    except TokencarbonError as exc:
        say({"error": type(exc).__name__, "message": str(exc)})
        return 1
    say({"n_samples": n_samples})
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Power sampling in a separate process, on an absolute schedule, away from the measured work.

Two ways to get the samples back:

    with PowerSidecar({"kind": "nvml", "device_index": 0}, "power.parquet") as sc:
        ...  # the measured work
    samples = read_samples("power.parquet")

writes Parquet as it goes, so a crash keeps the samples: a part into <out>.parts/ about every
flush_s, merged into <out> when stopped; `read_samples(out, allow_partial=True)` reads the parts of
a run that died. With out_path=None the samples stream to the parent over the sidecar's stdout
instead (no file, no pyarrow in the child): the parent keeps them in memory, mark() takes a sample
now and returns once every sample up to it has arrived, and samples() gives them as a POWER
DataFrame; what tokencarbon.Monitor uses, so a window's end costs a round trip, not a flush and a
Parquet read.

The child imports only what its source needs (no pandas, no pyarrow unless it writes Parquet), so
it is sampling about 0.1 s after launch. It stops when asked or when its parent dies (its stdin
closes), so it is never orphaned.
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import os
import queue
import select
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import tokencarbon
from tokencarbon import errors
from tokencarbon.errors import ConfigError, InputError, TokencarbonError
from tokencarbon.power import (
    DEFAULT_INTERVAL_S,
    FIRST_SPAN_S,
    check_spec,
    open_default,
    open_source,
)
from tokencarbon.power.base import as_row, samples_frame

if TYPE_CHECKING:
    import pandas as pd

    from tokencarbon.energy import DeviceSamples

PHASES = ("idle", "run")
_START_TIMEOUT_S = 120.0  # a cold start of a loaded CI runner, or NVML waking a GPU
_STOP_TIMEOUT_S = 120.0
_MARK_TIMEOUT_S = 30.0  # one sample and a pipe round trip; far more only on a starved machine


def parts_dir(out_path: str | Path) -> Path:
    """Where the sidecar writing `out_path` keeps its part files until it merges them."""
    out_path = Path(out_path)
    return out_path.with_name(out_path.name + ".parts")


class PowerSidecar:
    """Start with start() (or `with`), stop with stop(), which returns the number of samples.

    The first sample is taken before start() returns and a last one when stop() is called, so
    any window between the two is bracketed by samples. interval_s defaults per source kind
    (DEFAULT_INTERVAL_S); target_pid (default: the caller) is the process tree a modeled_cpu
    source measures. out_path: the Parquet file the samples go to; None: they stream to this
    process instead (mark(), samples(), keep_from()). flush_s: how often a part is written, or
    in streaming mode how often the child sends what it sampled.

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
        out_path: str | Path | None,
        interval_s: float | None = None,
        phase: str = "run",
        target_pid: int | None = None,
        flush_s: float = 1.0,
    ) -> None:
        self.spec = check_spec(source_spec)
        self.out_path = None if out_path is None else Path(out_path)
        # An "auto" spec is resolved by the child (spec, interval_s and device set once ready).
        self.interval_s = (
            interval_s if interval_s is not None or self.spec["kind"] == "auto"
            else DEFAULT_INTERVAL_S[self.spec["kind"]]
        )  # fmt: skip
        if not (interval_s is None or interval_s > 0) or not flush_s > 0:
            raise ConfigError(
                f"power sidecar: interval_s={interval_s!r} and flush_s={flush_s!r} must be > 0 s"
            )
        if phase not in PHASES:
            raise ConfigError(f"power sidecar: phase={phase!r}; expected one of {PHASES}")
        self.phase = phase
        self.target_pid = os.getpid() if target_pid is None else target_pid
        self.flush_s = flush_s
        self.device: str | None = None  # the source's own description, once the child is ready
        self._proc: subprocess.Popen | None = None
        self._ready = False
        self._phase: str | None = None  # the phase being kept, None in standby
        self._messages: queue.SimpleQueue = queue.SimpleQueue()
        # Streamed samples (out_path None), appended by the reader thread: rows in FIELDS order,
        # their phases and times; rows before _keep_from_ns's bracketing sample are dropped.
        self._lock = threading.Lock()
        self._mark_lock = threading.Lock()
        self._rows: list[list] = []
        self._phases: list[str] = []
        self._times: list[int] = []
        self._keep_from_ns: int | None = None

    @property
    def pid(self) -> int:
        """The sidecar process's id (for tests and for killing a stuck one)."""
        if self._proc is None:
            raise TokencarbonError("power sidecar is not started")
        return self._proc.pid

    @property
    def _where(self) -> str:
        return (
            f"writing {self.out_path}" if self.out_path is not None else "streaming to its parent"
        )

    def launch(self) -> None:
        """Start the sidecar process in standby and return at once (no sample kept yet)."""
        if self._proc is not None:
            raise TokencarbonError(f"power sidecar {self._where} is already started")
        if self.out_path is not None:
            # A previous run's output or parts must never be merged with, or taken for, this one's.
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
            *(["--out", str(self.out_path)] if self.out_path is not None else ["--stream"]),
            *(["--interval-s", repr(self.interval_s)] if self.interval_s is not None else []),
            "--flush-s", repr(self.flush_s),
            "--target-pid", str(self.target_pid),
        ]  # fmt: skip
        # stderr is inherited, so the child's tracebacks land in the rule's log.
        self._proc = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True
        )
        self._ready, self._phase = False, None
        self._messages = queue.SimpleQueue()
        threading.Thread(target=self._read, args=(self._proc.stdout,), daemon=True).start()

    def _read(self, stdout) -> None:
        """The reader thread: streamed samples into the store, every other line to _messages,
        None at the end of the child's output."""
        try:
            for line in stdout:
                message = json.loads(line)
                if "s" in message:
                    self._store(message["s"])
                else:
                    self._messages.put(message)
        except (ValueError, OSError) as exc:  # a garbled line, or the pipe closed under us
            self._messages.put({"broken": f"{type(exc).__name__}: {exc}"})
        finally:
            self._messages.put(None)

    def _store(self, rows: list[list]) -> None:
        with self._lock:
            for row in rows:
                self._phases.append(row.pop())
                self._rows.append(row)
                self._times.append(row[0])
            self._prune()

    def _prune(self) -> None:
        """Drop streamed rows before the last one at or before _keep_from_ns (lock held)."""
        if self._keep_from_ns is None:
            return
        cut = bisect.bisect_right(self._times, self._keep_from_ns) - 1
        if cut > 0:
            del self._rows[:cut], self._phases[:cut], self._times[:cut]

    def begin(self, phase: str) -> None:
        """Keep samples tagged `phase` from now on ("idle" or "run"): closes the phase being kept
        with a last sample of it, takes the new phase's first sample, then returns. Launches the
        process first if launch() was not called. Raises ConfigError for an unknown phase,
        TokencarbonError (or the child's own error class) when the sidecar failed."""
        if phase not in PHASES:
            raise ConfigError(f"power sidecar: phase={phase!r}; expected one of {PHASES}")
        if self._proc is None:
            self.launch()
        self.wait_ready()
        self._send(f"begin {phase}")
        self._message(_START_TIMEOUT_S, f"begin {phase}")
        self._phase = phase

    def wait_ready(self) -> None:
        """Wait until the child has opened its source (after launch()); sets .device (and .spec
        and .interval_s where the spec was "auto"). Raises the child's error
        (HardwareMismatchError where the device cannot be read, ...)."""
        if self._proc is None:
            raise TokencarbonError(f"power sidecar {self._where}: launch() it first")
        if not self._ready:
            ready = self._message(_START_TIMEOUT_S, "start")
            self.device, self.spec = ready.get("device"), ready.get("spec", self.spec)
            self.interval_s = ready.get("interval_s", self.interval_s)
            self._ready = True

    def start(self) -> None:
        """launch() and begin(self.phase): sampling, the first sample taken, when it returns."""
        self.launch()
        self.begin(self.phase)

    def mark(self) -> None:
        """Streaming only: take a sample now and return once it, and every sample before it, is
        in samples(); its time is after this call began. Raises TokencarbonError when no phase is
        being kept or the sidecar died."""
        if self.out_path is not None:
            raise TokencarbonError(f"power sidecar {self._where}: mark() needs out_path=None")
        if self._proc is None or self._phase is None:
            raise TokencarbonError("power sidecar: mark() while no phase is being kept")
        with self._mark_lock:  # one mark in flight: each caller gets the reply to its own
            self._send("mark")
            self._message(_MARK_TIMEOUT_S, "mark")

    def samples(self, since_ns: int | None = None) -> pd.DataFrame:
        """Streamed samples as a POWER DataFrame: all kept, or from the last at or before
        since_ns (the one that brackets a window starting then) on. Streaming only."""
        rows, phases = self._streamed(since_ns)
        return samples_frame(rows, phases)

    def _streamed(self, since_ns: int | None) -> tuple[list, list]:
        """The streamed rows and their phases from the last sample at or before since_ns (all
        where None) on. Raises TokencarbonError for a sidecar writing a file instead."""
        if self.out_path is not None:
            raise TokencarbonError(f"power sidecar {self._where}: read_samples() it instead")
        with self._lock:
            first = 0
            if since_ns is not None:
                first = max(bisect.bisect_right(self._times, since_ns) - 1, 0)
            return self._rows[first:], self._phases[first:]

    def device_samples(self, since_ns: int | None = None) -> DeviceSamples:
        """samples(since_ns) as tokencarbon.energy.DeviceSamples (numpy columns, no pandas): what
        a Monitor's window is integrated from. Streaming only."""
        from tokencarbon.power.base import streamed_samples

        rows, _ = self._streamed(since_ns)
        return streamed_samples(rows, where=f"power sidecar {self.spec} samples")

    def keep_from(self, t_ns: int | None) -> None:
        """Streaming: keep only samples from the last at or before t_ns on (a window's start);
        None keeps everything, sys.maxsize only the latest sample. Bounds the memory of a
        long-lived Monitor."""
        with self._lock:
            self._keep_from_ns = t_ns
            self._prune()

    def stop(self) -> int:
        """Take a last sample; with out_path, merge the parts into it. Returns the number of
        samples."""
        if self._proc is None:
            raise TokencarbonError(f"power sidecar {self._where} is not running")
        try:
            if not self._ready:  # stopped in standby: it still reports, once ready
                self.wait_ready()
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
        files (or streamed rows) removed."""
        if self._proc is not None:
            raise TokencarbonError(f"power sidecar {self._where}: stop() before collect()")
        if self.out_path is None:
            samples = self.samples()
            with self._lock:
                self._rows, self._phases, self._times = [], [], []
            return samples
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

    def _send(self, command: str) -> None:
        try:
            self._proc.stdin.write(command + "\n")
            self._proc.stdin.flush()
        except BrokenPipeError:
            pass  # it died; _message reports how

    def _message(self, timeout_s: float, when: str) -> dict:
        """The child's next protocol message; raise the child's own error class if it reports
        one, TokencarbonError if it died or timed out."""
        try:
            message = self._messages.get(timeout=timeout_s)
        except queue.Empty:
            message = {"timeout": True}
        if message is None or "timeout" in message or "broken" in message:
            if message is not None:
                self._proc.kill()
            code = self._proc.wait()
            why = (
                f"timed out after {timeout_s} s" if message and "timeout" in message
                else message["broken"] if message else "no reply"
            )  # fmt: skip
            raise TokencarbonError(
                f"power sidecar {self.spec} {self._where} died at {when} (exit code "
                f"{code}, {why}); its traceback is on stderr"
                + (
                    f"; samples taken so far stay readable with read_samples("
                    f"{str(self.out_path)!r}, allow_partial=True)"
                    if self.out_path is not None
                    else ""
                )
            )
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
    from tokencarbon.tables import POWER

    return POWER.empty_table().to_pandas()


def read_samples(out_path: str | Path, allow_partial: bool = False) -> pd.DataFrame:
    """The POWER samples a sidecar wrote to out_path; with allow_partial, a dead sidecar's parts."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tokencarbon.tables import POWER, check, read

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
    from tokencarbon.energy import idle_power  # analysis, loaded only where idle is measured

    sidecar = PowerSidecar(source_spec, None, interval_s, phase="idle")
    with sidecar:
        time.sleep(seconds)
    samples = sidecar.collect()
    return samples, idle_power(samples, where=f"idle samples of {source_spec['kind']}")[0]


class _Parts:
    """The child's Parquet parts (out_path mode): a part every flush, merged at the end."""

    def __init__(self, out_path: Path) -> None:
        # Loaded before the child says it is ready: an import in the sampling loop would stall
        # it for as long (about 0.5 s) at the first flush.
        import pyarrow.parquet  # noqa: F401

        import tokencarbon.tables  # noqa: F401

        self.out_path, self.dir, self.count = out_path, parts_dir(out_path), 0
        self.dir.mkdir(parents=True, exist_ok=True)

    def write(self, samples: list, phases: list[str]) -> None:
        import pyarrow.parquet as pq

        from tokencarbon.power.base import samples_table

        tmp = self.dir / f"part-{self.count:06d}.parquet.tmp"
        pq.write_table(samples_table(samples, phases), tmp)
        tmp.replace(self.dir / f"part-{self.count:06d}.parquet")  # a part is whole or absent
        self.count += 1

    def merge(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        from tokencarbon.tables import POWER

        tables = [pq.read_table(p, schema=POWER) for p in sorted(self.dir.glob("part-*.parquet"))]
        if tables:
            tmp = self.out_path.with_name(self.out_path.name + ".tmp")
            pq.write_table(pa.concat_tables(tables), tmp)
            tmp.replace(self.out_path)
        shutil.rmtree(self.dir)


def _sample(
    spec: dict,
    out_path: Path | None,
    interval_s: float | None,
    flush_s: float,
    target_pid: int,
    say: Callable[[dict], None],
) -> int:
    """The child's loop: standby until the first "begin <phase>" line on stdin, then sample on an
    absolute schedule, each sample tagged with the phase begun last, until stdin closes; a "mark"
    line takes a sample at once and, streaming, sends everything up to it before replying.
    Returns the number of samples kept. An "auto" spec is resolved here (open_default), and
    interval_s None is the resolved kind's DEFAULT_INTERVAL_S."""
    if spec["kind"] == "auto":
        source, spec, description = open_default(target_pid)
    else:
        source = open_source(spec, target_pid)
        describe = getattr(source, "describe", None)
        description = describe() if describe else None
    if interval_s is None:
        interval_s = DEFAULT_INTERVAL_S[spec["kind"]]
    first_span_s = min(interval_s, FIRST_SPAN_S[spec["kind"]])
    opened = time.monotonic()
    # Commands are read in this loop itself (select on stdin, no listener thread): a "mark" wakes
    # the one thread that takes the sample, one scheduling hop fewer on a loaded machine.
    stdin_fd, pending, stopped = sys.stdin.fileno(), b"", False

    def commands_within(timeout_s: float) -> list[str]:
        """The whole command lines that arrive within timeout_s (none: the slot is due)."""
        nonlocal pending, stopped
        if not select.select([stdin_fd], [], [], timeout_s)[0]:
            return []
        chunk = os.read(stdin_fd, 65536)
        if not chunk:  # stdin closed: the parent's stop, or its death
            stopped = True
            return []
        *lines, pending = (pending + chunk).split(b"\n")
        return [line.decode().strip() for line in lines]

    parts = _Parts(out_path) if out_path is not None else None
    say({"ready": True, "device": description, "spec": spec, "interval_s": interval_s})

    phase: str | None = None  # None: standby, polling without keeping
    samples: list = []  # kept since the last flush
    phases: list[str] = []
    n_samples, last_flush = 0, time.monotonic()

    def keep(tag: str) -> None:
        nonlocal n_samples
        samples.append(source.read())
        phases.append(tag)
        n_samples += 1

    def flush() -> None:
        nonlocal samples, phases, last_flush
        if samples:
            if parts is not None:
                parts.write(samples, phases)
            else:
                say({"s": [as_row(s) + [p] for s, p in zip(samples, phases)]})
        samples, phases, last_flush = [], [], time.monotonic()

    # Slots at t0 + k * interval on the monotonic clock: the cost of a poll never accumulates as
    # drift, and a slot missed while starved is skipped, not made up in a burst.
    t0 = time.monotonic()
    while True:
        now = time.monotonic()
        next_slot = t0 + interval_s * math.floor((now - t0) / interval_s + 1)
        commands = commands_within(max(0.0, next_slot - now))
        sampled = False  # a command took a sample: this slot's would follow it within microseconds
        for command in commands:
            verb, _, tag = command.partition(" ")
            if command == "mark" and phase is not None:
                keep(phase)
                if parts is None:
                    flush()
                say({"marked": n_samples})
                sampled = True
                continue
            if verb != "begin" or tag not in PHASES:
                raise ConfigError(
                    f"power sidecar: command {command!r}; expected 'begin <phase>', or 'mark' "
                    "once a phase is kept"
                )
            # The first sample spans at least FIRST_SPAN_S since the source opened: two clock
            # ticks of a modeled source's CPU times, a RAPL or SoC counter step to divide.
            time.sleep(max(0.0, opened + first_span_s - time.monotonic()))
            if phase is not None:
                keep(phase)  # closes the phase being kept
            phase = tag
            keep(phase)  # opens the new one
            t0 = time.monotonic()
            sampled = True
            say({"began": phase})
        if stopped:
            break
        if not sampled and time.monotonic() >= next_slot:
            if phase is None:
                source.read()  # standby: keeps a modeled source's utilisation span short
            else:
                keep(phase)
        if samples and time.monotonic() - last_flush >= flush_s:
            flush()
    if phase is not None:
        keep(phase)  # brackets the end of the caller's last window
    flush()
    source.close()
    if parts is not None:
        parts.merge()
    return n_samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", required=True, type=json.loads)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", type=Path)
    where.add_argument("--stream", action="store_true")
    parser.add_argument("--interval-s", type=float, default=None)
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

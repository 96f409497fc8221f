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
from tokencarbon.energy import cell_energy
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

    @property
    def pid(self) -> int:
        """The sidecar process's id (for tests and for killing a stuck one)."""
        if self._proc is None:
            raise TokencarbonError("power sidecar is not started")
        return self._proc.pid

    def start(self) -> None:
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
            "--phase", self.phase,
            "--target-pid", str(self.target_pid),
        ]  # fmt: skip
        # stderr is inherited, so the child's tracebacks land in the rule's log.
        self._proc = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True
        )
        self._message(_START_TIMEOUT_S, "start")

    def stop(self) -> int:
        """Take a last sample, merge the parts into out_path; return the number of samples."""
        if self._proc is None:
            raise TokencarbonError(f"power sidecar for {self.out_path} is not running")
        try:
            self._proc.stdin.close()  # the child's signal to stop
        except BrokenPipeError:
            pass  # it died already; _message reports how
        n_samples = self._message(_STOP_TIMEOUT_S, "stop")["n_samples"]
        self._proc.wait()
        self._proc = None
        return n_samples

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

    The mean is energy over the sampled span divided by its length, so it uses the energy
    counter where the source has one, exactly as the cell's own energy does.
    """
    with tempfile.TemporaryDirectory(prefix="tokencarbon-idle-") as tmp:
        out_path = Path(tmp) / "idle.parquet"
        with PowerSidecar(source_spec, out_path, interval_s, phase="idle"):
            time.sleep(seconds)
        samples = read_samples(out_path)
    start_ns, end_ns = int(samples["t_wall_ns"].iloc[0]), int(samples["t_wall_ns"].iloc[-1])
    record = cell_energy(samples, start_ns, end_ns, idle_power_w=math.nan)
    return samples, record.energy_j / record.window_s


def _write_part(samples: list, phase: str, parts: Path, index: int) -> None:
    tmp = parts / f"part-{index:06d}.parquet.tmp"
    pq.write_table(samples_table(samples, phase), tmp)
    tmp.replace(parts / f"part-{index:06d}.parquet")  # a part is whole or absent


def _sample(
    spec: dict,
    out_path: Path,
    interval_s: float,
    flush_s: float,
    phase: str,
    target_pid: int,
    say: Callable[[dict], None],
) -> int:
    """The child's loop: sample on an absolute schedule until stopped; return the sample count."""
    source = open_source(spec, target_pid)
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    parts = parts_dir(out_path)
    parts.mkdir(parents=True, exist_ok=True)

    # Slots at t0 + k * interval on the monotonic clock: the cost of a poll never accumulates as
    # drift, and a slot missed while starved is skipped, not made up in a burst.
    t0 = time.monotonic() + interval_s  # one interval in, so a modeled first sample spans one
    stop.wait(interval_s)
    buffer = [source.read()]
    say({"ready": True})
    n_samples, n_parts, last_flush = 1, 0, time.monotonic()
    while True:
        now = time.monotonic()
        next_slot = t0 + interval_s * math.floor((now - t0) / interval_s + 1)
        if stop.wait(next_slot - now):
            break
        buffer.append(source.read())
        n_samples += 1
        if time.monotonic() - last_flush >= flush_s:
            _write_part(buffer, phase, parts, n_parts)
            buffer, n_parts, last_flush = [], n_parts + 1, time.monotonic()
    buffer.append(source.read())  # brackets the end of the caller's last window
    _write_part(buffer, phase, parts, n_parts)
    source.close()

    tables = [pq.read_table(p, schema=POWER) for p in sorted(parts.glob("part-*.parquet"))]
    tmp = out_path.with_name(out_path.name + ".tmp")
    pq.write_table(pa.concat_tables(tables), tmp)
    tmp.replace(out_path)
    shutil.rmtree(parts)
    return n_samples + 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", required=True, type=json.loads)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--interval-s", required=True, type=float)
    parser.add_argument("--flush-s", required=True, type=float)
    parser.add_argument("--phase", required=True, choices=PHASES)
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
        n_samples = _sample(a.spec, a.out, a.interval_s, a.flush_s, a.phase, a.target_pid, say)
    except TokencarbonError as exc:
        say({"error": type(exc).__name__, "message": str(exc)})
        return 1
    say({"n_samples": n_samples})
    return 0


if __name__ == "__main__":
    sys.exit(main())
